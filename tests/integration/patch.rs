//! Adversarial patches: exact pasting, gradients that reach only the patch, a closed-form
//! optimum, exact rotations, determinism and typed errors.

use crate::common;

use candle_core::{DType, Device, Tensor, Var};
use perturb::attack::{
    apply_patch, Patch, PatchApplication, PatchOptimizer, PatchShape, PatchTrainer, Placement,
    Region, Transforms,
};
use perturb::{Attack, Error, Goal};
use rand::{rngs::StdRng, SeedableRng};

fn dev() -> Device {
    Device::Cpu
}

fn random_images(seed: u64, n: usize, c: usize, h: usize, w: usize) -> Tensor {
    let mut rng = StdRng::seed_from_u64(seed);
    Tensor::from_vec(
        common::pixels(&mut rng, n * c * h * w),
        (n, c, h, w),
        &dev(),
    )
    .unwrap()
}

fn random_patch(seed: u64, c: usize, s: usize, shape: PatchShape) -> Patch {
    let mut rng = StdRng::seed_from_u64(seed);
    let t = Tensor::from_vec(common::pixels(&mut rng, c * s * s), (c, s, s), &dev()).unwrap();
    Patch::new(t, shape).unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

mod pasting {
    use super::*;

    #[test]
    fn exact_where_the_mask_is_one_and_a_no_op_where_it_is_zero() {
        for (shape, s, top, left) in [
            (PatchShape::Square, 5, 2, 7),
            (PatchShape::Circle, 6, 0, 0),
            (PatchShape::Circle, 7, 5, 3),
            (PatchShape::Square, 12, 0, 0),
        ] {
            let (c, h, w) = (3, 12, 14);
            let images = random_images(1, 2, c, h, w);
            let patch = random_patch(2, c, s, shape);
            let placements = [
                Placement::at(top, left, (s, s)),
                Placement::at(0, w - s, (s, s)),
            ];
            let out = apply_patch(&patch, &images, &placements).unwrap();
            let (x, y, p) = (values(&images), values(&out), values(patch.pixels()));
            let mask = patch.mask();
            for (b, pl) in placements.iter().enumerate() {
                let (t, l) = (
                    (pl.cy - s as f32 / 2.0) as usize,
                    (pl.cx - s as f32 / 2.0) as usize,
                );
                for ch in 0..c {
                    for i in 0..h {
                        for j in 0..w {
                            let at = ((b * c + ch) * h + i) * w + j;
                            let inside = (t..t + s).contains(&i) && (l..l + s).contains(&j);
                            let q = if inside { (i - t) * s + (j - l) } else { 0 };
                            if inside && mask[q] == 1.0 {
                                assert_eq!(y[at], p[ch * s * s + q], "{shape:?} b{b} ({i},{j})");
                            } else {
                                assert_eq!(y[at], x[at], "{shape:?} b{b} ({i},{j})");
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_quarter_turn_rotates_the_pixel_grid() {
        let s = 4;
        let patch = random_patch(3, 1, s, PatchShape::Square);
        let images = Tensor::zeros((1, 1, 8, 8), DType::F32, &dev()).unwrap();
        let p = values(patch.pixels());
        let turned = Placement {
            angle: std::f32::consts::FRAC_PI_2,
            ..Placement::at(2, 3, (s, s))
        };
        let out = values(&apply_patch(&patch, &images, &[turned]).unwrap());
        for i in 0..s {
            for j in 0..s {
                // counter-clockwise on screen (rows grow downwards): image (i, j) shows patch
                // pixel (j, s-1-i) or (s-1-j, i), depending on the convention; find which one
                let got = out[(2 + i) * 8 + 3 + j];
                let a = p[j * s + (s - 1 - i)];
                let b = p[(s - 1 - j) * s + i];
                assert!(
                    (got - a).abs() < 1e-5 || (got - b).abs() < 1e-5,
                    "({i},{j})"
                );
            }
        }
        // and a consistent convention over the whole patch
        let conv_a = (0..s * s).all(|q| {
            let (i, j) = (q / s, q % s);
            (out[(2 + i) * 8 + 3 + j] - p[j * s + (s - 1 - i)]).abs() < 1e-5
        });
        let conv_b = (0..s * s).all(|q| {
            let (i, j) = (q / s, q % s);
            (out[(2 + i) * 8 + 3 + j] - p[(s - 1 - j) * s + i]).abs() < 1e-5
        });
        assert!(conv_a ^ conv_b);
    }

    #[test]
    fn gradients_reach_only_the_patch() {
        // d(out)/d(image) is 0 under the patch and 1 elsewhere; d(out)/d(patch) is not 0.
        let images = Var::from_tensor(&random_images(4, 2, 1, 10, 10)).unwrap();
        let patch = random_patch(5, 1, 4, PatchShape::Circle);
        let pv = Var::from_tensor(patch.pixels()).unwrap();
        let placements = [Placement::at(3, 3, (4, 4)), Placement::at(6, 0, (4, 4))];
        let p2 = Patch::new(pv.as_tensor().clone(), PatchShape::Circle).unwrap();
        let out = apply_patch(&p2, images.as_tensor(), &placements).unwrap();
        let grads = out.sum_all().unwrap().backward().unwrap();
        let gi = values(grads.get(images.as_tensor()).unwrap());
        let gp = values(grads.get(pv.as_tensor()).unwrap());
        let ones = apply_patch(
            &Patch::new(
                Tensor::ones((1, 4, 4), DType::F32, &dev()).unwrap(),
                PatchShape::Circle,
            )
            .unwrap(),
            &Tensor::zeros((2, 1, 10, 10), DType::F32, &dev()).unwrap(),
            &placements,
        )
        .unwrap();
        for (g, m) in gi.iter().zip(values(&ones)) {
            assert_eq!(*g, 1.0 - m);
        }
        // each patch pixel inside the circle lands once per image: gradient 2; outside: 0
        for (g, m) in gp.iter().zip(patch.mask()) {
            assert_eq!(*g, 2.0 * m);
        }
    }
}

mod training {
    use super::*;

    /// Logits `[k, Σ pixels]`: the target class 1 wins when the image is bright enough.
    fn brightness_model(k: f32) -> impl Fn(&Tensor) -> candle_core::Result<Tensor> {
        move |x: &Tensor| {
            let s = x.flatten_from(1)?.sum_keepdim(1)?;
            let c = (s.zeros_like()? + f64::from(k))?;
            Tensor::cat(&[&c, &s], 1)
        }
    }

    #[test]
    fn reaches_the_closed_form_optimum() {
        // The loss falls monotonically in every patch pixel, so the optimum is all ones.
        let images = random_images(6, 16, 1, 8, 8).affine(0.3, 0.0).unwrap();
        let model = brightness_model(20.0);
        for optimizer in [
            PatchOptimizer::Adam { lr: 0.1 },
            PatchOptimizer::Sign { lr: 0.05 },
        ] {
            let trained = PatchTrainer::new(1, 0.25)
                .steps(40)
                .batch_size(8)
                .optimizer(optimizer)
                .transforms(Transforms {
                    rotation_deg: 20.0,
                    ..Transforms::default()
                })
                .train(&model, &images)
                .unwrap();
            let p = values(trained.patch.pixels());
            assert!(p.iter().all(|v| *v >= 0.99), "{optimizer:?}: {p:?}");
            assert!(trained.losses.last() < trained.losses.first());
            let eval = PatchTrainer::new(1, 0.25)
                .evaluate(
                    &model,
                    &trained.patch,
                    &images,
                    &Tensor::zeros(16, DType::U32, &dev()).unwrap(),
                    1,
                )
                .unwrap();
            assert_eq!(eval.images, 16);
            assert!(eval.success_rate >= eval.noise_success_rate);
        }
    }

    #[test]
    fn the_model_and_the_images_are_left_unchanged() {
        let model = perturb::zoo::load("mnist-linear", &dev()).unwrap();
        let (images, _) = perturb::data::Mnist::load_test_default(&dev()).unwrap();
        let x = images.narrow(0, 0, 32).unwrap();
        let before_x = values(&x);
        let probe = images.narrow(0, 100, 4).unwrap();
        let before = values(&candle_core::Module::forward(&model, &probe).unwrap());
        PatchTrainer::new(3, 0.1)
            .steps(5)
            .batch_size(8)
            .train(&model, &x)
            .unwrap();
        assert_eq!(values(&x), before_x);
        assert_eq!(
            values(&candle_core::Module::forward(&model, &probe).unwrap()),
            before
        );
    }

    #[test]
    fn same_seed_same_bits() {
        let model = perturb::zoo::load("mnist-linear", &dev()).unwrap();
        let (images, _) = perturb::data::Mnist::load_test_default(&dev()).unwrap();
        let x = images.narrow(0, 0, 64).unwrap();
        let attack = PatchTrainer::new(0, 0.1)
            .steps(6)
            .batch_size(16)
            .tv_weight(0.1)
            .transforms(Transforms {
                scale: (0.8, 1.1),
                rotation_deg: 20.0,
                brightness: 0.1,
                contrast: 0.1,
                noise: 0.05,
            });
        let a = attack.clone().seed(9).train(&model, &x).unwrap();
        let b = attack.clone().seed(9).train(&model, &x).unwrap();
        let c = attack.seed(10).train(&model, &x).unwrap();
        assert_eq!(values(a.patch.pixels()), values(b.patch.pixels()));
        assert_eq!(a.losses, b.losses);
        assert_ne!(values(a.patch.pixels()), values(c.patch.pixels()));
    }
}

mod files {
    use super::*;

    #[test]
    fn png_and_safetensors_round_trip() {
        let dir = std::env::temp_dir().join(format!("perturb-patch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // PNG stores 8 bits: a patch of multiples of 1/255 survives exactly
        let v: Vec<f32> = (0..3 * 5 * 5)
            .map(|i| ((i * 37) % 256) as f32 / 255.0)
            .collect();
        let patch = Patch::new(
            Tensor::from_vec(v, (3, 5, 5), &dev()).unwrap(),
            PatchShape::Circle,
        )
        .unwrap();
        let png = dir.join("patch.png");
        patch.save_png(&png, 1).unwrap();
        let back = Patch::load_png(&png, 3, PatchShape::Circle, &dev()).unwrap();
        let bytes = |t: &Tensor| -> Vec<u8> {
            values(t)
                .iter()
                .map(|v| (v * 255.0).round() as u8)
                .collect()
        };
        assert_eq!(bytes(back.pixels()), bytes(patch.pixels()));
        let st = dir.join("patch.safetensors");
        patch.save(&st).unwrap();
        let back = Patch::load(&st, &dev()).unwrap();
        assert_eq!(values(back.pixels()), values(patch.pixels()));
        assert_eq!(back.shape(), PatchShape::Circle);
    }
}

mod errors {
    use super::*;

    #[test]
    fn bad_input_is_a_typed_error() {
        let images = random_images(7, 2, 1, 6, 6);
        let big = random_patch(8, 1, 7, PatchShape::Square);
        let at = [Placement::at(0, 0, (7, 7)); 2];
        assert!(matches!(
            apply_patch(&big, &images, &at),
            Err(Error::InvalidParameter { name: "patch", .. })
        ));
        let rgb = random_patch(8, 3, 3, PatchShape::Square);
        let at = [Placement::at(0, 0, (3, 3)); 2];
        assert!(matches!(
            apply_patch(&rgb, &images, &at),
            Err(Error::ShapeMismatch { what: "patch", .. })
        ));
        let model = |x: &Tensor| x.flatten_from(1)?.narrow(1, 0, 3);
        for area in [0.0, -0.1, 1.5, f32::NAN] {
            assert!(matches!(
                PatchTrainer::new(1, area).train(&model, &images),
                Err(Error::InvalidParameter { name: "area", .. })
            ));
        }
        let empty = Tensor::zeros((0, 1, 6, 6), DType::F32, &dev()).unwrap();
        assert!(matches!(
            PatchTrainer::new(1, 0.1).train(&model, &empty),
            Err(Error::ShapeMismatch { .. })
        ));
        assert!(matches!(
            PatchTrainer::new(7, 0.1).steps(1).train(&model, &images),
            Err(Error::LabelOutOfRange { .. })
        ));
        assert!(Patch::new(
            Tensor::full(1.5f32, (1, 2, 2), &dev()).unwrap(),
            PatchShape::Square
        )
        .is_err());
        assert!(Patch::new(
            Tensor::zeros((1, 2, 3), DType::F32, &dev()).unwrap(),
            PatchShape::Square
        )
        .is_err());
    }

    #[test]
    fn a_saved_patch_is_an_attack_inside_the_box() {
        let patch = random_patch(9, 1, 3, PatchShape::Square);
        let attack = PatchApplication::new(patch, Region::Anywhere).transforms(Transforms {
            noise: 0.1,
            ..Transforms::default()
        });
        let model = |x: &Tensor| x.flatten_from(1)?.narrow(1, 0, 3);
        let x = random_images(10, 4, 1, 6, 6);
        let y = Tensor::new(&[0u32, 1, 2, 0], &dev()).unwrap();
        let adv = attack.run(&model, &x, &Goal::untargeted(&y)).unwrap();
        let v = values(&adv.x_adv);
        assert!(v.iter().all(|p| (0.0..=1.0).contains(p)));
        assert_eq!(adv.norms.len(), 4);
        assert!(adv.norms.iter().all(|n| *n <= 1.0));
    }
}

mod on_mnist {
    //! Smaller versions of `examples/patch.rs` on the shipped CNN, with bounds stated from the
    //! full runs (README, "Adversarial patches").
    use super::*;
    use perturb::data::Mnist;

    fn data() -> (perturb::zoo::ZooModel, Mnist) {
        let model = perturb::zoo::load("mnist-cnn", &dev()).unwrap();
        (model, Mnist::load_default(&dev()).unwrap())
    }

    #[test]
    fn centre_sticker_turns_held_out_digits_into_zeros() {
        let (model, mnist) = data();
        let side = 12;
        let top = (28 - side) / 2;
        let attack = PatchTrainer::new(0, (side * side) as f32 / 784.0)
            .region(Region::Fixed { top, left: top })
            .optimizer(PatchOptimizer::Adam { lr: 0.1 })
            .steps(300)
            .batch_size(64);
        let train = mnist.train_images.narrow(0, 0, 20_000).unwrap();
        let trained = attack.train(&model, &train).unwrap();
        assert_eq!(trained.patch.side(), side);
        let (x, y) = (
            mnist.test_images.narrow(0, 0, 1000).unwrap(),
            mnist.test_labels.narrow(0, 0, 1000).unwrap(),
        );
        let e = attack.evaluate(&model, &trained.patch, &x, &y, 1).unwrap();
        println!("sticker: {e:?}");
        assert!(e.images > 850);
        assert!(e.success_rate >= 0.95, "{e:?}");
        assert!(e.noise_success_rate <= 0.05, "{e:?}");
    }

    #[test]
    fn a_patch_anywhere_beats_noise() {
        let (model, mnist) = data();
        let attack = PatchTrainer::new(8, 0.216)
            .steps(150)
            .batch_size(64)
            .transforms(Transforms {
                rotation_deg: 20.0,
                ..Transforms::default()
            });
        let train = mnist.train_images.narrow(0, 0, 20_000).unwrap();
        let trained = attack.train(&model, &train).unwrap();
        let (x, y) = (
            mnist.test_images.narrow(0, 0, 1000).unwrap(),
            mnist.test_labels.narrow(0, 0, 1000).unwrap(),
        );
        let e = attack.evaluate(&model, &trained.patch, &x, &y, 1).unwrap();
        println!("anywhere: {e:?}");
        // 150 steps of batch 64 reached 39.4 % (noise 14.2 %); the full run's 1,000 steps of
        // batch 128 are in README. The bound leaves room for other seeds and machines.
        assert!(e.success_rate >= 0.25, "{e:?}");
        assert!(e.success_rate >= e.noise_success_rate + 0.1, "{e:?}");
    }
}
