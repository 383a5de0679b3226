//! Turn a photo of a cat into a toaster: a targeted L∞ PGD against the pretrained ImageNet
//! classifier EfficientNet-Lite0, with the smallest ε from a short list that succeeds, verified
//! on the saved 8-bit PNG.
//!
//! ```sh
//! cargo run --release --example cat_to_toaster                       # chelsea.png → toaster
//! cargo run --release --example cat_to_toaster -- --image my.jpg --target "espresso"
//! ```
//! Flags (defaults): `--image assets/images/chelsea.png`, `--target toaster` (a class name or
//! index), `--eps 1,2,4,8` (in 1/255), `--steps 50`, `--out cat_to_toaster_out`; `--help` lists
//! them.
//! Writes `original.png`, `adversarial.png` (lossless; re-reading it reproduces the prediction),
//! `perturbation.png` (δ amplified to the full range: mid-grey is 0) and `before_after.png`
//! (the three side by side).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Result};
use candle_core::{DType, Device, Module, Tensor};
use clap::Parser;
use perturb::data::{load_photo, sample_photo, save_png, Fit};
use perturb::zoo::{self, class_index, imagenet_classes};
use perturb::{Attack, Budget, Goal, Pgd};

/// The five most probable classes of one image `[3, H, W]`: (class, probability).
fn top5(model: &zoo::ZooModel, x: &Tensor) -> Result<Vec<(usize, f32)>> {
    let p = candle_nn::ops::softmax(&model.forward(&x.unsqueeze(0)?)?, 1)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let mut idx: Vec<usize> = (0..p.len()).collect();
    idx.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
    Ok(idx.into_iter().take(5).map(|i| (i, p[i])).collect())
}

fn show(title: &str, top: &[(usize, f32)]) {
    println!("{title}");
    for (i, p) in top {
        println!("  {:>6.2} %  {i:>3} {}", 100.0 * p, imagenet_classes()[*i]);
    }
}

/// Round to the 8-bit grid a PNG stores. For an image on that grid and ε = m/255 the result stays
/// inside the ε-ball: |round(x + δ) − x| = |round(255 δ)| / 255 ≤ m / 255.
fn quantize(x: &Tensor) -> Result<Tensor> {
    Ok(((x * 255.0)?.round()? / 255.0)?)
}

/// Three `[3, H, W]` images side by side with an 8-pixel white gap.
fn side_by_side(images: &[&Tensor], path: &Path) -> Result<()> {
    let gap = Tensor::ones((3, images[0].dim(1)?, 8), DType::F32, images[0].device())?;
    let mut parts = Vec::new();
    for (i, im) in images.iter().enumerate() {
        if i > 0 {
            parts.push(gap.clone());
        }
        parts.push((*im).clone());
    }
    save_png(&Tensor::cat(&parts, 2)?, path, 1)?;
    Ok(())
}

/// Turn a photo into a chosen ImageNet class with targeted L∞ PGD against EfficientNet-Lite0.
#[derive(Parser)]
struct Args {
    /// The photo (PNG, JPEG, …) [default: assets/images/chelsea.png under PERTURB_HOME or the
    /// checkout]
    #[arg(long)]
    image: Option<PathBuf>,
    /// Target class: an ImageNet class name or index
    #[arg(long, default_value = "toaster")]
    target: String,
    /// Budgets to try in order, whole numbers of 1/255, comma-separated
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    eps: Vec<u32>,
    /// PGD steps
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// Output directory
    #[arg(long, default_value = "cat_to_toaster_out")]
    out: PathBuf,
}

fn main() -> Result<()> {
    perturb::tune_allocator();
    let args = Args::parse();
    let image = args.image.unwrap_or_else(|| sample_photo("chelsea.png"));
    let (target, eps_list, steps, out) = (args.target, args.eps, args.steps, args.out);
    let start = Instant::now();
    let device = Device::Cpu;
    let model = zoo::load("efficientnet-lite0", &device)?;
    let target = class_index(&target, 1000)?;
    let x = load_photo(&image, 224, Fit::ResizeCrop, &device)?;
    let before = top5(&model, &x)?;
    println!("{} (resized, central 224×224 crop)", image.display());
    show("before:", &before);
    if before[0].0 == target {
        bail!(
            "the photo is already classified as {}",
            imagenet_classes()[target]
        );
    }

    let goal = Goal::targeted(&Tensor::new(&[target as u32], &device)?);
    let batch = x.unsqueeze(0)?;
    let mut found = None;
    for &m in &eps_list {
        let eps = m as f32 / 255.0;
        let t = Instant::now();
        let pgd = Pgd::new(Budget::linf(eps)?)
            .steps(steps)
            .step_size(2.5 * eps / steps as f32)
            .seed(0); // no early stop: all steps push the toaster's probability up

        let adv = pgd.run(&model, &batch, &goal)?;
        let x_adv = quantize(&adv.x_adv.get(0)?)?;
        let now = top5(&model, &x_adv)?;
        println!(
            "eps = {m}/255: PGD-{steps} {} in {:.1} s ({} gradient evaluations); after 8-bit rounding: {} {}",
            if adv.success[0] { "reached the target" } else { "failed" },
            t.elapsed().as_secs_f64(),
            adv.gradient_evals,
            now[0].0,
            imagenet_classes()[now[0].0],
        );
        if now[0].0 == target {
            found = Some((m, x_adv, now));
            break;
        }
    }
    let Some((m, x_adv, after)) = found else {
        bail!("no eps in the list turned the photo into the target; try more --steps or a larger --eps");
    };
    show(&format!("after (eps = {m}/255):"), &after);

    std::fs::create_dir_all(&out)?;
    let delta = (&x_adv - &x)?;
    let linf = delta.abs()?.max_all()?.to_scalar::<f32>()?;
    let amplified = ((&delta * (0.5 * 255.0 / m as f64))? + 0.5)?;
    save_png(&x, out.join("original.png"), 1)?;
    save_png(&x_adv, out.join("adversarial.png"), 1)?;
    save_png(&amplified, out.join("perturbation.png"), 1)?;
    side_by_side(&[&x, &amplified, &x_adv], &out.join("before_after.png"))?;

    // The file is the proof: read it back as any user would, and classify it again.
    let reread = load_photo(out.join("adversarial.png"), 224, Fit::ResizeCrop, &device)?;
    let again = top5(&model, &reread)?;
    if again[0].0 != target {
        bail!("the saved PNG is classified {}, not the target", again[0].0);
    }
    println!(
        "re-read {}: {} {} ({:.2} %); ‖δ‖∞ = {:.2}/255; {:.1} s in all",
        out.join("adversarial.png").display(),
        again[0].0,
        imagenet_classes()[again[0].0],
        100.0 * again[0].1,
        linf * 255.0,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
