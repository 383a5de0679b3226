//! Output paths, checked before any compute: a run that cannot write its results must fail in
//! the first second, not after the attack.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

/// One output of a command: its flag, path, and whether an existing file may be replaced.
pub struct Output<'a> {
    pub flag: &'static str,
    pub path: &'a Path,
    pub overwrite: bool,
}

/// The outputs given on the command line: (flag, path if given, may overwrite).
pub fn of<'a>(flags: &[(&'static str, &'a Option<PathBuf>, bool)]) -> Vec<Output<'a>> {
    flags
        .iter()
        .filter_map(|&(flag, path, overwrite)| {
            path.as_deref().map(|path| Output {
                flag,
                path,
                overwrite,
            })
        })
        .collect()
}

/// Error unless every output can be written: its folder exists and takes files, the path is not
/// a folder, no two outputs share a path, and an existing file is replaced only when allowed.
pub fn check(outputs: &[Output<'_>]) -> Result<()> {
    for (i, o) in outputs.iter().enumerate() {
        let shown = o.path.display();
        if let Some(other) = outputs[..i].iter().find(|p| same(p.path, o.path)) {
            bail!(
                "{} and {} both write {shown}: give them different paths",
                other.flag,
                o.flag
            );
        }
        if o.path.is_dir() {
            bail!("{} {shown}: is a folder, expected a file path", o.flag);
        }
        if o.path.exists() && !o.overwrite {
            bail!("{} {shown}: exists; pass --force to overwrite it", o.flag);
        }
        let parent = match o.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !parent.is_dir() {
            bail!(
                "{} {shown}: folder {} does not exist",
                o.flag,
                parent.display()
            );
        }
        // the one sure test of writability: create (and remove) a file there
        let probe = parent.join(format!(".perturb-write-check-{}", std::process::id()));
        match std::fs::File::create(&probe) {
            Ok(_) => {
                let _ = std::fs::remove_file(&probe);
            }
            Err(e) => bail!(
                "{} {shown}: folder {} is not writable ({e})",
                o.flag,
                parent.display()
            ),
        }
    }
    Ok(())
}

/// Whether two paths name the same file (compared after resolving the folder).
fn same(a: &Path, b: &Path) -> bool {
    let resolve = |p: &Path| -> PathBuf {
        let parent = p
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let dir = parent
            .canonicalize()
            .unwrap_or_else(|_| parent.to_path_buf());
        dir.join(p.file_name().unwrap_or_default())
    };
    resolve(a) == resolve(b)
}
