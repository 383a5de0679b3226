//! Evaluations split into shards that run anywhere (Slurm job arrays, Kubernetes Indexed Jobs,
//! plain processes) and merge into exactly the report of one run.
//!
//! Shard `i` of `N` covers whole batches: with `B` samples per batch the run's `⌈n/B⌉` batches
//! are cut at `⌊k·batches/N⌋` for `k = 0..=N`, so each shard runs the very batches the single
//! run would, and (random draws being keyed by each sample's seed and pixels, see the budget's
//! `SampleRngs`) every sample ends at the same adversarial point bit for bit. Each shard writes
//! a [`Report`] carrying a [`ShardInfo`]; [`merge`] checks that the shards are one run's, with
//! none missing or overlapping, and recounts the whole run from the per-sample columns.

use std::fmt;
use std::ops::Range;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::metrics::{ratio, NormStats, Outcome, PerSample, Report};

/// Shard `index` of `count` (0-based: `0/4` … `3/4`).
///
/// ```
/// use perturb::eval::Shard;
/// let shard: Shard = "1/3".parse()?;
/// // 1,000 samples in batches of 100: 10 batches cut at 0, 3, 6, 10
/// assert_eq!(shard.range(1000, 100), 300..600);
/// assert_eq!("3/3".parse::<Shard>().is_err(), true);
/// # Ok::<(), perturb::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    /// This shard, in `0..count`.
    pub index: usize,
    /// Shards in the run.
    pub count: usize,
}

impl Shard {
    /// Shard `index` of `count`.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] unless `index < count`.
    pub fn new(index: usize, count: usize) -> Result<Self> {
        if index >= count {
            return Err(Error::InvalidParameter {
                name: "shard",
                value: format!("{index}/{count}"),
                reason: "expected I/N with 0 <= I < N (shards count from 0)",
            });
        }
        Ok(Self { index, count })
    }

    /// The shard a scheduler's array job assigned this process, when there is one:
    /// `SLURM_ARRAY_TASK_ID` less `SLURM_ARRAY_TASK_MIN` of `SLURM_ARRAY_TASK_COUNT` (Slurm),
    /// or `JOB_COMPLETION_INDEX` of `shards` (a Kubernetes Indexed Job, whose count the job's
    /// `completions` gives and the command line repeats). `None` outside an array job.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] for values that are not numbers or out of range, or a
    /// Kubernetes index without `shards`.
    pub fn from_env(shards: Option<usize>) -> Result<Option<Self>> {
        Self::from_vars(|k| std::env::var(k).ok(), shards)
    }

    /// [`Shard::from_env`] reading variables through `var` (testable without the environment).
    ///
    /// # Errors
    /// As [`Shard::from_env`].
    pub fn from_vars(
        var: impl Fn(&str) -> Option<String>,
        shards: Option<usize>,
    ) -> Result<Option<Self>> {
        let number = |name: &'static str| -> Result<Option<usize>> {
            var(name)
                .map(|v| {
                    v.trim()
                        .parse::<usize>()
                        .map_err(|_| Error::InvalidParameter {
                            name,
                            value: v.clone(),
                            reason: "expected a non-negative integer",
                        })
                })
                .transpose()
        };
        if let Some(id) = number("SLURM_ARRAY_TASK_ID")? {
            let min = number("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
            let count = match (shards, number("SLURM_ARRAY_TASK_COUNT")?) {
                (Some(n), _) | (None, Some(n)) => n,
                (None, None) => {
                    return Err(Error::InvalidParameter {
                        name: "SLURM_ARRAY_TASK_COUNT",
                        value: "unset".into(),
                        reason: "a Slurm array task needs its count (or --shards N)",
                    })
                }
            };
            let index = id.checked_sub(min).ok_or(Error::InvalidParameter {
                name: "SLURM_ARRAY_TASK_ID",
                value: id.to_string(),
                reason: "below SLURM_ARRAY_TASK_MIN",
            })?;
            return Self::new(index, count).map(Some);
        }
        if let Some(index) = number("JOB_COMPLETION_INDEX")? {
            let count = shards.ok_or(Error::InvalidParameter {
                name: "JOB_COMPLETION_INDEX",
                value: index.to_string(),
                reason: "an Indexed Job's pod needs --shards N (the job's completions)",
            })?;
            return Self::new(index, count).map(Some);
        }
        Ok(None)
    }

    /// The samples of this shard among `samples` run in batches of `batch`: whole batches, the
    /// run's `⌈samples/batch⌉` batches cut at `⌊k·batches/count⌋`. A shard may be empty when
    /// there are more shards than batches.
    pub fn range(&self, samples: usize, batch: usize) -> Range<usize> {
        let batch = batch.max(1);
        let batches = samples.div_ceil(batch);
        let cut = |k: usize| (k * batches / self.count * batch).min(samples);
        cut(self.index)..cut(self.index + 1)
    }

    /// This shard's record for its report: the shard and its slice of the whole run.
    pub fn info(&self, samples: usize, batch: usize) -> ShardInfo {
        let r = self.range(samples, batch);
        ShardInfo {
            index: self.index,
            count: self.count,
            start: r.start,
            end: r.end,
            total: samples,
        }
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Shard {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::InvalidParameter {
            name: "shard",
            value: s.to_string(),
            reason: "expected I/N with 0 <= I < N (shards count from 0)",
        };
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let i = i.trim().parse().map_err(|_| bad())?;
        let n = n.trim().parse().map_err(|_| bad())?;
        Self::new(i, n)
    }
}

/// Which part of a split run a report covers: shard `index` of `count`, samples
/// `start..end` (positions in the run's selection) of `total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardInfo {
    /// The shard, in `0..count`.
    pub index: usize,
    /// Shards in the run.
    pub count: usize,
    /// First sample of the shard, in the run's selection.
    pub start: usize,
    /// One past its last sample.
    pub end: usize,
    /// Samples in the whole run.
    pub total: usize,
}

/// The report of the whole run from the reports of its shards, in any order: every count,
/// ratio, norm statistic, per-sample column, interval and stage recounted as one run would
/// have, gradient and forward evaluations and wall time added up. Model warnings are shard
/// 0's (its model checks read the run's first samples, as a single run's do).
///
/// # Errors
/// [`Error::ShardMerge`] naming the problem: no reports, a report that is not a shard, shards
/// of different runs (model, weights, data, attack and its parameters, seed, shard count,
/// sample count), a shard given twice or overlapping another, missing shards (named), a
/// report without per-sample columns.
pub fn merge(reports: &[Report]) -> Result<Report> {
    let fail = |reason: String| Error::ShardMerge { reason };
    let first = reports
        .first()
        .ok_or_else(|| fail("no shard reports given".into()))?;
    let info = |r: &Report| {
        r.shard.ok_or_else(|| {
            fail(format!(
                "{} on {} is a whole run, not a shard (it has no shard field)",
                r.model, r.data
            ))
        })
    };
    let head = info(first)?;
    for r in reports {
        let s = info(r)?;
        let differs = |what: &str| {
            fail(format!(
                "shard {}/{} is from a different run than shard {}/{}: {what} differs",
                s.index, s.count, head.index, head.count
            ))
        };
        if r.model != first.model || r.model_sha256 != first.model_sha256 {
            return Err(differs("the model or its weights' sha256"));
        }
        if r.data != first.data || s.total != head.total {
            return Err(differs("the data"));
        }
        if r.attack != first.attack || r.seed != first.seed {
            return Err(differs("the attack, its parameters or the seed"));
        }
        if s.count != head.count {
            return Err(differs("the shard count"));
        }
        if r.stages.len() != first.stages.len() {
            return Err(differs("the ensemble's stages"));
        }
        if r.schema_version != first.schema_version || r.perturb_version != first.perturb_version {
            return Err(differs("perturb's version"));
        }
        if r.intervals.map(|i| (i.method, i.confidence))
            != first.intervals.map(|i| (i.method, i.confidence))
        {
            return Err(differs("the confidence intervals' method or level"));
        }
    }
    let mut sorted: Vec<&Report> = reports.iter().collect();
    sorted.sort_by_key(|r| r.shard.map(|s| (s.index, s.start)));
    let mut seen = vec![false; head.count];
    let mut covered = 0;
    for r in &sorted {
        let s = info(r)?;
        if seen[s.index] {
            return Err(fail(format!(
                "shard {}/{} is given twice",
                s.index, s.count
            )));
        }
        seen[s.index] = true;
        if s.start < covered {
            return Err(fail(format!(
                "shard {}/{} (samples {}..{}) overlaps the shard before it (up to {covered})",
                s.index, s.count, s.start, s.end
            )));
        }
        covered = covered.max(s.end);
    }
    let missing: Vec<String> = (0..head.count)
        .filter(|&i| !seen[i])
        .map(|i| format!("{i}/{}", head.count))
        .collect();
    if !missing.is_empty() {
        return Err(fail(format!("missing shards: {}", missing.join(", "))));
    }
    let mut end = 0;
    for r in &sorted {
        let s = info(r)?;
        if s.start != end {
            return Err(fail(format!(
                "samples {end}..{} are in no shard (shard {}/{} starts at {})",
                s.start, s.index, s.count, s.start
            )));
        }
        end = s.end;
    }
    if end != head.total {
        return Err(fail(format!(
            "samples {end}..{} are in no shard",
            head.total
        )));
    }
    // the per-sample columns, in the run's order
    let mut out = Outcome::default();
    let mut index = Vec::new();
    for r in &sorted {
        let s = info(r)?;
        let p = r.per_sample.as_ref().ok_or_else(|| {
            fail(format!(
                "shard {}/{} has no per-sample columns",
                s.index, s.count
            ))
        })?;
        p.check(r.samples)?;
        if r.samples != s.end - s.start || (r.samples > 0 && p.attacked.len() != r.samples) {
            return Err(fail(format!(
                "shard {}/{} holds {} samples for its range {}..{}",
                s.index, s.count, r.samples, s.start, s.end
            )));
        }
        index.extend_from_slice(&p.index);
        out.labels.extend_from_slice(&p.label);
        out.clean_predictions.extend_from_slice(&p.clean_prediction);
        out.adversarial_predictions
            .extend_from_slice(&p.adversarial_prediction);
        out.success.extend_from_slice(&p.success);
        out.norms.extend_from_slice(&p.norm);
        out.attacked.extend_from_slice(&p.attacked);
    }
    let n = head.total;
    let (clean_correct, robust_correct, successes) = out.counts();
    let attacked = out.attacked.iter().filter(|a| **a).count();
    let mut report = first.clone();
    report.shard = None;
    report.samples = n;
    report.clean_correct = clean_correct;
    report.robust_correct = robust_correct;
    report.successes = successes;
    report.clean_accuracy = ratio(clean_correct, n);
    report.robust_accuracy = ratio(robust_correct, n);
    report.attack_success_rate = ratio(successes, attacked);
    report.perturbation = NormStats::of(&out.attacked_norms());
    report.gradient_evals = sorted.iter().map(|r| r.gradient_evals).sum();
    report.forward_evals = sorted.iter().map(|r| r.forward_evals).sum();
    report.wall_time_s = sorted.iter().map(|r| r.wall_time_s).sum();
    let shard0 = sorted[0];
    for (s, stage) in report.stages.iter_mut().enumerate() {
        stage.fooled = sorted.iter().map(|r| r.stages[s].fooled).sum();
        stage.robust_correct = sorted.iter().map(|r| r.stages[s].robust_correct).sum();
        stage.robust_accuracy = ratio(stage.robust_correct, n);
    }
    report.per_sample = Some(PerSample::of(&out, &index)?);
    if let Some(i) = first.intervals {
        report.set_intervals(crate::metrics::IntervalSpec {
            method: i.method,
            confidence: i.confidence,
        });
    }
    // shard 0's model warnings, then the stage warnings of the whole run
    let shard0_stage = super::stage_warnings(shard0);
    report.warnings = shard0
        .warnings
        .iter()
        .filter(|w| !shard0_stage.contains(w))
        .cloned()
        .collect();
    report.warnings.extend(super::stage_warnings(&report));
    Ok(report)
}

/// The sweep of the whole run from the sweeps of its shards (`perturb eval --shard I/N`): each
/// (attack, ε) report merged by [`merge`], the worst case per ε recounted from the merged
/// per-sample columns, the masking warnings and intervals recomputed as one run would.
///
/// # Errors
/// [`Error::ShardMerge`] for no sweeps or sweeps of different grids, and the errors of
/// [`merge`] for any (attack, ε).
pub fn merge_sweeps(sweeps: &[crate::metrics::Sweep]) -> Result<crate::metrics::Sweep> {
    let fail = |reason: String| Error::ShardMerge { reason };
    let first = sweeps
        .first()
        .ok_or_else(|| fail("no shard sweeps given".into()))?;
    let grid: Vec<f32> = first.worst_case.iter().map(|p| p.eps).collect();
    let (count, per_attack) = (first.reports.len(), grid.len().max(1));
    for s in sweeps {
        let eps: Vec<f32> = s.worst_case.iter().map(|p| p.eps).collect();
        if s.reports.len() != count || eps != grid || s.model != first.model {
            return Err(fail(
                "the sweeps are of different models, attacks or ε grids".into(),
            ));
        }
    }
    let reports = (0..count)
        .map(|k| {
            merge(
                &sweeps
                    .iter()
                    .map(|s| s.reports[k].clone())
                    .collect::<Vec<_>>(),
            )
        })
        .collect::<Result<Vec<_>>>()?;
    let robust: Vec<Vec<Vec<bool>>> = reports
        .chunks(per_attack)
        .map(|attack| {
            attack
                .iter()
                .map(|r| {
                    r.per_sample
                        .as_ref()
                        .map(|p| p.robust.clone())
                        .unwrap_or_default()
                })
                .collect()
        })
        .collect();
    let labels = reports
        .first()
        .and_then(|r| r.per_sample.as_ref())
        .map(|p| p.label.clone())
        .unwrap_or_default();
    let max_share = super::class_share(&labels);
    let mut sweep = crate::metrics::Sweep {
        schema_version: first.schema_version,
        model: first.model.clone(),
        worst_case: crate::metrics::worst_case(&grid, &robust),
        warnings: crate::metrics::masking_warnings(&reports, max_share),
        reports,
    };
    if let Some(i) = sweep.reports.first().and_then(|r| r.intervals) {
        sweep.set_intervals(crate::metrics::IntervalSpec {
            method: i.method,
            confidence: i.confidence,
        });
    }
    Ok(sweep)
}
