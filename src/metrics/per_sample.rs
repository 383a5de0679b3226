//! Per-sample outcomes of a run, kept in the report: what a paired comparison with a baseline
//! reads, and what a researcher looks up ("which digits broke?").

use serde::{Deserialize, Serialize};

use super::Outcome;
use crate::error::{Error, Result};

/// One column per field, one entry per sample, in the order evaluated: `index[i]` is sample
/// `i`'s position in the data set (the MNIST test index, or the `--image` file's position).
/// Columns rather than records keep the JSON small and load straight into a data frame
/// (`pandas.DataFrame(report["per_sample"])`).
///
/// ```
/// use perturb::metrics::{Outcome, PerSample};
/// let o = Outcome {
///     labels: vec![3, 5], clean_predictions: vec![3, 5], adversarial_predictions: vec![3, 8],
///     success: vec![false, true], norms: vec![0.3, 0.25], attacked: vec![true, true],
/// };
/// let s = PerSample::of(&o, &[100, 101])?;
/// assert_eq!(s.robust, [true, false]);
/// assert_eq!(s.adversarial_prediction, [3, 8]);
/// # Ok::<(), perturb::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PerSample {
    /// Position of each sample in its data set.
    pub index: Vec<usize>,
    /// True label.
    pub label: Vec<u32>,
    /// Prediction on the clean input.
    pub clean_prediction: Vec<u32>,
    /// Prediction on the adversarial input (the clean one for samples not attacked).
    pub adversarial_prediction: Vec<u32>,
    /// Classified correctly when clean.
    pub clean_correct: Vec<bool>,
    /// Classified correctly both clean and after the attack.
    pub robust: Vec<bool>,
    /// The attack reached its goal.
    pub success: Vec<bool>,
    /// `‖x_adv − x‖` in the budget's norm (0 for samples not attacked).
    pub norm: Vec<f32>,
    /// Whether the sample was attacked (by default those correct when clean): what the
    /// perturbation statistics and the success rate count, so that shards merge exactly.
    /// Optional within schema 1 (absent from older reports).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attacked: Vec<bool>,
}

impl PerSample {
    /// The columns of `outcome`, sample `i` at data-set position `index[i]`.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] when `index` does not have one entry per sample.
    pub fn of(outcome: &Outcome, index: &[usize]) -> Result<Self> {
        let n = outcome.labels.len();
        if index.len() != n {
            return Err(Error::ShapeMismatch {
                what: "sample indices",
                expected: format!("[{n}], one per sample"),
                got: vec![index.len()],
            });
        }
        Ok(Self {
            index: index.to_vec(),
            label: outcome.labels.clone(),
            clean_prediction: outcome.clean_predictions.clone(),
            adversarial_prediction: outcome.adversarial_predictions.clone(),
            clean_correct: (0..n)
                .map(|i| outcome.clean_predictions[i] == outcome.labels[i])
                .collect(),
            robust: outcome.robust(),
            success: outcome.success.clone(),
            norm: outcome.norms.clone(),
            attacked: outcome.attacked.clone(),
        })
    }

    /// Error unless every column has `samples` entries (a report read from a file may not).
    ///
    /// # Errors
    /// [`Error::BaselineMismatch`] naming the short column.
    pub fn check(&self, samples: usize) -> Result<()> {
        let lengths = [
            ("index", self.index.len()),
            ("label", self.label.len()),
            ("clean_prediction", self.clean_prediction.len()),
            ("adversarial_prediction", self.adversarial_prediction.len()),
            ("clean_correct", self.clean_correct.len()),
            ("robust", self.robust.len()),
            ("success", self.success.len()),
            ("norm", self.norm.len()),
        ];
        match lengths.iter().find(|(_, len)| *len != samples) {
            Some((name, len)) => Err(Error::BaselineMismatch {
                reason: format!("per_sample.{name} has {len} entries for {samples} samples"),
            }),
            None => Ok(()),
        }
    }
}
