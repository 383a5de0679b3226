//! Robustness figures: the [`Report`] of one (model, attack, ε) run, accuracy-vs-ε curves, the
//! worst case over several attacks, and sanity checks for gradient masking.
//!
//! Definitions (as in RobustBench and Carlini et al. 2019, arXiv:1902.06705):
//! - *clean accuracy*: share of samples the model classifies correctly;
//! - *robust accuracy*: share of samples classified correctly **both** clean and after the
//!   attack (a sample the model already gets wrong is not robust);
//! - *attack success rate*: among the samples classified correctly when clean, the share whose
//!   attack reached its goal (for a targeted attack: the target class);
//! - *perturbation*: `‖x_adv − x‖` in the budget's norm, over the samples that were attacked
//!   (those classified correctly when clean).
//!
//! The JSON form of a [`Report`] is versioned by [`SCHEMA_VERSION`]; fields are only ever added
//! within a version.

use serde::{Deserialize, Serialize};

use crate::budget::Norm;
use crate::error::{Error, Result};

mod baseline;
mod gate;
mod interval;
mod masking;
mod minimal;
mod per_sample;

pub use baseline::BaselineCheck;
pub use gate::{GateOutcome, ThresholdCheck, Verdict};
pub use interval::{Interval, IntervalMethod, IntervalSpec};
pub use masking::{masking_warnings, ENSEMBLE_GAP};
pub use minimal::MinimalNorms;
pub use per_sample::PerSample;

/// Version of the JSON schema of [`Report`] and [`Sweep`]. Version 1 is described field by field
/// on the structs of this module.
pub const SCHEMA_VERSION: u32 = 1;

/// What was attacked with what: everything needed to reproduce a run.
///
/// ```
/// use perturb::metrics::AttackInfo;
/// use perturb::{Budget, Norm, Pgd};
/// let pgd = Pgd::new(Budget::linf(0.3)?).steps(40).seed(7);
/// let info = AttackInfo::of(&pgd);
/// assert_eq!((info.name.as_str(), info.norm, info.eps), ("pgd", Some(Norm::Linf), Some(0.3)));
/// assert_eq!(info.params["steps"], 40);
/// # Ok::<(), perturb::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttackInfo {
    /// Short name of the attack, as in the [registry](crate::attack::Registry).
    pub name: String,
    /// Norm of the budget; absent for attacks without one (patches).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub norm: Option<Norm>,
    /// Radius of the budget (0: no attack, the clean point of a curve); absent for attacks
    /// without one (patches).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eps: Option<f32>,
    /// Targeted class, or `None` for an untargeted attack.
    pub target: Option<u32>,
    /// Every parameter of the attack ([`Attack::params`](crate::Attack::params)).
    pub params: serde_json::Value,
}

impl AttackInfo {
    /// Describe an untargeted `attack`.
    pub fn of(attack: &dyn crate::Attack) -> Self {
        let budget = attack.threat().budget().copied();
        Self {
            name: attack.name().to_string(),
            norm: budget.map(|b| b.norm()),
            eps: budget.map(|b| b.eps()),
            target: None,
            params: attack.params(),
        }
    }

    /// "pgd (linf, eps 0.3)", or the name alone for attacks without a budget.
    pub fn describe(&self) -> String {
        match (self.norm, self.eps) {
            (Some(norm), Some(eps)) => format!("{} ({norm}, eps {eps})", self.name),
            _ => self.name.clone(),
        }
    }

    /// Number of gradient steps per run, where the attack's parameters say (`steps`).
    fn steps(&self) -> Option<u64> {
        self.params.get("steps").and_then(serde_json::Value::as_u64)
    }
}

/// Mean, median and largest perturbation norm of a set of samples (0 for an empty set).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct NormStats {
    /// Arithmetic mean.
    pub mean: f64,
    /// Median (mean of the two middle values for an even count).
    pub median: f64,
    /// Largest value.
    pub max: f64,
}

impl NormStats {
    /// Statistics of `norms`.
    ///
    /// ```
    /// use perturb::metrics::NormStats;
    /// let s = NormStats::of(&[0.1, 0.3, 0.2, 0.4]);
    /// assert!((s.mean - 0.25).abs() < 1e-6 && (s.median - 0.25).abs() < 1e-6);
    /// assert!((s.max - 0.4).abs() < 1e-6);
    /// ```
    pub fn of(norms: &[f32]) -> Self {
        if norms.is_empty() {
            return Self::default();
        }
        let mut v: Vec<f64> = norms.iter().map(|&n| f64::from(n)).collect();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Self {
            mean: v.iter().sum::<f64>() / n as f64,
            median,
            max: v[n - 1],
        }
    }
}

/// The outcome of one attack at one ε on one model and data set (schema version 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// [`SCHEMA_VERSION`] of the JSON this was read from or will be written to.
    pub schema_version: u32,
    /// Version of perturb that produced the report.
    pub perturb_version: String,
    /// Model name (a shipped name or a weights path).
    pub model: String,
    /// sha256 (hex) of the model's weights file, where known: with `clean_accuracy`,
    /// `robust_accuracy`, `attack` (norm, ε), `samples` and `seed`, what a leaderboard entry
    /// (RobustBench) is compared on. Optional within schema 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_sha256: Option<String>,
    /// Data set and slice, e.g. `mnist-test[0..1000]`.
    pub data: String,
    /// The attack and all its parameters.
    pub attack: AttackInfo,
    /// Seed of the attack's random generator.
    pub seed: u64,
    /// Number of samples evaluated.
    pub samples: usize,
    /// Samples classified correctly when clean.
    pub clean_correct: usize,
    /// Samples classified correctly both clean and after the attack.
    pub robust_correct: usize,
    /// Attacked samples (correct when clean) on which the attack reached its goal.
    pub successes: usize,
    /// `clean_correct / samples`.
    pub clean_accuracy: f64,
    /// `robust_correct / samples`.
    pub robust_accuracy: f64,
    /// `successes / clean_correct` (0 when nothing was attacked).
    pub attack_success_rate: f64,
    /// Perturbation norms of the attacked samples, in the budget's norm.
    pub perturbation: NormStats,
    /// Forward+backward passes spent, counted per sample.
    pub gradient_evals: u64,
    /// Forward-only passes the attacks spent (verdicts, success checks, queries), counted per
    /// sample; the evaluation's own clean predictions are not counted.
    #[serde(default)]
    pub forward_evals: u64,
    /// Wall time of the whole run, in seconds.
    pub wall_time_s: f64,
    /// Sanity-check warnings (see [`masking_warnings`]); empty when nothing looks wrong.
    pub warnings: Vec<String>,
    /// For an [`Ensemble`](crate::attack::Ensemble), what each stage added, in order; absent
    /// (empty) for a single attack. Optional within schema 1.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<StageReport>,
    /// Confidence intervals of the accuracies and the success rate ([`Report::set_intervals`]).
    /// Optional within schema 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intervals: Option<ReportIntervals>,
    /// Per-sample outcomes, what a comparison with a baseline reads. Optional within schema 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_sample: Option<PerSample>,
    /// For one shard of a split evaluation, which shard and which samples of the whole run;
    /// absent for a whole run (and for the merge of all its shards). Optional within schema 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<crate::eval::ShardInfo>,
}

/// The confidence intervals of a [`Report`]'s proportions, with the method that computed them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ReportIntervals {
    /// `wilson` or `clopper-pearson`.
    pub method: IntervalMethod,
    /// Confidence level, e.g. 0.95.
    pub confidence: f64,
    /// Of `clean_correct / samples`.
    pub clean_accuracy: Interval,
    /// Of `robust_correct / samples`.
    pub robust_accuracy: Interval,
    /// Of `successes / clean_correct`.
    pub attack_success_rate: Interval,
}

/// One stage of an ensemble in a [`Report`]: the samples it fooled (among those correct when
/// clean that the stages before it left robust) and the robust accuracy after it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageReport {
    /// The stage's attack name.
    pub attack: String,
    /// Samples this stage fooled that every stage before it had left robust.
    pub fooled: usize,
    /// Samples still robust after this stage (and all before it).
    pub robust_correct: usize,
    /// `robust_correct / samples`.
    pub robust_accuracy: f64,
    /// Confidence interval of `robust_accuracy` ([`Report::set_intervals`]). Optional within
    /// schema 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub robust_interval: Option<Interval>,
}

impl Report {
    /// Compute (again) every interval of the report, its stages' included, with `spec`: the
    /// evaluator sets Wilson at 95 %.
    ///
    /// ```
    /// use perturb::metrics::{IntervalMethod, IntervalSpec, Report};
    /// # fn report() -> Report { serde_json::from_str(r#"{"schema_version":1,"perturb_version":"0",
    /// #   "model":"m","data":"d","attack":{"name":"pgd","target":null,"params":{}},"seed":0,
    /// #   "samples":200,"clean_correct":198,"robust_correct":150,"successes":48,
    /// #   "clean_accuracy":0.99,"robust_accuracy":0.75,"attack_success_rate":0.2424,
    /// #   "perturbation":{"mean":0,"median":0,"max":0},"gradient_evals":0,"wall_time_s":0,
    /// #   "warnings":[]}"#).unwrap() }
    /// let mut r = report(); // 150 of 200 robust
    /// r.set_intervals(IntervalSpec::new(IntervalMethod::ClopperPearson, 0.95)?);
    /// let ci = r.intervals.unwrap().robust_accuracy;
    /// assert!((ci.lower - 0.6840).abs() < 1e-4 && (ci.upper - 0.8084).abs() < 1e-4);
    /// # Ok::<(), perturb::Error>(())
    /// ```
    pub fn set_intervals(&mut self, spec: IntervalSpec) {
        self.intervals = Some(ReportIntervals {
            method: spec.method,
            confidence: spec.confidence,
            clean_accuracy: spec.interval(self.clean_correct, self.samples),
            robust_accuracy: spec.interval(self.robust_correct, self.samples),
            attack_success_rate: spec.interval(self.successes, self.clean_correct),
        });
        for stage in &mut self.stages {
            stage.robust_interval = Some(spec.interval(stage.robust_correct, self.samples));
        }
    }

    /// Whether robust accuracy reaches `min_accuracy`: the one test behind
    /// [`assert_robust`](crate::eval::assert_robust) and the CLI's `gate`.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] for a `min_accuracy` outside `[0, 1]`;
    /// [`Error::EmptyEvaluation`] for a report of no samples (its ratios are 0 by convention, not
    /// a measurement, so that no gate passes or fails on nothing).
    pub fn meets(&self, min_accuracy: f64) -> Result<bool> {
        Self::check_threshold(min_accuracy)?;
        if self.samples == 0 {
            return Err(Error::EmptyEvaluation);
        }
        Ok(self.robust_accuracy >= min_accuracy)
    }

    /// Error unless `min_accuracy` lies in `[0, 1]` (checked before an evaluation runs).
    ///
    /// # Errors
    /// [`Error::InvalidParameter`].
    pub fn check_threshold(min_accuracy: f64) -> Result<()> {
        if (0.0..=1.0).contains(&min_accuracy) {
            Ok(())
        } else {
            Err(Error::InvalidParameter {
                name: "min_accuracy",
                value: min_accuracy.to_string(),
                reason: "must lie in [0, 1]",
            })
        }
    }
}

/// Ratio that is 0 for an empty denominator.
pub(crate) fn ratio(num: usize, den: usize) -> f64 {
    if den == 0 {
        0.0
    } else {
        num as f64 / den as f64
    }
}

/// Per-sample outcome of one attack run, the input of [`Report`]s and worst-case accuracy.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Outcome {
    /// The true labels.
    pub labels: Vec<u32>,
    /// Predictions on the clean inputs.
    pub clean_predictions: Vec<u32>,
    /// Predictions on the adversarial inputs (the clean ones for unattacked samples).
    pub adversarial_predictions: Vec<u32>,
    /// Whether the attack reached its goal (false for unattacked samples).
    pub success: Vec<bool>,
    /// `‖x_adv − x‖` per sample (0 for unattacked samples).
    pub norms: Vec<f32>,
    /// Whether the sample was attacked (it was classified correctly when clean).
    pub attacked: Vec<bool>,
}

impl Outcome {
    /// Per sample: classified correctly both clean and after the attack.
    pub fn robust(&self) -> Vec<bool> {
        (0..self.labels.len())
            .map(|i| {
                self.clean_predictions[i] == self.labels[i]
                    && self.adversarial_predictions[i] == self.labels[i]
            })
            .collect()
    }

    /// Counts of this outcome: `(clean_correct, robust_correct, successes)`.
    pub fn counts(&self) -> (usize, usize, usize) {
        let clean = (0..self.labels.len())
            .filter(|&i| self.clean_predictions[i] == self.labels[i])
            .count();
        let robust = self.robust().iter().filter(|r| **r).count();
        let successes = (0..self.labels.len())
            .filter(|&i| self.attacked[i] && self.success[i])
            .count();
        (clean, robust, successes)
    }

    /// Norms of the attacked samples.
    pub fn attacked_norms(&self) -> Vec<f32> {
        (0..self.labels.len())
            .filter(|&i| self.attacked[i])
            .map(|i| self.norms[i])
            .collect()
    }
}

/// One point of a worst-case curve: at `eps`, the share of samples that every attack failed on.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WorstCasePoint {
    /// The budget radius.
    pub eps: f32,
    /// Robust accuracy against the strongest attack per sample.
    pub robust_accuracy: f64,
    /// Samples every attack failed on. Optional within schema 1.
    #[serde(default)]
    pub robust_correct: usize,
    /// Samples evaluated. Optional within schema 1.
    #[serde(default)]
    pub samples: usize,
    /// Confidence interval of `robust_accuracy` ([`Sweep::set_intervals`]). Optional within
    /// schema 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Interval>,
}

/// An ε sweep: reports for every (attack, ε), the worst case over attacks per ε, and the
/// sanity-check warnings of the whole sweep (schema version 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sweep {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Model name.
    pub model: String,
    /// One report per attack and ε, grouped by attack in the order given, ε ascending.
    pub reports: Vec<Report>,
    /// Per ε: a sample counts as robust only if every attack failed on it.
    pub worst_case: Vec<WorstCasePoint>,
    /// Gradient-masking warnings of the sweep ([`masking_warnings`]).
    pub warnings: Vec<String>,
}

impl Sweep {
    /// Compute (again) every interval of the sweep with `spec`: each report's and each
    /// worst-case point's.
    pub fn set_intervals(&mut self, spec: IntervalSpec) {
        for r in &mut self.reports {
            r.set_intervals(spec);
        }
        for p in &mut self.worst_case {
            p.interval = Some(spec.interval(p.robust_correct, p.samples));
        }
    }
}

/// Robust accuracy per ε against the strongest attack per sample: `robust[a][e][i]` is whether
/// sample `i` survived attack `a` at `eps[e]`.
///
/// ```
/// use perturb::metrics::worst_case;
/// let robust = vec![vec![vec![true, true, false]], vec![vec![true, false, true]]];
/// let curve = worst_case(&[0.1], &robust);
/// assert!((curve[0].robust_accuracy - 1.0 / 3.0).abs() < 1e-12);
/// ```
pub fn worst_case(eps: &[f32], robust: &[Vec<Vec<bool>>]) -> Vec<WorstCasePoint> {
    eps.iter()
        .enumerate()
        .map(|(e, &eps)| {
            let n = robust.first().map_or(0, |a| a[e].len());
            let held = (0..n)
                .filter(|&i| robust.iter().all(|attack| attack[e][i]))
                .count();
            WorstCasePoint {
                eps,
                robust_accuracy: ratio(held, n),
                robust_correct: held,
                samples: n,
                interval: None,
            }
        })
        .collect()
}
