//! Clean and robust accuracy of a shipped model on the MNIST test set: the figures of its card.
//!
//! ```sh
//! cargo run --release --example evaluate -- --model mnist-cnn --eps 0.3 --steps 40 --step-size 0.01
//! ```
//! `--help` lists the flags. `--weights FILE [--arch small-cnn]` evaluates unpinned weights (a
//! training checkpoint).
//! Prints clean accuracy on all 10,000 test images, then FGSM and PGD (random start, early stop,
//! seed 0) robust accuracy on the first `--n` images (default 1,000) and, with `--full`, on all.

use std::time::Instant;

use anyhow::Result;
use candle_core::Device;
use clap::Parser;
use perturb::data::Mnist;
use perturb::eval::{count_correct, count_robust};
use perturb::{zoo, Budget, Fgsm, Pgd};

/// Clean and robust (FGSM, PGD) accuracy of a shipped model on the MNIST test set.
#[derive(Parser)]
struct Args {
    /// Shipped model name
    #[arg(long = "model", default_value = "mnist-cnn")]
    name: String,
    /// L∞ budget
    #[arg(long, default_value_t = 0.3)]
    eps: f32,
    /// PGD steps
    #[arg(long, default_value_t = 40)]
    steps: usize,
    /// PGD step size
    #[arg(long = "step-size", default_value_t = 0.01)]
    alpha: f32,
    /// Attack the first N test images
    #[arg(long, default_value_t = 1000)]
    n: usize,
    /// Also attack all 10,000 test images
    #[arg(long)]
    full: bool,
    /// Evaluate these unpinned weights (a training checkpoint) instead of a shipped model
    #[arg(long)]
    weights: Option<String>,
    /// Architecture of --weights
    #[arg(long, default_value = "small-cnn")]
    arch: zoo::Arch,
}

fn main() -> Result<()> {
    perturb::tune_allocator();
    let Args {
        mut name,
        eps,
        steps,
        alpha,
        n,
        full,
        weights,
        arch,
    } = Args::parse();
    let device = Device::Cpu;
    let model = match &weights {
        // Unpinned weights of a zoo architecture, e.g. a training checkpoint.
        Some(path) => {
            name = path.clone();
            zoo::load_file(arch, std::path::Path::new(path), None, &device)?
        }
        None => zoo::load(&name, &device)?,
    };
    let mnist = Mnist::load_default(&device)?;
    let (x, y) = (&mnist.test_images, &mnist.test_labels);
    let clean = count_correct(&model, x, y, 500)?;
    println!("{name}: clean accuracy {clean} / 10000");
    let budget = Budget::linf(eps)?;
    let fgsm = Fgsm::new(budget);
    let pgd = Pgd::new(budget)
        .steps(steps)
        .step_size(alpha)
        .early_stop(true)
        .seed(0);
    for attack in [&fgsm, &pgd] {
        let mut sizes = vec![n];
        if full {
            sizes.push(10_000);
        }
        for size in sizes {
            let start = Instant::now();
            let robust = count_robust(
                &model,
                attack,
                &x.narrow(0, 0, size)?,
                &y.narrow(0, 0, size)?,
                250,
            )?;
            println!(
                "{}: robust accuracy on the first {size}: {robust} / {size}  [{:.0} s]",
                attack.summary(),
                start.elapsed().as_secs_f64()
            );
        }
    }
    Ok(())
}
