//! What a CI system reads: gate outcomes as JUnit XML (one test case per model × attack × ε)
//! and as a Markdown table to post on a pull request.

use std::fmt::Write as _;
use std::path::Path;

use super::write_atomic;
use crate::error::Result;
use crate::metrics::{GateOutcome, Verdict};

/// `text` with the five XML special characters escaped, and control characters that XML 1.0
/// cannot hold dropped.
fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 => {}
            c => out.push(c),
        }
    }
    out
}

/// Gate outcomes as JUnit XML, in the schema Jenkins, GitLab and GitHub test reporters read:
/// `<testsuites>` holding one `<testsuite name="perturb gate">` with one `<testcase>` per
/// outcome; a FAIL or INCONCLUSIVE outcome carries a `<failure>` whose `type` is the verdict
/// and whose `message` is the verdict and its reasons. Figures go in `<system-out>`.
///
/// ```
/// # use perturb::metrics::{GateOutcome, Report};
/// # fn outcomes() -> Vec<GateOutcome> { vec![] }
/// let xml = perturb::export::junit(&outcomes());
/// assert!(xml.starts_with("<?xml") && xml.contains("<testsuites"));
/// ```
pub fn junit(outcomes: &[GateOutcome]) -> String {
    let failures = outcomes
        .iter()
        .filter(|o| o.verdict() != Verdict::Pass)
        .count();
    let time: f64 = outcomes.iter().map(|o| o.report.wall_time_s).sum();
    let counts = format!(
        "tests=\"{}\" failures=\"{failures}\" errors=\"0\" skipped=\"0\" time=\"{time:.3}\"",
        outcomes.len()
    );
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(x, "<testsuites name=\"perturb gate\" {counts}>");
    let _ = writeln!(x, "  <testsuite name=\"perturb gate\" {counts}>");
    let _ = writeln!(x, "    <properties>");
    let _ = writeln!(
        x,
        "      <property name=\"perturb_version\" value=\"{}\"/>",
        xml_escape(env!("CARGO_PKG_VERSION"))
    );
    let _ = writeln!(x, "    </properties>");
    for o in outcomes {
        let r = &o.report;
        let _ = writeln!(
            x,
            "    <testcase name=\"{}\" classname=\"perturb.gate.{}\" time=\"{:.3}\">",
            xml_escape(&o.name()),
            xml_escape(&r.model),
            r.wall_time_s
        );
        let verdict = o.verdict();
        if verdict != Verdict::Pass {
            let message = xml_escape(&o.message());
            let _ = writeln!(
                x,
                "      <failure type=\"{verdict}\" message=\"{message}\">{message}</failure>"
            );
        }
        let mut figures = format!(
            "model {} (sha256 {}), data {}, seed {}, {} samples: clean accuracy {:.4}, robust \
             accuracy {:.4}, attack success rate {:.4}",
            r.model,
            r.model_sha256.as_deref().unwrap_or("unknown"),
            r.data,
            r.seed,
            r.samples,
            r.clean_accuracy,
            r.robust_accuracy,
            r.attack_success_rate
        );
        if let Some(i) = &r.intervals {
            let _ = write!(
                figures,
                "; robust accuracy {} % {} interval {}",
                100.0 * i.confidence,
                i.method,
                i.robust_accuracy
            );
        }
        let _ = writeln!(
            x,
            "      <system-out>{}</system-out>",
            xml_escape(&format!("{figures}\n{}", o.message()))
        );
        let _ = writeln!(x, "    </testcase>");
    }
    let _ = writeln!(x, "  </testsuite>");
    let _ = writeln!(x, "</testsuites>");
    x
}

/// Write [`junit`] to `path` (whole, atomically).
///
/// # Errors
/// [`Error::Io`](crate::Error::Io) when the file cannot be written.
pub fn write_junit(outcomes: &[GateOutcome], path: &Path) -> Result<()> {
    write_atomic(path, junit(outcomes).as_bytes())
}

/// `|` and line breaks escaped for a Markdown table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace(['\n', '\r'], " ")
}

/// Gate outcomes as a Markdown summary: a heading with the overall verdict, one table row per
/// outcome (model, attack, threat, samples, clean and robust accuracy with the robust interval,
/// each check, verdict), and the reasons below it.
///
/// ```
/// let md = perturb::export::markdown(&[]);
/// assert!(md.starts_with("### perturb gate: PASS"));
/// ```
pub fn markdown(outcomes: &[GateOutcome]) -> String {
    let overall = outcomes
        .iter()
        .map(GateOutcome::verdict)
        .fold(Verdict::Pass, Verdict::and);
    let mut m = format!("### perturb gate: {overall}\n\n");
    m.push_str(
        "| model | attack | threat | samples | clean | robust | interval | threshold | baseline | verdict |\n\
         |---|---|---|---:|---:|---:|---|---|---|---|\n",
    );
    for o in outcomes {
        let r = &o.report;
        let threat = match (r.attack.norm, r.attack.eps) {
            (Some(norm), Some(eps)) => format!("{norm} ε {eps}"),
            _ => "–".into(),
        };
        let interval = r
            .intervals
            .as_ref()
            .filter(|i| i.confidence > 0.0)
            .map(|i| {
                format!(
                    "{} ({} % {})",
                    i.robust_accuracy,
                    100.0 * i.confidence,
                    i.method
                )
            })
            .unwrap_or_else(|| "–".into());
        let threshold = o
            .threshold
            .as_ref()
            .map(|t| format!("≥ {:.2} %: {}", 100.0 * t.min_robust_accuracy, t.verdict))
            .unwrap_or_else(|| "–".into());
        let baseline = o
            .baseline
            .as_ref()
            .map(|b| {
                format!(
                    "{} {:.2} %, drop {:+.2} points (max {:.2}), p = {:.2e}: {}",
                    b.baseline_model,
                    100.0 * b.baseline_robust_accuracy,
                    100.0 * b.drop,
                    100.0 * b.max_drop,
                    b.p_value,
                    b.verdict
                )
            })
            .unwrap_or_else(|| "–".into());
        let _ = writeln!(
            m,
            "| {} | {} | {} | {} | {:.2} % | {:.2} % | {} | {} | {} | **{}** |",
            cell(&r.model),
            cell(&r.attack.name),
            cell(&threat),
            r.samples,
            100.0 * r.clean_accuracy,
            100.0 * r.robust_accuracy,
            cell(&interval),
            cell(&threshold),
            cell(&baseline),
            o.verdict()
        );
    }
    m.push('\n');
    for o in outcomes {
        if let Some(t) = &o.threshold {
            let _ = writeln!(m, "- {}: {}: {}", o.name(), t.verdict, t.describe());
        }
        if let Some(b) = &o.baseline {
            let _ = writeln!(m, "- {}: {}: {}", o.name(), b.verdict, b.describe());
        }
        for w in &o.report.warnings {
            let _ = writeln!(m, "- {}: warning: {w}", o.name());
        }
    }
    m
}

/// Write [`markdown`] to `path` (whole, atomically).
///
/// # Errors
/// [`Error::Io`](crate::Error::Io) when the file cannot be written.
pub fn write_markdown(outcomes: &[GateOutcome], path: &Path) -> Result<()> {
    write_atomic(path, markdown(outcomes).as_bytes())
}
