//! ε sweeps: every attack at every radius, the worst case per ε, and masking warnings.

use super::Evaluator;
use crate::attack::FixedBudget;
use crate::error::{Error, Result};
use crate::metrics::{masking_warnings, worst_case, AttackInfo, Sweep, SCHEMA_VERSION};
use crate::Attack;

impl Evaluator<'_> {
    /// Robust accuracy of every attack at every ε (ascending; 0 is the clean point), the worst
    /// case over attacks per ε, and gradient-masking warnings ([`masking_warnings`]). Each
    /// attack runs with its parameters and the budget's radius replaced
    /// ([`FixedBudget::at_eps`]); every (attack, ε) is built before anything runs, so a bad
    /// value fails at once.
    ///
    /// # Errors
    /// [`Error::InvalidEpsilon`] for a negative or non-finite ε, an empty ε list or attack list
    /// ([`Error::InvalidParameter`]), parameters invalid at some ε, and the errors of
    /// [`Evaluator::run`].
    pub fn sweep(&self, attacks: &[&dyn FixedBudget], eps: &[f32]) -> Result<Sweep> {
        if attacks.is_empty() || eps.is_empty() {
            return Err(Error::InvalidParameter {
                name: if attacks.is_empty() { "attacks" } else { "eps" },
                value: "[]".into(),
                reason: "needs at least one value",
            });
        }
        if let Some(&bad) = eps.iter().find(|e| !(e.is_finite() && **e >= 0.0)) {
            return Err(Error::InvalidEpsilon(bad));
        }
        let mut eps = eps.to_vec();
        eps.sort_by(f32::total_cmp);
        eps.dedup();
        // every (attack, ε) up front: an invalid one fails before any compute
        let grid: Vec<Vec<Option<Box<dyn FixedBudget>>>> = attacks
            .iter()
            .map(|a| {
                eps.iter()
                    .map(|&e| (e > 0.0).then(|| a.at_eps(e)).transpose())
                    .collect::<Result<_>>()
            })
            .collect::<Result<_>>()?;
        let mut reports = Vec::new();
        let mut robust = Vec::new();
        for (attack, row) in attacks.iter().zip(&grid) {
            let mut per_eps = Vec::new();
            for (&e, at) in eps.iter().zip(row) {
                let run = match at {
                    Some(at) => self.evaluate(Some(at.as_ref() as &dyn Attack), Some(e), None)?,
                    None => {
                        let mut clean = self.evaluate(None, Some(0.0), None)?;
                        let mut info = AttackInfo::of(*attack as &dyn Attack);
                        info.eps = Some(0.0);
                        clean.report.attack = info;
                        clean
                    }
                };
                per_eps.push(run.outcome.robust());
                reports.push(run.report);
            }
            robust.push(per_eps);
        }
        let warnings = masking_warnings(&reports, self.max_class_share());
        let mut sweep = Sweep {
            schema_version: SCHEMA_VERSION,
            model: self.model_name.clone(),
            worst_case: worst_case(&eps, &robust),
            reports,
            warnings,
        };
        sweep.set_intervals(self.intervals);
        Ok(sweep)
    }
}
