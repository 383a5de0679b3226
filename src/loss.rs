//! Attack objectives on logits: cross-entropy, the Carlini–Wagner margin and the DLR loss.
//!
//! Each loss is turned into an *objective* that the attack maximizes, oriented by the goal:
//!
//! | loss | untargeted (label y) | targeted (target t) |
//! |---|---|---|
//! | cross-entropy | `CE(z, y)` | `-CE(z, t)` |
//! | CW margin, κ ≥ 0 | `min(max_{j≠y} z_j - z_y, κ)` | `min(z_t - max_{j≠t} z_j, κ)` |
//! | DLR | `(max_{j≠y} z_j - z_y) / (z_π1 - z_π3)` | `(z_t - max_{j≠t} z_j) / (z_π1 - (z_π3 + z_π4)/2)` |
//!
//! `z_π1 ≥ z_π2 ≥ …` are the sorted logits. The CW margin is f₆ of Carlini & Wagner (2017,
//! arXiv:1608.04644) with confidence κ; DLR is from Croce & Hein (2020, arXiv:2003.01690), whose
//! targeted form uses the label y where we use the strongest other class (the same class whenever
//! the label is the runner-up, as it is for a correctly classified sample near the boundary).

use candle_core::{Tensor, D};

use crate::error::{Error, Result};
use crate::ops::{log_sum_exp, max_other, pick};

/// Loss on the logits that an attack ascends. The default is cross-entropy.
///
/// ```
/// use perturb::Loss;
/// let cw = Loss::cw(50.0)?;
/// assert_eq!(cw, Loss::CwMargin { kappa: 50.0 });
/// assert!(Loss::cw(-1.0).is_err());
/// # Ok::<(), perturb::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Loss {
    /// Softmax cross-entropy.
    #[default]
    CrossEntropy,
    /// Carlini–Wagner logit margin, capped at confidence `kappa` (≥ 0).
    CwMargin {
        /// Margin beyond which the objective stops growing.
        kappa: f32,
    },
    /// Difference of logits ratio (Croce & Hein 2020); needs 3 classes (4 when targeted).
    Dlr,
}

/// Keeps the DLR denominator away from zero, as the reference implementation does.
const DLR_EPS: f64 = 1e-12;

impl Loss {
    /// The Carlini–Wagner margin with confidence `kappa`.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] unless `kappa` is finite and ≥ 0.
    pub fn cw(kappa: f32) -> Result<Self> {
        let loss = Loss::CwMargin { kappa };
        loss.check()?;
        Ok(loss)
    }

    /// Short name: `ce`, `cw` or `dlr`.
    pub fn name(&self) -> &'static str {
        match self {
            Loss::CrossEntropy => "ce",
            Loss::CwMargin { .. } => "cw",
            Loss::Dlr => "dlr",
        }
    }

    /// Check the loss's own parameters.
    pub(crate) fn check(&self) -> Result<()> {
        if let Loss::CwMargin { kappa } = *self {
            if !(kappa.is_finite() && kappa >= 0.0) {
                return Err(Error::InvalidParameter {
                    name: "kappa",
                    value: kappa.to_string(),
                    reason: "must be finite and >= 0",
                });
            }
        }
        Ok(())
    }

    /// Check that the model has enough classes for this loss (DLR sorts the logits).
    pub(crate) fn check_classes(&self, classes: usize, targeted: bool) -> Result<()> {
        self.check()?;
        let needed = if targeted { 4 } else { 3 };
        if *self == Loss::Dlr && classes < needed {
            return Err(Error::TooFewClasses {
                loss: "dlr",
                needed,
                got: classes,
            });
        }
        Ok(())
    }

    /// The objective per sample, `[N]`, for logits `[N, K]` and `u32` classes `[N]` (labels when
    /// untargeted, targets when targeted). Differentiable with respect to the logits.
    ///
    /// # Errors
    /// Shape errors from candle when `logits` and `classes` do not fit.
    pub fn objective(&self, logits: &Tensor, classes: &Tensor, targeted: bool) -> Result<Tensor> {
        // candle's gather and sort need contiguous operands; a model's logits may be a view
        let logits = &logits.contiguous()?;
        let z_c = pick(logits, classes)?;
        match *self {
            Loss::CrossEntropy => {
                let ce = (log_sum_exp(logits)? - &z_c)?;
                Ok(if targeted { ce.neg()? } else { ce })
            }
            Loss::CwMargin { kappa } => {
                let margin = (max_other(logits, classes)? - z_c)?;
                let margin = if targeted { margin.neg()? } else { margin };
                Ok(margin.minimum(f64::from(kappa))?)
            }
            Loss::Dlr => {
                let order = logits.arg_sort_last_dim(false)?.detach();
                let sorted = logits.gather(&order, D::Minus1)?;
                let top = |i: usize| sorted.narrow(1, i, 1).and_then(|t| t.squeeze(1));
                let margin = (max_other(logits, classes)? - z_c)?;
                let scale = if targeted {
                    let tail = ((top(2)? + top(3)?)? * 0.5)?;
                    (top(0)? - tail)?
                } else {
                    (top(0)? - top(2)?)?
                };
                let margin = if targeted { margin.neg()? } else { margin };
                Ok(margin.div(&(scale + DLR_EPS)?)?)
            }
        }
    }
}
