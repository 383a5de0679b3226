//! FGSM / FGM: one step of size ε along the steepest-ascent direction of the loss, as a preset of
//! [`Pgd`] (as Foolbox's FGSM is its PGD with one step): one loop, one set of parameters, one
//! implementation of the traits.

use super::pgd::PgdParams;
use super::Pgd;
use crate::budget::Budget;

/// Fast Gradient Sign Method (Goodfellow et al. 2015, arXiv:1412.6572) and its L2 form, the Fast
/// Gradient Method.
///
/// - **Step**: `x_adv = Π(x + ε·d)`, with `d = sign(∇ₓL)` for L∞, `∇ₓL/‖∇ₓL‖₂` for L2 (and the
///   sparse L1 direction for L1), `Π` the projection onto ε-ball ∩ box. For L∞ this is exactly
///   `clip(x + ε·sign(∇ₓL), lo, hi)`.
/// - **Distance**: the budget's norm (L∞, L2, L1).
/// - **Arguments**: `loss` (default cross-entropy), `check_gradient` (default on),
///   `l1_sparsity` (default 0.99); [`Fgsm::new`] returns the [`Pgd`] preset with one step of
///   size ε (`step_size_eps` 1) from the clean input, named `fgsm` in reports.
/// - **Inputs**: `[N, C, H, W]` `f32` in the budget's box; labels or targets `[N]`.
/// - **Cost**: one forward+backward per sample.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use perturb::{Attack, Budget, Fgsm, Goal};
/// let model = |x: &Tensor| x.flatten_from(1);
/// let x = Tensor::new(&[[[[0.2f32, 0.6]]]], &Device::Cpu)?;
/// let y = Tensor::new(&[1u32], &Device::Cpu)?;
/// let fgsm = Fgsm::new(Budget::linf(0.1)?);
/// assert_eq!(fgsm.name(), "fgsm");
/// let adv = fgsm.run(&model, &x, &Goal::untargeted(&y))?;
/// let moved = adv.x_adv.flatten_all()?.to_vec1::<f32>()?;
/// assert!((moved[0] - 0.3).abs() < 1e-6 && (moved[1] - 0.5).abs() < 1e-6);
/// # Ok::<(), perturb::Error>(())
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Fgsm;

impl Fgsm {
    /// FGSM within `budget`, cross-entropy loss: [`Pgd`] with one step of size ε and no random
    /// start.
    #[allow(clippy::new_ret_no_self)]
    pub fn new(budget: Budget) -> Pgd {
        Pgd::with_params("fgsm", budget, Self::params())
    }

    pub(crate) fn params() -> PgdParams {
        PgdParams {
            steps: 1,
            step_size_eps: Some(1.0),
            random_start: false,
            ..PgdParams::default()
        }
    }
}
