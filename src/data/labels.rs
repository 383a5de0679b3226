//! A directory of images with a labels file: `labels.csv` of `file,label` rows, the evaluation
//! set of an ImageNet-style run (`perturb attack --data DIR`).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The name of the labels file in a data directory.
pub const LABELS_FILE: &str = "labels.csv";

/// One row of a labels file: an image (relative paths are taken from the file's directory)
/// and its label as written (a class index or a class name, resolved by the caller against the
/// model's classes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelledFile {
    /// The image's path.
    pub file: PathBuf,
    /// Its label, as written.
    pub label: String,
}

/// The rows of `dir/labels.csv`: `file,label` per line, an optional header `file,label`,
/// fields optionally in double quotes (`"a, b.png",tabby` ; `""` is a quote), blank lines and
/// lines starting with `#` skipped.
///
/// ```
/// # let dir = std::env::temp_dir().join(format!("perturb-labels-doc-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir)?;
/// std::fs::write(dir.join("labels.csv"), "file,label\ncat.png,285\n\"a, b.jpg\",toaster\n")?;
/// let rows = perturb::data::read_labels(&dir)?;
/// assert_eq!(rows[0].file, dir.join("cat.png"));
/// assert_eq!((rows[1].label.as_str(), rows.len()), ("toaster", 2));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// [`Error::Io`] when the file cannot be read; [`Error::Data`] naming the line of a row that
/// has not two fields, an empty field or an unclosed quote, or a file without rows.
pub fn read_labels(dir: &Path) -> Result<Vec<LabelledFile>> {
    let path = dir.join(LABELS_FILE);
    let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
        file: path.clone(),
        source,
    })?;
    let bad = |line: usize, reason: &str| Error::Data {
        file: path.clone(),
        reason: format!("line {line}: {reason} (expected file,label)"),
    };
    let mut rows = Vec::new();
    for (k, line) in text.lines().enumerate() {
        let line_no = k + 1;
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let fields = split(line).ok_or_else(|| bad(line_no, "an unclosed quote"))?;
        let [file, label] = fields.as_slice() else {
            return Err(bad(line_no, &format!("{} fields", fields.len())));
        };
        let (file, label) = (file.trim(), label.trim());
        if rows.is_empty() && file == "file" && label == "label" {
            continue; // the header
        }
        if file.is_empty() || label.is_empty() {
            return Err(bad(line_no, "an empty field"));
        }
        rows.push(LabelledFile {
            file: dir.join(file),
            label: label.to_string(),
        });
    }
    if rows.is_empty() {
        return Err(Error::Data {
            file: path,
            reason: "no rows".into(),
        });
    }
    Ok(rows)
}

/// The comma-separated fields of one line, with double-quoted fields unquoted; `None` for an
/// unclosed quote.
fn split(line: &str) -> Option<Vec<String>> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            (true, '"') => quoted = false,
            (false, '"') if field.trim().is_empty() => {
                field.clear();
                quoted = true;
            }
            (false, ',') => fields.push(std::mem::take(&mut field)),
            _ => field.push(c),
        }
    }
    if quoted {
        return None;
    }
    fields.push(field);
    Some(fields)
}
