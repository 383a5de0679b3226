//! Gate verdicts for pipelines: robust accuracy against a threshold with its confidence
//! interval, and against a baseline report of the previous model by a paired test.
//!
//! - [`ThresholdCheck`]: PASS when the interval's lower bound reaches the threshold, FAIL when
//!   its upper bound falls short, INCONCLUSIVE when the interval straddles it (with the sample
//!   count that would likely decide).
//! - [`BaselineCheck`]: per-sample robust outcomes of the two models on the same samples,
//!   attack and seed, compared by McNemar's exact test on the discordant pairs (a paired test,
//!   not two independent proportions): FAIL when the drop in robust accuracy is larger than the
//!   allowed one and significant, INCONCLUSIVE when it is larger but could be noise, PASS
//!   otherwise.
//!
//! ```
//! use perturb::metrics::{IntervalSpec, ThresholdCheck, Verdict};
//! // 190 of 200 robust: the 95 % Wilson interval is [91.0, 97.3] %
//! let check = ThresholdCheck::of(190, 200, 0.9, IntervalSpec::default())?;
//! assert_eq!(check.verdict, Verdict::Pass);
//! assert_eq!(ThresholdCheck::of(190, 200, 0.95, IntervalSpec::default())?.verdict, Verdict::Inconclusive);
//! assert_eq!(ThresholdCheck::of(190, 200, 0.98, IntervalSpec::default())?.verdict, Verdict::Fail);
//! # Ok::<(), perturb::Error>(())
//! ```

use std::fmt;

use serde::{Deserialize, Serialize};

use super::interval::{binomial_upper_tail, check_confidence, samples_to_decide};
use super::{Interval, IntervalSpec, PerSample, Report};
use crate::error::{Error, Result};

/// A gate's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Verdict {
    /// The model holds.
    Pass,
    /// The samples cannot tell: more samples would decide.
    Inconclusive,
    /// The model falls short.
    Fail,
}

impl Verdict {
    /// The CLI's exit code: 0 PASS, 1 FAIL, 3 INCONCLUSIVE (2 is a usage or input error).
    pub fn exit_code(self) -> u8 {
        match self {
            Self::Pass => 0,
            Self::Fail => 1,
            Self::Inconclusive => 3,
        }
    }

    /// The worse of two verdicts: FAIL over INCONCLUSIVE over PASS.
    pub fn and(self, other: Self) -> Self {
        self.max(other)
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Pass => "PASS",
            Self::Fail => "FAIL",
            Self::Inconclusive => "INCONCLUSIVE",
        })
    }
}

/// Robust accuracy against a required minimum, with its confidence interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThresholdCheck {
    /// PASS, FAIL or INCONCLUSIVE.
    pub verdict: Verdict,
    /// Samples robust.
    pub robust_correct: usize,
    /// Samples evaluated.
    pub samples: usize,
    /// `robust_correct / samples`.
    pub robust_accuracy: f64,
    /// The interval the verdict was read from.
    pub interval: Interval,
    /// How it was computed.
    pub spec: IntervalSpec,
    /// The required minimum.
    pub min_robust_accuracy: f64,
    /// For INCONCLUSIVE: the sample count at which the same robust accuracy would decide.
    pub samples_to_decide: Option<usize>,
}

impl ThresholdCheck {
    /// The verdict for `robust` of `samples` against `min_robust_accuracy`.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] for a threshold outside `[0, 1]`.
    pub fn of(
        robust: usize,
        samples: usize,
        min_robust_accuracy: f64,
        spec: IntervalSpec,
    ) -> Result<Self> {
        Report::check_threshold(min_robust_accuracy)?;
        check_confidence(spec.confidence)?;
        let interval = spec.interval(robust, samples);
        let accuracy = super::ratio(robust, samples);
        let verdict = if interval.lower >= min_robust_accuracy {
            Verdict::Pass
        } else if interval.upper < min_robust_accuracy {
            Verdict::Fail
        } else {
            Verdict::Inconclusive
        };
        let samples_to_decide = (verdict == Verdict::Inconclusive)
            .then(|| samples_to_decide(accuracy, min_robust_accuracy, &spec))
            .flatten();
        Ok(Self {
            verdict,
            robust_correct: robust,
            samples,
            robust_accuracy: accuracy,
            interval,
            spec,
            min_robust_accuracy,
            samples_to_decide,
        })
    }

    /// The check of a report.
    ///
    /// # Errors
    /// As [`ThresholdCheck::of`].
    pub fn of_report(report: &Report, min: f64, spec: IntervalSpec) -> Result<Self> {
        Self::of(report.robust_correct, report.samples, min, spec)
    }

    /// One line: "robust accuracy 0.9500 (190 of 200), 95 % wilson [91.0, 97.3] %, straddles the
    /// required 0.9500; about 1,234 samples would decide".
    pub fn describe(&self) -> String {
        let relation = match self.verdict {
            Verdict::Pass => "lower bound >=",
            Verdict::Fail => "upper bound <",
            Verdict::Inconclusive => "straddles",
        };
        let mut line = format!(
            "robust accuracy {:.4} ({} of {}), {} interval {}, {relation} the required {:.4}",
            self.robust_accuracy,
            self.robust_correct,
            self.samples,
            self.spec.describe(),
            self.interval,
            self.min_robust_accuracy
        );
        if self.verdict == Verdict::Inconclusive {
            match self.samples_to_decide {
                Some(n) => line.push_str(&format!(
                    "; about {n} samples would decide if the accuracy held"
                )),
                None => {
                    line.push_str("; the estimate equals the threshold: no sample count decides")
                }
            }
        }
        line
    }
}

/// Everything a gate decided on one run: its report and the checks asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateOutcome {
    /// The run.
    pub report: Report,
    /// Robust accuracy against a threshold, when one was asked for.
    pub threshold: Option<ThresholdCheck>,
    /// Against a baseline report, when one was given.
    pub baseline: Option<BaselineCheck>,
}

impl GateOutcome {
    /// The worst verdict of the checks (PASS when there are none).
    pub fn verdict(&self) -> Verdict {
        let t = self.threshold.as_ref().map(|t| t.verdict);
        let b = self.baseline.as_ref().map(|b| b.verdict);
        t.into_iter().chain(b).fold(Verdict::Pass, Verdict::and)
    }

    /// "mnist-cnn · pgd · linf eps 0.3": the test case a CI system shows.
    pub fn name(&self) -> String {
        let a = &self.report.attack;
        match (a.norm, a.eps) {
            (Some(norm), Some(eps)) => {
                format!("{} · {} · {norm} eps {eps}", self.report.model, a.name)
            }
            _ => format!("{} · {}", self.report.model, a.name),
        }
    }

    /// Every check's verdict and reason, `; `-separated, after the overall verdict when there
    /// is more than one check.
    pub fn message(&self) -> String {
        let mut parts = Vec::new();
        if let Some(t) = &self.threshold {
            parts.push(format!("{}: {}", t.verdict, t.describe()));
        }
        if let Some(b) = &self.baseline {
            parts.push(format!("{}: {}", b.verdict, b.describe()));
        }
        if parts.len() != 1 {
            parts.insert(0, self.verdict().to_string());
        }
        parts.join("; ")
    }
}

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

impl BaselineCheck {
    /// Compare `report` with `baseline` (the previous model, same samples, attack and seed).
    ///
    /// # Errors
    /// [`Error::BaselineMismatch`] when the two runs are not comparable (another attack, ε,
    /// seed, target or parameter, other samples, or no per-sample outcomes);
    /// [`Error::InvalidParameter`] for a `max_drop` outside `[0, 1]` or a confidence outside
    /// `[0, 1)`.
    pub fn of(report: &Report, baseline: &Report, max_drop: f64, confidence: f64) -> Result<Self> {
        if !(max_drop.is_finite() && (0.0..=1.0).contains(&max_drop)) {
            return Err(Error::InvalidParameter {
                name: "max_drop",
                value: max_drop.to_string(),
                reason: "must lie in [0, 1]",
            });
        }
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

    /// One line: "robust accuracy 0.6100 vs baseline mnist-cnn-robust 0.8200: drop 0.2100 (max
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
    let before = baseline.per_sample.as_ref().ok_or_else(|| {
        refuse(
            "the baseline has no per-sample outcomes (`per_sample`): write it again with \
             `perturb attack --json` or `perturb gate --json`",
        )
    })?;
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
        attack: &super::AttackInfo,
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
        let seed = |a: &super::AttackInfo| a.params.get("seed").and_then(|s| s.as_u64());
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
            return refuse(
                "the baseline has no per-sample outcomes (`per_sample`): write it again with \
                 `perturb attack --json` or `perturb gate --json`"
                    .into(),
            );
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
