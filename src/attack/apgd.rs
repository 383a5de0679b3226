//! Auto-PGD (APGD) and its targeted variant APGD-T: PGD without a step size to tune.

use candle_core::{DType, Tensor};

use super::batch::{check_count, check_fraction, Batch, CleanLogits};
use super::rows::{scatter_rows, select_rows, take_rows};
use super::{Adversarial, Attack, FixedBudget, Threat, DEFAULT_L1_SPARSITY};
use crate::budget::{check_sparsity, Budget, SampleRngs};
use crate::error::{Error, Result};
use crate::goal::{Goal, ResolvedGoal};
use crate::loss::Loss;
use crate::model::{predictions, Classifier};

/// Auto-PGD (Croce & Hein, ICML 2020, arXiv:2003.01690): PGD whose step size adapts per sample,
/// with momentum, restarting from the best point whenever the step size halves.
///
/// - **Step**: `z = Π(x⁽ᵏ⁾ + η·d(∇L))`, `x⁽ᵏ⁺¹⁾ = Π(x⁽ᵏ⁾ + α(z − x⁽ᵏ⁾) + (1 − α)(x⁽ᵏ⁾ −
///   x⁽ᵏ⁻¹⁾))` with momentum `α` = `momentum` (1 on the first step), `d` the budget's
///   steepest-ascent direction and `Π` its exact projection; `η` starts at 2ε.
/// - **Step size**: at the checkpoints `w_j = p_j·steps` with `p₀ = 0`, `p₁ = 0.22` and
///   `p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06)` ([`Apgd::checkpoints`]), a sample's `η`
///   halves when fewer than `rho` of the steps since the last checkpoint increased its loss, or
///   when neither its `η` nor its best loss changed since then ([`Apgd::halves`]); it then
///   continues from its best point.
/// - **APGD-T** (`targets` > 0): one run per target among the `targets` classes the clean
///   logits rank highest after the label (fewer when the model has fewer classes), each on the
///   targeted DLR loss; success is any misclassification. Give it labels (an untargeted goal).
/// - **Result**: per sample, an adversarial point where one was found, else the point of
///   highest loss over all runs.
/// - **Arguments** (defaults): `steps` 100, `loss` cross-entropy (APGD-T: DLR), `restarts` 1,
///   `targets` 0 (APGD-T: 9), `rho` 0.75, `momentum` 0.75, `random_start` true, `early_stop`
///   false, `seed` 0, `check_gradient` true, `l1_sparsity` 0.99 (L1 steps use the budget's
///   sparse direction, not the adaptive sparsity of Croce & Hein 2021).
/// - **Costs**: one gradient per step and sample, plus one at each run's start.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use perturb::attack::Apgd;
/// use perturb::{Attack, Budget, Goal};
/// let model = |x: &Tensor| x.flatten_from(1);
/// let x = Tensor::new(&[[[[0.2f32, 0.6]]]], &Device::Cpu)?;
/// let y = Tensor::new(&[1u32], &Device::Cpu)?;
/// let apgd = Apgd::new(Budget::linf(0.3)?).steps(20).build()?;
/// let adv = apgd.run(&model, &x, &Goal::untargeted(&y))?;
/// assert_eq!(adv.success, [true]);
/// assert!(adv.norms[0] <= 0.3);
/// # Ok::<(), perturb::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Apgd {
    budget: Budget,
    #[serde(flatten)]
    params: ApgdParams,
}

/// APGD's parameters apart from the budget: what the registry deserializes and reports record.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct ApgdParams {
    pub loss: Loss,
    pub steps: usize,
    pub restarts: usize,
    pub targets: usize,
    pub rho: f32,
    pub momentum: f32,
    pub random_start: bool,
    pub early_stop: bool,
    pub seed: u64,
    pub check_gradient: bool,
    pub l1_sparsity: f32,
}

impl Default for ApgdParams {
    fn default() -> Self {
        Self {
            loss: Loss::CrossEntropy,
            steps: 100,
            restarts: 1,
            targets: 0,
            rho: 0.75,
            momentum: 0.75,
            random_start: true,
            early_stop: false,
            seed: 0,
            check_gradient: true,
            l1_sparsity: DEFAULT_L1_SPARSITY,
        }
    }
}

impl ApgdParams {
    /// APGD-T's defaults: nine target classes on the DLR loss.
    pub(crate) fn targeted() -> Self {
        Self {
            loss: Loss::Dlr,
            targets: 9,
            ..Self::default()
        }
    }
}

impl Apgd {
    /// The checkpoints of `steps` iterations: `w_j = p_j·steps` for `p₁ = 0.22` and `p_{j+1} = p_j +
    /// max(p_j − p_{j−1} − 0.03, 0.06)` while `p_j ≤ 1`, in whole steps as the reference
    /// implementation counts them: the first interval is `⌊0.22·steps⌋`, each next one
    /// `⌊0.03·steps⌋` shorter, never below `⌊0.06·steps⌋` (each at least 1).
    ///
    /// ```
    /// use perturb::attack::Apgd;
    /// assert_eq!(Apgd::checkpoints(100), [22, 41, 57, 70, 80, 87, 93, 99]);
    /// ```
    pub fn checkpoints(steps: usize) -> Vec<usize> {
        let part = |p: usize| (p * steps / 100).max(1);
        let (mut interval, shrink, floor) = (part(22), part(3), part(6));
        let mut at = interval;
        let mut out = Vec::new();
        while at <= steps {
            out.push(at);
            interval = interval.saturating_sub(shrink).max(floor);
            at += interval;
        }
        out
    }

    /// Whether a sample's step size halves at a checkpoint: fewer than `rho` of the `interval`
    /// steps since the last checkpoint increased the loss, or neither the step size (not halved at
    /// the last checkpoint) nor the best loss changed since then.
    ///
    /// ```
    /// use perturb::attack::Apgd;
    /// assert!(Apgd::halves(10, 7, 0.75, false, true));  // 7 of 10 < 7.5: oscillating
    /// assert!(!Apgd::halves(10, 8, 0.75, false, true)); // progress, and the best loss moved
    /// assert!(Apgd::halves(10, 8, 0.75, false, false)); // no new best since the last check
    /// assert!(!Apgd::halves(10, 8, 0.75, true, false)); // ... but η just halved
    /// ```
    pub fn halves(
        interval: usize,
        increases: usize,
        rho: f32,
        halved_last: bool,
        improved: bool,
    ) -> bool {
        let oscillating = (increases as f64) < f64::from(rho) * interval as f64;
        let stalled = !halved_last && !improved;
        oscillating || stalled
    }

    /// APGD on the cross-entropy loss with the defaults above.
    pub fn new(budget: Budget) -> Self {
        Self {
            budget,
            params: ApgdParams::default(),
        }
    }

    /// APGD-T: targeted DLR runs toward the 9 classes ranked highest after the label.
    pub fn targeted(budget: Budget) -> Self {
        Self {
            budget,
            params: ApgdParams::targeted(),
        }
    }

    pub(crate) fn with_params(budget: Budget, params: ApgdParams) -> Self {
        Self { budget, params }
    }

    /// Iterations per run, ≥ 1; default 100.
    pub fn steps(mut self, steps: usize) -> Self {
        self.params.steps = steps;
        self
    }

    /// Loss to ascend; default cross-entropy (APGD-T: DLR).
    pub fn loss(mut self, loss: Loss) -> Self {
        self.params.loss = loss;
        self
    }

    /// Runs per sample (later runs attack only the samples not yet fooled); default 1.
    pub fn restarts(mut self, restarts: usize) -> Self {
        self.params.restarts = restarts;
        self
    }

    /// Target classes of APGD-T (0: untargeted APGD); default 0, or 9 for [`Apgd::targeted`].
    pub fn targets(mut self, targets: usize) -> Self {
        self.params.targets = targets;
        self
    }

    /// Share of loss-increasing steps below which the step size halves; default 0.75.
    pub fn rho(mut self, rho: f32) -> Self {
        self.params.rho = rho;
        self
    }

    /// Weight of the new step against the previous one; default 0.75.
    pub fn momentum(mut self, momentum: f32) -> Self {
        self.params.momentum = momentum;
        self
    }

    /// Start at a uniform point of the ball; default `true`.
    pub fn random_start(mut self, on: bool) -> Self {
        self.params.random_start = on;
        self
    }

    /// Let fooled samples leave the batch; default `false`.
    pub fn early_stop(mut self, on: bool) -> Self {
        self.params.early_stop = on;
        self
    }

    /// Seed of the random starts; default 0.
    pub fn seed(mut self, seed: u64) -> Self {
        self.params.seed = seed;
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
    /// [`Error::InvalidParameter`] for zero steps or restarts, `rho` or `momentum` outside
    /// `(0, 1]`, an L1 sparsity outside `[0, 1)`, an invalid loss.
    pub fn build(self) -> Result<Self> {
        self.check()?;
        Ok(self)
    }

    fn check(&self) -> Result<()> {
        let p = &self.params;
        check_count("steps", p.steps)?;
        check_count("restarts", p.restarts)?;
        check_fraction("rho", p.rho)?;
        check_fraction("momentum", p.momentum)?;
        check_sparsity(p.l1_sparsity)?;
        p.loss.check()
    }

    /// All runs: restarts, and for APGD-T every target; the best point per sample.
    fn attack(&self, model: &dyn Classifier, x: &Tensor, goal: &Goal) -> Result<(Tensor, Batch)> {
        self.check()?;
        let p = &self.params;
        let targeted_runs = p.targets > 0;
        let clean = if p.early_stop || targeted_runs {
            CleanLogits::Compute
        } else {
            CleanLogits::Skip
        };
        let mut batch = Batch::prepare(
            model,
            x,
            goal,
            &self.budget,
            p.loss,
            p.check_gradient.into(),
            clean,
        )?;
        let n = x.dim(0)?;
        let judge = batch.goal().clone();
        if targeted_runs && judge.is_targeted() {
            return Err(Error::InvalidParameter {
                name: "targets",
                value: p.targets.to_string(),
                reason: "APGD-T picks its own targets: give it labels (an untargeted goal)",
            });
        }
        let mut best = Best {
            x: x.clone(),
            success: vec![false; n],
            loss: vec![f32::NEG_INFINITY; n],
        };
        if p.early_stop {
            if let Some(clean) = batch.clean_logits() {
                let preds = predictions(clean)?;
                best.success = (0..n).map(|i| judge.reached(i, preds[i])).collect();
            }
        }
        // the goals each run ascends: the caller's, or one per target rank
        let goals: Vec<ResolvedGoal> = if targeted_runs {
            let clean = batch.clean_logits().ok_or(Error::InvalidParameter {
                name: "targets",
                value: p.targets.to_string(),
                reason: "needs the clean logits",
            })?;
            target_goals(clean, &judge, p.targets)?
        } else {
            vec![judge.clone()]
        };
        // one generator per sample: its starts never depend on the batch around it
        let mut rngs = SampleRngs::new(p.seed, batch.x());
        for run_goal in &goals {
            for _ in 0..p.restarts {
                let rows: Vec<u32> = (0..n as u32)
                    .filter(|&i| !best.success[i as usize])
                    .collect();
                if rows.is_empty() {
                    break;
                }
                self.single_run(
                    model, &mut batch, &judge, run_goal, &rows, &mut rngs, &mut best,
                )?;
            }
        }
        Ok((best.x, batch))
    }

    /// One run on `rows`: ascend `run_goal`'s loss, judge success by `judge`; fold the result
    /// into `best`.
    #[allow(clippy::too_many_arguments)]
    fn single_run(
        &self,
        model: &dyn Classifier,
        batch: &mut Batch,
        judge: &ResolvedGoal,
        run_goal: &ResolvedGoal,
        rows: &[u32],
        rngs: &mut SampleRngs,
        best: &mut Best,
    ) -> Result<()> {
        let p = &self.params;
        let budget = &self.budget;
        let (mut x0, mut goal) = select_rows(batch.x(), run_goal, rows)?;
        let mut judge_rows = judge.select(rows, &Tensor::new(rows, x0.device())?)?;
        let mut state = RunState::new(rows.to_vec());
        let mut cur = if p.random_start {
            budget.random_start_rows(&x0, rngs, rows)?.detach()
        } else {
            x0.clone()
        };
        let mut lg = batch.loss_and_grad_for(model, &cur, &goal, p.loss)?;
        let mut prev = cur.clone();
        let mut grad = lg.grad.clone();
        let mut loss = host_f32(&lg.loss)?;
        let m = rows.len();
        let eps = budget.eps();
        let mut eta = vec![2.0 * eps; m];
        let mut best_x = cur.clone();
        let mut best_grad = grad.clone();
        let mut best_loss = loss.clone();
        let mut last_loss = loss.clone();
        let mut increases = vec![0usize; m];
        let mut halved_last = vec![false; m];
        let mut best_at_check = best_loss.clone();
        state.record(&judge_rows, &lg.logits, &cur, best)?;
        let marks = Self::checkpoints(p.steps);
        let mut mark = 0;
        let mut since = 0usize;
        for step in 0..p.steps {
            // samples fooled leave the batch
            if p.early_stop {
                let keep = state.unfinished();
                if keep.is_empty() {
                    break;
                }
                if keep.len() < state.rows.len() {
                    let idx = &keep;
                    let pick = |t: &Tensor| take_rows(t, idx);
                    (x0, cur, prev, grad, best_x, best_grad) = (
                        pick(&x0)?,
                        pick(&cur)?,
                        pick(&prev)?,
                        pick(&grad)?,
                        pick(&best_x)?,
                        pick(&best_grad)?,
                    );
                    let sel = Tensor::new(idx.as_slice(), x0.device())?;
                    goal = goal.select(idx, &sel)?;
                    judge_rows = judge_rows.select(idx, &sel)?;
                    for v in [&mut eta, &mut best_loss, &mut last_loss, &mut best_at_check] {
                        *v = idx.iter().map(|&j| v[j as usize]).collect();
                    }
                    increases = idx.iter().map(|&j| increases[j as usize]).collect();
                    halved_last = idx.iter().map(|&j| halved_last[j as usize]).collect();
                    state.keep(idx);
                }
            }
            let dims = {
                let mut d = vec![1usize; cur.rank()];
                d[0] = cur.dim(0)?;
                d
            };
            let eta_t = Tensor::from_vec(eta.clone(), dims, cur.device())?;
            let dir = budget.ascent_direction(&grad, &cur, p.l1_sparsity)?;
            let z = budget.project(&(&cur + dir.broadcast_mul(&eta_t)?)?, &x0)?;
            let a = if step == 0 {
                1.0
            } else {
                f64::from(p.momentum)
            };
            let next = (&cur + ((&z - &cur)? * a)?)?;
            let next = if a < 1.0 {
                (next + ((&cur - &prev)? * (1.0 - a))?)?
            } else {
                next
            };
            let next = budget.project(&next, &x0)?;
            prev = cur;
            cur = next;
            lg = batch.loss_and_grad_for(model, &cur, &goal, p.loss)?;
            grad = lg.grad.clone();
            loss = host_f32(&lg.loss)?;
            state.record(&judge_rows, &lg.logits, &cur, best)?;
            let better: Vec<u32> = (0..loss.len() as u32)
                .filter(|&j| loss[j as usize] > best_loss[j as usize])
                .collect();
            for (j, l) in loss.iter().enumerate() {
                if *l > last_loss[j] {
                    increases[j] += 1;
                }
                if *l > best_loss[j] {
                    best_loss[j] = *l;
                }
            }
            last_loss.clone_from(&loss);
            best_x = scatter_rows(&best_x, &better, &take_rows(&cur, &better)?)?;
            best_grad = scatter_rows(&best_grad, &better, &take_rows(&grad, &better)?)?;
            since += 1;
            if marks.get(mark) == Some(&(step + 1)) {
                let mut restart = Vec::new();
                for j in 0..eta.len() {
                    let improved = best_loss[j] > best_at_check[j];
                    let halve = Self::halves(since, increases[j], p.rho, halved_last[j], improved);
                    if halve {
                        eta[j] /= 2.0;
                        restart.push(j as u32);
                    }
                    halved_last[j] = halve;
                    best_at_check[j] = best_loss[j];
                    increases[j] = 0;
                }
                // restart from the best point, momentum cleared
                let from = take_rows(&best_x, &restart)?;
                cur = scatter_rows(&cur, &restart, &from)?;
                prev = scatter_rows(&prev, &restart, &from)?;
                grad = scatter_rows(&grad, &restart, &take_rows(&best_grad, &restart)?)?;
                mark += 1;
                since = 0;
            }
        }
        // the highest loss of this run, where no run found an adversarial point
        let finals = state.rows.clone();
        let mut taken = Vec::new();
        for (j, &i) in finals.iter().enumerate() {
            let i = i as usize;
            if !best.success[i] && best_loss[j] > best.loss[i] {
                best.loss[i] = best_loss[j];
                taken.push(j as u32);
            }
        }
        let targets: Vec<u32> = taken.iter().map(|&j| finals[j as usize]).collect();
        best.x = scatter_rows(&best.x, &targets, &take_rows(&best_x, &taken)?)?;
        Ok(())
    }
}

/// The best point per sample over all runs.
struct Best {
    x: Tensor,
    success: Vec<bool>,
    /// Highest loss reached, for samples not yet fooled.
    loss: Vec<f32>,
}

/// The rows (of the whole batch) a run still attacks, and which of them are fooled.
struct RunState {
    rows: Vec<u32>,
    fooled: Vec<bool>,
}

impl RunState {
    fn new(rows: Vec<u32>) -> Self {
        let fooled = vec![false; rows.len()];
        Self { rows, fooled }
    }

    /// Mark the rows whose point at `x` reaches the goal, and keep that point as the sample's
    /// result (the first adversarial point found).
    fn record(
        &mut self,
        judge: &ResolvedGoal,
        logits: &Tensor,
        x: &Tensor,
        best: &mut Best,
    ) -> Result<()> {
        let preds = predictions(logits)?;
        let mut newly = Vec::new();
        for (j, &pred) in preds.iter().enumerate() {
            let i = self.rows[j] as usize;
            if !self.fooled[j] && !best.success[i] && judge.reached(j, pred) {
                self.fooled[j] = true;
                best.success[i] = true;
                newly.push(j as u32);
            } else if best.success[i] {
                self.fooled[j] = true;
            }
        }
        let targets: Vec<u32> = newly.iter().map(|&j| self.rows[j as usize]).collect();
        best.x = scatter_rows(&best.x, &targets, &take_rows(x, &newly)?)?;
        Ok(())
    }

    /// Positions (in this run's batch) of the rows not yet fooled.
    fn unfinished(&self) -> Vec<u32> {
        (0..self.rows.len() as u32)
            .filter(|&j| !self.fooled[j as usize])
            .collect()
    }

    /// Keep only the positions `idx`.
    fn keep(&mut self, idx: &[u32]) {
        self.rows = idx.iter().map(|&j| self.rows[j as usize]).collect();
        self.fooled = idx.iter().map(|&j| self.fooled[j as usize]).collect();
    }
}

/// One targeted goal per target rank of [`ranked_targets`].
fn target_goals(
    clean: &Tensor,
    labels: &ResolvedGoal,
    targets: usize,
) -> Result<Vec<ResolvedGoal>> {
    let n = clean.dim(0)?;
    let dev = clean.device();
    ranked_targets(clean, labels.classes(), targets)?
        .iter()
        .map(|t| {
            let goal =
                Goal::targeted_with_labels(&Tensor::new(t.as_slice(), dev)?, labels.tensor());
            goal.resolve(n, dev)
        })
        .collect()
}

/// The target classes of targeted runs (APGD-T, FAB-T): for rank r (0-based) the class with the
/// (r + 1)-th highest clean logit once the label is left out, per sample; at most `classes − 1`
/// ranks.
pub(super) fn ranked_targets(
    clean: &Tensor,
    labels: &[u32],
    targets: usize,
) -> Result<Vec<Vec<u32>>> {
    let (n, k) = clean.dims2()?;
    let order: Vec<Vec<u32>> = clean
        .to_dtype(DType::F32)?
        .arg_sort_last_dim(false)?
        .to_vec2::<u32>()?;
    let ranks = targets.min(k.saturating_sub(1));
    Ok((0..ranks)
        .map(|r| {
            (0..n)
                .map(|i| {
                    let y = labels[i];
                    order[i]
                        .iter()
                        .copied()
                        .filter(|&c| c != y)
                        .nth(r)
                        .unwrap_or(y)
                })
                .collect()
        })
        .collect())
}

/// A loss vector `[N]` on the host.
fn host_f32(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_dtype(DType::F32)?.to_vec1::<f32>()?)
}

impl Attack for Apgd {
    fn run(&self, model: &dyn Classifier, x: &Tensor, goal: &Goal) -> Result<Adversarial> {
        let (x_adv, batch) = self.attack(model, x, goal)?;
        batch.finish(model, &self.budget, x_adv, None)
    }

    fn perturb(&self, model: &dyn Classifier, x: &Tensor, goal: &Goal) -> Result<Tensor> {
        Ok(self.attack(model, x, goal)?.0)
    }

    fn name(&self) -> &'static str {
        if self.params.targets > 0 {
            "apgd-t"
        } else {
            "apgd"
        }
    }

    fn threat(&self) -> Threat {
        Threat::Budget(self.budget)
    }

    fn params(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

impl FixedBudget for Apgd {
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
