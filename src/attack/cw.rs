//! Carlini–Wagner L2: the smallest perturbation that wins the logit margin, found by Adam on a
//! change of variables that keeps every point in the pixel box; a minimum-norm attack.

use candle_core::Tensor;

use super::batch::{check_count, check_positive, Batch, CleanLogits};
use super::minimal::{finish_minimal, host_rows, host_tensor, with_rows};
use super::{Adversarial, MinimumNorm};
use crate::budget::{Budget, Norm};
use crate::error::Result;
use crate::goal::Goal;
use crate::loss::Loss;
use crate::model::{predictions, Classifier};

/// Upper end of the search over `c` that means "no adversarial example found yet".
const C_UNBOUNDED: f64 = 1e10;

/// Carlini & Wagner's L2 attack (IEEE S&P 2017, arXiv:1608.04644), untargeted or targeted.
///
/// - **Objective**: minimise `‖x' − x‖₂² + c·f(x')` with `f = max(z_y − max_{k≠y} z_k, −κ)`
///   (targeted: `max(max_{k≠t} z_k − z_t, −κ)`), by `steps` Adam steps (rate `lr`) on `w`.
/// - **Change of variables**: each pixel is `x'ᵢ = xᵢ + (hi − xᵢ)·tanh(wᵢ)` for `wᵢ ≥ 0` and
///   `xᵢ + (xᵢ − lo)·tanh(wᵢ)` below, so every `x'` lies in the box `[lo, hi]`, `w = 0` is the clean
///   input, and a pixel at exactly 0 or 1 moves inward at full speed. The paper's
///   `x' = (tanh(w) + 1)/2` cannot start at such a pixel (its `w` is ±∞, where the gradient is 0:
///   torchattacks' pixels at 0 or 1 never move) and starts near it only with a vanishing gradient.
/// - **Search over c**: `binary_steps` rounds from `c`; after a round that found an adversarial
///   example `c` halves toward the largest failing value, after one that did not it grows ten
///   times until one succeeds, then bisects. Per sample the smallest adversarial `x'` of any
///   round is kept (for `κ > 0`, one that wins the margin by at least `κ`).
/// - **Early abort** (`abort_early`): a round stops for a sample whose objective has not fallen
///   by 10⁻⁴ of itself over the last tenth of the steps.
/// - **Arguments** (defaults, as Carlini's and Foolbox's code): `steps` 1000, `binary_steps` 9,
///   `c` 10⁻³, `lr` 0.01, `kappa` 0, `abort_early` true, `check_gradient` true.
/// - **Costs**: one gradient per step, round and sample still running; one forward pass per sample
///   at the end.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use perturb::attack::{CarliniWagner, MinimumNorm};
/// use perturb::Goal;
/// // logits = the two pixels: class 1 leads by 0.4; the boundary is 0.4/√2 ≈ 0.283 away
/// let model = |x: &Tensor| x.flatten_from(1);
/// let x = Tensor::new(&[[[[0.2f32, 0.6]]]], &Device::Cpu)?;
/// let y = Tensor::new(&[1u32], &Device::Cpu)?;
/// let cw = CarliniWagner::new().c(1.0).steps(300).binary_steps(4);
/// let adv = cw.minimize(&model, &x, &Goal::untargeted(&y))?;
/// assert_eq!(adv.success, [true]);
/// assert!(adv.norms[0] < 0.3);
/// # Ok::<(), perturb::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CarliniWagner {
    #[serde(flatten)]
    params: CwParams,
}

/// Carlini–Wagner's parameters.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct CwParams {
    pub steps: usize,
    pub binary_steps: usize,
    pub c: f32,
    pub lr: f32,
    pub kappa: f32,
    pub abort_early: bool,
    pub check_gradient: bool,
}

impl Default for CwParams {
    fn default() -> Self {
        Self {
            steps: 1000,
            binary_steps: 9,
            c: 1e-3,
            lr: 0.01,
            kappa: 0.0,
            abort_early: true,
            check_gradient: true,
        }
    }
}

impl Default for CarliniWagner {
    fn default() -> Self {
        Self::new()
    }
}

impl CarliniWagner {
    /// CW-L2 with the defaults above.
    pub fn new() -> Self {
        Self {
            params: CwParams::default(),
        }
    }

    pub(crate) fn with_params(params: CwParams) -> Self {
        Self { params }
    }

    /// Adam steps per round of the search over `c`, ≥ 1; default 1000.
    pub fn steps(mut self, steps: usize) -> Self {
        self.params.steps = steps;
        self
    }

    /// Rounds of the search over `c`, ≥ 1; default 9.
    pub fn binary_steps(mut self, rounds: usize) -> Self {
        self.params.binary_steps = rounds;
        self
    }

    /// The first round's trade-off constant `c`, > 0; default 10⁻³.
    pub fn c(mut self, c: f32) -> Self {
        self.params.c = c;
        self
    }

    /// Adam's learning rate, > 0; default 0.01.
    pub fn lr(mut self, lr: f32) -> Self {
        self.params.lr = lr;
        self
    }

    /// Confidence κ ≥ 0: the margin by which the adversarial class must win; default 0.
    pub fn kappa(mut self, kappa: f32) -> Self {
        self.params.kappa = kappa;
        self
    }

    /// Stop a round early for samples whose objective has stalled; default `true`.
    pub fn abort_early(mut self, on: bool) -> Self {
        self.params.abort_early = on;
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
    /// [`Error::InvalidParameter`] for zero steps or rounds, `c` or `lr` not positive and finite,
    /// `kappa` negative or not finite.
    pub fn build(self) -> Result<Self> {
        self.check()?;
        Ok(self)
    }

    fn check(&self) -> Result<()> {
        let p = &self.params;
        check_count("steps", p.steps)?;
        check_count("binary_steps", p.binary_steps)?;
        check_positive("c", p.c)?;
        check_positive("lr", p.lr)?;
        Loss::cw(p.kappa)?;
        Ok(())
    }
}

/// Adam's state for one coordinate vector.
struct Adam {
    m: Vec<f64>,
    v: Vec<f64>,
    t: i32,
}

impl Adam {
    const B1: f64 = 0.9;
    const B2: f64 = 0.999;
    const EPS: f64 = 1e-8;

    fn new(len: usize) -> Self {
        Self {
            m: vec![0.0; len],
            v: vec![0.0; len],
            t: 0,
        }
    }

    /// One descent step of `w` along the gradient `g`.
    fn step(&mut self, w: &mut [f64], g: &[f64], lr: f64) {
        self.t += 1;
        let (c1, c2) = (1.0 - Self::B1.powi(self.t), 1.0 - Self::B2.powi(self.t));
        for k in 0..w.len() {
            self.m[k] = Self::B1 * self.m[k] + (1.0 - Self::B1) * g[k];
            self.v[k] = Self::B2 * self.v[k] + (1.0 - Self::B2) * g[k] * g[k];
            w[k] -= lr * (self.m[k] / c1) / ((self.v[k] / c2).sqrt() + Self::EPS);
        }
    }
}

/// The pixel `x'` for `w` around the clean pixel `x` in the box `[lo, hi]`, and `dx'/dw` (at
/// `w = 0` the derivative on the side the descent direction `-dl` points to).
fn to_box(x: f64, w: f64, lo: f64, hi: f64, dl: f64) -> (f64, f64) {
    let t = w.tanh();
    let up = w > 0.0 || (w == 0.0 && dl < 0.0);
    let span = if up { hi - x } else { x - lo };
    ((x + span * t).clamp(lo, hi), span * (1.0 - t * t))
}

impl MinimumNorm for CarliniWagner {
    fn name(&self) -> &'static str {
        "cw"
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
        let kappa = f64::from(p.kappa);
        let loss = Loss::cw(p.kappa)?;
        let measure = Budget::l2(1.0)?;
        let mut batch = Batch::prepare(
            model,
            x,
            goal,
            &measure,
            loss,
            p.check_gradient.into(),
            CleanLogits::Skip,
        )?;
        let goal_all = batch.goal().clone();
        let dims = x.dims().to_vec();
        let n = dims[0];
        let d = x.elem_count() / n.max(1);
        let (lo, hi) = measure.bounds();
        let (lo, hi) = (f64::from(lo), f64::from(hi));
        let dev = x.device().clone();
        let x0: Vec<f64> = host_rows(x)?.into_iter().map(f64::from).collect();
        let mut c = vec![f64::from(p.c); n];
        let (mut lower, mut upper) = (vec![0f64; n], vec![C_UNBOUNDED; n]);
        let mut best = vec![f64::INFINITY; n];
        let mut best_x: Vec<f32> = x0.iter().map(|v| *v as f32).collect();
        let check_every = (p.steps / 10).max(1);
        for _round in 0..p.binary_steps {
            let mut w = vec![0f64; n * d];
            let mut adam: Vec<Adam> = (0..n).map(|_| Adam::new(d)).collect();
            let mut prev = vec![f64::INFINITY; n];
            let mut succeeded = vec![false; n];
            let mut active: Vec<u32> = (0..n as u32).collect();
            for step in 0..p.steps {
                if active.is_empty() {
                    break;
                }
                let m = active.len();
                let mut cur = Vec::with_capacity(m * d);
                for &i in &active {
                    let i = i as usize;
                    for k in 0..d {
                        let j = i * d + k;
                        cur.push(to_box(x0[j], w[j], lo, hi, 0.0).0);
                    }
                }
                let idx = Tensor::new(active.as_slice(), &dev)?;
                let rows_goal = goal_all.select(&active, &idx)?;
                let t = host_tensor(&cur, &with_rows(&dims, m), &dev)?;
                let lg = batch.loss_and_grad_for(model, &t, &rows_goal, loss)?;
                let objective = host_rows(&lg.loss)?;
                let grad = host_rows(&lg.grad)?;
                let pred = predictions(&lg.logits)?;
                let mut stop = vec![false; m];
                for (j, &i) in active.iter().enumerate() {
                    let i = i as usize;
                    let row = &cur[j * d..(j + 1) * d];
                    // the point as the model saw it, measured in f64
                    let l2sq: f64 = (0..d)
                        .map(|k| {
                            let diff = f64::from(row[k] as f32) - x0[i * d + k];
                            diff * diff
                        })
                        .sum();
                    let obj = f64::from(objective[j]);
                    let adversarial =
                        rows_goal.reached(j, pred[j]) && (kappa == 0.0 || obj >= kappa);
                    if adversarial {
                        succeeded[i] = true;
                        if l2sq.sqrt() < best[i] {
                            best[i] = l2sq.sqrt();
                            for k in 0..d {
                                best_x[i * d + k] = row[k] as f32;
                            }
                        }
                    }
                    // f = −objective: the total CW loss and its gradient in w
                    let total = l2sq - c[i] * obj;
                    let mut gw = vec![0f64; d];
                    for k in 0..d {
                        let jk = i * d + k;
                        let dx = 2.0 * (row[k] - x0[jk]) - c[i] * f64::from(grad[j * d + k]);
                        gw[k] = dx * to_box(x0[jk], w[jk], lo, hi, dx).1;
                    }
                    adam[i].step(&mut w[i * d..(i + 1) * d], &gw, f64::from(p.lr));
                    if p.abort_early && (step + 1) % check_every == 0 {
                        if total > prev[i] * 0.9999 {
                            stop[j] = true;
                        }
                        prev[i] = total;
                    }
                }
                active = (0..m).filter(|&j| !stop[j]).map(|j| active[j]).collect();
            }
            for i in 0..n {
                if succeeded[i] {
                    upper[i] = upper[i].min(c[i]);
                    c[i] = 0.5 * (lower[i] + upper[i]);
                } else {
                    lower[i] = lower[i].max(c[i]);
                    c[i] = if upper[i] < C_UNBOUNDED {
                        0.5 * (lower[i] + upper[i])
                    } else {
                        c[i] * 10.0
                    };
                }
            }
        }
        let found: Vec<bool> = best.iter().map(|b| b.is_finite()).collect();
        finish_minimal(batch, model, Norm::L2, best_x, &found)
    }
}
