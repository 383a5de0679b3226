//! Sanity checks for gradient masking over a set of reports.

use super::Report;
use crate::budget::Norm;

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
///     intervals: None, per_sample: None, shard: None,
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
