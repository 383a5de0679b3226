//! Shipped models: their cards' figures hold, tampered files are refused, training reproduces.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::Device;
use perturb::data::Mnist;
use perturb::eval::{count_correct, count_robust};
use perturb::train::{train, Objective, TrainConfig};
use perturb::zoo::{self, Arch, SHIPPED};
use perturb::{Budget, Error, Fgsm, Pgd};

fn mnist() -> Mnist {
    Mnist::load_default(&Device::Cpu).expect("vendored MNIST")
}

/// The `| key | value |` rows of a model card.
fn card(name: &str) -> HashMap<String, String> {
    zoo::card(name).expect("model card")
}

/// `"9243 / 10000"` → 9243.
fn count(card: &HashMap<String, String>, key: &str) -> usize {
    let v = card.get(key).unwrap_or_else(|| panic!("card lacks {key}"));
    zoo::parse_count(v).expect("a count").0
}

fn number(card: &HashMap<String, String>, key: &str) -> f32 {
    card.get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("card lacks {key}"))
}

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("perturb-models-{}-{name}", std::process::id()))
}

mod cards {
    use super::*;

    /// Clean accuracy on the full test set, exact to the sample.
    #[test]
    fn clean_accuracy_matches_every_card() -> perturb::Result<()> {
        let data = mnist();
        for s in SHIPPED.iter().filter(|s| s.arch.is_mnist()) {
            let model = zoo::load(s.name, &Device::Cpu)?;
            let correct = count_correct(&model, &data.test_images, &data.test_labels, 500)?;
            assert_eq!(
                correct,
                count(&card(s.name), "clean_test_correct"),
                "{}",
                s.name
            );
        }
        Ok(())
    }

    /// Robust accuracy under the card's PGD on the first 1,000 test digits, within ±2 points.
    #[test]
    fn robust_accuracy_matches_every_card() -> perturb::Result<()> {
        let data = mnist();
        let (x, y) = (
            data.test_images.narrow(0, 0, 1000)?,
            data.test_labels.narrow(0, 0, 1000)?,
        );
        for s in SHIPPED.iter().filter(|s| s.arch.is_mnist()) {
            let c = card(s.name);
            let model = zoo::load(s.name, &Device::Cpu)?;
            let pgd = Pgd::new(Budget::linf(number(&c, "robust_eps"))?)
                .steps(number(&c, "robust_steps") as usize)
                .step_size(number(&c, "robust_step_size"))
                .early_stop(true)
                .seed(0);
            let robust = count_robust(&model, &pgd, &x, &y, 250)?;
            let want = count(&c, "robust_first_1000_correct");
            assert!(
                robust.abs_diff(want) <= 20,
                "{}: {robust} vs card {want}",
                s.name
            );
        }
        Ok(())
    }

    /// Goodfellow et al. (2015): FGSM at ε = 0.25 gives softmax regression on MNIST a 99.9 %
    /// error rate.
    #[test]
    fn fgsm_fools_softmax_regression_as_published() -> perturb::Result<()> {
        let data = mnist();
        let (x, y) = (
            data.test_images.narrow(0, 0, 1000)?,
            data.test_labels.narrow(0, 0, 1000)?,
        );
        let model = zoo::load("mnist-linear", &Device::Cpu)?;
        let robust = count_robust(&model, &Fgsm::new(Budget::linf(0.25)?), &x, &y, 500)?;
        assert!(robust <= 1, "{robust} of 1000 survived");
        Ok(())
    }
}

/// The finite-difference self-check passes on every shipped architecture with its real weights.
#[test]
fn every_shipped_model_passes_the_gradient_check() -> perturb::Result<()> {
    let data = mnist();
    // (EfficientNet-Lite0's check runs on a photo in tests/integration/imagenet.rs)
    for s in SHIPPED.iter().filter(|s| s.arch.is_mnist()) {
        let model = zoo::load(s.name, &Device::Cpu)?;
        for start in (0..2000).step_by(100) {
            let x = data.test_images.narrow(0, start, 4)?;
            let verdict = perturb::GradientCheck::new()
                .seed(start as u64)
                .run(&model, &x)?;
            assert!(verdict.passed(), "{} at {start}: {verdict:?}", s.name);
        }
    }
    Ok(())
}

/// The check the attacks run before they start (default settings, on the first two digits of
/// each batch) passes on every batch of 250 of the MNIST test set for every shipped model. With
/// a single draw it raised a false alarm on digits 5250–5251 of the adversarially trained CNN
/// (autograd equal to stock candle's; at least three of eight finite-difference directions
/// off), which stopped that model's full-test-set evaluation.
#[test]
fn the_attacks_gradient_check_passes_on_every_test_batch() -> perturb::Result<()> {
    let data = mnist();
    for s in SHIPPED.iter().filter(|s| s.arch.is_mnist()) {
        let model = zoo::load(s.name, &Device::Cpu)?;
        for start in (0..10_000).step_by(250) {
            let probe = data.test_images.narrow(0, start, 2)?;
            let verdict = perturb::GradientCheck::new().run(&model, &probe)?;
            assert!(verdict.passed(), "{} at {start}: {verdict:?}", s.name);
        }
    }
    Ok(())
}

mod provenance {
    use super::*;

    /// Every shipped file is pinned, and its tensor names are the PyTorch ones of its
    /// architecture.
    #[test]
    fn every_model_is_pinned_with_pytorch_names() -> perturb::Result<()> {
        for s in SHIPPED {
            assert!(
                zoo::pinned_sha256(s.file).is_some(),
                "{} not in SHA256SUMS",
                s.file
            );
            let path = zoo::models_dir().join(s.file);
            let tensors = candle_core::safetensors::load(&path, &Device::Cpu)?;
            let mut names: Vec<&String> = tensors.keys().collect();
            names.sort();
            let mut want: Vec<String> = s.arch.params().into_iter().map(|p| p.name).collect();
            want.sort();
            assert_eq!(names, want.iter().collect::<Vec<_>>(), "{}", s.name);
        }
        Ok(())
    }

    /// One changed byte makes loading fail with the checksum error naming both hashes.
    #[test]
    fn a_tampered_copy_is_refused() -> perturb::Result<()> {
        let s = zoo::shipped("mnist-linear")?;
        let mut bytes = std::fs::read(zoo::models_dir().join(s.file)).expect("weights");
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        let path = temp_path("tampered.safetensors");
        std::fs::write(&path, &bytes).expect("write copy");
        let expected = zoo::pinned_sha256(s.file).expect("pinned");
        let result = zoo::load_file(s.arch, &path, Some(expected), &Device::Cpu);
        let _ = std::fs::remove_file(&path);
        match result {
            Err(Error::Checksum {
                file,
                expected: e,
                got,
            }) => {
                assert_eq!(file, path);
                assert_eq!(e, expected);
                assert_eq!(got, zoo::sha256_hex(&bytes));
                assert_ne!(got, e);
            }
            other => panic!("expected a checksum error, got {other:?}"),
        }
        Ok(())
    }

    /// Without a hash, malformed files and files of another architecture are typed errors.
    #[test]
    fn malformed_or_mismatched_weights_are_typed_errors() {
        let s = zoo::shipped("mnist-linear").expect("shipped");
        let bytes = std::fs::read(zoo::models_dir().join(s.file)).expect("weights");
        let path = temp_path("truncated.safetensors");
        std::fs::write(&path, &bytes[..bytes.len() / 2]).expect("write");
        let truncated = zoo::load_file(Arch::MnistLinear, &path, None, &Device::Cpu);
        let _ = std::fs::remove_file(&path);
        assert!(
            matches!(truncated, Err(Error::Weights { .. })),
            "{truncated:?}"
        );
        let wrong_arch = zoo::load_file(
            Arch::SmallCnn,
            &zoo::models_dir().join(s.file),
            None,
            &Device::Cpu,
        );
        assert!(
            matches!(wrong_arch, Err(Error::Weights { .. })),
            "{wrong_arch:?}"
        );
        let missing = zoo::load_file(Arch::SmallCnn, &temp_path("absent"), None, &Device::Cpu);
        assert!(matches!(missing, Err(Error::Io { .. })));
        assert!(matches!(
            zoo::load("mnist-xl", &Device::Cpu),
            Err(Error::UnknownModel { .. })
        ));
    }
}

/// The masked model's former name fails by both lookups with its new name and the reason, and
/// the new name loads the same weights the old one did.
#[test]
fn the_former_robust_name_points_to_the_masking_exhibit() {
    for got in [
        zoo::load("mnist-cnn-robust", &Device::Cpu).map(|_| ()),
        zoo::resolve("mnist-cnn-robust", None, None, &Device::Cpu).map(|_| ()),
    ] {
        let Err(e @ Error::RenamedModel { now, .. }) = got else {
            panic!("{got:?}");
        };
        assert_eq!(now, "mnist-cnn-fgsm-rs");
        assert!(e.to_string().contains("gradient"), "{e}");
    }
    let model = zoo::load("mnist-cnn-fgsm-rs", &Device::Cpu).unwrap();
    assert_eq!(
        model.sha256(),
        Some("2f65ebc9b833b8e2ae92eb30356aa2c7c4fb4128ee6aa0e8071692559e2ab2bb")
    );
}

/// Same data, configuration and seed: bit-identical weights.
#[test]
fn training_is_reproducible() -> perturb::Result<()> {
    let data = mnist();
    let (x, y) = (
        data.train_images.narrow(0, 0, 10_000)?,
        data.train_labels.narrow(0, 0, 10_000)?,
    );
    let cfg = TrainConfig {
        epochs: 1,
        seed: 3,
        ..Default::default()
    };
    let run = || {
        train(
            Arch::MnistLinear,
            &x,
            &y,
            &cfg,
            None,
            Objective::Clean,
            |_, _| (),
        )
    };
    let (a, b) = (run()?, run()?);
    for (name, t) in &a {
        let (p, q): (Vec<f32>, Vec<f32>) = (
            t.flatten_all()?.to_vec1()?,
            b[name].flatten_all()?.to_vec1()?,
        );
        assert!(
            p.iter().zip(&q).all(|(u, v)| u.to_bits() == v.to_bits()),
            "{name}"
        );
    }
    // And training did something: better than chance on held-out digits.
    let model = Arch::MnistLinear.build(&a, std::path::Path::new("<memory>"))?;
    let correct = count_correct(
        &model,
        &data.test_images.narrow(0, 0, 1000)?,
        &data.test_labels.narrow(0, 0, 1000)?,
        500,
    )?;
    assert!(correct > 800, "{correct}");
    Ok(())
}

/// The card command of a TRADES model, cut to one short epoch (SmallCNN, 384 digits, ε warmed
/// up, 2 inner steps): bit-identical weights on a second run and on one thread instead of the
/// pool's, and different weights from another seed.
#[test]
fn trades_training_is_reproducible_on_any_thread_count() -> perturb::Result<()> {
    let data = mnist();
    let (x, y) = (
        data.train_images.narrow(0, 0, 384)?,
        data.train_labels.narrow(0, 0, 384)?,
    );
    let trades = perturb::train::Trades::new(0.3, 0.075, 2, 6.0)?;
    let run = |seed: u64| {
        let cfg = TrainConfig {
            epochs: 1,
            seed,
            eps_warmup_epochs: 1,
            ..Default::default()
        };
        train(
            Arch::SmallCnn,
            &x,
            &y,
            &cfg,
            None,
            Objective::Trades(trades),
            |_, _| (),
        )
    };
    let one_thread = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("pool");
    let (a, b, c) = (run(9)?, one_thread.install(|| run(9))?, run(10)?);
    let bits = |t: &candle_core::Tensor| -> perturb::Result<Vec<u32>> {
        Ok(t.flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .map(|v| v.to_bits())
            .collect())
    };
    assert_eq!(a.len(), 14);
    for (name, t) in &a {
        assert_eq!(bits(t)?, bits(&b[name])?, "{name}");
    }
    assert_ne!(
        bits(&a["features.0.weight"])?,
        bits(&c["features.0.weight"])?
    );
    Ok(())
}

/// Adversarial training (FGSM with random start, fresh seed per batch) is reproducible too, and
/// differs from standard training.
#[test]
fn adversarial_training_is_reproducible() -> perturb::Result<()> {
    let data = mnist();
    let (x, y) = (
        data.train_images.narrow(0, 0, 2_000)?,
        data.train_labels.narrow(0, 0, 2_000)?,
    );
    let cfg = TrainConfig {
        epochs: 1,
        seed: 5,
        ..Default::default()
    };
    let pgd = Pgd::new(Budget::linf(0.1)?)
        .steps(1)
        .step_size(0.125)
        .check_gradient(false);
    let make = |seed: u64, _: f32| -> perturb::Result<Box<dyn perturb::Attack>> {
        Ok(Box::new(pgd.clone().seed(seed)))
    };
    let run = |adv: bool| {
        let objective = if adv {
            Objective::Adversarial(&make)
        } else {
            Objective::Clean
        };
        train(Arch::MnistLinear, &x, &y, &cfg, None, objective, |_, _| ())
    };
    let (a, b, plain) = (run(true)?, run(true)?, run(false)?);
    let bits = |t: &candle_core::Tensor| -> perturb::Result<Vec<u32>> {
        Ok(t.flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .map(|v| v.to_bits())
            .collect())
    };
    for (name, t) in &a {
        assert_eq!(bits(t)?, bits(&b[name])?, "{name}");
    }
    assert_ne!(bits(&a["fc.weight"])?, bits(&plain["fc.weight"])?);
    Ok(())
}

/// An input of the wrong size (MNIST re-encoded at 32×32) is refused with the expected and the
/// actual shape, said once, by the model itself and by an attack on it; a right-sized batch
/// passes the same check.
#[test]
fn a_wrong_input_shape_names_both_shapes_once() -> perturb::Result<()> {
    use candle_core::{DType, Module, Tensor};
    use perturb::Attack;
    let dev = Device::Cpu;
    for name in ["mnist-linear", "mnist-cnn"] {
        let model = zoo::load(name, &dev)?;
        let x = Tensor::full(0.5f32, (2, 1, 32, 32), &dev)?;
        let y = Tensor::new(&[3u32, 5], &dev)?;
        assert!(matches!(
            model.check_input(&x),
            Err(Error::ShapeMismatch { what: "input", ref got, .. }) if got == &[2, 1, 32, 32]
        ));
        let direct = model.forward(&x).unwrap_err().to_string();
        let attacked = Pgd::new(Budget::linf(0.1)?)
            .steps(2)
            .run(&model, &x, &perturb::Goal::untargeted(&y))
            .unwrap_err()
            .to_string();
        for text in [direct, attacked] {
            assert_eq!(
                text.matches("expected shape [N, 1, 28, 28]").count(),
                1,
                "{text}"
            );
            assert_eq!(text.matches("got [2, 1, 32, 32]").count(), 1, "{text}");
            assert!(text.len() < 160, "one short line: {text}");
        }
        let ok = Tensor::zeros((2, 1, 28, 28), DType::F32, &dev)?;
        model.check_input(&ok)?;
    }
    Ok(())
}
