//! `--shard I/N` (or a scheduler's array index) for `attack`, and `perturb merge`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;
use perturb::eval::{Shard, ShardInfo};
use perturb::export;

use crate::args::Loaded;

/// Which part of a split run this process evaluates.
#[derive(Args, Debug, Default)]
pub struct ShardArgs {
    /// Evaluate shard I of N (0-based: 0/4 … 3/4): whole batches of the selection, cut at
    /// ⌊k·batches/N⌋; `perturb merge` joins the shards' --json reports into the whole run's.
    /// Without it, a Slurm array task (SLURM_ARRAY_TASK_ID, _MIN, _COUNT) or a Kubernetes
    /// Indexed Job pod (JOB_COMPLETION_INDEX with --shards) evaluates its own shard.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<Shard>,
    /// The number of shards of an array job (required with JOB_COMPLETION_INDEX; overrides
    /// SLURM_ARRAY_TASK_COUNT).
    #[arg(long, value_name = "N")]
    pub shards: Option<usize>,
}

impl ShardArgs {
    /// The shard this process runs: `--shard`, else the scheduler's variables, else none.
    pub fn resolve(&self) -> Result<Option<Shard>> {
        if let Some(s) = self.shard {
            if let Some(n) = self.shards.filter(|&n| n != s.count) {
                bail!("--shard {s} and --shards {n} disagree on the number of shards");
            }
            return Ok(Some(s));
        }
        if self.shards == Some(0) {
            bail!("--shards must be at least 1");
        }
        Ok(Shard::from_env(self.shards)?)
    }
}

/// The part of `loaded` that `shard` covers, and its record for the report.
pub fn apply(mut loaded: Loaded, shard: Shard) -> Result<(Loaded, ShardInfo)> {
    let n = loaded.labels.dim(0)?;
    let info = shard.info(n, loaded.batch_size);
    let len = info.end - info.start;
    loaded.images = loaded.images.narrow(0, info.start, len)?;
    loaded.labels = loaded.labels.narrow(0, info.start, len)?;
    loaded.indices = loaded.indices[info.start..info.end].to_vec();
    if !loaded.files.is_empty() {
        loaded.files = loaded.files[info.start..info.end].to_vec();
    }
    Ok((loaded, info))
}

/// `perturb merge`: the shard reports of one run, joined.
#[derive(Args, Debug)]
pub struct MergeArgs {
    /// The shards' --json reports (of `attack`) or sweeps (of `eval`), in any order.
    #[arg(required = true, value_name = "REPORT")]
    pub reports: Vec<PathBuf>,
    /// Write the whole run's report as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write it as CSV.
    #[arg(long)]
    pub csv: Option<PathBuf>,
}

pub fn merge(m: MergeArgs) -> Result<ExitCode> {
    crate::outputs::check(&crate::outputs::of(&[
        ("--json", &m.json, true),
        ("--csv", &m.csv, true),
    ]))?;
    // `attack --json` writes reports, `eval --json` sweeps: all of one kind
    let mut texts = Vec::new();
    for p in &m.reports {
        let text = std::fs::read_to_string(p).with_context(|| format!("{}", p.display()))?;
        let value: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{}: not JSON", p.display()))?;
        texts.push((p, value.get("worst_case").is_some()));
    }
    if texts.iter().all(|(_, sweep)| *sweep) {
        let sweeps = m
            .reports
            .iter()
            .map(|p| -> Result<perturb::metrics::Sweep> {
                let text = std::fs::read_to_string(p)?;
                serde_json::from_str(&text).with_context(|| format!("{}: not a sweep", p.display()))
            })
            .collect::<Result<Vec<_>>>()?;
        let sweep = perturb::eval::merge_sweeps(&sweeps).context("merge")?;
        for r in &sweep.reports {
            out!("{}", crate::summary(r, |c| Some(c.to_string())));
        }
        for w in &sweep.warnings {
            eprintln!("warning: {w}");
        }
        out!("(merged from {} shards)", sweeps.len());
        if let Some(path) = &m.json {
            export::write_json(&sweep, path)?;
        }
        if let Some(path) = &m.csv {
            export::write_csv(&sweep.reports, path)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let Some((p, _)) = texts.iter().find(|(_, sweep)| *sweep) {
        bail!(
            "{} is an eval sweep but other files are attack reports: merge one kind at a time",
            p.display()
        );
    }
    let reports = m
        .reports
        .iter()
        .map(|p| export::read_report(p))
        .collect::<perturb::Result<Vec<_>>>()?;
    let report = perturb::eval::merge(&reports).context("merge")?;
    out!(
        "{} (merged from {} shards)",
        crate::summary(&report, |c| Some(c.to_string())),
        reports.len()
    );
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    crate::write_report(&report, m.json.as_deref(), m.csv.as_deref())?;
    Ok(ExitCode::SUCCESS)
}
