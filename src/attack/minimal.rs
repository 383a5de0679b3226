//! Pieces the minimum-norm attacks share (FAB, DeepFool, Carlini–Wagner, DDN): host copies of
//! rows in `f64`, and the end of a run — the closest adversarial point per sample, the clean
//! input where none was found, distances measured and `f32::INFINITY` where the model is not
//! fooled.

use candle_core::{DType, Device, Tensor};

use super::batch::Batch;
use super::rows::{scatter_rows, take_rows};
use super::Adversarial;
use crate::budget::Norm;
use crate::error::{Error, Result};
use crate::goal::ResolvedGoal;
use crate::model::Classifier;

/// A host buffer of `f64` values as an `f32` tensor of shape `dims` (the precision the model
/// sees).
pub(crate) fn host_tensor(v: &[f64], dims: &[usize], dev: &Device) -> Result<Tensor> {
    let v32: Vec<f32> = v.iter().map(|x| *x as f32).collect();
    Ok(Tensor::from_vec(v32, dims, dev)?)
}

/// The sign of `v`, 0 for 0 (`f64::signum` gives ±1 there): a coordinate with no gradient does
/// not move.
pub(crate) fn sign(v: f64) -> f64 {
    if v > 0.0 {
        1.0
    } else if v < 0.0 {
        -1.0
    } else {
        0.0
    }
}

/// `dims` with the batch dimension set to `m`.
pub(crate) fn with_rows(dims: &[usize], m: usize) -> Vec<usize> {
    let mut d = dims.to_vec();
    d[0] = m;
    d
}

/// The labels of an untargeted goal; attacks that look for the nearest misclassified point
/// refuse a targeted one with a typed error.
pub(crate) fn untargeted(batch: &Batch) -> Result<ResolvedGoal> {
    let labels = batch.goal().clone();
    if labels.is_targeted() {
        return Err(Error::InvalidParameter {
            name: "goal",
            value: "targeted".into(),
            reason: "the attack looks for the nearest misclassified point: give it labels (an untargeted goal)",
        });
    }
    Ok(labels)
}

/// End a minimum-norm run: rows with `found` take their point from `best_x` (host `f32`, the
/// batch's layout), the others keep the clean input; the batch judges and measures the result,
/// and every row the model does not misclassify gets the norm `f32::INFINITY`.
pub(crate) fn finish_minimal(
    batch: Batch,
    model: &dyn Classifier,
    norm: Norm,
    best_x: Vec<f32>,
    found: &[bool],
) -> Result<Adversarial> {
    let x = batch.x().clone();
    let dims = x.dims().to_vec();
    let all = Tensor::from_vec(best_x, dims.as_slice(), x.device())?.to_dtype(x.dtype())?;
    let rows: Vec<u32> = (0..found.len() as u32)
        .filter(|&i| found[i as usize])
        .collect();
    let x_adv = scatter_rows(&x, &rows, &take_rows(&all, &rows)?)?;
    let mut adv = batch.finish_norm(model, norm, x_adv, None)?;
    for (i, d) in adv.norms.iter_mut().enumerate() {
        if !adv.success[i] {
            *d = f32::INFINITY;
        }
    }
    Ok(adv)
}

/// A `[N, …]` tensor's rows on the host as `f32`.
pub(crate) fn host_rows(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
}
