//! `perturb attack --resume DIR`: a run that survives being killed. Each batch is evaluated as
//! one part of the run (a shard of one batch) and its report written to DIR atomically (a
//! temporary file renamed), so that DIR only ever holds whole reports; run the same command
//! again and it skips the parts already there. The parts merge (`perturb::eval::merge`) into
//! the report of an uninterrupted run, wall time aside.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use perturb::eval::{Shard, ShardInfo};
use perturb::export;
use perturb::metrics::{IntervalSpec, Report};
use perturb::Attack;

use crate::args::Loaded;

/// The report of `attack` on `loaded` (the whole selection or its shard `outer`), from the
/// parts in `dir` and those still to run.
pub fn run(
    loaded: &Loaded,
    outer: Option<ShardInfo>,
    attack: &dyn Attack,
    intervals: IntervalSpec,
    dir: &Path,
    progress: bool,
) -> Result<Report> {
    std::fs::create_dir_all(dir).with_context(|| format!("--resume {}", dir.display()))?;
    let n = loaded.labels.dim(0)?;
    let parts = n.div_ceil(loaded.batch_size.max(1)).max(1);
    let expected = perturb::metrics::AttackInfo::of(attack);
    let mut reports = Vec::with_capacity(parts);
    for b in 0..parts {
        let shard = Shard::new(b, parts)?;
        let want = shard.info(n, loaded.batch_size);
        let path = part_path(dir, b, parts);
        if path.exists() {
            let done = export::read_report(&path)
                .with_context(|| format!("--resume: {}", path.display()))?;
            let same_run = done.shard == Some(want)
                && done.attack.name == expected.name
                && done.attack.params == expected.params
                && done.attack.target == loaded.target
                && done.model == loaded.model_name
                && done.model_sha256.as_deref() == loaded.model.sha256()
                && done.data == loaded.data_name;
            if !same_run {
                bail!(
                    "--resume {}: {} is progress of a different run (model, data, attack or its \
                     parameters differ; remove the folder to start over)",
                    dir.display(),
                    path.display()
                );
            }
            reports.push(done);
            continue;
        }
        let (part, info) = crate::shard::apply(loaded.clone(), shard)?;
        let report = crate::evaluator(&part, intervals, progress)?
            .shard(info)
            .run(attack, part.target)?
            .report;
        export::write_json(&report, &path)?;
        reports.push(report);
    }
    let mut report =
        perturb::eval::merge(&reports).with_context(|| format!("--resume {}", dir.display()))?;
    report.shard = outer;
    Ok(report)
}

fn part_path(dir: &Path, index: usize, count: usize) -> PathBuf {
    dir.join(format!("part-{index}-of-{count}.json"))
}
