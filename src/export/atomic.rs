//! Whole-file writes that a reader never sees half done.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Write `bytes` to `path` through a sibling temporary file renamed over it: a reader sees the
/// old file or the new one, never a part of either. The temporary file is created as any new
/// file is (mode `0666` less the umask on Unix), so a replaced file gets the mode a new one
/// would, not a private temporary's `0600`.
///
/// Every file perturb writes (reports, sweeps, adversarial batches, weights, images, plots) goes
/// through here, so a run killed at any moment (SIGKILL included) leaves each output whole.
///
/// # Errors
/// [`Error::Io`] naming `path` when the directory cannot be written or the rename fails; the
/// temporary file is removed.
///
/// # Example
/// ```
/// let path = std::env::temp_dir().join(format!("perturb-doc-atomic-{}.txt", std::process::id()));
/// perturb::export::write_atomic(&path, b"old")?;
/// perturb::export::write_atomic(&path, b"new")?;
/// assert_eq!(std::fs::read(&path)?, b"new");
/// # std::fs::remove_file(&path)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
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

/// Encode `img` in the format `path`'s extension names (PNG when it names none that `image`
/// writes) and write it with [`write_atomic`].
pub(crate) fn write_image(img: &image::DynamicImage, path: &Path) -> Result<()> {
    let format = image::ImageFormat::from_path(path)
        .ok()
        .filter(|f| f.can_write())
        .unwrap_or(image::ImageFormat::Png);
    let mut bytes = std::io::Cursor::new(Vec::new());
    img.write_to(&mut bytes, format).map_err(|e| Error::Io {
        file: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })?;
    write_atomic(path, bytes.get_ref())
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

    /// The directory a [`killed_writer_leaves_old_or_new`] child writes in.
    const CHILD_DIR: &str = "PERTURB_ATOMIC_CHILD_DIR";

    /// Two contents of different lengths and bytes, large enough (4 and 6 MiB, each synced)
    /// that a kill lands inside a write, not only between writes.
    fn contents() -> [Vec<u8>; 2] {
        [vec![b'a'; 4 << 20], vec![b'b'; 6 << 20]]
    }

    /// Not a test of its own: the child process of [`killed_writer_leaves_old_or_new`], which
    /// rewrites one file with the two contents in turn until it is killed.
    #[test]
    #[ignore = "child process of killed_writer_leaves_old_or_new"]
    fn atomic_writer_child() {
        let Some(dir) = std::env::var_os(CHILD_DIR) else {
            return;
        };
        let path = PathBuf::from(dir).join("report.json");
        let [old, new] = contents();
        println!("writing");
        loop {
            write_atomic(&path, &new).unwrap();
            write_atomic(&path, &old).unwrap();
        }
    }

    /// A writer killed with SIGKILL at a random moment, 12 times, leaves the old file or the new
    /// one, whole, every time. The same check fails for a plain `std::fs::write`, which leaves a
    /// truncated file when the kill lands between its truncation and its last byte.
    #[test]
    fn killed_writer_leaves_old_or_new() {
        use rand::{Rng, SeedableRng};
        use std::io::BufRead;
        let dir = std::env::temp_dir().join(format!("perturb-atomic-kill-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("report.json");
        let [old, new] = contents();
        let mut rng = rand::rngs::StdRng::seed_from_u64(24);
        let mut seen = [0usize; 2];
        for _ in 0..12 {
            write_atomic(&path, &old).unwrap();
            let mut child = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "export::atomic::tests::atomic_writer_child",
                    "--exact",
                    "--ignored",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD_DIR, &dir)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            // Wait until the child is inside its loop, then let it write for a random while.
            let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
            let mut line = String::new();
            while !line.contains("writing") {
                line.clear();
                assert!(
                    out.read_line(&mut line).unwrap() > 0,
                    "the child never started"
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(rng.random_range(1..120)));
            child.kill().unwrap();
            child.wait().unwrap();
            let found = std::fs::read(&path).unwrap();
            let which = [&old, &new].iter().position(|c| **c == found);
            let Some(which) = which else {
                panic!(
                    "a killed writer left {} bytes that are neither file",
                    found.len()
                );
            };
            seen[which] += 1;
        }
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(seen.iter().sum::<usize>(), 12);
    }
}
