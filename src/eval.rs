//! Running a classifier or an attack over a data set in batches.

use candle_core::Tensor;

use crate::error::{Error, Result};
use crate::model::{checked_logits, predictions, Classifier};

/// Predicted class of every sample of `images`, in batches of `batch_size`.
///
/// # Errors
/// [`Error::InvalidParameter`] for a zero batch size; a model whose output is not `[N, K]`.
pub fn predict(model: &dyn Classifier, images: &Tensor, batch_size: usize) -> Result<Vec<u32>> {
    if batch_size == 0 {
        return Err(Error::InvalidParameter {
            name: "batch_size",
            value: "0".into(),
            reason: "must be at least 1",
        });
    }
    let n = images.dim(0)?;
    let mut out = Vec::with_capacity(n);
    let mut start = 0;
    while start < n {
        let len = batch_size.min(n - start);
        let logits = checked_logits(model, &images.narrow(0, start, len)?)?;
        out.extend(predictions(&logits)?);
        start += len;
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
