//! Perturbation budgets: a norm, a radius ε and a pixel box.
//!
//! The norm owns its geometry, so an attack is written once for every norm: [`Budget::project`]
//! maps a point onto the intersection of the ε-ball around the clean input and the pixel box,
//! [`Budget::ascent_direction`] gives the steepest-ascent direction of unit length in the norm,
//! and [`Budget::random_start`] draws a uniform point of the ball.
//!
//! **Guarantee**: every point returned by `project` and `random_start` lies in the box, and its
//! distance to `x`, computed exactly (in `f64`) from the returned `f32` values, is at most ε
//! (the `f32` value of ε, exactly). For L∞ the bounds `x ± ε` are rounded toward `x` (a sum that
//! rounds past `x + ε` moves back one ulp; its error is found exactly by TwoSum), so a float64
//! recount never exceeds ε. For L2 and L1 the projection runs in `f64` onto a ball shrunk by
//! the worst-case rounding to `f32` (√D·2⁻²⁴ for L2, D·2⁻²⁴ for L1, relative to the box's
//! largest magnitude; 1.7e-6 and 4.7e-5 for MNIST).

mod geometry;
mod host;
mod noise;
mod seeds;

pub(crate) use geometry::check_sparsity;

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Tensor};
use rand::Rng;
use rand_distr::{Distribution, Exp1, StandardNormal};

use noise::Noise;
pub(crate) use seeds::SampleRngs;

use crate::error::{Error, Result};
use crate::validate::check_batch;

/// A vector norm for measuring perturbations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Norm {
    /// Largest absolute pixel change.
    Linf,
    /// Euclidean length of the change.
    L2,
    /// Sum of absolute pixel changes.
    L1,
}

impl fmt::Display for Norm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Norm::Linf => "linf",
            Norm::L2 => "l2",
            Norm::L1 => "l1",
        })
    }
}

impl FromStr for Norm {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "linf" | "l_inf" | "inf" | "l∞" => Ok(Norm::Linf),
            "l2" | "2" => Ok(Norm::L2),
            "l1" | "1" => Ok(Norm::L1),
            _ => Err(Error::InvalidParameter {
                name: "norm",
                value: s.to_string(),
                reason: "expected linf (inf), l2 (2) or l1 (1)",
            }),
        }
    }
}

/// A norm, a radius ε and the valid pixel box `[lo, hi]` (default `[0, 1]`).
///
/// ```
/// use perturb::{Budget, Norm};
/// let budget = Budget::linf(0.3)?;
/// assert_eq!((budget.norm(), budget.eps(), budget.bounds()), (Norm::Linf, 0.3, (0.0, 1.0)));
/// assert!(Budget::l2(-1.0).is_err());
/// # Ok::<(), perturb::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Budget {
    norm: Norm,
    eps: f32,
    lo: f32,
    hi: f32,
}

impl Budget {
    /// A budget of radius `eps` in `norm` with the pixel box `[0, 1]`.
    ///
    /// # Errors
    /// [`Error::InvalidEpsilon`] unless `eps` is positive and finite.
    pub fn new(norm: Norm, eps: f32) -> Result<Self> {
        if !(eps.is_finite() && eps > 0.0) {
            return Err(Error::InvalidEpsilon(eps));
        }
        Ok(Self {
            norm,
            eps,
            lo: 0.0,
            hi: 1.0,
        })
    }

    /// An L∞ budget: every pixel moves by at most `eps`.
    ///
    /// # Errors
    /// [`Error::InvalidEpsilon`] unless `eps` is positive and finite.
    pub fn linf(eps: f32) -> Result<Self> {
        Self::new(Norm::Linf, eps)
    }

    /// An L2 budget: the perturbation's Euclidean length is at most `eps`.
    ///
    /// # Errors
    /// [`Error::InvalidEpsilon`] unless `eps` is positive and finite.
    pub fn l2(eps: f32) -> Result<Self> {
        Self::new(Norm::L2, eps)
    }

    /// An L1 budget: the pixel changes sum to at most `eps`.
    ///
    /// # Errors
    /// [`Error::InvalidEpsilon`] unless `eps` is positive and finite.
    pub fn l1(eps: f32) -> Result<Self> {
        Self::new(Norm::L1, eps)
    }

    /// The same budget with the pixel box `[lo, hi]`.
    ///
    /// # Errors
    /// [`Error::InvalidBounds`] unless both are finite and `lo < hi`.
    pub fn with_bounds(self, lo: f32, hi: f32) -> Result<Self> {
        if !(lo.is_finite() && hi.is_finite() && lo < hi) {
            return Err(Error::InvalidBounds { lo, hi });
        }
        Ok(Self { lo, hi, ..self })
    }

    /// The norm.
    pub fn norm(&self) -> Norm {
        self.norm
    }

    /// The radius ε.
    pub fn eps(&self) -> f32 {
        self.eps
    }

    /// The pixel box `(lo, hi)`.
    pub fn bounds(&self) -> (f32, f32) {
        (self.lo, self.hi)
    }

    /// The same norm and box with another radius (for ε sweeps).
    ///
    /// # Errors
    /// [`Error::InvalidEpsilon`] unless `eps` is positive and finite.
    pub fn with_eps(self, eps: f32) -> Result<Self> {
        Ok(Self {
            eps: Self::new(self.norm, eps)?.eps,
            ..self
        })
    }

    /// Check that `x` is a valid batch for this budget: `[N, C, H, W]` `f32`, finite, in the box.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`], [`Error::DTypeMismatch`], [`Error::NonFinite`] or
    /// [`Error::PixelsOutOfRange`].
    pub fn check_input(&self, x: &Tensor) -> Result<()> {
        check_batch(x, self.lo, self.hi)
    }

    /// Per-sample distance `‖x_adv − x‖` in this budget's norm, computed in `f64`.
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use perturb::Budget;
    /// let x = Tensor::new(&[[[[0.0f32, 0.0]]]], &Device::Cpu)?;
    /// let x_adv = Tensor::new(&[[[[0.3f32, 0.4]]]], &Device::Cpu)?;
    /// let d = Budget::l2(1.0)?.distances(&x_adv, &x)?;
    /// assert!((d[0] - 0.5).abs() < 1e-6);
    /// # Ok::<(), perturb::Error>(())
    /// ```
    ///
    /// # Errors
    /// Shape errors from candle when the two tensors differ in shape.
    pub fn distances(&self, x_adv: &Tensor, x: &Tensor) -> Result<Vec<f32>> {
        if let Some(d) = self.distances_cpu(x_adv, x)? {
            return Ok(d);
        }
        let d = (x_adv.to_dtype(DType::F64)? - x.to_dtype(DType::F64)?)?.flatten_from(1)?;
        let per_sample = match self.norm {
            Norm::Linf => d.abs()?.max(1)?,
            Norm::L2 => d.sqr()?.sum(1)?.sqrt()?,
            Norm::L1 => d.abs()?.sum(1)?,
        };
        Ok(per_sample
            .to_vec1::<f64>()?
            .into_iter()
            .map(|v| v as f32)
            .collect())
    }

    /// A uniformly random point of the ε-ball around each sample, projected onto the box.
    ///
    /// The noise is drawn on the host, sample by sample and pixel by pixel, from a fast
    /// generator (eight xoshiro256+ streams) seeded by 32 draws from `rng`: the result depends
    /// only on `rng`'s state, never on the device or the thread count. L∞ draws each pixel
    /// uniformly from `[-ε, ε]` (24-bit resolution), L2 a Gaussian direction and a radius
    /// `ε·U^(1/d)`, L1 exponential spacings with random signs.
    ///
    /// ```
    /// use candle_core::{DType, Device, Tensor};
    /// use rand::{rngs::StdRng, SeedableRng};
    /// use perturb::Budget;
    /// let x = Tensor::full(0.5f32, (2, 1, 4, 4), &Device::Cpu)?;
    /// let budget = Budget::l2(0.5)?;
    /// let start = budget.random_start(&x, &mut StdRng::seed_from_u64(0))?;
    /// assert!(budget.distances(&start, &x)?.iter().all(|d| *d <= 0.5));
    /// # Ok::<(), perturb::Error>(())
    /// ```
    ///
    /// # Errors
    /// Candle errors only (the caller checks `x`).
    pub fn random_start<R: Rng + ?Sized>(&self, x: &Tensor, rng: &mut R) -> Result<Tensor> {
        Ok(self.random_start_variable(x, rng)?.detach())
    }

    /// [`Budget::random_start`], as a candle variable where the CPU pass made it (see
    /// [`Budget::step_variable`]).
    pub(crate) fn random_start_variable<R: Rng + ?Sized>(
        &self,
        x: &Tensor,
        rng: &mut R,
    ) -> Result<Tensor> {
        let mut noise = Noise::seeded(rng);
        if self.norm == Norm::Linf {
            let eps = self.eps;
            if let Some(start) = self.linf_start_cpu(x, &mut |u| noise.fill_symmetric(eps, u))? {
                return Ok(start);
            }
            let mut u = vec![0f32; x.elem_count()];
            noise.fill_symmetric(self.eps, &mut u);
            let u = Tensor::from_vec(u, x.shape(), x.device())?;
            return self.project(&(x + u)?, x);
        }
        let n = x.dim(0)?;
        let d = x.elem_count() / n.max(1);
        let mut delta = Vec::with_capacity(n * d);
        for _ in 0..n {
            self.ball_offset(d, &mut noise, &mut delta);
        }
        let delta = Tensor::from_vec(delta, x.shape(), x.device())?;
        let start = (x.to_dtype(DType::F64)? + delta)?.to_dtype(DType::F32)?;
        self.project(&start, x)
    }

    /// One uniformly random offset of the L2 or L1 ε-ball in `d` dimensions, appended to `out`:
    /// a Gaussian direction and a radius `ε·U^(1/d)` (L2), or exponential spacings with random
    /// signs (L1).
    fn ball_offset(&self, d: usize, noise: &mut Noise, out: &mut Vec<f64>) {
        let eps = f64::from(self.eps);
        if self.norm == Norm::L2 {
            let g: Vec<f64> = (0..d).map(|_| StandardNormal.sample(noise)).collect();
            let len = g
                .iter()
                .map(|v| v * v)
                .sum::<f64>()
                .sqrt()
                .max(f64::MIN_POSITIVE);
            let radius = eps * noise.random::<f64>().powf(1.0 / d as f64);
            out.extend(g.iter().map(|v| v / len * radius));
        } else {
            // Exponential spacings: (e_1..e_d) / sum(e_1..e_{d+1}) is uniform on the
            // simplex's interior, and random signs make it uniform in the L1 ball.
            let e: Vec<f64> = (0..=d).map(|_| Exp1.sample(noise)).collect();
            let total: f64 = e.iter().sum();
            for v in &e[..d] {
                let sign = if noise.random::<bool>() { 1.0 } else { -1.0 };
                out.push(sign * eps * v / total);
            }
        }
    }

    /// [`Budget::random_start`] of the rows of `x`, row `k` drawn from the generator of sample
    /// `rows[k]` alone ([`SampleRngs`]): a sample's start depends on its seed and pixels, never
    /// on the batch around it.
    pub(crate) fn random_start_rows(
        &self,
        x: &Tensor,
        rngs: &mut SampleRngs,
        rows: &[u32],
    ) -> Result<Tensor> {
        let n = x.dim(0)?;
        let d = x.elem_count() / n.max(1);
        let mut noises = Vec::with_capacity(rows.len());
        for &r in rows {
            noises.push(Noise::seeded(rngs.get(r as usize)?));
        }
        if self.norm == Norm::Linf {
            let mut u = vec![0f32; n * d];
            for (row, noise) in u.chunks_mut(d.max(1)).zip(&mut noises) {
                noise.fill_symmetric(self.eps, row);
            }
            let mut at = 0;
            let mut copy = |dst: &mut [f32]| {
                dst.copy_from_slice(&u[at..at + dst.len()]);
                at += dst.len();
            };
            if let Some(start) = self.linf_start_cpu(x, &mut copy)? {
                return Ok(start);
            }
            let u = Tensor::from_vec(u, x.shape(), x.device())?;
            return self.project(&(x + u)?, x);
        }
        let mut delta = Vec::with_capacity(n * d);
        for noise in &mut noises {
            self.ball_offset(d, noise, &mut delta);
        }
        let delta = Tensor::from_vec(delta, x.shape(), x.device())?;
        let start = (x.to_dtype(DType::F64)? + delta)?.to_dtype(DType::F32)?;
        self.project(&start, x)
    }
}
