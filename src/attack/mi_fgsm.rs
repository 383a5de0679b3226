//! MI-FGSM: iterated gradient steps with momentum, with the input-diversity and
//! translation-invariance options that make examples crafted on one model fool others.

use candle_core::{DType, Tensor};
use rand::Rng;

use super::batch::{check_count, check_fraction, check_positive, Batch, CleanLogits};
use super::{Adversarial, Attack, FixedBudget, Threat, DEFAULT_L1_SPARSITY};
use crate::budget::{check_sparsity, Budget, SampleRngs};
use crate::error::{Error, Result};
use crate::goal::Goal;
use crate::loss::Loss;
use crate::model::Classifier;

/// Momentum Iterative FGSM (Dong et al., CVPR 2018, arXiv:1710.06081), with input diversity
/// (DI, Xie et al., CVPR 2019, arXiv:1803.06978) and translation invariance (TI, Dong et al.,
/// CVPR 2019, arXiv:1904.02884): the transfer attacks.
///
/// - **Step**: `g ← μ·g + ∇/mean|∇|` (the gradient divided by its mean absolute value per
///   sample), `x ← Π(x + α·d(g))` with `d` the budget's steepest-ascent direction (`sign` for
///   L∞) and `Π` the projection onto ε-ball ∩ box; from the clean input, `steps` steps of
///   `α = ε/steps` by default.
/// - **DI** (`diversity_prob` > 0): with that probability per sample and step, the gradient is
///   taken through a random nearest-neighbour shrink of the image to a side in
///   `[⌊resize_rate·H⌋, H)` placed at a random offset on a zero canvas of the original size (as
///   Xie et al.'s resize-and-pad, at the model's input size).
/// - **TI** (`ti_kernel` > 0, odd): the gradient is smoothed by a `ti_kernel`² Gaussian whose
///   edges lie at `ti_sigma` standard deviations, per channel, before the momentum.
/// - **Distance**: the budget's norm (L∞, L2, L1).
/// - **Arguments** (defaults): `steps` 10, `decay` μ 1, `step_size` ε/steps, `diversity_prob` 0
///   (0.5 is Xie et al.'s), `resize_rate` 0.9, `ti_kernel` 0 (15 is Dong et al.'s on ImageNet),
///   `ti_sigma` 3, `seed` 0 (DI's draws), `loss` cross-entropy, `check_gradient` true,
///   `l1_sparsity` 0.99.
/// - **Costs**: one gradient per step and sample; one forward pass per sample at the end.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use perturb::attack::MiFgsm;
/// use perturb::{Attack, Budget, Goal};
/// let model = |x: &Tensor| x.flatten_from(1);
/// let x = Tensor::new(&[[[[0.2f32, 0.6]]]], &Device::Cpu)?;
/// let y = Tensor::new(&[1u32], &Device::Cpu)?;
/// let adv = MiFgsm::new(Budget::linf(0.3)?).run(&model, &x, &Goal::untargeted(&y))?;
/// assert_eq!(adv.success, [true]);
/// assert!(adv.norms[0] <= 0.3);
/// # Ok::<(), perturb::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MiFgsm {
    budget: Budget,
    #[serde(flatten)]
    params: MiFgsmParams,
}

/// MI-FGSM's parameters apart from the budget.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct MiFgsmParams {
    pub steps: usize,
    pub decay: f32,
    pub step_size: Option<f32>,
    pub diversity_prob: f32,
    pub resize_rate: f32,
    pub ti_kernel: usize,
    pub ti_sigma: f32,
    pub seed: u64,
    pub loss: Loss,
    pub check_gradient: bool,
    pub l1_sparsity: f32,
}

impl Default for MiFgsmParams {
    fn default() -> Self {
        Self {
            steps: 10,
            decay: 1.0,
            step_size: None,
            diversity_prob: 0.0,
            resize_rate: 0.9,
            ti_kernel: 0,
            ti_sigma: 3.0,
            seed: 0,
            loss: Loss::CrossEntropy,
            check_gradient: true,
            l1_sparsity: DEFAULT_L1_SPARSITY,
        }
    }
}

impl MiFgsm {
    /// MI-FGSM within `budget`, with the defaults above (no DI, no TI).
    pub fn new(budget: Budget) -> Self {
        Self {
            budget,
            params: MiFgsmParams::default(),
        }
    }

    pub(crate) fn with_params(budget: Budget, params: MiFgsmParams) -> Self {
        Self { budget, params }
    }

    /// Steps, ≥ 1; default 10.
    pub fn steps(mut self, steps: usize) -> Self {
        self.params.steps = steps;
        self
    }

    /// Momentum decay μ ≥ 0; default 1 (0 is I-FGSM with a normalized gradient).
    pub fn decay(mut self, decay: f32) -> Self {
        self.params.decay = decay;
        self
    }

    /// Step size α > 0; default ε/steps.
    pub fn step_size(mut self, alpha: f32) -> Self {
        self.params.step_size = Some(alpha);
        self
    }

    /// Input diversity: the probability in `[0, 1]` of a random resize-and-pad per sample and
    /// step; default 0 (off).
    pub fn diversity(mut self, prob: f32) -> Self {
        self.params.diversity_prob = prob;
        self
    }

    /// Translation invariance: the Gaussian kernel's side (odd; 0 turns it off); default 0.
    pub fn ti_kernel(mut self, side: usize) -> Self {
        self.params.ti_kernel = side;
        self
    }

    /// Seed of the input-diversity draws; default 0.
    pub fn seed(mut self, seed: u64) -> Self {
        self.params.seed = seed;
        self
    }

    /// The loss to ascend; default cross-entropy.
    pub fn loss(mut self, loss: Loss) -> Self {
        self.params.loss = loss;
        self
    }

    /// Run the gradient self-check first; default `true`.
    pub fn check_gradient(mut self, on: bool) -> Self {
        self.params.check_gradient = on;
        self
    }

    /// The step size in use: `step_size`, or ε/steps.
    pub fn alpha(&self) -> f32 {
        self.params
            .step_size
            .unwrap_or(self.budget.eps() / self.params.steps.max(1) as f32)
    }

    /// The attack with its parameters checked.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] for zero steps, a negative or non-finite decay, a step size
    /// that is not positive, `diversity_prob` outside `[0, 1]`, `resize_rate` outside `(0, 1]`,
    /// an even TI kernel, a `ti_sigma` that is not positive, an invalid loss or sparsity.
    pub fn build(self) -> Result<Self> {
        self.check()?;
        Ok(self)
    }

    fn check(&self) -> Result<()> {
        let p = &self.params;
        let bad = |name, value: String, reason| {
            Err(Error::InvalidParameter {
                name,
                value,
                reason,
            })
        };
        check_count("steps", p.steps)?;
        if !(p.decay.is_finite() && p.decay >= 0.0) {
            return bad("decay", p.decay.to_string(), "must be finite and >= 0");
        }
        if let Some(a) = p.step_size {
            check_positive("step_size", a)?;
        }
        if !(0.0..=1.0).contains(&p.diversity_prob) {
            return bad(
                "diversity_prob",
                p.diversity_prob.to_string(),
                "must lie in [0, 1]",
            );
        }
        check_fraction("resize_rate", p.resize_rate)?;
        if p.ti_kernel > 0 && p.ti_kernel.is_multiple_of(2) {
            return bad(
                "ti_kernel",
                p.ti_kernel.to_string(),
                "must be odd (or 0 for no smoothing)",
            );
        }
        check_positive("ti_sigma", p.ti_sigma)?;
        p.loss.check()?;
        check_sparsity(p.l1_sparsity)?;
        Ok(())
    }

    /// The TI kernel `[C, 1, k, k]`, a normalized Gaussian per channel.
    fn ti_kernel_tensor(&self, channels: usize, dev: &candle_core::Device) -> Result<Tensor> {
        let k = self.params.ti_kernel;
        let sigma = f64::from(self.params.ti_sigma);
        let pts: Vec<f64> = (0..k)
            .map(|i| {
                let t = if k == 1 {
                    0.0
                } else {
                    -sigma + 2.0 * sigma * i as f64 / (k - 1) as f64
                };
                (-t * t / 2.0).exp()
            })
            .collect();
        let total: f64 = pts.iter().sum::<f64>().powi(2);
        let one: Vec<f32> = (0..k * k)
            .map(|j| (pts[j / k] * pts[j % k] / total) as f32)
            .collect();
        let all: Vec<f32> = (0..channels).flat_map(|_| one.iter().copied()).collect();
        Ok(Tensor::from_vec(all, (channels, 1, k, k), dev)?)
    }

    /// The input-diversity gather for one step: per output element the flat index of its
    /// source in `[x, 0]` (the last slot is the zero canvas), drawn per sample from its own
    /// generator.
    fn diversity_index(
        dims: &[usize],
        p: &MiFgsmParams,
        rngs: &mut SampleRngs,
    ) -> Result<Vec<u32>> {
        let (n, c, h, w) = (dims[0], dims[1], dims[2], dims[3]);
        let total = n * c * h * w;
        let mut idx = Vec::with_capacity(total);
        for i in 0..n {
            let rng = rngs.get(i)?;
            let apply = rng.random::<f32>() < p.diversity_prob;
            let smallest = ((h as f32 * p.resize_rate).floor() as usize).clamp(1, h);
            let side_h = if apply && smallest < h {
                rng.random_range(smallest..h)
            } else {
                h
            };
            let side_w = ((side_h * w) as f64 / h as f64)
                .round()
                .clamp(1.0, w as f64) as usize;
            let top = rng.random_range(0..=h - side_h);
            let left = rng.random_range(0..=w - side_w);
            for ch in 0..c {
                for r in 0..h {
                    for col in 0..w {
                        let inside =
                            r >= top && r < top + side_h && col >= left && col < left + side_w;
                        idx.push(if inside {
                            let sr = (r - top) * h / side_h;
                            let sc = (col - left) * w / side_w;
                            (((i * c + ch) * h + sr) * w + sc) as u32
                        } else {
                            total as u32
                        });
                    }
                }
            }
        }
        Ok(idx)
    }
}

impl Attack for MiFgsm {
    fn run(&self, model: &dyn Classifier, x: &Tensor, goal: &Goal) -> Result<Adversarial> {
        self.check()?;
        let p = &self.params;
        let mut batch = Batch::prepare(
            model,
            x,
            goal,
            &self.budget,
            p.loss,
            p.check_gradient.into(),
            CleanLogits::Skip,
        )?;
        let goal_all = batch.goal().clone();
        let dims = x.dims().to_vec();
        let dev = x.device().clone();
        if (p.diversity_prob > 0.0 || p.ti_kernel > 0) && dims.len() != 4 {
            return Err(Error::ShapeMismatch {
                what: "input of DI or TI",
                expected: "[N, C, H, W]".into(),
                got: dims,
            });
        }
        let kernel = if p.ti_kernel > 0 {
            Some(self.ti_kernel_tensor(dims[1], &dev)?)
        } else {
            None
        };
        // one generator per sample: its transforms never depend on the batch around it
        let mut rngs = SampleRngs::new(p.seed, x);
        let alpha = self.alpha();
        let mut cur = x.clone();
        let mut momentum = x.zeros_like()?;
        let scale_shape: Vec<usize> = (0..dims.len())
            .map(|k| if k == 0 { dims[0] } else { 1 })
            .collect();
        for _ in 0..p.steps {
            let grad = if p.diversity_prob > 0.0 {
                let index = Self::diversity_index(&dims, p, &mut rngs)?;
                let index = Tensor::from_vec(index, x.elem_count(), &dev)?;
                let zero = Tensor::zeros(1, DType::F32, &dev)?;
                let diverse = |t: &Tensor| -> candle_core::Result<Tensor> {
                    let flat = Tensor::cat(&[&t.flatten_all()?, &zero], 0)?;
                    model.logits(&flat.index_select(&index, 0)?.reshape(t.shape())?)
                };
                batch
                    .loss_and_grad_for(&diverse, &cur, &goal_all, p.loss)?
                    .grad
            } else {
                batch.loss_and_grad(model, &cur, p.loss)?.grad
            };
            let grad = match &kernel {
                Some(k) => grad.conv2d(k, p.ti_kernel / 2, 1, 1, dims[1])?,
                None => grad,
            };
            let mean_abs = grad
                .abs()?
                .flatten_from(1)?
                .mean_keepdim(1)?
                .maximum(1e-12)?
                .reshape(scale_shape.as_slice())?;
            momentum = ((momentum * f64::from(p.decay))? + grad.broadcast_div(&mean_abs)?)?;
            cur = self.budget.step(&cur, &momentum, x, alpha, p.l1_sparsity)?;
        }
        batch.finish(model, &self.budget, cur, None)
    }

    fn name(&self) -> &'static str {
        "mi-fgsm"
    }

    fn threat(&self) -> Threat {
        Threat::Budget(self.budget)
    }

    fn params(&self) -> serde_json::Value {
        serde_json::to_value(&self.params).unwrap_or_default()
    }
}

impl FixedBudget for MiFgsm {
    fn budget(&self) -> &Budget {
        &self.budget
    }

    fn at_eps(&self, eps: f32) -> Result<Box<dyn FixedBudget>> {
        Ok(Box::new(
            Self {
                budget: self.budget.with_eps(eps)?,
                ..self.clone()
            }
            .build()?,
        ))
    }
}
