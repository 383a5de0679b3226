//! `perturb gate` as a pipeline runs it: the three verdicts and their exit codes from real runs
//! on shipped models, the comparison with a baseline report, refusals of an incomparable
//! baseline, and the JUnit and Markdown files.

use std::process::Output;

use crate::cli::{perturb, read_json, text, tmp};
use perturb::metrics::Report;

/// FGSM at ε = 0.05 on the first 200 digits: cheap, and far from 0 and 100 % on mnist-cnn.
const FGSM: [&str; 10] = [
    "gate",
    "--model",
    "mnist-cnn",
    "--attack",
    "fgsm",
    "--eps",
    "0.05",
    "--n",
    "200",
    "--quiet",
];

fn gate(extra: &[&str]) -> Output {
    let mut args = FGSM.to_vec();
    args.extend(extra);
    perturb(&args)
}

/// Exit code 2 and exactly one line on stderr that contains `needle`.
fn refused(out: &Output, needle: &str) {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains(needle), "{needle}: {err}");
}

mod verdicts {
    use super::*;

    /// Thresholds placed from the run's own interval: below its lower bound PASS (0), above its
    /// upper bound FAIL (1), inside it INCONCLUSIVE (3) with the sample count that would decide;
    /// JUnit and Markdown carry the same verdict.
    #[test]
    fn pass_fail_and_inconclusive_by_exit_code() {
        let json = tmp("g-report.json");
        let out = gate(&[
            "--min-robust-accuracy",
            "0",
            "--json",
            json.to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let r: Report = read_json(&json);
        let ci = r
            .intervals
            .expect("intervals in the report")
            .robust_accuracy;
        assert!(
            ci.lower > 0.1 && ci.upper < 0.995,
            "{ci:?}: choose another ε"
        );
        assert!(ci.lower < r.robust_accuracy && r.robust_accuracy < ci.upper);
        // per-sample outcomes: MNIST indices 0..200, robust where the report counts it
        let s = r.per_sample.as_ref().unwrap();
        assert_eq!(s.index, (0..200).collect::<Vec<_>>());
        assert_eq!(s.robust.iter().filter(|b| **b).count(), r.robust_correct);

        let cases = [
            (ci.lower - 0.02, 0, "PASS"),
            (ci.upper + 0.005, 1, "FAIL"),
            (r.robust_accuracy - 0.01, 3, "INCONCLUSIVE"),
        ];
        for (min, code, verdict) in cases {
            let min = format!("{min:.4}");
            let (xml, md) = (tmp(&format!("g-{code}.xml")), tmp(&format!("g-{code}.md")));
            let out = gate(&[
                "--min-robust-accuracy",
                &min,
                "--junit",
                xml.to_str().unwrap(),
                "--markdown",
                md.to_str().unwrap(),
            ]);
            let stdout = text(&out.stdout);
            assert_eq!(
                out.status.code(),
                Some(code),
                "{min}: {stdout} {}",
                text(&out.stderr)
            );
            assert!(stdout.starts_with(verdict), "{stdout}");
            assert_eq!(stdout.lines().count(), 1, "{stdout}");
            assert!(stdout.contains("95 % wilson interval"), "{stdout}");
            if verdict == "INCONCLUSIVE" {
                assert!(stdout.contains("samples would decide"), "{stdout}");
            }
            let xml = std::fs::read_to_string(&xml).unwrap();
            let doc = roxmltree::Document::parse(&xml).unwrap();
            let failures = doc
                .descendants()
                .filter(|n| n.has_tag_name("failure"))
                .collect::<Vec<_>>();
            match verdict {
                "PASS" => assert!(failures.is_empty(), "{xml}"),
                v => assert_eq!(failures[0].attribute("type"), Some(v), "{xml}"),
            }
            let md = std::fs::read_to_string(&md).unwrap();
            assert!(
                md.starts_with(&format!("### perturb gate: {verdict}")),
                "{md}"
            );
        }
    }

    /// At confidence 0 the estimate itself is compared (the gate of earlier versions);
    /// Clopper–Pearson is wider than Wilson; a bad level is a usage error.
    #[test]
    fn confidence_and_method_flags() {
        let json = tmp("g-point.json");
        let out = gate(&[
            "--min-robust-accuracy",
            "0",
            "--json",
            json.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let r: Report = read_json(&json);
        let at = format!("{}", r.robust_accuracy);
        let out = gate(&["--confidence", "0", "--min-robust-accuracy", &at]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
        let out = gate(&[
            "--interval",
            "clopper-pearson",
            "--confidence",
            "0.99",
            "--min-robust-accuracy",
            "0",
            "--json",
            json.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let exact: Report = read_json(&json);
        let (w, e) = (r.intervals.unwrap(), exact.intervals.unwrap());
        assert_eq!(e.confidence, 0.99);
        assert!(e.robust_accuracy.lower < w.robust_accuracy.lower);
        assert!(e.robust_accuracy.upper > w.robust_accuracy.upper);
        refused(
            &gate(&["--confidence", "1", "--min-robust-accuracy", "0.5"]),
            "confidence",
        );
        refused(
            &gate(&["--confidence", "95", "--min-robust-accuracy", "0.5"]),
            "confidence",
        );
        refused(
            &gate(&["--max-drop", "0.1", "--min-robust-accuracy", "0.5"]),
            "--baseline",
        );
        refused(&gate(&[]), "--min-robust-accuracy");
    }
}

mod baseline {
    use super::*;

    const PGD: [&str; 14] = [
        "gate",
        "--attack",
        "pgd",
        "--eps",
        "0.3",
        "--steps",
        "10",
        "--step-size",
        "0.03",
        "--n",
        "200",
        "--quiet",
        "--baseline",
        "",
    ];

    fn against(model: &str, baseline: &str, extra: &[&str]) -> Output {
        let mut args = PGD.to_vec();
        args[13] = baseline;
        args.extend(["--model", model]);
        args.extend(extra);
        perturb(&args)
    }

    /// The robust model's report is the baseline. mnist-cnn (not robust at ε = 0.3) fails
    /// against it; the robust model against itself, same seed, passes with zero discordant
    /// pairs; a run with another attack, ε, seed, or sample range is refused before it runs.
    #[test]
    fn regressions_fail_the_same_model_passes_and_others_are_refused() {
        let base = tmp("baseline.json");
        let b = base.to_str().unwrap();
        let mut args = PGD[..12].to_vec();
        args.extend([
            "--model",
            "mnist-cnn-fgsm-rs",
            "--min-robust-accuracy",
            "0",
            "--json",
            b,
        ]);
        let out = perturb(&args);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let r: Report = read_json(&base);
        assert!(r.robust_accuracy > 0.5, "{}", r.robust_accuracy);

        let md = tmp("baseline.md");
        let out = against(
            "mnist-cnn",
            b,
            &["--max-drop", "0.05", "--markdown", md.to_str().unwrap()],
        );
        let stdout = text(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{stdout} {}", text(&out.stderr));
        assert!(
            stdout.starts_with("FAIL") && stdout.contains("McNemar"),
            "{stdout}"
        );
        let md = std::fs::read_to_string(&md).unwrap();
        assert!(
            md.contains("mnist-cnn-fgsm-rs") && md.contains("**FAIL**"),
            "{md}"
        );

        let out = against("mnist-cnn-fgsm-rs", b, &[]);
        let stdout = text(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{stdout} {}", text(&out.stderr));
        assert!(
            stdout.contains("drop 0.0000") && stdout.contains("0 lost and 0 gained"),
            "{stdout}"
        );

        // both checks at once: the worse verdict decides, one line each
        let out = against("mnist-cnn-fgsm-rs", b, &["--min-robust-accuracy", "0.99"]);
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(
            text(&out.stdout).lines().count(),
            2,
            "{}",
            text(&out.stdout)
        );

        for (extra, needle) in [
            (&["--seed", "3"][..], "seed 3 here, 0 in the baseline"),
            (&["--offset", "5"][..], "mnist-test[5..205]"),
            (&["--n", "100"][..], "(100) here"),
        ] {
            let mut args = PGD.to_vec();
            args[13] = b;
            args.extend(["--model", "mnist-cnn-fgsm-rs"]);
            // replace --n 200 rather than give it twice
            if extra[0] == "--n" {
                args[10] = extra[1];
            } else {
                args.extend(extra);
            }
            refused(&perturb(&args), needle);
        }
        let mut other = PGD.to_vec();
        other[13] = b;
        other[2] = "fgsm";
        other.drain(5..9); // fgsm takes no steps
        other.extend(["--model", "mnist-cnn-fgsm-rs"]);
        refused(&perturb(&other), "attack fgsm here, pgd in the baseline");
        let mut other = PGD.to_vec();
        other[13] = b;
        other[4] = "0.2";
        other.extend(["--model", "mnist-cnn-fgsm-rs"]);
        refused(&perturb(&other), "budget pgd (linf, eps 0.2) here");
        // not a report at all
        let bad = tmp("not-a-report.json");
        std::fs::write(&bad, "{\"schema_version\": 1}").unwrap();
        refused(
            &against("mnist-cnn", bad.to_str().unwrap(), &[]),
            "not a perturb report",
        );
    }
}
