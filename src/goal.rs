//! What an attack is asked to achieve: leave the true class (untargeted) or reach a chosen class
//! (targeted).

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};

/// The goal of an attack, one class index per sample.
///
/// Class tensors are rank-1 of dtype `u32` or `i64` (PyTorch's label dtype), one entry per sample.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use perturb::Goal;
/// let labels = Tensor::new(&[3u32, 1, 4], &Device::Cpu)?;
/// let goal = Goal::untargeted(&labels);
/// assert!(!goal.is_targeted());
/// # Ok::<(), perturb::Error>(())
/// ```
#[derive(Debug, Clone)]
pub enum Goal {
    /// Succeed when the predicted class differs from `labels`.
    Untargeted {
        /// True class of each sample.
        labels: Tensor,
    },
    /// Succeed when the predicted class equals `targets`.
    Targeted {
        /// Class each sample should be classified as.
        targets: Tensor,
        /// True classes, when known: then a target equal to its label is rejected.
        labels: Option<Tensor>,
    },
}

impl Goal {
    /// Untargeted goal: move every sample away from its label.
    pub fn untargeted(labels: &Tensor) -> Self {
        Goal::Untargeted {
            labels: labels.clone(),
        }
    }

    /// Targeted goal: move every sample to its target class.
    pub fn targeted(targets: &Tensor) -> Self {
        Goal::Targeted {
            targets: targets.clone(),
            labels: None,
        }
    }

    /// Targeted goal with the true labels known; `run` rejects a target equal to its label with
    /// [`Error::TargetEqualsLabel`].
    pub fn targeted_with_labels(targets: &Tensor, labels: &Tensor) -> Self {
        Goal::Targeted {
            targets: targets.clone(),
            labels: Some(labels.clone()),
        }
    }

    /// The goal of the samples `rows` (indices into the batch), in that order.
    ///
    /// # Errors
    /// Candle's, for a row past the goal's tensors.
    pub(crate) fn select(&self, rows: &[u32]) -> Result<Goal> {
        let pick = |t: &Tensor| -> Result<Tensor> {
            let idx = Tensor::from_slice(rows, rows.len(), t.device())?;
            Ok(t.index_select(&idx, 0)?)
        };
        Ok(match self {
            Goal::Untargeted { labels } => Goal::Untargeted {
                labels: pick(labels)?,
            },
            Goal::Targeted { targets, labels } => Goal::Targeted {
                targets: pick(targets)?,
                labels: labels.as_ref().map(pick).transpose()?,
            },
        })
    }

    /// Whether success means reaching a target class.
    pub fn is_targeted(&self) -> bool {
        matches!(self, Goal::Targeted { .. })
    }

    /// The per-sample classes the loss refers to: labels (untargeted) or targets (targeted).
    pub fn classes(&self) -> &Tensor {
        match self {
            Goal::Untargeted { labels } => labels,
            Goal::Targeted { targets, .. } => targets,
        }
    }

    /// Check the goal's shapes and dtypes against a batch of `batch` samples and bring its
    /// classes to the host and to `device` as `u32`. Whether the classes exist depends on the
    /// model: [`ResolvedGoal::check_classes`] tests them against its first logits, so that no
    /// forward pass is spent only to learn the class count.
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use perturb::Goal;
    /// let goal = Goal::untargeted(&Tensor::new(&[3i64, 1], &Device::Cpu)?).resolve(2, &Device::Cpu)?;
    /// assert_eq!(goal.classes(), [3, 1]);
    /// assert!(goal.check_classes(4).is_ok() && goal.check_classes(3).is_err());
    /// assert!(goal.reached(0, 2) && !goal.reached(1, 1));
    /// # Ok::<(), perturb::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] unless the classes are `[batch]`, [`Error::DTypeMismatch`] unless
    /// they are `u32`, `i64` or `u8`.
    pub fn resolve(&self, batch: usize, device: &Device) -> Result<ResolvedGoal> {
        let (what, class_tensor) = match self {
            Goal::Untargeted { labels } => ("labels", labels),
            Goal::Targeted { targets, .. } => ("targets", targets),
        };
        let given = class_indices(what, class_tensor, batch)?;
        let mut given = vec![(what, given)];
        if let Goal::Targeted {
            labels: Some(labels),
            ..
        } = self
        {
            given.push(("labels", class_indices("labels", labels, batch)?));
        }
        // out-of-range values are refused by `check_classes` before any use of these
        let host: Vec<u32> = given[0]
            .1
            .iter()
            .map(|&c| u32::try_from(c).unwrap_or(u32::MAX))
            .collect();
        let tensor = Tensor::from_slice(&host, batch, device)?;
        Ok(ResolvedGoal {
            classes: host,
            tensor,
            targeted: self.is_targeted(),
            given: Arc::new(given),
        })
    }
}

/// A goal checked against a batch: class indices on the host and on the device. Before its
/// classes are used on a model's logits, [`check_classes`](ResolvedGoal::check_classes) must accept
/// that model's class count.
///
/// Attacks written outside this crate get one from [`Goal::resolve`] (or from
/// [`Batch::prepare`](crate::attack::Batch::prepare), which also checks the input).
#[derive(Debug, Clone)]
pub struct ResolvedGoal {
    pub(crate) classes: Vec<u32>,
    pub(crate) tensor: Tensor,
    pub(crate) targeted: bool,
    /// The class indices as given (the goal's, then the labels of a targeted goal when known),
    /// for the whole batch: a selection of rows keeps them, so errors name the caller's index.
    given: Arc<Vec<(&'static str, Vec<i64>)>>,
}

impl ResolvedGoal {
    /// The class per sample that the loss refers to (labels, or targets when targeted).
    pub fn classes(&self) -> &[u32] {
        &self.classes
    }

    /// The same classes as a `u32` tensor `[N]` on the batch's device.
    pub fn tensor(&self) -> &Tensor {
        &self.tensor
    }

    /// Whether success means reaching the target class.
    pub fn is_targeted(&self) -> bool {
        self.targeted
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.classes.len()
    }

    /// Whether the goal covers no sample.
    pub fn is_empty(&self) -> bool {
        self.classes.is_empty()
    }

    /// Error unless every class index of the goal is below `classes`, the model's class count,
    /// and no target equals its known label.
    ///
    /// # Errors
    /// [`Error::LabelOutOfRange`], [`Error::TargetEqualsLabel`].
    pub fn check_classes(&self, classes: usize) -> Result<()> {
        for (what, values) in self.given.iter() {
            if let Some((index, &class)) = values
                .iter()
                .enumerate()
                .find(|(_, &c)| c < 0 || c as u64 >= classes as u64)
            {
                return Err(Error::LabelOutOfRange {
                    what,
                    index,
                    class,
                    classes,
                });
            }
        }
        if let [(_, targets), (_, labels)] = self.given.as_slice() {
            if let Some(index) = (0..labels.len()).find(|&i| labels[i] == targets[i]) {
                return Err(Error::TargetEqualsLabel {
                    index,
                    class: targets[index] as u32, // in range: checked above
                });
            }
        }
        Ok(())
    }

    /// Whether a prediction fulfils the goal for sample `i`.
    pub fn reached(&self, i: usize, predicted: u32) -> bool {
        if self.targeted {
            predicted == self.classes[i]
        } else {
            predicted != self.classes[i]
        }
    }

    /// The goal restricted to the samples `rows`, whose `u32` index tensor on the device is `idx`.
    ///
    /// # Errors
    /// Candle errors only (`idx` out of range).
    pub fn select(&self, rows: &[u32], idx: &Tensor) -> Result<ResolvedGoal> {
        Ok(ResolvedGoal {
            classes: rows.iter().map(|&i| self.classes[i as usize]).collect(),
            tensor: self.tensor.index_select(idx, 0)?,
            targeted: self.targeted,
            given: Arc::clone(&self.given),
        })
    }
}

pub(crate) fn class_indices(what: &'static str, t: &Tensor, batch: usize) -> Result<Vec<i64>> {
    if t.dims() != [batch] {
        return Err(Error::ShapeMismatch {
            what,
            expected: format!("[{batch}]"),
            got: t.dims().to_vec(),
        });
    }
    Ok(match t.dtype() {
        DType::U32 => t.to_vec1::<u32>()?.into_iter().map(i64::from).collect(),
        DType::I64 => t.to_vec1::<i64>()?,
        DType::U8 => t.to_vec1::<u8>()?.into_iter().map(i64::from).collect(),
        got => {
            return Err(Error::DTypeMismatch {
                what,
                expected: "u32, i64 or u8",
                got,
            })
        }
    })
}
