//! The `perturb` command line: a thin layer over the library.
//!
//! Exit codes: 0 success (for `gate`: PASS), 1 the gate failed (FAIL), 2 a usage or input
//! error, printed as one line on stderr, 3 the gate is INCONCLUSIVE (its confidence interval
//! straddles the threshold, or a drop from the baseline is not significant).

/// Print a line on stdout; a reader that went away (`| head`) is not an error: the output is
/// simply no longer wanted, and `gate`'s exit code still carries its verdict.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

mod args;
mod inspect;
mod minimal;
mod model;
mod outputs;
mod patch;
mod resume;
mod shard;
mod transfer;

use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use perturb::attack::{FixedBudget, Registry};
use perturb::eval::Evaluator;
use perturb::export::{self, GridRow};
use perturb::metrics::{
    AttackInfo, BaselineCheck, GateOutcome, Interval, IntervalSpec, Report, ReportIntervals,
    ThresholdCheck,
};
use perturb::zoo;
use perturb::Attack;

use args::{AttackArgs, Cli, Command, EvalArgs, GateArgs, Loaded, Scope};

fn main() -> ExitCode {
    // attack loops reuse large buffers: keep freed memory instead of re-faulting it each step
    perturb::tune_allocator();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp
                    | clap::error::ErrorKind::DisplayVersion
                    | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                use std::io::Write;
                let _ = write!(std::io::stdout().lock(), "{e}");
                return ExitCode::SUCCESS;
            }
            // clap's message with its tips and usage line, on one line
            let text = e.to_string();
            let line: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with("For more information"))
                .collect();
            eprintln!("{} (see perturb --help)", line.join("; "));
            return ExitCode::from(2);
        }
    };
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::from(2)
        }
    }
}

/// The error and its causes on one line, each said once: a cause whose text the message
/// before it already ends with (an I/O error inside "file: error") is left out.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string().replace('\n', " ");
        if line.ends_with(&text) || line.contains(&format!("{text}: ")) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Models => models(),
        Command::Verify { json } => verify(json.as_deref()),
        Command::Attacks => attacks(),
        Command::Attack(a) => attack(a),
        Command::Eval(e) => eval(e),
        Command::Gate(g) => gate(g),
        Command::Patch(p) => patch::run(p),
        Command::Transfer(t) => transfer::run(t),
        Command::Merge(m) => shard::merge(m),
        Command::Inspect(i) => inspect::run(i),
    }
}

fn models() -> Result<ExitCode> {
    out!(
        "{:<18} {:<18} {:<9} {:>19}  file",
        "model",
        "arch",
        "checksum",
        "clean accuracy"
    );
    for s in zoo::SHIPPED {
        let path = zoo::models_dir().join(s.file);
        let status = match (std::fs::read(&path), zoo::pinned_sha256(s.file)) {
            (Err(_), _) => "missing",
            (Ok(_), None) => "unpinned",
            (Ok(bytes), Some(pin)) if zoo::sha256_hex(&bytes) == pin => "ok",
            (Ok(_), Some(_)) => "MISMATCH",
        };
        let clean = zoo::card(s.name)
            .ok()
            .and_then(|c| {
                c.get("clean_test_correct")
                    .and_then(|v| zoo::parse_count(v))
            })
            .map(|(a, b)| format!("{:.2} %", 100.0 * a as f64 / b as f64))
            .or_else(|| zoo::card(s.name).ok()?.get("clean_accuracy").cloned())
            .unwrap_or_else(|| "?".into());
        out!(
            "{:<18} {:<18} {:<9} {:>19}  {}",
            s.name,
            s.arch.to_string(),
            status,
            clean,
            path.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Every registered attack with its kind, summary and parameters' defaults.
fn verify(json: Option<&Path>) -> Result<ExitCode> {
    use perturb::data::FileStatus;
    let home = perturb::data::home();
    let checks = perturb::data::verify(&home)?;
    let mut differ = 0;
    for c in &checks {
        let what = match &c.status {
            FileStatus::Ok => continue,
            FileStatus::Modified { expected, got } => {
                format!("MODIFIED (sha256 {got}, pinned {expected})")
            }
            FileStatus::Missing => "MISSING".to_string(),
            FileStatus::Unlisted => "UNLISTED (no manifest pins it)".to_string(),
        };
        differ += 1;
        out!("{}: {what}", c.path.display());
    }
    if let Some(path) = json {
        export::write_json(&checks, path)?;
    }
    out!(
        "{} files under {}: {}",
        checks.len(),
        home.display(),
        if differ == 0 {
            "all match their manifests".to_string()
        } else {
            format!("{differ} differ")
        }
    );
    Ok(if differ == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn attacks() -> Result<ExitCode> {
    for e in Registry::builtin().entries() {
        let norms: Vec<String> = e.norms.iter().map(|n| n.to_string()).collect();
        out!(
            "{:<7} {:?} ({}): {}",
            e.name,
            e.kind,
            norms.join(", "),
            e.summary
        );
        if let Some(params) = (e.defaults)().as_object() {
            for (key, value) in params {
                out!("         --param {key}={value}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// " linf eps 0.3", or nothing for attacks without a budget.
fn threat(r: &Report) -> String {
    match (r.attack.norm, r.attack.eps) {
        (Some(norm), Some(eps)) => format!(" {norm} eps {eps}"),
        _ => String::new(),
    }
}

/// One line of figures; `class_name` names a targeted attack's class where the model knows it.
fn summary(r: &Report, class_name: impl Fn(u32) -> Option<String>) -> String {
    let target = r
        .attack
        .target
        .map(|t| match class_name(t) {
            Some(name) if !name.is_empty() && name != t.to_string() => {
                format!(" toward {t} ({name})")
            }
            _ => format!(" toward {t}"),
        })
        .unwrap_or_default();
    let threat = threat(r);
    let ci = |pick: fn(&ReportIntervals) -> Interval| {
        r.intervals
            .as_ref()
            .filter(|i| i.confidence > 0.0)
            .map(|i| format!(" {}", pick(i)))
            .unwrap_or_default()
    };
    let level = r
        .intervals
        .as_ref()
        .filter(|i| i.confidence > 0.0)
        .map(|i| format!(" ({} % {} intervals)", 100.0 * i.confidence, i.method))
        .unwrap_or_default();
    format!(
        "{} · {}{}{} · {} samples: clean {:.2} %{}, robust {:.2} %{}, attack success {:.2} %{}, \
         mean |delta| {:.4}, {} gradient evals, {:.1} s{level}",
        r.model,
        r.attack.name,
        threat,
        target,
        r.samples,
        100.0 * r.clean_accuracy,
        ci(|i| i.clean_accuracy),
        100.0 * r.robust_accuracy,
        ci(|i| i.robust_accuracy),
        100.0 * r.attack_success_rate,
        ci(|i| i.attack_success_rate),
        r.perturbation.mean,
        r.gradient_evals,
        r.wall_time_s
    )
}

fn evaluator<'a>(
    loaded: &'a Loaded,
    intervals: IntervalSpec,
    progress: bool,
) -> Result<Evaluator<'a>> {
    let mut eval = Evaluator::new(&loaded.model, &loaded.images, &loaded.labels)?
        .model_name(loaded.model_name.clone())
        .data_name(loaded.data_name.clone())
        .batch_size(loaded.batch_size)
        .sample_indices(loaded.indices.clone())
        .intervals(intervals);
    if let Some(hex) = loaded.model.sha256() {
        eval = eval.model_sha256(hex);
    }
    if !progress {
        return Ok(eval);
    }
    // indicatif hides the bar when stderr is not a terminal
    let bar = ProgressBar::new(0);
    if let Ok(style) =
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} samples, eta {eta}")
    {
        bar.set_style(style);
    }
    Ok(eval.on_progress(move |p| {
        if p.done == 0 {
            bar.reset();
            bar.set_length(p.total as u64);
            bar.set_message(p.label.to_string());
        } else {
            bar.set_position(p.done as u64);
        }
        if p.done == p.total {
            bar.finish_and_clear();
        }
    }))
}

fn attack(a: AttackArgs) -> Result<ExitCode> {
    outputs::check(&outputs::of(&[
        ("--json", &a.json, true),
        ("--csv", &a.csv, true),
        ("--grid", &a.grid, true),
        ("--save-adversarials", &a.save_adversarials, a.force),
    ]))?;
    if a.resume.is_some()
        && (a.save_adversarials.is_some() || a.grid.is_some() || a.save_png.is_some())
    {
        bail!("--resume keeps reports only: --save-adversarials, --grid and --save-png need one uninterrupted run");
    }
    let intervals = a.confidence.spec()?;
    // one shard of a split run: its whole batches of the selection, recorded in the report
    let (loaded, shard) = a
        .common
        .load_shard(a.targeted.as_deref(), a.shard.resolve()?)?;
    let input = loaded.model.arch().input_shape();
    let attack = a.chosen.build(input)?;
    if let Some(dir) = &a.resume {
        let report = resume::run(
            &loaded,
            shard,
            attack.as_ref(),
            intervals,
            dir,
            !a.common.quiet,
        )?;
        let arch = loaded.model.arch();
        out!(
            "{}",
            summary(&report, |c| arch
                .class_name(c as usize)
                .map(|n| n.to_string()))
        );
        for w in &report.warnings {
            eprintln!("warning: {w}");
        }
        write_report(&report, a.json.as_deref(), a.csv.as_deref())?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut eval = evaluator(&loaded, intervals, !a.common.quiet)?;
    if let Some(info) = shard {
        eval = eval.shard(info);
    }
    let run = eval.run(attack.as_ref(), loaded.target)?;
    let arch = loaded.model.arch();
    out!(
        "{}",
        summary(&run.report, |c| arch
            .class_name(c as usize)
            .map(|n| n.to_string()))
    );
    for w in &run.report.warnings {
        eprintln!("warning: {w}");
    }
    for (s, stage) in run.report.stages.iter().enumerate() {
        out!(
            "  stage {} {}: fooled {}, robust {:.2} % after it",
            s + 1,
            stage.attack,
            stage.fooled,
            100.0 * stage.robust_accuracy
        );
    }
    let arch = loaded.model.arch();
    let name = |c: u32| arch.class_name(c as usize).unwrap_or_default();
    let o = &run.outcome;
    for (i, file) in loaded.files.iter().enumerate() {
        out!(
            "  {}: {} {} -> {} {}{}",
            file.display(),
            o.clean_predictions[i],
            name(o.clean_predictions[i]),
            o.adversarial_predictions[i],
            name(o.adversarial_predictions[i]),
            if o.success[i] { "" } else { " (attack failed)" }
        );
    }
    if let Some(dir) = &a.save_png {
        let first = a.common.offset() + shard.map_or(0, |s| s.start);
        save_pngs(&run, &loaded, first, "adv", dir)?;
    }
    write_report(&run.report, a.json.as_deref(), a.csv.as_deref())?;
    if let Some(path) = &a.save_adversarials {
        let o = &run.outcome;
        export::save_adversarials(
            &loaded.images,
            &run.x_adv,
            &o.labels,
            &o.clean_predictions,
            &o.adversarial_predictions,
            path,
        )?;
    }
    if let Some(path) = &a.grid {
        grid(&loaded.images, &run.x_adv, &run.outcome, path)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `report` as JSON and as CSV, where asked.
fn write_report(report: &Report, json: Option<&Path>, csv: Option<&Path>) -> Result<()> {
    if let Some(path) = json {
        export::write_json(report, path)?;
    }
    if let Some(path) = csv {
        export::write_csv(std::slice::from_ref(report), path)?;
    }
    Ok(())
}

/// Each image of `run` as a lossless PNG in `dir`: `<file stem>.<suffix>.png` for `--image`
/// files, `<MNIST index>.<suffix>.png` otherwise.
fn save_pngs(
    run: &perturb::eval::Evaluation,
    loaded: &Loaded,
    offset: usize,
    suffix: &str,
    dir: &Path,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for i in 0..run.outcome.labels.len() {
        let stem = loaded
            .files
            .get(i)
            .and_then(|f| f.file_stem())
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| format!("{}", offset + i));
        perturb::data::save_png(
            &run.x_adv.get(i)?,
            dir.join(format!("{stem}.{suffix}.png")),
            1,
        )?;
    }
    Ok(())
}

/// Up to 8 rows, successful attacks first.
fn grid(x: &Tensor, x_adv: &Tensor, o: &perturb::metrics::Outcome, path: &Path) -> Result<()> {
    let mut order: Vec<usize> = (0..o.labels.len()).filter(|&i| o.success[i]).collect();
    order.extend((0..o.labels.len()).filter(|&i| !o.success[i]));
    let rows: Vec<GridRow> = order
        .into_iter()
        .take(8)
        .map(|i| GridRow {
            index: i,
            label: o.labels[i],
            clean: o.clean_predictions[i],
            adversarial: o.adversarial_predictions[i],
        })
        .collect();
    Ok(export::image_grid(x, x_adv, &rows, path)?)
}

fn eval(e: EvalArgs) -> Result<ExitCode> {
    if let Some(list) = &e.minimal {
        return minimal::run(&e, list);
    }
    outputs::check(&outputs::of(&[
        ("--plot", &e.plot, true),
        ("--json", &e.json, true),
        ("--csv", &e.csv, true),
    ]))?;
    let intervals = e.confidence.spec()?;
    let (loaded, shard) = e.common.load_shard(None, e.shard.resolve()?)?;
    let input = loaded.model.arch().input_shape();
    let norm: perturb::Norm = e.spec.norm.as_deref().unwrap_or("linf").parse()?;
    let grid = e.eps.as_deref().unwrap_or(args::default_eps_grid(norm));
    let eps = args::parse_list(grid, "eps")?;
    if eps.iter().any(|v| !(v.is_finite() && *v >= 0.0)) {
        bail!("--eps: every value must be finite and >= 0");
    }
    let suite = e.suite.as_deref().map(args::suite_attacks).transpose()?;
    let mut names: Vec<&str> = e.attacks.split(',').map(str::trim).collect();
    // every --param must belong to some attack of the list or the suite
    let mut takers_of_params = names.clone();
    if let Some((_, stages)) = &suite {
        takers_of_params.extend(stages.iter().map(String::as_str));
    }
    let registry = Registry::builtin();
    for (key, _) in e.spec.param_values()? {
        let mut takers = takers_of_params.iter().filter_map(|n| registry.get(n).ok());
        if !takers.any(|entry| entry.takes(&key)) {
            bail!(
                "--param {key}: none of the attacks {} takes it",
                takers_of_params.join(", ")
            );
        }
    }
    if e.attacks.trim().is_empty() {
        names.clear();
    }
    // Build every (attack, ε) once up front so that a bad value (an ε out of range for the
    // norm) fails before any compute; the sweep then sets each ε on the first positive one.
    let positive: Vec<f32> = eps.iter().copied().filter(|v| *v > 0.0).collect();
    for &v in &positive {
        if let Some(suite) = &e.suite {
            e.spec.build_suite(suite, Some(v), input)?;
        }
    }
    for name in &names {
        for &v in &positive {
            e.spec.build(Some(name), Some(v), input, Scope::Many)?;
        }
    }
    let reference = positive.first().copied().unwrap_or(0.1);
    let mut attacks: Vec<Box<dyn FixedBudget>> = names
        .iter()
        .map(|name| {
            e.spec
                .build(Some(name), Some(reference), input, Scope::Many)
        })
        .collect::<Result<_>>()?;
    if let Some(suite) = &e.suite {
        attacks.push(e.spec.build_suite(suite, Some(reference), input)?);
    }
    let refs: Vec<&dyn FixedBudget> = attacks.iter().map(|a| a.as_ref()).collect();
    let mut eval = evaluator(&loaded, intervals, !e.common.quiet)?;
    if let Some(info) = shard {
        eval = eval.shard(info);
    }
    let sweep = eval.sweep(&refs, &eps)?;
    let show_ci = intervals.confidence > 0.0;
    let ci = |i: Option<Interval>| match i {
        Some(i) if show_ci => format!(" {i}"),
        _ => String::new(),
    };
    out!(
        "{:<8} {:<5} {:>8} {:>10} {:>10}{}",
        "attack",
        "norm",
        "eps",
        "clean",
        "robust",
        if show_ci {
            format!("  {} interval", intervals.describe())
        } else {
            String::new()
        }
    );
    for r in &sweep.reports {
        out!(
            "{:<8} {:<5} {:>8} {:>9.2}% {:>9.2}%{}",
            r.attack.name,
            r.attack.norm.map(|n| n.to_string()).unwrap_or_default(),
            r.attack.eps.unwrap_or_default(),
            100.0 * r.clean_accuracy,
            100.0 * r.robust_accuracy,
            ci(r.intervals.map(|i| i.robust_accuracy))
        );
    }
    if refs.len() > 1 {
        for p in &sweep.worst_case {
            out!(
                "worst case at eps {}: {:.2} %{}",
                p.eps,
                100.0 * p.robust_accuracy,
                ci(p.interval)
            );
        }
    }
    for w in &sweep.warnings {
        eprintln!("warning: {w}");
    }
    if let Some(path) = &e.json {
        export::write_json(&sweep, path)?;
    }
    if let Some(path) = &e.csv {
        export::write_csv(&sweep.reports, path)?;
    }
    if let Some(path) = &e.plot {
        export::plot_curve(&sweep, path)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn gate(g: GateArgs) -> Result<ExitCode> {
    let intervals = g.confidence.spec()?;
    if let Some(min) = g.min_robust_accuracy {
        Report::check_threshold(min).context("--min-robust-accuracy")?;
    }
    BaselineCheck::check_max_drop(g.max_drop).context("--max-drop")?;
    outputs::check(&outputs::of(&[
        ("--json", &g.json, true),
        ("--junit", &g.junit, true),
        ("--markdown", &g.markdown, true),
    ]))?;
    // the baseline is read before any compute: a bad file fails at once
    let baseline = g
        .baseline
        .as_deref()
        .map(|p| perturb::export::read_report(p).context("--baseline"))
        .transpose()?;
    let loaded = g.common.load(None)?;
    let attack = g.chosen.build(loaded.model.arch().input_shape())?;
    if let Some(b) = &baseline {
        let info = AttackInfo::of(attack.as_ref() as &dyn Attack);
        let n = loaded.indices.len();
        BaselineCheck::check_plan(b, &info, &loaded.data_name, n).context("--baseline")?;
    }
    let run = evaluator(&loaded, intervals, !g.common.quiet)?
        .run(attack.as_ref() as &dyn Attack, None)?;
    let r = run.report;
    if let Some(path) = &g.json {
        export::write_json(&r, path).context("writing the gate's report")?;
    }
    let threshold = g
        .min_robust_accuracy
        .map(|min| ThresholdCheck::of_report(&r, min, intervals))
        .transpose()?;
    let baseline = baseline
        .map(|b| BaselineCheck::of(&r, &b, g.max_drop, intervals.confidence))
        .transpose()
        .context("--baseline")?;
    let outcome = GateOutcome {
        report: r,
        threshold,
        baseline,
    };
    for w in &outcome.report.warnings {
        eprintln!("warning: {w}");
    }
    if let Some(path) = &g.junit {
        export::write_junit(std::slice::from_ref(&outcome), path)?;
    }
    if let Some(path) = &g.markdown {
        export::write_markdown(std::slice::from_ref(&outcome), path)?;
    }
    let verdict = outcome.verdict();
    let what = format!(
        "{}, {}{}",
        outcome.report.model,
        outcome.report.attack.name,
        threat(&outcome.report)
    );
    if let Some(t) = &outcome.threshold {
        out!("{}: {} ({what})", t.verdict, t.describe());
    }
    if let Some(b) = &outcome.baseline {
        out!("{}: {} ({what})", b.verdict, b.describe());
    }
    Ok(ExitCode::from(verdict.exit_code()))
}
