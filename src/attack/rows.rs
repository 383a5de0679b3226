//! Row selection for attacks that drop finished samples from the batch: exact copies, no
//! arithmetic.

use candle_core::Tensor;

use crate::error::Result;
use crate::goal::ResolvedGoal;

/// Rows `rows` of `t` (no copy when `rows` is all of them, in order).
pub(crate) fn take_rows(t: &Tensor, rows: &[u32]) -> Result<Tensor> {
    if is_identity(rows, t.dim(0)?) {
        return Ok(t.clone());
    }
    if rows.is_empty() {
        // an empty view: CUDA refuses to launch an index_select over no rows
        return Ok(t.narrow(0, 0, 0)?);
    }
    let idx = Tensor::from_slice(rows, rows.len(), t.device())?;
    Ok(t.index_select(&idx, 0)?)
}

/// Rows `rows` of a batch and of its goal.
pub(crate) fn select_rows(
    t: &Tensor,
    goal: &ResolvedGoal,
    rows: &[u32],
) -> Result<(Tensor, ResolvedGoal)> {
    if is_identity(rows, t.dim(0)?) {
        return Ok((t.clone(), goal.clone()));
    }
    let idx = Tensor::from_slice(rows, rows.len(), t.device())?;
    Ok((t.index_select(&idx, 0)?, goal.select(rows, &idx)?))
}

/// `base` with rows `rows` replaced by the rows of `values`, bit for bit.
pub(crate) fn scatter_rows(base: &Tensor, rows: &[u32], values: &Tensor) -> Result<Tensor> {
    let n = base.dim(0)?;
    if is_identity(rows, n) {
        return Ok(values.clone());
    }
    if rows.is_empty() {
        return Ok(base.clone());
    }
    let idx = Tensor::from_slice(rows, rows.len(), base.device())?;
    let placed = base.zeros_like()?.index_add(&idx, values, 0)?;
    let mut mask = vec![0u8; n];
    for &r in rows {
        mask[r as usize] = 1;
    }
    let mut mask_shape = vec![1; base.rank()];
    mask_shape[0] = n;
    let mask = Tensor::from_vec(mask, mask_shape, base.device())?.broadcast_as(base.shape())?;
    Ok(mask.where_cond(&placed, base)?)
}

fn is_identity(rows: &[u32], n: usize) -> bool {
    rows.len() == n && rows.iter().enumerate().all(|(i, &r)| r as usize == i)
}
