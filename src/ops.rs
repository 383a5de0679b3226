//! Differentiable tensor helpers whose gradients candle gets wrong or does not have.

use candle_core::{Tensor, D};

/// Results of plain tensor helpers are candle's, so they also serve inside `Module` impls.
type Result<T> = candle_core::Result<T>;

/// Maximum over dimension `dim` (removed), with a true subgradient.
///
/// candle's `max` backward hands the full upstream gradient to *every* tied maximum, so k ties
/// receive k times the gradient. Here the forward value is candle's exact maximum and the
/// backward splits the gradient evenly among the ties, which is the gradient when the maximum is
/// unique and a valid subgradient otherwise.
pub fn max_dim(t: &Tensor, dim: usize) -> Result<Tensor> {
    let max = t.max_keepdim(dim)?.detach();
    let is_max = t.broadcast_eq(&max)?;
    let mask = is_max.to_dtype(t.dtype())?;
    let weights = mask.broadcast_div(&mask.sum_keepdim(dim)?)?.detach();
    // Entries that are not maxima (possibly -inf) are replaced by zeros before weighting, so that
    // no `-inf * 0` turns into NaN.
    let picked = is_max.where_cond(t, &t.zeros_like()?)?;
    // `surrogate` has the forward value of the maximum (up to rounding) and the gradient we want;
    // adding `surrogate - surrogate.detach()` (exactly zero) keeps the exact forward value.
    let surrogate = (picked * weights)?.sum_keepdim(dim)?;
    let out = max.add(&(&surrogate - surrogate.detach())?)?;
    out.squeeze(dim)
}

/// `log(sum(exp(t)))` over the last dimension (removed), stable for large logits.
pub fn log_sum_exp(t: &Tensor) -> Result<Tensor> {
    let m = t.max_keepdim(D::Minus1)?.detach();
    let s = t.broadcast_sub(&m)?.exp()?.sum_keepdim(D::Minus1)?.log()?;
    (s + m)?.squeeze(D::Minus1)
}

/// `t[i, classes[i]]` for a `[N, K]` tensor and `u32` classes `[N]`. candle's gather needs
/// contiguous operands, and a model's logits need not be (a narrowed or transposed output).
pub fn pick(t: &Tensor, classes: &Tensor) -> Result<Tensor> {
    t.contiguous()?
        .gather(&classes.contiguous()?.unsqueeze(1)?, 1)?
        .squeeze(1)
}

/// `max_{j != classes[i]} t[i, j]` for a `[N, K]` tensor with `K >= 2`.
pub fn max_other(t: &Tensor, classes: &Tensor) -> Result<Tensor> {
    let (n, k) = t.dims2()?;
    let range = Tensor::arange(0u32, k as u32, t.device())?.unsqueeze(0)?;
    let is_class = range.broadcast_eq(&classes.unsqueeze(1)?)?;
    let floor = Tensor::full(f32::NEG_INFINITY, (n, k), t.device())?.to_dtype(t.dtype())?;
    let others = is_class.where_cond(&floor, t)?;
    max_dim(&others, 1)
}
