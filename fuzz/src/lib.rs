//! What every fuzz target shares: the input written to a file of its own in /dev/shm (perturb's
//! loaders read paths, and going through the file keeps the format detection in the loop).

use std::path::PathBuf;

/// Write `data` to this process's scratch file for `target` and return its path.
pub fn as_file(target: &str, data: &[u8]) -> PathBuf {
    let dir = if std::path::Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let path = dir.join(format!("perturb-fuzz-{}-{target}", std::process::id()));
    std::fs::write(&path, data).expect("scratch file");
    path
}
