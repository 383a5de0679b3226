//! Every attack in the registry — the built-in ones and one defined in this test crate
//! (`common/momentum.rs`) — through the same invariants: budget and box (recounted in f64),
//! honest success and evaluation counts, determinism, reproducibility from the report's
//! parameters, typed errors for bad input and bad specs.

use crate::common;

use candle_core::{DType, Device, Module, Tensor};
use perturb::attack::{AttackSpec, FixedBudget, Registry};
use perturb::eval::Evaluator;
use perturb::{Attack, Error, Goal, Norm};
use proptest::prelude::*;

use common::{host, momentum, LinearModel};

/// The built-in registry plus the momentum attack of this test crate.
fn registry() -> Registry {
    let mut r = Registry::builtin();
    r.register(momentum::ENTRY).expect("a new name");
    r
}

/// Every (attack, norm) pair, built from a spec with each attack's default parameters.
fn attacks(eps: [f32; 3], seed: u64) -> Vec<Box<dyn FixedBudget>> {
    let registry = registry();
    let mut out = Vec::new();
    for entry in registry.entries() {
        for (norm, eps) in [(Norm::Linf, eps[0]), (Norm::L2, eps[1]), (Norm::L1, eps[2])] {
            if !entry.norms.contains(&norm) {
                // refused by name, before any compute
                let spec = AttackSpec::from_json(&format!(
                    r#"{{"attack": "{}", "norm": "{norm}", "eps": {eps}}}"#,
                    entry.name
                ))
                .unwrap();
                assert!(matches!(
                    registry.build(&spec),
                    Err(Error::AttackSpec { .. })
                ));
                continue;
            }
            let mut spec = AttackSpec::from_json(&format!(
                r#"{{"attack": "{}", "norm": "{norm}", "eps": {eps}}}"#,
                entry.name
            ))
            .unwrap();
            if entry.takes("seed") {
                spec = spec.param("seed", seed);
            }
            if entry.takes("binary_steps") {
                // CW's 9 × 1000 steps: the invariants hold at any length, the test need not wait
                spec = spec.param("steps", 100).param("binary_steps", 3);
            }
            out.push(registry.build(&spec).unwrap());
        }
    }
    out
}

fn batch(seed: u64, n: usize) -> (Tensor, Tensor) {
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
    let mut px = common::pixels(&mut rng, n * 16);
    // some pixels exactly on the box's faces
    for v in px.iter_mut().step_by(5) {
        *v = if *v < 0.5 { 0.0 } else { 1.0 };
    }
    let x = Tensor::from_vec(px, (n, 1, 4, 4), &Device::Cpu).unwrap();
    let y: Vec<u32> = (0..n as u32).map(|i| i % 3).collect();
    (x, Tensor::new(y.as_slice(), &Device::Cpu).unwrap())
}

/// ‖a − b‖ in `norm`, in f64 from the f32 values.
fn distance(norm: Norm, a: &[f32], b: &[f32]) -> f64 {
    let d = a
        .iter()
        .zip(b)
        .map(|(a, b)| (f64::from(*a) - f64::from(*b)).abs());
    match norm {
        Norm::Linf => d.fold(0.0, f64::max),
        Norm::L2 => d.map(|v| v * v).sum::<f64>().sqrt(),
        Norm::L1 => d.sum(),
    }
}

#[test]
fn registry_names_are_unique_and_every_entry_builds_with_its_defaults() {
    let registry = registry();
    let names = registry.names();
    assert!(names.contains(&"pgd") && names.contains(&"mi-fgsm"));
    let mut sorted = names.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), names.len());
    assert!(registry.clone().register(momentum::ENTRY).is_err());
    let pairs: usize = registry.entries().iter().map(|e| e.norms.len()).sum();
    assert_eq!(attacks([0.1, 0.5, 2.0], 0).len(), pairs);
    for attack in attacks([0.1, 0.5, 2.0], 0) {
        assert!(names.contains(&attack.name()));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// Every point lies in the ball (f64 recount) and the box; success and predictions are the
    /// model's verdict on the returned point; norms are the distances; counts are positive.
    #[test]
    fn every_attack_stays_in_budget_and_reports_honestly(
        seed in 0u64..1000,
        scale in prop::sample::select(vec![1e-4f32, 0.03, 0.3, 1.0]),
        model_seed in 0u64..50,
    ) {
        let model = LinearModel::random(model_seed, 4, 16);
        let (x, y) = batch(seed, 6);
        let eps = [scale.min(1.0), 4.0 * scale, 16.0 * scale];
        for attack in attacks(eps, seed) {
            let budget = *attack.budget();
            let adv = attack.run(&model, &x, &Goal::untargeted(&y)).unwrap();
            let (xs, advs) = (host(&x), host(&adv.x_adv));
            prop_assert!(advs.iter().all(|v| (0.0..=1.0).contains(v)), "{} left the box", attack.name());
            // the model's own verdict on the returned point, recomputed
            let preds = model.forward(&adv.x_adv).unwrap().argmax(1).unwrap().to_vec1::<u32>().unwrap();
            for i in 0..6 {
                let (a, b) = (&advs[i * 16..(i + 1) * 16], &xs[i * 16..(i + 1) * 16]);
                let d = distance(budget.norm(), a, b);
                let bound = f64::from(budget.eps()) * (1.0 + 1e-6) + 1e-6;
                prop_assert!(d <= bound, "{} ({}) moved {d} > eps {}", attack.name(), budget.norm(), budget.eps());
                prop_assert!((f64::from(adv.norms[i]) - d).abs() <= 1e-5 * (1.0 + d));
                let label = [0u32, 1, 2][i % 3];
                let pred = preds[i];
                prop_assert_eq!(adv.predictions[i], pred);
                prop_assert_eq!(adv.success[i], pred != label);
            }
            // a black-box attack spends forward passes only; a gradient attack spends gradients
            // unless every sample is misclassified already (FAB-T attacks none then)
            let black_box = attack.name() == "square";
            let clean = model.forward(&x).unwrap().argmax(1).unwrap().to_vec1::<u32>().unwrap();
            let all_wrong = (0..6).all(|i| clean[i] != [0u32, 1, 2][i % 3]);
            if black_box {
                prop_assert_eq!(adv.gradient_evals, 0, "{} took gradients", attack.name());
            } else if !all_wrong {
                prop_assert!(adv.gradient_evals > 0, "{} spent no gradient", attack.name());
            }
            prop_assert!(adv.forward_evals > 0, "{} judged nothing", attack.name());
        }
    }
}

#[test]
fn every_attack_is_deterministic_and_reproducible_from_its_report() {
    let model = LinearModel::random(3, 4, 16);
    let (x, y) = batch(11, 8);
    let registry = registry();
    for attack in attacks([0.1, 0.5, 2.0], 5) {
        let a = attack.run(&model, &x, &Goal::untargeted(&y)).unwrap();
        let b = attack.run(&model, &x, &Goal::untargeted(&y)).unwrap();
        assert_eq!(host(&a.x_adv), host(&b.x_adv), "{}", attack.name());
        // the report's params rebuild the same attack
        let run = Evaluator::new(&model, &x, &y)
            .unwrap()
            .run(attack.as_ref() as &dyn Attack, None)
            .unwrap();
        let info = &run.report.attack;
        let mut params = info.params.as_object().unwrap().clone();
        params.remove("budget");
        let spec = AttackSpec {
            attack: info.name.clone(),
            norm: info.norm.unwrap(),
            eps: info.eps,
            params,
        };
        let again = registry.build(&spec).unwrap();
        assert_eq!(again.params(), attack.params(), "{}", attack.name());
        let c = again.run(&model, &x, &Goal::untargeted(&y)).unwrap();
        assert_eq!(host(&a.x_adv), host(&c.x_adv), "{}", attack.name());
        // a sweep takes every registered attack
        let at = attack.at_eps(attack.budget().eps() / 2.0).unwrap();
        assert_eq!(at.budget().eps(), attack.budget().eps() / 2.0);
    }
}

#[test]
fn every_attack_refuses_bad_input_with_typed_errors() {
    let model = LinearModel::random(3, 4, 16);
    let (x, y) = batch(1, 4);
    let dev = Device::Cpu;
    let mut with_nan = host(&x);
    with_nan[3] = f32::NAN;
    let with_nan = Tensor::from_vec(with_nan, (4, 1, 4, 4), &dev).unwrap();
    let too_bright = (&x + 1.5).unwrap();
    let flat = x.flatten_from(1).unwrap();
    let as_f64 = x.to_dtype(DType::F64).unwrap();
    let far_label = Tensor::new(&[0u32, 1, 7, 2], &dev).unwrap();
    let short_labels = Tensor::new(&[0u32, 1], &dev).unwrap();
    let not_logits = |t: &Tensor| t.flatten_from(1)?.sum_keepdim(1);
    // a model whose logits are NaN on sample 2 only, and infinite on sample 3
    let mask = Tensor::new(&[[1f32], [1.0], [f32::NAN], [f32::INFINITY]], &dev).unwrap();
    let broken = |t: &Tensor| match t.dim(0)? {
        4 => model.forward(t)?.broadcast_mul(&mask),
        _ => model.forward(t), // the gradient check's probes of the first samples
    };
    let check = perturb::GradientCheck::new().run(&broken, &x).err();
    assert!(
        matches!(&check, Some(Error::NonFiniteLogits { samples }) if samples == &[2, 3]),
        "{check:?}"
    );
    for attack in attacks([0.1, 0.5, 2.0], 0) {
        let name = attack.name();
        let goal = Goal::untargeted(&y);
        let err = |r: perturb::Result<perturb::Adversarial>| {
            r.err()
                .unwrap_or_else(|| panic!("{name} accepted bad input"))
        };
        assert!(
            matches!(
                err(attack.run(&model, &with_nan, &goal)),
                Error::NonFinite { .. }
            ),
            "{name}"
        );
        assert!(
            matches!(
                err(attack.run(&model, &too_bright, &goal)),
                Error::PixelsOutOfRange { .. }
            ),
            "{name}"
        );
        assert!(
            matches!(
                err(attack.run(&model, &flat, &goal)),
                Error::ShapeMismatch { .. }
            ),
            "{name}"
        );
        assert!(
            matches!(
                err(attack.run(&model, &as_f64, &goal)),
                Error::DTypeMismatch { .. }
            ),
            "{name}"
        );
        assert!(
            matches!(
                err(attack.run(&model, &x, &Goal::untargeted(&far_label))),
                Error::LabelOutOfRange { .. }
            ),
            "{name}"
        );
        assert!(
            matches!(
                err(attack.run(&model, &x, &Goal::untargeted(&short_labels))),
                Error::ShapeMismatch { .. }
            ),
            "{name}"
        );
        assert!(
            matches!(
                err(attack.run(&not_logits, &x, &goal)),
                Error::ModelOutput { .. }
            ),
            "{name}"
        );
        assert!(
            matches!(attack.at_eps(-1.0).err(), Some(Error::InvalidEpsilon(_))),
            "{name}"
        );
        // never counted as fooled or robust: an error naming the samples
        match attack.run(&broken, &x, &goal) {
            Err(Error::NonFiniteLogits { samples }) => assert_eq!(samples, [2, 3], "{name}"),
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[test]
fn bad_specs_are_typed_errors() {
    let registry = registry();
    let build = |json: &str| registry.build(&AttackSpec::from_json(json).unwrap()).err();
    assert!(matches!(
        build(r#"{"attack": "jsma", "eps": 0.1}"#),
        Some(Error::UnknownAttack { .. })
    ));
    for entry in registry.entries() {
        let name = entry.name;
        let unknown = build(&format!(
            r#"{{"attack": "{name}", "eps": 0.1, "frobnicate": 1}}"#
        ));
        assert!(matches!(unknown, Some(Error::AttackSpec { .. })), "{name}");
        let no_eps = build(&format!(r#"{{"attack": "{name}"}}"#));
        assert!(matches!(no_eps, Some(Error::AttackSpec { .. })), "{name}");
        let negative = build(&format!(r#"{{"attack": "{name}", "eps": -0.1}}"#));
        assert!(matches!(negative, Some(Error::InvalidEpsilon(_))), "{name}");
        if entry.takes("steps") {
            let norm = entry.norms[0];
            let zero = build(&format!(
                r#"{{"attack": "{name}", "norm": "{norm}", "eps": 0.1, "steps": 0}}"#
            ));
            assert!(
                matches!(zero, Some(Error::InvalidParameter { .. })),
                "{name}: steps 0 must fail when built"
            );
            let wrong_type = build(&format!(
                r#"{{"attack": "{name}", "norm": "{norm}", "eps": 0.1, "steps": "many"}}"#
            ));
            assert!(
                matches!(wrong_type, Some(Error::AttackSpec { .. })),
                "{name}"
            );
        }
    }
    assert!(AttackSpec::from_json("[1, 2]").is_err());
}

#[test]
fn attacks_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Box<dyn FixedBudget>>();
    assert_send_sync::<Box<dyn Attack>>();
    assert_send_sync::<Registry>();
}

/// The attack of this test crate, from a spec file read as the CLI reads `--attack-spec`,
/// evaluated over a data set, swept over ε, and checked against its closed form: with decay 0
/// and an L∞ budget, momentum PGD is BIM with step ε/steps, bit for bit.
#[test]
fn an_attack_from_outside_the_crate_runs_through_spec_files_and_the_evaluator() {
    let dir = std::env::temp_dir().join(format!("perturb-registry-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("mi.json");
    std::fs::write(
        &path,
        r#"{"attack": "momentum-pgd", "norm": "linf", "eps": 0.2, "steps": 8, "decay": 0}"#,
    )
    .unwrap();
    let registry = registry();
    let mi = registry.build(&AttackSpec::read(&path).unwrap()).unwrap();
    let model = LinearModel::random(7, 3, 16);
    let (x, y) = batch(2, 12);
    let bim = perturb::Pgd::bim(perturb::Budget::linf(0.2).unwrap())
        .steps(8)
        .step_size(0.2 / 8.0);
    let goal = Goal::untargeted(&y);
    let (a, b) = (
        mi.run(&model, &x, &goal).unwrap(),
        bim.run(&model, &x, &goal).unwrap(),
    );
    assert_eq!(host(&a.x_adv), host(&b.x_adv));
    assert_eq!(
        (a.success.clone(), a.gradient_evals),
        (b.success.clone(), b.gradient_evals)
    );
    let eval = Evaluator::new(&model, &x, &y).unwrap();
    let run = eval.run(mi.as_ref() as &dyn Attack, None).unwrap();
    assert_eq!(run.report.attack.name, "momentum-pgd");
    assert_eq!(run.report.attack.params["decay"], 0.0);
    let sweep = eval.sweep(&[mi.as_ref(), &bim], &[0.0, 0.1, 0.2]).unwrap();
    assert_eq!(sweep.reports.len(), 6);
    assert_eq!(
        sweep.reports[2].robust_correct,
        sweep.reports[5].robust_correct
    );
}

/// Attacks and models are shared across threads: every registered attack run from 4 threads at
/// once gives the bits of 4 runs one after the other (on a linear model, where the defaults are
/// cheap), and so does PGD on a shipped CNN, whose kernels split work across threads.
#[test]
fn four_threads_at_once_give_the_serial_results_bit_for_bit() {
    fn check(
        attack: &dyn FixedBudget,
        model: &(dyn perturb::Classifier + Sync),
        x: &Tensor,
        y: &Tensor,
    ) {
        let goal = Goal::untargeted(y);
        let serial: Vec<Vec<f32>> = (0..4)
            .map(|_| host(&attack.run(model, x, &goal).unwrap().x_adv))
            .collect();
        let parallel: Vec<Vec<f32>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| s.spawn(|| host(&attack.run(model, x, &goal).unwrap().x_adv)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(
            serial,
            parallel,
            "{} ({})",
            attack.name(),
            attack.budget().norm()
        );
    }
    let linear = LinearModel::random(3, 4, 16);
    let (x, y) = batch(5, 4);
    for attack in attacks([0.1, 1.0, 8.0], 11) {
        check(attack.as_ref(), &linear, &x, &y);
    }
    let cnn = perturb::zoo::load("mnist-cnn", &Device::Cpu).unwrap();
    let (images, labels) = perturb::data::Mnist::load_test_default(&Device::Cpu).unwrap();
    let (x, y) = (
        images.narrow(0, 0, 8).unwrap(),
        labels.narrow(0, 0, 8).unwrap(),
    );
    let pgd = perturb::Pgd::new(perturb::Budget::linf(0.1).unwrap())
        .steps(5)
        .seed(2);
    check(&pgd, &cnn, &x, &y);
}

/// An empty batch is the same clear error for every attack, before any compute.
#[test]
fn an_empty_batch_is_the_same_typed_error_for_every_attack() {
    let model = LinearModel::random(1, 3, 16);
    let x = Tensor::zeros((0, 1, 4, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
    let y = Tensor::zeros(0, candle_core::DType::U32, &Device::Cpu).unwrap();
    for attack in attacks([0.1, 1.0, 8.0], 0) {
        match attack.run(&model, &x, &Goal::untargeted(&y)) {
            Err(Error::ShapeMismatch {
                what: "input", got, ..
            }) => assert_eq!(got, [0, 1, 4, 4]),
            other => panic!("{}: {other:?}", attack.name()),
        }
    }
}

/// A model whose logits change between two identical calls is reported by the evaluation of
/// every attack (a randomized model needs EOT, not one run), and a deterministic one never is;
/// an empty data set is the same valid empty result for every attack (zero counts, no
/// evaluations), on which a threshold is an error rather than a verdict.
#[test]
fn every_attack_reports_a_randomized_model_and_an_empty_data_set() {
    use std::sync::atomic::{AtomicU32, Ordering};
    let model = LinearModel::random(5, 4, 16);
    let (x, y) = batch(7, 6);
    let calls = AtomicU32::new(0);
    // a different, deterministic offset on every call: randomized, yet reproducible
    let randomized = |t: &Tensor| {
        let k = calls.fetch_add(1, Ordering::Relaxed);
        model.forward(t)? + f64::from(k % 7) * 1e-3
    };
    let warned = |w: &[String]| {
        w.iter()
            .any(|s| s.contains("differ between two identical calls"))
    };
    let empty_x = Tensor::zeros((0, 1, 4, 4), DType::F32, &Device::Cpu).unwrap();
    let empty_y = Tensor::zeros(0, DType::U32, &Device::Cpu).unwrap();
    for attack in attacks([0.1, 0.5, 2.0], 3) {
        let name = attack.name();
        let attack = attack.as_ref() as &dyn Attack;
        let run = Evaluator::new(&randomized, &x, &y)
            .unwrap()
            .run(attack, None)
            .unwrap();
        assert!(
            warned(&run.report.warnings),
            "{name}: {:?}",
            run.report.warnings
        );
        let run = Evaluator::new(&model, &x, &y)
            .unwrap()
            .run(attack, None)
            .unwrap();
        assert!(
            !warned(&run.report.warnings),
            "{name}: {:?}",
            run.report.warnings
        );
        let empty = Evaluator::new(&model, &empty_x, &empty_y)
            .unwrap()
            .run(attack, None)
            .unwrap();
        let r = &empty.report;
        assert_eq!(
            (
                r.samples,
                r.clean_correct,
                r.robust_correct,
                r.gradient_evals,
                r.forward_evals
            ),
            (0, 0, 0, 0, 0),
            "{name}"
        );
        assert_eq!(empty.x_adv.dims(), [0, 1, 4, 4], "{name}");
        assert!(
            matches!(r.meets(0.0), Err(Error::EmptyEvaluation)),
            "{name}"
        );
        assert!(
            matches!(
                perturb::eval::assert_robust(&model, &empty_x, &empty_y, attack, 0.0),
                Err(Error::EmptyEvaluation)
            ),
            "{name}"
        );
    }
}
