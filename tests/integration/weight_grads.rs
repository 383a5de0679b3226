//! The trainable layers (`Conv2d::trainable`, `Linear::trainable`, `Arch::build_trainable`):
//! input, weight and bias gradients equal candle's autograd to 1e-5 on random layers and on
//! the whole SmallCNN, and do not depend on the thread count.

use crate::common::{self, max_abs};

use std::collections::HashMap;

use candle_core::{backprop::GradStore, Device, Module, Tensor, Var};
use candle_nn::Conv2dConfig;
use perturb::data::Mnist;
use perturb::layers::{Conv2d, Linear};
use perturb::zoo::Arch;
use rand::{rngs::StdRng, SeedableRng};

/// `|a − b|∞ ≤ 1e-5 · max(|b|∞, 1)`, with `b` not all zero.
fn assert_close(a: &Tensor, b: &Tensor, what: &str) {
    assert_eq!(a.dims(), b.dims(), "{what}");
    let (err, scale) = (max_abs(&(a - b).unwrap()), max_abs(b));
    assert!(scale > 0.0, "{what}: a vanishing reference gradient");
    assert!(err <= 1e-5 * scale.max(1.0), "{what}: {err} of {scale}");
}

fn var(rng: &mut StdRng, dims: &[usize], scale: f32) -> Var {
    let n = dims.iter().product();
    Var::from_tensor(&Tensor::from_vec(common::uniform(rng, n, scale), dims, &Device::Cpu).unwrap())
        .unwrap()
}

/// The gradients of `Σ y ⊙ r` (a fixed random upstream gradient `r`).
fn grads_of(y: &Tensor, r: &Tensor) -> GradStore {
    (y * r).unwrap().sum_all().unwrap().backward().unwrap()
}

fn grad<'a>(g: &'a GradStore, t: &Tensor, what: &str) -> &'a Tensor {
    g.get(t).unwrap_or_else(|| panic!("no gradient for {what}"))
}

#[test]
fn random_conv_layers_match_candle_autograd() {
    let mut rng = StdRng::seed_from_u64(21);
    // (batch, in, out, kernel, padding, height, width): batches below, at and past a chunk of
    // eight samples, one and several channels, padding, wide and narrow planes
    let cases = [
        (1, 1, 4, 3, 0, 7, 9),
        (3, 2, 5, 3, 1, 6, 6),
        (9, 3, 2, 5, 2, 8, 7),
        (4, 4, 8, 1, 0, 5, 5),
        (8, 8, 9, 3, 0, 7, 6),
        (17, 9, 8, 3, 1, 5, 8),
        (2, 16, 8, 2, 1, 4, 3),
        (2, 2, 3, 5, 4, 2, 3),
    ];
    for (n, c, o, k, p, h, w) in cases {
        let (weight, bias) = (var(&mut rng, &[o, c, k, k], 0.5), var(&mut rng, &[o], 0.5));
        let pixels = Tensor::from_vec(
            common::pixels(&mut rng, n * c * h * w),
            (n, c, h, w),
            &Device::Cpu,
        )
        .unwrap();
        let config = Conv2dConfig {
            padding: p,
            ..Default::default()
        };
        for (relu, input_var) in [(false, true), (true, true), (true, false)] {
            let case = format!(
                "{:?} relu {relu} input var {input_var}",
                (n, c, o, k, p, h, w)
            );
            let x = Var::from_tensor(&pixels).unwrap();
            let x = if input_var {
                x.as_tensor().clone()
            } else {
                pixels.clone()
            };
            let fast = Conv2d::new(
                weight.as_tensor().clone(),
                Some(bias.as_tensor().clone()),
                config,
            )
            .unwrap()
            .trainable();
            let fast = if relu { fast.with_relu() } else { fast };
            assert!(fast.is_fast_trainable() && !fast.is_fast(), "{case}");
            let stock = candle_nn::Conv2d::new(
                weight.as_tensor().clone(),
                Some(bias.as_tensor().clone()),
                config,
            );
            let ys = stock.forward(&x).unwrap();
            let ys = if relu { ys.relu().unwrap() } else { ys };
            let yf = fast.forward(&x).unwrap();
            assert_close(&yf, &ys, &format!("{case}: values"));
            let r = Tensor::from_vec(
                common::uniform(&mut rng, ys.elem_count(), 1.0),
                ys.dims(),
                &Device::Cpu,
            )
            .unwrap();
            let (gf, gs) = (grads_of(&yf, &r), grads_of(&ys, &r));
            for (t, name) in [(weight.as_tensor(), "weight"), (bias.as_tensor(), "bias")] {
                assert_close(
                    grad(&gf, t, name),
                    grad(&gs, t, name),
                    &format!("{case}: {name}"),
                );
            }
            if input_var {
                assert_close(
                    grad(&gf, &x, "x"),
                    grad(&gs, &x, "x"),
                    &format!("{case}: input"),
                );
            } else {
                assert!(
                    gf.get(&x).is_none(),
                    "{case}: no input gradient for a constant input"
                );
            }
        }
    }
}

#[test]
fn random_linear_layers_match_candle_autograd() {
    let mut rng = StdRng::seed_from_u64(22);
    // (batch, input shape after the batch, out)
    let cases: [(usize, &[usize], usize); 5] = [
        (1, &[5], 3),
        (7, &[12], 1),
        (3, &[2, 3, 4], 9),
        (33, &[64, 4, 4], 200),
        (2, &[1], 17),
    ];
    for (n, dims, out) in cases {
        let inp: usize = dims.iter().product();
        let (weight, bias) = (var(&mut rng, &[out, inp], 0.5), var(&mut rng, &[out], 0.5));
        let shape: Vec<usize> = std::iter::once(n).chain(dims.iter().copied()).collect();
        let x = var(&mut rng, &shape, 1.0);
        for relu in [false, true] {
            let case = format!("{:?} relu {relu}", (n, dims, out));
            let fast = Linear::new(weight.as_tensor().clone(), Some(bias.as_tensor().clone()))
                .unwrap()
                .trainable();
            let fast = if relu { fast.with_relu() } else { fast };
            assert!(fast.is_fast_trainable(), "{case}");
            let stock =
                candle_nn::Linear::new(weight.as_tensor().clone(), Some(bias.as_tensor().clone()));
            let ys = stock.forward(&x.flatten_from(1).unwrap()).unwrap();
            let ys = if relu { ys.relu().unwrap() } else { ys };
            let yf = fast.forward(&x).unwrap();
            assert_close(&yf, &ys, &format!("{case}: values"));
            let r = Tensor::from_vec(
                common::uniform(&mut rng, ys.elem_count(), 1.0),
                ys.dims(),
                &Device::Cpu,
            )
            .unwrap();
            let (gf, gs) = (grads_of(&yf, &r), grads_of(&ys, &r));
            for (t, name) in [
                (weight.as_tensor(), "weight"),
                (bias.as_tensor(), "bias"),
                (x.as_tensor(), "input"),
            ] {
                let (a, b) = (grad(&gf, t, name), grad(&gs, t, name));
                if relu && max_abs(b) == 0.0 {
                    continue; // every unit of a one-row batch may be off
                }
                assert_close(a, b, &format!("{case}: {name}"));
            }
        }
    }
}

/// Layers the trainable kernels do not cover keep candle's autograd: no bias, a stride, and
/// constants (which take the constant-weight path).
#[test]
fn uncovered_layers_keep_candle_autograd() {
    let dev = Device::Cpu;
    let w = Var::ones((2, 1, 3, 3), candle_core::DType::F32, &dev).unwrap();
    let b = Var::zeros(2, candle_core::DType::F32, &dev).unwrap();
    let no_bias = Conv2d::new(w.as_tensor().clone(), None, Default::default())
        .unwrap()
        .trainable();
    assert!(!no_bias.is_fast_trainable() && !no_bias.is_fast());
    let strided = Conv2dConfig {
        stride: 2,
        ..Default::default()
    };
    let conv = Conv2d::new(w.as_tensor().clone(), Some(b.as_tensor().clone()), strided)
        .unwrap()
        .trainable();
    assert!(!conv.is_fast_trainable());
    let constant = Conv2d::new(
        w.as_tensor().detach(),
        Some(b.as_tensor().detach()),
        Default::default(),
    )
    .unwrap()
    .trainable();
    assert!(constant.is_fast() && !constant.is_fast_trainable());
    let x = Tensor::ones((1, 1, 5, 5), candle_core::DType::F32, &dev).unwrap();
    let grads = conv
        .forward(&x)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    // output 2×2, each weight meets one input pixel per output
    let gw = grads
        .get(w.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(gw, vec![4.0; 18]);
}

/// The shipped SmallCNN's weights as variables: `build_trainable` (our kernels) against `build`
/// (candle's autograd), every parameter's gradient of the mean cross-entropy on real digits,
/// at batch sizes that split into chunks unevenly.
#[test]
fn small_cnn_parameter_gradients_match_candle_autograd() {
    let dev = Device::Cpu;
    let (images, labels) = Mnist::load_test_default(&dev).unwrap();
    let shipped = perturb::zoo::shipped("mnist-cnn-fgsm-rs").unwrap();
    let file = perturb::zoo::models_dir().join(shipped.file);
    let tensors = candle_core::safetensors::load(&file, &dev).unwrap();
    let vars: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, t)| (k.clone(), Var::from_tensor(t).unwrap().as_tensor().clone()))
        .collect();
    let path = std::path::Path::new("<test>");
    let fast = Arch::SmallCnn.build_trainable(&vars, path).unwrap();
    let stock = Arch::SmallCnn.build(&vars, path).unwrap();
    for n in [1, 13, 32] {
        let (x, y) = (
            images.narrow(0, 0, n).unwrap(),
            labels.narrow(0, 0, n).unwrap(),
        );
        let loss = |m: &perturb::zoo::ZooModel| {
            let logits = m.forward(&x).unwrap();
            candle_nn::loss::cross_entropy(&logits, &y)
                .unwrap()
                .backward()
                .unwrap()
        };
        let (gf, gs) = (loss(&fast), loss(&stock));
        for (name, t) in &vars {
            assert_close(
                grad(&gf, t, name),
                grad(&gs, t, name),
                &format!("batch {n}: {name}"),
            );
        }
    }
}

/// The weight gradients' bits do not depend on the number of threads (fixed chunks of samples,
/// added in order).
#[test]
fn weight_gradients_do_not_depend_on_the_thread_count() {
    let dev = Device::Cpu;
    let (images, labels) = Mnist::load_test_default(&dev).unwrap();
    let (x, y) = (
        images.narrow(0, 0, 40).unwrap(),
        labels.narrow(0, 0, 40).unwrap(),
    );
    let init = Arch::SmallCnn.init(3, &dev).unwrap();
    let vars: HashMap<String, Tensor> = init
        .iter()
        .map(|(k, t)| (k.clone(), Var::from_tensor(t).unwrap().as_tensor().clone()))
        .collect();
    let model = Arch::SmallCnn
        .build_trainable(&vars, std::path::Path::new("<test>"))
        .unwrap();
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let logits = model.forward(&x).unwrap();
            let g = candle_nn::loss::cross_entropy(&logits, &y)
                .unwrap()
                .backward()
                .unwrap();
            let mut names: Vec<&String> = vars.keys().collect();
            names.sort();
            names
                .into_iter()
                .map(|k| {
                    g.get(&vars[k])
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap()
                })
                .collect::<Vec<_>>()
        })
    };
    assert_eq!(run(1), run(3));
}
