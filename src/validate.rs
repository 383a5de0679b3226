//! Input checks shared by every entry point: a batch is `[N, C, H, W]` `f32`, finite, inside the
//! pixel box.

use candle_core::{DType, Tensor};

use crate::error::{Error, Result};
use crate::simd::with_cpu_f32;

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
    if let Some(range) = host_range(&flat) {
        return range.ok_or(Error::NonFinite { what });
    }
    // x * 0 is NaN exactly where x is NaN or infinite, so one sum finds both.
    let poison = flat.affine(0.0, 0.0)?.sum_all()?.to_scalar::<f32>()?;
    if !poison.is_finite() {
        return Err(Error::NonFinite { what });
    }
    let min = flat.min(0)?.to_scalar::<f32>()?;
    let max = flat.max(0)?.to_scalar::<f32>()?;
    Ok((min, max))
}

/// On CPU, for contiguous `f32` data: `Some(Some((min, max)))`, or `Some(None)` when a value is
/// NaN or infinite, in one pass over the data in place (candle's `min` and `max` are generic
/// index reductions, and with the poison sum three passes cost 40 % of a small model's
/// gradient). `None` elsewhere: the tensor ops above decide.
fn host_range(t: &Tensor) -> Option<Option<(f32, f32)>> {
    with_cpu_f32(&[t], |[data]| {
        const LANES: usize = 16;
        let (mut lo, mut hi, mut poison) = (
            [f32::INFINITY; LANES],
            [f32::NEG_INFINITY; LANES],
            [0f32; LANES],
        );
        let mut chunks = data.chunks_exact(LANES);
        for chunk in &mut chunks {
            for i in 0..LANES {
                let v = chunk[i];
                lo[i] = if v < lo[i] { v } else { lo[i] };
                hi[i] = if v > hi[i] { v } else { hi[i] };
                // v · 0 is NaN exactly where v is NaN or infinite
                poison[i] += v * 0.0;
            }
        }
        let mut range = (f32::INFINITY, f32::NEG_INFINITY, 0f32);
        for &v in chunks.remainder() {
            range = (range.0.min(v), range.1.max(v), range.2 + v * 0.0);
        }
        for i in 0..LANES {
            range = (range.0.min(lo[i]), range.1.max(hi[i]), range.2 + poison[i]);
        }
        range.2.is_finite().then_some((range.0, range.1))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The host pass agrees with candle's reductions on every length (chunk body and remainder),
    /// on views with an offset, and finds NaN and ±∞ wherever they sit.
    #[test]
    fn host_range_matches_candle() -> Result<()> {
        let base: Vec<f32> = (0..200)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let all = Tensor::from_vec(base.clone(), 200, &Device::Cpu)?;
        for start in [0usize, 3] {
            for len in [1usize, 15, 16, 17, 64, 197] {
                let view = all.narrow(0, start, len)?;
                let got = host_range(&view).expect("cpu f32 view");
                let want = (
                    view.min(0)?.to_scalar::<f32>()?,
                    view.max(0)?.to_scalar::<f32>()?,
                );
                assert_eq!(got, Some(want), "start {start} len {len}");
                for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                    for at in [0, len / 2, len - 1] {
                        let mut v = base[start..start + len].to_vec();
                        v[at] = bad;
                        let t = Tensor::from_vec(v, len, &Device::Cpu)?;
                        assert_eq!(host_range(&t), Some(None), "{bad} at {at} of {len}");
                    }
                }
            }
        }
        Ok(())
    }
}
