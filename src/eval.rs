//! Running a classifier or an attack over a data set in batches.

use candle_core::Tensor;

use crate::attack::Attack;
use crate::data::batches;
use crate::error::{Error, Result};
use crate::goal::Goal;
use crate::model::{checked_logits, predictions, Classifier};

/// Predicted class of every sample of `images`, in batches of `batch_size`.
///
/// # Errors
/// [`Error::InvalidParameter`] for a zero batch size; a model whose output is not `[N, K]`.
pub fn predict(model: &dyn Classifier, images: &Tensor, batch_size: usize) -> Result<Vec<u32>> {
    let mut out = Vec::with_capacity(images.dim(0)?);
    for r in batches(images.dim(0)?, batch_size)? {
        let logits = checked_logits(model, &images.narrow(0, r.start, r.len())?)?;
        out.extend(predictions(&logits)?);
    }
    Ok(out)
}

/// Number of samples whose prediction equals its `u32` label.
///
/// # Errors
/// As [`predict`]; labels that are not `u32` `[N]`.
pub fn count_correct(
    model: &dyn Classifier,
    images: &Tensor,
    labels: &Tensor,
    batch_size: usize,
) -> Result<usize> {
    let pred = predict(model, images, batch_size)?;
    let truth = labels.to_vec1::<u32>()?;
    if truth.len() != pred.len() {
        return Err(Error::ShapeMismatch {
            what: "labels",
            expected: format!("[{}]", pred.len()),
            got: labels.dims().to_vec(),
        });
    }
    Ok(pred.iter().zip(&truth).filter(|(p, t)| p == t).count())
}

/// Number of samples an untargeted `attack` fails to fool, in batches of `batch_size`: the
/// robust accuracy's numerator (misclassified clean samples count as fooled).
///
/// # Errors
/// As [`predict`], plus the attack's errors.
pub fn count_robust(
    model: &dyn Classifier,
    attack: &dyn Attack,
    images: &Tensor,
    labels: &Tensor,
    batch_size: usize,
) -> Result<usize> {
    let mut robust = 0;
    for r in batches(images.dim(0)?, batch_size)? {
        let x = images.narrow(0, r.start, r.len())?;
        let y = labels.narrow(0, r.start, r.len())?;
        let adv = attack.run(model, &x, &Goal::untargeted(&y))?;
        robust += adv.success.iter().filter(|s| !**s).count();
    }
    Ok(robust)
}
