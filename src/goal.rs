//! What an attack is asked to achieve: leave the true class (untargeted) or reach a chosen class
//! (targeted).

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

    /// Check the goal against a batch of `batch` samples and a model with `classes` classes, and
    /// bring its classes to the host and to `device` as `u32`.
    pub(crate) fn resolve(
        &self,
        batch: usize,
        classes: usize,
        device: &Device,
    ) -> Result<Resolved> {
        let (what, class_tensor) = match self {
            Goal::Untargeted { labels } => ("labels", labels),
            Goal::Targeted { targets, .. } => ("targets", targets),
        };
        let host = class_indices(what, class_tensor, batch, classes)?;
        if let Goal::Targeted {
            labels: Some(labels),
            ..
        } = self
        {
            let labels = class_indices("labels", labels, batch, classes)?;
            if let Some(index) = (0..batch).find(|&i| labels[i] == host[i]) {
                return Err(Error::TargetEqualsLabel {
                    index,
                    class: host[index],
                });
            }
        }
        let tensor = Tensor::from_slice(&host, batch, device)?;
        Ok(Resolved {
            classes: host,
            tensor,
            targeted: self.is_targeted(),
        })
    }
}

/// A goal checked against a batch and a model: class indices on the host and on the device.
#[derive(Debug, Clone)]
pub(crate) struct Resolved {
    pub classes: Vec<u32>,
    pub tensor: Tensor,
    pub targeted: bool,
}

impl Resolved {
    /// Whether a prediction fulfils the goal for sample `i`.
    pub fn reached(&self, i: usize, predicted: u32) -> bool {
        if self.targeted {
            predicted == self.classes[i]
        } else {
            predicted != self.classes[i]
        }
    }

    /// The goal restricted to the samples in `idx` (a `u32` index tensor on the device).
    pub fn select(&self, rows: &[u32], idx: &Tensor) -> Result<Resolved> {
        Ok(Resolved {
            classes: rows.iter().map(|&i| self.classes[i as usize]).collect(),
            tensor: self.tensor.index_select(idx, 0)?,
            targeted: self.targeted,
        })
    }
}

fn class_indices(what: &'static str, t: &Tensor, batch: usize, classes: usize) -> Result<Vec<u32>> {
    if t.dims() != [batch] {
        return Err(Error::ShapeMismatch {
            what,
            expected: format!("[{batch}]"),
            got: t.dims().to_vec(),
        });
    }
    let values: Vec<i64> = match t.dtype() {
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
    };
    values
        .iter()
        .enumerate()
        .map(|(index, &class)| {
            if class < 0 || class as u64 >= classes as u64 {
                Err(Error::LabelOutOfRange {
                    what,
                    index,
                    class,
                    classes,
                })
            } else {
                Ok(class as u32)
            }
        })
        .collect()
}
