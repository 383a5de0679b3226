//! DDN: decoupled direction and norm, a fast minimum-norm L2 attack.

use candle_core::Tensor;

use super::batch::{check_count, check_fraction, check_positive, Batch, CleanLogits};
use super::minimal::{finish_minimal, host_rows, host_tensor};
use super::{Adversarial, MinimumNorm};
use crate::budget::{Budget, Norm};
use crate::error::{Error, Result};
use crate::goal::Goal;
use crate::loss::Loss;
use crate::model::{predictions, Classifier};

/// Decoupled Direction and Norm (Rony et al., CVPR 2019, arXiv:1811.09600), L2, untargeted or
/// targeted: the direction follows the loss, the norm is adjusted on its own.
///
/// - **Step** `k` (of `steps`): at `x + δ`, `g = ∇ CE` (the objective the goal ascends); if the
///   point reaches the goal and `‖δ‖₂` is the smallest so far, it is kept. Then
///   `δ ← δ + α_k·g/‖g‖₂`, the norm `ε ← ε·(1 − γ)` if the point was adversarial and `ε·(1 + γ)`
///   otherwise (at most the largest distance the box allows), `δ ← ε·δ/‖δ‖₂`, clipped so that
///   `x + δ` lies in the box. `α_k` falls from `alpha` to `alpha_min` on a cosine schedule,
///   `α_k = α_min + (α − α_min)(1 + cos(πk/steps))/2`, and `ε` starts at `init_norm`.
/// - **Zero gradient**: the reference draws a random direction; this version leaves `δ`'s
///   direction as it is (deterministic, no seed), so a sample whose gradient vanishes at the clean
///   input is not found.
/// - **Distance**: L2. Success is the goal (misclassification, or the target class).
/// - **Arguments** (defaults, the paper's): `steps` 100, `gamma` 0.05, `init_norm` 1, `alpha` 1,
///   `alpha_min` 0.01, `check_gradient` true.
/// - **Costs**: one gradient per step and sample; one forward pass per sample at the end.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use perturb::attack::{Ddn, MinimumNorm};
/// use perturb::Goal;
/// // logits = the two pixels: class 1 leads by 0.4; the boundary is 0.4/√2 ≈ 0.283 away
/// let model = |x: &Tensor| x.flatten_from(1);
/// let x = Tensor::new(&[[[[0.2f32, 0.6]]]], &Device::Cpu)?;
/// let y = Tensor::new(&[1u32], &Device::Cpu)?;
/// let adv = Ddn::new().minimize(&model, &x, &Goal::untargeted(&y))?;
/// assert_eq!(adv.success, [true]);
/// assert!(adv.norms[0] < 0.3);
/// # Ok::<(), perturb::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Ddn {
    #[serde(flatten)]
    params: DdnParams,
}

/// DDN's parameters.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct DdnParams {
    pub steps: usize,
    pub gamma: f32,
    pub init_norm: f32,
    pub alpha: f32,
    pub alpha_min: f32,
    pub check_gradient: bool,
}

impl Default for DdnParams {
    fn default() -> Self {
        Self {
            steps: 100,
            gamma: 0.05,
            init_norm: 1.0,
            alpha: 1.0,
            alpha_min: 0.01,
            check_gradient: true,
        }
    }
}

impl Default for Ddn {
    fn default() -> Self {
        Self::new()
    }
}

impl Ddn {
    /// DDN with the defaults above.
    pub fn new() -> Self {
        Self {
            params: DdnParams::default(),
        }
    }

    pub(crate) fn with_params(params: DdnParams) -> Self {
        Self { params }
    }

    /// Steps, ≥ 1; default 100.
    pub fn steps(mut self, steps: usize) -> Self {
        self.params.steps = steps;
        self
    }

    /// Factor γ ∈ (0, 1) by which the norm shrinks or grows each step; default 0.05.
    pub fn gamma(mut self, gamma: f32) -> Self {
        self.params.gamma = gamma;
        self
    }

    /// The first norm ε, > 0; default 1.
    pub fn init_norm(mut self, norm: f32) -> Self {
        self.params.init_norm = norm;
        self
    }

    /// Run the gradient self-check first; default `true`.
    pub fn check_gradient(mut self, on: bool) -> Self {
        self.params.check_gradient = on;
        self
    }

    /// The attack with its parameters checked.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] for zero steps, `gamma` outside `(0, 1)`, `init_norm`,
    /// `alpha` or `alpha_min` not positive and finite, `alpha_min` above `alpha`.
    pub fn build(self) -> Result<Self> {
        self.check()?;
        Ok(self)
    }

    fn check(&self) -> Result<()> {
        let p = &self.params;
        check_count("steps", p.steps)?;
        check_fraction("gamma", p.gamma)?;
        if p.gamma >= 1.0 {
            return Err(Error::InvalidParameter {
                name: "gamma",
                value: p.gamma.to_string(),
                reason: "must lie in (0, 1)",
            });
        }
        check_positive("init_norm", p.init_norm)?;
        check_positive("alpha", p.alpha)?;
        check_positive("alpha_min", p.alpha_min)?;
        if p.alpha_min > p.alpha {
            return Err(Error::InvalidParameter {
                name: "alpha_min",
                value: p.alpha_min.to_string(),
                reason: "must not exceed alpha",
            });
        }
        Ok(())
    }
}

fn l2(v: &[f64]) -> f64 {
    v.iter().map(|a| a * a).sum::<f64>().sqrt()
}

impl MinimumNorm for Ddn {
    fn name(&self) -> &'static str {
        "ddn"
    }

    fn norm(&self) -> Norm {
        Norm::L2
    }

    fn params(&self) -> serde_json::Value {
        serde_json::to_value(&self.params).unwrap_or_default()
    }

    fn minimize(&self, model: &dyn Classifier, x: &Tensor, goal: &Goal) -> Result<Adversarial> {
        self.check()?;
        let p = &self.params;
        let measure = Budget::l2(1.0)?;
        let loss = Loss::CrossEntropy;
        let mut batch = Batch::prepare(
            model,
            x,
            goal,
            &measure,
            loss,
            p.check_gradient.into(),
            CleanLogits::Skip,
        )?;
        let dims = x.dims().to_vec();
        let n = dims[0];
        let d = x.elem_count() / n.max(1);
        let (lo, hi) = measure.bounds();
        let (lo, hi) = (f64::from(lo), f64::from(hi));
        let dev = x.device().clone();
        let x0: Vec<f64> = host_rows(x)?.into_iter().map(f64::from).collect();
        // the largest distance the box allows, per sample
        let worst: Vec<f64> = (0..n)
            .map(|i| {
                let far: Vec<f64> = x0[i * d..(i + 1) * d]
                    .iter()
                    .map(|v| (v - lo).max(hi - v))
                    .collect();
                l2(&far)
            })
            .collect();
        let mut delta = vec![0f64; n * d];
        let mut eps = vec![f64::from(p.init_norm); n];
        let mut best = vec![f64::INFINITY; n];
        let mut best_x: Vec<f32> = x0.iter().map(|v| *v as f32).collect();
        let (a_max, a_min) = (f64::from(p.alpha), f64::from(p.alpha_min));
        let gamma = f64::from(p.gamma);
        for k in 0..p.steps {
            let cos = (std::f64::consts::PI * k as f64 / p.steps as f64).cos();
            let alpha = a_min + (a_max - a_min) * (1.0 + cos) / 2.0;
            // the point as the model sees it
            let cur: Vec<f64> = (0..n * d)
                .map(|j| f64::from((x0[j] + delta[j]) as f32))
                .collect();
            let t = host_tensor(&cur, &dims, &dev)?;
            let lg = batch.loss_and_grad(model, &t, loss)?;
            let grad = host_rows(&lg.grad)?;
            let pred = predictions(&lg.logits)?;
            for i in 0..n {
                let row = i * d..(i + 1) * d;
                let adversarial = batch.goal().reached(i, pred[i]);
                if adversarial {
                    let moved: Vec<f64> = row.clone().map(|j| cur[j] - x0[j]).collect();
                    let dist = l2(&moved);
                    if dist < best[i] {
                        best[i] = dist;
                        for j in row.clone() {
                            best_x[j] = cur[j] as f32;
                        }
                    }
                }
                let g: Vec<f64> = grad[row.clone()].iter().map(|v| f64::from(*v)).collect();
                let g_norm = l2(&g);
                if g_norm > 0.0 && g_norm.is_finite() {
                    for (j, gj) in row.clone().zip(&g) {
                        delta[j] += alpha * gj / g_norm;
                    }
                }
                eps[i] *= if adversarial {
                    1.0 - gamma
                } else {
                    1.0 + gamma
                };
                eps[i] = eps[i].min(worst[i]);
                let size = l2(&delta[row.clone()]);
                if size > 0.0 {
                    for j in row {
                        delta[j] = (x0[j] + delta[j] * eps[i] / size).clamp(lo, hi) - x0[j];
                    }
                }
            }
        }
        let found: Vec<bool> = best.iter().map(|b| b.is_finite()).collect();
        finish_minimal(batch, model, Norm::L2, best_x, &found)
    }
}
