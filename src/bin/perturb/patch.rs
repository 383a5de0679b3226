//! `perturb patch`: train a universal patch, measure a saved one against a noise patch, paste
//! one on images. A thin layer over `perturb::attack::{PatchTrainer, PatchApplication}`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use perturb::attack::{
    Patch, PatchApplication, PatchOptimizer, PatchShape, PatchTrainer, Region, Transforms,
};
use perturb::export;

use crate::args::{Common, Split};
use crate::outputs;

#[derive(Args, Debug)]
pub struct PatchArgs {
    #[command(subcommand)]
    pub action: Action,
}

#[derive(Subcommand, Debug)]
pub enum Action {
    /// Train a universal targeted patch (expectation over placements and rotations) on the
    /// MNIST training images (or --image files) and save it.
    Train(TrainArgs),
    /// Targeted success of a saved patch on test images whose class is not the target, beside a
    /// uniform-noise patch at the same placements.
    Eval(EvalArgs),
    /// Paste a saved patch on test images and report, like `attack`, how many it fools.
    Apply(ApplyArgs),
}

/// Where and how the patch lands: shared by all three actions.
#[derive(Args, Debug)]
pub struct Placing {
    /// Largest rotation of the patch in degrees, either way (drawn per image).
    #[arg(long, default_value_t = 0.0)]
    pub rotation: f32,
    /// Size factor range LO,HI of the patch (drawn per image), e.g. 0.8,1.2.
    #[arg(long, default_value = "1,1", value_name = "LO,HI")]
    pub scale: String,
    /// Always put the patch's top-left pixel here (a sticker) instead of anywhere.
    #[arg(long, value_name = "TOP,LEFT")]
    pub fixed: Option<String>,
    /// Seed of the placements (and of training).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    pub common: Common,
    /// The class the patch turns images into: an index or an ImageNet class name.
    #[arg(long)]
    pub target: String,
    /// Patch size as a fraction of the image area.
    #[arg(long, default_value_t = 0.1)]
    pub area: f32,
    /// square or circle.
    #[arg(long, default_value = "square", value_parser = ["square", "circle"])]
    pub shape: String,
    /// Training steps.
    #[arg(long, default_value_t = 500)]
    pub steps: usize,
    /// Images per training step.
    #[arg(long, default_value_t = 64)]
    pub train_batch: usize,
    /// Adam learning rate (or the signed step with --sign).
    #[arg(long, default_value_t = 0.05)]
    pub lr: f32,
    /// Signed-gradient steps instead of Adam.
    #[arg(long)]
    pub sign: bool,
    #[command(flatten)]
    pub placing: Placing,
    /// Write the patch here (safetensors: pixels and mask; `patch eval` and `apply` read it).
    #[arg(long)]
    pub out: PathBuf,
    /// Also write the patch as a lossless PNG, one pixel per pixel (`--patch` reads it back).
    #[arg(long)]
    pub png: Option<PathBuf>,
    /// Replace existing --out or --png files.
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub common: Common,
    /// The patch: a safetensors file from `patch train`, or a square PNG (one pixel per pixel).
    #[arg(long)]
    pub patch: PathBuf,
    /// The class the patch aims for.
    #[arg(long)]
    pub target: String,
    #[command(flatten)]
    pub placing: Placing,
    /// Write the figures as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub common: Common,
    /// The patch: a safetensors file from `patch train`, or a square PNG (one pixel per pixel).
    #[arg(long)]
    pub patch: PathBuf,
    /// Count success as reaching this class (images of it are skipped); otherwise as any
    /// misclassification.
    #[arg(long)]
    pub target: Option<String>,
    #[command(flatten)]
    pub placing: Placing,
    /// Write the report as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write a PNG grid of clean, patch and patched images.
    #[arg(long)]
    pub grid: Option<PathBuf>,
    /// Write each patched image as a lossless PNG into this folder.
    #[arg(long, value_name = "DIR")]
    pub save_png: Option<PathBuf>,
}

pub fn run(p: PatchArgs) -> Result<ExitCode> {
    match p.action {
        Action::Train(t) => train(t),
        Action::Eval(e) => eval(e),
        Action::Apply(a) => apply(a),
    }
}

impl Placing {
    fn region(&self) -> Result<Region> {
        let Some(text) = &self.fixed else {
            return Ok(Region::Anywhere);
        };
        let [top, left] = pair::<usize>(text, "--fixed")?;
        Ok(Region::Fixed { top, left })
    }

    fn transforms(&self) -> Result<Transforms> {
        let [lo, hi] = pair::<f32>(&self.scale, "--scale")?;
        Ok(Transforms {
            scale: (lo, hi),
            rotation_deg: self.rotation,
            ..Transforms::default()
        })
    }
}

/// Two comma-separated numbers.
fn pair<T: std::str::FromStr>(text: &str, flag: &str) -> Result<[T; 2]> {
    let parts: Vec<&str> = text.split(',').map(str::trim).collect();
    let parse = |t: &str| t.parse::<T>().ok();
    match parts.as_slice() {
        [a, b] => match (parse(a), parse(b)) {
            (Some(a), Some(b)) => Ok([a, b]),
            _ => bail!("{flag} {text:?}: expected two numbers A,B"),
        },
        _ => bail!("{flag} {text:?}: expected two numbers A,B"),
    }
}

/// A saved patch: safetensors from `patch train`, or a PNG with the model's channels.
fn load_patch(path: &Path, channels: usize, device: &candle_core::Device) -> Result<Patch> {
    let png = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("png"));
    // the loaders' errors name the file
    let patch = if png {
        Patch::load_png(path, channels, PatchShape::Square, device)?
    } else {
        Patch::load(path, device)?
    };
    let c = patch.pixels().dim(0)?;
    if c != channels {
        bail!(
            "--patch {}: has {c} channels, the model reads {channels}",
            path.display()
        );
    }
    Ok(patch)
}

fn train(t: TrainArgs) -> Result<ExitCode> {
    outputs::check(&outputs::of(&[
        ("--out", &Some(t.out.clone()), t.force),
        ("--png", &t.png, t.force),
    ]))?;
    let loaded = t.common.load_split(Some(&t.target), Split::Train)?;
    let target = loaded.target.context("--target")?;
    let shape = match t.shape.as_str() {
        "circle" => PatchShape::Circle,
        _ => PatchShape::Square,
    };
    let optimizer = if t.sign {
        PatchOptimizer::Sign { lr: t.lr }
    } else {
        PatchOptimizer::Adam { lr: t.lr }
    };
    let trainer = PatchTrainer::new(target, t.area)
        .shape(shape)
        .steps(t.steps)
        .batch_size(t.train_batch)
        .optimizer(optimizer)
        .region(t.placing.region()?)
        .transforms(t.placing.transforms()?)
        .seed(t.placing.seed);
    let start = Instant::now();
    let trained = trainer.train(&loaded.model, &loaded.images)?;
    let side = trained.patch.side();
    let first = trained.losses.first().copied().unwrap_or(f32::NAN);
    let last = trained.losses.last().copied().unwrap_or(f32::NAN);
    trained.patch.save(&t.out)?;
    if let Some(png) = &t.png {
        trained.patch.save_png(png, 1)?;
    }
    out!(
        "{} · patch {side} px toward {} trained on {} ({} steps of {}): loss {first:.3} -> {last:.3}, {:.1} s; wrote {}",
        loaded.model_name,
        class_label(&loaded, target),
        loaded.data_name,
        t.steps,
        t.train_batch,
        start.elapsed().as_secs_f64(),
        t.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `8`, or `859 (toaster)` where the model names its classes.
fn class_label(loaded: &crate::args::Loaded, class: u32) -> String {
    match loaded.model.arch().class_name(class as usize) {
        Some(name) if name != class.to_string() => format!("{class} ({name})"),
        _ => class.to_string(),
    }
}

fn eval(e: EvalArgs) -> Result<ExitCode> {
    outputs::check(&outputs::of(&[("--json", &e.json, true)]))?;
    // every image of another class than the target
    let loaded = e.common.load(Some(&e.target))?;
    let target = loaded.target.context("--target")?;
    let channels = loaded.model.arch().input_shape()[0];
    let patch = load_patch(&e.patch, channels, loaded.images.device())?;
    let measure = PatchTrainer::new(target, 0.1)
        .region(e.placing.region()?)
        .transforms(e.placing.transforms()?);
    let figures = measure.evaluate(
        &loaded.model,
        &patch,
        &loaded.images,
        &loaded.labels,
        e.placing.seed,
    )?;
    out!(
        "{} · patch {} px toward {} on {} ({} images): success {:.2} % {}, noise patch {:.2} % {} \
         (95 % wilson intervals)",
        loaded.model_name,
        patch.side(),
        class_label(&loaded, target),
        loaded.data_name,
        figures.images,
        100.0 * figures.success_rate,
        figures.success_interval,
        100.0 * figures.noise_success_rate,
        figures.noise_success_interval
    );
    if let Some(path) = &e.json {
        export::write_json(&figures, path)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn apply(a: ApplyArgs) -> Result<ExitCode> {
    outputs::check(&outputs::of(&[
        ("--json", &a.json, true),
        ("--grid", &a.grid, true),
    ]))?;
    let loaded = a.common.load(a.target.as_deref())?;
    let channels = loaded.model.arch().input_shape()[0];
    let patch = load_patch(&a.patch, channels, loaded.images.device())?;
    let attack = PatchApplication::new(patch, a.placing.region()?)
        .transforms(a.placing.transforms()?)
        .seed(a.placing.seed);
    let run = crate::evaluator(&loaded, Default::default(), !a.common.quiet)?
        .run(&attack, loaded.target)?;
    let arch = loaded.model.arch();
    out!(
        "{}",
        crate::summary(&run.report, |c| arch.class_name(c as usize))
    );
    if let Some(dir) = &a.save_png {
        crate::save_pngs(&run, &loaded, a.common.offset(), "patched", dir)?;
    }
    if let Some(path) = &a.json {
        export::write_json(&run.report, path)?;
    }
    if let Some(path) = &a.grid {
        crate::grid(&loaded.images, &run.x_adv, &run.outcome, path)?;
    }
    Ok(ExitCode::SUCCESS)
}
