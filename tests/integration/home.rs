//! `PERTURB_HOME`: the binary finds the shipped models and data through it, from any current
//! directory, and falls back to the checkout compiled in only when it is not set.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The checkout this test was built from (where the shipped files are).
const CHECKOUT: &str = env!("CARGO_MANIFEST_DIR");

/// A fresh, empty scratch directory for this test process.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("perturb-home-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    std::fs::copy(from, to)
        .unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), to.display()));
}

/// A home with the three MNIST models (weights, cards, SHA256SUMS) and the MNIST test split, but
/// not EfficientNet-Lite0.
fn small_home(name: &str) -> PathBuf {
    let home = scratch(name);
    let models = Path::new(CHECKOUT).join("models");
    for file in [
        "SHA256SUMS",
        "mnist-linear",
        "mnist-cnn",
        "mnist-cnn-fgsm-rs",
    ] {
        let names = if file == "SHA256SUMS" {
            vec![file.to_string()]
        } else {
            vec![format!("{file}.safetensors"), format!("{file}.md")]
        };
        for n in names {
            copy(&models.join(&n), &home.join("models").join(&n));
        }
    }
    let mnist = Path::new(CHECKOUT).join("data/mnist");
    for n in ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"] {
        copy(&mnist.join(n), &home.join("data/mnist").join(n));
    }
    home
}

/// Run the binary in `cwd` with `PERTURB_HOME` set to `home`, or removed for `None`.
fn perturb(cwd: &Path, home: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_perturb"));
    cmd.args(args).current_dir(cwd);
    match home {
        Some(h) => cmd.env("PERTURB_HOME", h),
        None => cmd.env_remove("PERTURB_HOME"),
    };
    cmd.output().expect("run the perturb binary")
}

/// `perturb models`' rows as (model, checksum status, file).
fn rows(out: &Output) -> Vec<(String, String, String)> {
    assert!(
        out.status.success(),
        "perturb models failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let file = line.rsplit("  ").next().unwrap().trim().to_string();
            (cols[0].to_string(), cols[2].to_string(), file)
        })
        .collect()
}

fn status_of<'a>(
    rows: &'a [(String, String, String)],
    model: &str,
) -> &'a (String, String, String) {
    rows.iter()
        .find(|r| r.0 == model)
        .unwrap_or_else(|| panic!("{model} not listed in {rows:?}"))
}

#[test]
fn models_are_found_through_perturb_home_from_another_directory() {
    let home = small_home("full");
    let elsewhere = scratch("cwd-full");
    let rows = rows(&perturb(&elsewhere, Some(&home), &["models"]));
    for name in ["mnist-linear", "mnist-cnn", "mnist-cnn-fgsm-rs"] {
        let (_, status, file) = status_of(&rows, name);
        assert_eq!(status, "ok", "{name}: {rows:?}");
        assert!(
            Path::new(file).starts_with(&home),
            "{name} read from {file}, not from PERTURB_HOME {}",
            home.display()
        );
    }
    // Not copied, so missing: the checkout is not consulted when PERTURB_HOME is set.
    assert_eq!(status_of(&rows, "efficientnet-lite0").1, "missing");
    // The card (clean accuracy) comes from the home too.
    let out =
        String::from_utf8_lossy(&perturb(&elsewhere, Some(&home), &["models"]).stdout).into_owned();
    assert!(out.contains("99.31 %"), "mnist-cnn's card not read: {out}");
}

#[test]
fn an_empty_perturb_home_has_every_model_missing() {
    let home = scratch("empty");
    let elsewhere = scratch("cwd-empty");
    let rows = rows(&perturb(&elsewhere, Some(&home), &["models"]));
    assert!(!rows.is_empty());
    for (name, status, _) in &rows {
        assert_eq!(
            status, "missing",
            "{name} found although PERTURB_HOME is empty"
        );
    }
}

#[test]
fn without_perturb_home_the_checkout_is_used_from_any_directory() {
    let elsewhere = scratch("cwd-fallback");
    let rows = rows(&perturb(&elsewhere, None, &["models"]));
    for name in ["mnist-linear", "mnist-cnn", "mnist-cnn-fgsm-rs"] {
        let (_, status, file) = status_of(&rows, name);
        assert_eq!(status, "ok", "{name}: {rows:?}");
        assert!(Path::new(file).starts_with(CHECKOUT), "{file}");
    }
}

#[test]
fn attacks_load_model_and_data_from_perturb_home() {
    let home = small_home("attack");
    let elsewhere = scratch("cwd-attack");
    let args = [
        "attack",
        "--model",
        "mnist-linear",
        "--attack",
        "fgsm",
        "--eps",
        "0.1",
        "--n",
        "20",
    ];
    let out = perturb(&elsewhere, Some(&home), &args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Without the MNIST files in the home, the data are missing: no fallback to the checkout.
    std::fs::remove_dir_all(home.join("data")).unwrap();
    let out = perturb(&elsewhere, Some(&home), &args);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&*home.to_string_lossy()), "{err}");
}

/// A well-formed but tampered MNIST (every pixel 255, re-compressed) is refused by its checksum
/// instead of being evaluated (it gave 2 % clean accuracy without complaint).
#[test]
fn tampered_mnist_is_refused() {
    use std::io::{Read, Write};
    let home = small_home("tampered-mnist");
    let file = home.join("data/mnist/t10k-images-idx3-ubyte.gz");
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(&file).unwrap())
        .read_to_end(&mut raw)
        .unwrap();
    for px in &mut raw[16..] {
        *px = 255;
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&raw).unwrap();
    std::fs::write(&file, gz.finish().unwrap()).unwrap();
    let out = perturb(
        &home,
        Some(&home),
        &[
            "attack",
            "--model",
            "mnist-linear",
            "--eps",
            "0.1",
            "--n",
            "4",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("checksum") && stderr.contains("t10k-images"),
        "{stderr}"
    );
}
