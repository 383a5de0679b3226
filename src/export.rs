//! Writing results: JSON and CSV reports, a PNG accuracy-vs-ε curve, a PNG grid of clean /
//! perturbation / adversarial images, a PNG heat map (the transfer matrix), and the adversarial
//! batch as safetensors.
//!
//! The PNG functions ([`plot_curve`], [`plot_lines`], [`image_grid`], [`plot_heatmap`] and their
//! types) need the `plot` feature, which the default `cli` feature enables; JSON, CSV and
//! safetensors output are always there.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::metrics::Report;

mod atomic;
mod ci;
#[cfg(feature = "plot")]
mod heatmap;
#[cfg(feature = "plot")]
mod plot;

pub use atomic::write_atomic;
pub(crate) use atomic::write_image;
pub use ci::{junit, markdown, write_junit, write_markdown};
#[cfg(feature = "plot")]
pub use heatmap::plot_heatmap;
#[cfg(feature = "plot")]
pub use plot::{grid_size, image_grid, plot_curve, plot_lines, GridRow, Line, CURVE_SIZE};

fn io_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Io {
        file: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    }
}

/// Write any report (a [`Report`], a [`Sweep`](crate::metrics::Sweep), a list of them) as pretty
/// JSON.
///
/// # Errors
/// [`Error::Io`] when the file cannot be written.
pub fn write_json<T: Serialize>(value: &T, path: &Path) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| io_error(path, e))?;
    write_atomic(path, (text + "\n").as_bytes())
}

/// Read a [`Report`] written by [`write_json`] (`perturb attack --json`, `gate --json`): the
/// baseline of a gate.
///
/// # Errors
/// [`Error::Io`] when the file cannot be read; [`Error::Data`] when it is not a report of a
/// schema version this build reads (an `eval` sweep is named as such).
pub fn read_report(path: &Path) -> Result<Report> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        file: path.to_path_buf(),
        source,
    })?;
    let data = |reason: String| Error::Data {
        file: path.to_path_buf(),
        reason,
    };
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| data(format!("not JSON: {e}")))?;
    if value.get("reports").is_some() {
        return Err(data(
            "an eval sweep, not a report: give the JSON of `perturb attack` or `perturb gate`"
                .into(),
        ));
    }
    let version = value.get("schema_version").and_then(|v| v.as_u64());
    if version != Some(u64::from(crate::metrics::SCHEMA_VERSION)) {
        return Err(data(format!(
            "schema_version {} where this build reads {}",
            version.map_or("missing".into(), |v| v.to_string()),
            crate::metrics::SCHEMA_VERSION
        )));
    }
    serde_json::from_value(value).map_err(|e| data(format!("not a perturb report: {e}")))
}

/// Header of [`to_csv`].
pub const CSV_HEADER: &str = "model,data,attack,norm,eps,target,seed,samples,clean_correct,\
robust_correct,successes,clean_accuracy,robust_accuracy,attack_success_rate,norm_mean,\
norm_median,norm_max,gradient_evals,wall_time_s,robust_accuracy_lower,robust_accuracy_upper,\
interval";

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Reports as CSV, one row per report, with [`CSV_HEADER`] first.
///
/// ```
/// use perturb::export::{to_csv, CSV_HEADER};
/// assert_eq!(to_csv(&[]), format!("{CSV_HEADER}\n"));
/// ```
pub fn to_csv(reports: &[Report]) -> String {
    let mut out = format!("{CSV_HEADER}\n");
    for r in reports {
        let target = r.attack.target.map(|t| t.to_string()).unwrap_or_default();
        let row = [
            csv_field(&r.model),
            csv_field(&r.data),
            csv_field(&r.attack.name),
            r.attack.norm.map(|n| n.to_string()).unwrap_or_default(),
            r.attack.eps.map(|e| e.to_string()).unwrap_or_default(),
            target,
            r.seed.to_string(),
            r.samples.to_string(),
            r.clean_correct.to_string(),
            r.robust_correct.to_string(),
            r.successes.to_string(),
            r.clean_accuracy.to_string(),
            r.robust_accuracy.to_string(),
            r.attack_success_rate.to_string(),
            r.perturbation.mean.to_string(),
            r.perturbation.median.to_string(),
            r.perturbation.max.to_string(),
            r.gradient_evals.to_string(),
            format!("{:.3}", r.wall_time_s),
            r.intervals
                .map(|i| i.robust_accuracy.lower.to_string())
                .unwrap_or_default(),
            r.intervals
                .map(|i| i.robust_accuracy.upper.to_string())
                .unwrap_or_default(),
            r.intervals
                .map(|i| format!("{} {}", i.confidence, i.method))
                .unwrap_or_default(),
        ];
        out.push_str(&row.join(","));
        out.push('\n');
    }
    out
}

/// Write reports as CSV ([`to_csv`]).
///
/// # Errors
/// [`Error::Io`] when the file cannot be written.
pub fn write_csv(reports: &[Report], path: &Path) -> Result<()> {
    write_atomic(path, to_csv(reports).as_bytes())
}

/// Save an attacked batch as safetensors with the tensors `x`, `x_adv` (f32 `[N, C, H, W]`),
/// `labels`, `clean_predictions` and `adversarial_predictions` (u32 `[N]`), so that anyone can
/// re-classify `x_adv` and re-check every budget.
///
/// # Errors
/// [`Error::ShapeMismatch`] when the vectors do not have one entry per sample, [`Error::Io`]
/// when the file cannot be written.
pub fn save_adversarials(
    x: &Tensor,
    x_adv: &Tensor,
    labels: &[u32],
    clean_predictions: &[u32],
    adversarial_predictions: &[u32],
    path: &Path,
) -> Result<()> {
    let n = x.dim(0)?;
    if x_adv.dims() != x.dims()
        || labels.len() != n
        || clean_predictions.len() != n
        || adversarial_predictions.len() != n
    {
        return Err(Error::ShapeMismatch {
            what: "adversarials",
            expected: format!("x_adv like x {:?} and {n} labels and predictions", x.dims()),
            got: x_adv.dims().to_vec(),
        });
    }
    let dev = Device::Cpu;
    let mut tensors = HashMap::new();
    tensors.insert("x".to_string(), x.to_device(&dev)?);
    tensors.insert("x_adv".to_string(), x_adv.to_device(&dev)?);
    for (name, v) in [
        ("labels", labels),
        ("clean_predictions", clean_predictions),
        ("adversarial_predictions", adversarial_predictions),
    ] {
        tensors.insert(name.to_string(), Tensor::new(v, &dev)?);
    }
    crate::zoo::save(&tensors, path)
}
