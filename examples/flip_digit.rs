//! Flip a digit: find the smallest L∞ budget at which FGSM and PGD change `mnist-cnn`'s answer,
//! and write the digit before and after, and the perturbation, as PNGs.
//!
//! ```sh
//! cargo run --release --example flip_digit                      # test digit 0
//! cargo run --release --example flip_digit -- --index 42        # another test digit
//! cargo run --release --example flip_digit -- --image my7.png   # your own digit (white on black)
//! ```
//! Options: `--model NAME` (default mnist-cnn), `--out DIR` (default `.`); `--help` lists them.

use anyhow::{bail, Result};
use candle_core::{Device, Module, Tensor};
use clap::Parser;
use perturb::data::{load_image, save_png, Mnist};
use perturb::{zoo, Attack, Budget, Fgsm, Goal, Pgd};

/// Predicted class and its softmax probability for one image `[1, 1, 28, 28]`.
fn classify(model: &zoo::ZooModel, x: &Tensor) -> Result<(u32, f32)> {
    let p = candle_nn::ops::softmax(&model.forward(x)?, 1)?.flatten_all()?;
    let class = p.argmax(0)?.to_scalar::<u32>()?;
    Ok((class, p.get(class as usize)?.to_scalar::<f32>()?))
}

/// Smallest ε (to 1e-3) at which `make(ε)` flips the prediction, with the adversarial image.
fn smallest_eps<A: Attack>(
    model: &zoo::ZooModel,
    x: &Tensor,
    label: &Tensor,
    make: impl Fn(f32) -> Result<A>,
) -> Result<Option<(f32, Tensor)>> {
    let goal = Goal::untargeted(label);
    let flips = |eps: f32| -> Result<Option<Tensor>> {
        let adv = make(eps)?.run(model, x, &goal)?;
        Ok(adv.success[0].then_some(adv.x_adv))
    };
    // Coarse grid, then bisection between the last failure and the first success.
    let mut lo = 0.0;
    let mut found = None;
    for k in 1..=50 {
        let eps = k as f32 * 0.01;
        if let Some(x_adv) = flips(eps)? {
            found = Some((eps, x_adv));
            break;
        }
        lo = eps;
    }
    let Some((mut hi, mut best)) = found else {
        return Ok(None);
    };
    while hi - lo > 1e-3 {
        let mid = 0.5 * (lo + hi);
        match flips(mid)? {
            Some(x_adv) => (hi, best) = (mid, x_adv),
            None => lo = mid,
        }
    }
    Ok(Some((hi, best)))
}

/// Find the smallest L∞ budget at which FGSM and PGD flip a digit's prediction, and write PNGs.
#[derive(Parser)]
struct Args {
    /// Shipped model name
    #[arg(long = "model", default_value = "mnist-cnn")]
    model_name: String,
    /// MNIST test digit to attack
    #[arg(long, default_value_t = 0)]
    index: usize,
    /// Your own 28×28 digit (white on black) instead of a test digit
    #[arg(long)]
    image: Option<String>,
    /// Output directory of the PNGs
    #[arg(long, default_value = ".")]
    out: std::path::PathBuf,
}

fn main() -> Result<()> {
    perturb::tune_allocator();
    let Args {
        model_name,
        index,
        image,
        out,
    } = Args::parse();
    let device = Device::Cpu;
    let model = zoo::load(&model_name, &device)?;
    let (x, source) = match &image {
        Some(path) => (
            load_image(path, 1, 28, 28, &device)?.unsqueeze(0)?,
            path.clone(),
        ),
        None => {
            let mnist = Mnist::load_default(&device)?;
            if index >= mnist.len_test() {
                bail!("--index must be below {}", mnist.len_test());
            }
            let truth = mnist.test_labels.get(index)?.to_scalar::<u32>()?;
            let x = mnist.test_images.narrow(0, index, 1)?;
            (x, format!("MNIST test digit #{index} (a {truth})"))
        }
    };
    let (clean, p) = classify(&model, &x)?;
    println!("{source}: {model_name} says {clean} ({:.1} %)", 100.0 * p);
    let label = Tensor::new(&[clean], &device)?;
    let fgsm = smallest_eps(&model, &x, &label, |eps| Ok(Fgsm::new(Budget::linf(eps)?)))?;
    let pgd = smallest_eps(&model, &x, &label, |eps| {
        Ok(Pgd::bim(Budget::linf(eps)?)
            .steps(40)
            .step_size(eps / 10.0)
            .early_stop(true))
    })?;
    for (name, result) in [("FGSM", &fgsm), ("PGD-40", &pgd)] {
        match result {
            Some((eps, x_adv)) => {
                let (class, p) = classify(&model, x_adv)?;
                println!(
                    "{name:>7}: eps = {eps:.3} flips it to {class} ({:.1} %)",
                    100.0 * p
                );
            }
            None => println!("{name:>7}: no flip up to eps = 0.5"),
        }
    }
    let Some((eps, x_adv)) = pgd.or(fgsm) else {
        return Ok(());
    };
    std::fs::create_dir_all(&out)?;
    let delta = (&x_adv - &x)?;
    let amplified = ((delta / (2.0 * f64::from(eps)))? + 0.5)?; // −ε → black, +ε → white
    save_png(&x.squeeze(0)?, out.join("before.png"), 8)?;
    save_png(&x_adv.squeeze(0)?, out.join("after.png"), 8)?;
    save_png(&amplified.squeeze(0)?, out.join("perturbation.png"), 8)?;
    println!(
        "wrote before.png, after.png and perturbation.png to {}",
        out.display()
    );
    Ok(())
}
