//! Training a universal targeted patch with expectation over transformation, and measuring it
//! against a noise patch on held-out images.

use candle_core::{Tensor, Var};
use rand::{rngs::StdRng, Rng, SeedableRng};

use super::warp::{Region, Transforms};
use super::{check_images, paste, Patch, PatchShape, Placement};
use crate::attack::batch::check_count;
use crate::error::{Error, Result};
use crate::loss::Loss;
use crate::model::{checked_logits, predictions, Classifier};

/// How the patch pixels are updated from the gradient.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PatchOptimizer {
    /// Adam (Kingma & Ba 2015) with β = (0.9, 0.999) at learning rate `lr`.
    Adam {
        /// Step size.
        lr: f32,
    },
    /// Signed gradient descent: `P ← P − lr·sign(∇)`.
    Sign {
        /// Step size.
        lr: f32,
    },
}

/// Universal targeted adversarial patch (Brown et al. 2017, arXiv:1712.09665) trained with
/// expectation over transformation (Athalye et al. 2018, arXiv:1707.07397).
///
/// - **Step**: draw `batch_size` training images, paste the patch on each with its own random
///   placement in `region` and random [`Transforms`], and descend the mean targeted
///   cross-entropy (plus `tv_weight` × total variation, for smoother, printable patches) with
///   respect to the patch pixels only; clamp the patch to [0, 1].
/// - **Size**: `area`, a fraction of the image area; `shape` square or circle.
/// - **Arguments** (defaults): `steps` 500, `batch_size` 64, optimizer Adam lr 0.05, region
///   anywhere, no transforms, `tv_weight` 0, `seed` 0, square.
/// - **Inputs**: images `[N, C, H, W]` in [0, 1]; training uses every image (those of the
///   target class too: their loss is already low).
///
/// ```
/// use candle_core::{Device, Tensor};
/// use perturb::attack::PatchTrainer;
/// let model = |x: &Tensor| x.flatten_from(1)?.narrow(1, 0, 3); // logits = first 3 pixels
/// let x = Tensor::full(0.2f32, (4, 1, 4, 4), &Device::Cpu)?;
/// let trained = PatchTrainer::new(2, 0.25).steps(30).batch_size(4).train(&model, &x)?;
/// assert_eq!(trained.patch.side(), 2);
/// # Ok::<(), perturb::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PatchTrainer {
    target: u32,
    area: f32,
    shape: PatchShape,
    steps: usize,
    batch_size: usize,
    optimizer: PatchOptimizer,
    #[serde(skip)]
    region: Region,
    transforms: Transforms,
    tv_weight: f32,
    loss: Loss,
    seed: u64,
}

/// A trained patch and its training curve.
#[derive(Debug, Clone)]
pub struct PatchTraining {
    /// The patch.
    pub patch: Patch,
    /// Mean training loss per step (targeted cross-entropy, without the TV term).
    pub losses: Vec<f32>,
}

/// Targeted success of a patch on held-out images, beside a uniform-noise patch of the same
/// size at the same placements.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct PatchEvaluation {
    /// Images evaluated (true class ≠ target).
    pub images: usize,
    /// Share classified as the target with the trained patch.
    pub success_rate: f64,
    /// Share classified as the target with the noise patch.
    pub noise_success_rate: f64,
    /// Images classified as the target with the trained patch.
    pub successes: usize,
    /// Images classified as the target with the noise patch.
    pub noise_successes: usize,
    /// 95 % Wilson interval of `success_rate`.
    pub success_interval: crate::metrics::Interval,
    /// 95 % Wilson interval of `noise_success_rate`.
    pub noise_success_interval: crate::metrics::Interval,
}

/// Add uniform noise in `[-amount, amount]` to every pixel and clamp to [0, 1].
pub(crate) fn add_noise<R: Rng + ?Sized>(x: &Tensor, amount: f32, rng: &mut R) -> Result<Tensor> {
    if amount <= 0.0 {
        return Ok(x.clone());
    }
    let v: Vec<f32> = (0..x.elem_count())
        .map(|_| rng.random_range(-amount..=amount))
        .collect();
    let noise = Tensor::from_vec(v, x.dims(), x.device())?;
    Ok((x + noise)?.clamp(0f32, 1f32)?)
}

/// Mean absolute difference of neighbouring pixels, rows and columns.
fn total_variation(p: &Tensor) -> Result<Tensor> {
    let (_, h, w) = p.dims3()?;
    let dy = (p.narrow(1, 1, h - 1)? - p.narrow(1, 0, h - 1)?)?
        .abs()?
        .mean_all()?;
    let dx = (p.narrow(2, 1, w - 1)? - p.narrow(2, 0, w - 1)?)?
        .abs()?
        .mean_all()?;
    Ok((dy + dx)?)
}

impl PatchTrainer {
    /// A patch toward class `target` covering `area` (a fraction of the image) with defaults.
    pub fn new(target: u32, area: f32) -> Self {
        Self {
            target,
            area,
            shape: PatchShape::Square,
            steps: 500,
            batch_size: 64,
            optimizer: PatchOptimizer::Adam { lr: 0.05 },
            region: Region::Anywhere,
            transforms: Transforms::default(),
            tv_weight: 0.0,
            loss: Loss::CrossEntropy,
            seed: 0,
        }
    }

    /// Square (default) or circle.
    pub fn shape(mut self, shape: PatchShape) -> Self {
        self.shape = shape;
        self
    }

    /// Training steps (default 500).
    pub fn steps(mut self, steps: usize) -> Self {
        self.steps = steps;
        self
    }

    /// Images per step (default 64).
    pub fn batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size;
        self
    }

    /// Update rule (default Adam, lr 0.05).
    pub fn optimizer(mut self, optimizer: PatchOptimizer) -> Self {
        self.optimizer = optimizer;
        self
    }

    /// Where the patch may land (default anywhere).
    pub fn region(mut self, region: Region) -> Self {
        self.region = region;
        self
    }

    /// EOT ranges (default none).
    pub fn transforms(mut self, transforms: Transforms) -> Self {
        self.transforms = transforms;
        self
    }

    /// The targeted objective the patch descends: cross-entropy toward the target (default, as
    /// Brown et al.), or a Carlini–Wagner margin capped at κ, which stops pushing images that
    /// are already κ into the target class and spends the steps on the others.
    pub fn loss(mut self, loss: Loss) -> Self {
        self.loss = loss;
        self
    }

    /// Weight of the total-variation penalty (default 0).
    pub fn tv_weight(mut self, weight: f32) -> Self {
        self.tv_weight = weight;
        self
    }

    /// Seed of the initial patch, the batches and the transformations (default 0).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The patch side for images of `h × w`.
    ///
    /// # Errors
    /// As [`Patch::side_for_area`].
    pub fn side(&self, (h, w): (usize, usize)) -> Result<usize> {
        Patch::side_for_area(self.area, self.shape, (h, w))
    }

    fn check(&self, images: &Tensor) -> Result<(usize, usize, usize, usize)> {
        self.transforms.check()?;
        crate::validate::check_batch(images, 0.0, 1.0)?;
        let dims = images.dims4()?;
        let bad = |name, value: String, reason| {
            Err(Error::InvalidParameter {
                name,
                value,
                reason,
            })
        };
        check_count("steps", self.steps)?;
        check_count("batch_size", self.batch_size)?;
        let (PatchOptimizer::Adam { lr } | PatchOptimizer::Sign { lr }) = self.optimizer;
        if !(lr.is_finite() && lr > 0.0) {
            return bad("lr", lr.to_string(), "must be positive and finite");
        }
        if !(self.tv_weight.is_finite() && self.tv_weight >= 0.0) {
            return bad(
                "tv_weight",
                self.tv_weight.to_string(),
                "must be finite and >= 0",
            );
        }
        let side = self.side((dims.2, dims.3))?;
        if side as f32 * self.transforms.scale.1 > dims.2.min(dims.3) as f32 {
            return bad(
                "scale",
                self.transforms.scale.1.to_string(),
                "the scaled patch does not fit",
            );
        }
        Ok(dims)
    }

    /// Train the patch on `images` (`[N, C, H, W]` in [0, 1]).
    ///
    /// # Errors
    /// Invalid parameters or images (an empty data set included), a target the model does not
    /// have, a model whose output is not `[N, K]`.
    pub fn train(&self, model: &dyn Classifier, images: &Tensor) -> Result<PatchTraining> {
        crate::model::require_gradient(model)?;
        let (n, c, h, w) = self.check(images)?;
        let side = self.side((h, w))?;
        let dev = images.device();
        let mut rng = StdRng::seed_from_u64(self.seed);
        let init = Patch::noise(c, side, self.shape, rng.random(), dev)?;
        let mask = init.mask.clone();
        let var = Var::from_tensor(&init.pixels)?;
        let (mut m, mut v) = (vec![0f32; c * side * side], vec![0f32; c * side * side]);
        let mut losses = Vec::with_capacity(self.steps);
        for step in 1..=self.steps {
            let batch: Vec<u32> = (0..self.batch_size.min(n))
                .map(|_| rng.random_range(0..n as u32))
                .collect();
            let x = images.index_select(&Tensor::new(batch.as_slice(), dev)?, 0)?;
            let draws = (0..batch.len())
                .map(|_| {
                    self.transforms
                        .draw(&mut rng, self.region, (side, side), (h, w))
                })
                .collect::<Result<Vec<_>>>()?;
            let x = paste(&x, var.as_tensor(), &mask, &draws)?;
            let x = add_noise(&x, self.transforms.noise, &mut rng)?;
            let logits = checked_logits(model, &x)?;
            let classes = logits.dims2()?.1;
            if self.target as usize >= classes {
                return Err(Error::LabelOutOfRange {
                    what: "targets",
                    index: 0,
                    class: i64::from(self.target),
                    classes,
                });
            }
            let targets = Tensor::full(self.target, batch.len(), dev)?;
            // the objective is ascended by attacks; a targeted patch descends its negation
            let ce = self
                .loss
                .objective(&logits, &targets, true)?
                .neg()?
                .mean_all()?;
            losses.push(ce.to_scalar::<f32>()?);
            let total = if self.tv_weight > 0.0 {
                (&ce + (total_variation(var.as_tensor())? * f64::from(self.tv_weight))?)?
            } else {
                ce
            };
            let grads = total.backward()?;
            let g = grads
                .get(var.as_tensor())
                .ok_or(Error::GradientMissing)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let mut p = var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
            match self.optimizer {
                PatchOptimizer::Sign { lr } => {
                    for (p, g) in p.iter_mut().zip(&g) {
                        *p -= lr * g.signum() * f32::from(u8::from(*g != 0.0));
                    }
                }
                PatchOptimizer::Adam { lr } => {
                    let (b1, b2, eps) = (0.9f32, 0.999f32, 1e-8f32);
                    let (c1, c2) = (1.0 - b1.powi(step as i32), 1.0 - b2.powi(step as i32));
                    for i in 0..p.len() {
                        m[i] = b1 * m[i] + (1.0 - b1) * g[i];
                        v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
                        p[i] -= lr * (m[i] / c1) / ((v[i] / c2).sqrt() + eps);
                    }
                }
            }
            for p in p.iter_mut() {
                *p = p.clamp(0.0, 1.0);
            }
            var.set(&Tensor::from_vec(p, (c, side, side), dev)?)?;
        }
        let patch = Patch::new(var.as_tensor().detach(), self.shape)?;
        Ok(PatchTraining { patch, losses })
    }

    /// Targeted success of `patch` on the images whose label is not the target, each patched
    /// once at a placement drawn (with `seed`) from this attack's region and rotation/scale
    /// ranges, beside a uniform-noise patch at the same placements.
    ///
    /// # Errors
    /// Invalid images or labels, no image of another class than the target, the patch errors of
    /// [`apply_patch`](super::apply_patch).
    pub fn evaluate(
        &self,
        model: &dyn Classifier,
        patch: &Patch,
        images: &Tensor,
        labels: &Tensor,
        seed: u64,
    ) -> Result<PatchEvaluation> {
        let (_, c, h, w) = check_images(images, patch)?;
        let keep: Vec<u32> = labels
            .to_vec1::<u32>()?
            .iter()
            .enumerate()
            .filter(|(_, &l)| l != self.target)
            .map(|(i, _)| i as u32)
            .collect();
        if keep.is_empty() {
            return Err(Error::InvalidParameter {
                name: "labels",
                value: format!("all {}", self.target),
                reason: "needs images of another class than the target",
            });
        }
        let dev = images.device();
        let x = images.index_select(&Tensor::new(keep.as_slice(), dev)?, 0)?;
        let mut rng = StdRng::seed_from_u64(seed);
        let s = patch.side();
        let geometry = Transforms {
            brightness: 0.0,
            contrast: 0.0,
            noise: 0.0,
            ..self.transforms
        };
        let placements: Vec<Placement> = (0..keep.len())
            .map(|_| {
                Ok(geometry
                    .draw(&mut rng, self.region, (s, s), (h, w))?
                    .placement)
            })
            .collect::<Result<_>>()?;
        let noise = Patch::noise(c, s, patch.shape, seed ^ 0x006e_6f69_7365, dev)?;
        let hits = |p: &Patch| -> Result<usize> {
            let mut hits = 0usize;
            for r in crate::data::batches(keep.len(), 256)? {
                let xb = x.narrow(0, r.start, r.len())?;
                let patched = super::apply_patch(p, &xb, &placements[r])?;
                let pred = predictions(&checked_logits(model, &patched)?)?;
                hits += pred.iter().filter(|&&p| p == self.target).count();
            }
            Ok(hits)
        };
        let (successes, noise_successes) = (hits(patch)?, hits(&noise)?);
        let n = keep.len();
        let ci = crate::metrics::IntervalSpec::default();
        Ok(PatchEvaluation {
            images: n,
            success_rate: successes as f64 / n as f64,
            noise_success_rate: noise_successes as f64 / n as f64,
            successes,
            noise_successes,
            success_interval: ci.interval(successes, n),
            noise_success_interval: ci.interval(noise_successes, n),
        })
    }
}
