//! A model against the previous one: per-sample robust outcomes on the same samples, attack
//! and seed, compared by McNemar's exact test on the discordant pairs.

use serde::{Deserialize, Serialize};

use super::gate::Verdict;
use super::interval::{binomial_upper_tail, check_confidence};
use super::{AttackInfo, PerSample, Report};
use crate::error::{Error, Result};

/// A model's per-sample robust outcomes against a baseline's on the same samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaselineCheck {
    /// PASS, FAIL or INCONCLUSIVE.
    pub verdict: Verdict,
    /// The baseline's model.
    pub baseline_model: String,
    /// Robust accuracy of the baseline.
    pub baseline_robust_accuracy: f64,
    /// Robust accuracy of the model under test.
    pub robust_accuracy: f64,
    /// `baseline_robust_accuracy − robust_accuracy` (negative: an improvement).
    pub drop: f64,
    /// The largest drop allowed.
    pub max_drop: f64,
    /// Samples robust under the baseline but not now.
    pub lost: usize,
    /// Samples robust now but not under the baseline.
    pub gained: usize,
    /// McNemar's exact one-sided p-value for "no drop": P(B ≥ lost) for B ~ Binomial(lost +
    /// gained, ½); 1 with no discordant pairs.
    pub p_value: f64,
    /// The confidence level: significant means `p_value < 1 − confidence`.
    pub confidence: f64,
}

/// Why a baseline without per-sample outcomes cannot be compared, and what to do.
const NO_PER_SAMPLE: &str = "the baseline has no per-sample outcomes (`per_sample`): write it \
                             again with `perturb attack --json` or `perturb gate --json`";

impl BaselineCheck {
    /// Error unless `max_drop` lies in `[0, 1]` (checked before an evaluation runs).
    ///
    /// # Errors
    /// [`Error::InvalidParameter`].
    pub fn check_max_drop(max_drop: f64) -> Result<()> {
        if max_drop.is_finite() && (0.0..=1.0).contains(&max_drop) {
            Ok(())
        } else {
            Err(Error::InvalidParameter {
                name: "max_drop",
                value: max_drop.to_string(),
                reason: "must lie in [0, 1]",
            })
        }
    }

    /// Compare `report` with `baseline` (the previous model, same samples, attack and seed).
    ///
    /// # Errors
    /// [`Error::BaselineMismatch`] when the two runs are not comparable (another attack, ε,
    /// seed, target or parameter, other samples, or no per-sample outcomes);
    /// [`Error::InvalidParameter`] for a `max_drop` outside `[0, 1]` or a confidence outside
    /// `[0, 1)`.
    pub fn of(report: &Report, baseline: &Report, max_drop: f64, confidence: f64) -> Result<Self> {
        Self::check_max_drop(max_drop)?;
        check_confidence(confidence)?;
        let (now, before) = comparable(report, baseline)?;
        let lost = (0..before.robust.len())
            .filter(|&i| before.robust[i] && !now.robust[i])
            .count();
        let gained = (0..before.robust.len())
            .filter(|&i| !before.robust[i] && now.robust[i])
            .count();
        let p_value = binomial_upper_tail(lost, lost + gained, 0.5);
        let drop = baseline.robust_accuracy - report.robust_accuracy;
        let significant = p_value < 1.0 - confidence;
        // a hair of slack so that a drop of exactly D samples is "not larger than D"
        let larger = drop > max_drop + 1e-12;
        let verdict = match (larger, significant) {
            (false, _) => Verdict::Pass,
            (true, true) => Verdict::Fail,
            (true, false) => Verdict::Inconclusive,
        };
        Ok(Self {
            verdict,
            baseline_model: baseline.model.clone(),
            baseline_robust_accuracy: baseline.robust_accuracy,
            robust_accuracy: report.robust_accuracy,
            drop,
            max_drop,
            lost,
            gained,
            p_value,
            confidence,
        })
    }

    /// One line: "robust accuracy 0.6100 vs baseline mnist-cnn-fgsm-rs 0.8200: drop 0.2100 (max
    /// 0.0100), 42 lost and 0 gained, McNemar p = 2.3e-13".
    pub fn describe(&self) -> String {
        format!(
            "robust accuracy {:.4} vs baseline {} {:.4}: drop {:.4} (max {:.4}), {} lost and {} \
             gained, McNemar p = {:.3e} ({})",
            self.robust_accuracy,
            self.baseline_model,
            self.baseline_robust_accuracy,
            self.drop,
            self.max_drop,
            self.lost,
            self.gained,
            self.p_value,
            match self.verdict {
                Verdict::Pass => "within the allowed drop",
                Verdict::Fail => "a significant drop larger than allowed",
                Verdict::Inconclusive =>
                    "larger than allowed but not significant: more samples would decide",
            }
        )
    }
}

/// Error unless `report` and `baseline` ran the same attack, with the same parameters and seed,
/// on the same samples, and both carry per-sample outcomes: those outcomes, `report`'s first.
fn comparable<'a>(
    report: &'a Report,
    baseline: &'a Report,
) -> Result<(&'a PerSample, &'a PerSample)> {
    BaselineCheck::check_plan(baseline, &report.attack, &report.data, report.samples)?;
    let refuse = |reason: &str| Error::BaselineMismatch {
        reason: reason.into(),
    };
    let now = report
        .per_sample
        .as_ref()
        .ok_or_else(|| refuse("this run kept no per-sample outcomes"))?;
    let before = baseline
        .per_sample
        .as_ref()
        .ok_or_else(|| refuse(NO_PER_SAMPLE))?;
    now.check(report.samples)?;
    before.check(baseline.samples)?;
    if now.index != before.index {
        return Err(refuse("the per-sample indices differ"));
    }
    Ok((now, before))
}

impl BaselineCheck {
    /// Error unless a run of `attack` on `samples` samples of `data` can be compared with
    /// `baseline`: the same attack, budget, target and parameters (the seed among them), the
    /// same data slice, and per-sample outcomes in the baseline. Checked before a run, so that
    /// a wrong baseline fails before any compute.
    ///
    /// # Errors
    /// [`Error::BaselineMismatch`] saying what differs.
    pub fn check_plan(
        baseline: &Report,
        attack: &AttackInfo,
        data: &str,
        samples: usize,
    ) -> Result<()> {
        let refuse = |reason: String| Err(Error::BaselineMismatch { reason });
        let b = &baseline.attack;
        if attack.name != b.name {
            return refuse(format!(
                "attack {} here, {} in the baseline",
                attack.name, b.name
            ));
        }
        if attack.norm != b.norm || attack.eps != b.eps {
            return refuse(format!(
                "budget {} here, {} in the baseline",
                attack.describe(),
                b.describe()
            ));
        }
        let seed = |a: &AttackInfo| a.params.get("seed").and_then(|s| s.as_u64());
        if seed(attack) != seed(b) {
            return refuse(format!(
                "seed {} here, {} in the baseline",
                seed(attack).map_or("none".into(), |s| s.to_string()),
                seed(b).map_or("none".into(), |s| s.to_string())
            ));
        }
        if attack.target != b.target {
            return refuse(format!(
                "target {:?} here, {:?} in the baseline",
                attack.target, b.target
            ));
        }
        if data != baseline.data || samples != baseline.samples {
            return refuse(format!(
                "samples {data} ({samples}) here, {} ({}) in the baseline",
                baseline.data, baseline.samples
            ));
        }
        if attack.params != b.params {
            let differing = differing_keys(&attack.params, &b.params);
            return refuse(format!(
                "attack parameters differ ({})",
                differing.join(", ")
            ));
        }
        if baseline.per_sample.is_none() {
            return refuse(NO_PER_SAMPLE.into());
        }
        Ok(())
    }
}

/// The keys whose values differ between two JSON objects (the whole value if not objects).
fn differing_keys(a: &serde_json::Value, b: &serde_json::Value) -> Vec<String> {
    match (a.as_object(), b.as_object()) {
        (Some(x), Some(y)) => {
            let mut keys: Vec<String> = x
                .keys()
                .chain(y.keys())
                .filter(|k| x.get(*k) != y.get(*k))
                .cloned()
                .collect();
            keys.sort();
            keys.dedup();
            keys
        }
        _ => vec!["params".into()],
    }
}
