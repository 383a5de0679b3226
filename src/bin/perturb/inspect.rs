//! `perturb inspect`: what a model is and whether gradient attacks can be trusted on it: input
//! shape, classes, operators (ONNX), operators perturb does not support or that have no gradient
//! (a masking risk), the gradient self-check on random inputs, and whether two forward passes
//! agree bit for bit.

use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use clap::Args;
use perturb::onnx;
use perturb::{zoo, Classifier, GradVerdict, GradientCheck};

use crate::args::parse_input_shape;
use crate::model::{CliModel, Kind, Normalization};
use rand::{rngs::StdRng, Rng, SeedableRng};

/// `perturb inspect`.
#[derive(Args, Debug)]
pub struct InspectArgs {
    /// A shipped model name, a safetensors file (with --arch) or an ONNX file (.onnx).
    #[arg(long)]
    pub model: String,
    /// Architecture of safetensors weights given by path.
    #[arg(long)]
    pub arch: Option<String>,
    /// `C,H,W` of the input where an ONNX graph leaves it symbolic.
    #[arg(long, value_name = "C,H,W")]
    pub input_shape: Option<String>,
    /// Per-channel mean subtracted from [0, 1] pixels before an ONNX graph (with --std).
    #[arg(long, value_name = "M,M,M", requires = "std")]
    pub mean: Option<String>,
    /// Per-channel std to divide by after --mean.
    #[arg(long, value_name = "S,S,S", requires = "mean")]
    pub std: Option<String>,
    /// Random inputs for the gradient check and the determinism check.
    #[arg(long, default_value_t = 4)]
    pub n: usize,
    /// Seed of the random inputs.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Exit 0 when gradient attacks on the model can be trusted, 1 when not (unsupported or
/// gradient-free operators, a failed gradient check, a nondeterministic forward pass), 2 for
/// errors.
pub fn run(a: InspectArgs) -> Result<ExitCode> {
    if a.n == 0 {
        bail!("--n must be at least 1");
    }
    let device = Device::Cpu;
    let mut problems = Vec::new();
    if a.model.ends_with(".onnx") {
        // the graph as the file declares it, also when perturb cannot build it
        let s = onnx::scan(&a.model)?;
        out!(
            "model: {} (ONNX, {}, opset {})",
            a.model,
            s.producer,
            s.opset.map_or("?".into(), |v| v.to_string())
        );
        for v in &s.inputs {
            out!("input: {} {} {}", v.name, v.elem_type, dims(&v.shape));
        }
        for v in &s.outputs {
            out!("output: {} {} {}", v.name, v.elem_type, dims(&v.shape));
        }
        let counts: Vec<String> = s
            .op_counts
            .iter()
            .map(|(op, n)| format!("{op} {n}"))
            .collect();
        out!("operators: {}", counts.join(", "));
        out!("unsupported: {}", list(&s.unsupported));
        out!(
            "without gradient (masking risk): {}",
            list(&s.zero_gradient)
        );
        if !s.unsupported.is_empty() {
            out!("verdict: perturb cannot evaluate this graph");
            return Ok(ExitCode::from(1));
        }
        if !s.zero_gradient.is_empty() {
            problems.push("operators without gradient");
        }
    }
    let arch = a.arch.as_deref().map(str::parse::<zoo::Arch>).transpose()?;
    let input_shape = a
        .input_shape
        .as_deref()
        .map(parse_input_shape)
        .transpose()?;
    let model = CliModel::resolve(
        &a.model,
        arch,
        None,
        input_shape,
        &Normalization::parse(a.mean.as_deref(), a.std.as_deref())?,
        &device,
    )?;
    if let CliModel::Onnx { model, .. } = &model {
        if model.ends_in_softmax() {
            out!("final Softmax: skipped, so that losses read the scores before it (the same predictions)");
        }
    }
    if let Kind::Zoo(arch) = model.arch() {
        let params: usize = arch
            .params()
            .iter()
            .map(|p| p.shape.iter().product::<usize>())
            .sum();
        out!(
            "model: {} (architecture {arch}, {params} parameters)",
            a.model
        );
    }
    let [c, h, w] = model.arch().input_shape();
    let mut rng = StdRng::seed_from_u64(a.seed);
    let pixels: Vec<f32> = (0..a.n * c * h * w)
        .map(|_| rng.random_range(0.0..=1.0))
        .collect();
    let x = Tensor::from_vec(pixels, (a.n, c, h, w), &device)?;
    let logits = model.logits(&x).context("forward pass on random inputs")?;
    let Ok((_, classes)) = logits.dims2() else {
        bail!(
            "the model's output is {:?}, not [batch, classes]",
            logits.dims()
        );
    };
    out!("input shape: [N, {c}, {h}, {w}]; classes: {classes}");
    let again = model.logits(&x)?;
    let same = (&logits - &again)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f32>()?
        == 0.0;
    out!(
        "deterministic: {}",
        if same {
            "yes (two forward passes, same bits)"
        } else {
            "NO: two forward passes differ"
        }
    );
    if !same {
        problems.push("nondeterministic forward pass");
    }
    let verdict = GradientCheck::new().run(&model, &x)?;
    match verdict {
        GradVerdict::Passed { relative_error } => {
            out!("gradient check: passed on {} random inputs (median relative error {relative_error:.1e})", a.n)
        }
        GradVerdict::Missing => {
            out!("gradient check: no gradient reaches the input");
            problems.push("no input gradient");
        }
        GradVerdict::Mismatch { relative_error, .. } => {
            out!("gradient check: FAILED, autograd and finite differences differ by {relative_error:.2e}");
            problems.push("gradient check failed");
        }
    }
    match problems.is_empty() {
        true => {
            out!("verdict: gradient attacks can be trusted on this model");
            Ok(ExitCode::SUCCESS)
        }
        false => {
            out!(
                "verdict: do not trust gradient attacks alone: {}",
                problems.join(", ")
            );
            Ok(ExitCode::from(1))
        }
    }
}

fn list(items: &[String]) -> String {
    match items.is_empty() {
        true => "none".into(),
        false => items.join(", "),
    }
}

fn dims(shape: &[Option<i64>]) -> String {
    let d: Vec<String> = shape
        .iter()
        .map(|d| d.map_or("?".into(), |v| v.to_string()))
        .collect();
    format!("[{}]", d.join(", "))
}
