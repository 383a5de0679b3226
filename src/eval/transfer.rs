//! Transfer: adversarial examples crafted on a source model, judged by other models (the
//! black-box setting where the target cannot be differentiated).

use serde::{Deserialize, Serialize};

use super::{predict, Evaluator};
use crate::attack::FixedBudget;
use crate::error::{Error, Result};
use crate::metrics::{ratio, AttackInfo};
use crate::model::Classifier;

/// One cell of a [`TransferMatrix`]: an attack crafted on the source, judged by one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransferCell {
    /// The attack's registry name.
    pub attack: String,
    /// The judging model's name (the source itself in the first column).
    pub target: String,
    /// Samples the judging model classifies correctly when clean.
    pub clean_correct: usize,
    /// Of those, the samples it misclassifies on the source's adversarial examples.
    pub fooled: usize,
    /// `fooled / clean_correct`: the transfer rate (the white-box success rate for the source).
    pub transfer_rate: f64,
    /// Share of all samples the judging model classifies correctly both clean and on the
    /// adversarial examples.
    pub robust_accuracy: f64,
}

/// Attacks crafted on one source model, judged by the source and by every target: a row per
/// attack, a column per model, all on the same samples and adversarial examples.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use perturb::eval::{transfer, Evaluator};
/// use perturb::attack::FixedBudget;
/// use perturb::{Budget, Fgsm};
/// let source = |x: &Tensor| x.flatten_from(1); // logits = the two pixels
/// let twice = |x: &Tensor| x.flatten_from(1)? * 2.0; // the same boundary
/// let x = Tensor::new(&[[[[0.2f32, 0.6]]], [[[0.1, 0.9]]]], &Device::Cpu)?;
/// let y = Tensor::new(&[1u32, 1], &Device::Cpu)?;
/// let eval = Evaluator::new(&source, &x, &y)?.model_name("source");
/// let fgsm = Fgsm::new(Budget::linf(0.3)?);
/// let m = transfer(&eval, &[("twice", &twice)], &[&fgsm as &dyn FixedBudget])?;
/// assert_eq!(m.models, ["source", "twice"]);
/// assert_eq!(m.cell("fgsm", "twice").unwrap().fooled, 1); // the first digit flips for both
/// assert_eq!(m.cell("fgsm", "twice").unwrap().transfer_rate, 0.5);
/// # Ok::<(), perturb::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransferMatrix {
    /// The model the examples were crafted on.
    pub source: String,
    /// Column names: the source, then the targets.
    pub models: Vec<String>,
    /// Row names: the attacks, with their budgets and parameters.
    pub attacks: Vec<AttackInfo>,
    /// Samples in the run.
    pub samples: usize,
    /// Row-major cells: attack by attack, model by model.
    pub cells: Vec<TransferCell>,
}

impl TransferMatrix {
    /// The cell of `attack` judged by `model`.
    pub fn cell(&self, attack: &str, model: &str) -> Option<&TransferCell> {
        self.cells
            .iter()
            .find(|c| c.attack == attack && c.target == model)
    }

    /// The matrix as CSV: one line per cell.
    pub fn to_csv(&self) -> String {
        let mut out = String::from(
            "source,attack,norm,eps,target,clean_correct,fooled,transfer_rate,robust_accuracy\n",
        );
        for (row, info) in self.attacks.iter().enumerate() {
            for cell in &self.cells[row * self.models.len()..(row + 1) * self.models.len()] {
                out.push_str(&format!(
                    "{},{},{},{},{},{},{},{},{}\n",
                    self.source,
                    info.name,
                    info.norm.map(|n| n.to_string()).unwrap_or_default(),
                    info.eps.unwrap_or_default(),
                    cell.target,
                    cell.clean_correct,
                    cell.fooled,
                    cell.transfer_rate,
                    cell.robust_accuracy
                ));
            }
        }
        out
    }
}

/// Run every attack on the evaluator's model and data (the source), and judge the adversarial
/// examples with the source and each `(name, model)` target.
///
/// # Errors
/// As [`Evaluator::run`]; [`Error::InvalidParameter`] for two models of the same name; a target
/// whose output is not `[N, K]`.
pub fn transfer(
    source: &Evaluator<'_>,
    targets: &[(&str, &dyn Classifier)],
    attacks: &[&dyn FixedBudget],
) -> Result<TransferMatrix> {
    let mut models = vec![source.model_name.clone()];
    for (name, _) in targets {
        if models.iter().any(|m| m == name) {
            return Err(Error::InvalidParameter {
                name: "targets",
                value: (*name).to_string(),
                reason: "two models of the same name",
            });
        }
        models.push((*name).to_string());
    }
    let labels = &source.labels;
    let n = labels.len();
    let mut judges: Vec<&dyn Classifier> = vec![source.model];
    judges.extend(targets.iter().map(|(_, m)| *m));
    // per model, the samples it classifies correctly when clean (the source's predictions are
    // the evaluator's own, computed once)
    let mut correct: Vec<Vec<usize>> = Vec::with_capacity(judges.len());
    for (j, judge) in judges.iter().enumerate() {
        let clean = if j == 0 {
            source.clean_predictions()?.to_vec()
        } else {
            predict(*judge, source.images, source.batch_size)?
        };
        correct.push((0..n).filter(|&i| clean[i] == labels[i]).collect());
    }
    let mut cells = Vec::new();
    let mut infos = Vec::new();
    for attack in attacks {
        let run = source.run(*attack, None)?;
        infos.push(run.report.attack.clone());
        for (j, judge) in judges.iter().enumerate() {
            let adv = predict(*judge, &run.x_adv, source.batch_size)?;
            let correct = &correct[j];
            let fooled = correct.iter().filter(|&&i| adv[i] != labels[i]).count();
            let robust = correct.len() - fooled;
            cells.push(TransferCell {
                attack: attack.name().to_string(),
                target: models[j].clone(),
                clean_correct: correct.len(),
                fooled,
                transfer_rate: ratio(fooled, correct.len()),
                robust_accuracy: ratio(robust, n),
            });
        }
    }
    Ok(TransferMatrix {
        source: source.model_name.clone(),
        models,
        attacks: infos,
        samples: n,
        cells,
    })
}
