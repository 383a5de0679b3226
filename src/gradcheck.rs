//! A self-check of a model's input gradient against finite differences.
//!
//! candle's autograd can be silently wrong (its `max_pool2d` backward scales the gradient by
//! 1/k², and fused kernels such as candle-nn's `LayerNorm` fast path have no backward and drop
//! their term). An attack that trusts such a gradient reports a model as robust when it is not.
//!
//! The check takes a random linear functional of the logits, `L(x) = Σ c ⊙ logits(x)` with
//! `c ~ N(0, 1)` (non-saturating, so small gradients of a confident model do not hide errors),
//! and compares autograd's directional derivative `∇L·d` with the central difference
//! `(L(x + h·d) − L(x − h·d)) / 2h` along `d = sign(∇L)` and a few random ±1 directions. A ReLU
//! or max-pool kink within `h` of `x` bends the central difference, so each direction also tries
//! one-sided differences (a kink on one side leaves the other side's slope exact) at three step
//! sizes, and the estimate closest to autograd counts. A wrong gradient is wrong on both sides and
//! at every step size. Cost: one batched forward pass of 6N samples per direction, no backward.

use candle_core::{DType, Tensor, Var};
use rand::{rngs::StdRng, Rng, SeedableRng};
use rand_distr::StandardNormal;

use crate::error::{Error, Result};
use crate::model::{checked_logits, is_missing_backward, Classifier};
use crate::validate::check_batch;

/// Finite-difference step sizes in pixel units.
const STEPS: [f64; 3] = [1e-2, 1e-3, 1e-4];

/// Outcome of a gradient self-check.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum GradVerdict {
    /// Autograd agrees with finite differences within the tolerance.
    Passed {
        /// Largest relative error over the directions tried.
        relative_error: f64,
    },
    /// No gradient reaches the input: a layer without backward sits on the path.
    Missing,
    /// Autograd disagrees with finite differences.
    Mismatch {
        /// Autograd's directional derivative along the worst direction.
        autograd: f64,
        /// The central-difference estimate along that direction.
        finite_difference: f64,
        /// Their relative difference.
        relative_error: f64,
    },
}

impl GradVerdict {
    /// Whether the gradient can be trusted.
    pub fn passed(&self) -> bool {
        matches!(self, GradVerdict::Passed { .. })
    }

    /// `Ok(())` when passed, otherwise the matching error.
    ///
    /// # Errors
    /// [`Error::GradientMissing`] or [`Error::GradientMismatch`].
    pub fn into_result(self) -> Result<()> {
        match self {
            GradVerdict::Passed { .. } => Ok(()),
            GradVerdict::Missing => Err(Error::GradientMissing),
            GradVerdict::Mismatch {
                autograd,
                finite_difference,
                relative_error,
            } => Err(Error::GradientMismatch {
                autograd,
                finite_difference,
                relative_error,
            }),
        }
    }
}

/// Settings of the gradient self-check; see the module docs for the method.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use perturb::GradientCheck;
/// let model = |x: &Tensor| x.flatten_from(1)?.sqr();
/// let x = Tensor::full(0.5f32, (2, 1, 2, 2), &Device::Cpu)?;
/// assert!(GradientCheck::new().run(&model, &x)?.passed());
/// # Ok::<(), perturb::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GradientCheck {
    directions: usize,
    tolerance: f64,
    seed: u64,
}

impl Default for GradientCheck {
    fn default() -> Self {
        Self::new()
    }
}

impl GradientCheck {
    /// Defaults: 4 directions, tolerance 0.05, seed 0.
    pub fn new() -> Self {
        Self {
            directions: 4,
            tolerance: 0.05,
            seed: 0,
        }
    }

    /// Number of directions (one along `sign(∇L)`, the rest random); default 4, at least 1.
    pub fn directions(mut self, n: usize) -> Self {
        self.directions = n.max(1);
        self
    }

    /// Largest accepted relative error; default 0.05.
    pub fn tolerance(mut self, t: f64) -> Self {
        self.tolerance = t;
        self
    }

    /// Seed of the functional and the random directions; default 0.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Run the check on the batch `x`.
    ///
    /// # Errors
    /// Bad input, a model whose output is not `[N, K]`, or a candle failure other than a missing
    /// backward (which is the verdict [`GradVerdict::Missing`]).
    pub fn run(&self, model: &dyn Classifier, x: &Tensor) -> Result<GradVerdict> {
        check_batch(x, f32::MIN, f32::MAX)?;
        if !(self.tolerance.is_finite() && self.tolerance > 0.0) {
            return Err(Error::InvalidParameter {
                name: "tolerance",
                value: self.tolerance.to_string(),
                reason: "must be positive and finite",
            });
        }
        let mut rng = StdRng::seed_from_u64(self.seed);
        let (n, k) = checked_logits(model, x)?.dims2()?;
        let c: Vec<f32> = (0..n * k).map(|_| rng.sample(StandardNormal)).collect();
        let c = Tensor::from_vec(c, (n, k), x.device())?;
        let grad = match functional_grad(model, x, &c) {
            Ok(Some(g)) => g,
            Ok(None) => return Ok(GradVerdict::Missing),
            Err(Error::Candle(e)) if is_missing_backward(&e) => return Ok(GradVerdict::Missing),
            Err(e) => return Err(e),
        };
        let base = dot(&checked_logits(model, x)?, &c)?;
        let g_l2 = grad
            .to_dtype(DType::F64)?
            .sqr()?
            .sum_all()?
            .sqrt()?
            .to_scalar::<f64>()?;
        let floor = 1e-2 * g_l2 + 1e-12;
        let mut worst = GradVerdict::Passed {
            relative_error: 0.0,
        };
        let mut worst_err = 0.0;
        for i in 0..self.directions {
            let d = if i == 0 {
                grad.sign()?
            } else {
                let signs: Vec<f32> = (0..x.elem_count())
                    .map(|_| if rng.random::<bool>() { 1.0 } else { -1.0 })
                    .collect();
                Tensor::from_vec(signs, x.shape(), x.device())?
            };
            let autograd = dot(&grad, &d)?;
            let mut best: Option<(f64, f64)> = None;
            for fd in differences(model, x, &d, &c, base)? {
                let err = (autograd - fd).abs() / autograd.abs().max(fd.abs()).max(floor);
                if best.is_none_or(|(e, _)| err < e) {
                    best = Some((err, fd));
                }
            }
            let (err, fd) = best.unwrap_or((0.0, autograd));
            if err >= worst_err {
                worst_err = err;
                worst = if err <= self.tolerance {
                    GradVerdict::Passed {
                        relative_error: err,
                    }
                } else {
                    GradVerdict::Mismatch {
                        autograd,
                        finite_difference: fd,
                        relative_error: err,
                    }
                };
            }
        }
        Ok(worst)
    }
}

/// Autograd gradient of `Σ c ⊙ logits(x)` with respect to `x`, `None` when not connected.
fn functional_grad(model: &dyn Classifier, x: &Tensor, c: &Tensor) -> Result<Option<Tensor>> {
    let var = Var::from_tensor(x)?;
    let logits = checked_logits(model, var.as_tensor())?;
    let grads = (logits * c)?.sum_all()?.backward()?;
    Ok(grads.get(var.as_tensor()).cloned())
}

/// Central, forward and backward differences of `L` along `d` at every step size, from one
/// batched forward pass; `base` is `L(x)`.
fn differences(
    model: &dyn Classifier,
    x: &Tensor,
    d: &Tensor,
    c: &Tensor,
    base: f64,
) -> Result<Vec<f64>> {
    let n = x.dim(0)?;
    let mut points = Vec::with_capacity(2 * STEPS.len());
    for h in STEPS {
        points.push((x + d.affine(h, 0.0)?)?);
        points.push((x - d.affine(h, 0.0)?)?);
    }
    let logits = checked_logits(model, &Tensor::cat(&points, 0)?)?;
    let mut out = Vec::with_capacity(3 * STEPS.len());
    for (i, h) in STEPS.iter().enumerate() {
        let up = dot(&logits.narrow(0, 2 * i * n, n)?, c)?;
        let down = dot(&logits.narrow(0, (2 * i + 1) * n, n)?, c)?;
        out.push((up - down) / (2.0 * h));
        out.push((up - base) / h);
        out.push((base - down) / h);
    }
    Ok(out)
}

fn dot(a: &Tensor, b: &Tensor) -> Result<f64> {
    let a = a.to_dtype(DType::F64)?;
    let b = b.to_dtype(DType::F64)?;
    Ok((a * b)?.sum_all()?.to_scalar::<f64>()?)
}
