//! Train a zoo architecture on the vendored MNIST, standard or adversarially.
//!
//! ```sh
//! cargo run --release --example train -- --arch mnist-linear --epochs 5 --out mnist-linear.safetensors
//! cargo run --release --example train -- --arch small-cnn --epochs 4 --out mnist-cnn.safetensors
//! # adversarial training with FGSM + random start (Wong et al. 2020) at ε = 0.3:
//! cargo run --release --example train -- --arch small-cnn --epochs 10 --adversarial fgsm-rs \
//!     --eps 0.3 --alpha 0.375 --out mnist-cnn-fgsm-rs.safetensors
//! # TRADES (Zhang et al. 2019) with β = 6, 10 steps of 0.075, ε warmed up over 2 epochs:
//! cargo run --release --example train -- --arch small-cnn --epochs 20 --adversarial trades \
//!     --eps 0.3 --alpha 0.075 --steps 10 --beta 6 --eps-warmup 2 --out mnist-cnn-trades.safetensors
//! ```
//! Prints one line per epoch, then the clean test accuracy, the wall time and the sha256 of the
//! written file: everything a model card records. `--help` lists the flags.
//!
//! The weights go to `--out` (default `trained.safetensors` in the current directory). The example
//! refuses an `--out` or `--checkpoint` inside the shipped `models/` folder (the checkout's, or
//! that of `PERTURB_HOME`) unless `--into-models` is given: a retrained file there would replace
//! a pinned model, which `perturb models` then reports as MISMATCH and the zoo refuses. To check
//! a reproduction, compare the printed sha256 with `models/SHA256SUMS`.
//!
//! Long runs can span sessions: `--checkpoint FILE` saves the weights after every epoch (`{epoch}`
//! in the name keeps one file per epoch, e.g. for a robust-accuracy curve), and
//! `--init FILE --start-epoch K` resumes at epoch K with the same shuffles, attack seeds and
//! learning rates (Adam's moments restart from zero, so give both commands on the card).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Result};
use candle_core::Device;
use clap::Parser;
use perturb::data::Mnist;
use perturb::train::{train, Objective, Trades, TrainConfig};
use perturb::zoo::{self, Arch};
use perturb::{Attack, Budget, Pgd};

/// Train a zoo architecture on the vendored MNIST, standard or adversarially.
#[derive(Parser)]
struct Cli {
    /// Architecture: mnist-linear or small-cnn
    #[arg(long, default_value = "small-cnn")]
    arch: Arch,
    /// Passes over the training set [default: 3]
    #[arg(long)]
    epochs: Option<usize>,
    /// Images per batch [default: 128]
    #[arg(long = "batch-size")]
    batch_size: Option<usize>,
    /// Adam learning rate [default: 0.001]
    #[arg(long)]
    lr: Option<f64>,
    /// Final epochs run at a tenth of the learning rate [default: 0]
    #[arg(long = "decay-epochs")]
    decay_epochs: Option<usize>,
    /// Seed of initialization, shuffling and attacks [default: 0]
    #[arg(long)]
    seed: Option<u64>,
    /// Adversarial training: fgsm-rs (FGSM with random start), pgd (Madry et al.) or trades
    #[arg(long)]
    adversarial: Option<String>,
    /// Weight of the KL term of --adversarial trades
    #[arg(long, default_value_t = 6.0)]
    beta: f32,
    /// Epochs over which ε grows linearly from 0 to --eps [default: 0]
    #[arg(long = "eps-warmup")]
    eps_warmup: Option<usize>,
    /// L∞ budget of adversarial training
    #[arg(long, default_value_t = 0.3)]
    eps: f32,
    /// Step size of adversarial training [default: 1.25 × eps]
    #[arg(long)]
    alpha: Option<f32>,
    /// Steps of --adversarial pgd or trades
    #[arg(long, default_value_t = 1)]
    steps: usize,
    /// Train on the first N training images only
    #[arg(long)]
    limit: Option<usize>,
    /// Where to write the trained weights (never into models/ without --into-models)
    #[arg(long, default_value = "trained.safetensors")]
    out: PathBuf,
    /// Start from these weights (resume with --start-epoch)
    #[arg(long)]
    init: Option<PathBuf>,
    /// First epoch to run (from 1), when resuming from --init [default: 1]
    #[arg(long = "start-epoch")]
    start_epoch: Option<usize>,
    /// Save the weights to this file after every epoch ({epoch} in the name: one file per epoch)
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Allow --out or --checkpoint inside the shipped models/ folder (replacing a shipped model
    /// makes `perturb models` report MISMATCH and the zoo refuse it)
    #[arg(long)]
    into_models: bool,
}

struct Args {
    arch: Arch,
    cfg: TrainConfig,
    adversarial: Option<String>,
    eps: f32,
    alpha: Option<f32>,
    steps: usize,
    beta: f32,
    out: PathBuf,
    limit: Option<usize>,
    init: Option<PathBuf>,
    checkpoint: Option<PathBuf>,
}

/// The shipped models/ folders: that of PERTURB_HOME (or the checkout) and the checkout's own.
fn models_dirs() -> Vec<PathBuf> {
    [
        zoo::models_dir(),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("models"),
    ]
    .iter()
    .filter_map(|d| d.canonicalize().ok())
    .collect()
}

/// Whether writing `path` would put a file inside a shipped models/ folder: the nearest existing
/// ancestor of `path`, resolved, lies in one.
fn in_models_dir(path: &Path) -> bool {
    let mut existing = path;
    let resolved = loop {
        match existing.parent() {
            Some(p) if p.as_os_str().is_empty() => break Path::new(".").canonicalize(),
            Some(p) => {
                if p.exists() {
                    break p.canonicalize();
                }
                existing = p;
            }
            None => break path.canonicalize(),
        }
    };
    let Ok(resolved) = resolved else {
        return false;
    };
    models_dirs().iter().any(|d| resolved.starts_with(d))
}

fn parse() -> Result<Args> {
    let cli = Cli::parse();
    let mut cfg = TrainConfig::default();
    if let Some(v) = cli.epochs {
        cfg.epochs = v;
    }
    if let Some(v) = cli.batch_size {
        cfg.batch_size = v;
    }
    if let Some(v) = cli.lr {
        cfg.lr = v;
    }
    if let Some(v) = cli.decay_epochs {
        cfg.decay_epochs = v;
    }
    if let Some(v) = cli.seed {
        cfg.seed = v;
    }
    if let Some(v) = cli.start_epoch {
        cfg.start_epoch = v;
    }
    if let Some(v) = cli.eps_warmup {
        cfg.eps_warmup_epochs = v;
    }
    for (flag, path) in [
        ("--out", Some(&cli.out)),
        ("--checkpoint", cli.checkpoint.as_ref()),
    ] {
        if let Some(path) = path {
            if !cli.into_models && in_models_dir(path) {
                bail!(
                    "{flag} {} lies in the shipped models/ folder; write elsewhere and compare the \
                     printed sha256 with models/SHA256SUMS, or pass --into-models to replace it",
                    path.display()
                );
            }
        }
    }
    Ok(Args {
        arch: cli.arch,
        cfg,
        adversarial: cli.adversarial,
        eps: cli.eps,
        alpha: cli.alpha,
        steps: cli.steps,
        beta: cli.beta,
        out: cli.out,
        limit: cli.limit,
        init: cli.init,
        checkpoint: cli.checkpoint,
    })
}

fn main() -> Result<()> {
    perturb::tune_allocator();
    let args = parse()?;
    let device = Device::Cpu;
    let mnist = Mnist::load_default(&device)?;
    let (mut images, mut labels) = (mnist.train_images.clone(), mnist.train_labels.clone());
    if let Some(n) = args.limit {
        images = images.narrow(0, 0, n)?;
        labels = labels.narrow(0, 0, n)?;
    }
    // FGSM with random start is PGD with one step from a random point (Wong et al. 2020).
    let alpha = args.alpha.unwrap_or(1.25 * args.eps);
    let pgd_steps = match args.adversarial.as_deref() {
        Some("fgsm-rs") => Some(1),
        Some("pgd") => Some(args.steps),
        _ => None,
    };
    // A fresh, reproducible seed for every batch's random starts; budget and step scaled by the
    // warm-up.
    let eps = args.eps;
    let make_attack = move |batch_seed: u64, scale: f32| -> perturb::Result<Box<dyn Attack>> {
        let pgd = Pgd::new(Budget::linf(eps * scale)?)
            .steps(pgd_steps.unwrap_or(1))
            .step_size(alpha * scale)
            .seed(batch_seed)
            .check_gradient(false);
        Ok(Box::new(pgd))
    };
    let objective = match args.adversarial.as_deref() {
        None => Objective::Clean,
        Some("fgsm-rs" | "pgd") => Objective::Adversarial(&make_attack),
        Some("trades") => Objective::Trades(Trades::new(args.eps, alpha, args.steps, args.beta)?),
        Some(other) => bail!("unknown adversarial training {other} (fgsm-rs, pgd or trades)"),
    };
    println!(
        "training {} on {} images: {:?}, {objective:?}, eps {}, step {alpha}, steps {}",
        args.arch,
        images.dim(0)?,
        args.cfg,
        args.eps,
        pgd_steps.unwrap_or(args.steps),
    );
    let init = match &args.init {
        Some(path) => Some(candle_core::safetensors::load(path, &device)?),
        None => None,
    };
    let start = Instant::now();
    let mut checkpoint_error = None;
    let params = train(
        args.arch,
        &images,
        &labels,
        &args.cfg,
        init.as_ref(),
        objective,
        |s, params| {
            println!(
                "epoch {:>2}: loss {:.4}, train accuracy {:.4}, {:.0} s",
                s.epoch, s.loss, s.accuracy, s.seconds
            );
            if let Some(path) = &args.checkpoint {
                let path = PathBuf::from(
                    path.to_string_lossy()
                        .replace("{epoch}", &format!("{:02}", s.epoch)),
                );
                match zoo::save(params, &path) {
                    Ok(()) => println!(
                        "          checkpoint after epoch {} in {}",
                        s.epoch,
                        path.display()
                    ),
                    Err(e) => checkpoint_error = Some(e),
                }
            }
        },
    )?;
    if let Some(e) = checkpoint_error {
        return Err(e.into());
    }
    let wall = start.elapsed().as_secs_f64();
    zoo::save(&params, &args.out)?;
    let model = zoo::load_file(args.arch, &args.out, None, &device)?;
    let correct =
        perturb::eval::count_correct(&model, &mnist.test_images, &mnist.test_labels, 500)?;
    let bytes = std::fs::read(&args.out)?;
    println!(
        "clean test accuracy {correct}/10000 = {:.2} %, wall time {wall:.0} s",
        correct as f64 / 100.0
    );
    println!("{}  {}", zoo::sha256_hex(&bytes), args.out.display());
    Ok(())
}
