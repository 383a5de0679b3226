//! `ndarray` interop: batches as `Array4<f32>` (NCHW, pixels in `[0, 1]`), labels as
//! `Array1<u32>`, logits as `Array2<f32>`; attacks run on arrays; and [`FnClassifier`], a model
//! that is only a function from a batch to logits (another runtime, a remote endpoint, a
//! pipeline with JPEG compression), which black-box attacks can attack and gradient attacks
//! refuse.
//!
//! Conversions copy and keep every bit: a tensor → array → tensor round trip is exact.
//!
//! ```
//! use candle_core::Device;
//! use ndarray::{Array1, Array4};
//! use perturb::{arrays, zoo, Budget, Pgd};
//! let model = zoo::load("mnist-linear", &Device::Cpu)?;
//! let x = Array4::<f32>::from_elem((2, 1, 28, 28), 0.5);
//! let labels = Array1::from(vec![3u32, 7]);
//! let pgd = Pgd::new(Budget::linf(0.1)?).steps(5);
//! let adv = arrays::run(&pgd, &model, x.view(), labels.view())?;
//! assert_eq!(adv.x_adv.dim(), (2, 1, 28, 28));
//! assert!(adv.x_adv.iter().zip(x.iter()).all(|(a, b)| (a - b).abs() <= 0.1 + 1e-6));
//! # Ok::<(), perturb::Error>(())
//! ```

use candle_core::{Device, Tensor};
use ndarray::{Array1, Array2, Array4, ArrayView1, ArrayView2, ArrayView4};

use crate::error::{Error, Result};
use crate::{Adversarial, Attack, Classifier, Goal};

/// A `[N, C, H, W]` tensor of the batch `x` on `device` (any memory layout of `x`).
///
/// # Errors
/// [`Error::Candle`] when the device cannot hold it.
pub fn to_tensor(x: ArrayView4<'_, f32>, device: &Device) -> Result<Tensor> {
    let (n, c, h, w) = x.dim();
    let data: Vec<f32> = x.iter().copied().collect();
    Ok(Tensor::from_vec(data, (n, c, h, w), device)?)
}

/// A `u32` `[N]` tensor of `labels` on `device`.
///
/// # Errors
/// [`Error::Candle`] when the device cannot hold it.
pub fn labels_to_tensor(labels: ArrayView1<'_, u32>, device: &Device) -> Result<Tensor> {
    let data: Vec<u32> = labels.iter().copied().collect();
    Ok(Tensor::from_vec(data, labels.len(), device)?)
}

/// A `[N, K]` tensor of `logits` on `device`.
///
/// # Errors
/// [`Error::Candle`] when the device cannot hold it.
pub fn logits_to_tensor(logits: ArrayView2<'_, f32>, device: &Device) -> Result<Tensor> {
    let data: Vec<f32> = logits.iter().copied().collect();
    Ok(Tensor::from_vec(data, logits.dim(), device)?)
}

/// The `[N, C, H, W]` `f32` tensor `t` as an array (copied to the host).
///
/// # Errors
/// [`Error::ShapeMismatch`] for another rank, [`Error::Candle`] for another dtype.
pub fn to_array4(t: &Tensor) -> Result<Array4<f32>> {
    let (n, c, h, w) = t
        .dims4()
        .map_err(|_| shape_error("batch", "[N, C, H, W]", t))?;
    let data = t.flatten_all()?.to_vec1::<f32>()?;
    Array4::from_shape_vec((n, c, h, w), data).map_err(|_| shape_error("batch", "[N, C, H, W]", t))
}

/// The `[N, K]` `f32` tensor `t` (logits) as an array.
///
/// # Errors
/// [`Error::ShapeMismatch`] for another rank, [`Error::Candle`] for another dtype.
pub fn to_array2(t: &Tensor) -> Result<Array2<f32>> {
    let (n, k) = t.dims2().map_err(|_| shape_error("logits", "[N, K]", t))?;
    let data = t.flatten_all()?.to_vec1::<f32>()?;
    Array2::from_shape_vec((n, k), data).map_err(|_| shape_error("logits", "[N, K]", t))
}

/// The `u32` `[N]` tensor `t` (labels or predictions) as an array.
///
/// # Errors
/// [`Error::ShapeMismatch`] for another rank, [`Error::Candle`] for another dtype.
pub fn to_labels(t: &Tensor) -> Result<Array1<u32>> {
    if t.rank() != 1 {
        return Err(shape_error("labels", "[N]", t));
    }
    Ok(Array1::from(t.to_vec1::<u32>()?))
}

fn shape_error(what: &'static str, expected: &str, t: &Tensor) -> Error {
    Error::ShapeMismatch {
        what,
        expected: expected.into(),
        got: t.dims().to_vec(),
    }
}

/// An attack's result on arrays: the adversarial batch, and the attack's full outcome
/// (success, predictions, norms, evaluation counts).
#[derive(Debug, Clone)]
pub struct ArrayAdversarial {
    /// The adversarial batch, `[N, C, H, W]`.
    pub x_adv: Array4<f32>,
    /// Everything else the attack reports (its `x_adv` is the same batch as a tensor).
    pub outcome: Adversarial,
}

/// Run `attack` untargeted on the batch `x` with true `labels`, on the CPU: the same result as
/// [`Attack::run`] on the equivalent tensors, bit for bit.
///
/// # Errors
/// As [`Attack::run`]: bad input, a model whose output is not `[N, K]`, a gradient attack on a
/// model without gradients ([`Error::NotDifferentiable`]).
pub fn run(
    attack: &dyn Attack,
    model: &dyn Classifier,
    x: ArrayView4<'_, f32>,
    labels: ArrayView1<'_, u32>,
) -> Result<ArrayAdversarial> {
    let device = Device::Cpu;
    let (x, y) = (to_tensor(x, &device)?, labels_to_tensor(labels, &device)?);
    let outcome = attack.run(model, &x, &Goal::untargeted(&y))?;
    Ok(ArrayAdversarial {
        x_adv: to_array4(&outcome.x_adv)?,
        outcome,
    })
}

/// What a [`FnClassifier`]'s function returns: the logits `[N, K]`, or its own error.
pub type FnLogits = std::result::Result<Array2<f32>, Box<dyn std::error::Error + Send + Sync>>;

/// A model that is only a function from a batch `[N, C, H, W]` (pixels in `[0, 1]`) to logits
/// `[N, K]`. It has no input gradient: gradient attacks refuse it with
/// [`Error::NotDifferentiable`], while black-box attacks
/// ([`Square`](crate::attack::Square)) attack it through its outputs alone, and examples crafted
/// on a differentiable surrogate can be transferred to it.
///
/// ```
/// use candle_core::{Device, Module};
/// use ndarray::{Array1, Array4};
/// use perturb::arrays::{self, FnClassifier};
/// use perturb::{attack::Square, zoo, Attack, Budget, Error, Pgd};
/// // any function of arrays; here the shipped linear model behind a conversion
/// let native = zoo::load("mnist-linear", &Device::Cpu)?;
/// let model = FnClassifier::new(move |x: ndarray::ArrayView4<'_, f32>| {
///     let logits = native.forward(&arrays::to_tensor(x, &Device::Cpu)?)?;
///     Ok(arrays::to_array2(&logits)?)
/// });
/// let x = Array4::<f32>::from_elem((1, 1, 28, 28), 0.5);
/// let y = Array1::from(vec![3u32]);
/// let pgd = Pgd::new(Budget::linf(0.1)?);
/// assert!(matches!(arrays::run(&pgd, &model, x.view(), y.view()), Err(Error::NotDifferentiable)));
/// let square = Square::new(Budget::linf(0.1)?).queries(50);
/// let adv = arrays::run(&square, &model, x.view(), y.view())?;
/// assert!(adv.outcome.forward_evals > 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct FnClassifier<F> {
    f: F,
}

impl<F> FnClassifier<F>
where
    F: Fn(ArrayView4<'_, f32>) -> FnLogits,
{
    /// Wrap `f`.
    pub fn new(f: F) -> Self {
        Self { f }
    }
}

impl<F> std::fmt::Debug for FnClassifier<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FnClassifier(..)")
    }
}

impl<F> Classifier for FnClassifier<F>
where
    F: Fn(ArrayView4<'_, f32>) -> FnLogits,
{
    fn logits(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let batch = to_array4(x).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let logits = (self.f)(batch.view())
            .map_err(|e| candle_core::Error::Msg(format!("the model function failed: {e}")))?;
        if logits.nrows() != batch.dim().0 {
            candle_core::bail!(
                "the model function returned {} rows of logits for a batch of {}",
                logits.nrows(),
                batch.dim().0
            )
        }
        logits_to_tensor(logits.view(), x.device())
            .map_err(|e| candle_core::Error::Msg(e.to_string()))
    }

    fn differentiable(&self) -> bool {
        false
    }
}
