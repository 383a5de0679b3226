//! PGD's loop: one run from a start, the restarts that keep the best point per sample, and the
//! [`Attack`] implementation.

use candle_core::{DType, Tensor};

use super::{Pgd, FGSM_PARAMS};
use crate::attack::batch::{Batch, CleanLogits};
use crate::attack::rows::{scatter_rows, select_rows, take_rows};
use crate::attack::{Adversarial, Attack, Threat};
use crate::budget::SampleRngs;
use crate::error::Result;
use crate::goal::{Goal, ResolvedGoal};
use crate::model::{predictions, Classifier};

impl Pgd {
    /// One run from a (random) start on the samples `rows` of `x`; with `judge`, the model's
    /// verdict on the run's end point (one forward pass).
    fn single_run(
        &self,
        model: &dyn Classifier,
        batch: &mut Batch,
        rows: &[u32],
        rngs: &mut SampleRngs,
        judge: Judge,
    ) -> Result<RunResult> {
        let p = &self.params;
        let (x0, goal) = select_rows(batch.x(), batch.goal(), rows)?;
        let m = rows.len();
        let mut cur = if p.random_start {
            self.budget.random_start_rows(&x0, rngs, rows)?
        } else {
            x0.clone()
        };
        let mut active: Vec<u32> = (0..m as u32).collect();
        if p.early_stop && p.random_start {
            let preds = predictions(&batch.logits(model, &cur, &goal)?)?;
            active.retain(|&i| !goal.reached(i as usize, preds[i as usize]));
        }
        let alpha = self.alpha();
        for _ in 0..p.steps {
            if active.is_empty() {
                break;
            }
            let (sub, sub_goal) = select_rows(&cur, &goal, &active)?;
            let x_sub = take_rows(&x0, &active)?;
            let lg = batch.loss_and_grad_for(model, &sub, &sub_goal, p.loss)?;
            // Samples whose current point already reaches the goal stop here, unchanged.
            let keep: Vec<u32> = if p.early_stop {
                let preds = predictions(&lg.logits)?;
                (0..active.len() as u32)
                    .filter(|&j| !sub_goal.reached(j as usize, preds[j as usize]))
                    .collect()
            } else {
                (0..active.len() as u32).collect()
            };
            let moved = self
                .budget
                .step_variable(&sub, &lg.grad, &x_sub, alpha, p.l1_sparsity)?;
            let targets: Vec<u32> = keep.iter().map(|&j| active[j as usize]).collect();
            cur = scatter_rows(&cur, &targets, &take_rows(&moved, &keep)?)?;
            active = targets;
        }
        // the steps' variables end here: the verdict and the caller get a plain tensor
        let cur = cur.detach();
        let verdict = match judge {
            Judge::Verdict => Some(self.verdict(model, batch, &cur, &goal)?),
            Judge::Skip => None,
        };
        Ok(RunResult {
            x_adv: cur,
            verdict,
        })
    }

    /// The model's verdict on a run's end points: logits, success and loss per sample.
    fn verdict(
        &self,
        model: &dyn Classifier,
        batch: &mut Batch,
        x_adv: &Tensor,
        goal: &ResolvedGoal,
    ) -> Result<Verdict> {
        let logits = batch.logits(model, x_adv, goal)?;
        let preds = predictions(&logits)?;
        let loss = self
            .params
            .loss
            .objective(&logits, goal.tensor(), goal.is_targeted())?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?;
        let success = (0..goal.len()).map(|i| goal.reached(i, preds[i])).collect();
        Ok(Verdict {
            logits,
            success,
            loss,
        })
    }

    /// The restarts: the best adversarial batch, with its logits when judged (always when more
    /// than one run must be compared, which needs every run's verdict anyway).
    fn attack(
        &self,
        model: &dyn Classifier,
        x: &Tensor,
        goal: &Goal,
        judge: Judge,
    ) -> Result<Outcome> {
        self.check()?;
        let p = &self.params;
        // Only early stopping needs the clean predictions: without it every sample is attacked.
        let clean = if p.early_stop {
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
        let judge = if p.restarts > 1 {
            Judge::Verdict
        } else {
            judge
        };
        let n = x.dim(0)?;
        // one generator per sample: its starts never depend on the batch around it
        let mut rngs = SampleRngs::new(p.seed, x);
        let mut best_x = x.clone();
        let mut best_success = vec![false; n];
        // The logits of `best_x`, so that judging it costs no forward pass. Without clean logits
        // every sample is attacked, and the first run replaces every row.
        let mut best_logits = None;
        if let Some(clean) = batch.clean_logits() {
            let preds = predictions(clean)?;
            best_success = (0..n).map(|i| batch.goal().reached(i, preds[i])).collect();
            best_logits = Some(clean.clone());
        }
        let mut best_loss = vec![f32::NEG_INFINITY; n];
        for restart in 0..p.restarts {
            let rows: Vec<u32> = (0..n as u32)
                .filter(|&i| !best_success[i as usize])
                .collect();
            if rows.is_empty() {
                break;
            }
            let run = self.single_run(model, &mut batch, &rows, &mut rngs, judge)?;
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
            batch,
        })
    }
}

/// Whether a run's end points are judged by the model (one forward pass).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Judge {
    Verdict,
    Skip,
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
    batch: Batch,
}

impl Attack for Pgd {
    fn run(&self, model: &dyn Classifier, x: &Tensor, goal: &Goal) -> Result<Adversarial> {
        let out = self.attack(model, x, goal, Judge::Verdict)?;
        out.batch.finish(model, &self.budget, out.x_adv, out.logits)
    }

    /// With one restart, the run's end points without the forward pass that judges them
    /// (`steps` gradients instead of `steps` gradients and a forward); with more, every run is
    /// judged to pick the best, as in [`run`](Attack::run).
    fn perturb(&self, model: &dyn Classifier, x: &Tensor, goal: &Goal) -> Result<Tensor> {
        Ok(self.attack(model, x, goal, Judge::Skip)?.x_adv)
    }

    /// The registry's name for these parameters: a preset (`fgsm`, `bim`) whose fixed
    /// parameters were changed is named by what it became.
    fn name(&self) -> &'static str {
        match self.name {
            "fgsm" if !self.is_fgsm() => self.iterative_name(),
            "bim" if self.params.random_start => "pgd",
            name => name,
        }
    }

    fn threat(&self) -> Threat {
        Threat::Budget(self.budget)
    }

    /// The budget and every parameter the registry entry of [`name`](Attack::name) takes: FGSM
    /// reports only its own (its steps, step and start are the preset's).
    fn params(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        if self.name() == "fgsm" {
            if let Some(map) = value.as_object_mut() {
                map.retain(|k, _| FGSM_PARAMS.contains(&k.as_str()));
            }
        }
        value
    }
}
