//! The L∞ random start and step, and per-sample distances, as single passes over contiguous
//! CPU `f32` data.
//!
//! For a small model an attack step costs as much as its gradient: composed from candle ops,
//! the L∞ step is eight tensor ops and their temporaries, and the distances five (two of them
//! `f64` conversions, one of candle's generic index reductions). Here each is one loop,
//! vectorised (AVX-512 / AVX2 where the CPU has them), writing into an output that is never
//! zeroed, with the composed ops' arithmetic element by element (the start and the step bit for
//! bit; the property tests compare both paths). The start and the step return candle
//! variables, so the next gradient takes them without the copy `Var::from_tensor` makes of any
//! other tensor.

use std::mem::MaybeUninit;

use candle_core::{Tensor, Var};

use super::{Budget, Norm};
use crate::error::Result;
use crate::simd::{multiversion, with_cpu_f32, written};

/// `1 − 2⁻²⁴`: multiplying a normal `f32` by it gives the neighbour toward zero, dividing by it
/// the neighbour away from zero (both exactly, with round-to-nearest).
pub(super) const SHRINK: f32 = 1.0 - 1.0 / 16_777_216.0;

/// The L∞ projection of one pixel: onto `[x − eps, x + eps] ∩ [lo, hi]`, with the bounds
/// `x ± eps` rounded toward `x` so that the result is within `eps` of `x` in exact arithmetic.
#[derive(Clone, Copy)]
struct Clamp {
    eps: f32,
    lo: f32,
    hi: f32,
}

impl Clamp {
    /// [`Budget::project`]'s arithmetic for one pixel `v` around the clean pixel `x`: the
    /// bounds `x ± eps` rounded toward `x` ([`toward`]) met with the box, then candle's maximum
    /// and minimum.
    #[inline(always)]
    fn apply(self, v: f32, x: f32) -> f32 {
        let lower = max(toward(x, -self.eps), self.lo);
        let upper = min(toward(x, self.eps), self.hi);
        min(max(v, lower), upper)
    }
}

/// `x + e` rounded toward `x`: the `f32` nearest to `x + e` when that lies between `x` and
/// `x + e` in exact arithmetic, otherwise its neighbour on `x`'s side.
///
/// The rounding error of the sum is found exactly by Knuth's TwoSum; a sum rounded past
/// `x + e` moves one ulp back, by [`SHRINK`] (never needed at zero or in the subnormal range,
/// where the sum is exact). [`Budget::project`]'s tensor path does the same operations.
#[inline(always)]
pub(super) fn toward(x: f32, e: f32) -> f32 {
    let s = x + e;
    let b = s - x;
    let err = (x - (s - b)) + (e - b);
    // Past the bound: above it for a positive `e` (the exact sum is below `s`), below it for a
    // negative one.
    let past = if e > 0.0 { err < 0.0 } else { err > 0.0 };
    // Down (toward −∞) for a positive `e`, up for a negative one.
    let toward_zero = (e > 0.0) == (s > 0.0);
    let moved = if toward_zero { s * SHRINK } else { s / SHRINK };
    if past {
        moved
    } else {
        s
    }
}

multiversion! {
    /// `out = clamp(a + (sign(g) · alpha + 0), x)`, element by element; the slots written.
    fn step_pass(
        out: &mut [MaybeUninit<f32>],
        a: &[f32],
        g: &[f32],
        x: &[f32],
        alpha: f32,
        clamp: Clamp,
    ) -> usize {
        for (((o, &a), &g), &x) in out.iter_mut().zip(a).zip(g).zip(x) {
            let sign = f32::from(g > 0.0) - f32::from(g < 0.0);
            o.write(clamp.apply(a + (sign * alpha + 0.0), x));
        }
        out.len().min(a.len()).min(g.len()).min(x.len())
    }
}

multiversion! {
    /// `out = clamp(x + u, x)`, element by element; the slots written.
    fn start_pass(out: &mut [MaybeUninit<f32>], x: &[f32], u: &[f32], clamp: Clamp) -> usize {
        for ((o, &x), &u) in out.iter_mut().zip(x).zip(u) {
            o.write(clamp.apply(x + u, x));
        }
        out.len().min(x.len()).min(u.len())
    }
}

impl Budget {
    fn clamp(&self) -> Clamp {
        Clamp {
            eps: self.eps,
            lo: self.lo,
            hi: self.hi,
        }
    }

    /// The L∞ random start, bit for bit `project(x + u, x)` for `u` the next `x.elem_count()`
    /// numbers `fill` writes, block by block in order (`noise.fill_symmetric(eps)`); `None` for
    /// tensors other than contiguous CPU `f32`, before any noise is drawn.
    pub(super) fn linf_start_cpu(
        &self,
        x: &Tensor,
        fill: &mut dyn FnMut(&mut [f32]),
    ) -> Result<Option<Tensor>> {
        /// Noise drawn per block: a multiple of the generator's 16 numbers per advance, so the
        /// blocks see the same stream as one fill of the whole batch.
        const BLOCK: usize = 1024;
        let clamp = self.clamp();
        let out = with_cpu_f32(&[x], |[x]| {
            // SAFETY: `start_pass` writes every slot of its zip over a block and returns that
            // zip's length; the blocks of `out` and `x` pair up one to one.
            unsafe {
                written(x.len(), |out| {
                    let mut u = [0f32; BLOCK];
                    let mut covered = 0;
                    for (o, x) in out.chunks_mut(BLOCK).zip(x.chunks(BLOCK)) {
                        let u = &mut u[..x.len()];
                        fill(u);
                        covered += start_pass(o, x, u, clamp);
                    }
                    covered
                })
            }
        });
        out.map(|v| variable(v, x)).transpose()
    }

    /// The L∞ [`Budget::step`] as one pass; `None` for tensors other than contiguous CPU `f32`
    /// of one shape.
    pub(super) fn linf_step_cpu(
        &self,
        x_adv: &Tensor,
        grad: &Tensor,
        x: &Tensor,
        alpha: f32,
    ) -> Result<Option<Tensor>> {
        if x_adv.dims() != x.dims() || grad.dims() != x.dims() {
            return Ok(None);
        }
        let clamp = self.clamp();
        let out = with_cpu_f32(&[x_adv, grad, x], |[a, g, x0]| {
            // SAFETY: `step_pass` writes every slot of its zip and returns that zip's length.
            unsafe { written(x0.len(), |out| step_pass(out, a, g, x0, alpha, clamp)) }
        });
        out.map(|v| variable(v, x)).transpose()
    }
}

multiversion! {
    /// Per-row distances in `norm` of rows of length `d` (at least 1), in `f64`: the largest
    /// absolute difference, the root of the summed squares, or the summed absolute differences
    /// (sums over eight interleaved partial sums, then those in order).
    fn distance_pass(a: &[f32], b: &[f32], d: usize, norm: Norm) -> Vec<f32> {
        match norm {
            Norm::Linf => fold_rows(a, b, d, |acc, v| acc.max(v.abs()), f64::max, |t| t),
            Norm::L2 => fold_rows(a, b, d, |acc, v| acc + v * v, |p, q| p + q, f64::sqrt),
            Norm::L1 => fold_rows(a, b, d, |acc, v| acc + v.abs(), |p, q| p + q, |t| t),
        }
    }
}

/// Per row of length `d`: `fold` over the differences in eight interleaved accumulators,
/// `combine`d, the row's tail folded in, then `finish`ed.
#[inline(always)]
fn fold_rows(
    a: &[f32],
    b: &[f32],
    d: usize,
    fold: impl Fn(f64, f64) -> f64,
    combine: impl Fn(f64, f64) -> f64,
    finish: impl Fn(f64) -> f64,
) -> Vec<f32> {
    const LANES: usize = 8;
    a.chunks_exact(d)
        .zip(b.chunks_exact(d))
        .map(|(ra, rb)| {
            let mut acc = [0f64; LANES];
            let (ca, cb) = (ra.chunks_exact(LANES), rb.chunks_exact(LANES));
            let (ta, tb) = (ca.remainder(), cb.remainder());
            for (pa, pb) in ca.zip(cb) {
                for i in 0..LANES {
                    acc[i] = fold(acc[i], f64::from(pa[i]) - f64::from(pb[i]));
                }
            }
            let mut total = acc.into_iter().fold(0.0, &combine);
            for (&p, &q) in ta.iter().zip(tb) {
                total = fold(total, f64::from(p) - f64::from(q));
            }
            finish(total) as f32
        })
        .collect()
}

impl Budget {
    /// [`Budget::distances`] as one pass; `None` for tensors other than contiguous CPU `f32` of
    /// one shape with at least one pixel per sample.
    pub(super) fn distances_cpu(&self, x_adv: &Tensor, x: &Tensor) -> Result<Option<Vec<f32>>> {
        let n = x.dim(0)?;
        let d = x.elem_count() / n.max(1);
        if x_adv.dims() != x.dims() || d == 0 {
            return Ok(None);
        }
        let norm = self.norm;
        Ok(with_cpu_f32(&[x_adv, x], |[a, b]| {
            distance_pass(a, b, d, norm)
        }))
    }
}

/// `data` as a candle variable of `like`'s shape and device.
fn variable(data: Vec<f32>, like: &Tensor) -> Result<Tensor> {
    Ok(Var::from_vec(data, like.shape(), like.device())?.into_inner())
}

/// candle's `maximum`, as its CPU kernel compares.
#[inline(always)]
fn max(a: f32, b: f32) -> f32 {
    if a < b {
        b
    } else {
        a
    }
}

/// candle's `minimum`, as its CPU kernel compares.
#[inline(always)]
fn min(a: f32, b: f32) -> f32 {
    if a > b {
        b
    } else {
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// `toward(x, e)` is the `f32` directed-rounded value of the exact `x + e` (toward `x`):
    /// on the right side of it, and its neighbour beyond `x + e` is on the other side. Exact
    /// sums in `f64` (both operands `f32` of nearby exponents) are the oracle; the cases cover
    /// every sign, both binades around powers of two and the bounds of the unit box.
    #[test]
    fn toward_rounds_the_bound_toward_x() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut cases = vec![
            (0.5f32, 0.2f32),
            (1.0, 0.1),
            (0.25, 0.25),
            (0.0, 0.1),
            (1.0, 1.0),
        ];
        for _ in 0..200_000 {
            let r = next();
            let x = (r % 2_000_001) as f32 / 1_000_000.0 - 1.0;
            let e = 10f32.powf(-(((r >> 24) % 4000) as f32) / 1000.0);
            let x = if r >> 60 == 0 {
                2f32.powi(-(((r >> 32) % 6) as i32))
            } else {
                x
            };
            cases.push((x, e));
        }
        for (x, e) in cases {
            for e in [e, -e] {
                let got = toward(x, e);
                let exact = f64::from(x) + f64::from(e);
                if e > 0.0 {
                    assert!(f64::from(got) <= exact, "{x} + {e}: {got} above {exact}");
                    assert!(
                        f64::from(got.next_up()) > exact,
                        "{x} + {e}: {got} not the nearest"
                    );
                } else {
                    assert!(f64::from(got) >= exact, "{x} + {e}: {got} below {exact}");
                    assert!(
                        f64::from(got.next_down()) < exact,
                        "{x} + {e}: {got} not the nearest"
                    );
                }
            }
        }
    }

    /// The host pass against the composed `f64` tensor ops, for every norm, for rows shorter
    /// than, equal to and longer than the eight accumulators, and row tails.
    #[test]
    fn distances_match_the_tensor_ops() -> Result<()> {
        for d in [1usize, 7, 8, 9, 17, 784] {
            let n = 3;
            let x: Vec<f32> = (0..n * d).map(|i| (i * 37 % 101) as f32 / 101.0).collect();
            let y: Vec<f32> = (0..n * d).map(|i| (i * 53 % 89) as f32 / 89.0).collect();
            let x = Tensor::from_vec(x, (n, d), &Device::Cpu)?;
            let y = Tensor::from_vec(y, (n, d), &Device::Cpu)?;
            let diff = (y.to_dtype(DType::F64)? - x.to_dtype(DType::F64)?)?;
            for norm in [Norm::Linf, Norm::L2, Norm::L1] {
                let got = Budget::new(norm, 1.0)?
                    .distances_cpu(&y, &x)?
                    .expect("cpu f32");
                let want: Vec<f64> = match norm {
                    Norm::Linf => diff.abs()?.max(1)?,
                    Norm::L2 => diff.sqr()?.sum(1)?.sqrt()?,
                    Norm::L1 => diff.abs()?.sum(1)?,
                }
                .to_vec1()?;
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        (f64::from(*g) - w).abs() <= 1e-6 * w.max(1.0),
                        "{norm} d {d}: {g} vs {w}"
                    );
                }
                if norm == Norm::Linf {
                    // a maximum is exact in any order
                    assert!(got.iter().zip(&want).all(|(g, w)| *g == *w as f32));
                }
            }
        }
        Ok(())
    }
}
