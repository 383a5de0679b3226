//! EfficientNet-Lite0 against the reference PyTorch implementation, and the photo loader's typed
//! errors.
//!
//! `tests/data/efficientnet_lite0_reference.json` holds the PyTorch model's logits on the central
//! 224×224 crop of each sample photo; `scripts/efficientnet_reference.py` regenerates it (and the
//! converted weights). No Python is needed here.

use candle_core::{Device, Module, Tensor, Var};
use perturb::data::{load_photo, Fit};
use perturb::zoo;
use perturb::Error;

/// `data::SAMPLE_PHOTOS` with the reference top-1 class of each.
const PHOTOS: [(&str, usize); 5] = [
    ("chelsea.png", 282),         // tiger cat
    ("coffee.png", 967),          // espresso
    ("rocket.png", 657),          // missile
    ("motorcycle_left.png", 665), // moped
    ("astronaut.png", 518),       // crash helmet (not in the list: the reference's answer)
];

fn photo(name: &str) -> std::path::PathBuf {
    perturb::data::sample_photo(name)
}

fn reference() -> serde_json::Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/efficientnet_lite0_reference.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("reference file"))
        .expect("reference JSON")
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i)
        .unwrap()
}

#[test]
fn logits_equal_pytorch_on_every_sample_photo() {
    let dev = Device::Cpu;
    let model = zoo::load("efficientnet-lite0", &dev).unwrap();
    let reference = reference();
    let xs: Vec<Tensor> = PHOTOS
        .iter()
        .map(|(name, _)| load_photo(photo(name), 224, Fit::Crop, &dev).unwrap())
        .collect();
    // all five in one batch: the batched path must give each photo its own logits
    let logits = model.forward(&Tensor::stack(&xs, 0).unwrap()).unwrap();
    let logits = logits.to_vec2::<f32>().unwrap();
    for ((name, top1), ours) in PHOTOS.iter().zip(&logits) {
        let theirs: Vec<f64> = reference["photos"][name]["logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(theirs.len(), 1000);
        let worst = ours
            .iter()
            .zip(&theirs)
            .map(|(a, b)| (*a as f64 - b).abs())
            .fold(0.0, f64::max);
        assert!(worst < 1e-3, "{name}: max |logit difference| {worst}");
        assert_eq!(argmax(ours), *top1, "{name}");
        let ref_top1 = reference["photos"][name]["top5"][0].as_u64().unwrap() as usize;
        assert_eq!(ref_top1, *top1, "{name}: reference file disagrees");
    }
    // every vendored photo is checked (the order here follows the list)
    let (mut ours, mut all) = (PHOTOS.map(|p| p.0), perturb::data::SAMPLE_PHOTOS);
    ours.sort_unstable();
    all.sort_unstable();
    assert_eq!(ours, all);
    let names = zoo::imagenet_classes();
    assert_eq!(names[282], "tiger cat");
    assert_eq!(names[859], "toaster");
}

#[test]
fn input_gradient_agrees_with_finite_differences() {
    // A gradient check of the whole network (fast depthwise and pointwise kernels, stem, head)
    // at the cat, along random directions: central differences in f32 on a 1,000-class model.
    let dev = Device::Cpu;
    let model = zoo::load("efficientnet-lite0", &dev).unwrap();
    let x = load_photo(photo("chelsea.png"), 224, Fit::Crop, &dev)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let verdict = perturb::GradientCheck::new().run(&model, &x).unwrap();
    assert!(verdict.passed(), "{verdict:?}");
}

#[test]
fn fast_layers_match_stock_candle() {
    // The same weights as Vars take candle's stock path (their folded batch norms stay
    // variables: candle convolutions, depthwise layers composed of candle ops, autograd).
    let dev = Device::Cpu;
    let path = zoo::models_dir().join("efficientnet-lite0.safetensors");
    let tensors = candle_core::safetensors::load(&path, &dev).unwrap();
    let fast = zoo::Arch::EfficientNetLite0.build(&tensors, &path).unwrap();
    let vars: std::collections::HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, t)| (k.clone(), Var::from_tensor(t).unwrap().as_tensor().clone()))
        .collect();
    let stock = zoo::Arch::EfficientNetLite0.build(&vars, &path).unwrap();
    let x = load_photo(photo("coffee.png"), 224, Fit::ResizeCrop, &dev)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let x = Var::from_tensor(&x).unwrap();
    let grad = |m: &zoo::ZooModel| {
        let logits = m.forward(x.as_tensor()).unwrap();
        let g = logits.get(0).unwrap().get(967).unwrap().backward().unwrap();
        (
            logits.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            g.get(x.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
        )
    };
    let ((la, ga), (lb, gb)) = (grad(&fast), grad(&stock));
    let max_diff = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max)
    };
    assert!(max_diff(&la, &lb) < 1e-4, "logits differ");
    // End to end the two paths round differently (3e-6 on the logits), and through the network
    // a few of the millions of activations lie within that rounding of a ReLU6 kink and take
    // the other side: the gradients differ by 0.27 % (relative L2) at this photo, where finite
    // differences along their difference are themselves kinked at that scale. Stage by stage,
    // on the same inputs, they agree to 1e-5 (src/zoo/efficientnet.rs).
    let norm =
        |v: &mut dyn Iterator<Item = f32>| v.map(|a| f64::from(a).powi(2)).sum::<f64>().sqrt();
    let rel = norm(&mut ga.iter().zip(&gb).map(|(a, b)| a - b)) / norm(&mut gb.iter().copied());
    assert!(rel < 1e-2, "input gradients differ: {rel} (relative L2)");
}

#[test]
fn photos_bad_input_is_a_typed_error() {
    let dev = Device::Cpu;
    let dir = std::env::temp_dir().join(format!("perturb-photos-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // missing
    let e = load_photo(dir.join("missing.png"), 224, Fit::ResizeCrop, &dev).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e}");
    // not an image
    let junk = dir.join("junk.png");
    std::fs::write(&junk, b"not a png").unwrap();
    let e = load_photo(&junk, 224, Fit::ResizeCrop, &dev).unwrap_err();
    assert!(matches!(e, Error::Data { .. }), "{e}");
    // greyscale
    let grey = dir.join("grey.png");
    image::GrayImage::new(50, 40).save(&grey).unwrap();
    let e = load_photo(&grey, 224, Fit::ResizeCrop, &dev).unwrap_err();
    assert!(e.to_string().contains("greyscale"), "{e}");
    // 16-bit RGB
    let deep = dir.join("deep.png");
    image::ImageBuffer::<image::Rgb<u16>, Vec<u16>>::new(50, 40)
        .save(&deep)
        .unwrap();
    let e = load_photo(&deep, 224, Fit::ResizeCrop, &dev).unwrap_err();
    assert!(
        matches!(e, Error::Data { .. }) && e.to_string().contains("8-bit"),
        "{e}"
    );
    // odd sizes are resized, not rejected; too small for a plain crop is an error
    let odd = dir.join("odd.png");
    image::RgbImage::from_pixel(37, 301, image::Rgb([10, 200, 30]))
        .save(&odd)
        .unwrap();
    let x = load_photo(&odd, 224, Fit::ResizeCrop, &dev).unwrap();
    assert_eq!(x.dims(), &[3, 224, 224]);
    let px = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!((px[0] - 10.0 / 255.0).abs() < 1e-6); // a flat image stays flat
    let e = load_photo(&odd, 224, Fit::Crop, &dev).unwrap_err();
    assert!(matches!(e, Error::Data { .. }), "{e}");
    // unknown and ambiguous class names
    assert!(matches!(
        zoo::class_index("unicorn", 1000),
        Err(Error::UnknownClass { .. })
    ));
    assert!(zoo::class_index("crane", 1000)
        .unwrap_err()
        .to_string()
        .contains("134"));
    assert!(matches!(
        zoo::class_index("1000", 1000),
        Err(Error::UnknownClass { .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Untargeted PGD at ε = 2/255 changes the top-1 class of every sample photo (the issue's
/// acceptance 3), and every adversarial photo stays in its ε-ball and the pixel box.
#[test]
fn untargeted_pgd_at_two_levels_flips_every_sample_photo() {
    use perturb::{Attack, Budget, Goal, Pgd};
    let dev = Device::Cpu;
    let model = zoo::load("efficientnet-lite0", &dev).unwrap();
    let xs: Vec<Tensor> = PHOTOS
        .iter()
        .map(|(name, _)| load_photo(photo(name), 224, Fit::ResizeCrop, &dev).unwrap())
        .collect();
    let x = Tensor::stack(&xs, 0).unwrap();
    let clean: Vec<u32> = model
        .forward(&x)
        .unwrap()
        .argmax(1)
        .unwrap()
        .to_vec1()
        .unwrap();
    let eps = 2.0 / 255.0;
    let pgd = Pgd::new(Budget::linf(eps).unwrap())
        .steps(10)
        .early_stop(true)
        .seed(0);
    let adv = pgd
        .run(
            &model,
            &x,
            &Goal::untargeted(&Tensor::new(clean.as_slice(), &dev).unwrap()),
        )
        .unwrap();
    let after: Vec<u32> = model
        .forward(&adv.x_adv)
        .unwrap()
        .argmax(1)
        .unwrap()
        .to_vec1()
        .unwrap();
    for (i, (name, _)) in PHOTOS.iter().enumerate() {
        assert_ne!(after[i], clean[i], "{name} kept class {}", clean[i]);
    }
    let delta = (&adv.x_adv - &x).unwrap().abs().unwrap().max_all().unwrap();
    assert!(delta.to_scalar::<f32>().unwrap() <= eps + 1e-6);
    let (lo, hi) = (
        adv.x_adv.min_all().unwrap().to_scalar::<f32>().unwrap(),
        adv.x_adv.max_all().unwrap().to_scalar::<f32>().unwrap(),
    );
    assert!(lo >= 0.0 && hi <= 1.0);
}

/// A single image splits each GEMM over the threads (fewer samples than threads); the bits must
/// not depend on how many there are.
#[test]
fn single_image_logits_and_gradient_do_not_depend_on_thread_count() {
    let dev = Device::Cpu;
    let model = zoo::load("efficientnet-lite0", &dev).unwrap();
    let x = load_photo(photo("rocket.png"), 224, Fit::ResizeCrop, &dev)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let v = Var::from_tensor(&x).unwrap();
            let logits = model.forward(v.as_tensor()).unwrap();
            let g = logits.get(0).unwrap().get(657).unwrap().backward().unwrap();
            let g = g.get(v.as_tensor()).unwrap().flatten_all().unwrap();
            (
                logits.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                g.to_vec1::<f32>().unwrap(),
            )
        })
    };
    let (one, two) = (run(1), run(2));
    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&one.0), bits(&two.0), "logits");
    assert_eq!(bits(&one.1), bits(&two.1), "gradient");
}
