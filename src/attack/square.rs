//! Square Attack: random search that needs only the model's outputs.

use candle_core::{DType, Tensor};
use rand::Rng;

use super::batch::{check_count, check_fraction, Batch, CleanLogits, GradientCheckMode};
use super::{Adversarial, Attack, FixedBudget, Threat};
use crate::budget::{Budget, Norm, SampleRngs};
use crate::error::{Error, Result};
use crate::goal::{Goal, ResolvedGoal};
use crate::loss::Loss;
use crate::model::Classifier;

/// Square Attack (Andriushchenko et al., ECCV 2020, arXiv:1912.00049): score-based random
/// search over square-shaped updates. It calls the model's forward pass only, so it attacks
/// models without a usable gradient (no backward, masked or obfuscated gradients) where every
/// gradient attack fails or refuses; that is why an evaluation ensemble includes it.
///
/// - **Objective**: the logit margin `z_y − max_{j≠y} z_j` (targeted: `max_{j≠t} z_j − z_t`),
///   minimised; a candidate replaces a sample's current point only when it lowers the margin.
/// - **L∞ step**: a square of side `s = round(√(p·C·H·W / C))` at a random place gets a new
///   sign `±ε` per channel (redrawn until the square changes); the start is vertical stripes of
///   `±ε`.
/// - **L2 step**: mass moves between two random squares of side `s` (odd, ≥ 3), in the paper's
///   pseudo-Gaussian pattern, keeping `‖δ‖₂ = ε`; the start is a grid of such patterns.
/// - **Schedule**: the square's share of the image `p` starts at `p_init` and halves at the
///   paper's iterations (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000 of 10,000, scaled to
///   `queries`).
/// - **Queries**: one forward pass per sample at the start and one per iteration for each sample
///   not yet fooled, at most `queries` per sample; [`Adversarial::forward_evals`] counts them
///   (plus the final verdict), and `gradient_evals` stays 0.
/// - **Arguments** (defaults): `queries` 5000, `p_init` 0.8, `seed` 0. Norms L∞ and L2.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use perturb::attack::Square;
/// use perturb::{Attack, Budget, Goal};
/// let model = |x: &Tensor| x.flatten_from(1)?.narrow(1, 0, 2);
/// let x = Tensor::full(0.5f32, (1, 1, 4, 4), &Device::Cpu)?;
/// let y = Tensor::new(&[0u32], &Device::Cpu)?;
/// let adv = Square::new(Budget::linf(0.1)?).queries(100).build()?.run(&model, &x, &Goal::untargeted(&y))?;
/// assert_eq!((adv.success, adv.gradient_evals), (vec![true], 0));
/// # Ok::<(), perturb::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Square {
    budget: Budget,
    #[serde(flatten)]
    params: SquareParams,
}

/// Square's parameters apart from the budget.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct SquareParams {
    pub queries: usize,
    pub p_init: f32,
    pub seed: u64,
}

impl Default for SquareParams {
    fn default() -> Self {
        Self {
            queries: 5000,
            p_init: 0.8,
            seed: 0,
        }
    }
}

impl Square {
    /// Square Attack with 5,000 queries, `p_init` 0.8, seed 0.
    pub fn new(budget: Budget) -> Self {
        Self {
            budget,
            params: SquareParams::default(),
        }
    }

    pub(crate) fn with_params(budget: Budget, params: SquareParams) -> Self {
        Self { budget, params }
    }

    /// Forward passes per sample, ≥ 1; default 5000.
    pub fn queries(mut self, queries: usize) -> Self {
        self.params.queries = queries;
        self
    }

    /// Initial share of the image a square covers, in `(0, 1]`; default 0.8.
    pub fn p_init(mut self, p: f32) -> Self {
        self.params.p_init = p;
        self
    }

    /// Seed of the random search; default 0.
    pub fn seed(mut self, seed: u64) -> Self {
        self.params.seed = seed;
        self
    }

    /// The attack with its parameters checked.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] for zero queries, `p_init` outside `(0, 1]`, or an L1 budget.
    pub fn build(self) -> Result<Self> {
        self.check()?;
        Ok(self)
    }

    fn check(&self) -> Result<()> {
        let p = &self.params;
        check_count("queries", p.queries)?;
        check_fraction("p_init", p.p_init)?;
        if self.budget.norm() == Norm::L1 {
            return Err(Error::InvalidParameter {
                name: "norm",
                value: "l1".into(),
                reason: "square supports linf and l2",
            });
        }
        Ok(())
    }

    /// The square's share of the image at iteration `it` of `queries`: `p_init` halved at the
    /// paper's iterations of a 10,000-query run, scaled to `queries`.
    ///
    /// ```
    /// use perturb::attack::Square;
    /// assert_eq!(Square::p_at(0.8, 0, 10_000), 0.8);
    /// assert_eq!(Square::p_at(0.8, 11, 10_000), 0.4);
    /// assert_eq!(Square::p_at(0.8, 9000, 10_000), 0.8 / 512.0);
    /// assert_eq!(Square::p_at(0.8, 500, 1000), 0.8 / 128.0); // half way: as 5,000 of 10,000
    /// ```
    pub fn p_at(p_init: f32, it: usize, queries: usize) -> f32 {
        let it = (it as f64 / queries.max(1) as f64 * 10_000.0) as usize;
        let halvings = match it {
            0..=10 => 0,
            11..=50 => 1,
            51..=200 => 2,
            201..=500 => 3,
            501..=1000 => 4,
            1001..=2000 => 5,
            2001..=4000 => 6,
            4001..=6000 => 7,
            6001..=8000 => 8,
            _ => 9,
        };
        p_init / (1u32 << halvings) as f32
    }

    fn search(&self, model: &dyn Classifier, x: &Tensor, goal: &Goal) -> Result<(Tensor, Batch)> {
        self.check()?;
        let mut batch = Batch::prepare(
            model,
            x,
            goal,
            &self.budget,
            Loss::CrossEntropy,
            GradientCheckMode::Trust,
            CleanLogits::Skip,
        )?;
        let dims = x.dims().to_vec();
        let &[n, c, h, w] = dims.as_slice() else {
            return Err(Error::ShapeMismatch {
                what: "input",
                expected: "[N, C, H, W] (square updates are squares of pixels)".into(),
                got: dims,
            });
        };
        let d = c * h * w;
        let (lo, hi) = self.budget.bounds();
        let shape = Shape { c, h, w, lo, hi };
        let goal = batch.goal().clone();
        let clean: Vec<f32> = x.flatten_all()?.to_vec1::<f32>()?;
        let eps = self.budget.eps();
        // one generator per sample: its proposals never depend on the batch around it
        let mut rngs = SampleRngs::new(self.params.seed, x);
        // start
        let mut best: Vec<f32> = match self.budget.norm() {
            Norm::Linf => linf_start(&clean, n, shape, eps, &mut rngs)?,
            _ => l2_start(&clean, n, shape, eps, &mut rngs)?,
        };
        best = self.project_rows(&best, &clean, &dims, x)?;
        let all: Vec<usize> = (0..n).collect();
        let (mut margin, mut fooled) =
            self.judge(model, &mut batch, &goal, &best, &all, &dims, x)?;
        for it in 1..self.params.queries {
            let active: Vec<usize> = (0..n).filter(|&i| !fooled[i]).collect();
            if active.is_empty() {
                break;
            }
            let p = Self::p_at(self.params.p_init, it - 1, self.params.queries);
            let mut cand = Vec::with_capacity(active.len() * d);
            for &i in &active {
                let (x0, cur) = (&clean[i * d..(i + 1) * d], &best[i * d..(i + 1) * d]);
                let mut next = cur.to_vec();
                match self.budget.norm() {
                    Norm::Linf => linf_step(&mut next, x0, shape, eps, p, rngs.get(i)?),
                    _ => l2_step(&mut next, x0, shape, eps, p, rngs.get(i)?),
                }
                cand.extend(next);
            }
            let mut sub_dims = dims.clone();
            sub_dims[0] = active.len();
            let x_sub = take(&clean, &active, d);
            let cand = self.project_rows(&cand, &x_sub, &sub_dims, x)?;
            let (m, f) = self.judge(model, &mut batch, &goal, &cand, &active, &sub_dims, x)?;
            for (k, &i) in active.iter().enumerate() {
                if m[k] < margin[i] {
                    margin[i] = m[k];
                    fooled[i] = f[k];
                    best[i * d..(i + 1) * d].copy_from_slice(&cand[k * d..(k + 1) * d]);
                }
            }
        }
        let out = Tensor::from_vec(best, dims, x.device())?.to_dtype(x.dtype())?;
        Ok((out, batch))
    }

    /// The budget's projection of host rows `v` around `x` (exact: `x ± ε` rounded toward `x`).
    fn project_rows(
        &self,
        v: &[f32],
        x: &[f32],
        dims: &[usize],
        like: &Tensor,
    ) -> Result<Vec<f32>> {
        let dev = like.device();
        let vt = Tensor::from_slice(v, dims, dev)?;
        let xt = Tensor::from_slice(x, dims, dev)?;
        Ok(self
            .budget
            .project(&vt, &xt)?
            .flatten_all()?
            .to_vec1::<f32>()?)
    }

    /// Margins and verdicts of the candidate rows `v` (of the samples `rows`), one query each.
    #[allow(clippy::too_many_arguments)]
    fn judge(
        &self,
        model: &dyn Classifier,
        batch: &mut Batch,
        goal: &ResolvedGoal,
        v: &[f32],
        rows: &[usize],
        dims: &[usize],
        like: &Tensor,
    ) -> Result<(Vec<f32>, Vec<bool>)> {
        let idx: Vec<u32> = rows.iter().map(|&i| i as u32).collect();
        let sub_goal = goal.select(&idx, &Tensor::new(idx.as_slice(), like.device())?)?;
        let xt = Tensor::from_slice(v, dims, like.device())?.to_dtype(like.dtype())?;
        let logits = batch.logits(model, &xt, &sub_goal)?;
        let z: Vec<Vec<f32>> = logits.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        let mut margins = Vec::with_capacity(rows.len());
        let mut fooled = Vec::with_capacity(rows.len());
        for (k, row) in z.iter().enumerate() {
            let class = sub_goal.classes()[k] as usize;
            let other = row
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != class)
                .map(|(_, v)| *v)
                .fold(f32::NEG_INFINITY, f32::max);
            let margin = if sub_goal.is_targeted() {
                other - row[class]
            } else {
                row[class] - other
            };
            let pred = argmax(row);
            margins.push(margin);
            fooled.push(sub_goal.reached(k, pred));
        }
        Ok((margins, fooled))
    }
}

/// Channels, height and width of one sample, and the pixel box.
#[derive(Clone, Copy)]
struct Shape {
    c: usize,
    h: usize,
    w: usize,
    lo: f32,
    hi: f32,
}

fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (j, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = j;
        }
    }
    best as u32
}

fn take(data: &[f32], rows: &[usize], d: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows.len() * d);
    for &i in rows {
        out.extend_from_slice(&data[i * d..(i + 1) * d]);
    }
    out
}

fn sign<R: Rng + ?Sized>(rng: &mut R) -> f32 {
    if rng.random::<bool>() {
        1.0
    } else {
        -1.0
    }
}

/// Vertical stripes: one sign per sample, channel and column, `x ± ε` clipped to the box by the
/// projection afterwards.
fn linf_start(x: &[f32], n: usize, s: Shape, eps: f32, rngs: &mut SampleRngs) -> Result<Vec<f32>> {
    let mut out = x.to_vec();
    let d = s.c * s.h * s.w;
    for i in 0..n {
        let rng = rngs.get(i)?;
        for ch in 0..s.c {
            for col in 0..s.w {
                let e = eps * sign(rng);
                for row in 0..s.h {
                    let k = i * d + (ch * s.h + row) * s.w + col;
                    out[k] += e;
                }
            }
        }
    }
    Ok(out)
}

/// Side of the square for a share `p` of the image: `round(√(p·H·W))`, within `[1, min(H, W) − 1]`
/// (at least 1).
fn linf_side(p: f32, s: Shape) -> usize {
    let side = (f64::from(p) * (s.h * s.w) as f64).sqrt().round() as usize;
    side.clamp(1, s.h.min(s.w).saturating_sub(1).max(1))
}

/// One L∞ proposal in place: a random square of the current perturbation gets a new `±ε` per
/// channel, redrawn until it differs from the current point (at most a few draws).
fn linf_step<R: Rng + ?Sized>(v: &mut [f32], x: &[f32], s: Shape, eps: f32, p: f32, rng: &mut R) {
    let side = linf_side(p, s);
    let top = rng.random_range(0..=s.h - side);
    let left = rng.random_range(0..=s.w - side);
    let before = v.to_vec();
    for _ in 0..16 {
        for ch in 0..s.c {
            let e = eps * sign(rng);
            for row in top..top + side {
                for col in left..left + side {
                    let k = (ch * s.h + row) * s.w + col;
                    v[k] = (x[k] + e).clamp(s.lo, s.hi);
                }
            }
        }
        let changed = (0..s.c).any(|ch| {
            (top..top + side).any(|row| {
                (left..left + side).any(|col| {
                    let k = (ch * s.h + row) * s.w + col;
                    (v[k] - before[k]).abs() >= 1e-7
                })
            })
        });
        if changed {
            break;
        }
    }
}

/// The paper's pseudo-Gaussian pattern on an `a × b` rectangle: concentric rings weighted
/// `1/(r + 1)²`, unit L2 norm (all zero when empty).
fn rectangle_pattern(a: usize, b: usize) -> Vec<f32> {
    let mut out = vec![0f32; a * b];
    if a == 0 || b == 0 {
        return out;
    }
    let (ca, cb) = (a / 2 + 1, b / 2 + 1);
    let (mut ra, mut rb) = (ca as isize - 1, cb as isize - 1);
    for ring in 0..ca.max(cb) {
        let weight = 1.0 / ((ring + 1) * (ring + 1)) as f32;
        let span = 2 * ring as isize + 1;
        let (r0, r1) = (ra.max(0) as usize, ((ra + span) as usize).min(a));
        let (c0, c1) = (rb.max(0) as usize, ((rb + span) as usize).min(b));
        for r in r0..r1 {
            for c in c0..c1 {
                out[r * b + c] += weight;
            }
        }
        ra -= 1;
        rb -= 1;
    }
    normalize(&mut out);
    out
}

/// The paper's meta pattern on an `s × s` square: the top half a pseudo-Gaussian bump, the
/// bottom half its negative, transposed half of the time; unit L2 norm.
fn square_pattern<R: Rng + ?Sized>(side: usize, rng: &mut R) -> Vec<f32> {
    let half = side / 2;
    let mut out = rectangle_pattern(half, side);
    out.extend(rectangle_pattern(side - half, side).iter().map(|v| -v));
    normalize(&mut out);
    if rng.random::<bool>() {
        let t: Vec<f32> = (0..side * side)
            .map(|k| out[(k % side) * side + k / side])
            .collect();
        out = t;
    }
    out
}

fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|a| a * a).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|a| *a /= norm);
    }
}

/// A grid of sign-flipped patterns over the image, scaled to `‖δ‖₂ = ε`.
fn l2_start(x: &[f32], n: usize, s: Shape, eps: f32, rngs: &mut SampleRngs) -> Result<Vec<f32>> {
    let d = s.c * s.h * s.w;
    let side = (s.h / 5).max(1);
    let offset = (s.h - side * (s.h / side).min(5)) / 2;
    let mut out = x.to_vec();
    for i in 0..n {
        let rng = rngs.get(i)?;
        let mut delta = vec![0f32; d];
        let mut top = offset;
        while top + side <= s.h {
            let mut left = offset;
            while left + side <= s.w {
                let pattern = square_pattern(side, rng);
                for ch in 0..s.c {
                    let e = sign(rng);
                    for r in 0..side {
                        for col in 0..side {
                            delta[(ch * s.h + top + r) * s.w + left + col] +=
                                e * pattern[r * side + col];
                        }
                    }
                }
                left += side;
            }
            top += side;
        }
        normalize(&mut delta);
        for k in 0..d {
            out[i * d + k] = (x[i * d + k] + eps * delta[k]).clamp(s.lo, s.hi);
        }
    }
    Ok(out)
}

/// One L2 proposal in place (the paper's): the perturbation's mass in a second square moves
/// into a first one, which gets a new pseudo-Gaussian pattern on top of its old content; the
/// whole perturbation is rescaled to `‖δ‖₂ = ε` and clipped to the box.
fn l2_step<R: Rng + ?Sized>(v: &mut [f32], x: &[f32], s: Shape, eps: f32, p: f32, rng: &mut R) {
    let d = s.c * s.h * s.w;
    let mut side = ((f64::from(p) * d as f64 / s.c as f64).sqrt().round() as usize).max(3);
    if side.is_multiple_of(2) {
        side += 1;
    }
    let side = side.min(s.h.min(s.w));
    let (t1, l1) = (
        rng.random_range(0..=s.h - side),
        rng.random_range(0..=s.w - side),
    );
    let (t2, l2) = (
        rng.random_range(0..=s.h - side),
        rng.random_range(0..=s.w - side),
    );
    let mut delta: Vec<f32> = v.iter().zip(x).map(|(a, b)| a - b).collect();
    let at = |ch: usize, r: usize, c: usize| (ch * s.h + r) * s.w + c;
    let inside =
        |t: usize, l: usize, r: usize, c: usize| r >= t && r < t + side && c >= l && c < l + side;
    let image_sq: f32 = delta.iter().map(|a| a * a).sum();
    let pattern = square_pattern(side, rng);
    for ch in 0..s.c {
        let mut window1_sq = 0f32;
        let mut both_sq = 0f32;
        for r in 0..s.h {
            for c in 0..s.w {
                let a = delta[at(ch, r, c)];
                let (in1, in2) = (inside(t1, l1, r, c), inside(t2, l2, r, c));
                if in1 {
                    window1_sq += a * a;
                }
                if in1 || in2 {
                    both_sq += a * a;
                }
            }
        }
        let window1 = window1_sq.sqrt();
        let e = sign(rng);
        let mut update: Vec<f32> = (0..side * side)
            .map(|k| {
                let (r, c) = (t1 + k / side, l1 + k % side);
                e * pattern[k] + delta[at(ch, r, c)] / (1e-10 + window1)
            })
            .collect();
        normalize(&mut update);
        let room = ((eps * eps - image_sq).max(0.0) / s.c as f32 + both_sq).sqrt();
        for r in t2..t2 + side {
            for c in l2..l2 + side {
                delta[at(ch, r, c)] = 0.0;
            }
        }
        for (k, u) in update.iter().enumerate() {
            delta[at(ch, t1 + k / side, l1 + k % side)] = u * room;
        }
    }
    normalize(&mut delta);
    for k in 0..d {
        v[k] = (x[k] + eps * delta[k]).clamp(s.lo, s.hi);
    }
}

impl Attack for Square {
    fn run(&self, model: &dyn Classifier, x: &Tensor, goal: &Goal) -> Result<Adversarial> {
        let (x_adv, batch) = self.search(model, x, goal)?;
        batch.finish(model, &self.budget, x_adv, None)
    }

    fn perturb(&self, model: &dyn Classifier, x: &Tensor, goal: &Goal) -> Result<Tensor> {
        Ok(self.search(model, x, goal)?.0)
    }

    fn name(&self) -> &'static str {
        "square"
    }

    fn threat(&self) -> Threat {
        Threat::Budget(self.budget)
    }

    fn params(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

impl FixedBudget for Square {
    fn budget(&self) -> &Budget {
        &self.budget
    }

    fn at_eps(&self, eps: f32) -> Result<Box<dyn FixedBudget>> {
        Ok(Box::new(
            Self {
                budget: self.budget.with_eps(eps)?,
                ..self.clone()
            }
            .build()?,
        ))
    }
}
