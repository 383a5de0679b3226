//! What an attack sees of a model: a [`Classifier`] mapping pixels to logits, and the one place
//! where the loss gradient with respect to the input is computed ([`loss_and_grad`]).
//!
//! Every `candle_core::Module` is a `Classifier`. Models with train/eval behaviour (batch norm,
//! dropout) go through [`EvalMode`], which calls `forward_t(x, false)`. Models trained on normalized
//! inputs go through [`Normalized`], so that attacks keep working in pixel space `[0, 1]`.

use candle_core::{DType, Device, Module, ModuleT, Tensor, Var};

use crate::error::{Error, Result};
use crate::goal::{Goal, ResolvedGoal};
use crate::loss::Loss;
use crate::validate::check_batch;

/// A model that maps a batch `[N, C, H, W]` of `f32` pixels to logits `[N, K]`.
///
/// Implemented for every `candle_core::Module`; wrap `ModuleT` models in [`EvalMode`].
pub trait Classifier {
    /// The logits for a batch of inputs.
    ///
    /// # Errors
    /// Whatever the model's forward pass returns.
    fn logits(&self, x: &Tensor) -> candle_core::Result<Tensor>;

    /// Whether the logits carry a gradient back to the input. `false` for a model that is only
    /// a function ([`FnClassifier`](crate::arrays::FnClassifier)): gradient attacks refuse it
    /// with [`Error::NotDifferentiable`], black-box attacks (Square) run on it.
    fn differentiable(&self) -> bool {
        true
    }
}

impl<M: Module> Classifier for M {
    fn logits(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.forward(x)
    }
}

/// Runs a `ModuleT` (batch norm, dropout) in evaluation mode: `forward_t(x, false)`.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use candle_nn::{batch_norm, VarBuilder};
/// use perturb::{Classifier, EvalMode};
/// let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
/// let bn = EvalMode(batch_norm(3, 1e-5, vb)?);
/// let y = bn.logits(&Tensor::ones((1, 3, 2, 2), DType::F32, &Device::Cpu)?)?;
/// assert_eq!(y.dims(), &[1, 3, 2, 2]);
/// # Ok::<(), perturb::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct EvalMode<M>(pub M);

impl<M: ModuleT> Classifier for EvalMode<M> {
    fn logits(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.0.forward_t(x, false)
    }
}

/// A classifier preceded by per-channel normalization `(x - mean) / std`, so that attacks, budgets
/// and ε stay in pixel space while the model sees the inputs it was trained on.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use perturb::{Classifier, Normalized};
/// let flatten = |x: &Tensor| x.flatten_from(1);
/// let model = Normalized::new(flatten, &[0.5], &[0.25], &Device::Cpu)?;
/// let x = Tensor::new(&[[[[1.0f32, 0.5]]]], &Device::Cpu)?;
/// assert_eq!(model.logits(&x)?.to_vec2::<f32>()?, [[2.0, 0.0]]);
/// # Ok::<(), perturb::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Normalized<C> {
    inner: C,
    mean: Tensor,
    std: Tensor,
}

impl<C: Classifier> Normalized<C> {
    /// Wrap `inner` with per-channel `mean` and `std` (one entry per channel).
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] when the lengths differ, are zero, or a std is not positive
    /// and finite.
    pub fn new(inner: C, mean: &[f32], std: &[f32], device: &Device) -> Result<Self> {
        if mean.is_empty() || mean.len() != std.len() {
            return Err(Error::InvalidParameter {
                name: "std",
                value: format!("{} entries for {} means", std.len(), mean.len()),
                reason: "mean and std need one entry per channel each",
            });
        }
        if let Some(s) = std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(Error::InvalidParameter {
                name: "std",
                value: s.to_string(),
                reason: "must be positive and finite",
            });
        }
        if let Some(m) = mean.iter().find(|m| !m.is_finite()) {
            return Err(Error::InvalidParameter {
                name: "mean",
                value: m.to_string(),
                reason: "must be finite",
            });
        }
        let c = mean.len();
        Ok(Self {
            inner,
            mean: Tensor::from_slice(mean, (1, c, 1, 1), device)?,
            std: Tensor::from_slice(std, (1, c, 1, 1), device)?,
        })
    }

    /// The wrapped classifier.
    pub fn inner(&self) -> &C {
        &self.inner
    }
}

impl<C: Classifier> Classifier for Normalized<C> {
    fn logits(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let z = x.broadcast_sub(&self.mean)?.broadcast_div(&self.std)?;
        self.inner.logits(&z)
    }

    fn differentiable(&self) -> bool {
        self.inner.differentiable()
    }
}

/// Logits of `model` on `x`, checked to be `[N, K]` with `K >= 2` and finite, as `f32`.
pub(crate) fn checked_logits(model: &dyn Classifier, x: &Tensor) -> Result<Tensor> {
    let logits = model.logits(x)?;
    let n = x.dim(0)?;
    let dims = logits.dims();
    if dims.len() != 2 || dims[0] != n || dims[1] < 2 || !logits.dtype().is_float() {
        return Err(Error::ModelOutput {
            batch: n,
            got: dims.to_vec(),
        });
    }
    let logits = logits.to_dtype(DType::F32)?;
    let k = dims[1];
    let host = logits.flatten_all()?.to_vec1::<f32>()?;
    let samples: Vec<usize> = (0..n)
        .filter(|&i| host[i * k..(i + 1) * k].iter().any(|v| !v.is_finite()))
        .take(10)
        .collect();
    if !samples.is_empty() {
        return Err(Error::NonFiniteLogits { samples });
    }
    Ok(logits)
}

/// Predicted class (argmax of the logits) per sample.
pub(crate) fn predictions(logits: &Tensor) -> Result<Vec<u32>> {
    Ok(logits.argmax(1)?.to_vec1::<u32>()?)
}

/// Loss, its input gradient, and the logits it was computed from, for one batch.
#[derive(Debug, Clone)]
pub struct LossGrad {
    /// The attack objective per sample, `[N]` (larger is better for the attacker).
    pub loss: Tensor,
    /// d(loss)/d(input) per sample, the shape of the input.
    pub grad: Tensor,
    /// The logits at the input, `[N, K]`.
    pub logits: Tensor,
}

/// The attack objective per sample and its gradient with respect to the input.
///
/// The objective is `loss` oriented for the goal: the loss of the label for an untargeted goal,
/// the negated loss of the target for a targeted one, so an attack always ascends it. Samples are
/// independent: the batch objective is the sum, and each sample's gradient is its own. The model's
/// weights are constants here.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use perturb::{loss_and_grad, Goal, Loss};
/// // A "model" whose logits are the two pixels themselves.
/// let model = |x: &Tensor| x.flatten_from(1);
/// let x = Tensor::new(&[[[[0.2f32, 0.7]]]], &Device::Cpu)?;
/// let y = Tensor::new(&[1u32], &Device::Cpu)?;
/// let out = loss_and_grad(&model, &x, &Goal::untargeted(&y), Loss::CrossEntropy)?;
/// // d CE / d logits = softmax - onehot: the gradient pushes pixel 0 up and pixel 1 down.
/// let g = out.grad.flatten_all()?.to_vec1::<f32>()?;
/// assert!(g[0] > 0.0 && g[1] < 0.0 && (g[0] + g[1]).abs() < 1e-6);
/// # Ok::<(), perturb::Error>(())
/// ```
///
/// # Errors
/// Bad input (shape, dtype, NaN or infinity), a goal that does not fit the batch or
/// the model, a model whose output is not `[N, K]`, or [`Error::GradientMissing`] when no
/// gradient reaches the input.
pub fn loss_and_grad(
    model: &dyn Classifier,
    x: &Tensor,
    goal: &Goal,
    loss: Loss,
) -> Result<LossGrad> {
    check_batch(x, f32::MIN, f32::MAX)?;
    loss.check()?;
    let goal = goal.resolve(x.dim(0)?, x.device())?;
    loss_and_grad_resolved(model, x, &goal, loss)
}

/// [`loss_and_grad`] on inputs that were already checked. One forward on the whole batch: its
/// logits give the class count the goal and the loss are checked against, and the same graph
/// is differentiated.
pub(crate) fn loss_and_grad_resolved(
    model: &dyn Classifier,
    x: &Tensor,
    goal: &ResolvedGoal,
    loss: Loss,
) -> Result<LossGrad> {
    require_gradient(model)?;
    let var = Var::from_tensor(x)?;
    let logits = goal_logits(model, var.as_tensor(), goal)?;
    loss.check_classes(logits.dim(1)?, goal.targeted)?;
    backward_to_input(&var, logits, goal, loss)
}

/// [`checked_logits`] whose class count covers `goal`'s classes.
pub(crate) fn goal_logits(
    model: &dyn Classifier,
    x: &Tensor,
    goal: &ResolvedGoal,
) -> Result<Tensor> {
    let logits = checked_logits(model, x)?;
    goal.check_classes(logits.dim(1)?)?;
    Ok(logits)
}

/// `z_plus − z_minus` per sample (`u32` classes `[N]` each) and its input gradient, for attacks
/// that follow one decision boundary (FAB); `loss` of the result holds the difference.
pub(crate) fn difference_and_grad(
    model: &dyn Classifier,
    x: &Tensor,
    plus: &ResolvedGoal,
    minus: &Tensor,
) -> Result<LossGrad> {
    require_gradient(model)?;
    let var = Var::from_tensor(x)?;
    let logits = goal_logits(model, var.as_tensor(), plus)?;
    let difference =
        (crate::ops::pick(&logits, plus.tensor())? - crate::ops::pick(&logits, minus)?)?;
    differentiate(&var, logits, difference)
}

/// [`Error::NotDifferentiable`] for a model that declares no input gradient.
pub(crate) fn require_gradient(model: &dyn Classifier) -> Result<()> {
    match model.differentiable() {
        true => Ok(()),
        false => Err(Error::NotDifferentiable),
    }
}

/// The objective on `logits` (computed from `var`) and its gradient with respect to `var`.
fn backward_to_input(
    var: &Var,
    logits: Tensor,
    goal: &ResolvedGoal,
    loss: Loss,
) -> Result<LossGrad> {
    let objective = loss.objective(&logits, &goal.tensor, goal.targeted)?;
    differentiate(var, logits, objective)
}

/// The per-sample `objective` (computed from `var` through `logits`) with its gradient with
/// respect to `var`; a path without backward is [`Error::GradientMissing`].
fn differentiate(var: &Var, logits: Tensor, objective: Tensor) -> Result<LossGrad> {
    let grads = objective.sum_all()?.backward().map_err(|e| {
        if is_missing_backward(&e) {
            Error::GradientMissing
        } else {
            Error::Candle(e)
        }
    })?;
    let grad = grads
        .get(var.as_tensor())
        .ok_or(Error::GradientMissing)?
        .clone();
    Ok(LossGrad {
        loss: objective.detach(),
        grad,
        logits: logits.detach(),
    })
}

/// Whether candle failed because an op on the path has no backward pass.
pub(crate) fn is_missing_backward(e: &candle_core::Error) -> bool {
    matches!(e, candle_core::Error::BackwardNotSupported { .. })
        || e.to_string().contains("backward not supported")
}
