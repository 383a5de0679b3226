//! A [`MinimumNorm`] attack judged at a fixed ε: success means an adversarial point within ε.

use candle_core::{DType, Tensor};

use super::batch::{Batch, CleanLogits, GradientCheckMode};
use super::{Adversarial, Attack, FixedBudget, MinimumNorm, Threat};
use crate::budget::Budget;
use crate::error::{Error, Result};
use crate::goal::Goal;
use crate::loss::Loss;
use crate::model::Classifier;

/// A [`MinimumNorm`] attack as a [`FixedBudget`] one (as Foolbox's `MinimizationAttack` answers
/// at given epsilons): the smallest adversarial example found is kept where its norm is at most
/// ε, and the clean input is returned elsewhere, so every `x_adv` lies in the ball; success is
/// judged again by the model on the returned point.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use perturb::attack::{AtEps, Batch, CleanLogits, FixedBudget, GradientCheckMode, MinimumNorm};
/// use perturb::{Adversarial, Attack, Budget, Classifier, Goal, Loss, Norm, Result};
///
/// /// The exact minimal L∞ attack on `logits = pixels` with two pixels: meet in the middle.
/// #[derive(Clone)]
/// struct Midpoint;
/// impl MinimumNorm for Midpoint {
///     fn name(&self) -> &'static str { "midpoint" }
///     fn norm(&self) -> Norm { Norm::Linf }
///     fn minimize(&self, model: &dyn Classifier, x: &Tensor, goal: &Goal) -> Result<Adversarial> {
///         let budget = Budget::linf(1.0)?;
///         let batch = Batch::prepare(model, x, goal, &budget, Loss::CrossEntropy,
///                                    GradientCheckMode::Trust, CleanLogits::Skip)?;
///         let v = x.flatten_all()?.to_vec1::<f32>()?;
///         let (m, gap) = ((v[0] + v[1]) / 2.0, (v[1] - v[0]) / 2.0 + 1e-4);
///         let x_adv = Tensor::new(&[[[[m + 1e-4, m - 1e-4]]]], x.device())?;
///         let mut adv = batch.finish_norm(model, Norm::Linf, x_adv, None)?;
///         adv.norms = vec![gap];
///         Ok(adv)
///     }
/// }
/// let model = |x: &Tensor| x.flatten_from(1);
/// let x = Tensor::new(&[[[[0.2f32, 0.6]]]], &Device::Cpu)?;
/// let goal = Goal::untargeted(&Tensor::new(&[1u32], &Device::Cpu)?);
/// assert_eq!(AtEps::new(Midpoint, Budget::linf(0.3)?).run(&model, &x, &goal)?.success, [true]);
/// assert_eq!(AtEps::new(Midpoint, Budget::linf(0.1)?).run(&model, &x, &goal)?.success, [false]);
/// # Ok::<(), perturb::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct AtEps<M> {
    attack: M,
    budget: Budget,
}

impl<M: MinimumNorm> AtEps<M> {
    /// `attack` judged within `budget`.
    ///
    /// # Panics
    /// Never; a budget in another norm than the attack's is refused when the attack runs.
    pub fn new(attack: M, budget: Budget) -> Self {
        Self { attack, budget }
    }

    /// The minimum-norm attack inside.
    pub fn inner(&self) -> &M {
        &self.attack
    }
}

impl<M: MinimumNorm + Clone + 'static> Attack for AtEps<M> {
    fn run(&self, model: &dyn Classifier, x: &Tensor, goal: &Goal) -> Result<Adversarial> {
        if self.attack.norm() != self.budget.norm() {
            return Err(Error::InvalidParameter {
                name: "norm",
                value: self.budget.norm().to_string(),
                reason: "differs from the norm the minimum-norm attack minimises",
            });
        }
        let found = self.attack.minimize(model, x, goal)?;
        // Rows whose minimal point lies beyond ε fall back to the clean input.
        let eps = self.budget.eps();
        let within: Vec<u8> = found.norms.iter().map(|&d| u8::from(d <= eps)).collect();
        let mut shape = vec![1; x.rank()];
        shape[0] = within.len();
        let mask = Tensor::from_vec(within, shape, x.device())?.broadcast_as(x.shape())?;
        let x_adv = mask.where_cond(&found.x_adv.to_dtype(DType::F32)?, x)?;
        // a norm rounded to f32 may hide a distance a hair above ε: the projection makes the
        // kept points exact (it moves them by rounding at most)
        let x_adv = self.budget.project(&x_adv, x)?;
        let batch = Batch::prepare(
            model,
            x,
            goal,
            &self.budget,
            Loss::CrossEntropy,
            GradientCheckMode::Trust,
            CleanLogits::Skip,
        )?;
        let mut adv = batch.finish(model, &self.budget, x_adv, None)?;
        adv.gradient_evals += found.gradient_evals;
        adv.forward_evals += found.forward_evals;
        Ok(adv)
    }

    fn name(&self) -> &'static str {
        self.attack.name()
    }

    fn threat(&self) -> Threat {
        Threat::Budget(self.budget)
    }

    fn params(&self) -> serde_json::Value {
        self.attack.params()
    }
}

impl<M: MinimumNorm + Clone + 'static> FixedBudget for AtEps<M> {
    fn budget(&self) -> &Budget {
        &self.budget
    }

    fn at_eps(&self, eps: f32) -> Result<Box<dyn FixedBudget>> {
        Ok(Box::new(Self {
            attack: self.attack.clone(),
            budget: self.budget.with_eps(eps)?,
        }))
    }
}
