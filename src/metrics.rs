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
}

impl Report {
    /// Whether robust accuracy reaches `min_accuracy`: the one test behind
    /// [`assert_robust`](crate::eval::assert_robust) and the CLI's `gate`.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] for a `min_accuracy` outside `[0, 1]`.
    pub fn meets(&self, min_accuracy: f64) -> Result<bool> {
        Self::check_threshold(min_accuracy)?;
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

/// Robust accuracy by which an ensemble may fall below PGD at the same ε before
/// [`masking_warnings`] says PGD's figure overestimates robustness (AutoAttack's 5 points).
pub const ENSEMBLE_GAP: f64 = 0.05;

/// Sanity checks for gradient masking on a set of reports (Carlini et al. 2019, §5):
/// - an ensemble ([`Report::stages`]) more than [`ENSEMBLE_GAP`] below PGD at the same ε;
/// - robust accuracy that rises as ε grows, for one attack (more than one sample's worth);
/// - a multi-step attack (parameter `steps` > 1, such as PGD) weaker than a one-step attack
///   (`steps` = 1, such as FGSM) at the same ε and norm;
/// - under L∞ with ε at least half the pixel box, where every input can be moved to the same
///   mid-grey image and robust accuracy therefore cannot exceed the largest class share
///   `max_class_share`, an attack that leaves the accuracy above that bound.
///
/// Reports without a budget (patches) are left out. Returns one readable line per finding.
///
/// ```
/// use perturb::metrics::{masking_warnings, AttackInfo, NormStats, Report, SCHEMA_VERSION};
/// use perturb::Norm;
/// let report = |eps: f32, acc: f64| Report {
///     schema_version: SCHEMA_VERSION, perturb_version: "0".into(), model: "m".into(),
///     model_sha256: None,
///     data: "d".into(), seed: 0, samples: 100, clean_correct: 99,
///     robust_correct: (acc * 100.0) as usize, successes: 0, clean_accuracy: 0.99,
///     robust_accuracy: acc, attack_success_rate: 0.0, perturbation: NormStats::default(),
///     gradient_evals: 0, forward_evals: 0, wall_time_s: 0.0, warnings: vec![], stages: vec![],
///     attack: AttackInfo { name: "pgd".into(), norm: Some(Norm::Linf), eps: Some(eps),
///                          target: None, params: serde_json::json!({"steps": 10}) },
/// };
/// assert!(masking_warnings(&[report(0.1, 0.5), report(0.2, 0.3)], 0.11).is_empty());
/// assert_eq!(masking_warnings(&[report(0.1, 0.3), report(0.2, 0.5)], 0.11).len(), 1);
/// ```
pub fn masking_warnings(reports: &[Report], max_class_share: f64) -> Vec<String> {
    let mut out = Vec::new();
    // (report, norm, eps) of every report with a budget
    let budgeted: Vec<(&Report, Norm, f32)> = reports
        .iter()
        .filter_map(|r| Some((r, r.attack.norm?, r.attack.eps?)))
        .collect();
    let mut names: Vec<(&str, Norm)> = Vec::new();
    for &(r, norm, _) in &budgeted {
        if !names.contains(&(r.attack.name.as_str(), norm)) {
            names.push((r.attack.name.as_str(), norm));
        }
    }
    for &(name, norm) in &names {
        let mut curve: Vec<(&Report, f32)> = budgeted
            .iter()
            .filter(|(r, n, _)| r.attack.name == name && *n == norm)
            .map(|&(r, _, eps)| (r, eps))
            .collect();
        curve.sort_by(|a, b| a.1.total_cmp(&b.1));
        for w in curve.windows(2) {
            let ((lo, lo_eps), (hi, hi_eps)) = (w[0], w[1]);
            if hi.robust_correct > lo.robust_correct + 1 {
                out.push(format!(
                    "{name} ({norm}): robust accuracy rises from {:.4} at eps {lo_eps} to {:.4} at eps {hi_eps} \
                     (a larger budget should never help the model: gradient masking or too few steps)",
                    lo.robust_accuracy, hi.robust_accuracy
                ));
            }
        }
    }
    for &(multi, norm, eps) in &budgeted {
        if multi.attack.steps().is_none_or(|s| s <= 1) || eps == 0.0 {
            continue;
        }
        let one_step = budgeted.iter().find(|(r, n, e)| {
            r.attack.steps() == Some(1)
                && *n == norm
                && *e == eps
                && r.attack.target == multi.attack.target
        });
        if let Some(&(single, _, _)) = one_step {
            if multi.robust_correct > single.robust_correct {
                out.push(format!(
                    "{} ({norm}) at eps {eps} leaves robust accuracy {:.4}, above {}'s {:.4}: a \
                     multi-step attack weaker than one step suggests gradient masking or a poor step size",
                    multi.attack.name, multi.robust_accuracy, single.attack.name, single.robust_accuracy
                ));
            }
        }
    }
    // an ensemble far below PGD: PGD's figure must not be quoted
    for &(ens, norm, eps) in &budgeted {
        if ens.stages.is_empty() || eps == 0.0 {
            continue;
        }
        for &(pgd, _, _) in budgeted.iter().filter(|(r, n, e)| {
            r.attack.name == "pgd"
                && *n == norm
                && *e == eps
                && r.attack.target == ens.attack.target
        }) {
            let gap = pgd.robust_accuracy - ens.robust_accuracy;
            if gap > ENSEMBLE_GAP {
                out.push(format!(
                    "{} ({norm}) at eps {eps} leaves robust accuracy {:.4}, {:.1} points below \
                     pgd's {:.4}: PGD overestimates this model's robustness (misleading gradients \
                     or a poor step size); quote the ensemble's figure",
                    ens.attack.name,
                    ens.robust_accuracy,
                    100.0 * gap,
                    pgd.robust_accuracy
                ));
            }
        }
    }
    for &(r, norm, eps) in &budgeted {
        if norm == Norm::Linf
            && f64::from(eps) >= 0.5
            && r.samples > 0
            && r.robust_accuracy > max_class_share + 1e-9
        {
            out.push(format!(
                "{} at eps {eps} (linf, half the pixel box) leaves robust accuracy {:.4}, above the \
                 largest class share {:.4} that any model can keep there: the attack is failing",
                r.attack.name, r.robust_accuracy, max_class_share
            ));
        }
    }
    out
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
            }
        })
        .collect()
}
