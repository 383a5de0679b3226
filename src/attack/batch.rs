//! The pieces every gradient attack needs, public so that an attack written outside this crate
//! is as short and as checked as ours: [`Batch::prepare`] checks the input, the goal and
//! (optionally) the model's gradient; [`Batch::loss_and_grad`] and [`Batch::logits`] call the
//! model and count what they spent; [`Batch::finish`] judges and measures the end point. The
//! geometry of the budget (start, step, projection, distances) is [`Budget`]'s.

use candle_core::Tensor;

use crate::budget::{Budget, Norm};
use crate::error::{Error, Result};
use crate::goal::{Goal, ResolvedGoal};
use crate::gradcheck::GradientCheck;
use crate::loss::Loss;
use crate::model::{goal_logits, loss_and_grad_resolved, predictions, Classifier, LossGrad};

use super::Adversarial;

/// Whether [`Batch::prepare`] runs the [gradient self-check](crate::GradientCheck) on the first
/// samples before the attack computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GradientCheckMode {
    /// Refuse a model whose input gradient is missing or disagrees with finite differences.
    Check,
    /// Trust the gradient (a model already checked, or timing runs).
    Trust,
}

impl From<bool> for GradientCheckMode {
    fn from(on: bool) -> Self {
        if on {
            Self::Check
        } else {
            Self::Trust
        }
    }
}

/// Whether [`Batch::prepare`] computes the model's logits on the clean batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CleanLogits {
    /// One forward pass on the clean batch (an attack that stops early needs its predictions).
    Compute,
    /// None: the first gradient evaluation checks the model's output and the goal against it.
    Skip,
}

/// One batch under attack: the clean input, its checked goal, and the passes spent on it.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use perturb::attack::{Batch, CleanLogits, GradientCheckMode};
/// use perturb::{Budget, Goal, Loss};
/// let model = |x: &Tensor| x.flatten_from(1);
/// let x = Tensor::new(&[[[[0.2f32, 0.6]]]], &Device::Cpu)?;
/// let goal = Goal::untargeted(&Tensor::new(&[1u32], &Device::Cpu)?);
/// let budget = Budget::linf(0.3)?;
/// let mut batch = Batch::prepare(&model, &x, &goal, &budget, Loss::CrossEntropy,
///                                GradientCheckMode::Check, CleanLogits::Skip)?;
/// let lg = batch.loss_and_grad(&model, &x, Loss::CrossEntropy)?; // FGSM, by hand
/// let x_adv = budget.step(&x, &lg.grad, &x, budget.eps(), 0.99)?;
/// let adv = batch.finish(&model, &budget, x_adv, None)?;
/// assert_eq!((adv.success[0], adv.gradient_evals, adv.forward_evals), (true, 1, 1));
/// # Ok::<(), perturb::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Batch {
    x: Tensor,
    goal: ResolvedGoal,
    clean_logits: Option<Tensor>,
    gradient_evals: usize,
    forward_evals: usize,
}

impl Batch {
    /// Check `x` against the budget's box, the goal against the batch, the loss, and optionally
    /// the model's gradient (on up to two samples) and its clean logits.
    ///
    /// # Errors
    /// Bad input ([`Error::ShapeMismatch`], [`Error::NonFinite`], [`Error::PixelsOutOfRange`],
    /// …), a goal that does not fit, an invalid loss, a model whose output is not `[N, K]`, a
    /// failed gradient check.
    pub fn prepare(
        model: &dyn Classifier,
        x: &Tensor,
        goal: &Goal,
        budget: &Budget,
        loss: Loss,
        gradient: GradientCheckMode,
        clean: CleanLogits,
    ) -> Result<Self> {
        loss.check()?;
        budget.check_input(x)?;
        let n = x.dim(0)?;
        let goal = goal.resolve(n, x.device())?;
        let mut forward_evals = 0;
        let clean_logits = match clean {
            CleanLogits::Compute => {
                let logits = goal_logits(model, x, &goal)?;
                loss.check_classes(logits.dim(1)?, goal.targeted)?;
                forward_evals += n;
                Some(logits)
            }
            CleanLogits::Skip => None,
        };
        if gradient == GradientCheckMode::Check {
            let probe = x.narrow(0, 0, n.min(2))?;
            GradientCheck::new().run(model, &probe)?.into_result()?;
        }
        Ok(Self {
            x: x.clone(),
            goal,
            clean_logits,
            gradient_evals: 0,
            forward_evals,
        })
    }

    /// The clean batch.
    pub fn x(&self) -> &Tensor {
        &self.x
    }

    /// The checked goal of the whole batch.
    pub fn goal(&self) -> &ResolvedGoal {
        &self.goal
    }

    /// The model's logits on the clean batch, when [`CleanLogits::Compute`] asked for them.
    pub fn clean_logits(&self) -> Option<&Tensor> {
        self.clean_logits.as_ref()
    }

    /// Passes spent so far: `(gradient evaluations, forward-only passes)`, per sample.
    pub fn evals(&self) -> (usize, usize) {
        (self.gradient_evals, self.forward_evals)
    }

    /// The objective and its input gradient at `x_cur` (a batch of the whole goal), counted.
    ///
    /// # Errors
    /// As [`loss_and_grad`](crate::loss_and_grad).
    pub fn loss_and_grad(
        &mut self,
        model: &dyn Classifier,
        x_cur: &Tensor,
        loss: Loss,
    ) -> Result<LossGrad> {
        let goal = self.goal.clone();
        self.loss_and_grad_for(model, x_cur, &goal, loss)
    }

    /// [`loss_and_grad`](Batch::loss_and_grad) on some rows only, with their goal
    /// ([`ResolvedGoal::select`]), for attacks that drop finished samples.
    ///
    /// # Errors
    /// As [`loss_and_grad`](crate::loss_and_grad).
    pub fn loss_and_grad_for(
        &mut self,
        model: &dyn Classifier,
        x_cur: &Tensor,
        goal: &ResolvedGoal,
        loss: Loss,
    ) -> Result<LossGrad> {
        let lg = loss_and_grad_resolved(model, x_cur, goal, loss)?;
        self.gradient_evals += x_cur.dim(0)?;
        Ok(lg)
    }

    /// `z_plus − z_minus` per sample and its input gradient at `x_cur` (rows of this batch;
    /// `plus` a goal of those rows, `minus` `u32` classes `[M]`), counted as gradient passes: the
    /// objective of attacks that follow one decision boundary, such as FAB.
    ///
    /// # Errors
    /// As [`loss_and_grad`](crate::loss_and_grad).
    pub fn logit_difference_and_grad(
        &mut self,
        model: &dyn Classifier,
        x_cur: &Tensor,
        plus: &ResolvedGoal,
        minus: &Tensor,
    ) -> Result<LossGrad> {
        let lg = crate::model::difference_and_grad(model, x_cur, plus, minus)?;
        self.gradient_evals += x_cur.dim(0)?;
        Ok(lg)
    }

    /// The model's logits on `x_cur` (rows of this batch with their `goal`), checked and counted
    /// as forward-only passes.
    ///
    /// # Errors
    /// A model whose output is not `[N, K]`, or whose class count the goal exceeds.
    pub fn logits(
        &mut self,
        model: &dyn Classifier,
        x_cur: &Tensor,
        goal: &ResolvedGoal,
    ) -> Result<Tensor> {
        let logits = goal_logits(model, x_cur, goal)?;
        self.forward_evals += x_cur.dim(0)?;
        Ok(logits)
    }

    /// Judge the final adversarial batch and measure it in `budget`'s norm; `logits` are the
    /// model's on `x_adv` when the attack already has them (a forward pass saved).
    ///
    /// # Errors
    /// A model whose output is not `[N, K]`; `x_adv` of another shape than the batch.
    pub fn finish(
        self,
        model: &dyn Classifier,
        budget: &Budget,
        x_adv: Tensor,
        logits: Option<Tensor>,
    ) -> Result<Adversarial> {
        self.finish_in(model, budget.norm(), budget, x_adv, logits)
    }

    /// [`finish`](Batch::finish) for attacks without an ε (minimum-norm attacks, patches):
    /// distances in `norm`.
    ///
    /// # Errors
    /// As [`finish`](Batch::finish).
    pub fn finish_norm(
        self,
        model: &dyn Classifier,
        norm: Norm,
        x_adv: Tensor,
        logits: Option<Tensor>,
    ) -> Result<Adversarial> {
        let measure = Budget::new(norm, 1.0)?;
        self.finish_in(model, norm, &measure, x_adv, logits)
    }

    fn finish_in(
        mut self,
        model: &dyn Classifier,
        norm: Norm,
        measure: &Budget,
        x_adv: Tensor,
        logits: Option<Tensor>,
    ) -> Result<Adversarial> {
        if x_adv.dims() != self.x.dims() {
            return Err(Error::ShapeMismatch {
                what: "x_adv",
                expected: format!("{:?}", self.x.dims()),
                got: x_adv.dims().to_vec(),
            });
        }
        let logits = match logits {
            Some(l) => {
                self.goal.check_classes(l.dim(1)?)?;
                l
            }
            None => {
                let goal = self.goal.clone();
                self.logits(model, &x_adv, &goal)?
            }
        };
        let predictions = predictions(&logits)?;
        let success = predictions
            .iter()
            .enumerate()
            .map(|(i, &p)| self.goal.reached(i, p))
            .collect();
        debug_assert_eq!(measure.norm(), norm);
        let norms = measure.distances(&x_adv, &self.x)?;
        Ok(Adversarial {
            x_adv,
            success,
            predictions,
            norms,
            gradient_evals: self.gradient_evals,
            forward_evals: self.forward_evals,
            fooled_by: Vec::new(),
        })
    }
}

/// Error unless the count `value` (steps, restarts, queries, …) is at least 1.
pub(crate) fn check_count(name: &'static str, value: usize) -> Result<()> {
    if value >= 1 {
        Ok(())
    } else {
        Err(Error::InvalidParameter {
            name,
            value: value.to_string(),
            reason: "must be at least 1",
        })
    }
}

/// Error unless the fraction `value` lies in `(0, 1]`.
pub(crate) fn check_fraction(name: &'static str, value: f32) -> Result<()> {
    if value > 0.0 && value <= 1.0 {
        Ok(())
    } else {
        Err(Error::InvalidParameter {
            name,
            value: value.to_string(),
            reason: "must lie in (0, 1]",
        })
    }
}

/// Error unless `value` is positive and finite.
pub(crate) fn check_positive(name: &'static str, value: f32) -> Result<()> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(Error::InvalidParameter {
            name,
            value: value.to_string(),
            reason: "must be positive and finite",
        })
    }
}
