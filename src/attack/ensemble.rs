//! Attacks run one after another on the samples still robust: the per-sample worst case.

use candle_core::Tensor;

use super::rows::{scatter_rows, take_rows};
use super::{Adversarial, Apgd, AtEps, Attack, Fab, FixedBudget, Square, Threat};
use crate::budget::Budget;
use crate::error::{Error, Result};
use crate::goal::Goal;
use crate::model::Classifier;

/// An ensemble of fixed-budget attacks, as AutoAttack runs its parts (Croce & Hein 2020,
/// arXiv:2003.01690): stage `s + 1` attacks only the samples that stages `0..=s` left robust,
/// and each sample keeps the first adversarial point found. Robust accuracy is therefore the
/// per-sample worst case over the stages, at the cost of running each stage on fewer samples.
///
/// - **Stages**: any attacks sharing one budget (norm, ε and box); [`Ensemble::standard`] is
///   AutoAttack's (APGD-CE, APGD-T, FAB-T, Square), [`Ensemble::fast`] its first two.
/// - **Result**: per sample the fooling stage's point, prediction and distance, or for a sample
///   no stage fooled the last stage's; [`Adversarial::fooled_by`] names the stage per sample, and
///   the [`Evaluator`](crate::eval::Evaluator) turns it into the report's per-stage table.
/// - **Costs**: the sum of the stages' passes.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use perturb::attack::Ensemble;
/// use perturb::{Attack, Budget, Fgsm, Goal, Pgd};
/// let model = |x: &Tensor| x.flatten_from(1);
/// let x = Tensor::new(&[[[[0.2f32, 0.6]]], [[[0.45, 0.5]]]], &Device::Cpu)?;
/// let y = Tensor::new(&[1u32, 1], &Device::Cpu)?;
/// let b = Budget::linf(0.1)?;
/// let both = Ensemble::new("fgsm+pgd", vec![Box::new(Fgsm::new(b)), Box::new(Pgd::new(b))])?;
/// let adv = both.run(&model, &x, &Goal::untargeted(&y))?;
/// assert_eq!(adv.success, [false, true]);
/// assert_eq!(adv.fooled_by, [None, Some(0)]); // FGSM already flips the second sample
/// # Ok::<(), perturb::Error>(())
/// ```
pub struct Ensemble {
    name: String,
    budget: Budget,
    stages: Vec<Box<dyn FixedBudget>>,
}

impl std::fmt::Debug for Ensemble {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ensemble")
            .field("name", &self.name)
            .field("budget", &self.budget)
            .field("stages", &self.stage_names())
            .finish()
    }
}

impl Ensemble {
    /// The stages in order, under the name `name` (reports and the CLI show it).
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] for no stage, or stages whose budgets differ.
    pub fn new(name: impl Into<String>, stages: Vec<Box<dyn FixedBudget>>) -> Result<Self> {
        let name = name.into();
        let Some(first) = stages.first() else {
            return Err(Error::InvalidParameter {
                name: "stages",
                value: name,
                reason: "an ensemble needs at least one attack",
            });
        };
        let budget = *first.budget();
        if let Some(other) = stages.iter().find(|s| *s.budget() != budget) {
            return Err(Error::InvalidParameter {
                name: "stages",
                value: format!("{} and {}", first.name(), other.name()),
                reason: "every stage of an ensemble needs the same budget (norm, eps, box)",
            });
        }
        Ok(Self {
            name,
            budget,
            stages,
        })
    }

    /// AutoAttack's cheap version: APGD-CE then APGD-T (9 target classes), 100 steps each.
    ///
    /// # Errors
    /// None for a valid budget; kept fallible as every constructor of a suite.
    pub fn fast(budget: Budget) -> Result<Self> {
        Self::new(
            "fast",
            vec![
                Box::new(Apgd::new(budget).build()?),
                Box::new(Apgd::targeted(budget).build()?),
            ],
        )
    }

    /// AutoAttack's standard version (Croce & Hein 2020): APGD-CE, APGD-T (9 targets), FAB-T
    /// (9 targets) and Square (5,000 queries), with their default parameters.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] for an L1 budget (FAB-T and Square take L∞ and L2).
    pub fn standard(budget: Budget) -> Result<Self> {
        Self::new(
            "standard",
            vec![
                Box::new(Apgd::new(budget).build()?),
                Box::new(Apgd::targeted(budget).build()?),
                Box::new(AtEps::new(Fab::new(budget.norm()).build()?, budget)),
                Box::new(Square::new(budget).build()?),
            ],
        )
    }

    /// The stages' attack names, in order.
    pub fn stage_names(&self) -> Vec<&'static str> {
        self.stages.iter().map(|s| s.name()).collect()
    }

    /// The stages themselves.
    pub fn stages(&self) -> &[Box<dyn FixedBudget>] {
        &self.stages
    }
}

impl Attack for Ensemble {
    fn run(&self, model: &dyn Classifier, x: &Tensor, goal: &Goal) -> Result<Adversarial> {
        let n = x.dim(0)?;
        let mut out = Adversarial {
            x_adv: x.clone(),
            success: vec![false; n],
            predictions: vec![0; n],
            norms: vec![0.0; n],
            gradient_evals: 0,
            forward_evals: 0,
            fooled_by: vec![None; n],
        };
        for (s, stage) in self.stages.iter().enumerate() {
            let rows: Vec<u32> = (0..n as u32)
                .filter(|&i| !out.success[i as usize])
                .collect();
            if rows.is_empty() {
                break;
            }
            let adv = stage.run(model, &take_rows(x, &rows)?, &goal.select(&rows)?)?;
            out.gradient_evals += adv.gradient_evals;
            out.forward_evals += adv.forward_evals;
            // every row takes this stage's point: fooled rows keep it from now on
            out.x_adv = scatter_rows(&out.x_adv, &rows, &adv.x_adv)?;
            for (k, &i) in rows.iter().enumerate() {
                let i = i as usize;
                out.success[i] = adv.success[k];
                out.predictions[i] = adv.predictions[k];
                out.norms[i] = adv.norms[k];
                if adv.success[k] {
                    out.fooled_by[i] = Some(s);
                }
            }
        }
        Ok(out)
    }

    /// The ensemble's name (a suite's, or `ensemble`); reports list the stages in `params`.
    fn name(&self) -> &'static str {
        match self.name.as_str() {
            "fast" => "fast",
            "standard" => "standard",
            _ => "ensemble",
        }
    }

    fn threat(&self) -> Threat {
        Threat::Budget(self.budget)
    }

    fn params(&self) -> serde_json::Value {
        let stages: Vec<serde_json::Value> = self
            .stages
            .iter()
            .map(|s| serde_json::json!({ "attack": s.name(), "params": s.params() }))
            .collect();
        serde_json::json!({ "budget": self.budget, "suite": self.name, "stages": stages })
    }
}

impl FixedBudget for Ensemble {
    fn budget(&self) -> &Budget {
        &self.budget
    }

    fn at_eps(&self, eps: f32) -> Result<Box<dyn FixedBudget>> {
        let stages = self
            .stages
            .iter()
            .map(|s| s.at_eps(eps))
            .collect::<Result<Vec<_>>>()?;
        Ok(Box::new(Self::new(self.name.clone(), stages)?))
    }
}
