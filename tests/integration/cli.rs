//! The `perturb` binary, run as a user runs it: every subcommand, its JSON against the library's
//! own numbers, an independent recount from saved adversarials, the gate's exit codes, and one
//! clear line with exit code 2 for every bad argument.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{Device, Module, Tensor};
use perturb::data::Mnist;
use perturb::eval::Evaluator;
use perturb::metrics::{Report, Sweep};
use perturb::{zoo, Budget, Pgd};

pub(crate) fn perturb(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_perturb"))
        .args(args)
        .output()
        .expect("run the perturb binary")
}

pub(crate) fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("perturb-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

pub(crate) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> T {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Predicted classes straight from candle, independent of perturb's own evaluation code.
fn argmax(model: &impl Module, x: &Tensor) -> Vec<u32> {
    model
        .forward(x)
        .unwrap()
        .argmax(1)
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Width and height of a PNG, decoding it fully.
fn png_size(path: &Path) -> (u32, u32) {
    let img = image::open(path).expect("a valid image");
    (img.width(), img.height())
}

mod models {
    use super::*;

    #[test]
    fn lists_every_shipped_model_with_a_verified_checksum() {
        let out = perturb(&["models"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let stdout = text(&out.stdout);
        for s in zoo::SHIPPED {
            let line = stdout
                .lines()
                .find(|l| l.starts_with(s.name))
                .unwrap_or_else(|| panic!("{} missing in\n{stdout}", s.name));
            assert!(line.contains(" ok "), "{line}");
            assert!(line.contains('%'), "{line}");
        }
    }
}

mod attack {
    use super::*;

    const ARGS: [&str; 16] = [
        "attack",
        "--model",
        "mnist-cnn",
        "--attack",
        "pgd",
        "--eps",
        "0.1",
        "--steps",
        "5",
        "--step-size",
        "0.03",
        "--seed",
        "3",
        "--n",
        "48",
        "--quiet",
    ];

    #[test]
    fn json_equals_the_library_and_saved_adversarials_recount_it() {
        let (json, adv, grid, csv) = (
            tmp("attack.json"),
            tmp("adv.safetensors"),
            tmp("grid.png"),
            tmp("attack.csv"),
        );
        let mut args = ARGS.to_vec();
        let paths = [&json, &adv, &grid, &csv].map(|p| p.to_str().unwrap().to_string());
        args.extend([
            "--json",
            &paths[0],
            "--save-adversarials",
            &paths[1],
            "--grid",
            &paths[2],
            "--csv",
            &paths[3],
        ]);
        let out = perturb(&args);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let report: Report = read_json(&json);
        assert_eq!(report.schema_version, perturb::metrics::SCHEMA_VERSION);

        // The library's own numbers for the same run.
        let dev = Device::Cpu;
        let model = zoo::load("mnist-cnn", &dev).unwrap();
        let (images, labels) = Mnist::load_test_default(&dev).unwrap();
        let (x, y) = (
            images.narrow(0, 0, 48).unwrap(),
            labels.narrow(0, 0, 48).unwrap(),
        );
        let pgd = Pgd::new(Budget::linf(0.1).unwrap())
            .steps(5)
            .step_size(0.03)
            .seed(3)
            .early_stop(true);
        let lib = Evaluator::new(&model, &x, &y)
            .unwrap()
            .run(&pgd, None)
            .unwrap()
            .report;
        assert_eq!(
            (
                report.clean_correct,
                report.robust_correct,
                report.successes
            ),
            (lib.clean_correct, lib.robust_correct, lib.successes)
        );
        assert_eq!(report.gradient_evals, lib.gradient_evals);
        assert_eq!(report.perturbation, lib.perturbation);
        assert_eq!(report.attack.params, lib.attack.params);
        assert!(
            report.robust_correct < report.clean_correct,
            "the attack did something"
        );

        // Independent recount from the saved adversarials: re-classify, re-check every budget.
        let saved = candle_core::safetensors::load(&adv, &dev).unwrap();
        let (xs, xa) = (&saved["x"], &saved["x_adv"]);
        let labels = saved["labels"].to_vec1::<u32>().unwrap();
        assert_eq!(labels, y.to_vec1::<u32>().unwrap());
        assert_eq!(
            xs.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            x.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
        let clean = argmax(&model, xs);
        let adv_pred = argmax(&model, xa);
        assert_eq!(
            adv_pred,
            saved["adversarial_predictions"].to_vec1::<u32>().unwrap()
        );
        let robust = (0..48)
            .filter(|&i| clean[i] == labels[i] && adv_pred[i] == labels[i])
            .count();
        assert_eq!(robust, report.robust_correct);
        let (a, b) = (
            xs.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            xa.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        for (p, q) in a.iter().zip(&b) {
            assert!((q - p).abs() <= 0.1 + 1e-6 && (0.0..=1.0).contains(q));
        }

        let (gw, gh) = png_size(&grid);
        assert_eq!((gw, gh), perturb::export::grid_size(8, 28, 28));
        let csv = std::fs::read_to_string(&csv).unwrap();
        assert_eq!(csv.lines().count(), 2);
        assert!(csv.lines().nth(1).unwrap().starts_with("mnist-cnn,"));
    }

    #[test]
    fn targeted_attack_skips_the_target_class_and_reports_it() {
        let json = tmp("targeted.json");
        let out = perturb(&[
            "attack",
            "--model",
            "mnist-linear",
            "--attack",
            "pgd",
            "--eps",
            "0.2",
            "--steps",
            "10",
            "--targeted",
            "3",
            "--n",
            "30",
            "--quiet",
            "--json",
            json.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let report: Report = read_json(&json);
        assert_eq!(report.attack.target, Some(3));
        assert_eq!(report.samples, 30);
        assert!(report.successes > 0 && report.successes <= report.clean_correct);
    }
    /// The ImageNet model on a photo given by path, a target given by name: the cat becomes a
    /// toaster at ε = 2/255, and the saved PNG, read back as a user would, is still a toaster.
    #[test]
    fn photo_by_path_turns_into_a_named_target_and_the_png_proves_it() {
        let dir = tmp("photos");
        let cat = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/images/chelsea.png");
        let json = tmp("toaster.json");
        let out = perturb(&[
            "attack",
            "--model",
            "efficientnet-lite0",
            "--image",
            cat,
            "--targeted",
            "toaster",
            "--eps",
            "0.00784314", // 2/255
            "--steps",
            "20",
            "--quiet",
            "--json",
            json.to_str().unwrap(),
            "--save-png",
            dir.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let stdout = text(&out.stdout);
        assert!(stdout.contains("-> 859 toaster"), "{stdout}");
        assert!(stdout.contains("toward 859 (toaster)"), "{stdout}");
        let report: Report = read_json(&json);
        assert_eq!((report.attack.target, report.successes), (Some(859), 1));
        // independent check of the file: decode, classify with plain candle
        let png = dir.join("chelsea.adv.png");
        let x =
            perturb::data::load_photo(&png, 224, perturb::data::Fit::Crop, &Device::Cpu).unwrap();
        let model = zoo::load("efficientnet-lite0", &Device::Cpu).unwrap();
        assert_eq!(argmax(&model, &x.unsqueeze(0).unwrap()), [859]);
        // and it stays within 2/255 of the preprocessed photo, 8-bit rounding included
        let clean =
            perturb::data::load_photo(cat, 224, perturb::data::Fit::ResizeCrop, &Device::Cpu)
                .unwrap();
        let linf = (x - clean).unwrap().abs().unwrap().max_all().unwrap();
        assert!(linf.to_scalar::<f32>().unwrap() <= 2.5 / 255.0);

        // a photo without --image, an unknown class name, a missing file: exit 2, one line
        for (args, needle) in [
            (vec!["--model", "efficientnet-lite0"], "--image"),
            (
                vec![
                    "--model",
                    "efficientnet-lite0",
                    "--image",
                    cat,
                    "--targeted",
                    "unicorn",
                ],
                "unicorn",
            ),
            (
                vec![
                    "--model",
                    "efficientnet-lite0",
                    "--image",
                    "/nonexistent/cat.png",
                ],
                "cat.png",
            ),
        ] {
            let mut full = vec!["attack", "--eps", "0.01"];
            full.extend(args);
            let out = perturb(&full);
            let err = text(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{err}");
            assert!(err.contains(needle) && err.lines().count() == 1, "{err}");
        }
    }
}

mod eval {
    use super::*;

    #[test]
    fn sweep_json_plot_and_monotone_pgd_curve() {
        let (json, plot) = (tmp("sweep.json"), tmp("curve.png"));
        let out = perturb(&[
            "eval",
            "--model",
            "mnist-cnn",
            "--attacks",
            "fgsm,pgd",
            "--eps",
            "0,0.1,0.2,0.3",
            "--n",
            "40",
            "--quiet",
            "--json",
            json.to_str().unwrap(),
            "--plot",
            plot.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let sweep: Sweep = read_json(&json);
        assert_eq!(sweep.reports.len(), 8);
        let pgd: Vec<usize> = sweep
            .reports
            .iter()
            .filter(|r| r.attack.name == "pgd")
            .map(|r| r.robust_correct)
            .collect();
        assert!(pgd.windows(2).all(|w| w[1] <= w[0]), "{pgd:?}");
        assert_eq!(
            sweep.reports[0].robust_correct,
            sweep.reports[0].clean_correct
        );
        // worst case never exceeds any single attack
        for (e, p) in sweep.worst_case.iter().enumerate() {
            for a in 0..2 {
                assert!(p.robust_accuracy <= sweep.reports[a * 4 + e].robust_accuracy);
            }
        }
        assert_eq!(png_size(&plot), perturb::export::CURVE_SIZE);
        assert!(text(&out.stdout).contains("worst case"));
    }
}

mod bad_arguments {
    use super::*;

    /// Exit code 2, exactly one line on stderr mentioning `needle`, no panic.
    fn rejects(args: &[&str], needle: &str) {
        let out = perturb(args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }

    fn attack_with(extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = ["attack", "--attack", "fgsm", "--n", "4", "--quiet"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    fn rejects_attack(extra: &[&str], needle: &str) {
        let args = attack_with(extra);
        rejects(&args.iter().map(String::as_str).collect::<Vec<_>>(), needle);
    }

    #[test]
    fn unknown_model() {
        rejects_attack(&["--model", "resnet-9000", "--eps", "0.1"], "unknown model");
    }

    #[test]
    fn unreadable_or_malformed_weights() {
        let junk = tmp("junk.safetensors");
        std::fs::write(&junk, b"not a safetensors file").unwrap();
        let p = junk.to_str().unwrap();
        rejects_attack(
            &["--model", p, "--arch", "small-cnn", "--eps", "0.1"],
            "weights",
        );
        let dir = std::env::temp_dir();
        let d = dir.to_str().unwrap();
        rejects_attack(
            &["--model", d, "--arch", "small-cnn", "--eps", "0.1"],
            "error",
        );
        rejects_attack(&["--model", p, "--eps", "0.1"], "arch");
    }

    #[test]
    fn tampered_weights() {
        let original = zoo::models_dir().join("mnist-linear.safetensors");
        let mut bytes = std::fs::read(&original).unwrap();
        let pin = zoo::sha256_hex(&bytes);
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let copy = tmp("tampered.safetensors");
        std::fs::write(&copy, &bytes).unwrap();
        let p = copy.to_str().unwrap();
        rejects_attack(
            &[
                "--model",
                p,
                "--arch",
                "mnist-linear",
                "--sha256",
                &pin,
                "--eps",
                "0.1",
            ],
            "sha256",
        );
    }

    #[test]
    fn eps_out_of_range() {
        rejects_attack(&["--model", "mnist-linear", "--eps", "1.5"], "out of range");
        rejects_attack(&["--model", "mnist-linear", "--eps=-0.1"], "out of range");
        rejects_attack(&["--model", "mnist-linear", "--eps", "nan"], "out of range");
        rejects(
            &[
                "eval",
                "--model",
                "mnist-linear",
                "--eps",
                "0,2",
                "--n",
                "4",
                "--quiet",
            ],
            "out of range",
        );
        rejects(
            &[
                "eval",
                "--model",
                "mnist-linear",
                "--eps",
                "0,x",
                "--n",
                "4",
                "--quiet",
            ],
            "not a number",
        );
    }

    #[test]
    fn n_larger_than_the_data_set() {
        rejects(
            &[
                "attack",
                "--model",
                "mnist-linear",
                "--eps",
                "0.1",
                "--n",
                "20000",
            ],
            "10000",
        );
    }

    #[test]
    fn cuda_without_the_feature() {
        if cfg!(feature = "cuda") {
            return;
        }
        rejects_attack(
            &[
                "--model",
                "mnist-linear",
                "--eps",
                "0.1",
                "--device",
                "cuda",
            ],
            "cuda",
        );
    }

    #[test]
    fn usage_errors() {
        rejects(&["attack", "--model", "mnist-linear"], "--eps");
        rejects(&["frobnicate"], "frobnicate");
        rejects_attack(
            &["--model", "mnist-linear", "--eps", "0.1", "--norm", "l3"],
            "norm",
        );
        rejects(
            &[
                "attack",
                "--model",
                "mnist-linear",
                "--eps",
                "0.1",
                "--attack",
                "jsma",
            ],
            "unknown attack",
        );
        rejects_attack(
            &[
                "--model",
                "mnist-linear",
                "--eps",
                "0.1",
                "--targeted",
                "12",
            ],
            "targeted",
        );
    }

    #[test]
    fn help_lists_examples_and_exits_zero() {
        let out = perturb(&["--help"]);
        assert_eq!(out.status.code(), Some(0));
        let help = text(&out.stdout);
        for sub in ["models", "attack", "eval", "gate", "Examples:"] {
            assert!(help.contains(sub), "{help}");
        }
    }
}

mod registry {
    use super::*;

    /// robust_correct and gradient evaluations of an `attack` run's JSON.
    fn figures(extra: &[&str], name: &str) -> (usize, u64, serde_json::Value) {
        let json = tmp(name);
        let mut args = vec![
            "attack",
            "--model",
            "mnist-linear",
            "--eps",
            "0.1",
            "--n",
            "40",
            "--quiet",
        ];
        args.extend(extra);
        args.extend(["--json", json.to_str().unwrap()]);
        let out = perturb(&args);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        let r: Report = read_json(&json);
        (r.robust_correct, r.gradient_evals, r.attack.params)
    }

    #[test]
    fn params_and_spec_files_build_the_same_attack_as_the_old_flags() {
        let old = figures(
            &["--steps", "7", "--seed", "4", "--no-early-stop"],
            "old.json",
        );
        let new = figures(
            &[
                "--param",
                "steps=7",
                "--param",
                "seed=4",
                "--param",
                "early_stop=false",
            ],
            "param.json",
        );
        assert_eq!(old, new);
        let spec = tmp("pgd7.json");
        std::fs::write(
            &spec,
            r#"{"attack": "pgd", "norm": "linf", "eps": 0.1, "steps": 7, "seed": 4, "early_stop": false}"#,
        )
        .unwrap();
        let from_file = figures(&["--attack-spec", spec.to_str().unwrap()], "spec.json");
        assert_eq!(old, from_file);
        // command-line flags override the file
        let overridden = figures(
            &["--attack-spec", spec.to_str().unwrap(), "--steps", "3"],
            "spec3.json",
        );
        assert_eq!(overridden.2["steps"], 3);
        assert!(
            overridden.1 > 0 && overridden.1 <= 3 * 40,
            "{}",
            overridden.1
        ); // at most 3 per sample
    }

    #[test]
    fn bim_is_pgd_without_random_start() {
        let bim = figures(&["--attack", "bim", "--steps", "5"], "bim.json");
        let pgd = figures(&["--steps", "5", "--no-random-start"], "pgd-nrs.json");
        assert_eq!((bim.0, bim.1), (pgd.0, pgd.1));
        assert_eq!(bim.2["random_start"], false);
    }

    #[test]
    fn attacks_lists_the_registry_with_parameters() {
        let out = perturb(&["attacks"]);
        assert!(out.status.success());
        let stdout = text(&out.stdout);
        for name in perturb::attack::Registry::builtin().names() {
            assert!(stdout.contains(name), "{stdout}");
        }
        assert!(stdout.contains("--param steps=10"), "{stdout}");
    }

    #[test]
    fn bad_params_are_one_line_errors() {
        for (extra, needle) in [
            (vec!["--param", "stpes=3"], "unknown parameter"),
            (vec!["--param", "steps"], "KEY=VALUE"),
            (vec!["--param", "steps=0"], "steps"),
            (vec!["--param", "steps=many"], "steps"),
            (vec!["--attack-spec", "/nonexistent/spec.json"], "spec.json"),
        ] {
            let mut args = vec![
                "attack",
                "--model",
                "mnist-linear",
                "--eps",
                "0.1",
                "--n",
                "4",
            ];
            args.extend(extra);
            let out = perturb(&args);
            let stderr = text(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
            assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
            assert!(stderr.contains(needle), "{args:?}: {stderr}");
        }
        // eval: a parameter no attack of the list takes
        let out = perturb(&[
            "eval",
            "--model",
            "mnist-linear",
            "--attacks",
            "fgsm",
            "--eps",
            "0.1",
            "--n",
            "4",
            "--param",
            "steps=3",
        ]);
        assert_eq!(out.status.code(), Some(2));
        assert!(
            text(&out.stderr).contains("takes it"),
            "{}",
            text(&out.stderr)
        );
    }
}

/// Issue 27's first-hour fixes, each as a user meets it.
mod first_hour {
    use super::*;
    use std::process::Stdio;

    /// Run with stdout closed before the program writes: as `perturb ... | head -0`.
    fn with_closed_stdout(args: &[&str]) -> Output {
        let mut child = Command::new(env!("CARGO_BIN_EXE_perturb"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take()); // the reader goes away
        child.wait_with_output().unwrap()
    }

    #[test]
    fn a_closed_stdout_ends_quietly_and_gate_keeps_its_verdict() {
        let out = with_closed_stdout(&["models"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        assert!(
            !text(&out.stderr).contains("panicked"),
            "{}",
            text(&out.stderr)
        );
        let gate = |min: &str| {
            with_closed_stdout(&[
                "gate",
                "--confidence",
                "0",
                "--model",
                "mnist-linear",
                "--attack",
                "fgsm",
                "--eps",
                "0.05",
                "--n",
                "20",
                "--quiet",
                "--min-robust-accuracy",
                min,
            ])
        };
        let (pass, fail) = (gate("0"), gate("1"));
        assert_eq!(pass.status.code(), Some(0), "{}", text(&pass.stderr));
        assert_eq!(fail.status.code(), Some(1), "{}", text(&fail.stderr));
        assert!(!text(&fail.stderr).contains("panicked"));
    }

    #[test]
    fn output_paths_are_checked_before_anything_is_loaded_or_computed() {
        // an unknown model would fail at loading: the output's error comes first
        for (cmd, flag) in [
            ("eval", "--json"),
            ("gate", "--json"),
            ("attack", "--csv"),
            ("eval", "--plot"),
        ] {
            let mut args = vec![
                cmd,
                "--model",
                "no-such-model",
                "--eps",
                "0.1",
                flag,
                "/nonexistent/dir/x.out",
            ];
            if cmd == "gate" {
                args.extend(["--min-robust-accuracy", "0.5"]);
            }
            let out = perturb(&args);
            let stderr = text(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
            assert!(
                stderr.contains("/nonexistent/dir") && stderr.contains("does not exist"),
                "{stderr}"
            );
        }
        let dir = std::env::temp_dir();
        let out = perturb(&[
            "eval",
            "--model",
            "no-such-model",
            "--json",
            dir.to_str().unwrap(),
        ]);
        assert!(
            text(&out.stderr).contains("is a folder"),
            "{}",
            text(&out.stderr)
        );
    }

    #[test]
    fn existing_adversarials_are_kept_unless_forced_and_outputs_must_differ() {
        let adv = tmp("keep.safetensors");
        std::fs::write(&adv, b"precious").unwrap();
        let p = adv.to_str().unwrap();
        let base = [
            "attack",
            "--model",
            "mnist-linear",
            "--attack",
            "fgsm",
            "--eps",
            "0.1",
            "--n",
            "4",
            "--quiet",
        ];
        let mut args = base.to_vec();
        args.extend(["--save-adversarials", p]);
        let out = perturb(&args);
        assert_eq!(out.status.code(), Some(2));
        assert!(
            text(&out.stderr).contains("--force"),
            "{}",
            text(&out.stderr)
        );
        assert_eq!(std::fs::read(&adv).unwrap(), b"precious");
        args.push("--force");
        assert!(perturb(&args).status.success());
        assert_ne!(std::fs::read(&adv).unwrap(), b"precious");
        let same = tmp("same.out");
        let s = same.to_str().unwrap();
        let mut args = base.to_vec();
        args.extend(["--json", s, "--csv", s]);
        let out = perturb(&args);
        assert_eq!(out.status.code(), Some(2));
        assert!(
            text(&out.stderr).contains("both write"),
            "{}",
            text(&out.stderr)
        );
    }

    /// Saved adversarials recounted in `f64` from their `f32` values lie within ε (the `f32`
    /// value of ε, exactly) for every norm: an L∞ bound `x + ε` rounded above the exact sum
    /// used to leave pixels up to half an ulp outside.
    #[test]
    fn saved_adversarials_are_within_eps_in_f64_for_every_norm() {
        for (norm, eps) in [("linf", "0.1"), ("l2", "1.5"), ("l1", "12")] {
            let adv = tmp(&format!("recount-{norm}.safetensors"));
            let out = perturb(&[
                "attack",
                "--model",
                "mnist-linear",
                "--attack",
                "pgd",
                "--norm",
                norm,
                "--eps",
                eps,
                "--steps",
                "10",
                "--n",
                "64",
                "--quiet",
                "--force",
                "--save-adversarials",
                adv.to_str().unwrap(),
            ]);
            assert!(out.status.success(), "{}", text(&out.stderr));
            let saved = candle_core::safetensors::load(&adv, &Device::Cpu).unwrap();
            let rows = |name: &str| {
                saved[name]
                    .flatten_from(1)
                    .unwrap()
                    .to_vec2::<f32>()
                    .unwrap()
            };
            let (x, x_adv) = (rows("x"), rows("x_adv"));
            let eps = f64::from(eps.parse::<f32>().unwrap());
            let (mut at_bound, mut worst) = (0usize, 0f64);
            for (clean, moved) in x.iter().zip(&x_adv) {
                let d = clean
                    .iter()
                    .zip(moved)
                    .map(|(a, b)| f64::from(*b) - f64::from(*a));
                let dist = match norm {
                    "linf" => d.fold(0.0, |m: f64, v| m.max(v.abs())),
                    "l2" => d.map(|v| v * v).sum::<f64>().sqrt(),
                    _ => d.map(f64::abs).sum(),
                };
                let bound = if norm == "linf" {
                    eps
                } else {
                    eps * (1.0 + 1e-12)
                };
                assert!(dist <= bound, "{norm}: distance {dist} > eps {eps}");
                assert!(moved.iter().all(|v| (0.0..=1.0).contains(v)));
                at_bound += usize::from(dist >= eps * (1.0 - 1e-4));
                worst = worst.max(dist);
            }
            // The check is not vacuous: the attack uses its budget.
            assert!(at_bound > 0, "{norm}: largest distance {worst}, eps {eps}");
        }
    }

    /// Saved adversarials get the mode any new file gets, also when `--force` replaces a file
    /// (both used to be `0600`, the mode of a private temporary file).
    #[cfg(unix)]
    #[test]
    fn a_replaced_file_gets_the_mode_of_a_new_one() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let (fresh, replaced) = (tmp("mode-new.safetensors"), tmp("mode-old.safetensors"));
        let _ = std::fs::remove_file(&fresh);
        std::fs::write(&replaced, b"old").unwrap();
        for (path, force) in [(&fresh, false), (&replaced, true)] {
            let mut args = vec![
                "attack",
                "--model",
                "mnist-linear",
                "--attack",
                "fgsm",
                "--eps",
                "0.1",
                "--n",
                "4",
                "--quiet",
                "--save-adversarials",
                path.to_str().unwrap(),
            ];
            if force {
                args.push("--force");
            }
            let out = perturb(&args);
            assert!(out.status.success(), "{}", text(&out.stderr));
        }
        // What any new file gets here (0666 less the umask, which the child inherits).
        let probe = tmp("mode-probe");
        let _ = std::fs::remove_file(&probe);
        std::fs::write(&probe, b"").unwrap();
        assert_eq!(mode(&fresh), mode(&probe));
        assert_eq!(mode(&replaced), mode(&probe));
        assert_ne!(std::fs::read(&replaced).unwrap(), b"old");
    }

    #[test]
    fn eps_as_a_fraction_negative_eps_and_loss_names() {
        let json = tmp("frac.json");
        let out = perturb(&[
            "attack",
            "--model",
            "mnist-linear",
            "--attack",
            "fgsm",
            "--eps",
            "8/255",
            "--n",
            "4",
            "--quiet",
            "--loss",
            "dlr",
            "--json",
            json.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let r: Report = read_json(&json);
        assert_eq!(r.attack.eps, Some(8.0f32 / 255.0));
        assert_eq!(r.attack.params["loss"], "dlr");
        for eps in ["-0.1", "-1"] {
            let out = perturb(&[
                "attack",
                "--model",
                "mnist-linear",
                "--eps",
                eps,
                "--n",
                "4",
            ]);
            assert_eq!(out.status.code(), Some(2));
            assert!(
                text(&out.stderr).contains("out of range"),
                "{}",
                text(&out.stderr)
            );
        }
        let out = perturb(&[
            "attack",
            "--model",
            "mnist-linear",
            "--eps",
            "8/x",
            "--n",
            "4",
        ]);
        assert!(
            text(&out.stderr).contains("fraction"),
            "{}",
            text(&out.stderr)
        );
        let out = perturb(&[
            "attack",
            "--model",
            "mnist-linear",
            "--eps",
            "0.1",
            "--norm",
            "2",
            "--n",
            "4",
            "--quiet",
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }

    #[test]
    fn file_errors_name_the_real_problem_once() {
        let out = perturb(&[
            "attack",
            "--model",
            "/nonexistent/w.safetensors",
            "--arch",
            "small-cnn",
            "--eps",
            "0.1",
        ]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2));
        assert!(stderr.contains("/nonexistent/w.safetensors"), "{stderr}");
        assert!(!stderr.contains("unknown model"), "{stderr}");
        let junk = tmp("noarch.safetensors");
        std::fs::write(&junk, b"x").unwrap();
        let out = perturb(&["attack", "--model", junk.to_str().unwrap(), "--eps", "0.1"]);
        assert!(
            text(&out.stderr).contains("--arch is required"),
            "{}",
            text(&out.stderr)
        );
        let out = perturb(&[
            "attack",
            "--model",
            "mnist-linear",
            "--eps",
            "0.1",
            "--attack-spec",
            "/nonexistent/s.json",
        ]);
        let stderr = text(&out.stderr);
        assert_eq!(stderr.matches("os error 2").count(), 1, "{stderr}");
    }

    #[test]
    fn image_files_refuse_mnist_selections_and_eval_grids_follow_the_norm() {
        let photo = "assets/images/chelsea.png";
        for flag in ["--n", "--offset"] {
            let out = perturb(&[
                "attack",
                "--model",
                "efficientnet-lite0",
                "--image",
                photo,
                "--eps",
                "0.01",
                flag,
                "3",
            ]);
            assert_eq!(out.status.code(), Some(2));
            assert!(
                text(&out.stderr).contains("--image"),
                "{}",
                text(&out.stderr)
            );
        }
        let json = tmp("l2grid.json");
        let out = perturb(&[
            "eval",
            "--model",
            "mnist-linear",
            "--attacks",
            "fgsm",
            "--norm",
            "l2",
            "--n",
            "8",
            "--quiet",
            "--json",
            json.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let sweep: Sweep = read_json(&json);
        let eps: Vec<f32> = sweep
            .reports
            .iter()
            .map(|r| r.attack.eps.unwrap())
            .collect();
        assert_eq!(eps, [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]);
    }

    #[test]
    fn weights_are_checked_before_they_are_read() {
        // /dev/zero used to be read until memory ran out
        let out = perturb(&[
            "attack",
            "--model",
            "/dev/zero",
            "--arch",
            "small-cnn",
            "--eps",
            "0.1",
        ]);
        assert_eq!(out.status.code(), Some(2));
        assert!(
            text(&out.stderr).contains("not a regular file"),
            "{}",
            text(&out.stderr)
        );
        let bomb = tmp("header-bomb.safetensors");
        let mut bytes = (1u64 << 40).to_le_bytes().to_vec();
        bytes.extend_from_slice(b"{}");
        std::fs::write(&bomb, bytes).unwrap();
        let out = perturb(&[
            "attack",
            "--model",
            bomb.to_str().unwrap(),
            "--arch",
            "small-cnn",
            "--eps",
            "0.1",
        ]);
        assert_eq!(out.status.code(), Some(2));
        assert!(
            text(&out.stderr).contains("header"),
            "{}",
            text(&out.stderr)
        );
    }

    #[test]
    fn clap_tips_and_usage_are_kept_on_the_one_line() {
        let out = perturb(&[
            "attack",
            "--model",
            "mnist-linear",
            "--eps",
            "0.1",
            "--stpes",
            "3",
        ]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2));
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains("tip:") && stderr.contains("--steps") && stderr.contains("Usage:"),
            "{stderr}"
        );
    }
}

mod patch {
    use super::*;
    use perturb::attack::{Patch, PatchApplication, PatchTrainer, Region, Transforms};

    /// `patch train` → `patch eval` → `patch apply`: the saved patch is the one the library
    /// trains with the same settings, and both figures equal the library's on the same images.
    #[test]
    fn train_eval_apply_agree_with_the_library() {
        let (file, png, eval_json, apply_json) = (
            tmp("patch.safetensors"),
            tmp("patch.png"),
            tmp("patch-eval.json"),
            tmp("patch-apply.json"),
        );
        let paths = [&file, &png, &eval_json, &apply_json].map(|p| p.to_str().unwrap().to_string());
        let model_args = ["--model", "mnist-linear", "--quiet"];
        let mut train = vec!["patch", "train", "--target", "3", "--area", "0.1"];
        train.extend([
            "--steps",
            "8",
            "--train-batch",
            "16",
            "--n",
            "200",
            "--seed",
            "5",
        ]);
        train.extend([
            "--rotation",
            "10",
            "--out",
            &paths[0],
            "--png",
            &paths[1],
            "--force",
        ]);
        train.extend(model_args);
        let out = perturb(&train);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(
            text(&out.stdout).contains("toward 3"),
            "{}",
            text(&out.stdout)
        );

        let dev = Device::Cpu;
        let model = zoo::load("mnist-linear", &dev).unwrap();
        let mnist = Mnist::load_default(&dev).unwrap();
        // the first 200 training digits that are not a 3
        let keep = |labels: &Tensor, n: usize| -> Vec<u32> {
            let l = labels.to_vec1::<u32>().unwrap();
            (0..l.len() as u32)
                .filter(|&i| l[i as usize] != 3)
                .take(n)
                .collect()
        };
        let pick =
            |x: &Tensor, idx: &[u32]| x.index_select(&Tensor::new(idx, &dev).unwrap(), 0).unwrap();
        let train_idx = keep(&mnist.train_labels, 200);
        let rotation = Transforms {
            rotation_deg: 10.0,
            ..Transforms::default()
        };
        let trained = PatchTrainer::new(3, 0.1)
            .steps(8)
            .batch_size(16)
            .transforms(rotation)
            .seed(5)
            .train(&model, &pick(&mnist.train_images, &train_idx))
            .unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let saved = Patch::load(&file, &dev).unwrap();
        assert_eq!(flat(saved.pixels()), flat(trained.patch.pixels()));
        let from_png = Patch::load_png(&png, 1, perturb::attack::PatchShape::Square, &dev).unwrap();
        let png_error = flat(from_png.pixels())
            .iter()
            .zip(flat(saved.pixels()))
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            png_error <= 0.5 / 255.0 + 1e-6,
            "PNG is the patch to 8 bits"
        );

        for (path, json) in [(&paths[0], &paths[2]), (&paths[1], &paths[2])] {
            let mut eval = vec![
                "patch", "eval", "--patch", path, "--target", "3", "--n", "300",
            ];
            eval.extend(["--rotation", "10", "--seed", "2", "--json", json]);
            eval.extend(model_args);
            let out = perturb(&eval);
            assert!(out.status.success(), "{}", text(&out.stderr));
        }
        let test_idx = keep(&mnist.test_labels, 300);
        let (xt, yt) = (
            pick(&mnist.test_images, &test_idx),
            pick(&mnist.test_labels, &test_idx),
        );
        let lib = PatchTrainer::new(3, 0.1)
            .transforms(rotation)
            .evaluate(&model, &from_png, &xt, &yt, 2)
            .unwrap();
        let got: serde_json::Value = read_json(&eval_json);
        assert_eq!(got["images"], 300);
        assert_eq!(got["success_rate"].as_f64().unwrap(), lib.success_rate);
        assert_eq!(
            got["noise_success_rate"].as_f64().unwrap(),
            lib.noise_success_rate
        );

        let mut apply = vec!["patch", "apply", "--patch", &paths[0], "--target", "3"];
        apply.extend(["--n", "40", "--seed", "9", "--json", &paths[3]]);
        apply.extend(model_args);
        let out = perturb(&apply);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let report: Report = read_json(&apply_json);
        let idx = &test_idx[..40];
        let (xa, ya) = (pick(&mnist.test_images, idx), pick(&mnist.test_labels, idx));
        let attack = PatchApplication::new(saved, Region::Anywhere).seed(9);
        let lib = Evaluator::new(&model, &xa, &ya)
            .unwrap()
            .run(&attack, Some(3))
            .unwrap()
            .report;
        assert_eq!(
            (report.samples, report.successes, report.robust_correct),
            (lib.samples, lib.successes, lib.robust_correct)
        );
        assert_eq!(report.attack.target, Some(3));
    }

    #[test]
    fn bad_patches_and_outputs_are_one_line_errors() {
        let exists = tmp("patch-exists.safetensors");
        std::fs::write(&exists, b"keep").unwrap();
        let p = exists.to_str().unwrap();
        for (args, needle) in [
            (
                vec![
                    "patch",
                    "train",
                    "--model",
                    "mnist-linear",
                    "--target",
                    "3",
                    "--out",
                    p,
                ],
                "--force",
            ),
            (
                vec![
                    "patch",
                    "eval",
                    "--model",
                    "mnist-linear",
                    "--target",
                    "3",
                    "--patch",
                    p,
                ],
                "patch-exists.safetensors",
            ),
            (
                vec![
                    "patch",
                    "apply",
                    "--model",
                    "mnist-linear",
                    "--patch",
                    "/nonexistent/p.png",
                ],
                "/nonexistent/p.png",
            ),
            (
                vec![
                    "patch",
                    "eval",
                    "--model",
                    "mnist-linear",
                    "--target",
                    "12",
                    "--patch",
                    p,
                ],
                "12",
            ),
        ] {
            let out = perturb(&args);
            let err = text(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
            assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
            assert!(err.contains(needle), "{args:?}: {err}");
        }
        assert_eq!(std::fs::read(&exists).unwrap(), b"keep");
    }
}

mod suite {
    use super::*;

    fn run_json(args: &[&str], name: &str) -> (Output, serde_json::Value) {
        let json = tmp(name);
        let mut all = args.to_vec();
        let p = json.to_str().unwrap().to_string();
        all.extend(["--json", &p, "--quiet"]);
        let out = perturb(&all);
        let value = if out.status.success() || out.status.code() == Some(1) {
            read_json(&json)
        } else {
            serde_json::Value::Null
        };
        (out, value)
    }

    /// `--suite A,B` runs B on what A left: robust accuracy at most each attack's alone, a
    /// per-stage table that adds up, and a gate between the single attack and the ensemble
    /// passes the one and fails the other.
    #[test]
    fn suites_are_the_worst_case_and_gate_on_it() {
        let base = ["--model", "mnist-linear", "--eps", "0.05", "--n", "200"];
        fn with<'a>(base: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
            // the point estimate against a threshold between two of them
            let mut a = vec!["gate", "--confidence", "0"];
            a.extend(base);
            a.extend(extra);
            a
        }
        let (out, fgsm) = run_json(
            &with(&base, &["--attack", "fgsm", "--min-robust-accuracy", "0"]),
            "s-fgsm.json",
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        let (out, suite) = run_json(
            &with(
                &base,
                &["--suite", "fgsm,apgd", "--min-robust-accuracy", "0"],
            ),
            "s-suite.json",
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        let robust = |v: &serde_json::Value| v["robust_correct"].as_u64().unwrap();
        assert!(robust(&suite) < robust(&fgsm), "apgd adds to fgsm");
        let stages = suite["stages"].as_array().unwrap();
        assert_eq!(stages.len(), 2);
        assert_eq!(stages[0]["attack"], "fgsm");
        assert_eq!(stages[0]["robust_correct"], fgsm["robust_correct"]);
        assert_eq!(stages[1]["robust_correct"], suite["robust_correct"]);
        assert_eq!(suite["attack"]["name"], "ensemble");
        // the exact weights the figure is about
        let pinned = perturb::zoo::pinned_sha256("mnist-linear.safetensors").unwrap();
        assert_eq!(suite["model_sha256"], pinned);
        // a threshold between the two: FGSM passes it, the suite does not
        let between = (robust(&suite) + robust(&fgsm)) as f64 / 2.0 / 200.0;
        let between = format!("{between}");
        let (pass, _) = run_json(
            &with(
                &base,
                &["--attack", "fgsm", "--min-robust-accuracy", &between],
            ),
            "s-pass.json",
        );
        let (fail, _) = run_json(
            &with(
                &base,
                &["--suite", "fgsm,apgd", "--min-robust-accuracy", &between],
            ),
            "s-fail.json",
        );
        assert_eq!((pass.status.code(), fail.status.code()), (Some(0), Some(1)));

        // attack prints the stages; eval sweeps the suite beside the attacks
        let out = perturb(&[
            "attack",
            "--model",
            "mnist-linear",
            "--eps",
            "0.05",
            "--n",
            "50",
            "--suite",
            "fgsm,apgd",
            "--quiet",
        ]);
        assert!(
            text(&out.stdout).contains("stage 2 apgd"),
            "{}",
            text(&out.stdout)
        );
        let (out, sweep) = run_json(
            &[
                "eval",
                "--model",
                "mnist-linear",
                "--n",
                "50",
                "--attacks",
                "fgsm",
                "--suite",
                "fgsm,pgd",
                "--eps",
                "0,0.05",
            ],
            "s-eval.json",
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        let names: Vec<&str> = sweep["reports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["attack"]["name"].as_str().unwrap())
            .collect();
        assert!(
            names.contains(&"ensemble") && names.contains(&"fgsm"),
            "{names:?}"
        );
    }

    #[test]
    fn bad_suites_are_one_line_errors() {
        for (suite, norm, needle) in [
            // FAB-T and Square take L∞ and L2 budgets only
            ("standard", "l1", "no l1 budget"),
            ("fgsm,,pgd", "linf", "comma-separated"),
            ("fgsm,nope", "linf", "nope"),
        ] {
            let out = perturb(&[
                "gate",
                "--model",
                "mnist-linear",
                "--eps",
                "0.1",
                "--norm",
                norm,
                "--suite",
                suite,
                "--min-robust-accuracy",
                "0.5",
            ]);
            let err = text(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{suite}: {err}");
            assert_eq!(err.trim().lines().count(), 1, "{err}");
            assert!(err.contains(needle), "{suite}: {err}");
        }
        let out = perturb(&[
            "gate",
            "--model",
            "mnist-linear",
            "--eps",
            "0.1",
            "--suite",
            "fast",
            "--attack",
            "pgd",
            "--min-robust-accuracy",
            "0.5",
        ]);
        assert_eq!(out.status.code(), Some(2));
    }
}

/// Minutes, not seconds: run with `cargo test --release --test integration -- --ignored cli::`.
mod suite_on_the_robust_model {
    use super::*;

    /// Issue 20, acceptance 6: on `mnist-cnn-fgsm-rs` at ε = 0.3 the standard suite finds the
    /// model weaker than PGD-40 does, so a gate half a digit below the PGD-40 figure passes
    /// PGD-40 and fails the suite (exit 1); the suite's per-stage table names all four attacks.
    /// The suite runs once: its report, written by the failing gate, gives its figure.
    #[test]
    #[ignore = "minutes: the standard suite on 100 digits of the robust model"]
    fn gate_between_pgd40_and_the_standard_suite() {
        const N: usize = 100;
        let n = N.to_string();
        let run = |extra: &[&str], json: &str| -> (Output, serde_json::Value) {
            let path = tmp(json);
            let p = path.to_str().unwrap().to_string();
            let mut args = vec![
                "gate",
                "--confidence",
                "0",
                "--model",
                "mnist-cnn-fgsm-rs",
                "--eps",
                "0.3",
                "--n",
                &n,
            ];
            args.extend(extra);
            args.extend(["--json", &p, "--quiet"]);
            let out = perturb(&args);
            let value = read_json(&path);
            (out, value)
        };
        let pgd40 = ["--attack", "pgd", "--steps", "40", "--step-size", "0.01"];
        let (_, pgd) = run(
            &[&pgd40[..], &["--min-robust-accuracy", "0"]].concat(),
            "r-pgd.json",
        );
        let p = pgd["robust_accuracy"].as_f64().unwrap();
        let between = format!("{}", p - 0.5 / N as f64);
        let (held, _) = run(
            &[&pgd40[..], &["--min-robust-accuracy", &between]].concat(),
            "r-pass.json",
        );
        let (failed, suite) = run(
            &["--suite", "standard", "--min-robust-accuracy", &between],
            "r-fail.json",
        );
        let s = suite["robust_accuracy"].as_f64().unwrap();
        assert!(s < p, "standard {s} vs PGD-40 {p}");
        let names: Vec<&str> = suite["stages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|st| st["attack"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["apgd", "apgd-t", "fab-t", "square"]);
        assert_eq!(
            (held.status.code(), failed.status.code()),
            (Some(0), Some(1))
        );
    }
}
