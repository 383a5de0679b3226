//! Time forward, loss gradient (forward + input backward) and PGD-10 of the shipped models on a
//! device (`cpu`, or `cuda` in a build with `--features cuda`), and check that the device agrees
//! with the CPU: same predictions, logits within 1e-3, gradients within 1e-3 relative.
//!
//! ```sh
//! cargo run --release --example device_bench                      # cpu
//! cargo run --release --features cuda --example device_bench -- --device cuda --json cuda.json
//! ```
//! `--model NAME` restricts the run to one model (`--help` lists the flags). Each figure is the
//! median of `--reps` (default 5) runs after one warm-up, PGD-10 of `--pgd-reps` (default 3); on
//! CUDA every run ends with a device synchronisation. MNIST models use the first test digits,
//! EfficientNet-Lite0 the five sample photos repeated to the batch size.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use candle_core::{Device, Module, Tensor};
use clap::Parser;
use perturb::data::{load_photo, sample_photo, Fit, Mnist, SAMPLE_PHOTOS};
use perturb::{loss_and_grad, zoo, Attack, Budget, Goal, Loss, Pgd};

fn median_ms(reps: usize, dev: &Device, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?; // warm-up (kernel loading, allocator)
    dev.synchronize()?;
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f()?;
            dev.synchronize()?;
            Ok(s.elapsed().as_secs_f64() * 1e3)
        })
        .collect::<Result<_>>()?;
    t.sort_by(f64::total_cmp);
    Ok(t[t.len() / 2])
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    let a = a.to_device(&Device::Cpu)?;
    let b = b.to_device(&Device::Cpu)?;
    Ok((a - b)?.abs()?.max_all()?.to_scalar::<f32>()?)
}

/// Time forward, loss gradient and PGD-10 of the shipped models on a device, checked against
/// the CPU.
#[derive(Parser)]
struct Args {
    /// Device: cpu, cuda or cuda:i (CUDA needs --features cuda)
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Timed runs per figure (the median is reported), after one warm-up
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Timed runs of PGD-10
    #[arg(long, default_value_t = 3)]
    pgd_reps: usize,
    /// Also write the table as JSON to this file
    #[arg(long)]
    json: Option<PathBuf>,
    /// Only this shipped model
    #[arg(long = "model")]
    only: Option<String>,
}

fn main() -> Result<()> {
    perturb::tune_allocator();
    let Args {
        device,
        reps,
        pgd_reps,
        json,
        only,
    } = Args::parse();
    let dev = perturb::device::parse(&device)?;
    let cpu = Device::Cpu;
    let (digits, digit_labels) = Mnist::load_test_default(&cpu)?;
    let photos: Vec<Tensor> = SAMPLE_PHOTOS
        .iter()
        .map(|p| load_photo(sample_photo(p), 224, Fit::ResizeCrop, &cpu))
        .collect::<perturb::Result<_>>()?;
    let mut rows = Vec::new();
    println!(
        "{:<20} {:>5} {:>11} {:>13} {:>11} {:>9} {:>10} {:>9}",
        "model", "batch", "forward ms", "fwd+bwd ms", "PGD-10 ms", "img/s", "|dlogit|", "|dgrad|"
    );
    for (name, batches) in [
        ("mnist-cnn", vec![32usize, 128]),
        ("mnist-cnn-fgsm-rs", vec![32, 128]),
        ("efficientnet-lite0", vec![1usize, 8, 32]),
    ] {
        if only.as_deref().is_some_and(|m| m != name) {
            continue;
        }
        let on_cpu = zoo::load(name, &cpu)?;
        let on_dev = zoo::load(name, &dev)?;
        for n in batches {
            let (x, y) = if name.starts_with("mnist") {
                (digits.narrow(0, 0, n)?, digit_labels.narrow(0, 0, n)?)
            } else {
                let xs: Vec<Tensor> = (0..n).map(|i| photos[i % 5].clone()).collect();
                let x = Tensor::stack(&xs, 0)?;
                let y = on_cpu.forward(&x)?.argmax(1)?;
                (x, y)
            };
            let (xd, yd) = (x.to_device(&dev)?, y.to_device(&dev)?);
            let goal = Goal::untargeted(&yd);
            // agreement with the CPU
            let dl = max_abs_diff(&on_dev.forward(&xd)?, &on_cpu.forward(&x)?)?;
            let gd = loss_and_grad(&on_dev, &xd, &goal, Loss::CrossEntropy)?.grad;
            let gc = loss_and_grad(&on_cpu, &x, &Goal::untargeted(&y), Loss::CrossEntropy)?.grad;
            let scale = gc.abs()?.max_all()?.to_scalar::<f32>()?.max(1e-12);
            let dg = max_abs_diff(&gd, &gc)? / scale;
            let eps = if name.starts_with("mnist") {
                0.1
            } else {
                2.0 / 255.0
            };
            let pgd = Pgd::new(Budget::linf(eps)?).steps(10).check_gradient(false);
            let fwd = median_ms(reps, &dev, || Ok(on_dev.forward(&xd).map(|_| ())?))?;
            let grad = median_ms(reps, &dev, || {
                Ok(loss_and_grad(&on_dev, &xd, &goal, Loss::CrossEntropy).map(|_| ())?)
            })?;
            let pgd_ms = median_ms(pgd_reps, &dev, || {
                Ok(pgd.run(&on_dev, &xd, &goal).map(|_| ())?)
            })?;
            let ips = n as f64 / (pgd_ms / 1e3);
            println!(
                "{name:<20} {n:>5} {fwd:>11.2} {grad:>13.2} {pgd_ms:>11.1} {ips:>9.0} {dl:>10.2e} {dg:>9.2e}"
            );
            rows.push(serde_json::json!({
                "model": name, "batch": n, "device": device,
                "forward_ms": fwd, "loss_grad_ms": grad, "pgd10_ms": pgd_ms,
                "pgd10_images_per_s": ips, "max_logit_diff_vs_cpu": dl,
                "max_rel_grad_diff_vs_cpu": dg,
            }));
        }
    }
    if let Some(path) = json {
        std::fs::write(&path, serde_json::to_string_pretty(&rows)?)?;
    }
    Ok(())
}
