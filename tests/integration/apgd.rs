//! APGD and APGD-T against independent truths: the closed-form optimum of a linear model (where
//! the goal is out of reach, APGD must return the point of highest loss), the checkpoint formula
//! of the paper computed in floating point, the targeted DLR formula on hand-computed logits,
//! and early stopping that changes the cost but not the verdicts.

use crate::common;

use candle_core::{Device, Tensor};
use common::{host, pixels, LinearModel};
use perturb::attack::Apgd;
use perturb::{Attack, Budget, Goal, Loss};
use rand::{rngs::StdRng, SeedableRng};

/// Two classes, the label's logit `lead` ahead; cross-entropy is increasing in the margin
/// `z₁ − z₀`. With `lead` one above the clean margin plus the largest gain the budget allows, the label stays out of reach
/// and the attack's result is its point of highest loss. (Not far above: cross-entropy must stay
/// resolvable in `f32` beside the logits for the attack to see its loss rise.)
fn unreachable(xs: &[f32], gain: impl Fn(&[f32]) -> f64) -> LinearModel {
    let d = xs.len();
    let m = LinearModel::random(41, 2, d);
    let v: Vec<f32> = (0..d).map(|c| m.w[d + c] - m.w[c]).collect();
    let start: f64 = v.iter().zip(xs).map(|(a, b)| f64::from(a * b)).sum();
    let lead = (start + gain(&v) + 1.0) as f32;
    LinearModel::new(m.w.clone(), vec![lead, 0.0], 2, d)
}

fn margin(model: &LinearModel, x: &[f32]) -> f64 {
    let z = model.logits_f64(x);
    z[1] - z[0]
}

fn run(model: &LinearModel, xs: &[f32], budget: Budget) -> perturb::Result<Vec<f32>> {
    let x = Tensor::from_vec(xs.to_vec(), (1, 1, 4, 4), &Device::Cpu)?;
    let goal = Goal::untargeted(&Tensor::new(&[0u32], &Device::Cpu)?);
    let apgd = Apgd::new(budget).steps(50).seed(3);
    let adv = apgd.run(model, &x, &goal)?;
    assert_eq!(
        adv.success,
        [false],
        "the fixture keeps the label out of reach"
    );
    Ok(host(&adv.x_adv))
}

/// L∞: APGD-CE ends at the box-clipped corner sign(w₁ − w₀), as PGD's oracle test does.
#[test]
fn linf_reaches_the_box_clipped_corner() -> perturb::Result<()> {
    let d = 16;
    let eps = 0.3;
    let xs = pixels(&mut StdRng::seed_from_u64(42), d);
    let model = unreachable(&xs, |v| v.iter().map(|a| f64::from(eps * a.abs())).sum());
    let got = run(&model, &xs, Budget::linf(eps)?)?;
    for c in 0..d {
        let v = model.w[d + c] - model.w[c];
        let corner = if v > 0.0 { xs[c] + eps } else { xs[c] - eps }.clamp(0.0, 1.0);
        assert!(
            (got[c] - corner).abs() < 1e-5,
            "pixel {c}: {} vs {corner}",
            got[c]
        );
    }
    Ok(())
}

/// L2 with the box inactive: the margin grows by ε·‖w₁ − w₀‖₂.
#[test]
fn l2_gains_eps_times_the_weight_distance() -> perturb::Result<()> {
    let d = 16;
    let eps = 0.4;
    let xs = vec![0.5f32; d];
    let model = unreachable(&xs, |v| {
        f64::from(eps) * v.iter().map(|a| f64::from(*a).powi(2)).sum::<f64>().sqrt()
    });
    let got = run(&model, &xs, Budget::l2(eps)?)?;
    let dist = (0..d)
        .map(|c| f64::from(model.w[d + c] - model.w[c]).powi(2))
        .sum::<f64>()
        .sqrt();
    let gain = margin(&model, &got) - margin(&model, &xs);
    assert!(
        (gain - f64::from(eps) * dist).abs() < 1e-3,
        "{gain} vs {}",
        f64::from(eps) * dist
    );
    Ok(())
}

/// The checkpoints are the paper's `p_j` (`p₁ = 0.22`, `p_{j+1} = p_j + max(p_j − p_{j−1} −
/// 0.03, 0.06)`) times the steps, for step counts where every `p_j · steps` is whole.
#[test]
fn checkpoints_follow_the_papers_recursion() {
    for steps in [100usize, 200, 500, 1000] {
        let mut want = Vec::new();
        let (mut before, mut p) = (0.0f64, 0.22f64);
        while p <= 1.0 + 1e-9 {
            want.push((p * steps as f64).round() as usize);
            let next = p + (p - before - 0.03).max(0.06);
            (before, p) = (p, next);
        }
        assert_eq!(Apgd::checkpoints(steps), want, "{steps} steps");
    }
    // short runs still check, at least one step apart
    let few = Apgd::checkpoints(5);
    assert!(!few.is_empty() && few.windows(2).all(|w| w[1] > w[0]) && *few.last().unwrap() <= 5);
}

/// Targeted DLR on hand-computed logits: `−(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2)` for a sample
/// whose label y is the top class (APGD-T's case: it attacks correctly classified samples).
#[test]
fn targeted_dlr_equals_its_formula() -> perturb::Result<()> {
    let z = [4.0f32, 1.0, 2.5, -1.0, 0.5];
    let (y, t) = (0usize, 2usize);
    let logits = Tensor::new(&[z], &Device::Cpu)?;
    let targets = Tensor::new(&[t as u32], &Device::Cpu)?;
    let got = Loss::Dlr
        .objective(&logits, &targets, true)?
        .to_vec1::<f32>()?[0];
    // sorted: 4, 2.5, 1, 0.5, -1  →  π1 = 4, π3 = 1, π4 = 0.5
    let want = -(z[y] - z[t]) / (4.0 - (1.0 + 0.5) / 2.0);
    assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    Ok(())
}

/// Early stopping drops fooled samples from the batch: the same samples are fooled, for fewer
/// gradients, untargeted and targeted.
#[test]
fn early_stop_saves_gradients_and_keeps_the_verdicts() -> perturb::Result<()> {
    let (k, d, n) = (5, 16, 12);
    let model = LinearModel::random(7, k, d);
    let mut rng = StdRng::seed_from_u64(8);
    let x = Tensor::from_vec(pixels(&mut rng, n * d), (n, 1, 4, 4), &Device::Cpu)?;
    // labels = the model's own predictions: every sample starts correctly classified
    let y = candle_core::Module::forward(&model, &x)?.argmax(1)?;
    for attack in [
        Apgd::new(Budget::linf(0.05)?).steps(30),
        Apgd::targeted(Budget::l2(0.2)?).steps(20).targets(3),
    ] {
        let goal = Goal::untargeted(&y);
        let full = attack.clone().early_stop(false).run(&model, &x, &goal)?;
        let early = attack.clone().early_stop(true).run(&model, &x, &goal)?;
        assert_eq!(full.success, early.success, "{}", attack.name());
        assert!(full.success.iter().any(|s| *s) && full.success.iter().any(|s| !*s));
        assert!(
            early.gradient_evals < full.gradient_evals,
            "{}",
            attack.name()
        );
    }
    Ok(())
}

/// APGD-T refuses a targeted goal (it picks its targets itself) with a typed error.
#[test]
fn apgd_t_wants_labels() -> perturb::Result<()> {
    let model = LinearModel::random(7, 5, 16);
    let x = Tensor::full(0.5f32, (1, 1, 4, 4), &Device::Cpu)?;
    let goal = Goal::targeted(&Tensor::new(&[2u32], &Device::Cpu)?);
    let err = Apgd::targeted(Budget::linf(0.1)?).run(&model, &x, &goal);
    assert!(
        matches!(
            err,
            Err(perturb::Error::InvalidParameter {
                name: "targets",
                ..
            })
        ),
        "{err:?}"
    );
    Ok(())
}
