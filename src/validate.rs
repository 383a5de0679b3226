//! Input checks shared by every entry point: a batch is `[N, C, H, W]` `f32`, finite, inside the
//! pixel box.

use candle_core::{DType, Tensor};

use crate::error::{Error, Result};

/// Check that `x` is a non-empty `[N, C, H, W]` `f32` batch of finite pixels inside `[lo, hi]`.
///
/// # Errors
/// [`Error::ShapeMismatch`], [`Error::DTypeMismatch`], [`Error::NonFinite`] or
/// [`Error::PixelsOutOfRange`].
pub fn check_batch(x: &Tensor, lo: f32, hi: f32) -> Result<()> {
    let dims = x.dims();
    if dims.len() != 4 || dims.contains(&0) {
        return Err(Error::ShapeMismatch {
            what: "input",
            expected: "[N, C, H, W] with every dimension >= 1".into(),
            got: dims.to_vec(),
        });
    }
    if x.dtype() != DType::F32 {
        return Err(Error::DTypeMismatch {
            what: "input",
            expected: "f32",
            got: x.dtype(),
        });
    }
    let (min, max) = finite_range("input", x)?;
    if min < lo || max > hi {
        return Err(Error::PixelsOutOfRange { min, max, lo, hi });
    }
    Ok(())
}

/// The smallest and largest value of a float tensor, or [`Error::NonFinite`] when it holds a NaN
/// or an infinity.
pub(crate) fn finite_range(what: &'static str, t: &Tensor) -> Result<(f32, f32)> {
    let flat = t.flatten_all()?.to_dtype(DType::F32)?;
    // x * 0 is NaN exactly where x is NaN or infinite, so one sum finds both.
    let poison = flat.affine(0.0, 0.0)?.sum_all()?.to_scalar::<f32>()?;
    if !poison.is_finite() {
        return Err(Error::NonFinite { what });
    }
    let min = flat.min(0)?.to_scalar::<f32>()?;
    let max = flat.max(0)?.to_scalar::<f32>()?;
    Ok((min, max))
}
