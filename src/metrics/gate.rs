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

use super::interval::{check_confidence, samples_to_decide};
use super::{BaselineCheck, Interval, IntervalSpec, Report};
use crate::error::Result;

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
    /// [`Error::InvalidParameter`](crate::Error::InvalidParameter) for a threshold outside `[0, 1]`.
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
