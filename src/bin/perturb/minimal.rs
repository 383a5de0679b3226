//! `perturb eval --minimal`: minimum-norm attacks run once each, the distribution of the
//! distances they find, and robust accuracy at every ε read from it.

use std::process::ExitCode;

use anyhow::{bail, Result};
use perturb::attack::{Kind, Registry};
use perturb::export::{self, Line};
use perturb::metrics::MinimalNorms;
use perturb::Norm;

use crate::args::{self, EvalArgs, Scope};
use crate::{evaluator, outputs};

pub fn run(e: &EvalArgs, list: &str) -> Result<ExitCode> {
    outputs::check(&outputs::of(&[
        ("--plot", &e.plot, true),
        ("--json", &e.json, true),
    ]))?;
    // minimum-norm attacks are mostly L2 ones: the default norm here
    let norm: Norm = e.spec.norm.as_deref().unwrap_or("l2").parse()?;
    let grid = e.eps.as_deref().unwrap_or(args::default_eps_grid(norm));
    let eps = args::parse_list(grid, "eps")?;
    if eps.iter().any(|v| !(v.is_finite() && *v >= 0.0)) {
        bail!("--eps: every value must be finite and >= 0");
    }
    let registry = Registry::builtin();
    let names: Vec<&str> = list.split(',').map(str::trim).collect();
    for name in &names {
        let entry = registry.get(name)?;
        if entry.kind != Kind::MinimumNorm {
            let minimal: Vec<&str> = registry
                .entries()
                .iter()
                .filter(|e| e.kind == Kind::MinimumNorm)
                .map(|e| e.name)
                .collect();
            bail!(
                "--minimal {name}: not a minimum-norm attack; those are {}",
                minimal.join(", ")
            );
        }
    }
    let loaded = e.common.load(None)?;
    let input = loaded.model.arch().input_shape();
    let unbounded = MinimalNorms::unbounded(norm, input.iter().product())?;
    // every attack built (and its parameters checked) before any compute
    let mut spec = e.spec.clone();
    spec.norm = Some(norm.to_string());
    let attacks = names
        .iter()
        .map(|name| spec.build(Some(name), Some(unbounded.eps()), input, Scope::Many))
        .collect::<Result<Vec<_>>>()?;
    let intervals = e.confidence.spec()?;
    let eval = evaluator(&loaded, intervals, !e.common.quiet)?;
    let mut found = Vec::new();
    for attack in &attacks {
        let run = eval.run(attack.as_ref(), None)?;
        found.push(MinimalNorms::new(&run.report, &run.outcome)?);
    }
    let shown = |v: Option<f64>| v.map_or("none".to_string(), |v| format!("{v:.4}"));
    out!(
        "{:<9} {:<5} {:>9} {:>8} {:>8}  robust accuracy at eps {}",
        "attack",
        "norm",
        "found",
        "median",
        "mean",
        eps.iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(" / ")
    );
    for m in &found {
        let robust: Vec<String> = eps
            .iter()
            .map(|&v| format!("{:.2}%", 100.0 * m.robust_accuracy_at(v)))
            .collect();
        out!(
            "{:<9} {:<5} {:>9} {:>8} {:>8}  {}",
            m.attack.name,
            m.norm,
            format!("{}/{}", m.found, m.clean_correct),
            shown(m.median),
            shown(m.mean_found),
            robust.join(" / ")
        );
    }
    if let Some(path) = &e.json {
        let doc = serde_json::json!({
            "model": loaded.model_name,
            "data": loaded.data_name,
            "minimal": found,
        });
        export::write_json(&doc, path)?;
    }
    if let Some(path) = &e.plot {
        let eps_max = eps.iter().copied().fold(0.0, f32::max);
        let lines: Vec<Line> = found
            .iter()
            .map(|m| Line {
                name: format!("{} ({})", m.attack.name, m.norm),
                points: m.curve(eps_max),
                thin: false,
                band: Vec::new(),
            })
            .collect();
        export::plot_lines(
            &format!(
                "{}: distance to the nearest adversarial example found",
                loaded.model_name
            ),
            ("eps", "robust accuracy"),
            &lines,
            path,
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
