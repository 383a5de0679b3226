//! The ensemble is the per-sample worst case of its stages: a sample is fooled exactly when some
//! stage fools it, by the first such stage, with that stage's point; the evaluator's per-stage
//! table adds up to the report's figures.

use crate::common;

use candle_core::{Device, Tensor};
use common::{host, pixels, LinearModel};
use perturb::attack::{Ensemble, FixedBudget};
use perturb::eval::Evaluator;
use perturb::{Attack, Budget, Error, Fgsm, Goal, Pgd};
use rand::{rngs::StdRng, SeedableRng};

fn fixture(n: usize) -> (LinearModel, Tensor, Tensor) {
    let model = LinearModel::random(5, 4, 16);
    let mut rng = StdRng::seed_from_u64(6);
    let x = Tensor::from_vec(pixels(&mut rng, n * 16), (n, 1, 4, 4), &Device::Cpu).unwrap();
    // labels: the model's own predictions, so every sample is attacked
    let y = candle_core::Module::forward(&model, &x)
        .unwrap()
        .argmax(1)
        .unwrap();
    (model, x, y)
}

/// Deterministic stages (no random start), so a stage run alone on the whole batch is the
/// oracle for what it does to each sample inside the ensemble.
fn stages(eps: f32) -> Vec<Box<dyn FixedBudget>> {
    let b = Budget::linf(eps).unwrap();
    vec![
        Box::new(Fgsm::new(b)),
        Box::new(Pgd::new(b).steps(20).random_start(false)),
    ]
}

#[test]
fn a_sample_is_fooled_when_some_stage_fools_it_by_the_first() -> perturb::Result<()> {
    let n = 40;
    let (model, x, y) = fixture(n);
    for eps in [0.02f32, 0.05, 0.1] {
        let goal = Goal::untargeted(&y);
        let alone: Vec<_> = stages(eps)
            .iter()
            .map(|s| s.run(&model, &x, &goal))
            .collect::<perturb::Result<_>>()?;
        let ensemble = Ensemble::new("ensemble", stages(eps))?;
        let adv = ensemble.run(&model, &x, &goal)?;
        let (ens, per_stage) = (
            host(&adv.x_adv),
            alone.iter().map(|a| host(&a.x_adv)).collect::<Vec<_>>(),
        );
        for i in 0..n {
            let first = alone.iter().position(|a| a.success[i]);
            assert_eq!(adv.fooled_by[i], first, "eps {eps} sample {i}");
            assert_eq!(adv.success[i], first.is_some());
            // the point is the fooling stage's (or the last stage's), up to the model's rounding
            let s = first.unwrap_or(alone.len() - 1);
            let (got, want) = (
                &ens[i * 16..(i + 1) * 16],
                &per_stage[s][i * 16..(i + 1) * 16],
            );
            assert!(
                got.iter().zip(want).all(|(a, b)| (a - b).abs() <= 1e-6),
                "sample {i}"
            );
            assert_eq!(adv.predictions[i], alone[s].predictions[i]);
        }
        // stage 2 ran only on what stage 1 left
        let left = alone[0].success.iter().filter(|s| !**s).count();
        assert_eq!(adv.gradient_evals, alone[0].gradient_evals + 20 * left);
    }
    Ok(())
}

#[test]
fn the_report_has_a_per_stage_table_that_adds_up() -> perturb::Result<()> {
    let (model, x, y) = fixture(60);
    // a weak first stage (one short step), so that the second one has work left
    let b = Budget::linf(0.05)?;
    let weak = Pgd::new(b).steps(1).step_size(0.01).random_start(false);
    let strong = Pgd::new(b).steps(20).random_start(false);
    let ensemble = Ensemble::new("ensemble", vec![Box::new(weak), Box::new(strong)])?;
    let run = Evaluator::new(&model, &x, &y)?
        .batch_size(25)
        .run(&ensemble, None)?;
    let r = &run.report;
    assert_eq!(r.stages.len(), 2);
    assert_eq!(r.stages[0].attack, "pgd");
    assert_eq!(
        r.stages.iter().map(|s| s.fooled).sum::<usize>(),
        r.successes
    );
    assert_eq!(r.stages[1].robust_correct, r.robust_correct);
    assert_eq!(
        r.stages[0].robust_correct,
        r.clean_correct - r.stages[0].fooled
    );
    assert!(
        r.stages[0].fooled > 0 && r.stages[1].fooled > 0,
        "both stages count here: {:?}",
        r.stages
    );
    // a single attack has no table, and old reports without one still read
    let single = Evaluator::new(&model, &x, &y)?.run(&Fgsm::new(Budget::linf(0.05)?), None)?;
    assert!(single.report.stages.is_empty());
    let json = serde_json::to_value(&single.report).unwrap();
    assert!(json.get("stages").is_none());
    Ok(())
}

#[test]
fn stages_share_one_budget_and_move_together() -> perturb::Result<()> {
    let mixed: Vec<Box<dyn FixedBudget>> = vec![
        Box::new(Fgsm::new(Budget::linf(0.1)?)),
        Box::new(Pgd::new(Budget::l2(0.1)?)),
    ];
    assert!(matches!(
        Ensemble::new("mixed", mixed),
        Err(Error::InvalidParameter { name: "stages", .. })
    ));
    assert!(Ensemble::new("none", Vec::new()).is_err());
    let standard = Ensemble::standard(Budget::l2(1.0)?)?;
    assert_eq!(
        standard.stage_names(),
        ["apgd", "apgd-t", "fab-t", "square"]
    );
    assert!(Ensemble::standard(Budget::l1(5.0)?).is_err());
    let fast = Ensemble::fast(Budget::linf(0.3)?)?;
    assert_eq!(fast.stage_names(), ["apgd", "apgd-t"]);
    let smaller = fast.at_eps(0.1)?;
    assert_eq!(smaller.budget().eps(), 0.1);
    let params = smaller.params();
    for stage in params["stages"].as_array().unwrap() {
        assert_eq!(stage["params"]["budget"]["eps"], 0.1f32 as f64);
    }
    Ok(())
}

mod checks {
    use super::*;
    use perturb::attack::Square;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A model whose input gradient is zero (its logits come through `detach`) while its
    /// decisions depend on the input: the gradient attack cannot move, Square can.
    fn masked() -> impl Fn(&Tensor) -> candle_core::Result<Tensor> {
        let model = LinearModel::random(5, 4, 16);
        move |x: &Tensor| {
            let z = candle_core::Module::forward(&model, &x.detach())?;
            let s = x.flatten_from(1)?.sum_keepdim(1)?;
            let zero = s.sub(&s)?; // on the graph, with a zero gradient
            z.broadcast_add(&zero)
        }
    }

    #[test]
    fn square_beating_the_gradient_attacks_is_a_warning() -> perturb::Result<()> {
        let (_, x, y) = fixture(40);
        let model = masked();
        let b = Budget::linf(0.1)?;
        let suite = Ensemble::new(
            "ensemble",
            vec![
                Box::new(Pgd::new(b).random_start(false).check_gradient(false)),
                Box::new(Square::new(b).queries(200)),
            ],
        )?;
        let run = Evaluator::new(&model, &x, &y)?.run(&suite, None)?;
        let r = &run.report;
        assert_eq!(r.stages[0].fooled, 0, "zero gradients move nothing");
        assert!(
            r.warnings.iter().any(|w| w.contains("exactly zero")),
            "{:?}",
            r.warnings
        );
        assert!(r.stages[1].fooled > 0);
        assert!(
            r.warnings
                .iter()
                .any(|w| w.contains("gradients are misleading")),
            "{:?}",
            r.warnings
        );
        // an honest model with the same suite: no such warning
        let (honest, x, y) = fixture(40);
        let run = Evaluator::new(&honest, &x, &y)?.run(&Ensemble::new("e", stages(0.05))?, None)?;
        assert!(run.report.warnings.is_empty(), "{:?}", run.report.warnings);
        Ok(())
    }

    #[test]
    fn probabilities_and_randomized_outputs_are_warnings() -> perturb::Result<()> {
        let (model, x, y) = fixture(20);
        let softmax =
            |t: &Tensor| candle_nn::ops::softmax(&candle_core::Module::forward(&model, t)?, 1);
        let run = Evaluator::new(&softmax, &x, &y)?.run(&Fgsm::new(Budget::linf(0.05)?), None)?;
        assert!(
            run.report
                .warnings
                .iter()
                .any(|w| w.contains("probabilities")),
            "{:?}",
            run.report.warnings
        );
        let calls = AtomicU32::new(0);
        let noisy = |t: &Tensor| {
            let k = calls.fetch_add(1, Ordering::Relaxed) as f64;
            candle_core::Module::forward(&model, t)?.affine(1.0, 1e-3 * k)
        };
        let run = Evaluator::new(&noisy, &x, &y)?.run(&Fgsm::new(Budget::linf(0.05)?), None)?;
        assert!(
            run.report
                .warnings
                .iter()
                .any(|w| w.contains("differ between two identical calls")),
            "{:?}",
            run.report.warnings
        );
        Ok(())
    }
}
