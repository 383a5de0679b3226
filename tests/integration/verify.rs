//! `perturb verify` and `data::verify`: every shipped file against the compiled-in manifests. A
//! home made of links to the checkout's files verifies clean; one flipped byte in any pinned
//! file, a missing file and an extra one are each found and named.

use std::path::{Path, PathBuf};

use crate::cli::text;
use perturb::data::{verify, FileStatus};

const CHECKOUT: &str = env!("CARGO_MANIFEST_DIR");

/// A fresh home whose files are symbolic links to the checkout's.
fn linked_home() -> PathBuf {
    let home = std::env::temp_dir().join(format!("perturb-verify-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&home);
    for dir in ["models", "data/mnist", "assets"] {
        link_tree(&Path::new(CHECKOUT).join(dir), &home.join(dir));
    }
    home
}

fn link_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            link_tree(&entry.path(), &target);
        } else {
            std::os::unix::fs::symlink(entry.path(), &target).unwrap();
        }
    }
}

#[test]
fn a_flipped_byte_in_any_shipped_file_is_found_and_named() {
    let home = linked_home();
    let clean = verify(&home).unwrap();
    assert!(clean.len() >= 20, "{clean:?}");
    assert!(
        clean.iter().all(|c| c.status == FileStatus::Ok),
        "{clean:?}"
    );
    let out = perturb_in(&home, &["verify"]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("all match"));
    for check in &clean {
        let path = home.join(&check.path);
        let original = std::fs::read(&path).unwrap();
        let mut flipped = original.clone();
        let at = flipped.len() / 2;
        flipped[at] ^= 0x01;
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, &flipped).unwrap();
        let found = verify(&home).unwrap();
        let bad: Vec<_> = found
            .iter()
            .filter(|c| c.status != FileStatus::Ok)
            .collect();
        assert_eq!(bad.len(), 1, "{}: {bad:?}", check.path.display());
        assert_eq!(bad[0].path, check.path);
        assert!(matches!(bad[0].status, FileStatus::Modified { .. }));
        if check.path.ends_with("mnist-cnn.safetensors") {
            // the command names it and fails
            let out = perturb_in(&home, &["verify"]);
            assert_eq!(out.status.code(), Some(1));
            let stdout = text(&out.stdout);
            assert!(
                stdout.contains("models/mnist-cnn.safetensors: MODIFIED"),
                "{stdout}"
            );
            assert!(stdout.contains("1 differ"), "{stdout}");
        }
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(Path::new(CHECKOUT).join(&check.path), &path).unwrap();
    }
    // a missing file and a file no manifest pins
    std::fs::remove_file(home.join("assets/images/coffee.png")).unwrap();
    std::fs::write(home.join("models/extra.safetensors"), b"not ours").unwrap();
    let found = verify(&home).unwrap();
    let status = |p: &str| {
        found
            .iter()
            .find(|c| c.path == Path::new(p))
            .map(|c| c.status.clone())
    };
    assert_eq!(
        status("assets/images/coffee.png"),
        Some(FileStatus::Missing)
    );
    assert_eq!(
        status("models/extra.safetensors"),
        Some(FileStatus::Unlisted)
    );
    let out = perturb_in(&home, &["verify"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("2 differ"));
    std::fs::remove_dir_all(&home).unwrap();
}

/// The binary with `PERTURB_HOME` set to `home`.
fn perturb_in(home: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_perturb"))
        .args(args)
        .env("PERTURB_HOME", home)
        .output()
        .expect("run the perturb binary")
}
