//! Universal adversarial patches (Brown et al. 2017, arXiv:1712.09665) trained with expectation
//! over transformation (Athalye et al. 2018, arXiv:1707.07397): a [`Patch`], pasting it
//! ([`paste`], [`apply`]), applying a saved patch as an [`Attack`] ([`PatchApplication`]), and
//! training one ([`PatchTrainer`]).

mod train;
mod warp;

pub use train::{PatchEvaluation, PatchOptimizer, PatchTrainer, PatchTraining};
pub use warp::{Placement, Region, Transforms};

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use rand::{rngs::StdRng, Rng, SeedableRng};

use super::batch::{Batch, CleanLogits, GradientCheckMode};
use super::{Adversarial, Attack, Threat};
use crate::budget::{Budget, Norm};
use crate::error::{Error, Result};
use crate::goal::Goal;
use crate::loss::Loss;
use crate::model::Classifier;
use warp::{warp, Draw};

/// Outline of a patch inside its square of pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PatchShape {
    /// Every pixel of the square.
    Square,
    /// The disc inscribed in the square (pixels whose centre lies inside it).
    Circle,
}

/// A patch: pixels `[C, s, s]` in `[0, 1]` and a mask of the same side (1 inside the shape).
#[derive(Debug, Clone)]
pub struct Patch {
    pixels: Tensor,
    mask: Vec<f32>,
    shape: PatchShape,
}

fn shape_mask(side: usize, shape: PatchShape) -> Vec<f32> {
    let r = side as f32 / 2.0;
    (0..side * side)
        .map(|q| {
            let (i, j) = ((q / side) as f32 + 0.5 - r, (q % side) as f32 + 0.5 - r);
            match shape {
                PatchShape::Square => 1.0,
                PatchShape::Circle => f32::from(u8::from(i * i + j * j <= r * r)),
            }
        })
        .collect()
}

impl Patch {
    /// Side in pixels of a patch covering `area` (a fraction in (0, 1]) of an `h × w` image.
    ///
    /// ```
    /// use perturb::attack::{Patch, PatchShape};
    /// assert_eq!(Patch::side_for_area(0.154, PatchShape::Square, (28, 28))?, 11);
    /// assert!(Patch::side_for_area(0.0, PatchShape::Square, (28, 28)).is_err());
    /// # Ok::<(), perturb::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] for an area outside (0, 1] or a patch that cannot fit.
    pub fn side_for_area(area: f32, shape: PatchShape, (h, w): (usize, usize)) -> Result<usize> {
        if !(area.is_finite() && area > 0.0 && area <= 1.0) {
            return Err(Error::InvalidParameter {
                name: "area",
                value: area.to_string(),
                reason: "must lie in (0, 1]",
            });
        }
        let pixels = f64::from(area) * (h * w) as f64;
        let side = match shape {
            PatchShape::Square => pixels.sqrt(),
            PatchShape::Circle => 2.0 * (pixels / std::f64::consts::PI).sqrt(),
        }
        .round()
        .max(1.0) as usize;
        if side > h.min(w) {
            return Err(Error::InvalidParameter {
                name: "area",
                value: area.to_string(),
                reason: "the patch does not fit inside the image",
            });
        }
        Ok(side)
    }

    /// A patch from pixels `[C, s, s]` (`f32`, finite, in [0, 1]).
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`], [`Error::DTypeMismatch`], [`Error::NonFinite`] or
    /// [`Error::PixelsOutOfRange`].
    pub fn new(pixels: Tensor, shape: PatchShape) -> Result<Self> {
        let dims = pixels.dims().to_vec();
        if dims.len() != 3 || dims[1] != dims[2] || dims[1] == 0 || dims[0] == 0 {
            return Err(Error::ShapeMismatch {
                what: "patch",
                expected: "[C, s, s] with s >= 1".into(),
                got: dims,
            });
        }
        if pixels.dtype() != DType::F32 {
            return Err(Error::DTypeMismatch {
                what: "patch",
                expected: "f32",
                got: pixels.dtype(),
            });
        }
        let (min, max) = crate::validate::finite_range("patch", &pixels)?;
        if min < 0.0 || max > 1.0 {
            return Err(Error::PixelsOutOfRange {
                min,
                max,
                lo: 0.0,
                hi: 1.0,
            });
        }
        let mask = shape_mask(dims[1], shape);
        Ok(Self {
            pixels,
            mask,
            shape,
        })
    }

    /// A patch of uniform noise (the baseline a trained patch must beat).
    ///
    /// # Errors
    /// A candle failure.
    pub fn noise(
        channels: usize,
        side: usize,
        shape: PatchShape,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let mut rng = StdRng::seed_from_u64(seed);
        let v: Vec<f32> = (0..channels * side * side)
            .map(|_| rng.random::<f32>())
            .collect();
        Self::new(Tensor::from_vec(v, (channels, side, side), device)?, shape)
    }

    /// The pixels, `[C, s, s]`.
    pub fn pixels(&self) -> &Tensor {
        &self.pixels
    }

    /// Side length in pixels.
    pub fn side(&self) -> usize {
        self.pixels.dims()[1]
    }

    /// The outline.
    pub fn shape(&self) -> PatchShape {
        self.shape
    }

    /// The mask, `s·s` values (1 inside the outline, 0 outside), row-major.
    pub fn mask(&self) -> &[f32] {
        &self.mask
    }

    /// Save the pixels as a lossless PNG, each pixel drawn as a `scale × scale` block (what a
    /// person would print; pixels outside a circle's outline are saved as they are).
    ///
    /// # Errors
    /// [`Error::Io`] when the file cannot be written.
    pub fn save_png(&self, path: impl AsRef<Path>, scale: u32) -> Result<()> {
        crate::data::save_png(&self.pixels, path, scale)
    }

    /// Load a patch saved by [`Patch::save_png`] at scale 1 (any `s × s` grey or RGB PNG).
    ///
    /// # Errors
    /// [`Error::Io`] or [`Error::Data`] for an unreadable image, [`Error::ShapeMismatch`] for
    /// a non-square one.
    pub fn load_png(
        path: impl AsRef<Path>,
        channels: usize,
        shape: PatchShape,
        device: &Device,
    ) -> Result<Self> {
        let path = path.as_ref();
        let (w, h) = image::image_dimensions(path).map_err(|e| Error::Data {
            file: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let t = crate::data::load_image(path, channels, h as usize, w as usize, device)?;
        Self::new(t, shape)
    }

    /// Save as safetensors: `patch` (`[C, s, s]` f32) and `mask` (`[s, s]` f32).
    ///
    /// # Errors
    /// [`Error::Io`] when the file cannot be written.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let s = self.side();
        let mut t = std::collections::HashMap::new();
        t.insert("patch".to_string(), self.pixels.to_device(&Device::Cpu)?);
        t.insert(
            "mask".to_string(),
            Tensor::from_vec(self.mask.clone(), (s, s), &Device::Cpu)?,
        );
        crate::zoo::save(&t, path.as_ref())
    }

    /// Load a patch saved by [`Patch::save`]; the shape is recovered from the mask.
    ///
    /// # Errors
    /// [`Error::Io`] or [`Error::Weights`] for a missing or malformed file, and the errors of
    /// [`Patch::new`].
    pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let path = path.as_ref();
        let bad = |reason: String| Error::Weights {
            file: path.to_path_buf(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            file: path.to_path_buf(),
            source,
        })?;
        let t = candle_core::safetensors::load_buffer(&bytes, device)
            .map_err(|e| bad(e.to_string()))?;
        let pixels = t
            .get("patch")
            .ok_or_else(|| bad("no tensor `patch`".into()))?;
        let mask = t
            .get("mask")
            .ok_or_else(|| bad("no tensor `mask`".into()))?;
        let mask = mask.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let shape = if mask.iter().all(|m| *m == 1.0) {
            PatchShape::Square
        } else {
            PatchShape::Circle
        };
        let patch = Self::new(pixels.clone(), shape)?;
        if patch.mask != mask {
            return Err(bad(
                "mask is neither a square nor the inscribed circle".into()
            ));
        }
        Ok(patch)
    }
}

/// Check that `images` is a valid batch for pasting `patch` on it.
fn check_images(images: &Tensor, patch: &Patch) -> Result<(usize, usize, usize, usize)> {
    crate::validate::check_batch(images, 0.0, 1.0)?;
    let (b, c, h, w) = images.dims4()?;
    let (pc, s) = (patch.pixels.dims()[0], patch.side());
    if pc != c {
        return Err(Error::ShapeMismatch {
            what: "patch",
            expected: format!("[{c}, s, s] (the images' channels)"),
            got: patch.pixels.dims().to_vec(),
        });
    }
    if s > h.min(w) {
        return Err(Error::InvalidParameter {
            name: "patch",
            value: format!("side {s}"),
            reason: "the patch is larger than the image",
        });
    }
    Ok((b, c, h, w))
}

/// Paste `pixels` (`[C, s, s]`, may be a variable: the result is differentiable with respect to
/// it) with `mask` on every image of `images` (`[B, C, H, W]`) as `draws` say, one per image.
/// Where the mask is 1 the image pixel becomes the (bilinearly sampled, colour-adjusted) patch,
/// where it is 0 it stays; edges blend by coverage.
pub(crate) fn paste(
    images: &Tensor,
    pixels: &Tensor,
    mask: &[f32],
    draws: &[Draw],
) -> Result<Tensor> {
    let (b, c, h, w) = images.dims4()?;
    let s = pixels.dims()[1];
    let hw = h * w;
    let dev = images.device();
    let mut idx: [Vec<u32>; 4] = std::array::from_fn(|_| Vec::with_capacity(b * hw));
    let mut wt: [Vec<f32>; 4] = std::array::from_fn(|_| Vec::with_capacity(b * hw));
    let mut coverage = Vec::with_capacity(b * hw);
    let (mut gain, mut shift) = (Vec::with_capacity(b * hw), Vec::with_capacity(b * hw));
    for d in draws {
        let map = warp(&d.placement, (s, s), mask, (h, w));
        for k in 0..4 {
            idx[k].extend_from_slice(&map.idx[k]);
            wt[k].extend_from_slice(&map.weight[k]);
        }
        coverage.extend_from_slice(&map.coverage);
        gain.extend(std::iter::repeat_n(d.contrast, hw));
        shift.extend(std::iter::repeat_n(
            d.brightness + 0.5 - 0.5 * d.contrast,
            hw,
        ));
    }
    let recolour = draws
        .iter()
        .any(|d| d.contrast != 1.0 || d.brightness != 0.0);
    let flat = pixels.reshape((c, s * s))?;
    let mut sampled: Option<Tensor> = None;
    for k in 0..4 {
        let taps = flat.index_select(&Tensor::new(idx[k].as_slice(), dev)?, 1)?;
        let weights = Tensor::from_vec(std::mem::take(&mut wt[k]), (1, b * hw), dev)?;
        let term = taps.broadcast_mul(&weights)?;
        sampled = Some(match sampled {
            None => term,
            Some(acc) => (acc + term)?,
        });
    }
    let sampled = sampled.ok_or_else(|| Error::InvalidParameter {
        name: "draws",
        value: "[]".into(),
        reason: "needs one draw per image",
    })?;
    let cov = Tensor::from_vec(coverage, (1, b * hw), dev)?;
    let pasted = if recolour {
        // colour = clamp(contrast·(q − ½) + ½ + brightness), q the un-premultiplied sample
        let q = sampled.broadcast_div(&cov.clamp(1e-6f32, f32::MAX)?)?;
        let g = Tensor::from_vec(gain, (1, b * hw), dev)?;
        let t = Tensor::from_vec(shift, (1, b * hw), dev)?;
        q.broadcast_mul(&g)?
            .broadcast_add(&t)?
            .clamp(0f32, 1f32)?
            .broadcast_mul(&cov)?
    } else {
        sampled
    };
    let pasted = pasted.reshape((c, b, h, w))?.permute((1, 0, 2, 3))?;
    let keep = cov.affine(-1.0, 1.0)?.reshape((b, 1, h, w))?;
    Ok(images.broadcast_mul(&keep)?.add(&pasted)?)
}

/// A placement of a `side × side` patch on an `h × w` image drawn as training draws them: in
/// `region`, with scale and rotation from `transforms` (colour changes are not placements).
///
/// ```
/// use perturb::attack::{random_placement, Region, Transforms};
/// use rand::SeedableRng;
/// let mut rng = rand::rngs::StdRng::seed_from_u64(0);
/// let p = random_placement(&mut rng, 8, (28, 28), Region::Anywhere, Transforms::default())?;
/// assert!(p.cy >= 4.0 && p.cy <= 24.0 && p.scale == 1.0);
/// # Ok::<(), perturb::Error>(())
/// ```
///
/// # Errors
/// [`Error::InvalidParameter`] for invalid ranges or a region the patch does not fit.
pub fn random_placement<R: Rng + ?Sized>(
    rng: &mut R,
    side: usize,
    image: (usize, usize),
    region: Region,
    transforms: Transforms,
) -> Result<Placement> {
    transforms.check()?;
    Ok(transforms.draw(rng, region, (side, side), image)?.placement)
}

/// Paste `patch` on every image of `images` (`[B, C, H, W]` in [0, 1]) at `placements` (one
/// per image), without colour changes: usable without training, e.g. to test a model against a
/// saved patch. With [`Placement::at`] the paste is exact: patch pixels where the mask is 1,
/// image pixels elsewhere.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use perturb::attack::{apply_patch, Patch, PatchShape, Placement};
/// let dev = Device::Cpu;
/// let patch = Patch::new(Tensor::ones((1, 2, 2), candle_core::DType::F32, &dev)?, PatchShape::Square)?;
/// let images = Tensor::zeros((1, 1, 4, 4), candle_core::DType::F32, &dev)?;
/// let out = apply_patch(&patch, &images, &[Placement::at(1, 2, (2, 2))])?;
/// let row1 = out.get(0)?.get(0)?.get(1)?.to_vec1::<f32>()?;
/// assert_eq!(row1, [0.0, 0.0, 1.0, 1.0]);
/// # Ok::<(), perturb::Error>(())
/// ```
///
/// # Errors
/// Invalid images ([`check_batch`](crate::check_batch)), a channel mismatch or a patch larger
/// than the images, a placement count that differs from the batch.
pub fn apply_patch(patch: &Patch, images: &Tensor, placements: &[Placement]) -> Result<Tensor> {
    let (b, ..) = check_images(images, patch)?;
    if placements.len() != b {
        return Err(Error::InvalidParameter {
            name: "placements",
            value: placements.len().to_string(),
            reason: "needs one placement per image",
        });
    }
    let draws: Vec<Draw> = placements
        .iter()
        .map(|&placement| Draw {
            placement,
            brightness: 0.0,
            contrast: 1.0,
        })
        .collect();
    paste(images, &patch.pixels, &patch.mask, &draws)
}

/// A saved patch as an [`Attack`]: pastes it on each image at a placement drawn from `region`
/// and `transforms` (seeded), so a pipeline can test a model against it. It has no ε: its
/// threat is [`Threat::Patch`] (the pixels it covers change arbitrarily); reports measure its
/// perturbation in L∞.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use perturb::attack::{Patch, PatchApplication, PatchShape, Region};
/// use perturb::{Attack, Goal};
/// let dev = Device::Cpu;
/// let patch = Patch::noise(1, 2, PatchShape::Square, 0, &dev)?;
/// let attack = PatchApplication::new(patch, Region::Anywhere).seed(3);
/// let model = |x: &Tensor| x.flatten_from(1)?.narrow(1, 0, 2);
/// let x = Tensor::full(0.5f32, (2, 1, 4, 4), &dev)?;
/// let adv = attack.run(&model, &x, &Goal::untargeted(&Tensor::new(&[0u32, 1], &dev)?))?;
/// assert_eq!(adv.gradient_evals, 0);
/// # Ok::<(), perturb::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct PatchApplication {
    patch: Patch,
    region: Region,
    transforms: Transforms,
    seed: u64,
}

impl PatchApplication {
    /// Paste `patch` anywhere in `region`, untransformed, seed 0.
    pub fn new(patch: Patch, region: Region) -> Self {
        Self {
            patch,
            region,
            transforms: Transforms::default(),
            seed: 0,
        }
    }

    /// Random transformations per image (default none).
    pub fn transforms(mut self, transforms: Transforms) -> Self {
        self.transforms = transforms;
        self
    }

    /// Seed of the placements (default 0).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
}

impl Attack for PatchApplication {
    fn run(&self, model: &dyn Classifier, x: &Tensor, goal: &Goal) -> Result<Adversarial> {
        self.transforms.check()?;
        let (b, _, h, w) = check_images(x, &self.patch)?;
        // the model's class count is checked on the patched batch's logits, in `finish`
        let batch = Batch::prepare(
            model,
            x,
            goal,
            &Budget::linf(1.0)?,
            Loss::CrossEntropy,
            GradientCheckMode::Trust,
            CleanLogits::Skip,
        )?;
        let mut rng = StdRng::seed_from_u64(self.seed);
        let s = self.patch.side();
        let draws = (0..b)
            .map(|_| self.transforms.draw(&mut rng, self.region, (s, s), (h, w)))
            .collect::<Result<Vec<_>>>()?;
        let x_adv = paste(x, &self.patch.pixels, &self.patch.mask, &draws)?;
        let x_adv = train::add_noise(&x_adv, self.transforms.noise, &mut rng)?;
        batch.finish_norm(model, Norm::Linf, x_adv, None)
    }

    fn name(&self) -> &'static str {
        "patch"
    }

    fn threat(&self) -> Threat {
        Threat::Patch {
            side: self.patch.side(),
        }
    }

    fn params(&self) -> serde_json::Value {
        serde_json::json!({
            "side": self.patch.side(),
            "shape": self.patch.shape,
            "region": format!("{:?}", self.region),
            "transforms": self.transforms,
            "seed": self.seed,
        })
    }
}
