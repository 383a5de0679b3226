//! Train a zoo architecture on the vendored MNIST, standard or adversarially.
//!
//! ```sh
//! cargo run --release --example train -- --arch mnist-linear --epochs 5 --out models/mnist-linear.safetensors
//! cargo run --release --example train -- --arch small-cnn --epochs 4 --out models/mnist-cnn.safetensors
//! # adversarial training with FGSM + random start (Wong et al. 2020) at ε = 0.3:
//! cargo run --release --example train -- --arch small-cnn --epochs 10 --adversarial fgsm-rs \
//!     --eps 0.3 --alpha 0.375 --out models/mnist-cnn-robust.safetensors
//! ```
//! Prints one line per epoch, then the clean test accuracy, the wall time and the sha256 of the
//! written file: everything a model card records.
//!
//! Long runs can span sessions: `--checkpoint FILE` saves the weights after every epoch, and
//! `--init FILE --start-epoch K` resumes at epoch K with the same shuffles, attack seeds and
//! learning rates (Adam's moments restart from zero, so give both commands on the card).

use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use perturb::data::Mnist;
use perturb::train::{train, TrainConfig};
use perturb::zoo::{self, Arch};
use perturb::{Attack, Budget, Pgd};

struct Args {
    arch: Arch,
    cfg: TrainConfig,
    adversarial: Option<String>,
    eps: f32,
    alpha: Option<f32>,
    steps: usize,
    out: std::path::PathBuf,
    limit: Option<usize>,
    init: Option<std::path::PathBuf>,
    checkpoint: Option<std::path::PathBuf>,
}

fn parse() -> Result<Args> {
    let mut a = Args {
        arch: Arch::SmallCnn,
        cfg: TrainConfig::default(),
        adversarial: None,
        eps: 0.3,
        alpha: None,
        steps: 1,
        out: "trained.safetensors".into(),
        limit: None,
        init: None,
        checkpoint: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--arch" => a.arch = value()?.parse()?,
            "--epochs" => a.cfg.epochs = value()?.parse()?,
            "--batch-size" => a.cfg.batch_size = value()?.parse()?,
            "--lr" => a.cfg.lr = value()?.parse()?,
            "--decay-epochs" => a.cfg.decay_epochs = value()?.parse()?,
            "--seed" => a.cfg.seed = value()?.parse()?,
            "--adversarial" => a.adversarial = Some(value()?),
            "--eps" => a.eps = value()?.parse()?,
            "--alpha" => a.alpha = Some(value()?.parse()?),
            "--steps" => a.steps = value()?.parse()?,
            "--limit" => a.limit = Some(value()?.parse()?),
            "--out" => a.out = value()?.into(),
            "--init" => a.init = Some(value()?.into()),
            "--start-epoch" => a.cfg.start_epoch = value()?.parse()?,
            "--checkpoint" => a.checkpoint = Some(value()?.into()),
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(a)
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
    let attack: Option<Pgd> = match args.adversarial.as_deref() {
        None => None,
        Some("fgsm-rs" | "pgd") => {
            let budget = Budget::linf(args.eps)?;
            let steps = if args.adversarial.as_deref() == Some("pgd") {
                args.steps
            } else {
                1
            };
            let alpha = args.alpha.unwrap_or(1.25 * args.eps);
            Some(
                Pgd::new(budget)
                    .steps(steps)
                    .step_size(alpha)
                    .seed(args.cfg.seed)
                    .check_gradient(false),
            )
        }
        Some(other) => bail!("unknown adversarial training {other} (fgsm-rs or pgd)"),
    };
    // A fresh, reproducible seed for every batch's random starts.
    let make_attack = attack
        .clone()
        .map(|pgd| move |seed: u64| Box::new(pgd.clone().seed(seed)) as Box<dyn Attack>);
    println!(
        "training {} on {} images: {:?}, attack {:?}",
        args.arch,
        images.dim(0)?,
        args.cfg,
        attack
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
        make_attack
            .as_ref()
            .map(|f| f as &dyn Fn(u64) -> Box<dyn Attack>),
        |s, params| {
            println!(
                "epoch {:>2}: loss {:.4}, train accuracy {:.4}, {:.0} s",
                s.epoch, s.loss, s.accuracy, s.seconds
            );
            if let Some(path) = &args.checkpoint {
                match zoo::save(params, path) {
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
