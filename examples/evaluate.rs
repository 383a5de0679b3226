//! Clean and robust accuracy of a shipped model on the MNIST test set: the figures of its card.
//!
//! ```sh
//! cargo run --release --example evaluate -- --model mnist-cnn --eps 0.3 --steps 40 --step-size 0.01
//! ```
//! `--weights FILE [--arch small-cnn]` evaluates unpinned weights (a training checkpoint).
//! Prints clean accuracy on all 10,000 test images, then FGSM and PGD (random start, early stop,
//! seed 0) robust accuracy on the first `--n` images (default 1,000) and, with `--full`, on all.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use perturb::data::Mnist;
use perturb::eval::{count_correct, count_robust};
use perturb::{zoo, Attack, Budget, Fgsm, Pgd};

fn main() -> Result<()> {
    perturb::tune_allocator();
    let (mut name, mut eps, mut steps, mut alpha, mut n, mut full) = (
        "mnist-cnn".to_string(),
        0.3f32,
        40usize,
        0.01f32,
        1000usize,
        false,
    );
    let (mut weights, mut arch) = (None::<String>, zoo::Arch::SmallCnn);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--model" => name = value()?,
            "--eps" => eps = value()?.parse()?,
            "--steps" => steps = value()?.parse()?,
            "--step-size" => alpha = value()?.parse()?,
            "--n" => n = value()?.parse()?,
            "--full" => full = true,
            "--weights" => weights = Some(value()?),
            "--arch" => arch = value()?.parse()?,
            other => bail!("unknown flag {other}"),
        }
    }
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
    let attacks: [(&str, &dyn Attack); 2] = [("FGSM", &fgsm), ("PGD", &pgd)];
    for (label, attack) in attacks {
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
                "{label} (eps {eps}, {} steps, step {alpha}) robust accuracy on the first {size}: {robust} / {size}  [{:.0} s]",
                if label == "FGSM" { 1 } else { steps },
                start.elapsed().as_secs_f64()
            );
        }
    }
    Ok(())
}
