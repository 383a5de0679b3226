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

/// Version of the JSON schema of [`Report`] and [`Sweep`]. Version 1 is described field by field
/// on the structs of this module.
pub const SCHEMA_VERSION: u32 = 1;

/// What was attacked with what: everything needed to reproduce a run.
///
/// ```
/// use perturb::metrics::AttackInfo;
/// use perturb::{Attack, Budget, Pgd};
/// let pgd = Pgd::new(Budget::linf(0.3)?).steps(40).seed(7);
/// let info = AttackInfo::of(&pgd);
/// assert_eq!((info.name.as_str(), info.eps), ("pgd", 0.3));
/// assert_eq!(info.params["steps"], 40);
/// # Ok::<(), perturb::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttackInfo {
    /// Short name of the attack (`fgsm`, `pgd`).
    pub name: String,
    /// Norm of the budget.
    pub norm: Norm,
    /// Radius of the budget; 0 means no attack (the clean point of a curve).
    pub eps: f32,
    /// Targeted class, or `None` for an untargeted attack.
    pub target: Option<u32>,
    /// Every parameter of the attack ([`Attack::params`](crate::Attack::params)).
    pub params: serde_json::Value,
}

impl AttackInfo {
    /// Describe an untargeted `attack`.
    pub fn of(attack: &dyn crate::Attack) -> Self {
        Self {
            name: attack.name().to_string(),
            norm: attack.budget().norm(),
            eps: attack.budget().eps(),
            target: None,
            params: attack.params(),
        }
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
    /// Wall time of the whole run, in seconds.
    pub wall_time_s: f64,
    /// Sanity-check warnings (see [`masking_warnings`]); empty when nothing looks wrong.
    pub warnings: Vec<String>,
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

/// Sanity checks for gradient masking on a set of reports (Carlini et al. 2019, §5):
/// - robust accuracy that rises as ε grows, for one attack (more than one sample's worth);
/// - an iterative attack (PGD) weaker than the single-step FGSM at the same ε and norm;
/// - under L∞ with ε at least half the pixel box, where every input can be moved to the same
///   mid-grey image and robust accuracy therefore cannot exceed the largest class share
///   `max_class_share`, an attack that leaves the accuracy above that bound.
///
/// Returns one readable line per finding.
///
/// ```
/// use perturb::metrics::{masking_warnings, AttackInfo, NormStats, Report, SCHEMA_VERSION};
/// use perturb::Norm;
/// let report = |eps: f32, acc: f64| Report {
///     schema_version: SCHEMA_VERSION, perturb_version: "0".into(), model: "m".into(),
///     data: "d".into(), seed: 0, samples: 100, clean_correct: 99,
///     robust_correct: (acc * 100.0) as usize, successes: 0, clean_accuracy: 0.99,
///     robust_accuracy: acc, attack_success_rate: 0.0, perturbation: NormStats::default(),
///     gradient_evals: 0, wall_time_s: 0.0, warnings: vec![],
///     attack: AttackInfo { name: "pgd".into(), norm: Norm::Linf, eps, target: None,
///                          params: serde_json::json!({}) },
/// };
/// assert!(masking_warnings(&[report(0.1, 0.5), report(0.2, 0.3)], 0.11).is_empty());
/// assert_eq!(masking_warnings(&[report(0.1, 0.3), report(0.2, 0.5)], 0.11).len(), 1);
/// ```
pub fn masking_warnings(reports: &[Report], max_class_share: f64) -> Vec<String> {
    let mut out = Vec::new();
    let mut names: Vec<(&str, Norm)> = Vec::new();
    for r in reports {
        if !names.contains(&(r.attack.name.as_str(), r.attack.norm)) {
            names.push((r.attack.name.as_str(), r.attack.norm));
        }
    }
    for &(name, norm) in &names {
        let mut curve: Vec<&Report> = reports
            .iter()
            .filter(|r| r.attack.name == name && r.attack.norm == norm)
            .collect();
        curve.sort_by(|a, b| a.attack.eps.total_cmp(&b.attack.eps));
        for w in curve.windows(2) {
            if w[1].robust_correct > w[0].robust_correct + 1 {
                out.push(format!(
                    "{name} ({norm}): robust accuracy rises from {:.4} at eps {} to {:.4} at eps {} \
                     (a larger budget should never help the model: gradient masking or too few steps)",
                    w[0].robust_accuracy, w[0].attack.eps, w[1].robust_accuracy, w[1].attack.eps
                ));
            }
        }
    }
    for pgd in reports.iter().filter(|r| r.attack.name == "pgd") {
        let fgsm = reports.iter().find(|r| {
            r.attack.name == "fgsm"
                && r.attack.norm == pgd.attack.norm
                && r.attack.eps == pgd.attack.eps
        });
        if let Some(fgsm) = fgsm {
            if pgd.robust_correct > fgsm.robust_correct {
                out.push(format!(
                    "pgd ({}) at eps {} leaves robust accuracy {:.4}, above fgsm's {:.4}: an iterative \
                     attack weaker than one step suggests gradient masking or a poor step size",
                    pgd.attack.norm, pgd.attack.eps, pgd.robust_accuracy, fgsm.robust_accuracy
                ));
            }
        }
    }
    for r in reports {
        if r.attack.norm == Norm::Linf
            && f64::from(r.attack.eps) >= 0.5
            && r.samples > 0
            && r.robust_accuracy > max_class_share + 1e-9
        {
            out.push(format!(
                "{} at eps {} (linf, half the pixel box) leaves robust accuracy {:.4}, above the \
                 largest class share {:.4} that any model can keep there: the attack is failing",
                r.attack.name, r.attack.eps, r.robust_accuracy, max_class_share
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
