//! `perturb transfer` and `perturb eval --minimal` as a user runs them: the files they write
//! against separate `attack` runs, and one line with exit code 2 for what they refuse.

use std::process::Output;

use crate::cli::{perturb, read_json, text, tmp};
use perturb::eval::TransferMatrix;
use perturb::metrics::Report;

/// Exit code 2 and exactly one line on stderr that contains `needle`.
fn refused(out: &Output, needle: &str) {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains(needle), "{needle}: {err}");
}

#[test]
fn transfer_writes_the_matrix_whose_source_column_is_the_attack_run() {
    let (json, csv, png) = (tmp("t.json"), tmp("t.csv"), tmp("t.png"));
    let out = perturb(&[
        "transfer",
        "--source",
        "mnist-cnn",
        "--targets",
        "mnist-linear,mnist-cnn-fgsm-rs",
        "--attacks",
        "fgsm,mi-fgsm",
        "--eps",
        "0.2",
        "--n",
        "60",
        "--quiet",
        "--param",
        "diversity_prob=0.5",
        "--json",
        json.to_str().unwrap(),
        "--csv",
        csv.to_str().unwrap(),
        "--plot",
        png.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("mnist-cnn-fgsm-rs") && stdout.contains("mi-fgsm"),
        "{stdout}"
    );
    let m: TransferMatrix = read_json(&json);
    assert_eq!(m.models, ["mnist-cnn", "mnist-linear", "mnist-cnn-fgsm-rs"]);
    assert_eq!(m.cells.len(), 6);
    assert_eq!(m.attacks[1].params["diversity_prob"], 0.5);
    assert_eq!(std::fs::read_to_string(&csv).unwrap().lines().count(), 7);
    assert!(image::open(&png).is_ok());
    // the white-box column: the same attack run by `perturb attack`
    for (attack, extra) in [("fgsm", None), ("mi-fgsm", Some("diversity_prob=0.5"))] {
        let report = tmp(&format!("{attack}.json"));
        let mut args = vec![
            "attack",
            "--model",
            "mnist-cnn",
            "--attack",
            attack,
            "--eps",
            "0.2",
            "--n",
            "60",
            "--quiet",
            "--json",
            report.to_str().unwrap(),
        ];
        if let Some(p) = extra {
            args.extend(["--param", p]);
        }
        let run = perturb(&args);
        assert!(run.status.success(), "{}", text(&run.stderr));
        let r: Report = read_json(&report);
        let cell = m.cell(attack, "mnist-cnn").unwrap();
        assert_eq!(
            (cell.clean_correct, cell.fooled),
            (r.clean_correct, r.successes),
            "{attack}"
        );
    }
    refused(
        &perturb(&[
            "transfer",
            "--model",
            "mnist-cnn",
            "--targets",
            "nope",
            "--eps",
            "0.1",
            "--n",
            "5",
        ]),
        "--targets nope",
    );
    refused(
        &perturb(&[
            "transfer",
            "--model",
            "mnist-cnn",
            "--targets",
            "mnist-linear",
            "--attacks",
            "fgsm,jsma",
            "--eps",
            "0.1",
        ]),
        "jsma",
    );
}

#[test]
fn eval_minimal_reports_the_distances_and_refuses_fixed_eps_attacks() {
    let (json, png) = (tmp("minimal.json"), tmp("minimal.png"));
    let out = perturb(&[
        "eval",
        "--model",
        "mnist-cnn",
        "--minimal",
        "deepfool,ddn",
        "--n",
        "40",
        "--quiet",
        "--eps",
        "0,1,2",
        "--json",
        json.to_str().unwrap(),
        "--plot",
        png.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let doc: serde_json::Value = read_json(&json);
    let rows = doc["minimal"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for row in rows {
        let m: perturb::metrics::MinimalNorms = serde_json::from_value(row.clone()).unwrap();
        assert_eq!(m.samples, 40);
        assert_eq!(m.norms.len(), 40);
        // the printed robust accuracy at ε = 1 is the distribution's
        let line = text(&out.stdout)
            .lines()
            .find(|l| l.starts_with(m.attack.name.as_str()))
            .unwrap()
            .to_string();
        assert!(
            line.contains(&format!("{:.2}%", 100.0 * m.robust_accuracy_at(1.0))),
            "{line}"
        );
    }
    assert!(image::open(&png).is_ok());
    refused(
        &perturb(&[
            "eval",
            "--model",
            "mnist-cnn",
            "--minimal",
            "pgd",
            "--n",
            "5",
        ]),
        "not a minimum-norm attack",
    );
    refused(
        &perturb(&[
            "attack",
            "--model",
            "mnist-cnn",
            "--attack",
            "cw",
            "--eps",
            "0.3",
            "--n",
            "5",
        ]),
        "cw",
    );
    refused(
        &perturb(&[
            "attack",
            "--model",
            "mnist-cnn",
            "--attack",
            "deepfool",
            "--norm",
            "l2",
            "--eps",
            "1",
            "--param",
            "overshoot=0",
            "--n",
            "5",
        ]),
        "overshoot",
    );
}
