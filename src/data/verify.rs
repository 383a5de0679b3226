//! Every shipped file against its manifest: `models/SHA256SUMS`, `data/mnist/SHA256SUMS` and
//! `assets/SHA256SUMS`, all three compiled into the library, so that a file changed together with
//! the manifest beside it is still caught.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};

/// The manifests: a folder under [`home`](super::home) and its `SHA256SUMS` as compiled in.
const MANIFESTS: [(&str, &str); 3] = [
    ("models", include_str!("../../models/SHA256SUMS")),
    ("data/mnist", include_str!("../../data/mnist/SHA256SUMS")),
    ("assets", include_str!("../../assets/SHA256SUMS")),
];

/// What [`verify`] found for one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum FileStatus {
    /// Its sha256 is the pinned one.
    Ok,
    /// Its sha256 differs from the pinned one.
    Modified {
        /// The pinned sha256 (hex).
        expected: String,
        /// The file's sha256 (hex).
        got: String,
    },
    /// Pinned, but not there.
    Missing,
    /// There, but no manifest pins it.
    Unlisted,
}

/// One file under the home folder and its status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileCheck {
    /// The path relative to the home folder (`models/mnist-cnn.safetensors`).
    pub path: PathBuf,
    /// What was found.
    #[serde(flatten)]
    pub status: FileStatus,
}

/// Check every file of `models/`, `data/mnist/` and `assets/` under `home` (see
/// [`home`](super::home)) against the compiled-in manifests: each pinned file with its status,
/// then every file no manifest pins (the manifests themselves aside), sorted by path.
///
/// ```
/// let checks = perturb::data::verify(&perturb::data::home())?;
/// # if std::env::var_os("PERTURB_HOME").is_none() {
/// assert!(checks.iter().all(|c| c.status == perturb::data::FileStatus::Ok));
/// assert!(checks.iter().any(|c| c.path.ends_with("mnist-cnn.safetensors")));
/// # }
/// # Ok::<(), perturb::Error>(())
/// ```
///
/// # Errors
/// [`Error::Io`] when a folder or a present file cannot be read.
pub fn verify(home: &Path) -> Result<Vec<FileCheck>> {
    let mut out = Vec::new();
    for (dir, manifest) in MANIFESTS {
        let mut pinned = Vec::new();
        for line in manifest.lines().filter(|l| !l.trim().is_empty()) {
            let Some((hash, name)) = line.split_once(char::is_whitespace) else {
                continue;
            };
            let name = name.trim_start().trim_start_matches('*');
            let rel = Path::new(dir).join(name);
            pinned.push(rel.clone());
            let path = home.join(&rel);
            let status = match std::fs::read(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => FileStatus::Missing,
                Err(source) => return Err(Error::Io { file: path, source }),
                Ok(bytes) => {
                    let got = crate::zoo::sha256_hex(&bytes);
                    if got == hash {
                        FileStatus::Ok
                    } else {
                        FileStatus::Modified {
                            expected: hash.to_string(),
                            got,
                        }
                    }
                }
            };
            out.push(FileCheck { path: rel, status });
        }
        let root = home.join(dir);
        if root.is_dir() {
            for rel in files_under(&root, Path::new(dir))? {
                if !pinned.contains(&rel) && rel.file_name() != Some("SHA256SUMS".as_ref()) {
                    out.push(FileCheck {
                        path: rel,
                        status: FileStatus::Unlisted,
                    });
                }
            }
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// Every file below `dir`, as paths under `rel`.
fn files_under(dir: &Path, rel: &Path) -> Result<Vec<PathBuf>> {
    let io = |source| Error::Io {
        file: dir.to_path_buf(),
        source,
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name();
        let kind = entry.file_type().map_err(io)?;
        if kind.is_dir() {
            out.extend(files_under(&entry.path(), &rel.join(&name))?);
        } else {
            out.push(rel.join(&name));
        }
    }
    Ok(out)
}
