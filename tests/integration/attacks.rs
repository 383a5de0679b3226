//! Attacks against analytic truths: FGSM's closed form, PGD reaching the optimum of a linear
//! margin, exact early stopping and gradient accounting, restarts that never hurt.

use crate::common;

use candle_core::{Device, Tensor};
use common::{host, pixels, LinearModel};
use perturb::{loss_and_grad, Attack, Budget, Fgsm, Goal, Loss, Norm, Pgd};
use rand::{rngs::StdRng, SeedableRng};

/// Host gradient of CE for softmax regression: Wᵀ(softmax(z) − onehot(y)).
fn ce_gradient(model: &LinearModel, x: &[f32], y: usize) -> Vec<f64> {
    let z = model.logits_f64(x);
    let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = z.iter().map(|v| (v - m).exp()).collect();
    let s: f64 = e.iter().sum();
    (0..model.d)
        .map(|c| {
            (0..model.k)
                .map(|j| {
                    let onehot = if j == y { 1.0 } else { 0.0 };
                    model.w[j * model.d + c] as f64 * (e[j] / s - onehot)
                })
                .sum()
        })
        .collect()
}

mod fgsm {
    use super::*;

    /// `x + step` in exact arithmetic (`f64`), rounded to the `f32` on `x`'s side of it: the
    /// strict ε-ball allows no pixel beyond ε, not even by rounding.
    fn toward(x: f32, step: f32) -> f32 {
        let exact = f64::from(x) + f64::from(step);
        let nearest = exact as f32;
        if (f64::from(nearest) - f64::from(x)).abs() <= f64::from(step.abs()) {
            nearest
        } else if step > 0.0 {
            nearest.next_down()
        } else {
            nearest.next_up()
        }
    }

    /// FGSM returns exactly clip(x + ε·sign(∇), 0, 1), bit for bit, with `x + ε·sign(∇)` rounded
    /// toward `x` (the strict budget).
    #[test]
    fn linf_is_exactly_the_clipped_sign_step() -> perturb::Result<()> {
        let (k, d, n) = (4, 20, 6);
        let model = LinearModel::random(31, k, d);
        let mut rng = StdRng::seed_from_u64(32);
        let mut xs = pixels(&mut rng, n * d);
        xs[0] = 0.0; // pixels at the box edges are clipped
        xs[1] = 1.0;
        let x = Tensor::from_vec(xs.clone(), (n, 1, 4, 5), &Device::Cpu)?;
        let labels: Vec<u32> = (0..n as u32).map(|i| i % k as u32).collect();
        let y = Tensor::new(labels.as_slice(), &Device::Cpu)?;
        for eps in [0.01f32, 0.1, 0.3] {
            let adv = Fgsm::new(Budget::linf(eps)?).run(&model, &x, &Goal::untargeted(&y))?;
            let got = host(&adv.x_adv);
            for i in 0..n {
                let g = ce_gradient(&model, &xs[i * d..(i + 1) * d], labels[i] as usize);
                for c in 0..d {
                    assert!(g[c].abs() > 1e-6, "degenerate fixture");
                    let step = if g[c] > 0.0 { eps } else { -eps };
                    let want = toward(xs[i * d + c], step).clamp(0.0, 1.0);
                    assert_eq!(got[i * d + c], want, "eps {eps} sample {i} pixel {c}");
                }
            }
            assert_eq!(adv.gradient_evals, n);
        }
        Ok(())
    }

    /// FGM (L2) moves by ε along ∇/‖∇‖₂ when the box is not in the way.
    #[test]
    fn l2_is_the_normalized_gradient_step() -> perturb::Result<()> {
        let (k, d) = (3, 16);
        let model = LinearModel::random(33, k, d);
        let xs = vec![0.5f32; d];
        let x = Tensor::from_vec(xs.clone(), (1, 1, 4, 4), &Device::Cpu)?;
        let y = Tensor::new(&[2u32], &Device::Cpu)?;
        let eps = 0.2;
        let adv = Fgsm::new(Budget::l2(eps)?).run(&model, &x, &Goal::untargeted(&y))?;
        let g = ce_gradient(&model, &xs, 2);
        let len = g.iter().map(|v| v * v).sum::<f64>().sqrt();
        for (c, got) in host(&adv.x_adv).iter().enumerate() {
            let want = 0.5 + eps as f64 * g[c] / len;
            assert!((*got as f64 - want).abs() < 1e-6);
        }
        assert!((adv.norms[0] - eps).abs() < 1e-5);
        Ok(())
    }
}

mod pgd_optimum {
    use super::*;

    /// Linear model with 3 classes whose third class never competes, label y = 0, target t = 1:
    /// the targeted CW objective z_t − max_{j≠t} z_j equals z_1 − z_0 near the optimum.
    fn fixture() -> (LinearModel, Vec<f32>) {
        let d = 16;
        let mut m = LinearModel::random(41, 3, d);
        m = LinearModel::new(m.w.clone(), vec![0.0, 0.0, -100.0], 3, d);
        let mut rng = StdRng::seed_from_u64(42);
        let xs = pixels(&mut rng, d);
        (m, xs)
    }

    fn margin(model: &LinearModel, x: &[f32]) -> f64 {
        let z = model.logits_f64(x);
        z[1] - z[0]
    }

    fn run(
        model: &LinearModel,
        xs: &[f32],
        budget: Budget,
        steps: usize,
    ) -> perturb::Result<Vec<f32>> {
        let x = Tensor::from_vec(xs.to_vec(), (1, 1, 4, 4), &Device::Cpu)?;
        let goal = Goal::targeted_with_labels(
            &Tensor::new(&[1u32], &Device::Cpu)?,
            &Tensor::new(&[0u32], &Device::Cpu)?,
        );
        let pgd = Pgd::new(budget)
            .loss(Loss::cw(1e4)?)
            .steps(steps)
            .step_size(budget.eps() / 10.0)
            // from the clean point: the optimum is the oracle, not the luck of a start (a
            // fixed step ends within a step-sized neighbourhood of it, which a random start
            // moves)
            .random_start(false);
        Ok(host(&pgd.run(model, &x, &goal)?.x_adv))
    }

    /// L∞: every pixel ends at its box-clipped ε bound in the direction of sign(w_t − w_y).
    #[test]
    fn linf_reaches_the_box_clipped_corner() -> perturb::Result<()> {
        let (model, xs) = fixture();
        let d = xs.len();
        let eps = 0.3;
        let got = run(&model, &xs, Budget::linf(eps)?, 40)?;
        let optimum: Vec<f32> = (0..d)
            .map(|c| {
                let v = model.w[d + c] - model.w[c];
                let target = if v > 0.0 { xs[c] + eps } else { xs[c] - eps };
                target.clamp(0.0, 1.0)
            })
            .collect();
        let best = margin(&model, &optimum);
        assert!((margin(&model, &got) - best).abs() < 1e-3);
        for c in 0..d {
            assert!((got[c] - optimum[c]).abs() < 1e-5, "pixel {c}");
        }
        Ok(())
    }

    /// L2 with the box inactive: the margin grows by exactly ε·‖w_t − w_y‖₂.
    #[test]
    fn l2_gains_eps_times_the_weight_distance() -> perturb::Result<()> {
        let (model, _) = fixture();
        let d = 16;
        let xs = vec![0.5f32; d];
        let eps = 0.4;
        let got = run(&model, &xs, Budget::l2(eps)?, 60)?;
        let dist = (0..d)
            .map(|c| ((model.w[d + c] - model.w[c]) as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        let gain = margin(&model, &got) - margin(&model, &xs);
        assert!(
            (gain - eps as f64 * dist).abs() < 1e-3,
            "{gain} vs {}",
            eps as f64 * dist
        );
        Ok(())
    }

    /// L1: ε goes to the coordinates with the largest |w_t − w_y|, each up to the box.
    #[test]
    fn l1_fills_the_largest_weights_first() -> perturb::Result<()> {
        let (model, xs) = fixture();
        let d = xs.len();
        let eps = 1.5;
        let got = run(&model, &xs, Budget::l1(eps)?, 200)?;
        // Greedy optimum of a linear objective over the L1 ball ∩ box.
        let mut order: Vec<usize> = (0..d).collect();
        let v = |c: usize| (model.w[d + c] - model.w[c]) as f64;
        order.sort_by(|&a, &b| v(b).abs().total_cmp(&v(a).abs()));
        let (mut left, mut gain) = (eps as f64, 0.0);
        for c in order {
            let room = if v(c) > 0.0 {
                1.0 - xs[c] as f64
            } else {
                xs[c] as f64
            };
            let used = room.min(left);
            gain += used * v(c).abs();
            left -= used;
        }
        let got_gain = margin(&model, &got) - margin(&model, &xs);
        assert!((got_gain - gain).abs() < 1e-3, "{got_gain} vs {gain}");
        Ok(())
    }
}

mod early_stop {
    use super::*;

    /// Logits are the two pixels; label 1. Sample A is already misclassified, B flips after
    /// exactly 5 BIM steps of 0.05, C cannot flip within ε = 0.3.
    fn batch() -> perturb::Result<(Tensor, Tensor)> {
        let x = Tensor::new(
            &[[[[0.7f32, 0.2]]], [[[0.2, 0.65]]], [[[0.0, 1.0]]]],
            &Device::Cpu,
        )?;
        Ok((x, Tensor::new(&[1u32, 1, 1], &Device::Cpu)?))
    }

    #[test]
    fn finished_samples_cost_nothing_and_stay_put() -> perturb::Result<()> {
        let model = |x: &Tensor| x.flatten_from(1);
        let (x, y) = batch()?;
        let pgd = Pgd::bim(Budget::linf(0.3)?).steps(10).step_size(0.05);
        let adv = pgd
            .clone()
            .early_stop(true)
            .run(&model, &x, &Goal::untargeted(&y))?;
        let got = host(&adv.x_adv);
        assert_eq!(&got[0..2], &[0.7, 0.2], "A is returned unchanged");
        assert_eq!(adv.success, [true, true, false]);
        // B: 5 steps, then one gradient pass at x_5 that reveals success; C: all 10 steps.
        assert_eq!(adv.gradient_evals, 6 + 10);
        assert!((got[2] - 0.45).abs() < 1e-6 && (got[3] - 0.40).abs() < 1e-6);
        assert!((got[4] - 0.3).abs() < 1e-6 && (got[5] - 0.7).abs() < 1e-6);
        // Without early stopping every sample pays for every step.
        let full = pgd.run(&model, &x, &Goal::untargeted(&y))?;
        assert_eq!(full.gradient_evals, 3 * 10);
        assert_eq!(full.success, [true, true, false]);
        Ok(())
    }

    /// Early stopping with random start never loses a success that the start already had.
    #[test]
    fn gradient_evals_count_restarts_exactly() -> perturb::Result<()> {
        let model = |x: &Tensor| x.flatten_from(1);
        let (x, y) = batch()?;
        let pgd = Pgd::bim(Budget::linf(0.3)?)
            .steps(10)
            .step_size(0.05)
            .restarts(3);
        // Only C fails, so restarts 2 and 3 run on C alone: 16 + 10 + 10.
        let adv = pgd
            .early_stop(true)
            .run(&model, &x, &Goal::untargeted(&y))?;
        assert_eq!(adv.gradient_evals, 36);
        Ok(())
    }
}

mod restarts {
    use super::*;

    /// Per sample, restarts never end with a worse result than the single run with the same
    /// first seed: a success stays a success, a failure's loss does not drop.
    #[test]
    fn restarts_never_hurt() -> perturb::Result<()> {
        for seed in 0..6u64 {
            let (k, d, n) = (5, 16, 12);
            let model = LinearModel::random(50 + seed, k, d);
            let mut rng = StdRng::seed_from_u64(60 + seed);
            let x = Tensor::from_vec(pixels(&mut rng, n * d), (n, 1, 4, 4), &Device::Cpu)?;
            let labels: Vec<u32> = (0..n as u32).map(|i| i % k as u32).collect();
            let y = Tensor::new(labels.as_slice(), &Device::Cpu)?;
            let goal = Goal::untargeted(&y);
            for norm in [Norm::Linf, Norm::L2, Norm::L1] {
                let eps = match norm {
                    Norm::Linf => 0.03,
                    Norm::L2 => 0.2,
                    Norm::L1 => 1.0,
                };
                let pgd = Pgd::new(Budget::new(norm, eps)?).steps(3).seed(seed);
                let one = pgd.clone().run(&model, &x, &goal)?;
                let many = pgd.restarts(4).run(&model, &x, &goal)?;
                let loss_one = loss_and_grad(&model, &one.x_adv, &goal, Loss::CrossEntropy)?.loss;
                let loss_many = loss_and_grad(&model, &many.x_adv, &goal, Loss::CrossEntropy)?.loss;
                let (l1, lm) = (loss_one.to_vec1::<f32>()?, loss_many.to_vec1::<f32>()?);
                for i in 0..n {
                    assert!(
                        many.success[i] || !one.success[i],
                        "{norm} sample {i} lost success"
                    );
                    if !one.success[i] && !many.success[i] {
                        assert!(lm[i] >= l1[i], "{norm} sample {i}: {} < {}", lm[i], l1[i]);
                    }
                }
            }
        }
        Ok(())
    }
}

mod perturb_only {
    use super::*;
    use candle_core::Module;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// `model` that counts the samples it is called on (forward passes, with or without a
    /// backward after them).
    struct Counting<'a> {
        model: &'a LinearModel,
        samples: AtomicUsize,
    }

    impl Module for Counting<'_> {
        fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
            self.samples.fetch_add(x.dim(0)?, Ordering::Relaxed);
            self.model.forward(x)
        }
    }

    fn same_bits(a: &Tensor, b: &Tensor) -> bool {
        let (a, b) = (host(a), host(b));
        a.len() == b.len() && a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits())
    }

    /// `perturb` returns `run`'s adversarials bit for bit, for every configuration of PGD and
    /// FGSM, and skips exactly the judging forward pass (one per sample) where the verdict only
    /// reports: FGSM and single-run PGD. With restarts every run is judged to pick the best.
    #[test]
    fn equals_run_and_skips_only_the_verdict() -> perturb::Result<()> {
        let (k, d, n) = (4, 16, 10);
        let linear = LinearModel::random(7, k, d);
        let mut rng = StdRng::seed_from_u64(8);
        let x = Tensor::from_vec(pixels(&mut rng, n * d), (n, 1, 4, 4), &Device::Cpu)?;
        let labels: Vec<u32> = (0..n as u32).map(|i| i % k as u32).collect();
        let targets: Vec<u32> = labels.iter().map(|&c| (c + 1) % k as u32).collect();
        let untargeted = Goal::untargeted(&Tensor::new(labels.as_slice(), &Device::Cpu)?);
        let targeted = Goal::targeted(&Tensor::new(targets.as_slice(), &Device::Cpu)?);
        // (label, attack, steps, forward samples `perturb` saves: None for none, Some(early_stop)
        // for the verdict on every attacked sample)
        type Case = (String, Box<dyn Attack>, usize, Option<bool>);
        let mut attacks: Vec<Case> = Vec::new();
        for norm in [Norm::Linf, Norm::L2, Norm::L1] {
            let eps = match norm {
                Norm::Linf => 0.05,
                Norm::L2 => 0.5,
                Norm::L1 => 2.0,
            };
            let budget = Budget::new(norm, eps)?;
            let fgsm = Fgsm::new(budget).check_gradient(false);
            attacks.push((format!("fgsm {norm}"), Box::new(fgsm), 1, Some(false)));
            for (random_start, early_stop, restarts) in [
                (true, false, 1),
                (false, false, 1),
                (true, true, 1),
                (false, true, 1),
                (true, false, 3),
                (true, true, 3),
            ] {
                let pgd = Pgd::new(budget)
                    .steps(4)
                    .random_start(random_start)
                    .early_stop(early_stop)
                    .restarts(restarts)
                    .seed(3)
                    .check_gradient(false);
                let label =
                    format!("pgd {norm} start {random_start} stop {early_stop} x{restarts}");
                // with restarts every run is judged to pick the best
                let saved = (restarts == 1).then_some(early_stop);
                attacks.push((label, Box::new(pgd), 4, saved));
            }
        }
        let clean: Vec<u32> = linear.forward(&x)?.argmax(1)?.to_vec1::<u32>()?;
        for goal in [&untargeted, &targeted] {
            // the samples attacked at all: early stopping leaves the clean successes out
            let fooled_clean = (0..n)
                .filter(|&i| match goal {
                    Goal::Untargeted { .. } => clean[i] != labels[i],
                    Goal::Targeted { .. } => clean[i] == targets[i],
                })
                .count();
            for (label, attack, steps, saved) in &attacks {
                let counting = |m| Counting {
                    model: m,
                    samples: AtomicUsize::new(0),
                };
                let (judged_model, bare_model) = (counting(&linear), counting(&linear));
                let judged = attack.run(&judged_model, &x, goal)?;
                let bare = attack.perturb(&bare_model, &x, goal)?;
                assert!(same_bits(&judged.x_adv, &bare), "{label}: x_adv differs");
                let saved = match saved {
                    None => 0,
                    Some(false) => n,
                    Some(true) => n - fooled_clean,
                };
                let (a, b) = (
                    judged_model.samples.load(Ordering::Relaxed),
                    bare_model.samples.load(Ordering::Relaxed),
                );
                assert_eq!(
                    a - b,
                    saved,
                    "{label}: {a} forward samples judged, {b} bare"
                );
                if saved == n {
                    // the steps' gradients alone: no forward only to learn the class count
                    assert_eq!(
                        b,
                        steps * n,
                        "{label}: {b} forward samples for {steps} steps"
                    );
                }
            }
        }
        Ok(())
    }
}

/// Attacks, budgets, losses and results can cross threads (Rust API guidelines).
#[test]
fn attack_types_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Fgsm>();
    assert_send_sync::<Pgd>();
    assert_send_sync::<Budget>();
    assert_send_sync::<Loss>();
    assert_send_sync::<Goal>();
    assert_send_sync::<perturb::Adversarial>();
    assert_send_sync::<perturb::GradientCheck>();
    assert_send_sync::<perturb::Error>();
    assert_send_sync::<Box<dyn Attack>>();
}
