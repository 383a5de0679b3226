//! The statistics behind a pipeline gate: confidence intervals against scipy's values and
//! invariants, McNemar's paired test, verdicts, and the JUnit and Markdown files.

use perturb::export;
use perturb::metrics::{
    BaselineCheck, GateOutcome, IntervalMethod, IntervalSpec, Report, ThresholdCheck, Verdict,
};
use perturb::Error;
use proptest::prelude::*;

/// (k, n, confidence, Wilson [lower, upper], Clopper–Pearson [lower, upper]), computed once with
/// scipy 1.17.1: `binomtest(k, n).proportion_ci(confidence, method)` for 'wilson' and 'exact'.
/// (k, n, confidence, Wilson, Clopper–Pearson).
type Case = (usize, usize, f64, [f64; 2], [f64; 2]);

#[rustfmt::skip]
const SCIPY: [Case; 16] = [
    (0, 10, 0.95, [0.0, 0.27753279986288926], [0.0, 0.30849710781876294]),
    (10, 10, 0.95, [0.7224672001371109, 1.0], [0.6915028921812371, 1.0]),
    (7, 20, 0.95, [0.1811918241010821, 0.5671457233147637], [0.1539092047845412, 0.5921885345328283]),
    (1, 1000, 0.95, [0.00017654637062607809, 0.0056425585979579355], [2.5317487491674634e-05, 0.0055589242798499]),
    (500, 1000, 0.95, [0.4690696003681042, 0.5309303996318958], [0.46854917297179194, 0.531450827028208]),
    (999, 1000, 0.95, [0.9943574414020421, 0.9998234536293739], [0.9944410757201502, 0.9999746825125083]),
    (3, 7, 0.95, [0.1582198552514697, 0.7495416354723428], [0.09898827844243689, 0.81594843235993]),
    (167, 200, 0.95, [0.7773421846094044, 0.880031446717827], [0.7761565322881794, 0.8836168800418922]),
    (0, 10, 0.99, [0.0, 0.39885409330490806], [0.0, 0.4112959813475254]),
    (10, 10, 0.99, [0.6011459066950919, 1.0], [0.5887040186524746, 1.0]),
    (7, 20, 0.99, [0.14639344137693885, 0.6283381789526872], [0.11387976326673215, 0.6565685842319213]),
    (1, 1000, 0.99, [0.00011741635361832165, 0.008460566219981695], [5.0125292607668415e-06, 0.007406286938353162]),
    (500, 1000, 0.99, [0.45940700521208483, 0.5405929947879151], [0.45885255330701225, 0.5411474466929878]),
    (999, 1000, 0.99, [0.9915394337800183, 0.9998825836463816], [0.9925937130616469, 0.9999949874707392]),
    (3, 7, 0.99, [0.11637368051613817, 0.8102850959116125], [0.055299349980557536, 0.8822962483310521]),
    (167, 200, 0.99, [0.7568671370358646, 0.8916196490984858], [0.7570719164722, 0.896408548339987]),
];

fn spec(method: IntervalMethod, confidence: f64) -> IntervalSpec {
    IntervalSpec::new(method, confidence).unwrap()
}

mod intervals {
    use super::*;

    #[test]
    fn wilson_and_clopper_pearson_equal_scipy() {
        for (k, n, conf, wilson, exact) in SCIPY {
            for (method, want) in [
                (IntervalMethod::Wilson, wilson),
                (IntervalMethod::ClopperPearson, exact),
            ] {
                let got = spec(method, conf).interval(k, n);
                assert!(
                    (got.lower - want[0]).abs() < 1e-10 && (got.upper - want[1]).abs() < 1e-10,
                    "{method} {k}/{n} at {conf}: {got:?} vs scipy {want:?}"
                );
            }
        }
    }

    #[test]
    fn wilson_at_the_edges_is_the_closed_form() {
        // k = 0: [0, z²/(n + z²)]; k = n: [n/(n + z²), 1]
        let z: f64 = 1.959_963_984_540_054;
        for n in [1usize, 5, 30, 1000] {
            let nf = n as f64;
            let zero = IntervalSpec::default().interval(0, n);
            let all = IntervalSpec::default().interval(n, n);
            assert_eq!(zero.lower, 0.0);
            assert!((zero.upper - z * z / (nf + z * z)).abs() < 1e-12);
            assert_eq!(all.upper, 1.0);
            assert!((all.lower - nf / (nf + z * z)).abs() < 1e-12);
        }
    }

    #[test]
    fn confidence_zero_is_the_estimate_and_bad_levels_are_errors() {
        for method in [IntervalMethod::Wilson, IntervalMethod::ClopperPearson] {
            let ci = spec(method, 0.0).interval(3, 8);
            assert_eq!((ci.lower, ci.upper), (0.375, 0.375));
            for bad in [1.0, -0.1, f64::NAN, 95.0] {
                assert!(matches!(
                    IntervalSpec::new(method, bad),
                    Err(Error::InvalidParameter {
                        name: "confidence",
                        ..
                    })
                ));
            }
        }
        let none = IntervalSpec::default().interval(0, 0);
        assert_eq!((none.lower, none.upper), (0.0, 1.0));
        assert!("agresti".parse::<IntervalMethod>().is_err());
        assert_eq!(
            "clopper-pearson".parse::<IntervalMethod>().unwrap(),
            IntervalMethod::ClopperPearson
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Every interval lies in [0, 1] and holds its estimate, mirrors under k ↔ n − k, and
        /// widens as the confidence grows.
        #[test]
        fn intervals_hold_the_estimate_within_the_box(
            n in 1usize..5000,
            frac in 0.0f64..=1.0,
            conf in 0.0f64..0.9999,
            exact in any::<bool>(),
        ) {
            let k = ((n as f64) * frac).round() as usize;
            let method = if exact { IntervalMethod::ClopperPearson } else { IntervalMethod::Wilson };
            let s = spec(method, conf);
            let ci = s.interval(k, n);
            let p = k as f64 / n as f64;
            prop_assert!(0.0 <= ci.lower && ci.lower <= p && p <= ci.upper && ci.upper <= 1.0,
                "{method} {k}/{n} at {conf}: {ci:?}");
            let mirror = s.interval(n - k, n);
            prop_assert!((ci.lower - (1.0 - mirror.upper)).abs() < 1e-9);
            prop_assert!((ci.upper - (1.0 - mirror.lower)).abs() < 1e-9);
            let wider = spec(method, (conf + 1.0) / 2.0).interval(k, n);
            prop_assert!(wider.lower <= ci.lower + 1e-12 && ci.upper <= wider.upper + 1e-12);
        }
    }
}

mod verdicts {
    use super::*;

    #[test]
    fn pass_fail_inconclusive_from_the_interval() {
        let s = IntervalSpec::default(); // 167/200: [0.7773, 0.8800]
        let check = |min: f64| ThresholdCheck::of(167, 200, min, s).unwrap();
        assert_eq!(check(0.77).verdict, Verdict::Pass);
        assert_eq!(check(0.7773421846094044).verdict, Verdict::Pass);
        assert_eq!(check(0.881).verdict, Verdict::Fail);
        let unsure = check(0.85);
        assert_eq!(unsure.verdict, Verdict::Inconclusive);
        // the count that would decide does, with the same accuracy
        let n = unsure.samples_to_decide.unwrap();
        let k = (0.835 * n as f64).round() as usize;
        assert!(n > 200 && !s.interval(k, n).contains(0.85), "{n}");
        assert!(unsure.describe().contains("would decide"));
        // at confidence 0 the gate compares the estimate itself
        let point = spec(IntervalMethod::Wilson, 0.0);
        assert_eq!(
            ThresholdCheck::of(167, 200, 0.835, point).unwrap().verdict,
            Verdict::Pass
        );
        assert_eq!(
            ThresholdCheck::of(167, 200, 0.8351, point).unwrap().verdict,
            Verdict::Fail
        );
        assert!(ThresholdCheck::of(1, 2, 1.5, s).is_err());
        assert_eq!(
            [
                Verdict::Pass.exit_code(),
                Verdict::Fail.exit_code(),
                Verdict::Inconclusive.exit_code()
            ],
            [0, 1, 3]
        );
        assert_eq!(
            Verdict::Pass.and(Verdict::Inconclusive),
            Verdict::Inconclusive
        );
        assert_eq!(Verdict::Fail.and(Verdict::Inconclusive), Verdict::Fail);
    }
}

/// A report of `robust` per sample (every sample correct when clean) for the baseline tests.
fn report(model: &str, robust: &[bool], seed: u64) -> Report {
    let n = robust.len();
    let k = robust.iter().filter(|r| **r).count();
    let value = serde_json::json!({
        "schema_version": 1, "perturb_version": "test", "model": model,
        "data": format!("mnist-test[0..{n}]"),
        "attack": {"name": "pgd", "norm": "linf", "eps": 0.3, "target": null,
                   "params": {"steps": 10, "seed": seed}},
        "seed": seed, "samples": n, "clean_correct": n, "robust_correct": k, "successes": n - k,
        "clean_accuracy": 1.0, "robust_accuracy": k as f64 / n as f64,
        "attack_success_rate": (n - k) as f64 / n as f64,
        "perturbation": {"mean": 0.3, "median": 0.3, "max": 0.3},
        "gradient_evals": 0, "wall_time_s": 1.5, "warnings": [],
        "per_sample": {
            "index": (0..n).collect::<Vec<_>>(), "label": vec![1; n],
            "clean_prediction": vec![1; n],
            "adversarial_prediction": robust.iter().map(|r| if *r { 1 } else { 2 }).collect::<Vec<_>>(),
            "clean_correct": vec![true; n], "robust": robust,
            "success": robust.iter().map(|r| !r).collect::<Vec<_>>(), "norm": vec![0.3; n],
        },
    });
    serde_json::from_value(value).unwrap()
}

/// Outcomes with `lost` samples robust only in the baseline, `gained` robust only now, and
/// `both` robust in both, out of `n`: (now, baseline).
fn pair(n: usize, lost: usize, gained: usize, both: usize) -> (Report, Report) {
    // samples in order: lost, gained, robust in both, robust in neither
    let before: Vec<bool> = (0..n)
        .map(|i| i < lost || (lost + gained..lost + gained + both).contains(&i))
        .collect();
    let now: Vec<bool> = (0..n)
        .map(|i| (lost..lost + gained + both).contains(&i))
        .collect();
    (report("new", &now, 0), report("old", &before, 0))
}

mod baseline {
    use super::*;

    /// McNemar's one-sided exact p-value equals scipy's
    /// `binomtest(lost, lost + gained, 0.5, alternative='greater').pvalue`.
    #[test]
    fn mcnemar_p_values_equal_scipy() {
        for (lost, gained, want) in [
            (0, 0, 1.0),
            (5, 0, 0.03125),
            (10, 4, 0.08978271484375),
            (167, 0, 5.345529420184391e-51),
            (3, 9, 0.980712890625),
            (40, 25, 0.040840766970770014),
        ] {
            let (now, before) = pair(300, lost, gained, 50);
            let c = BaselineCheck::of(&now, &before, 0.0, 0.95).unwrap();
            assert_eq!((c.lost, c.gained), (lost, gained));
            assert!(
                (c.p_value - want).abs() <= 1e-10 * want.max(1e-300),
                "{lost}/{gained}: {} vs {want}",
                c.p_value
            );
        }
    }

    #[test]
    fn verdicts_read_the_drop_and_its_significance() {
        // no discordant pairs: PASS whatever the allowed drop
        let (a, b) = pair(200, 0, 0, 120);
        assert_eq!(
            BaselineCheck::of(&a, &b, 0.0, 0.95).unwrap().verdict,
            Verdict::Pass
        );
        // 40 lost, 25 gained of 300: drop 5 points, p = 0.041
        let (a, b) = pair(300, 40, 25, 50);
        let at = |max: f64, conf: f64| BaselineCheck::of(&a, &b, max, conf).unwrap().verdict;
        assert_eq!(at(0.01, 0.95), Verdict::Fail);
        assert_eq!(
            at(0.01, 0.99),
            Verdict::Inconclusive,
            "larger but not significant"
        );
        assert_eq!(
            at(0.05, 0.95),
            Verdict::Pass,
            "a drop of exactly the allowed one"
        );
        assert_eq!(at(0.06, 0.99), Verdict::Pass);
        // an improvement passes
        let (a, b) = pair(300, 0, 30, 50);
        let c = BaselineCheck::of(&a, &b, 0.0, 0.95).unwrap();
        assert_eq!((c.verdict, c.drop < 0.0), (Verdict::Pass, true));
    }

    #[test]
    fn incomparable_baselines_are_refused_with_the_reason() {
        let robust = [true, false, true, true];
        let base = report("old", &robust, 0);
        let refused =
            |other: Report, needle: &str| match BaselineCheck::of(&other, &base, 0.0, 0.95) {
                Err(e @ Error::BaselineMismatch { .. }) => {
                    assert!(e.to_string().contains(needle), "{e}")
                }
                other => panic!("{needle}: {other:?}"),
            };
        refused(report("new", &robust, 7), "seed 7 here, 0 in the baseline");
        let mut r = report("new", &robust, 0);
        r.attack.eps = Some(0.2);
        refused(r, "budget");
        let mut r = report("new", &robust, 0);
        r.attack.name = "fgsm".into();
        refused(r, "attack fgsm here, pgd");
        let mut r = report("new", &robust, 0);
        r.data = "mnist-test[4..8]".into();
        refused(r, "samples mnist-test[4..8]");
        let mut r = report("new", &robust, 0);
        r.attack.params["steps"] = 40.into();
        refused(r, "parameters differ (steps)");
        let mut r = report("new", &robust, 0);
        r.attack.target = Some(3);
        refused(r, "target");
        let mut r = report("new", &robust, 0);
        r.per_sample.as_mut().unwrap().robust.pop();
        refused(r, "per_sample.robust has 3 entries for 4 samples");
        let mut bare = report("old", &robust, 0);
        bare.per_sample = None;
        assert!(
            BaselineCheck::of(&report("new", &robust, 0), &bare, 0.0, 0.95)
                .unwrap_err()
                .to_string()
                .contains("no per-sample outcomes")
        );
    }
}

mod files {
    use super::*;

    fn outcomes() -> Vec<GateOutcome> {
        let (now, before) = pair(300, 40, 25, 50);
        let s = IntervalSpec::default();
        let mut pass = report("a<&>\"'model", &[true; 50], 0);
        pass.set_intervals(s);
        vec![
            GateOutcome {
                threshold: Some(ThresholdCheck::of_report(&now, 0.5, s).unwrap()),
                baseline: Some(BaselineCheck::of(&now, &before, 0.01, 0.95).unwrap()),
                report: now,
            },
            GateOutcome {
                threshold: Some(ThresholdCheck::of_report(&pass, 0.5, s).unwrap()),
                baseline: None,
                report: pass,
            },
        ]
    }

    /// The structure of the common JUnit XML schema (Jenkins' junit-10.xsd, which GitLab and
    /// GitHub reporters read): testsuites > testsuite > testcase, counts that add up, required
    /// attributes, a failure element exactly on the failing cases, special characters escaped.
    #[test]
    fn junit_parses_and_follows_the_schema() {
        let outcomes = outcomes();
        let xml = export::junit(&outcomes);
        let doc = roxmltree::Document::parse(&xml).expect("well-formed XML");
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "testsuites");
        let suites: Vec<_> = root.children().filter(|n| n.is_element()).collect();
        assert_eq!(suites.len(), 1);
        let suite = suites[0];
        assert_eq!(suite.tag_name().name(), "testsuite");
        for attr in ["name", "tests", "failures", "errors", "skipped", "time"] {
            assert!(suite.attribute(attr).is_some(), "testsuite@{attr}");
            assert!(root.attribute(attr).is_some(), "testsuites@{attr}");
        }
        let allowed = ["properties", "testcase", "system-out", "system-err"];
        let children: Vec<_> = suite.children().filter(|n| n.is_element()).collect();
        assert!(children
            .iter()
            .all(|c| allowed.contains(&c.tag_name().name())));
        let cases: Vec<_> = children
            .iter()
            .filter(|c| c.has_tag_name("testcase"))
            .collect();
        assert_eq!(cases.len(), outcomes.len());
        assert_eq!(suite.attribute("tests"), Some("2"));
        let failed = cases
            .iter()
            .filter(|c| c.children().any(|e| e.has_tag_name("failure")))
            .count();
        assert_eq!(
            suite.attribute("failures"),
            Some(failed.to_string().as_str())
        );
        assert_eq!(failed, 1);
        for (case, o) in cases.iter().zip(&outcomes) {
            assert_eq!(case.attribute("name"), Some(o.name().as_str()));
            assert!(case
                .attribute("classname")
                .unwrap()
                .starts_with("perturb.gate."));
            let time: f64 = case.attribute("time").unwrap().parse().unwrap();
            assert!((time - 1.5).abs() < 1e-9);
            let failure = case.children().find(|e| e.has_tag_name("failure"));
            match o.verdict() {
                Verdict::Pass => assert!(failure.is_none()),
                v => {
                    let f = failure.unwrap();
                    assert_eq!(f.attribute("type"), Some(v.to_string().as_str()));
                    assert!(f.attribute("message").unwrap().starts_with(&v.to_string()));
                }
            }
            let out = case
                .children()
                .find(|e| e.has_tag_name("system-out"))
                .unwrap();
            assert!(out.text().unwrap().contains(&o.report.model));
        }
        // the escaped model name reads back as it was
        assert!(cases[1]
            .attribute("name")
            .unwrap()
            .starts_with("a<&>\"'model"));
    }

    #[test]
    fn markdown_has_a_row_per_outcome_and_the_overall_verdict() {
        let outcomes = outcomes();
        let md = export::markdown(&outcomes);
        assert!(md.starts_with("### perturb gate: FAIL\n"), "{md}");
        let rows: Vec<&str> = md.lines().filter(|l| l.starts_with("| ")).collect();
        assert_eq!(rows.len(), 1 + outcomes.len(), "{md}");
        let columns = rows[0].matches('|').count();
        assert!(rows
            .iter()
            .all(|r| r.matches('|').count() - r.matches("\\|").count() == columns));
        assert!(rows[1].ends_with("| **FAIL** |") && rows[2].ends_with("| **PASS** |"));
    }
}
