//! Command-line arguments and what they load.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use clap::{Args, Parser, Subcommand};
use perturb::attack::{AttackSpec, Ensemble, FixedBudget, Registry};
use perturb::data::{load_image, load_photo, Fit, Mnist};
use perturb::eval::{Shard, ShardInfo};
use perturb::metrics::{IntervalMethod, IntervalSpec};
use perturb::zoo::{self, Arch};

use crate::model::{CliModel, Normalization};
use perturb::Norm;
use serde_json::Value;

const EXAMPLES: &str = "\
Examples:
  perturb models
  perturb attack --model mnist-cnn --attack pgd --eps 0.1 --steps 40 --step-size 0.01 --n 500 \\
      --json report.json --grid grid.png --save-adversarials adv.safetensors
  perturb attack --model mnist-cnn --attack pgd --eps 0.2 --targeted 3 --n 100
  perturb attack --model efficientnet-lite0 --image assets/images/chelsea.png --targeted toaster \\
      --eps 0.004 --steps 50 --save-png out/
  perturb eval --model mnist-cnn --attacks fgsm,pgd --eps 0,0.05,0.1,0.15,0.2 --plot curve.png
  perturb gate --model mnist-cnn --attack pgd --eps 0.05 --min-robust-accuracy 0.9 --n 1000
  perturb attack --model mnist-cnn --attack pgd --eps 0.3 --param steps=100 --param restarts=5
  perturb gate --model mnist-cnn --attack-spec pgd40.json --min-robust-accuracy 0.5
  perturb gate --model new.safetensors --arch small-cnn --attack pgd --eps 0.1 --n 500 \
      --baseline last-release.json --max-drop 0.01 --junit gate.xml --markdown gate.md
  perturb attacks
  perturb attack --model my.safetensors --arch small-cnn --sha256 HEX --attack fgsm --eps 0.1

Exit codes: 0 success (gate: PASS), 1 the gate failed (FAIL), 2 a usage or input error,
3 the gate is INCONCLUSIVE (the confidence interval straddles the threshold: more samples).
Data: the MNIST test set shipped in data/mnist (the first --n images from --offset), or the
image files given with --image (labelled with the model's own predictions).";

/// Adversarial attacks and robustness tests for candle image classifiers.
#[derive(Parser, Debug)]
#[command(name = "perturb", version, about, after_help = EXAMPLES)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// List the shipped models, their clean accuracy and whether their checksum verifies.
    Models,
    /// Check every file of models/, data/ and assets/ (under PERTURB_HOME or the checkout)
    /// against the manifests compiled into perturb; exit 1 naming each file that differs.
    Verify {
        /// Also write every file's status as JSON.
        #[arg(long)]
        json: Option<std::path::PathBuf>,
    },
    /// List the attacks, their kind and their parameters with defaults (for --param).
    Attacks,
    /// Attack a model on test images and report clean and robust accuracy.
    Attack(AttackArgs),
    /// Sweep ε for one or more attacks: accuracy-vs-ε table, curve, worst case, warnings.
    Eval(EvalArgs),
    /// For CI: robust accuracy against a threshold (with its confidence interval) and/or a
    /// baseline report; exit 0 PASS, 1 FAIL, 3 INCONCLUSIVE.
    Gate(GateArgs),
    /// Universal adversarial patches: train one, measure a saved one, paste it on images.
    Patch(crate::patch::PatchArgs),
    /// Craft adversarial examples on one model (--model or --source) and judge them with others:
    /// the transfer matrix, one row per attack, one column per model.
    Transfer(crate::transfer::TransferArgs),
    /// Join the --json reports of a run's shards (`attack --shard I/N`) into the whole run's
    /// report; refuses shards of different runs, overlapping or missing shards (exit 2).
    Merge(crate::shard::MergeArgs),
    /// What a model is (input, classes, ONNX operators) and whether gradient attacks can be
    /// trusted on it (gradient-free operators, the gradient check, determinism); exit 1 if not.
    Inspect(crate::inspect::InspectArgs),
}

/// Model, data and device.
#[derive(Args, Debug)]
pub struct Common {
    /// A shipped model name (see `perturb models`) or a path to safetensors weights (`transfer`
    /// also calls it --source).
    #[arg(long, alias = "source")]
    pub model: String,
    /// Architecture of weights given by path: mnist-linear, small-cnn or efficientnet-lite0
    /// (not for an ONNX file, which holds its graph).
    #[arg(long)]
    pub arch: Option<String>,
    /// `C,H,W` of an ONNX model's input where its graph leaves it symbolic.
    #[arg(long, value_name = "C,H,W")]
    pub input_shape: Option<String>,
    /// Per-channel mean that an ONNX model expects subtracted from [0, 1] pixels, when its graph
    /// does not do it (`0.485,0.456,0.406` for torchvision's ImageNet models); with --std.
    #[arg(long, value_name = "M,M,M", requires = "std")]
    pub mean: Option<String>,
    /// Per-channel std to divide by after --mean (`0.229,0.224,0.225` for torchvision's).
    /// Attacks, ε and budgets stay in pixel space.
    #[arg(long, value_name = "S,S,S", requires = "mean")]
    pub std: Option<String>,
    /// Attack these image files (PNG, JPEG; repeat the flag) instead of the MNIST test set. Each
    /// image's label is the model's own prediction on it; photos are resized to the model's
    /// input (shorter side, then the central square).
    #[arg(long = "image", value_name = "PATH", conflicts_with = "data")]
    pub images: Vec<PathBuf>,
    /// Attack a labelled image directory: DIR/labels.csv lists `file,label` rows (a class index
    /// or name per image, paths relative to DIR); --n and --offset select rows. For
    /// ImageNet-style sets, sharded with --shard.
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Expected sha256 (hex) of weights given by path; loading fails on a mismatch.
    #[arg(long)]
    pub sha256: Option<String>,
    /// Number of MNIST images (default 1000; from the test set, or the training set for `patch
    /// train`; not with --image).
    #[arg(long)]
    pub n: Option<usize>,
    /// Index of the first MNIST image (default 0; not with --image).
    #[arg(long)]
    pub offset: Option<usize>,
    /// Images per batch.
    #[arg(long, default_value_t = 250)]
    pub batch_size: usize,
    /// cpu, cuda or cuda:<index>.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// Attack parameters shared by `attack`, `eval` and `gate` (ε aside).
#[derive(Args, Debug, Clone)]
pub struct Spec {
    /// Norm of the budget: linf (inf), l2 (2) or l1 (1).
    #[arg(long)]
    pub norm: Option<String>,
    /// An attack parameter KEY=VALUE (repeat the flag), e.g. `--param steps=40 --param
    /// loss=dlr`; `perturb attacks` lists every attack's parameters and defaults. VALUE is read
    /// as JSON where it parses (numbers, true, {"cw_margin": {"kappa": 0}}), else as text.
    #[arg(long = "param", value_name = "KEY=VALUE")]
    pub params: Vec<String>,
    /// A JSON attack spec, e.g. {"attack": "pgd", "norm": "l2", "eps": 0.5, "steps": 40};
    /// flags given on the command line override its values.
    #[arg(long, value_name = "FILE")]
    pub attack_spec: Option<PathBuf>,
    /// The loss to ascend: ce (cross-entropy, default), cw (Carlini-Wagner margin, kappa 0) or
    /// dlr; the same as --param loss=....
    #[arg(long, value_parser = ["ce", "cw", "dlr"])]
    pub loss: Option<String>,
    /// Steps of iterative attacks (default 10); the same as --param steps=N.
    #[arg(long)]
    pub steps: Option<usize>,
    /// Step size of iterative attacks (default 2.5·ε/steps); --param step_size=A.
    #[arg(long)]
    pub step_size: Option<f32>,
    /// Runs per sample (restarts attack only the samples not yet fooled); --param restarts=R.
    #[arg(long)]
    pub restarts: Option<usize>,
    /// Seed of the random start (default 0); --param seed=S.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Start at the clean input instead of a random point of the ball; --param
    /// random_start=false.
    #[arg(long)]
    pub no_random_start: bool,
    /// Keep stepping after a sample is fooled (by default the CLI lets it leave the batch);
    /// --param early_stop=false.
    #[arg(long)]
    pub no_early_stop: bool,
}

/// How confidence intervals are computed (`attack`, `eval`, `gate`).
#[derive(Args, Debug)]
pub struct Confidence {
    /// Confidence level of the intervals printed and written, in [0, 1); 0 gives the point
    /// estimate alone (for `gate`: the threshold is compared with the estimate itself).
    #[arg(long, default_value_t = 0.95)]
    pub confidence: f64,
    /// Interval method: wilson (score interval) or clopper-pearson (exact, conservative).
    #[arg(long, default_value = "wilson", value_parser = ["wilson", "clopper-pearson"])]
    pub interval: String,
}

impl Confidence {
    /// The spec, checked.
    pub fn spec(&self) -> Result<IntervalSpec> {
        let method: IntervalMethod = self.interval.parse()?;
        IntervalSpec::new(method, self.confidence).context("--confidence")
    }
}

/// One attack, its radius and its parameters: what `attack` and `gate` run.
#[derive(Args, Debug)]
pub struct Chosen {
    /// The attack: fgsm, bim, pgd, apgd, apgd-t, fab-t, square, mi-fgsm, cw, deepfool or ddn
    /// (`perturb attacks` lists them);
    /// default pgd,
    /// or the one --attack-spec names.
    #[arg(long, conflicts_with = "suite")]
    pub attack: Option<String>,
    /// Run an ensemble instead: each attack on the samples the ones before left robust, the
    /// per-sample worst case. `standard` (apgd, apgd-t, fab-t, square: AutoAttack's), `fast`
    /// (apgd, apgd-t) or a comma-separated list of attacks.
    #[arg(long)]
    pub suite: Option<String>,
    /// Radius of the budget, a number or a fraction such as 8/255 (or the spec file's eps).
    #[arg(long, value_parser = parse_number, allow_negative_numbers = true)]
    pub eps: Option<f32>,
    #[command(flatten)]
    pub spec: Spec,
}

impl Chosen {
    /// The attack (or suite) for inputs of shape `input`, checked by the registry.
    pub fn build(&self, input: [usize; 3]) -> Result<Box<dyn FixedBudget>> {
        match &self.suite {
            Some(suite) => self.spec.build_suite(suite, self.eps, input),
            None => self
                .spec
                .build(self.attack.as_deref(), self.eps, input, Scope::One),
        }
    }
}

/// The attacks of a suite: `standard` (AutoAttack's), `fast` (its APGD half) or a list of
/// registry names.
pub fn suite_attacks(suite: &str) -> Result<(String, Vec<String>)> {
    match suite.trim() {
        "fast" => Ok(("fast".into(), vec!["apgd".into(), "apgd-t".into()])),
        "standard" => Ok((
            "standard".into(),
            ["apgd", "apgd-t", "fab-t", "square"]
                .map(String::from)
                .to_vec(),
        )),
        list => {
            let names: Vec<String> = list.split(',').map(|n| n.trim().to_string()).collect();
            if names.iter().any(String::is_empty) {
                bail!("--suite {list:?}: expected fast or a comma-separated list of attacks");
            }
            Ok(("ensemble".into(), names))
        }
    }
}

#[derive(Args, Debug)]
pub struct AttackArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub chosen: Chosen,
    #[command(flatten)]
    pub confidence: Confidence,
    /// Targeted attack toward this class, an index or an ImageNet class name (`toaster`); images
    /// of that class are skipped.
    #[arg(long)]
    pub targeted: Option<String>,
    /// Write the report as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the report as CSV.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// Write a PNG grid of clean, perturbation and adversarial images.
    #[arg(long)]
    pub grid: Option<PathBuf>,
    /// Write x, x_adv, labels and predictions as safetensors.
    #[arg(long)]
    pub save_adversarials: Option<PathBuf>,
    /// Write each adversarial image as a lossless PNG into this folder (`<name>.adv.png`, or
    /// `<index>.adv.png` for MNIST); re-reading one reproduces its prediction up to the 8-bit
    /// rounding of the file.
    #[arg(long, value_name = "DIR")]
    pub save_png: Option<PathBuf>,
    /// Replace an existing --save-adversarials file.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub shard: crate::shard::ShardArgs,
    /// Keep progress in DIR: each batch's report is written there as it completes (a whole
    /// file or none); run the same command again to continue where a killed run stopped. The
    /// final report equals an uninterrupted run's (wall time aside). Reports only: not with
    /// --save-adversarials, --grid or --save-png.
    #[arg(long, value_name = "DIR")]
    pub resume: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub common: Common,
    /// Comma-separated attacks: fgsm, bim, pgd, apgd, apgd-t (`perturb attacks` lists them).
    #[arg(long, default_value = "fgsm,pgd")]
    pub attacks: String,
    /// Also sweep an ensemble: `standard` (apgd, apgd-t, fab-t, square), `fast` (apgd, apgd-t)
    /// or a comma-separated list of attacks, each run on the samples the ones before left robust.
    #[arg(long)]
    pub suite: Option<String>,
    /// Comma-separated radii (numbers or fractions such as 8/255); 0 is the clean point.
    /// Default by --norm: linf 0,0.05,…,0.3; l2 0,0.5,…,3; l1 0,2,…,12 (MNIST-sized budgets).
    #[arg(long, allow_negative_numbers = true)]
    pub eps: Option<String>,
    #[command(flatten)]
    pub spec: Spec,
    #[command(flatten)]
    pub confidence: Confidence,
    /// Write the accuracy-vs-ε curve as PNG.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Write the sweep as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the sweep's reports as CSV.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    #[command(flatten)]
    pub shard: crate::shard::ShardArgs,
    /// Instead of the fixed-ε sweep: comma-separated minimum-norm attacks (cw, deepfool, ddn,
    /// fab-t), each run once at a radius that never binds. Prints the median and mean distance
    /// found and robust accuracy at every --eps from that one run; --plot draws robust accuracy
    /// against ε (the distances' CDF); --json writes the distances per sample.
    #[arg(long, value_name = "ATTACKS", conflicts_with_all = ["attacks", "suite", "csv"])]
    pub minimal: Option<String>,
}

#[derive(Args, Debug)]
pub struct GateArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub chosen: Chosen,
    #[command(flatten)]
    pub confidence: Confidence,
    /// Smallest acceptable robust accuracy, in [0, 1]: PASS when the interval's lower bound
    /// reaches it, FAIL when its upper bound falls short, INCONCLUSIVE (exit 3) in between.
    #[arg(long, required_unless_present = "baseline")]
    pub min_robust_accuracy: Option<f64>,
    /// A report of the previous model (`attack --json` or `gate --json`) on the same samples,
    /// attack and seed: FAIL when robust accuracy drops by more than --max-drop and McNemar's
    /// paired test finds the drop significant at --confidence.
    #[arg(long, value_name = "REPORT.json")]
    pub baseline: Option<PathBuf>,
    /// Largest drop in robust accuracy from the baseline that passes, in [0, 1].
    #[arg(long, default_value_t = 0.0, requires = "baseline")]
    pub max_drop: f64,
    /// Write the report as JSON (a baseline for the next model).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the verdict as JUnit XML (one test case per model, attack and ε).
    #[arg(long, value_name = "FILE.xml")]
    pub junit: Option<PathBuf>,
    /// Write a Markdown summary table (to post as a pull-request comment).
    #[arg(long, value_name = "FILE.md")]
    pub markdown: Option<PathBuf>,
}

impl Common {
    /// The model as reports name it: `--model`, with `--mean` and `--std` where given (they are
    /// part of the model the attack saw).
    fn model_name(&self) -> String {
        match (&self.mean, &self.std) {
            (Some(m), Some(s)) => format!("{} --mean {m} --std {s}", self.model),
            _ => self.model.clone(),
        }
    }
}

/// Comma-separated numbers (`--mean`, `--std`).
pub fn parse_floats(spec: &str) -> Result<Vec<f32>> {
    spec.split(',')
        .map(|p| {
            p.trim()
                .parse::<f32>()
                .map_err(|_| anyhow::anyhow!("{spec}: expected comma-separated numbers"))
        })
        .collect()
}

/// `C,H,W` as three positive integers.
pub fn parse_input_shape(spec: &str) -> Result<[usize; 3]> {
    let parts: Option<Vec<usize>> = spec
        .split(',')
        .map(|p| p.trim().parse::<usize>().ok().filter(|v| *v > 0))
        .collect();
    match parts.as_deref() {
        Some(&[c, h, w]) => Ok([c, h, w]),
        _ => bail!("--input-shape {spec}: expected C,H,W, three positive integers"),
    }
}

/// A model with its test data, ready to attack.
#[derive(Clone)]
pub struct Loaded {
    pub model: CliModel,
    pub model_name: String,
    pub images: Tensor,
    pub labels: Tensor,
    pub data_name: String,
    pub batch_size: usize,
    /// The target class, resolved against the model's classes.
    pub target: Option<u32>,
    /// The image files, when the data came from `--image` (after skipping the target's class).
    pub files: Vec<PathBuf>,
    /// Each sample's position in its data set: the MNIST index, or the `--image` file's
    /// position on the command line.
    pub indices: Vec<usize>,
}

/// The default ε grid of `eval` for `norm`: budgets of the sizes papers use on MNIST.
pub fn default_eps_grid(norm: Norm) -> &'static str {
    match norm {
        Norm::Linf => "0,0.05,0.1,0.15,0.2,0.25,0.3",
        Norm::L2 => "0,0.5,1,1.5,2,2.5,3",
        Norm::L1 => "0,2,4,6,8,10,12",
    }
}

/// Comma-separated numbers or fractions.
pub fn parse_list(text: &str, what: &str) -> Result<Vec<f32>> {
    text.split(',')
        .map(|v| parse_number(v).map_err(|e| anyhow::anyhow!("--{what}: {e}")))
        .collect()
}

/// A number (`0.03`) or a fraction (`8/255`), as papers write ε.
pub fn parse_number(text: &str) -> std::result::Result<f32, String> {
    let text = text.trim();
    let number = |t: &str| {
        t.trim()
            .parse::<f64>()
            .map_err(|_| format!("{text:?} is not a number or a fraction such as 8/255"))
    };
    let value = match text.split_once('/') {
        Some((a, b)) => number(a)? / number(b)?,
        None => number(text)?,
    };
    Ok(value as f32)
}

/// Largest meaningful radius of `norm` for images of `dims` pixels in [0, 1].
fn max_eps(norm: Norm, pixels: usize) -> f32 {
    match norm {
        Norm::Linf => 1.0,
        Norm::L2 => (pixels as f32).sqrt(),
        Norm::L1 => pixels as f32,
    }
}

/// Which MNIST split `--n` and `--offset` select from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Test,
    Train,
}

/// Whether `--param` names one attack (every key must be its) or a list (`eval --attacks`:
/// each key goes to the attacks that take it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    One,
    Many,
}

impl Spec {
    /// The attack `name` (or the spec file's, or pgd) at radius `eps` (or the spec file's),
    /// its parameters from the spec file, then the old flags, then `--param`; checked by the
    /// registry.
    pub fn build(
        &self,
        name: Option<&str>,
        eps: Option<f32>,
        input: [usize; 3],
        scope: Scope,
    ) -> Result<Box<dyn FixedBudget>> {
        let registry = Registry::builtin();
        let file = self
            .attack_spec
            .as_ref()
            .map(AttackSpec::read)
            .transpose()?;
        let name = name
            .map(str::to_string)
            .or_else(|| file.as_ref().map(|f| f.attack.clone()))
            .unwrap_or_else(|| "pgd".into());
        let entry = registry.get(&name)?;
        let mut spec = match file {
            Some(f) if f.attack == name => f,
            _ => AttackSpec {
                attack: name.clone(),
                norm: Norm::Linf,
                eps: None,
                params: Default::default(),
            },
        };
        if let Some(norm) = &self.norm {
            spec.norm = norm.parse()?;
        }
        spec.eps = eps.or(spec.eps);
        let Some(eps) = spec.eps else {
            bail!("--eps is required (or an eps in --attack-spec)");
        };
        let [c, h, w] = input;
        let limit = max_eps(spec.norm, c * h * w);
        if !(eps.is_finite() && eps > 0.0 && eps <= limit) {
            bail!(
                "--eps {eps} is out of range: a {} budget on {c}x{h}x{w} inputs needs 0 < eps <= {limit}",
                spec.norm
            );
        }
        // the CLI stops a fooled sample early unless told otherwise
        let mut flags: Vec<(&str, Value)> = vec![("early_stop", Value::Bool(!self.no_early_stop))];
        flags.extend(self.steps.map(|v| ("steps", v.into())));
        flags.extend(self.step_size.map(|v| ("step_size", v.into())));
        flags.extend(self.restarts.map(|v| ("restarts", v.into())));
        flags.extend(self.seed.map(|v| ("seed", v.into())));
        if self.no_random_start {
            flags.push(("random_start", Value::Bool(false)));
        }
        if let Some(loss) = &self.loss {
            let loss = match loss.as_str() {
                "cw" => serde_json::json!({ "cw_margin": { "kappa": 0.0 } }),
                "dlr" => Value::from("dlr"),
                _ => Value::from("cross_entropy"),
            };
            if !entry.takes("loss") {
                bail!("--loss: attack {name} takes no loss");
            }
            flags.push(("loss", loss));
        }
        for (key, value) in flags {
            // old flags apply to the attacks that take them (fgsm has no steps); the CLI's
            // default early stop yields to a spec file that sets it
            let default_only = key == "early_stop" && !self.no_early_stop;
            if entry.takes(key) && !(default_only && spec.params.contains_key(key)) {
                spec.params.insert(key.into(), value);
            }
        }
        for (key, value) in self.param_values()? {
            if scope == Scope::One || entry.takes(&key) {
                spec.params.insert(key, value);
            }
        }
        Ok(registry.build(&spec)?)
    }

    /// The ensemble `suite` at radius `eps`, each stage built as [`Spec::build`] builds an
    /// attack of `eval --attacks` (flags apply to the stages that take them).
    pub fn build_suite(
        &self,
        suite: &str,
        eps: Option<f32>,
        input: [usize; 3],
    ) -> Result<Box<dyn FixedBudget>> {
        let (name, attacks) = suite_attacks(suite)?;
        let stages = attacks
            .iter()
            .map(|a| self.build(Some(a), eps, input, Scope::Many))
            .collect::<Result<Vec<_>>>()?;
        Ok(Box::new(Ensemble::new(name, stages)?))
    }

    /// The `--param KEY=VALUE` pairs, values read as JSON where they parse.
    pub fn param_values(&self) -> Result<Vec<(String, Value)>> {
        self.params
            .iter()
            .map(|p| {
                let Some((key, value)) = p.split_once('=') else {
                    bail!("--param {p:?}: expected KEY=VALUE");
                };
                let value = serde_json::from_str(value).unwrap_or(Value::String(value.into()));
                Ok((key.trim().to_string(), value))
            })
            .collect()
    }
}

impl Common {
    /// Number of MNIST test images (default 1000).
    pub fn n(&self) -> usize {
        self.n.unwrap_or(1000)
    }

    /// Index of the first MNIST test image (default 0).
    pub fn offset(&self) -> usize {
        self.offset.unwrap_or(0)
    }

    /// Load the model and the data: the `--image` files, or the MNIST test images
    /// `[offset, offset + n)`; images of the `target` class (a targeted attack's) are left out.
    pub fn load(&self, target: Option<&str>) -> Result<Loaded> {
        self.load_split(target, Split::Test)
    }

    /// [`Common::load`] from either MNIST split (a patch trains on the training split).
    pub fn load_split(&self, target: Option<&str>, split: Split) -> Result<Loaded> {
        Ok(self.load_with(target, split, None)?.0)
    }

    /// [`Common::load`] of one shard of the selection: whole batches, recorded for the report.
    /// A `--data` directory decodes the shard's images alone.
    pub fn load_shard(
        &self,
        target: Option<&str>,
        shard: Option<Shard>,
    ) -> Result<(Loaded, Option<ShardInfo>)> {
        self.load_with(target, Split::Test, shard)
    }

    /// The model and the selection (`--data` rows, `--image` files or MNIST digits), or the
    /// part of it that `shard` covers.
    fn load_with(
        &self,
        target: Option<&str>,
        split: Split,
        shard: Option<Shard>,
    ) -> Result<(Loaded, Option<ShardInfo>)> {
        let device = perturb::device::parse(&self.device)?;
        let arch = self.arch.as_deref().map(str::parse::<Arch>).transpose()?;
        let input_shape = self
            .input_shape
            .as_deref()
            .map(parse_input_shape)
            .transpose()?;
        let model = CliModel::resolve(
            &self.model,
            arch,
            self.sha256.as_deref(),
            input_shape,
            &Normalization::parse(self.mean.as_deref(), self.std.as_deref())?,
            &device,
        )?;
        if !self.images.is_empty() && (self.n.is_some() || self.offset.is_some()) {
            bail!("--n and --offset select MNIST test images; with --image every given file is attacked");
        }
        if self.n == Some(0) || self.batch_size == 0 {
            bail!("--n and --batch-size must be at least 1");
        }
        let arch = model.arch();
        let target = target
            .map(|t| zoo::class_index(t, arch.num_classes()).map(|i| i as u32))
            .transpose()
            .context("--targeted")?;
        if let Some(dir) = &self.data {
            // a shard of a directory decodes its own rows alone
            return self.load_dir(model, dir, target, &device, shard);
        }
        // refused up front, with the figure, rather than killed half-way by the kernel
        let samples = match self.images.len() {
            0 => self.n(),
            files => files,
        };
        arch.memory_plan(samples, self.batch_size)
            .check_available()
            .context("--n and --batch-size")?;
        let loaded = if !self.images.is_empty() {
            self.load_files(model, target, &device)?
        } else {
            self.load_mnist(model, target, split, &device)?
        };
        match shard {
            Some(s) => {
                let (loaded, info) = crate::shard::apply(loaded, s)?;
                Ok((loaded, Some(info)))
            }
            None => Ok((loaded, None)),
        }
    }

    /// The MNIST digits `[offset, offset + n)` of `split`, without the `target` class.
    fn load_mnist(
        &self,
        model: CliModel,
        target: Option<u32>,
        split: Split,
        device: &candle_core::Device,
    ) -> Result<Loaded> {
        let arch = model.arch();
        if !arch.is_mnist() {
            bail!(
                "{} classifies {}x{} RGB photos: give them with --image PATH",
                self.model,
                arch.input_shape()[1],
                arch.input_shape()[2]
            );
        }
        let (images, labels) = match split {
            Split::Test => Mnist::load_test_default(device)?,
            Split::Train => {
                let m = Mnist::load_default(device)?;
                (m.train_images, m.train_labels)
            }
        };
        let (mut images, mut labels) = (images, labels);
        // positions in the split of the images kept (all but the target's class)
        let mut positions: Vec<usize> = (0..labels.dim(0)?).collect();
        if let Some(t) = target {
            let all = labels.to_vec1::<u32>()?;
            positions.retain(|&i| all[i] != t);
            let keep: Vec<u32> = positions.iter().map(|&i| i as u32).collect();
            let keep = Tensor::new(keep.as_slice(), device)?;
            images = images.index_select(&keep, 0)?;
            labels = labels.index_select(&keep, 0)?;
        }
        let set = match split {
            Split::Test => "MNIST test",
            Split::Train => "MNIST training",
        };
        let total = labels.dim(0)?;
        let (n, offset) = (self.n(), self.offset());
        let end = offset.checked_add(n).filter(|&e| e <= total);
        let Some(end) = end else {
            bail!(
                "--offset {} --n {} asks for images past the {total} available {set} images",
                offset,
                n
            );
        };
        let set = match split {
            Split::Test => "mnist-test",
            Split::Train => "mnist-train",
        };
        let data_name = match target {
            None => format!("{set}[{offset}..{end}]"),
            Some(t) => format!("{set} without class {t}[{offset}..{end}]"),
        };
        Ok(Loaded {
            model,
            model_name: self.model_name(),
            images: images.narrow(0, offset, n)?,
            labels: labels.narrow(0, offset, n)?,
            data_name,
            batch_size: self.batch_size,
            target,
            files: Vec::new(),
            indices: positions[offset..end].to_vec(),
        })
    }

    /// The rows `[offset, offset + n)` of `dir/labels.csv` (all of them by default), labelled
    /// as the file says; rows of the `target` class are left out.
    fn load_dir(
        &self,
        model: CliModel,
        dir: &std::path::Path,
        target: Option<u32>,
        device: &candle_core::Device,
        shard: Option<Shard>,
    ) -> Result<(Loaded, Option<ShardInfo>)> {
        let arch = model.arch();
        let rows = perturb::data::read_labels(dir)?;
        let mut labels = Vec::with_capacity(rows.len());
        for (k, row) in rows.iter().enumerate() {
            let class = zoo::class_index(&row.label, arch.num_classes()).with_context(|| {
                format!(
                    "{} row {}",
                    dir.join(perturb::data::LABELS_FILE).display(),
                    k + 1
                )
            })?;
            labels.push(class as u32);
        }
        let kept: Vec<usize> = (0..rows.len())
            .filter(|&i| Some(labels[i]) != target)
            .collect();
        let total = kept.len();
        let offset = self.offset.unwrap_or(0);
        let n = self.n.unwrap_or(total.saturating_sub(offset));
        let Some(end) = offset.checked_add(n).filter(|&e| e <= total) else {
            bail!(
                "--offset {offset} --n {n} asks for rows past the {total} of {}",
                dir.join(perturb::data::LABELS_FILE).display()
            );
        };
        if n == 0 {
            bail!("no rows of {} to attack", dir.display());
        }
        // a shard decodes its own rows alone: whole batches of the selection
        let info = shard.map(|s| s.info(end - offset, self.batch_size));
        let (from, to) = info.map_or((offset, end), |i| (offset + i.start, offset + i.end));
        let indices = kept[from..to].to_vec();
        arch.memory_plan(indices.len(), self.batch_size)
            .check_available()
            .context("--n and --batch-size")?;
        let [c, h, w] = arch.input_shape();
        let xs = indices
            .iter()
            .map(|&i| match c {
                3 if h == w => load_photo(&rows[i].file, h, Fit::ResizeCrop, device),
                _ => load_image(&rows[i].file, c, h, w, device),
            })
            .collect::<perturb::Result<Vec<_>>>()?;
        let y: Vec<u32> = indices.iter().map(|&i| labels[i]).collect();
        Ok((
            Loaded {
                model,
                model_name: self.model_name(),
                images: Tensor::stack(&xs, 0)?,
                labels: Tensor::new(y.as_slice(), device)?,
                data_name: format!("{}[{offset}..{end}]", dir.display()),
                batch_size: self.batch_size,
                target,
                files: indices.iter().map(|&i| rows[i].file.clone()).collect(),
                indices,
            },
            info,
        ))
    }

    /// The `--image` files, labelled with the model's own predictions.
    fn load_files(
        &self,
        model: CliModel,
        target: Option<u32>,
        device: &candle_core::Device,
    ) -> Result<Loaded> {
        let [c, h, w] = model.arch().input_shape();
        let xs = self
            .images
            .iter()
            .map(|p| match c {
                3 if h == w => load_photo(p, h, Fit::ResizeCrop, device),
                _ => load_image(p, c, h, w, device),
            })
            .collect::<perturb::Result<Vec<_>>>()?;
        let images = Tensor::stack(&xs, 0)?;
        let predicted = perturb::eval::predict(&model, &images, self.batch_size)?;
        let keep: Vec<usize> = (0..predicted.len())
            .filter(|&i| Some(predicted[i]) != target)
            .collect();
        if keep.is_empty() {
            bail!("every image is already classified as the target class");
        }
        let idx: Vec<u32> = keep.iter().map(|&i| i as u32).collect();
        let idx = Tensor::new(idx.as_slice(), device)?;
        let labels: Vec<u32> = keep.iter().map(|&i| predicted[i]).collect();
        let files: Vec<PathBuf> = keep.iter().map(|&i| self.images[i].clone()).collect();
        let indices = keep.clone();
        let data_name = format!(
            "images {} (labels: the model's predictions)",
            files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(Loaded {
            model,
            model_name: self.model_name(),
            images: images.index_select(&idx, 0)?,
            labels: Tensor::new(labels.as_slice(), device)?,
            data_name,
            batch_size: self.batch_size,
            target,
            files,
            indices,
        })
    }
}
