//! DeepFool: the nearest decision boundary of the model's linearisation, stepped to again and
//! again until the label changes; a minimum-norm attack.

use candle_core::Tensor;

use super::apgd::ranked_targets;
use super::batch::{check_count, check_positive, Batch, CleanLogits};
use super::minimal::{finish_minimal, host_rows, host_tensor, sign, untargeted, with_rows};
use super::rows::take_rows;
use super::{Adversarial, MinimumNorm};
use crate::budget::{Budget, Norm};
use crate::error::{Error, Result};
use crate::goal::Goal;
use crate::loss::Loss;
use crate::model::{predictions, Classifier};

/// Added to `|f|` in every step, as the reference implementation does, so that a step lands
/// past the linearised boundary rather than on it.
pub const DEEPFOOL_LOGIT_OFFSET: f64 = 1e-4;

/// DeepFool (Moosavi-Dezfooli, Fawzi & Frossard, CVPR 2016, arXiv:1511.04599), untargeted, in
/// L2 or L∞.
///
/// - **Step**: at the current point `xᵢ`, for each of the `candidates − 1` classes `k` the clean
///   logits rank highest after the label `y`, `f_k = z_k − z_y` and `w_k = ∇f_k`. The closest
///   boundary of the linearisation is `l = argmin_k |f_k| / ‖w_k‖_*` (the dual norm: L2 for L2,
///   L1 for L∞) and the step that reaches it is `rᵢ = (|f_l| + 10⁻⁴)·w_l/‖w_l‖₂²` (L2) or
///   `(|f_l| + 10⁻⁴)·sign(w_l)/‖w_l‖₁` (L∞). The steps accumulate, `r = Σ rᵢ`, and the next
///   point is `x + (1 + overshoot)·r`, clipped to the pixel box.
/// - **Stop**: per sample, at the first point the model misclassifies (that point is returned),
///   or after `steps` steps (none found: the clean input, norm ∞).
/// - **Not copied from torchattacks**: the overshoot scales the accumulated perturbation from the
///   clean input (as the paper's and Foolbox's code do) rather than each step from a clipped
///   point, and a step always crosses its linearised boundary, so a run does not stop on the
///   boundary without crossing it.
/// - **Distance**: L2 or L∞. Success is misclassification (give labels: an untargeted goal).
/// - **Arguments** (defaults): `steps` 50, `overshoot` 0.02, `candidates` 10 (classes considered,
///   the label included), `check_gradient` true.
/// - **Costs**: per step and sample still correct, `candidates − 1` gradients of a logit
///   difference; one forward pass per sample at the end.
///
/// On a linear model the first step lands on the nearest decision boundary exactly (times
/// `1 + overshoot`), so DeepFool's distance is the analytic one there.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use perturb::attack::{DeepFool, MinimumNorm};
/// use perturb::{Goal, Norm};
/// // logits = the two pixels: class 1 leads by 0.4; the boundary is 0.4/√2 away in L2
/// let model = |x: &Tensor| x.flatten_from(1);
/// let x = Tensor::new(&[[[[0.2f32, 0.6]]]], &Device::Cpu)?;
/// let y = Tensor::new(&[1u32], &Device::Cpu)?;
/// let adv = DeepFool::new(Norm::L2).overshoot(1e-3).minimize(&model, &x, &Goal::untargeted(&y))?;
/// assert_eq!(adv.success, [true]);
/// assert!((adv.norms[0] - 0.4 / 2f32.sqrt()).abs() < 1e-3);
/// # Ok::<(), perturb::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DeepFool {
    norm: Norm,
    #[serde(flatten)]
    params: DeepFoolParams,
}

/// DeepFool's parameters apart from the norm.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct DeepFoolParams {
    pub steps: usize,
    pub overshoot: f32,
    pub candidates: usize,
    pub check_gradient: bool,
}

impl Default for DeepFoolParams {
    fn default() -> Self {
        Self {
            steps: 50,
            overshoot: 0.02,
            candidates: 10,
            check_gradient: true,
        }
    }
}

impl DeepFool {
    /// DeepFool in `norm` (L2 or L∞) with the defaults above.
    pub fn new(norm: Norm) -> Self {
        Self {
            norm,
            params: DeepFoolParams::default(),
        }
    }

    pub(crate) fn with_params(norm: Norm, params: DeepFoolParams) -> Self {
        Self { norm, params }
    }

    /// Most steps per sample, ≥ 1; default 50.
    pub fn steps(mut self, steps: usize) -> Self {
        self.params.steps = steps;
        self
    }

    /// Factor by which the accumulated perturbation overshoots its boundary, > 0; default 0.02.
    pub fn overshoot(mut self, overshoot: f32) -> Self {
        self.params.overshoot = overshoot;
        self
    }

    /// Classes considered per sample, the label included, ≥ 2; default 10 (every class of a
    /// 10-class model).
    pub fn candidates(mut self, candidates: usize) -> Self {
        self.params.candidates = candidates;
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
    /// [`Error::InvalidParameter`] for zero steps, an overshoot that is not positive and finite,
    /// fewer than 2 candidates, an L1 norm.
    pub fn build(self) -> Result<Self> {
        self.check()?;
        Ok(self)
    }

    fn check(&self) -> Result<()> {
        let p = &self.params;
        check_count("steps", p.steps)?;
        check_positive("overshoot", p.overshoot)?;
        if p.candidates < 2 {
            return Err(Error::InvalidParameter {
                name: "candidates",
                value: p.candidates.to_string(),
                reason: "must be at least 2 (the label and one other class)",
            });
        }
        if self.norm == Norm::L1 {
            return Err(Error::InvalidParameter {
                name: "norm",
                value: "l1".into(),
                reason: "deepfool supports linf and l2",
            });
        }
        Ok(())
    }

    /// The step to the closest linearised boundary among `(f_k, w_k)`, or `None` when every
    /// gradient vanishes.
    fn step(&self, fs: &[f64], ws: &[Vec<f64>]) -> Option<Vec<f64>> {
        let dual = |w: &[f64]| -> f64 {
            match self.norm {
                Norm::Linf => w.iter().map(|v| v.abs()).sum(),
                _ => w.iter().map(|v| v * v).sum::<f64>().sqrt(),
            }
        };
        let (mut best, mut best_dist) = (None, f64::INFINITY);
        for (k, (f, w)) in fs.iter().zip(ws).enumerate() {
            let size = dual(w);
            if size > 0.0 && size.is_finite() && f.is_finite() {
                let dist = f.abs() / size;
                if dist < best_dist {
                    (best, best_dist) = (Some((k, size)), dist);
                }
            }
        }
        let (l, size) = best?;
        let reach = fs[l].abs() + DEEPFOOL_LOGIT_OFFSET;
        Some(match self.norm {
            Norm::Linf => ws[l].iter().map(|v| reach / size * sign(*v)).collect(),
            _ => ws[l].iter().map(|v| reach / (size * size) * v).collect(),
        })
    }
}

impl MinimumNorm for DeepFool {
    fn name(&self) -> &'static str {
        "deepfool"
    }

    fn norm(&self) -> Norm {
        self.norm
    }

    fn params(&self) -> serde_json::Value {
        serde_json::to_value(&self.params).unwrap_or_default()
    }

    fn minimize(&self, model: &dyn Classifier, x: &Tensor, goal: &Goal) -> Result<Adversarial> {
        self.check()?;
        let p = &self.params;
        let measure = Budget::new(self.norm, 1.0)?;
        let mut batch = Batch::prepare(
            model,
            x,
            goal,
            &measure,
            Loss::CrossEntropy,
            p.check_gradient.into(),
            CleanLogits::Compute,
        )?;
        let labels = untargeted(&batch)?;
        let dims = x.dims().to_vec();
        let n = dims[0];
        let d = x.elem_count() / n.max(1);
        let (lo, hi) = measure.bounds();
        let (lo, hi) = (f64::from(lo), f64::from(hi));
        let dev = x.device().clone();
        let clean_logits = batch
            .clean_logits()
            .cloned()
            .ok_or(Error::GradientMissing)?;
        let clean_pred = predictions(&clean_logits)?;
        let ranked = ranked_targets(&clean_logits, labels.classes(), p.candidates - 1)?;
        let x0 = host_rows(x)?;
        let mut cur: Vec<f64> = x0.iter().map(|v| f64::from(*v)).collect();
        let mut r_tot = vec![0f64; n * d];
        let mut found: Vec<bool> = (0..n).map(|i| labels.reached(i, clean_pred[i])).collect();
        // rows still correctly classified at `cur`, whose gradients are still finite
        let mut active: Vec<u32> = (0..n as u32).filter(|&i| !found[i as usize]).collect();
        let label_t = labels.tensor().clone();
        for step in 0..=p.steps {
            if active.is_empty() {
                break;
            }
            let rows_of = |v: &[f64], rows: &[u32]| -> Vec<f64> {
                rows.iter()
                    .flat_map(|&i| v[i as usize * d..(i as usize + 1) * d].iter().copied())
                    .collect()
            };
            if step == p.steps {
                // the last point's verdict
                let judge = labels.select(&active, &Tensor::new(active.as_slice(), &dev)?)?;
                let t = host_tensor(
                    &rows_of(&cur, &active),
                    &with_rows(&dims, active.len()),
                    &dev,
                )?;
                let pred = predictions(&batch.logits(model, &t, &judge)?)?;
                for (j, &i) in active.iter().enumerate() {
                    found[i as usize] = judge.reached(j, pred[j]);
                }
                break;
            }
            // f_k and w_k for every candidate rank; the first pass also judges the point
            let mut fs: Vec<Vec<f64>> = Vec::new();
            let mut ws: Vec<Vec<Vec<f64>>> = Vec::new();
            for (rank, targets) in ranked.iter().enumerate() {
                let m = active.len();
                if m == 0 {
                    break;
                }
                let idx = Tensor::new(active.as_slice(), &dev)?;
                let plus_classes: Vec<u32> = active.iter().map(|&i| targets[i as usize]).collect();
                let plus = Goal::targeted(&Tensor::new(plus_classes.as_slice(), &dev)?)
                    .resolve(m, &dev)?;
                let minus = take_rows(&label_t, &active)?;
                let t = host_tensor(&rows_of(&cur, &active), &with_rows(&dims, m), &dev)?;
                let lg = batch.logit_difference_and_grad(model, &t, &plus, &minus)?;
                let f = host_rows(&lg.loss)?;
                let g = host_rows(&lg.grad)?;
                let mut keep = vec![true; m];
                if rank == 0 {
                    let judge = labels.select(&active, &idx)?;
                    let pred = predictions(&lg.logits)?;
                    for (j, &i) in active.iter().enumerate() {
                        if judge.reached(j, pred[j]) {
                            found[i as usize] = true;
                            keep[j] = false;
                        }
                    }
                    fs = vec![Vec::new(); m];
                    ws = vec![Vec::new(); m];
                }
                for j in 0..m {
                    fs[j].push(f64::from(f[j]));
                    ws[j].push(
                        g[j * d..(j + 1) * d]
                            .iter()
                            .map(|v| f64::from(*v))
                            .collect(),
                    );
                }
                if rank == 0 {
                    let kept: Vec<usize> = (0..m).filter(|&j| keep[j]).collect();
                    active = kept.iter().map(|&j| active[j]).collect();
                    fs = kept.iter().map(|&j| std::mem::take(&mut fs[j])).collect();
                    ws = kept.iter().map(|&j| std::mem::take(&mut ws[j])).collect();
                }
            }
            let scale = 1.0 + f64::from(p.overshoot);
            let mut stuck = Vec::new();
            for (j, &i) in active.iter().enumerate() {
                let i = i as usize;
                let Some(r) = self.step(&fs[j], &ws[j]) else {
                    stuck.push(i);
                    continue;
                };
                for k in 0..d {
                    r_tot[i * d + k] += r[k];
                    let v = (f64::from(x0[i * d + k]) + scale * r_tot[i * d + k]).clamp(lo, hi);
                    // the point as the model sees it
                    cur[i * d + k] = f64::from(v as f32);
                }
            }
            active.retain(|&i| !stuck.contains(&(i as usize)));
        }
        let best_x: Vec<f32> = cur.iter().map(|v| *v as f32).collect();
        finish_minimal(batch, model, self.norm, best_x, &found)
    }
}
