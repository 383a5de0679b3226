//! FGSM / FGM: one step of size ε along the steepest-ascent direction of the loss.

use candle_core::Tensor;

use super::{finish, prepare, Adversarial, Attack, DEFAULT_L1_SPARSITY};
use crate::budget::{check_sparsity, Budget};
use crate::error::Result;
use crate::goal::{Goal, Resolved};
use crate::loss::Loss;
use crate::model::{loss_and_grad_resolved, Classifier};

/// Fast Gradient Sign Method (Goodfellow et al. 2015, arXiv:1412.6572) and its L2 form, the Fast
/// Gradient Method.
///
/// - **Step**: `x_adv = Π(x + ε·d)`, with `d = sign(∇ₓL)` for L∞, `∇ₓL/‖∇ₓL‖₂` for L2 (and the
///   sparse L1 direction for L1), `Π` the projection onto ε-ball ∩ box. For L∞ this is exactly
///   `clip(x + ε·sign(∇ₓL), lo, hi)`.
/// - **Distance**: the budget's norm (L∞, L2, L1).
/// - **Arguments**: `loss` (default cross-entropy), `check_gradient` (default on),
///   `l1_sparsity` (default 0.99).
/// - **Inputs**: `[N, C, H, W]` `f32` in the budget's box; labels or targets `[N]`.
/// - **Cost**: one forward+backward per sample.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use perturb::{Attack, Budget, Fgsm, Goal};
/// let model = |x: &Tensor| x.flatten_from(1);
/// let x = Tensor::new(&[[[[0.2f32, 0.6]]]], &Device::Cpu)?;
/// let y = Tensor::new(&[1u32], &Device::Cpu)?;
/// let adv = Fgsm::new(Budget::linf(0.1)?).run(&model, &x, &Goal::untargeted(&y))?;
/// let moved = adv.x_adv.flatten_all()?.to_vec1::<f32>()?;
/// assert!((moved[0] - 0.3).abs() < 1e-6 && (moved[1] - 0.5).abs() < 1e-6);
/// # Ok::<(), perturb::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Fgsm {
    budget: Budget,
    loss: Loss,
    check_gradient: bool,
    l1_sparsity: f32,
}

impl Fgsm {
    /// FGSM within `budget`, cross-entropy loss.
    pub fn new(budget: Budget) -> Self {
        Self {
            budget,
            loss: Loss::CrossEntropy,
            check_gradient: true,
            l1_sparsity: DEFAULT_L1_SPARSITY,
        }
    }

    /// The loss to ascend; default [`Loss::CrossEntropy`].
    pub fn loss(mut self, loss: Loss) -> Self {
        self.loss = loss;
        self
    }

    /// Run the [gradient self-check](crate::GradientCheck) on the first samples before
    /// attacking, and refuse a model whose gradient is missing or wrong; default `true`.
    pub fn check_gradient(mut self, on: bool) -> Self {
        self.check_gradient = on;
        self
    }

    /// For L1 budgets, the fraction of coordinates the step leaves alone; default 0.99.
    pub fn l1_sparsity(mut self, sparsity: f32) -> Self {
        self.l1_sparsity = sparsity;
        self
    }
}

impl Fgsm {
    /// The one step, with the checked goal it was taken for.
    fn attack(
        &self,
        model: &dyn Classifier,
        x: &Tensor,
        goal: &Goal,
    ) -> Result<(Tensor, Resolved)> {
        let budget = &self.budget;
        check_sparsity(self.l1_sparsity)?;
        let prep = prepare(
            model,
            x,
            goal,
            budget,
            self.loss,
            self.check_gradient,
            false,
        )?;
        let lg = loss_and_grad_resolved(model, x, &prep.goal, self.loss)?;
        let x_adv = budget.step(x, &lg.grad, x, budget.eps(), self.l1_sparsity)?;
        Ok((x_adv, prep.goal))
    }
}

impl Attack for Fgsm {
    fn run(&self, model: &dyn Classifier, x: &Tensor, goal: &Goal) -> Result<Adversarial> {
        let (x_adv, goal) = self.attack(model, x, goal)?;
        finish(model, &self.budget, x, x_adv, None, &goal, x.dim(0)?)
    }

    /// The step alone: one gradient, no forward pass to judge it.
    fn perturb(&self, model: &dyn Classifier, x: &Tensor, goal: &Goal) -> Result<Tensor> {
        Ok(self.attack(model, x, goal)?.0)
    }

    fn name(&self) -> &'static str {
        "fgsm"
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
