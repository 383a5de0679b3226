//! Projection onto ball ∩ box and steepest-ascent directions, per norm.
//!
//! L2 and L1 projections are exact Euclidean projections onto the intersection, found by
//! bisection on the Lagrange multiplier of the ball constraint (the box part is separable):
//! - L2: `δ = clip(s·u, a, b)` with the largest `s ∈ [0, 1]` such that `‖δ‖₂ ≤ r`;
//! - L1: `δ = sign(u)·clip(|u| − λ, 0, c)` with the smallest `λ ≥ 0` such that `‖δ‖₁ ≤ r`, where
//!   `c` is the room the box leaves in the direction of `u` (Croce & Hein 2021, arXiv:2103.01208).
//!
//! Here `u = v − x` is the requested step, `[a, b] = [lo − x, hi − x]` the box around `x`.

use candle_core::{DType, Tensor, D};

use super::host::SHRINK;
use super::{Budget, Norm};
use crate::error::{Error, Result};

/// Bisection steps: 2⁻⁴⁰ of the search interval, far below `f32` resolution.
const BISECTION_STEPS: usize = 40;
/// Unit roundoff of `f32`: rounding `t` to `f32` moves it by at most `|t|·2⁻²⁴`.
const F32_ROUNDOFF: f64 = 1.0 / 16_777_216.0;

impl Budget {
    /// Project `x_adv` onto the ε-ball around `x` intersected with the pixel box.
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use perturb::Budget;
    /// let x = Tensor::new(&[[[[0.5f32, 0.9]]]], &Device::Cpu)?;
    /// let far = Tensor::new(&[[[[0.0f32, 2.0]]]], &Device::Cpu)?;
    /// let p = Budget::linf(0.2)?.project(&far, &x)?;
    /// assert_eq!(p.flatten_all()?.to_vec1::<f32>()?, [0.3, 1.0]);
    /// # Ok::<(), perturb::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] when the two tensors differ in shape.
    pub fn project(&self, x_adv: &Tensor, x: &Tensor) -> Result<Tensor> {
        if x_adv.dims() != x.dims() || x.rank() == 0 {
            return Err(Error::ShapeMismatch {
                what: "x_adv",
                expected: format!("{:?} (the shape of x)", x.dims()),
                got: x_adv.dims().to_vec(),
            });
        }
        let (lo, hi) = (f64::from(self.lo), f64::from(self.hi));
        if self.norm == Norm::Linf {
            let lower = toward(x, -self.eps)?.maximum(lo)?;
            let upper = toward(x, self.eps)?.minimum(hi)?;
            return Ok(x_adv.maximum(&lower)?.minimum(&upper)?);
        }
        let shape = x.shape().clone();
        let n = x.dim(0)?;
        let dim = x.elem_count() / n.max(1);
        let x64 = x.to_dtype(DType::F64)?.reshape((n, dim))?;
        let u = (x_adv.to_dtype(DType::F64)?.reshape((n, dim))? - &x64)?;
        let a = x64.affine(-1.0, lo)?;
        let b = x64.affine(-1.0, hi)?;
        let scale = lo.abs().max(hi.abs());
        let delta = match self.norm {
            Norm::L2 => {
                let slack = (dim as f64).sqrt() * F32_ROUNDOFF * scale;
                project_l2(&u, &a, &b, self.radius(slack))?
            }
            _ => {
                let slack = dim as f64 * F32_ROUNDOFF * scale;
                project_l1(&u, &a, &b, self.radius(slack))?
            }
        };
        let out = (x64 + delta)?.clamp(lo, hi)?.to_dtype(DType::F32)?;
        Ok(out.reshape(shape)?)
    }

    /// One steepest-ascent step of length `alpha` from `x_adv` for the gradient `grad`, projected
    /// back onto the budget around `x`: `project(x_adv + alpha · ascent_direction(grad), x)`.
    ///
    /// For L∞ on contiguous CPU `f32` tensors the step runs as one vectorised pass over the
    /// data with the same arithmetic as the composed ops (bit for bit the same result) instead
    /// of eight tensor ops and their temporaries: for a small model these dominate an attack
    /// step.
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use perturb::Budget;
    /// let x = Tensor::new(&[[[[0.5f32, 0.95, 0.5]]]], &Device::Cpu)?;
    /// let g = Tensor::new(&[[[[-2.0f32, 3.0, 0.0]]]], &Device::Cpu)?;
    /// let s = Budget::linf(0.1)?.step(&x, &g, &x, 0.25, 0.0)?;
    /// assert_eq!(s.flatten_all()?.to_vec1::<f32>()?, [0.4, 1.0, 0.5]);
    /// # Ok::<(), perturb::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`Budget::ascent_direction`] and [`Budget::project`].
    pub fn step(
        &self,
        x_adv: &Tensor,
        grad: &Tensor,
        x: &Tensor,
        alpha: f32,
        l1_sparsity: f32,
    ) -> Result<Tensor> {
        Ok(self
            .step_variable(x_adv, grad, x, alpha, l1_sparsity)?
            .detach())
    }

    /// [`Budget::step`], as a candle variable where the CPU pass made it: the next gradient
    /// takes it without a copy (attacks detach their final result).
    pub(crate) fn step_variable(
        &self,
        x_adv: &Tensor,
        grad: &Tensor,
        x: &Tensor,
        alpha: f32,
        l1_sparsity: f32,
    ) -> Result<Tensor> {
        if self.norm == Norm::Linf {
            if let Some(out) = self.linf_step_cpu(x_adv, grad, x, alpha)? {
                return Ok(out);
            }
        }
        let dir = self.ascent_direction(grad, x_adv, l1_sparsity)?;
        self.project(&(x_adv + dir.affine(f64::from(alpha), 0.0)?)?, x)
    }

    /// The ball radius used in `f64`, shrunk by the worst-case rounding `slack`.
    fn radius(&self, slack: f64) -> f64 {
        (f64::from(self.eps) - slack).max(0.0)
    }

    /// The steepest-ascent direction of unit length in this norm for the gradient `grad` at
    /// `x_adv`: `sign(g)` for L∞, `g/‖g‖₂` for L2, and for L1 the sparse direction of SLIDE
    /// (Tramèr & Boneh 2019, arXiv:1904.13000): `sign(g)` on the `k` largest `|g|` among the
    /// coordinates the box still lets move that way, divided by `k`, where `k` keeps a fraction
    /// `1 − l1_sparsity` of the coordinates (at least one). A zero gradient gives a zero
    /// direction.
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use perturb::Budget;
    /// let g = Tensor::new(&[[[[3.0f32, -4.0]]]], &Device::Cpu)?;
    /// let x = Tensor::new(&[[[[0.5f32, 0.5]]]], &Device::Cpu)?;
    /// let d = Budget::l2(1.0)?.ascent_direction(&g, &x, 0.99)?;
    /// assert_eq!(d.flatten_all()?.to_vec1::<f32>()?, [0.6, -0.8]);
    /// # Ok::<(), perturb::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] for `l1_sparsity` outside `[0, 1)`; shape errors from candle.
    pub fn ascent_direction(
        &self,
        grad: &Tensor,
        x_adv: &Tensor,
        l1_sparsity: f32,
    ) -> Result<Tensor> {
        let shape = grad.shape().clone();
        let n = grad.dim(0)?;
        let dim = grad.elem_count() / n.max(1);
        let g = grad.reshape((n, dim))?;
        let dir = match self.norm {
            Norm::Linf => g.sign()?,
            Norm::L2 => {
                // Divide by the largest entry first so that tiny gradients do not underflow.
                let m = g
                    .abs()?
                    .max_keepdim(1)?
                    .maximum(f64::from(f32::MIN_POSITIVE))?;
                let g = g.broadcast_div(&m)?;
                // A zero row stays zero instead of 0/0.
                let tiny = f64::from(f32::MIN_POSITIVE);
                let len = g.sqr()?.sum_keepdim(1)?.sqrt()?.maximum(tiny)?;
                g.broadcast_div(&len)?
            }
            Norm::L1 => {
                check_sparsity(l1_sparsity)?;
                let x = x_adv.reshape((n, dim))?;
                let keep = ((1.0 - f64::from(l1_sparsity)) * dim as f64)
                    .round()
                    .max(1.0);
                self.sparse_l1_direction(&g, &x, keep)?
            }
        };
        Ok(dir.reshape(shape)?)
    }

    fn sparse_l1_direction(&self, g: &Tensor, x: &Tensor, keep: f64) -> Result<Tensor> {
        // A coordinate at the top of the box cannot move up, one at the bottom cannot move down.
        let blocked_up = x.ge(f64::from(self.hi))?.mul(&g.gt(0.0)?)?;
        let blocked_down = x.le(f64::from(self.lo))?.mul(&g.lt(0.0)?)?;
        let blocked = blocked_up.add(&blocked_down)?.gt(0u8)?;
        let g = blocked.where_cond(&g.zeros_like()?, g)?;
        let mag = g.abs()?;
        let count_at_least = |t: &Tensor| -> Result<Tensor> {
            Ok(mag.broadcast_ge(t)?.to_dtype(DType::F32)?.sum_keepdim(1)?)
        };
        // Largest threshold τ with at least `keep` coordinates |g| >= τ, by bisection in [0, max].
        let mut hi = mag.max_keepdim(1)?;
        let mut lo = hi.zeros_like()?;
        let top_ok = count_at_least(&hi)?.ge(keep)?;
        lo = top_ok.where_cond(&hi, &lo)?;
        for _ in 0..BISECTION_STEPS {
            let mid = ((&lo + &hi)? * 0.5)?;
            let ok = count_at_least(&mid)?.ge(keep)?;
            lo = ok.where_cond(&mid, &lo)?;
            hi = ok.where_cond(&hi, &mid)?;
        }
        let selected = mag
            .broadcast_ge(&lo)?
            .mul(&mag.gt(0.0)?)?
            .to_dtype(DType::F32)?;
        let count = selected.sum_keepdim(1)?.maximum(1.0)?;
        Ok(g.sign()?.mul(&selected)?.broadcast_div(&count)?)
    }
}

/// `x + e` rounded toward `x`, element by element: the host kernel's `toward` as tensor ops
/// (the same IEEE operations in the same order, so both paths agree bit for bit). TwoSum gives
/// the sum's exact rounding error; a sum rounded past `x + e` moves one ulp back toward `x`.
fn toward(x: &Tensor, e: f32) -> Result<Tensor> {
    let ef = f64::from(e);
    let s = x.affine(1.0, ef)?;
    let b = (&s - x)?;
    let err = (x - (&s - &b)?)?.add(&b.affine(-1.0, ef)?)?;
    let past = if e > 0.0 { err.lt(0.0)? } else { err.gt(0.0)? };
    let shrink = Tensor::new(SHRINK, x.device())?.to_dtype(x.dtype())?;
    let smaller = s.broadcast_mul(&shrink)?;
    let larger = s.broadcast_div(&shrink)?;
    // Toward zero when moving down from a positive sum or up from a negative one.
    let moved = if e > 0.0 {
        s.gt(0.0)?.where_cond(&smaller, &larger)?
    } else {
        s.gt(0.0)?.where_cond(&larger, &smaller)?
    };
    Ok(past.where_cond(&moved, &s)?)
}

/// Error unless the L1 sparsity lies in `[0, 1)`.
pub(crate) fn check_sparsity(s: f32) -> Result<()> {
    if !(s.is_finite() && (0.0..1.0).contains(&s)) {
        return Err(Error::InvalidParameter {
            name: "l1_sparsity",
            value: s.to_string(),
            reason: "must lie in [0, 1)",
        });
    }
    Ok(())
}

/// Exact projection of the step `u` onto `{δ : ‖δ‖₂ ≤ r, a ≤ δ ≤ b}`, rows independent, `f64`.
fn project_l2(u: &Tensor, a: &Tensor, b: &Tensor, r: f64) -> Result<Tensor> {
    let at = |s: &Tensor| -> Result<Tensor> { Ok(u.broadcast_mul(s)?.maximum(a)?.minimum(b)?) };
    let sq_norm = |d: &Tensor| -> Result<Tensor> { Ok(d.sqr()?.sum_keepdim(D::Minus1)?) };
    let full = u.maximum(a)?.minimum(b)?;
    let inside = sq_norm(&full)?.le(r * r)?;
    if all_true(&inside)? {
        return Ok(full);
    }
    let ones = inside.to_dtype(DType::F64)?.ones_like()?;
    let mut lo = inside.where_cond(&ones, &ones.zeros_like()?)?;
    let mut hi = ones;
    for _ in 0..BISECTION_STEPS {
        let mid = ((&lo + &hi)? * 0.5)?;
        let ok = sq_norm(&at(&mid)?)?.le(r * r)?;
        lo = ok.where_cond(&mid, &lo)?;
        hi = ok.where_cond(&hi, &mid)?;
    }
    at(&lo)
}

/// Exact projection of the step `u` onto `{δ : ‖δ‖₁ ≤ r, a ≤ δ ≤ b}`, rows independent, `f64`.
fn project_l1(u: &Tensor, a: &Tensor, b: &Tensor, r: f64) -> Result<Tensor> {
    let mag = u.abs()?;
    let sign = u.sign()?;
    // Room the box leaves in the direction of each coordinate's step.
    let room = u.gt(0.0)?.where_cond(b, &a.neg()?)?;
    let at = |lambda: &Tensor| -> Result<Tensor> {
        Ok(mag.broadcast_sub(lambda)?.maximum(0.0)?.minimum(&room)?)
    };
    let l1 = |m: &Tensor| -> Result<Tensor> { Ok(m.sum_keepdim(D::Minus1)?) };
    let full = mag.minimum(&room)?;
    let inside = l1(&full)?.le(r)?;
    if all_true(&inside)? {
        return Ok(sign.mul(&full)?);
    }
    // λ = 0 is infeasible for the outside rows, λ = max|u| is feasible for all.
    let mut hi = mag.max_keepdim(D::Minus1)?;
    let mut lo = hi.zeros_like()?;
    hi = inside.where_cond(&lo, &hi)?;
    for _ in 0..BISECTION_STEPS {
        let mid = ((&lo + &hi)? * 0.5)?;
        let ok = l1(&at(&mid)?)?.le(r)?;
        hi = ok.where_cond(&mid, &hi)?;
        lo = ok.where_cond(&lo, &mid)?;
    }
    Ok(sign.mul(&at(&hi)?)?)
}

fn all_true(mask: &Tensor) -> Result<bool> {
    Ok(mask.to_dtype(DType::U32)?.min_all()?.to_scalar::<u32>()? == 1)
}
