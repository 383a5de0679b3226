//! THE path that runs attacks over data: the [`Evaluator`] attacks a labelled data set in
//! batches and counts (single runs with a [`Report`], ε sweeps with worst-case curves);
//! [`assert_robust`], the CLI's `gate`, [`count_robust`] and [`predict`] are thin over it.

use std::time::Instant;

use candle_core::Tensor;

use crate::data::batches;
use crate::error::{Error, Result};
use crate::goal::{class_indices, Goal};
use crate::metrics::{
    ratio, AttackInfo, IntervalSpec, NormStats, Outcome, PerSample, Report, StageReport,
    SCHEMA_VERSION,
};
use crate::model::{checked_logits, predictions, Classifier};
use crate::Attack;

mod memory;
mod progress;
mod shard;
mod sweep;
mod transfer;

pub use memory::{available, human_bytes, parse_bytes, MemoryPlan, DATA_COPIES, MEMORY_LIMIT_VAR};
pub use progress::Progress;
pub use shard::{merge, merge_sweeps, Shard, ShardInfo};
pub use transfer::{transfer, TransferCell, TransferMatrix};

/// Largest share of one class among `labels` (0 for none).
pub(crate) fn class_share(labels: &[u32]) -> f64 {
    let mut counts = std::collections::HashMap::new();
    for &l in labels {
        *counts.entry(l).or_insert(0usize) += 1;
    }
    ratio(counts.values().copied().max().unwrap_or(0), labels.len())
}

/// Predicted class of every sample of `images`, in batches of `batch_size`.
///
/// # Errors
/// [`Error::InvalidParameter`] for a zero batch size; a model whose output is not `[N, K]`.
pub fn predict(model: &dyn Classifier, images: &Tensor, batch_size: usize) -> Result<Vec<u32>> {
    let mut out = Vec::with_capacity(images.dim(0)?);
    for r in batches(images.dim(0)?, batch_size)? {
        let logits =
            checked_logits(model, &images.narrow(0, r.start, r.len())?).map_err(|e| match e {
                // positions in `images`, not in the batch
                Error::NonFiniteLogits { samples } => Error::NonFiniteLogits {
                    samples: samples.into_iter().map(|i| r.start + i).collect(),
                },
                e => e,
            })?;
        out.extend(predictions(&logits)?);
    }
    Ok(out)
}

/// Number of samples whose prediction equals its label (`u32`, `i64` or `u8` `[N]`).
///
/// # Errors
/// As [`predict`]; labels of another shape or dtype.
pub fn count_correct(
    model: &dyn Classifier,
    images: &Tensor,
    labels: &Tensor,
    batch_size: usize,
) -> Result<usize> {
    let eval = Evaluator::new(model, images, labels)?.batch_size(batch_size);
    eval.clean_correct()
}

/// Number of samples an untargeted `attack` fails to fool, in batches of `batch_size`, attacking
/// every sample (misclassified clean samples count as fooled unless the attack moves them to
/// their label): an [`Evaluator`] with [`Attacked::All`].
///
/// # Errors
/// As [`Evaluator::run`].
pub fn count_robust(
    model: &dyn Classifier,
    attack: &dyn Attack,
    images: &Tensor,
    labels: &Tensor,
    batch_size: usize,
) -> Result<usize> {
    let run = Evaluator::new(model, images, labels)?
        .batch_size(batch_size)
        .attacked(Attacked::All)
        .run(attack, None)?;
    Ok(run.outcome.success.iter().filter(|s| !**s).count())
}

/// A progress callback ([`Evaluator::on_progress`]).
type ProgressFn<'a> = Box<dyn Fn(Progress<'_>) + 'a>;

/// Default number of samples per batch of an [`Evaluator`].
pub const DEFAULT_BATCH_SIZE: usize = 250;

/// Which samples an [`Evaluator`] attacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Attacked {
    /// Those the model classifies correctly when clean (RobustBench's convention); the others
    /// count as not robust and keep their clean input.
    #[default]
    CorrectlyClassified,
    /// Every sample (the attack's success on misclassified samples is recorded too).
    All,
}

/// Runs attacks over a labelled data set in batches and reports robust accuracy.
///
/// Labels are `u32`, `i64` or `u8` `[N]`, as for [`Goal`]. Progress goes to an optional
/// callback ([`on_progress`](Evaluator::on_progress)); the library draws nothing itself.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use perturb::eval::Evaluator;
/// use perturb::{Budget, Pgd};
/// let model = |x: &Tensor| x.flatten_from(1); // logits = the two pixels
/// let x = Tensor::new(&[[[[0.2f32, 0.6]]], [[[0.0, 1.0]]], [[[0.9, 0.1]]]], &Device::Cpu)?;
/// let y = Tensor::new(&[1i64, 1, 1], &Device::Cpu)?;
/// let eval = Evaluator::new(&model, &x, &y)?.model_name("two-pixels");
/// let run = eval.run(&Pgd::new(Budget::linf(0.3)?).seed(1), None)?;
/// // the third sample is already wrong; the first flips; the second holds
/// assert_eq!((run.report.clean_correct, run.report.robust_correct), (2, 1));
/// assert_eq!(run.report.attack_success_rate, 0.5);
/// # Ok::<(), perturb::Error>(())
/// ```
pub struct Evaluator<'a> {
    model: &'a dyn Classifier,
    images: &'a Tensor,
    labels: Vec<u32>,
    model_name: String,
    model_sha256: Option<String>,
    data_name: String,
    batch_size: usize,
    attacked: Attacked,
    sample_indices: Option<Vec<usize>>,
    shard: Option<ShardInfo>,
    intervals: IntervalSpec,
    progress: Option<ProgressFn<'a>>,
    /// Clean predictions, computed once and shared by every run and sweep point.
    clean: std::cell::OnceCell<Vec<u32>>,
    /// Warnings about the model itself ([`Evaluator::model_checks`]), computed once: a sweep
    /// runs many attacks on the same model and data.
    model_warnings: std::cell::OnceCell<Vec<String>>,
}

/// One attack over a data set: the report, the per-sample outcome and the adversarial inputs.
#[derive(Debug, Clone)]
pub struct Evaluation {
    /// Aggregated figures.
    pub report: Report,
    /// Per-sample predictions, success and norms.
    pub outcome: Outcome,
    /// Adversarial inputs, same shape as the data (clean inputs where nothing was attacked).
    pub x_adv: Tensor,
}

impl<'a> Evaluator<'a> {
    /// Evaluate `model` on `images` (`[N, C, H, W]` f32) with `labels` `[N]` (`u32`, `i64`, `u8`).
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] or [`Error::DTypeMismatch`] for labels that are not `[N]` of
    /// those dtypes; [`Error::LabelOutOfRange`] for a negative label.
    pub fn new(model: &'a dyn Classifier, images: &'a Tensor, labels: &Tensor) -> Result<Self> {
        let n = images.dims().first().copied().unwrap_or(0);
        let labels = class_indices("labels", labels, n)?
            .into_iter()
            .enumerate()
            .map(|(index, class)| {
                u32::try_from(class).map_err(|_| Error::LabelOutOfRange {
                    what: "labels",
                    index,
                    class,
                    classes: u32::MAX as usize,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            model,
            images,
            labels,
            model_name: "model".into(),
            model_sha256: None,
            data_name: format!("data[0..{n}]"),
            batch_size: DEFAULT_BATCH_SIZE,
            attacked: Attacked::default(),
            sample_indices: None,
            shard: None,
            intervals: IntervalSpec::default(),
            progress: None,
            clean: std::cell::OnceCell::new(),
            model_warnings: std::cell::OnceCell::new(),
        })
    }

    /// Name of the model in reports (default `model`).
    pub fn model_name(mut self, name: impl Into<String>) -> Self {
        self.model_name = name.into();
        self
    }

    /// sha256 (hex) of the model's weights in reports (default none; a zoo model knows its own:
    /// [`ZooModel::sha256`](crate::zoo::ZooModel::sha256)).
    pub fn model_sha256(mut self, hex: impl Into<String>) -> Self {
        self.model_sha256 = Some(hex.into());
        self
    }

    /// Name of the data in reports (default `data[0..N]`).
    pub fn data_name(mut self, name: impl Into<String>) -> Self {
        self.data_name = name.into();
        self
    }

    /// Samples per batch (default [`DEFAULT_BATCH_SIZE`]); 0 is an error at run time.
    pub fn batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size;
        self
    }

    /// Which samples are attacked (default [`Attacked::CorrectlyClassified`]).
    pub fn attacked(mut self, attacked: Attacked) -> Self {
        self.attacked = attacked;
        self
    }

    /// Marks the reports as one shard of a split run ([`Shard::info`]): the images given are
    /// that shard's, `info` says which part of the whole run they are; [`merge`] joins the
    /// shards' reports.
    pub fn shard(mut self, info: ShardInfo) -> Self {
        self.shard = Some(info);
        self
    }

    /// Each sample's position in its data set, recorded in the reports' per-sample outcomes
    /// ([`PerSample::index`]); default `0..N`. A list of another length is an error at run time.
    pub fn sample_indices(mut self, indices: Vec<usize>) -> Self {
        self.sample_indices = Some(indices);
        self
    }

    /// How the reports' confidence intervals are computed (default Wilson at 95 %).
    pub fn intervals(mut self, spec: IntervalSpec) -> Self {
        self.intervals = spec;
        self
    }

    /// Call `f` as batches finish (the CLI draws a progress bar with it).
    pub fn on_progress(mut self, f: impl Fn(Progress<'_>) + 'a) -> Self {
        self.progress = Some(Box::new(f));
        self
    }

    /// Largest share of one class among the labels: the most robust accuracy any model can keep
    /// when every input can be moved to the same image.
    pub fn max_class_share(&self) -> f64 {
        class_share(&self.labels)
    }

    /// Number of samples the model classifies correctly when clean.
    ///
    /// # Errors
    /// As [`predict`].
    pub fn clean_correct(&self) -> Result<usize> {
        let clean = self.clean_predictions()?;
        Ok(clean
            .iter()
            .zip(&self.labels)
            .filter(|(p, l)| p == l)
            .count())
    }

    /// Run `attack` over the data, toward `target` when given (every label must differ from it).
    ///
    /// # Errors
    /// The attack's errors (bad inputs, parameters, a failing gradient check, a target equal to
    /// a label), a model whose output is not `[N, K]`, a zero batch size.
    pub fn run(&self, attack: &dyn Attack, target: Option<u32>) -> Result<Evaluation> {
        let eps = attack.threat().budget().map(|b| b.eps());
        self.evaluate(Some(attack), eps, target)
    }

    /// The model's predictions on the clean data (computed on first use).
    fn clean_predictions(&self) -> Result<&[u32]> {
        if let Some(p) = self.clean.get() {
            return Ok(p);
        }
        let mut p = Vec::with_capacity(self.labels.len());
        // every batch is judged before a non-finite sample is reported, so that the error
        // names the first ones of the data set, not of the first bad batch
        let mut non_finite = Vec::new();
        for r in batches(self.labels.len(), self.batch_size)? {
            let x = self.images.narrow(0, r.start, r.len())?;
            match checked_logits(self.model, &x) {
                Ok(logits) => p.extend(predictions(&logits)?),
                Err(e @ Error::NonFiniteLogits { .. }) => {
                    if let Error::NonFiniteLogits { samples } = self.in_data_set(e, |i| r.start + i)
                    {
                        non_finite.extend(samples);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        if !non_finite.is_empty() {
            non_finite.truncate(10);
            return Err(Error::NonFiniteLogits {
                samples: non_finite,
            });
        }
        Ok(self.clean.get_or_init(|| p))
    }

    /// Run `attack` (none: the clean point of a curve) at radius `eps` (none: no budget).
    fn evaluate(
        &self,
        attack: Option<&dyn Attack>,
        eps: Option<f32>,
        target: Option<u32>,
    ) -> Result<Evaluation> {
        let start = Instant::now();
        let n = self.labels.len();
        let label = attack.map_or("clean".to_string(), |a| match eps {
            Some(e) => format!("{} eps {e}", a.name()),
            None => a.name().to_string(),
        });
        self.report_progress(&label, 0, n);
        let mut out = Outcome::default();
        let mut x_adv = Vec::new();
        let (mut gradient_evals, mut forward_evals) = (0u64, 0u64);
        // an ensemble's stages: samples correct when clean that each stage fooled
        let mut stage_fooled: Vec<usize> = Vec::new();
        for r in batches(n, self.batch_size)? {
            let x = self.images.narrow(0, r.start, r.len())?;
            let labels = &self.labels[r.clone()];
            let clean = self.clean_predictions()?[r.clone()].to_vec();
            let idx: Vec<u32> = (0..r.len() as u32)
                .filter(|&i| {
                    self.attacked == Attacked::All || clean[i as usize] == labels[i as usize]
                })
                .collect();
            let mut adv_pred = clean.clone();
            let (mut success, mut norms) = (vec![false; r.len()], vec![0f32; r.len()]);
            let mut attacked = vec![false; r.len()];
            let mut batch_adv = x.clone();
            if let (false, Some(attack)) = (idx.is_empty(), attack) {
                let dev = x.device();
                let idx_t = Tensor::new(idx.as_slice(), dev)?;
                let xi = x.index_select(&idx_t, 0)?;
                let yi: Vec<u32> = idx.iter().map(|&i| labels[i as usize]).collect();
                let yi = Tensor::new(yi.as_slice(), dev)?;
                let goal = match target {
                    None => Goal::untargeted(&yi),
                    Some(t) => Goal::targeted_with_labels(&Tensor::full(t, idx.len(), dev)?, &yi),
                };
                let adv = attack
                    .run(self.model, &xi, &goal)
                    .map_err(|e| self.in_data_set(e, |k| r.start + idx[k] as usize))?;
                gradient_evals += adv.gradient_evals as u64;
                forward_evals += adv.forward_evals as u64;
                // Rows of [x; adv.x_adv]: clean rows stay, attacked rows are copied exactly.
                let mut rows: Vec<u32> = (0..r.len() as u32).collect();
                for (k, &i) in idx.iter().enumerate() {
                    let i = i as usize;
                    if let Some(Some(s)) = adv.fooled_by.get(k) {
                        if clean[i] == labels[i] {
                            if stage_fooled.len() <= *s {
                                stage_fooled.resize(s + 1, 0);
                            }
                            stage_fooled[*s] += 1;
                        }
                    }
                    adv_pred[i] = adv.predictions[k];
                    success[i] = adv.success[k];
                    norms[i] = adv.norms[k];
                    attacked[i] = true;
                    rows[i] = (r.len() + k) as u32;
                }
                let both = Tensor::cat(&[&x, &adv.x_adv], 0)?;
                batch_adv = both.index_select(&Tensor::new(rows.as_slice(), dev)?, 0)?;
            }
            out.labels.extend_from_slice(labels);
            out.clean_predictions.extend(clean);
            out.adversarial_predictions.extend(adv_pred);
            out.success.extend(success);
            out.norms.extend(norms);
            out.attacked.extend(attacked);
            x_adv.push(batch_adv);
            self.report_progress(&label, r.end, n);
        }
        let x_adv = if x_adv.is_empty() {
            self.images.clone()
        } else {
            Tensor::cat(&x_adv, 0)?
        };
        let (clean_correct, robust_correct, successes) = out.counts();
        let attacked_count = out.attacked.iter().filter(|a| **a).count();
        let mut info = match attack {
            Some(a) => AttackInfo::of(a),
            None => AttackInfo {
                name: "none".into(),
                norm: None,
                eps: None,
                target: None,
                params: serde_json::json!({}),
            },
        };
        info.eps = eps;
        info.target = target;
        let seed = info
            .params
            .get("seed")
            .and_then(|s| s.as_u64())
            .unwrap_or(0);
        let report = Report {
            schema_version: SCHEMA_VERSION,
            perturb_version: env!("CARGO_PKG_VERSION").to_string(),
            model: self.model_name.clone(),
            model_sha256: self.model_sha256.clone(),
            data: self.data_name.clone(),
            attack: info,
            seed,
            samples: n,
            clean_correct,
            robust_correct,
            successes,
            clean_accuracy: ratio(clean_correct, n),
            robust_accuracy: ratio(robust_correct, n),
            attack_success_rate: ratio(successes, attacked_count),
            perturbation: NormStats::of(&out.attacked_norms()),
            gradient_evals,
            forward_evals,
            wall_time_s: start.elapsed().as_secs_f64(),
            warnings: Vec::new(),
            stages: stage_reports(attack, &stage_fooled, robust_correct, n),
            intervals: None,
            per_sample: None,
            shard: self.shard,
        };
        let mut report = report;
        let indices = match &self.sample_indices {
            Some(v) => std::borrow::Cow::Borrowed(v.as_slice()),
            None => std::borrow::Cow::Owned((0..n).collect::<Vec<_>>()),
        };
        report.per_sample = Some(PerSample::of(&out, &indices)?);
        report.set_intervals(self.intervals);
        if attack.is_some() {
            report.warnings = self.model_warnings()?.to_vec();
        }
        report.warnings.extend(stage_warnings(&report));
        Ok(Evaluation {
            report,
            outcome: out,
            x_adv,
        })
    }

    /// A [`Error::NonFiniteLogits`] from one batch, its samples renamed from positions in that
    /// batch (`at` maps them to positions in `images`) to positions in the data set
    /// ([`Evaluator::sample_indices`]), so that the message names the samples a user can find.
    fn in_data_set(&self, e: Error, at: impl Fn(usize) -> usize) -> Error {
        match e {
            Error::NonFiniteLogits { samples } => Error::NonFiniteLogits {
                samples: samples
                    .into_iter()
                    .map(|i| {
                        let i = at(i);
                        self.sample_indices
                            .as_ref()
                            .and_then(|s| s.get(i).copied())
                            .unwrap_or(i)
                    })
                    .collect(),
            },
            e => e,
        }
    }

    fn report_progress(&self, label: &str, done: usize, total: usize) {
        if let Some(f) = &self.progress {
            f(Progress { label, done, total });
        }
    }
}

impl Evaluator<'_> {
    /// Checks of the model itself, as AutoAttack flags them, on up to 16 of the images: two
    /// identical calls must give the same logits (a randomized model needs EOT, not one
    /// evaluation), and outputs must be logits, not probabilities (rows of non-negative values
    /// summing to 1, on which margins and DLR mean something else).
    /// [`Evaluator::model_checks`], computed on first use.
    fn model_warnings(&self) -> Result<&[String]> {
        if let Some(w) = self.model_warnings.get() {
            return Ok(w);
        }
        let w = self.model_checks()?;
        Ok(self.model_warnings.get_or_init(|| w))
    }

    fn model_checks(&self) -> Result<Vec<String>> {
        let n = self.labels.len().min(16);
        if n == 0 {
            return Ok(Vec::new());
        }
        let x = self.images.narrow(0, 0, n)?;
        let first =
            crate::model::checked_logits(self.model, &x)?.to_dtype(candle_core::DType::F32)?;
        let second =
            crate::model::checked_logits(self.model, &x)?.to_dtype(candle_core::DType::F32)?;
        let mut out = Vec::new();
        let (a, b) = (first.to_vec2::<f32>()?, second.to_vec2::<f32>()?);
        if a != b {
            out.push(
                "the model's outputs differ between two identical calls: a randomized model needs \
                 an evaluation with expectation over its randomness (EOT), not a single run"
                    .to_string(),
            );
        }
        let probabilities = a.iter().all(|row| {
            row.iter().all(|v| *v >= 0.0)
                && (row.iter().map(|v| f64::from(*v)).sum::<f64>() - 1.0).abs() < 1e-4
        });
        // zero input gradients of cross-entropy on the first samples: a flat loss
        // there (a saturated softmax, or gradients masked on purpose); a model without backward
        // is the black-box attacks' business and is not flagged here
        let labels = Tensor::new(&self.labels[..n], x.device())?;
        if let Ok(lg) = crate::model::loss_and_grad(
            self.model,
            &x,
            &Goal::untargeted(&labels),
            crate::loss::Loss::CrossEntropy,
        ) {
            let g = lg
                .grad
                .flatten_from(1)?
                .abs()?
                .max(1)?
                .to_dtype(candle_core::DType::F32)?;
            let zero = g.to_vec1::<f32>()?.iter().filter(|v| **v == 0.0).count();
            if zero > 0 {
                out.push(format!(
                    "cross-entropy's input gradient is exactly zero on {zero} of the first {n} \
                     samples: gradient attacks cannot move them (a saturated softmax or masked \
                     gradients); prefer the DLR or CW losses, or a suite with Square"
                ));
            }
        }
        if probabilities {
            out.push(
                "the model's outputs look like probabilities (non-negative rows summing to 1), \
                 not logits: losses and margins assume logits; remove the final softmax"
                    .to_string(),
            );
        }
        Ok(out)
    }
}

/// Warnings from an ensemble's stages: a gradient-free stage (Square) fooling samples that the
/// gradient attacks before it left robust means the model's gradients mislead them.
fn stage_warnings(report: &Report) -> Vec<String> {
    let gradient_before = |s: usize| report.stages[..s].iter().any(|st| st.attack != "square");
    report
        .stages
        .iter()
        .enumerate()
        .filter(|(s, st)| st.attack == "square" && st.fooled > 0 && gradient_before(*s))
        .map(|(_, st)| {
            format!(
                "square, which uses no gradient, fooled {} samples the gradient attacks before \
                 it could not: the model's gradients are misleading (masked or obfuscated), so \
                 no gradient-attack figure alone should be quoted",
                st.fooled
            )
        })
        .collect()
}

/// The per-stage table of an ensemble run: names from the attack's `stages` parameter, robust
/// counts after each stage from those the later stages fooled. Empty for a single attack.
fn stage_reports(
    attack: Option<&dyn Attack>,
    fooled: &[usize],
    robust_correct: usize,
    samples: usize,
) -> Vec<StageReport> {
    let Some(stages) = attack.and_then(|a| a.params().get("stages").cloned()) else {
        return Vec::new();
    };
    let names: Vec<String> = stages
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| s["attack"].as_str().unwrap_or("?").to_string())
                .collect()
        })
        .unwrap_or_default();
    let count = |s: usize| fooled.get(s).copied().unwrap_or(0);
    (0..names.len())
        .map(|s| {
            let later: usize = (s + 1..names.len()).map(count).sum();
            let robust = robust_correct + later;
            StageReport {
                attack: names[s].clone(),
                fooled: count(s),
                robust_correct: robust,
                robust_accuracy: ratio(robust, samples),
                robust_interval: None,
            }
        })
        .collect()
}

/// Check that `model` keeps at least `min_accuracy` robust accuracy against `attack` on the
/// labelled data, for test suites of model pipelines; returns the report when it holds.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use perturb::{eval::assert_robust, Budget, Error, Fgsm};
/// let model = |x: &Tensor| x.flatten_from(1);
/// let x = Tensor::new(&[[[[0.2f32, 0.6]]], [[[0.0, 1.0]]]], &Device::Cpu)?;
/// let y = Tensor::new(&[1u32, 1], &Device::Cpu)?;
/// let fgsm = Fgsm::new(Budget::linf(0.3)?);
/// assert!(assert_robust(&model, &x, &y, &fgsm, 0.5).is_ok());
/// let err = assert_robust(&model, &x, &y, &fgsm, 0.9).unwrap_err();
/// assert!(matches!(err, Error::NotRobust { .. }));
/// println!("{err}"); // robust accuracy 0.5000 (1 of 2) against fgsm (linf, eps 0.3) ...
/// # Ok::<(), perturb::Error>(())
/// ```
///
/// # Errors
/// [`Error::NotRobust`] when robust accuracy falls short, [`Error::InvalidParameter`] for a
/// `min_accuracy` outside `[0, 1]`, and the errors of [`Evaluator::run`].
pub fn assert_robust(
    model: &dyn Classifier,
    images: &Tensor,
    labels: &Tensor,
    attack: &dyn Attack,
    min_accuracy: f64,
) -> Result<Report> {
    // a bad threshold fails before any compute
    Report::check_threshold(min_accuracy)?;
    let report = Evaluator::new(model, images, labels)?
        .run(attack, None)?
        .report;
    if !report.meets(min_accuracy)? {
        return Err(Error::NotRobust {
            robust_accuracy: report.robust_accuracy,
            robust: report.robust_correct,
            samples: report.samples,
            attack: report.attack.describe(),
            required: min_accuracy,
        });
    }
    Ok(report)
}
