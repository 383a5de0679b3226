//! Whole-file writes that a reader never sees half done.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Write `bytes` to `path` through a sibling temporary file renamed over it: a reader sees the
/// old file or the new one, never a part of either. The temporary file is created as any new
/// file is (mode `0666` less the umask on Unix), so a replaced file gets the mode a new one
/// would, not a private temporary's `0600`.
///
/// # Errors
/// [`Error::Io`] naming `path` when the directory cannot be written or the rename fails; the
/// temporary file is removed.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |source| Error::Io {
        file: path.to_path_buf(),
        source,
    };
    let temp = temporary_sibling(path);
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    if written.is_err() {
        // Best effort: the write already failed, and that is the error to report.
        let _ = std::fs::remove_file(&temp);
    }
    written.map_err(io)
}

/// `dir/.name.PID.tmp` beside `path`, so that the rename stays within one file system.
fn temporary_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_files_and_leaves_no_temporary() {
        let dir = std::env::temp_dir().join(format!("perturb-atomic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("out.bin");
        write_atomic(&path, b"first").unwrap();
        write_atomic(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(left.len(), 1, "only the file itself remains");
        assert!(write_atomic(&dir.join("missing/out.bin"), b"x").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
