//! BIM / PGD: iterated steepest-ascent steps, each projected back onto ε-ball ∩ box.

use candle_core::{DType, Tensor};
use rand::{rngs::StdRng, SeedableRng};

use super::{check_positive, finish, prepare, Adversarial, Attack, DEFAULT_L1_SPARSITY};
use crate::budget::{check_sparsity, Budget};
use crate::error::{Error, Result};
use crate::goal::{Goal, Resolved};
use crate::loss::Loss;
use crate::model::{goal_logits, loss_and_grad_resolved, predictions, Classifier};

/// Projected Gradient Descent (Madry et al. 2018, arXiv:1706.06083); without random start it is
/// the Basic Iterative Method (Kurakin et al. 2017, arXiv:1607.02533).
///
/// - **Step**: `x ← Π(x + α·d(∇ₓL))` for `steps` steps, `d` the budget's steepest-ascent
///   direction (sign for L∞, normalized gradient for L2, sparse SLIDE step for L1), `Π` the exact
///   projection onto ε-ball ∩ box. Starts at a uniform point of the ball (`random_start`, default
///   on) or at `x` (BIM).
/// - **Distance**: the budget's norm (L∞, L2, L1).
/// - **Arguments** (defaults): `steps` 10, `step_size` α = 2.5·ε/steps, `random_start` true,
///   `restarts` 1, `early_stop` false, `seed` 0, `loss` cross-entropy, `check_gradient` true,
///   `l1_sparsity` 0.99.
/// - **Restarts**: restart r > 0 attacks only the samples no earlier run fooled, and a sample
///   keeps the best result over runs (success first, then the higher loss); restart 0 is the
///   single run with the same seed.
/// - **Early stop**: a sample stops as soon as its goal holds and leaves the batch; a sample
///   that already satisfies the goal at the clean input costs no gradient and is returned as is.
/// - **Inputs**: `[N, C, H, W]` `f32` in the budget's box; labels or targets `[N]`.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use perturb::{Attack, Budget, Goal, Pgd};
/// let model = |x: &Tensor| x.flatten_from(1);
/// let x = Tensor::new(&[[[[0.2f32, 0.6]]]], &Device::Cpu)?;
/// let y = Tensor::new(&[1u32], &Device::Cpu)?;
/// let pgd = Pgd::new(Budget::linf(0.3)?).steps(20).step_size(0.05).seed(7);
/// let adv = pgd.run(&model, &x, &Goal::untargeted(&y))?;
/// assert_eq!(adv.success, [true]);
/// assert!(adv.norms[0] <= 0.3 + 1e-6);
/// # Ok::<(), perturb::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Pgd {
    budget: Budget,
    loss: Loss,
    steps: usize,
    step_size: Option<f32>,
    random_start: bool,
    restarts: usize,
    early_stop: bool,
    seed: u64,
    l1_sparsity: f32,
    check_gradient: bool,
}

impl Pgd {
    /// PGD within `budget` with random start.
    pub fn new(budget: Budget) -> Self {
        Self {
            budget,
            loss: Loss::CrossEntropy,
            steps: 10,
            step_size: None,
            random_start: true,
            restarts: 1,
            early_stop: false,
            seed: 0,
            l1_sparsity: DEFAULT_L1_SPARSITY,
            check_gradient: true,
        }
    }

    /// BIM: PGD without random start.
    pub fn bim(budget: Budget) -> Self {
        Self::new(budget).random_start(false)
    }

    /// Number of steps per run, ≥ 1; default 10.
    pub fn steps(mut self, steps: usize) -> Self {
        self.steps = steps;
        self
    }

    /// Step length α in the budget's norm; default 2.5·ε/steps.
    pub fn step_size(mut self, alpha: f32) -> Self {
        self.step_size = Some(alpha);
        self
    }

    /// Start from a uniform random point of the ε-ball; default `true`.
    pub fn random_start(mut self, on: bool) -> Self {
        self.random_start = on;
        self
    }

    /// Number of runs, ≥ 1; default 1.
    pub fn restarts(mut self, restarts: usize) -> Self {
        self.restarts = restarts;
        self
    }

    /// Stop each sample as soon as its goal holds; default `false` (classic PGD runs all steps).
    pub fn early_stop(mut self, on: bool) -> Self {
        self.early_stop = on;
        self
    }

    /// Seed of the random starts; default 0.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The loss to ascend; default [`Loss::CrossEntropy`].
    pub fn loss(mut self, loss: Loss) -> Self {
        self.loss = loss;
        self
    }

    /// Run the [gradient self-check](crate::GradientCheck) before attacking; default `true`.
    pub fn check_gradient(mut self, on: bool) -> Self {
        self.check_gradient = on;
        self
    }

    /// For L1 budgets, the fraction of coordinates a step leaves alone; default 0.99.
    pub fn l1_sparsity(mut self, sparsity: f32) -> Self {
        self.l1_sparsity = sparsity;
        self
    }

    /// The step length α in use.
    pub fn alpha(&self) -> f32 {
        self.step_size
            .unwrap_or(2.5 * self.budget.eps() / self.steps.max(1) as f32)
    }

    fn check(&self) -> Result<()> {
        if self.steps == 0 {
            return Err(Error::InvalidParameter {
                name: "steps",
                value: "0".into(),
                reason: "must be at least 1",
            });
        }
        if self.restarts == 0 {
            return Err(Error::InvalidParameter {
                name: "restarts",
                value: "0".into(),
                reason: "must be at least 1",
            });
        }
        check_positive("step_size", self.alpha())?;
        check_sparsity(self.l1_sparsity)?;
        self.loss.check()
    }

    /// One run from a (random) start on the samples `rows` of `x`; with `judge`, the model's
    /// verdict on the run's end point (one forward pass).
    #[allow(clippy::too_many_arguments)]
    fn single_run(
        &self,
        model: &dyn Classifier,
        x: &Tensor,
        goal: &Resolved,
        rows: &[u32],
        rng: &mut StdRng,
        evals: &mut usize,
        judge: bool,
    ) -> Result<RunResult> {
        let (x0, goal) = select_rows(x, goal, rows)?;
        let m = rows.len();
        let mut cur = if self.random_start {
            self.budget.random_start_variable(&x0, rng)?
        } else {
            x0.clone()
        };
        let mut active: Vec<u32> = (0..m as u32).collect();
        if self.early_stop && self.random_start {
            let preds = predictions(&goal_logits(model, &cur, &goal)?)?;
            active.retain(|&i| !goal.reached(i as usize, preds[i as usize]));
        }
        let alpha = self.alpha();
        for _ in 0..self.steps {
            if active.is_empty() {
                break;
            }
            let (sub, sub_goal) = select_rows(&cur, &goal, &active)?;
            let x_sub = take_rows(&x0, &active)?;
            let lg = loss_and_grad_resolved(model, &sub, &sub_goal, self.loss)?;
            *evals += active.len();
            // Samples whose current point already reaches the goal stop here, unchanged.
            let keep: Vec<u32> = if self.early_stop {
                let preds = predictions(&lg.logits)?;
                (0..active.len() as u32)
                    .filter(|&j| !sub_goal.reached(j as usize, preds[j as usize]))
                    .collect()
            } else {
                (0..active.len() as u32).collect()
            };
            let moved =
                self.budget
                    .step_variable(&sub, &lg.grad, &x_sub, alpha, self.l1_sparsity)?;
            let targets: Vec<u32> = keep.iter().map(|&j| active[j as usize]).collect();
            cur = scatter_rows(&cur, &targets, &take_rows(&moved, &keep)?)?;
            active = targets;
        }
        // the steps' variables end here: the verdict and the caller get a plain tensor
        let cur = cur.detach();
        let verdict = if judge {
            let logits = goal_logits(model, &cur, &goal)?;
            let preds = predictions(&logits)?;
            let loss = self
                .loss
                .objective(&logits, &goal.tensor, goal.targeted)?
                .to_dtype(DType::F32)?
                .to_vec1::<f32>()?;
            let success = (0..m).map(|i| goal.reached(i, preds[i])).collect();
            Some(Verdict {
                logits,
                success,
                loss,
            })
        } else {
            None
        };
        Ok(RunResult {
            x_adv: cur,
            verdict,
        })
    }

    /// The restarts: the best adversarial batch, with its logits when `judge` (or when more
    /// than one run must be compared, which needs every run's verdict anyway).
    fn attack(
        &self,
        model: &dyn Classifier,
        x: &Tensor,
        goal: &Goal,
        judge: bool,
    ) -> Result<Outcome> {
        self.check()?;
        // Only early stopping needs the clean predictions: without it every sample is attacked.
        let prep = prepare(
            model,
            x,
            goal,
            &self.budget,
            self.loss,
            self.check_gradient,
            self.early_stop,
        )?;
        let judge = judge || self.restarts > 1;
        let n = x.dim(0)?;
        let mut rng = StdRng::seed_from_u64(self.seed);
        let mut best_x = x.clone();
        let mut best_success = vec![false; n];
        // The logits of `best_x`, so that judging it costs no forward pass. Without clean logits
        // every sample is attacked, and the first run replaces every row.
        let mut best_logits = None;
        if let (true, Some(clean)) = (self.early_stop, &prep.clean_logits) {
            let preds = predictions(clean)?;
            best_success = (0..n).map(|i| prep.goal.reached(i, preds[i])).collect();
            best_logits = Some(clean.clone());
        }
        let mut best_loss = vec![f32::NEG_INFINITY; n];
        let mut evals = 0;
        for restart in 0..self.restarts {
            let rows: Vec<u32> = (0..n as u32)
                .filter(|&i| !best_success[i as usize])
                .collect();
            if rows.is_empty() {
                break;
            }
            let run = self.single_run(model, x, &prep.goal, &rows, &mut rng, &mut evals, judge)?;
            let Some(verdict) = run.verdict else {
                // a single unjudged run: its end points are the result
                best_x = scatter_rows(&best_x, &rows, &run.x_adv)?;
                best_logits = None;
                continue;
            };
            let mut taken = Vec::new();
            for (j, &i) in rows.iter().enumerate() {
                let i = i as usize;
                if restart == 0 || verdict.success[j] || verdict.loss[j] > best_loss[i] {
                    best_success[i] = verdict.success[j];
                    best_loss[i] = verdict.loss[j];
                    taken.push(j as u32);
                }
            }
            let targets: Vec<u32> = taken.iter().map(|&j| rows[j as usize]).collect();
            best_x = scatter_rows(&best_x, &targets, &take_rows(&run.x_adv, &taken)?)?;
            let new_logits = take_rows(&verdict.logits, &taken)?;
            let base = match best_logits {
                Some(b) => b,
                None => Tensor::zeros((n, new_logits.dim(1)?), new_logits.dtype(), x.device())?,
            };
            best_logits = Some(scatter_rows(&base, &targets, &new_logits)?);
        }
        Ok(Outcome {
            x_adv: best_x,
            logits: best_logits,
            goal: prep.goal,
            evals,
        })
    }
}

/// The end of one run and, when judged, the model's verdict on it.
struct RunResult {
    x_adv: Tensor,
    verdict: Option<Verdict>,
}

struct Verdict {
    /// The model's logits on the run's `x_adv`.
    logits: Tensor,
    success: Vec<bool>,
    loss: Vec<f32>,
}

/// The best adversarial batch over the restarts.
struct Outcome {
    x_adv: Tensor,
    /// The model's logits on `x_adv`, when every row has them.
    logits: Option<Tensor>,
    goal: Resolved,
    evals: usize,
}

impl Attack for Pgd {
    fn run(&self, model: &dyn Classifier, x: &Tensor, goal: &Goal) -> Result<Adversarial> {
        let out = self.attack(model, x, goal, true)?;
        finish(
            model,
            &self.budget,
            x,
            out.x_adv,
            out.logits,
            &out.goal,
            out.evals,
        )
    }

    /// With one restart, the run's end points without the forward pass that judges them
    /// (`steps` gradients instead of `steps` gradients and a forward); with more, every run is
    /// judged to pick the best, as in [`run`](Attack::run).
    fn perturb(&self, model: &dyn Classifier, x: &Tensor, goal: &Goal) -> Result<Tensor> {
        Ok(self.attack(model, x, goal, false)?.x_adv)
    }

    fn name(&self) -> &'static str {
        "pgd"
    }

    fn budget(&self) -> &Budget {
        &self.budget
    }

    fn at_eps(&self, eps: f32) -> Result<Box<dyn Attack>> {
        Ok(Box::new(Self {
            budget: self.budget.with_eps(eps)?,
            ..self.clone()
        }))
    }

    fn params(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

/// Rows `rows` of `t` (no copy when `rows` is all of them, in order).
fn take_rows(t: &Tensor, rows: &[u32]) -> Result<Tensor> {
    if is_identity(rows, t.dim(0)?) {
        return Ok(t.clone());
    }
    if rows.is_empty() {
        // an empty view: CUDA refuses to launch an index_select over no rows
        return Ok(t.narrow(0, 0, 0)?);
    }
    let idx = Tensor::from_slice(rows, rows.len(), t.device())?;
    Ok(t.index_select(&idx, 0)?)
}

/// Rows `rows` of a batch and of its goal.
fn select_rows(t: &Tensor, goal: &Resolved, rows: &[u32]) -> Result<(Tensor, Resolved)> {
    if is_identity(rows, t.dim(0)?) {
        return Ok((t.clone(), goal.clone()));
    }
    let idx = Tensor::from_slice(rows, rows.len(), t.device())?;
    Ok((t.index_select(&idx, 0)?, goal.select(rows, &idx)?))
}

/// `base` with rows `rows` replaced by the rows of `values`, bit for bit.
fn scatter_rows(base: &Tensor, rows: &[u32], values: &Tensor) -> Result<Tensor> {
    let n = base.dim(0)?;
    if is_identity(rows, n) {
        return Ok(values.clone());
    }
    if rows.is_empty() {
        return Ok(base.clone());
    }
    let idx = Tensor::from_slice(rows, rows.len(), base.device())?;
    let placed = base.zeros_like()?.index_add(&idx, values, 0)?;
    let mut mask = vec![0u8; n];
    for &r in rows {
        mask[r as usize] = 1;
    }
    let mut mask_shape = vec![1; base.rank()];
    mask_shape[0] = n;
    let mask = Tensor::from_vec(mask, mask_shape, base.device())?.broadcast_as(base.shape())?;
    Ok(mask.where_cond(&placed, base)?)
}

fn is_identity(rows: &[u32], n: usize) -> bool {
    rows.len() == n && rows.iter().enumerate().all(|(i, &r)| r as usize == i)
}
