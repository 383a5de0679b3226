//! A "toaster sticker": one universal patch, trained with expectation over transformation on
//! augmented crops of the sample photos, that makes EfficientNet-Lite0 see a toaster (Brown et
//! al. 2017), measured on held-out crops beside a uniform-noise patch at the same placements.
//!
//! ```sh
//! cargo run --release --example toaster_sticker                 # 107 s of training, see below
//! cargo run --release --example toaster_sticker -- --steps 50 --area 0.1
//! ```
//! Flags (defaults): `--target toaster`, `--area 0.1` (of the 224×224 image), `--steps 300`,
//! `--batch-size 8`, `--lr 0.05` (Adam), `--crops 16` (per photo, for training and again for
//! evaluation), `--seed 0`, `--out toaster_sticker_out`; `--help` lists them.
//! Run time: 107 s of training plus the evaluation, about 2 min after the build, on the 2-core
//! development machine (AMD EPYC with AVX-512; `docs/toaster_sticker/run.log`).
//!
//! Crops: a random square of 60–100 % of the photo's shorter side at a random position, mirrored
//! half of the time, resized to 224×224. Training and held-out crops come from different seeds of
//! the same five photos (`assets/images/`), so "held-out" means new crops of known scenes, not
//! new scenes. EOT per image: the patch anywhere, scale 0.8–1.2, rotation ±20°, brightness and
//! contrast ±10 %, pixel noise ±2/255. Writes `sticker.png` (the patch, 3× enlarged),
//! `grid.png` (held-out crops, clean and patched, with predictions) and `sticker.json`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use clap::Parser;
use image::{imageops, RgbImage};
use perturb::attack::{apply_patch, PatchOptimizer, PatchTrainer, Transforms};
use perturb::data::{sample_photo, SAMPLE_PHOTOS};
use perturb::export::{image_grid, GridRow};
use perturb::zoo::{self, class_index, imagenet_classes};
use rand::{rngs::StdRng, Rng, SeedableRng};

/// `per_photo` random crops of every photo, `[N, 3, 224, 224]` in [0, 1].
fn crops(photos: &[RgbImage], per_photo: usize, seed: u64, dev: &Device) -> Result<Tensor> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    for img in photos {
        let (w, h) = img.dimensions();
        for _ in 0..per_photo {
            let side = (w.min(h) as f32 * rng.random_range(0.6f32..=1.0)) as u32;
            let (x0, y0) = (
                rng.random_range(0..=w - side),
                rng.random_range(0..=h - side),
            );
            let mut crop = imageops::crop_imm(img, x0, y0, side, side).to_image();
            if rng.random::<bool>() {
                crop = imageops::flip_horizontal(&crop);
            }
            let crop = imageops::resize(&crop, 224, 224, imageops::FilterType::CatmullRom);
            let t = Tensor::from_vec(crop.into_raw(), (224, 224, 3), dev)?
                .permute((2, 0, 1))?
                .to_dtype(candle_core::DType::F32)?;
            out.push((t / 255.0)?);
        }
    }
    Ok(Tensor::stack(&out, 0)?)
}

/// Train a universal "toaster sticker" patch against EfficientNet-Lite0 on crops of the sample
/// photos and measure it on held-out crops.
#[derive(Parser)]
struct Args {
    /// Target class: an ImageNet class name or index
    #[arg(long, default_value = "toaster")]
    target: String,
    /// Patch area as a fraction of the 224×224 image
    #[arg(long, default_value_t = 0.1)]
    area: f32,
    /// Training steps
    #[arg(long, default_value_t = 300)]
    steps: usize,
    /// Crops per training step
    #[arg(long = "batch-size", default_value_t = 8)]
    batch: usize,
    /// Adam learning rate
    #[arg(long, default_value_t = 0.05)]
    lr: f32,
    /// Random crops per photo, for training and again for evaluation
    #[arg(long = "crops", default_value_t = 16)]
    per_photo: usize,
    /// Seed of crops, placements and training
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output directory
    #[arg(long, default_value = "toaster_sticker_out")]
    out: PathBuf,
}

fn main() -> Result<()> {
    perturb::tune_allocator();
    let Args {
        target,
        area,
        steps,
        batch,
        lr,
        per_photo,
        seed,
        out,
    } = Args::parse();
    let dev = Device::Cpu;
    let model = zoo::load("efficientnet-lite0", &dev)?;
    let target = class_index(&target, 1000)? as u32;
    let photos = SAMPLE_PHOTOS
        .iter()
        .map(|p| {
            image::open(sample_photo(p))
                .map(|i| i.to_rgb8())
                .with_context(|| format!("reading {p}"))
        })
        .collect::<Result<Vec<_>>>()?;
    let train = crops(&photos, per_photo, seed + 100, &dev)?;
    let held_out = crops(&photos, per_photo, seed + 200, &dev)?;
    // Labels of the held-out crops: the model's own answers (crops have no ground truth).
    let labels = Tensor::new(
        perturb::eval::predict(&model, &held_out, 16)?.as_slice(),
        &dev,
    )?;

    let attack = PatchTrainer::new(target, area)
        .steps(steps)
        .batch_size(batch)
        .optimizer(PatchOptimizer::Adam { lr })
        .transforms(Transforms {
            scale: (0.8, 1.2),
            rotation_deg: 20.0,
            brightness: 0.1,
            contrast: 0.1,
            noise: 2.0 / 255.0,
        })
        .seed(seed);
    let start = Instant::now();
    let trained = attack.train(&model, &train)?;
    let seconds = start.elapsed().as_secs_f64();
    let e = attack.evaluate(&model, &trained.patch, &held_out, &labels, seed + 1)?;
    let name = imagenet_classes()[target as usize];
    println!(
        "{name} sticker, {:.0} % of the image ({} px square), {steps} steps of {batch} crops in {seconds:.0} s: \
         {:.1} % of {} held-out crops become {name}; a noise patch at the same places: {:.1} %",
        100.0 * area,
        trained.patch.side(),
        100.0 * e.success_rate,
        e.images,
        100.0 * e.noise_success_rate
    );

    std::fs::create_dir_all(&out)?;
    trained.patch.save_png(out.join("sticker.png"), 3)?;
    trained.patch.save(out.join("sticker.safetensors"))?;
    // Grid: one held-out crop of each photo, patched at a random place.
    let mut rng = StdRng::seed_from_u64(seed + 3);
    let picks: Vec<u32> = (0..SAMPLE_PHOTOS.len())
        .map(|i| (i * per_photo) as u32)
        .collect();
    let x = held_out.index_select(&Tensor::new(picks.as_slice(), &dev)?, 0)?;
    let places: Vec<_> = (0..picks.len())
        .map(|_| {
            perturb::attack::random_placement(
                &mut rng,
                trained.patch.side(),
                (224, 224),
                perturb::attack::Region::Anywhere,
                Transforms::default(),
            )
        })
        .collect::<perturb::Result<_>>()?;
    let patched = apply_patch(&trained.patch, &x, &places)?;
    let clean = perturb::eval::predict(&model, &x, 8)?;
    let adv = perturb::eval::predict(&model, &patched, 8)?;
    let rows: Vec<GridRow> = (0..picks.len())
        .map(|i| GridRow {
            index: i,
            label: clean[i],
            clean: clean[i],
            adversarial: adv[i],
        })
        .collect();
    image_grid(&x, &patched, &rows, &out.join("grid.png"))?;
    let json = serde_json::json!({
        "model": "efficientnet-lite0",
        "target": target,
        "target_name": name,
        "area": area,
        "side": trained.patch.side(),
        "steps": steps,
        "batch_size": batch,
        "lr": lr,
        "seed": seed,
        "train_crops": train.dim(0)?,
        "evaluation": e,
        "train_seconds": seconds,
        "final_loss": trained.losses.last(),
    });
    std::fs::write(
        out.join("sticker.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    println!("wrote {}", out.display());
    Ok(())
}
