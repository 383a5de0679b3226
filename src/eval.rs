//! Running a classifier or an attack over a data set in batches: single runs with a
//! [`Report`], ε sweeps with worst-case curves, and [`assert_robust`] for test suites.

use std::time::Instant;

use candle_core::{DType, Tensor};
use indicatif::{ProgressBar, ProgressStyle};

use crate::attack::Attack;
use crate::data::batches;
use crate::error::{Error, Result};
use crate::goal::Goal;
use crate::metrics::{
    masking_warnings, ratio, worst_case, AttackInfo, NormStats, Outcome, Report, Sweep,
    SCHEMA_VERSION,
};
use crate::model::{checked_logits, predictions, Classifier};

/// Predicted class of every sample of `images`, in batches of `batch_size`.
///
/// # Errors
/// [`Error::InvalidParameter`] for a zero batch size; a model whose output is not `[N, K]`.
pub fn predict(model: &dyn Classifier, images: &Tensor, batch_size: usize) -> Result<Vec<u32>> {
    let mut out = Vec::with_capacity(images.dim(0)?);
    for r in batches(images.dim(0)?, batch_size)? {
        let logits = checked_logits(model, &images.narrow(0, r.start, r.len())?)?;
        out.extend(predictions(&logits)?);
    }
    Ok(out)
}

/// Number of samples whose prediction equals its `u32` label.
///
/// # Errors
/// As [`predict`]; labels that are not `u32` `[N]`.
pub fn count_correct(
    model: &dyn Classifier,
    images: &Tensor,
    labels: &Tensor,
    batch_size: usize,
) -> Result<usize> {
    let pred = predict(model, images, batch_size)?;
    let truth = labels.to_vec1::<u32>()?;
    if truth.len() != pred.len() {
        return Err(Error::ShapeMismatch {
            what: "labels",
            expected: format!("[{}]", pred.len()),
            got: labels.dims().to_vec(),
        });
    }
    Ok(pred.iter().zip(&truth).filter(|(p, t)| p == t).count())
}

/// Number of samples an untargeted `attack` fails to fool, in batches of `batch_size`: the
/// robust accuracy's numerator (misclassified clean samples count as fooled).
///
/// # Errors
/// As [`predict`], plus the attack's errors.
pub fn count_robust(
    model: &dyn Classifier,
    attack: &dyn Attack,
    images: &Tensor,
    labels: &Tensor,
    batch_size: usize,
) -> Result<usize> {
    let mut robust = 0;
    for r in batches(images.dim(0)?, batch_size)? {
        let x = images.narrow(0, r.start, r.len())?;
        let y = labels.narrow(0, r.start, r.len())?;
        let adv = attack.run(model, &x, &Goal::untargeted(&y))?;
        robust += adv.success.iter().filter(|s| !**s).count();
    }
    Ok(robust)
}

/// Default number of samples per batch of an [`Evaluator`].
pub const DEFAULT_BATCH_SIZE: usize = 250;

/// Runs attacks over a labelled data set in batches and reports robust accuracy.
///
/// Only samples the model classifies correctly when clean are attacked; the others count as not
/// robust and keep their clean input. With `progress(true)` an indicatif bar is drawn on stderr
/// (indicatif hides it when stderr is not a terminal).
///
/// ```
/// use candle_core::{Device, Tensor};
/// use perturb::eval::Evaluator;
/// use perturb::{Budget, Pgd};
/// let model = |x: &Tensor| x.flatten_from(1); // logits = the two pixels
/// let x = Tensor::new(&[[[[0.2f32, 0.6]]], [[[0.0, 1.0]]], [[[0.9, 0.1]]]], &Device::Cpu)?;
/// let y = Tensor::new(&[1u32, 1, 1], &Device::Cpu)?;
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
    data_name: String,
    batch_size: usize,
    progress: bool,
    /// Clean predictions, computed once and shared by every run and sweep point.
    clean: std::cell::OnceCell<Vec<u32>>,
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
    /// Evaluate `model` on `images` (`[N, C, H, W]` f32) with `u32` `labels` `[N]`.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] or [`Error::DTypeMismatch`] for labels that are not `u32 [N]`.
    pub fn new(model: &'a dyn Classifier, images: &'a Tensor, labels: &Tensor) -> Result<Self> {
        let n = images.dims().first().copied().unwrap_or(0);
        if labels.dtype() != DType::U32 {
            return Err(Error::DTypeMismatch {
                what: "labels",
                expected: "u32",
                got: labels.dtype(),
            });
        }
        if labels.dims() != [n] {
            return Err(Error::ShapeMismatch {
                what: "labels",
                expected: format!("[{n}]"),
                got: labels.dims().to_vec(),
            });
        }
        Ok(Self {
            model,
            images,
            labels: labels.to_vec1()?,
            model_name: "model".into(),
            data_name: format!("data[0..{n}]"),
            batch_size: DEFAULT_BATCH_SIZE,
            progress: false,
            clean: std::cell::OnceCell::new(),
        })
    }

    /// Name of the model in reports (default `model`).
    pub fn model_name(mut self, name: impl Into<String>) -> Self {
        self.model_name = name.into();
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

    /// Draw a progress bar on stderr (default off).
    pub fn progress(mut self, on: bool) -> Self {
        self.progress = on;
        self
    }

    /// Largest share of one class among the labels: the most robust accuracy any model can keep
    /// when every input can be moved to the same image.
    pub fn max_class_share(&self) -> f64 {
        let mut counts = std::collections::HashMap::new();
        for &l in &self.labels {
            *counts.entry(l).or_insert(0usize) += 1;
        }
        ratio(
            counts.values().copied().max().unwrap_or(0),
            self.labels.len(),
        )
    }

    /// Run `attack` over the data, toward `target` when given (every label must differ from it).
    ///
    /// # Errors
    /// The attack's errors (bad inputs, parameters, a failing gradient check, a target equal to
    /// a label), a model whose output is not `[N, K]`, a zero batch size.
    pub fn run(&self, attack: &dyn Attack, target: Option<u32>) -> Result<Evaluation> {
        self.evaluate(attack, attack.budget().eps(), target)
    }

    /// The model's predictions on the clean data (computed on first use).
    fn clean_predictions(&self) -> Result<&[u32]> {
        if let Some(p) = self.clean.get() {
            return Ok(p);
        }
        let p = predict(self.model, self.images, self.batch_size)?;
        Ok(self.clean.get_or_init(|| p))
    }

    /// Run `attack` at radius `eps`; 0 runs no attack (the clean point of a curve).
    fn evaluate(&self, attack: &dyn Attack, eps: f32, target: Option<u32>) -> Result<Evaluation> {
        let start = Instant::now();
        let n = self.labels.len();
        let bar = self.bar(n, &format!("{} eps {eps}", attack.name()));
        let mut out = Outcome::default();
        let mut x_adv = Vec::new();
        let mut gradient_evals = 0u64;
        for r in batches(n, self.batch_size)? {
            let x = self.images.narrow(0, r.start, r.len())?;
            let labels = &self.labels[r.clone()];
            let clean = self.clean_predictions()?[r.clone()].to_vec();
            let idx: Vec<u32> = (0..r.len() as u32)
                .filter(|&i| clean[i as usize] == labels[i as usize])
                .collect();
            let mut adv_pred = clean.clone();
            let (mut success, mut norms) = (vec![false; r.len()], vec![0f32; r.len()]);
            let mut attacked = vec![false; r.len()];
            let mut batch_adv = x.clone();
            if !idx.is_empty() && eps > 0.0 {
                let dev = x.device();
                let idx_t = Tensor::new(idx.as_slice(), dev)?;
                let xi = x.index_select(&idx_t, 0)?;
                let yi: Vec<u32> = idx.iter().map(|&i| labels[i as usize]).collect();
                let yi = Tensor::new(yi.as_slice(), dev)?;
                let goal = match target {
                    None => Goal::untargeted(&yi),
                    Some(t) => Goal::targeted_with_labels(&Tensor::full(t, idx.len(), dev)?, &yi),
                };
                let adv = attack.run(self.model, &xi, &goal)?;
                gradient_evals += adv.gradient_evals as u64;
                // Rows of [x; adv.x_adv]: clean rows stay, attacked rows are copied exactly.
                let mut rows: Vec<u32> = (0..r.len() as u32).collect();
                for (k, &i) in idx.iter().enumerate() {
                    let i = i as usize;
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
            bar.inc(r.len() as u64);
        }
        bar.finish_and_clear();
        let x_adv = if x_adv.is_empty() {
            self.images.clone()
        } else {
            Tensor::cat(&x_adv, 0)?
        };
        let (clean_correct, robust_correct, successes) = out.counts();
        let mut info = AttackInfo::of(attack);
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
            data: self.data_name.clone(),
            attack: info,
            seed,
            samples: n,
            clean_correct,
            robust_correct,
            successes,
            clean_accuracy: ratio(clean_correct, n),
            robust_accuracy: ratio(robust_correct, n),
            attack_success_rate: ratio(successes, clean_correct),
            perturbation: NormStats::of(&out.attacked_norms()),
            gradient_evals,
            wall_time_s: start.elapsed().as_secs_f64(),
            warnings: Vec::new(),
        };
        Ok(Evaluation {
            report,
            outcome: out,
            x_adv,
        })
    }

    /// Robust accuracy of every attack at every ε (ascending; 0 is the clean point), the worst
    /// case over attacks per ε, and gradient-masking warnings ([`masking_warnings`]). Each
    /// attack runs with its parameters and the budget's radius replaced ([`Attack::at_eps`]).
    ///
    /// # Errors
    /// [`Error::InvalidEpsilon`] for a negative or non-finite ε, an empty ε list or attack list
    /// ([`Error::InvalidParameter`]), and the errors of [`Evaluator::run`].
    pub fn sweep(&self, attacks: &[&dyn Attack], eps: &[f32]) -> Result<Sweep> {
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
        let mut reports = Vec::new();
        let mut robust = Vec::new();
        for attack in attacks {
            let mut per_eps = Vec::new();
            for &e in &eps {
                let run = if e == 0.0 {
                    self.evaluate(*attack, 0.0, None)?
                } else {
                    self.evaluate(attack.at_eps(e)?.as_ref(), e, None)?
                };
                per_eps.push(run.outcome.robust());
                reports.push(run.report);
            }
            robust.push(per_eps);
        }
        let warnings = masking_warnings(&reports, self.max_class_share());
        Ok(Sweep {
            schema_version: SCHEMA_VERSION,
            model: self.model_name.clone(),
            worst_case: worst_case(&eps, &robust),
            reports,
            warnings,
        })
    }

    fn bar(&self, n: usize, message: &str) -> ProgressBar {
        if !self.progress {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(n as u64).with_message(message.to_string());
        if let Ok(style) =
            ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} samples, eta {eta}")
        {
            bar.set_style(style);
        }
        bar
    }
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
    if !(0.0..=1.0).contains(&min_accuracy) {
        return Err(Error::InvalidParameter {
            name: "min_accuracy",
            value: min_accuracy.to_string(),
            reason: "must lie in [0, 1]",
        });
    }
    let report = Evaluator::new(model, images, labels)?
        .run(attack, None)?
        .report;
    if report.robust_accuracy < min_accuracy {
        return Err(Error::NotRobust {
            robust_accuracy: report.robust_accuracy,
            robust: report.robust_correct,
            samples: report.samples,
            attack: format!(
                "{} ({}, eps {})",
                report.attack.name, report.attack.norm, report.attack.eps
            ),
            required: min_accuracy,
        });
    }
    Ok(report)
}
