//! The [`Attack`] trait, its result [`Adversarial`], and the attacks.
//!
//! Every attack checks its parameters and inputs before any compute, works on the caller's
//! device, and returns points inside its budget and the pixel box.

mod fgsm;
mod patch;
mod pgd;

pub use fgsm::Fgsm;
pub use patch::{
    apply_patch, random_placement, Patch, PatchApplication, PatchAttack, PatchEvaluation,
    PatchOptimizer, PatchShape, PatchTraining, Placement, Region, Transforms,
};
pub use pgd::Pgd;

use candle_core::Tensor;

use crate::budget::Budget;
use crate::error::{Error, Result};
use crate::goal::{Goal, Resolved};
use crate::gradcheck::GradientCheck;
use crate::loss::Loss;
use crate::model::{goal_logits, predictions, Classifier};

/// Default fraction of coordinates an L1 step leaves alone (SLIDE's 99th percentile).
pub const DEFAULT_L1_SPARSITY: f32 = 0.99;

/// An adversarial attack with a fixed perturbation budget.
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
    /// Attack the batch `x` (`[N, C, H, W]`, `f32`, inside the budget's box) toward `goal`.
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

    /// The attack's short name (`fgsm`, `pgd`, …).
    fn name(&self) -> &'static str;

    /// The perturbation budget the attack respects.
    fn budget(&self) -> &Budget;

    /// The same attack with the budget's radius set to `eps`, for ε sweeps. Parameters derived
    /// from ε when left unset (such as PGD's default step size) follow the new radius.
    ///
    /// # Errors
    /// [`Error::InvalidEpsilon`]; the default, for attacks that do not support it,
    /// [`Error::InvalidParameter`].
    fn at_eps(&self, eps: f32) -> Result<Box<dyn Attack>> {
        let _ = eps;
        Err(Error::InvalidParameter {
            name: "attack",
            value: self.name().to_string(),
            reason: "does not support eps sweeps (at_eps)",
        })
    }

    /// Every parameter of the attack as JSON, enough to rebuild it: reports record it so that a
    /// run can be reproduced. Attacks outside this crate may keep the default, an empty object.
    fn params(&self) -> serde_json::Value {
        serde_json::Value::Object(serde_json::Map::new())
    }
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
/// assert_eq!(adv.success, [true, false]); // the second digit is too far from the boundary
/// assert_eq!(adv.success_rate(), 0.5);
/// assert_eq!(adv.gradient_evals, 2 * 10);
/// # Ok::<(), perturb::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Adversarial {
    /// Adversarial inputs, same shape and device as the clean batch; always inside the budget and
    /// the pixel box.
    pub x_adv: Tensor,
    /// Per sample: the goal holds for the model's prediction on `x_adv`.
    pub success: Vec<bool>,
    /// Per sample: the model's predicted class on `x_adv`.
    pub predictions: Vec<u32>,
    /// Per sample: `‖x_adv − x‖` in the budget's norm.
    pub norms: Vec<f32>,
    /// Forward+backward passes spent, counted per sample (a batch of 8 costs 8); forward-only
    /// passes (success checks) are not counted.
    pub gradient_evals: usize,
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

/// Checked inputs of an attack run.
pub(crate) struct Prepared {
    pub goal: Resolved,
    /// Logits of the clean batch, when the caller asked for them.
    pub clean_logits: Option<Tensor>,
}

/// Check inputs and goal, and optionally the model's gradient, before an attack computes.
///
/// With `clean` the whole clean batch goes through the model (an attack that stops early needs
/// its predictions); without, the attack's first gradient evaluation checks the model's output
/// and the goal's classes against it (no forward pass only to learn the class count).
pub(crate) fn prepare(
    model: &dyn Classifier,
    x: &Tensor,
    goal: &Goal,
    budget: &Budget,
    loss: Loss,
    check_gradient: bool,
    clean: bool,
) -> Result<Prepared> {
    loss.check()?;
    budget.check_input(x)?;
    let n = x.dim(0)?;
    let goal = goal.resolve(n, x.device())?;
    let clean_logits = if clean {
        let logits = goal_logits(model, x, &goal)?;
        loss.check_classes(logits.dim(1)?, goal.targeted)?;
        Some(logits)
    } else {
        None
    };
    if check_gradient {
        let probe = x.narrow(0, 0, n.min(2))?;
        GradientCheck::new().run(model, &probe)?.into_result()?;
    }
    Ok(Prepared { goal, clean_logits })
}

/// Judge the final adversarial batch and measure it; `logits` are the model's on `x_adv` when
/// the attack already has them (a forward pass saved), else they are computed here.
pub(crate) fn finish(
    model: &dyn Classifier,
    budget: &Budget,
    x: &Tensor,
    x_adv: Tensor,
    logits: Option<Tensor>,
    goal: &Resolved,
    gradient_evals: usize,
) -> Result<Adversarial> {
    let logits = match logits {
        Some(l) => {
            goal.check_classes(l.dim(1)?)?;
            l
        }
        None => goal_logits(model, &x_adv, goal)?,
    };
    let predictions = predictions(&logits)?;
    let success = predictions
        .iter()
        .enumerate()
        .map(|(i, &p)| goal.reached(i, p))
        .collect();
    let norms = budget.distances(&x_adv, x)?;
    Ok(Adversarial {
        x_adv,
        success,
        predictions,
        norms,
        gradient_evals,
    })
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
