//! What an attack promises: [`Attack`] (a batch in, an [`Adversarial`] out), refined by
//! [`FixedBudget`] (every point inside an ε-ball) and [`MinimumNorm`] (the smallest adversarial
//! example found), as Foolbox separates `FixedEpsilonAttack` from `MinimizationAttack`.

use candle_core::Tensor;

use crate::budget::{Budget, Norm};
use crate::error::Result;
use crate::goal::Goal;
use crate::model::Classifier;

/// What an attack may change: the threat model a report records.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Threat {
    /// Every point lies within `‖x_adv − x‖ ≤ ε` and the pixel box.
    Budget(Budget),
    /// A patch pasted over part of the image: the pixels it covers change arbitrarily, the rest
    /// not at all; there is no ε.
    Patch {
        /// Side of the patch in pixels.
        side: usize,
    },
}

impl Threat {
    /// The budget, for attacks that have one.
    pub fn budget(&self) -> Option<&Budget> {
        match self {
            Threat::Budget(b) => Some(b),
            Threat::Patch { .. } => None,
        }
    }
}

/// An attack on a batch of images: every attack implements it, and the
/// [`Evaluator`](crate::eval::Evaluator) runs any of them over a data set.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use perturb::{Attack, Budget, Fgsm, Goal};
/// let model = |x: &Tensor| x.flatten_from(1); // logits = the two pixels
/// let x = Tensor::new(&[[[[0.2f32, 0.6]]]], &Device::Cpu)?;
/// let y = Tensor::new(&[1u32], &Device::Cpu)?;
/// let attack: &dyn Attack = &Fgsm::new(Budget::linf(0.3)?);
/// let adv = attack.run(&model, &x, &Goal::untargeted(&y))?;
/// assert_eq!(adv.success, [true]); // 0.5 > 0.3: class 0 wins
/// # Ok::<(), perturb::Error>(())
/// ```
pub trait Attack: Send + Sync {
    /// Attack the batch `x` (`[N, C, H, W]`, `f32`, inside the pixel box) toward `goal`.
    ///
    /// # Errors
    /// Invalid parameters or inputs (before any compute), a model whose output is not `[N, K]`,
    /// a gradient that fails the self-check (when enabled), or a candle failure.
    fn run(&self, model: &dyn Classifier, x: &Tensor, goal: &Goal) -> Result<Adversarial>;

    /// The adversarial batch alone: [`run`](Attack::run)'s `x_adv`, bit for bit, without the
    /// verdict. Attacks that judge their end point only to report it (FGSM, PGD with one restart)
    /// skip that forward pass here, so use this where the verdict is not needed: adversarial
    /// training, writing an adversarial data set, or timing the attack itself.
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use perturb::{Attack, Budget, Goal, Pgd};
    /// let model = |x: &Tensor| x.flatten_from(1);
    /// let x = Tensor::new(&[[[[0.2f32, 0.6]]]], &Device::Cpu)?;
    /// let goal = Goal::untargeted(&Tensor::new(&[1u32], &Device::Cpu)?);
    /// let pgd = Pgd::new(Budget::linf(0.3)?).steps(5).seed(1);
    /// let x_adv = pgd.perturb(&model, &x, &goal)?;
    /// let judged = pgd.run(&model, &x, &goal)?;
    /// let (a, b) = (x_adv.flatten_all()?.to_vec1::<f32>()?, judged.x_adv.flatten_all()?.to_vec1::<f32>()?);
    /// assert_eq!(a, b);
    /// # Ok::<(), perturb::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`run`](Attack::run).
    fn perturb(&self, model: &dyn Classifier, x: &Tensor, goal: &Goal) -> Result<Tensor> {
        Ok(self.run(model, x, goal)?.x_adv)
    }

    /// The attack's short name (`fgsm`, `pgd`, …), as in the [registry](crate::attack::Registry).
    fn name(&self) -> &'static str;

    /// What the attack may change ([`Threat::Budget`] for fixed-budget attacks).
    fn threat(&self) -> Threat;

    /// Every parameter of the attack as JSON, enough to rebuild it: reports record it so that a
    /// run can be reproduced. Attacks outside this crate may keep the default, an empty object.
    fn params(&self) -> serde_json::Value {
        serde_json::Value::Object(serde_json::Map::new())
    }
}

/// An attack with a fixed perturbation budget: every `x_adv` lies in the ε-ball around `x` and
/// in the pixel box, and the attack tries to reach the goal inside it (FGSM, PGD, and any
/// [`MinimumNorm`] attack through [`AtEps`](crate::attack::AtEps)). ε sweeps need this trait.
///
/// ```
/// use perturb::attack::FixedBudget;
/// use perturb::{Budget, Pgd};
/// let pgd = Pgd::new(Budget::linf(0.1)?).steps(20);
/// let wider = pgd.at_eps(0.3)?;
/// assert_eq!(wider.budget().eps(), 0.3);
/// # Ok::<(), perturb::Error>(())
/// ```
pub trait FixedBudget: Attack {
    /// The perturbation budget the attack respects.
    fn budget(&self) -> &Budget;

    /// The same attack with the budget's radius set to `eps`, for ε sweeps. Parameters derived
    /// from ε when left unset (such as PGD's default step size) follow the new radius.
    ///
    /// # Errors
    /// [`Error::InvalidEpsilon`](crate::Error::InvalidEpsilon), or invalid parameters at the new
    /// radius.
    fn at_eps(&self, eps: f32) -> Result<Box<dyn FixedBudget>>;
}

/// An attack that looks for the smallest adversarial perturbation in its norm (Carlini–Wagner,
/// DeepFool, DDN, FAB): per sample, the closest adversarial point it found and its distance,
/// `f32::INFINITY` where it found none. [`AtEps`](crate::attack::AtEps) turns one into a
/// [`FixedBudget`] attack (success = a point within ε), so the evaluator, sweeps and the gate take
/// it like any other.
pub trait MinimumNorm: Send + Sync {
    /// The attack's short name.
    fn name(&self) -> &'static str;

    /// The norm whose distance the attack minimises.
    fn norm(&self) -> Norm;

    /// Every parameter of the attack as JSON (see [`Attack::params`]).
    fn params(&self) -> serde_json::Value {
        serde_json::Value::Object(serde_json::Map::new())
    }

    /// The smallest adversarial example found per sample: `x_adv` is the clean input where none
    /// was found (`success` false, norm `f32::INFINITY`); every `x_adv` lies in the pixel box.
    ///
    /// # Errors
    /// As [`Attack::run`].
    fn minimize(&self, model: &dyn Classifier, x: &Tensor, goal: &Goal) -> Result<Adversarial>;
}

/// The outcome of an attack on a batch.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use perturb::{Attack, Budget, Goal, Pgd};
/// let model = |x: &Tensor| x.flatten_from(1);
/// let x = Tensor::new(&[[[[0.2f32, 0.6]]], [[[0.0, 1.0]]]], &Device::Cpu)?;
/// let y = Tensor::new(&[1u32, 1], &Device::Cpu)?;
/// let adv = Pgd::bim(Budget::linf(0.3)?).steps(10).run(&model, &x, &Goal::untargeted(&y))?;
/// assert_eq!(adv.success, [true, false]); // the second sample is too far from the boundary
/// assert_eq!(adv.success_rate(), 0.5);
/// assert_eq!(adv.gradient_evals, 2 * 10);
/// assert_eq!(adv.forward_evals, 2); // the verdict on the end points
/// # Ok::<(), perturb::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Adversarial {
    /// Adversarial inputs, same shape and device as the clean batch; always inside the pixel box
    /// and the attack's threat model.
    pub x_adv: Tensor,
    /// Per sample: the goal holds for the model's prediction on `x_adv`.
    pub success: Vec<bool>,
    /// Per sample: the model's predicted class on `x_adv`.
    pub predictions: Vec<u32>,
    /// Per sample: `‖x_adv − x‖` in the attack's norm (L∞ for patches); for a minimum-norm
    /// attack, `f32::INFINITY` where no adversarial example was found.
    pub norms: Vec<f32>,
    /// Forward+backward passes spent, counted per sample (a batch of 8 costs 8).
    pub gradient_evals: usize,
    /// Forward-only passes spent (success checks, verdicts, queries of a black-box attack),
    /// counted per sample.
    pub forward_evals: usize,
    /// For an [`Ensemble`](crate::attack::Ensemble): per sample, the stage that fooled it
    /// (`None`: none did). Empty for a single attack.
    pub fooled_by: Vec<Option<usize>>,
}

impl Adversarial {
    /// Fraction of samples for which the attack succeeded.
    pub fn success_rate(&self) -> f64 {
        if self.success.is_empty() {
            return 0.0;
        }
        self.success.iter().filter(|s| **s).count() as f64 / self.success.len() as f64
    }
}
