//! The distribution of minimal adversarial distances over a data set: what a minimum-norm attack
//! (CW, DeepFool, DDN, FAB) measures in one run, and robust accuracy at every ε read from it.

use serde::{Deserialize, Serialize};

use super::{AttackInfo, Outcome, Report};
use crate::budget::Norm;
use crate::error::{Error, Result};

/// Per sample, the distance to the closest adversarial example a minimum-norm attack found, and
/// the figures papers report from it (the median L2 of CW and DeepFool tables, robust accuracy
/// at every ε from one run).
///
/// Per sample `r_i` is 0 for a sample the model already gets wrong, the distance found for one it
/// gets right, and `None` (JSON `null`, no adversarial example found) otherwise. Robust accuracy
/// at ε is the share of samples with `r_i > ε` or `None`: the samples still classified correctly
/// by every point within ε that the attack knows of.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use perturb::attack::{AtEps, DeepFool};
/// use perturb::eval::Evaluator;
/// use perturb::metrics::MinimalNorms;
/// use perturb::{Budget, Norm};
/// // logits = the two pixels: the boundary is |x₁ − x₀|/√2 away in L2
/// let model = |x: &Tensor| x.flatten_from(1);
/// let x = Tensor::new(&[[[[0.2f32, 0.6]]], [[[0.45, 0.55]]], [[[0.9, 0.1]]]], &Device::Cpu)?;
/// let y = Tensor::new(&[1u32, 1, 1], &Device::Cpu)?;
/// let deepfool = AtEps::new(DeepFool::new(Norm::L2).overshoot(1e-4), MinimalNorms::unbounded(Norm::L2, 2)?);
/// let run = Evaluator::new(&model, &x, &y)?.run(&deepfool, None)?;
/// let m = MinimalNorms::new(&run.report, &run.outcome)?;
/// assert_eq!((m.clean_correct, m.found), (2, 2));
/// assert_eq!(m.norms[2], Some(0.0)); // misclassified when clean
/// // the median of 0.1/√2 and 0.4/√2
/// assert!((m.median.unwrap() - 0.25 / 2f64.sqrt()).abs() < 1e-3);
/// assert!((m.robust_accuracy_at(0.1) - 1.0 / 3.0).abs() < 1e-12);
/// # Ok::<(), perturb::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MinimalNorms {
    /// The attack, as the run's report records it.
    pub attack: AttackInfo,
    /// The norm of the distances.
    pub norm: Norm,
    /// Model name.
    pub model: String,
    /// Samples in the run.
    pub samples: usize,
    /// Samples classified correctly when clean.
    pub clean_correct: usize,
    /// Of those, the samples for which an adversarial example was found.
    pub found: usize,
    /// Median of `r_i` over the samples classified correctly when clean (a sample without an
    /// adversarial example counts as infinitely far); `None` when that is infinite.
    pub median: Option<f64>,
    /// Mean distance over the samples found.
    pub mean_found: Option<f64>,
    /// Per sample: 0, the distance found, or `None` (none found).
    pub norms: Vec<Option<f32>>,
    /// Forward+backward passes the attack spent, per sample.
    pub gradient_evals: u64,
    /// Forward passes the attack spent, per sample.
    pub forward_evals: u64,
}

impl MinimalNorms {
    /// The distribution from a run of a minimum-norm attack at a radius that does not bind
    /// ([`MinimalNorms::unbounded`]): a sample the attack fooled is at the distance of the point
    /// it returned.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] for a report without a budget (a patch run) or an outcome of
    /// another length than the report.
    pub fn new(report: &Report, outcome: &Outcome) -> Result<Self> {
        let Some(norm) = report.attack.norm else {
            return Err(Error::InvalidParameter {
                name: "report",
                value: report.attack.name.clone(),
                reason: "minimal norms need a run with a norm",
            });
        };
        if outcome.labels.len() != report.samples {
            return Err(Error::InvalidParameter {
                name: "outcome",
                value: outcome.labels.len().to_string(),
                reason: "has another sample count than the report",
            });
        }
        let norms: Vec<Option<f32>> = (0..report.samples)
            .map(|i| {
                if outcome.clean_predictions[i] != outcome.labels[i] {
                    Some(0.0)
                } else if outcome.success[i] {
                    Some(outcome.norms[i])
                } else {
                    None
                }
            })
            .collect();
        let correct: Vec<f64> = (0..report.samples)
            .filter(|&i| outcome.clean_predictions[i] == outcome.labels[i])
            .map(|i| norms[i].map_or(f64::INFINITY, f64::from))
            .collect();
        let found: Vec<f64> = correct.iter().copied().filter(|d| d.is_finite()).collect();
        let mut sorted = correct.clone();
        sorted.sort_by(f64::total_cmp);
        let median = match sorted.len() {
            0 => None,
            m if m % 2 == 1 => Some(sorted[m / 2]),
            m => Some(0.5 * (sorted[m / 2 - 1] + sorted[m / 2])),
        }
        .filter(|v| v.is_finite());
        let mean_found =
            (!found.is_empty()).then(|| found.iter().sum::<f64>() / found.len() as f64);
        Ok(Self {
            attack: report.attack.clone(),
            norm,
            model: report.model.clone(),
            samples: report.samples,
            clean_correct: correct.len(),
            found: found.len(),
            median,
            mean_found,
            norms,
            gradient_evals: report.gradient_evals,
            forward_evals: report.forward_evals,
        })
    }

    /// A budget whose radius never binds for inputs of `pixels` values in `[0, 1]`: the diameter
    /// of the pixel box in `norm` (1 for L∞, √pixels for L2, pixels for L1).
    ///
    /// # Errors
    /// [`Error::InvalidEpsilon`] for zero pixels.
    pub fn unbounded(norm: Norm, pixels: usize) -> Result<crate::Budget> {
        let eps = match norm {
            Norm::Linf => 1.0,
            Norm::L2 => (pixels as f32).sqrt(),
            Norm::L1 => pixels as f32,
        };
        crate::Budget::new(norm, eps)
    }

    /// Share of the samples that no point within `eps` fools, as far as the attack found.
    pub fn robust_accuracy_at(&self, eps: f32) -> f64 {
        if self.samples == 0 {
            return 0.0;
        }
        let robust = self
            .norms
            .iter()
            .filter(|d| d.is_none_or(|d| d > eps))
            .count();
        robust as f64 / self.samples as f64
    }

    /// Robust accuracy against ε as a step curve through every distance found, from 0 to
    /// `eps_max`: the points to draw.
    pub fn curve(&self, eps_max: f32) -> Vec<(f32, f64)> {
        let mut steps: Vec<f32> = self
            .norms
            .iter()
            .flatten()
            .copied()
            .filter(|d| *d > 0.0 && *d <= eps_max)
            .collect();
        steps.sort_by(f32::total_cmp);
        steps.dedup();
        let mut points = vec![(0.0, self.robust_accuracy_at(0.0))];
        for d in steps {
            // just before the step and at it
            points.push((d, points.last().map_or(0.0, |p| p.1)));
            points.push((d, self.robust_accuracy_at(d)));
        }
        points.push((eps_max, self.robust_accuracy_at(eps_max)));
        points
    }
}
