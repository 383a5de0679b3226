//! FAB-T: the targeted Fast Adaptive Boundary attack, a minimum-norm attack.

use candle_core::{DType, Tensor};

use super::apgd::ranked_targets;
use super::batch::{check_count, check_fraction, Batch, CleanLogits};
use super::minimal::{finish_minimal, host_tensor, sign};
use super::rows::take_rows;
use super::{Adversarial, MinimumNorm};
use crate::budget::{Budget, Norm};
use crate::error::{Error, Result};
use crate::goal::Goal;
use crate::loss::Loss;
use crate::model::{predictions, Classifier};

/// Targeted FAB (Croce & Hein, ICML 2020, arXiv:1907.02044), as AutoAttack's standard version
/// runs it: for each of the `targets` classes the clean logits rank highest after the label, it
/// walks toward the decision boundary between the label and that class, each step projecting
/// onto the boundary's linearisation, and keeps per sample the closest misclassified point.
///
/// - **Step**: `f = z_y − z_t`, `g = ∇f` at `x⁽ᵏ⁾`; `δ₁` and `δ₂` are the smallest steps (in the
///   norm, within the pixel box) that put `x⁽ᵏ⁾` and the clean `x` on the hyperplane
///   `f + g·(z − x⁽ᵏ⁾) = 0` ([`Fab::hyperplane_step`]); with `α = min(‖δ₁‖/(‖δ₁‖ + ‖δ₂‖),
///   alpha_max)`, `x⁽ᵏ⁺¹⁾ = (1 − α)(x⁽ᵏ⁾ + η·δ₁) + α(x + η·δ₂)`, clipped to the box. A
///   misclassified `x⁽ᵏ⁺¹⁾` is kept if it is the closest so far and pulled back to `x + β(x⁽ᵏ⁺¹⁾
///   − x)`.
/// - **Distance**: L∞ or L2. Success is misclassification (give labels: an untargeted goal).
/// - **Final search**: the reference stops at the closest iterate, which on a linear model stays
///   about `(η − 1)(1 − β)` (0.5 %) beyond the boundary; a bisection of `search_steps`
///   forward passes on the segment from `x` to that point then finds the boundary along it (as
///   Foolbox's minimisation attacks end). 0 turns it off.
/// - **Arguments** (defaults): `steps` 100, `targets` 9, `alpha_max` 0.1, `eta` 1.05, `beta`
///   0.9, `search_steps` 10, `check_gradient` true.
/// - **Costs**: per step and sample one gradient of `f` and one forward pass; `search_steps`
///   forward passes per sample found.
///
/// Run at a fixed ε through [`AtEps`](super::AtEps) (the registry's `fab-t` does): success there
/// is an adversarial point within ε.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use perturb::attack::{Fab, MinimumNorm};
/// use perturb::{Goal, Norm};
/// // logits = the three pixels: class 2 leads by 0.2 over class 0
/// let model = |x: &Tensor| x.flatten_from(1);
/// let x = Tensor::new(&[[[[0.5f32, 0.2, 0.7]]]], &Device::Cpu)?;
/// let y = Tensor::new(&[2u32], &Device::Cpu)?;
/// let adv = Fab::new(Norm::Linf).steps(20).minimize(&model, &x, &Goal::untargeted(&y))?;
/// assert_eq!(adv.success, [true]);
/// assert!((adv.norms[0] - 0.1).abs() < 1e-3); // meet in the middle: 0.6 and 0.6
/// # Ok::<(), perturb::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Fab {
    norm: Norm,
    #[serde(flatten)]
    params: FabParams,
}

/// FAB's parameters apart from the norm.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct FabParams {
    pub steps: usize,
    pub targets: usize,
    pub alpha_max: f32,
    pub eta: f32,
    pub beta: f32,
    pub search_steps: usize,
    pub check_gradient: bool,
}

impl Default for FabParams {
    fn default() -> Self {
        Self {
            steps: 100,
            targets: 9,
            alpha_max: 0.1,
            eta: 1.05,
            beta: 0.9,
            search_steps: 10,
            check_gradient: true,
        }
    }
}

impl Fab {
    /// FAB-T in `norm` (L∞ or L2) with the defaults above.
    pub fn new(norm: Norm) -> Self {
        Self {
            norm,
            params: FabParams::default(),
        }
    }

    pub(crate) fn with_params(norm: Norm, params: FabParams) -> Self {
        Self { norm, params }
    }

    /// Steps per target, ≥ 1; default 100.
    pub fn steps(mut self, steps: usize) -> Self {
        self.params.steps = steps;
        self
    }

    /// Target classes, ≥ 1; default 9 (fewer when the model has fewer other classes).
    pub fn targets(mut self, targets: usize) -> Self {
        self.params.targets = targets;
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
    /// [`Error::InvalidParameter`] for zero steps or targets, `alpha_max` or `beta` outside
    /// `(0, 1]`, `eta` below 1, an L1 norm.
    pub fn build(self) -> Result<Self> {
        self.check()?;
        Ok(self)
    }

    fn check(&self) -> Result<()> {
        let p = &self.params;
        let bad = |name, value: String, reason| {
            Err(Error::InvalidParameter {
                name,
                value,
                reason,
            })
        };
        check_count("steps", p.steps)?;
        check_count("targets", p.targets)?;
        check_fraction("alpha_max", p.alpha_max)?;
        check_fraction("beta", p.beta)?;
        if !(p.eta.is_finite() && p.eta >= 1.0) {
            return bad(
                "eta",
                p.eta.to_string(),
                "must be at least 1 (the overshoot)",
            );
        }
        if self.norm == Norm::L1 {
            return bad("norm", "l1".into(), "fab-t supports linf and l2");
        }
        Ok(())
    }

    /// The smallest step `δ` in `norm` with `g·δ = r` and `a ≤ δ ≤ b` (the box around the point,
    /// `a ≤ 0 ≤ b`), in `f64`; where the box makes `r` unreachable, the step that gets closest.
    ///
    /// L∞: every coordinate moves by `min(t, room)` toward the sign of `g·r`, with the smallest
    /// `t` that reaches `r` (exact, from the sorted rooms). L2: `δ = clip(λ·g, a, b)` with the
    /// `λ` that reaches `r` (bisection, 2⁻⁶⁰ of the bracket).
    ///
    /// ```
    /// use perturb::attack::Fab;
    /// use perturb::Norm;
    /// let (a, b) = ([-1.0; 2], [1.0; 2]);
    /// assert_eq!(Fab::hyperplane_step(Norm::Linf, &[1.0, 3.0], 2.0, &a, &b), [0.5, 0.5]);
    /// let d = Fab::hyperplane_step(Norm::L2, &[3.0, 4.0], 5.0, &a, &b);
    /// assert!((d[0] - 0.6).abs() < 1e-9 && (d[1] - 0.8).abs() < 1e-9);
    /// // the box stops the second coordinate at 0.5: the first makes up the rest
    /// assert_eq!(Fab::hyperplane_step(Norm::Linf, &[1.0, 1.0], 1.5, &a, &[2.0, 0.5]), [1.0, 0.5]);
    /// ```
    pub fn hyperplane_step(norm: Norm, g: &[f64], r: f64, a: &[f64], b: &[f64]) -> Vec<f64> {
        let d = g.len();
        if r == 0.0 || !r.is_finite() {
            return vec![0.0; d];
        }
        let s = r.signum();
        // per coordinate: the direction that raises s·g·δ, and the room the box leaves that way
        let dir: Vec<f64> = g.iter().map(|gi| sign(gi * s)).collect();
        let room: Vec<f64> = (0..d)
            .map(|i| match dir[i] {
                x if x > 0.0 => b[i].max(0.0),
                x if x < 0.0 => (-a[i]).max(0.0),
                _ => 0.0,
            })
            .collect();
        let target = r.abs();
        match norm {
            Norm::Linf => {
                // h(t) = Σ |g_i| min(t, room_i), increasing piecewise linear
                let mut order: Vec<usize> = (0..d).filter(|&i| g[i] != 0.0).collect();
                order.sort_by(|&i, &j| room[i].total_cmp(&room[j]));
                let mut slope: f64 = order.iter().map(|&i| g[i].abs()).sum();
                let (mut reached, mut t) = (0.0, 0.0);
                let mut solved = None;
                for &i in &order {
                    let next = reached + slope * (room[i] - t);
                    if next >= target {
                        solved = Some(t + (target - reached) / slope);
                        break;
                    }
                    reached = next;
                    t = room[i];
                    slope -= g[i].abs();
                }
                let t = solved.unwrap_or(f64::INFINITY);
                (0..d).map(|i| dir[i] * t.min(room[i])).collect()
            }
            _ => {
                let step = |lambda: f64| -> Vec<f64> {
                    (0..d)
                        .map(|i| (lambda * g[i] * s).clamp(a[i], b[i]))
                        .collect()
                };
                let reach = |delta: &[f64]| -> f64 {
                    s * g.iter().zip(delta).map(|(x, y)| x * y).sum::<f64>()
                };
                let norm2: f64 = g.iter().map(|x| x * x).sum();
                if norm2 == 0.0 {
                    return vec![0.0; d];
                }
                let mut hi = target / norm2;
                let mut tries = 0;
                while reach(&step(hi)) < target && tries < 200 {
                    hi *= 2.0;
                    tries += 1;
                }
                if reach(&step(hi)) < target {
                    return (0..d).map(|i| dir[i] * room[i]).collect();
                }
                let mut lo = 0.0;
                for _ in 0..60 {
                    let mid = 0.5 * (lo + hi);
                    if reach(&step(mid)) >= target {
                        hi = mid;
                    } else {
                        lo = mid;
                    }
                }
                step(hi)
            }
        }
    }

    fn size(&self, delta: &[f64]) -> f64 {
        match self.norm {
            Norm::Linf => delta.iter().fold(0.0, |m: f64, v| m.max(v.abs())),
            _ => delta.iter().map(|v| v * v).sum::<f64>().sqrt(),
        }
    }
}

impl MinimumNorm for Fab {
    fn name(&self) -> &'static str {
        "fab-t"
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
        let labels = batch.goal().clone();
        if labels.is_targeted() {
            return Err(Error::InvalidParameter {
                name: "targets",
                value: p.targets.to_string(),
                reason: "FAB-T picks its own targets: give it labels (an untargeted goal)",
            });
        }
        let dims = x.dims().to_vec();
        let n = dims[0];
        let d = x.elem_count() / n.max(1);
        let (lo, hi) = measure.bounds();
        let dev = x.device().clone();
        let clean_logits = batch
            .clean_logits()
            .cloned()
            .ok_or(Error::GradientMissing)?;
        let clean_pred = predictions(&clean_logits)?;
        let x0: Vec<f32> = x.flatten_all()?.to_vec1::<f32>()?;
        // best distance per sample; a sample misclassified when clean is its own closest point
        let mut best = vec![f64::INFINITY; n];
        let mut best_x = x0.clone();
        for i in 0..n {
            if labels.reached(i, clean_pred[i]) {
                best[i] = 0.0;
            }
        }
        let label_t = labels.tensor().clone();
        for targets in ranked_targets(&clean_logits, labels.classes(), p.targets)? {
            let rows: Vec<u32> = (0..n as u32).filter(|&i| best[i as usize] > 0.0).collect();
            if rows.is_empty() {
                break;
            }
            let m = rows.len();
            let t_rows: Vec<u32> = rows.iter().map(|&i| targets[i as usize]).collect();
            let y_rows = take_rows(&label_t, &rows)?;
            let plus = Goal::targeted(&y_rows).resolve(m, &dev)?;
            let minus = Tensor::new(t_rows.as_slice(), &dev)?;
            let judge = labels.select(&rows, &Tensor::new(rows.as_slice(), &dev)?)?;
            let xs: Vec<f64> = rows
                .iter()
                .flat_map(|&i| {
                    x0[i as usize * d..(i as usize + 1) * d]
                        .iter()
                        .map(|v| f64::from(*v))
                })
                .collect();
            let mut cur = xs.clone();
            for _ in 0..p.steps {
                let mut sub_dims = dims.clone();
                sub_dims[0] = m;
                let cur_t = host_tensor(&cur, &sub_dims, &dev)?;
                let lg = batch.logit_difference_and_grad(model, &cur_t, &plus, &minus)?;
                let f: Vec<f32> = lg.loss.to_dtype(DType::F32)?.to_vec1()?;
                let g: Vec<f32> = lg.grad.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
                let mut next = vec![0f64; m * d];
                for j in 0..m {
                    let (c, x_j) = (&cur[j * d..(j + 1) * d], &xs[j * d..(j + 1) * d]);
                    let gj: Vec<f64> = g[j * d..(j + 1) * d]
                        .iter()
                        .map(|v| f64::from(*v))
                        .collect();
                    let fj = f64::from(f[j]);
                    // hyperplane: fj + g·(z − c) = 0
                    let r1 = -fj;
                    let r2 = -fj
                        + gj.iter()
                            .zip(c.iter().zip(x_j))
                            .map(|(gi, (ci, xi))| gi * (ci - xi))
                            .sum::<f64>();
                    let box_of = |base: &[f64]| -> (Vec<f64>, Vec<f64>) {
                        (
                            base.iter().map(|v| f64::from(lo) - v).collect(),
                            base.iter().map(|v| f64::from(hi) - v).collect(),
                        )
                    };
                    let (a1, b1) = box_of(c);
                    let (a2, b2) = box_of(x_j);
                    let d1 = Self::hyperplane_step(self.norm, &gj, r1, &a1, &b1);
                    let d2 = Self::hyperplane_step(self.norm, &gj, r2, &a2, &b2);
                    let (n1, n2) = (self.size(&d1).max(1e-8), self.size(&d2).max(1e-8));
                    let alpha = (n1 / (n1 + n2)).clamp(0.0, f64::from(p.alpha_max));
                    let eta = f64::from(p.eta);
                    for k in 0..d {
                        let v =
                            (1.0 - alpha) * (c[k] + eta * d1[k]) + alpha * (x_j[k] + eta * d2[k]);
                        next[j * d + k] = v.clamp(f64::from(lo), f64::from(hi));
                    }
                }
                // round to f32 as the model sees it
                for v in next.iter_mut() {
                    *v = f64::from(*v as f32);
                }
                let next_t = host_tensor(&next, &sub_dims, &dev)?;
                let pred = predictions(&batch.logits(model, &next_t, &judge)?)?;
                for j in 0..m {
                    let i = rows[j] as usize;
                    let (z, x_j) = (&mut next[j * d..(j + 1) * d], &xs[j * d..(j + 1) * d]);
                    if judge.reached(j, pred[j]) {
                        let delta: Vec<f64> = z.iter().zip(x_j).map(|(a, b)| a - b).collect();
                        let dist = self.size(&delta);
                        if dist < best[i] {
                            best[i] = dist;
                            for k in 0..d {
                                best_x[i * d + k] = z[k] as f32;
                            }
                        }
                        let beta = f64::from(p.beta);
                        for k in 0..d {
                            z[k] = f64::from((x_j[k] + beta * (z[k] - x_j[k])) as f32);
                        }
                    }
                }
                cur = next;
            }
        }
        let best_x = self.bisect(model, &mut batch, &labels, &x0, best_x, &best, &dims)?;
        let found: Vec<bool> = best.iter().map(|b| b.is_finite()).collect();
        finish_minimal(batch, model, self.norm, best_x, &found)
    }
}

impl Fab {
    /// Bisection on the segment from `x0` to each found point (`best` finite and positive):
    /// the closest point along it that the model still misclassifies.
    #[allow(clippy::too_many_arguments)]
    fn bisect(
        &self,
        model: &dyn Classifier,
        batch: &mut Batch,
        labels: &crate::goal::ResolvedGoal,
        x0: &[f32],
        mut best_x: Vec<f32>,
        best: &[f64],
        dims: &[usize],
    ) -> Result<Vec<f32>> {
        let n = dims[0];
        let d = x0.len() / n.max(1);
        let rows: Vec<u32> = (0..n as u32)
            .filter(|&i| best[i as usize].is_finite() && best[i as usize] > 0.0)
            .collect();
        if rows.is_empty() || self.params.search_steps == 0 {
            return Ok(best_x);
        }
        let dev = batch.x().device().clone();
        let judge = labels.select(&rows, &Tensor::new(rows.as_slice(), &dev)?)?;
        let m = rows.len();
        let (mut lo, mut hi) = (vec![0f64; m], vec![1f64; m]);
        let point = |j: usize, t: f64, best_x: &[f32]| -> Vec<f32> {
            let i = rows[j] as usize;
            (0..d)
                .map(|k| {
                    let (a, b) = (f64::from(x0[i * d + k]), f64::from(best_x[i * d + k]));
                    (a + t * (b - a)) as f32
                })
                .collect()
        };
        let mut sub_dims = dims.to_vec();
        sub_dims[0] = m;
        for _ in 0..self.params.search_steps {
            let mid: Vec<f64> = (0..m).map(|j| 0.5 * (lo[j] + hi[j])).collect();
            let cand: Vec<f32> = (0..m).flat_map(|j| point(j, mid[j], &best_x)).collect();
            let t = Tensor::from_vec(cand, sub_dims.as_slice(), &dev)?;
            let pred = predictions(&batch.logits(model, &t, &judge)?)?;
            for j in 0..m {
                if judge.reached(j, pred[j]) {
                    hi[j] = mid[j];
                } else {
                    lo[j] = mid[j];
                }
            }
        }
        let ends: Vec<Vec<f32>> = (0..m).map(|j| point(j, hi[j], &best_x)).collect();
        for (j, end) in ends.into_iter().enumerate() {
            let i = rows[j] as usize;
            best_x[i * d..(i + 1) * d].copy_from_slice(&end);
        }
        Ok(best_x)
    }
}
