//! `perturb transfer`: attacks crafted on a source model, judged by target models.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;
use perturb::attack::FixedBudget;
use perturb::eval::transfer;
use perturb::metrics::IntervalSpec;
use perturb::{export, zoo, Classifier};

use crate::args::{parse_number, Common, Scope, Spec};
use crate::model::{CliModel, Normalization};
use crate::{evaluator, outputs};

#[derive(Args, Debug)]
pub struct TransferArgs {
    #[command(flatten)]
    pub common: Common,
    /// Comma-separated models that judge the examples: shipped names, or PATH:ARCH for
    /// safetensors weights (`my.safetensors:small-cnn`).
    #[arg(long)]
    pub targets: String,
    /// Comma-separated attacks crafted on the source model.
    #[arg(long, default_value = "fgsm,pgd,mi-fgsm")]
    pub attacks: String,
    /// Radius of every attack's budget, a number or a fraction such as 8/255.
    #[arg(long, value_parser = parse_number, allow_negative_numbers = true)]
    pub eps: f32,
    #[command(flatten)]
    pub spec: Spec,
    /// Write the matrix as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the matrix as CSV, one line per cell.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// Write the transfer rates as a PNG heat map.
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

pub fn run(t: TransferArgs) -> Result<ExitCode> {
    outputs::check(&outputs::of(&[
        ("--json", &t.json, true),
        ("--csv", &t.csv, true),
        ("--plot", &t.plot, true),
    ]))?;
    let loaded = t.common.load(None)?;
    let input = loaded.model.arch().input_shape();
    let attacks = t
        .attacks
        .split(',')
        .map(|name| {
            t.spec
                .build(Some(name.trim()), Some(t.eps), input, Scope::Many)
        })
        .collect::<Result<Vec<Box<dyn FixedBudget>>>>()?;
    let device = perturb::device::parse(&t.common.device)?;
    let mut targets = Vec::new();
    for spec in t.targets.split(',').map(str::trim) {
        let shipped = zoo::SHIPPED.iter().any(|s| s.name == spec) || spec.ends_with(".onnx");
        let (name, arch) = match spec.rsplit_once(':') {
            Some((path, arch)) if !shipped => (path, Some(arch.parse().context("--targets")?)),
            _ => (spec, None),
        };
        if !shipped && arch.is_none() {
            bail!("--targets {spec}: give weights by path as PATH:ARCH (mnist-linear, small-cnn or efficientnet-lite0), or an .onnx file");
        }
        let model = CliModel::resolve(name, arch, None, None, &Normalization::default(), &device)
            .with_context(|| format!("--targets {spec}"))?;
        if model.arch().input_shape() != input {
            bail!(
                "--targets {spec}: takes {:?} inputs, the source {:?}",
                model.arch().input_shape(),
                input
            );
        }
        targets.push((name.to_string(), model));
    }
    let judges: Vec<(&str, &dyn Classifier)> = targets
        .iter()
        .map(|(n, m)| (n.as_str(), m as &dyn Classifier))
        .collect();
    let refs: Vec<&dyn FixedBudget> = attacks.iter().map(|a| a.as_ref()).collect();
    let eval = evaluator(&loaded, IntervalSpec::default(), !t.common.quiet)?;
    let matrix = transfer(&eval, &judges, &refs)?;
    out!(
        "transfer from {} · {} samples · rate = fooled / correctly classified when clean",
        matrix.source,
        matrix.samples
    );
    let names: Vec<String> = matrix.attacks.iter().map(|a| a.describe()).collect();
    let width = names.iter().map(|n| n.chars().count()).max().unwrap_or(6) + 2;
    let header: Vec<String> = matrix.models.iter().map(|m| format!("{m:>18}")).collect();
    out!("{:<width$}{}", "attack", header.join(""));
    let cols = matrix.models.len();
    for (row, name) in names.iter().enumerate() {
        let cells: Vec<String> = matrix.cells[row * cols..(row + 1) * cols]
            .iter()
            .map(|c| format!("{:>17.1}%", 100.0 * c.transfer_rate))
            .collect();
        out!("{name:<width$}{}", cells.join(""));
    }
    if let Some(path) = &t.json {
        export::write_json(&matrix, path)?;
    }
    if let Some(path) = &t.csv {
        export::write_atomic(path, matrix.to_csv().as_bytes())?;
    }
    if let Some(path) = &t.plot {
        let rows = names;
        let rates: Vec<f64> = matrix.cells.iter().map(|c| c.transfer_rate).collect();
        export::plot_heatmap(
            &format!("transfer rate of examples crafted on {}", matrix.source),
            &rows,
            &matrix.models,
            &rates,
            path,
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
