//! Random starts are uniform in the ε-ball: their radii follow the distribution a uniform point
//! of the ball has (feasibility itself is covered by the property tests).

use candle_core::{Device, Tensor};
use perturb::{Budget, Norm};
use rand::{rngs::StdRng, SeedableRng};

/// Radii `‖δ‖/ε` of `n` random starts around the centre of a `d`-pixel image.
fn radii(norm: Norm, d: usize, n: usize) -> perturb::Result<Vec<f64>> {
    let eps = 0.1;
    let budget = Budget::new(norm, eps)?;
    let x = Tensor::full(0.5f32, (n, 1, 1, d), &Device::Cpu)?;
    let start = budget.random_start(&x, &mut StdRng::seed_from_u64(17))?;
    Ok(budget
        .distances(&start, &x)?
        .iter()
        .map(|r| f64::from(*r) / f64::from(eps))
        .collect())
}

/// For a uniform point of a d-dimensional ball (any norm), P(‖δ‖/ε ≤ t) = t^d: the empirical
/// CDF must match it (Kolmogorov–Smirnov distance below the 0.1 % critical value).
#[test]
fn start_radii_follow_the_uniform_ball_law() -> perturb::Result<()> {
    let n = 4000;
    let critical = 1.95 / (n as f64).sqrt();
    for norm in [Norm::Linf, Norm::L2, Norm::L1] {
        for d in [1usize, 2, 5] {
            let mut r = radii(norm, d, n)?;
            r.sort_by(f64::total_cmp);
            let ks = r
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let cdf = t.min(1.0).powi(d as i32);
                    (cdf - i as f64 / n as f64)
                        .abs()
                        .max((cdf - (i + 1) as f64 / n as f64).abs())
                })
                .fold(0.0, f64::max);
            assert!(
                ks < critical,
                "{norm}, d = {d}: KS distance {ks:.4} >= {critical:.4}"
            );
        }
    }
    Ok(())
}

/// The L∞ start is uniform per pixel: each coordinate's mean |δ|/ε is 1/2.
#[test]
fn linf_start_is_uniform_per_pixel() -> perturb::Result<()> {
    let budget = Budget::linf(0.2)?;
    let x = Tensor::full(0.5f32, (500, 1, 4, 4), &Device::Cpu)?;
    let start = budget.random_start(&x, &mut StdRng::seed_from_u64(3))?;
    let d: Vec<f32> = (start - &x)?.flatten_all()?.to_vec1()?;
    let mean = d.iter().map(|v| f64::from(v.abs()) / 0.2).sum::<f64>() / d.len() as f64;
    assert!((mean - 0.5).abs() < 0.01, "mean |δ|/ε = {mean}");
    let positive = d.iter().filter(|v| **v > 0.0).count() as f64 / d.len() as f64;
    assert!(
        (positive - 0.5).abs() < 0.01,
        "fraction positive = {positive}"
    );
    Ok(())
}
