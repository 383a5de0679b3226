//! The constant-weight layers (`perturb::layers::Conv2d`, `Linear`, `DepthwiseConv2d`): values
//! and input gradients equal stock candle's, on random layers and on every shipped model.

use crate::common;

use std::collections::HashMap;

use candle_core::{Device, Module, Tensor, Var};
use candle_nn::Conv2dConfig;
use perturb::data::Mnist;
use perturb::{loss_and_grad, zoo, Goal, Loss};
use rand::{rngs::StdRng, SeedableRng};

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    max_abs(&(a - b).unwrap())
}

fn max_abs(a: &Tensor) -> f32 {
    a.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

/// The stock layer's output, then ReLU if the fast layer under test has one fused.
fn relu_if(relu: bool, y: Tensor) -> candle_core::Result<Tensor> {
    if relu {
        y.relu()
    } else {
        Ok(y)
    }
}

/// The gradients with respect to `x` of the fast and the stock outputs under the same
/// non-uniform upstream gradient (the outputs weighted by random factors, then summed).
fn input_grads(rng: &mut StdRng, x: &Var, yf: &Tensor, ys: &Tensor) -> (Tensor, Tensor) {
    let r = Tensor::from_vec(
        common::uniform(rng, ys.elem_count(), 1.0),
        ys.dims(),
        ys.device(),
    )
    .unwrap();
    let gf = (yf * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let gs = (ys * &r).unwrap().sum_all().unwrap().backward().unwrap();
    (gf.get(x).unwrap().clone(), gs.get(x).unwrap().clone())
}

#[test]
fn random_layers_match_candle_nn_in_value_and_input_gradient() {
    let dev = Device::Cpu;
    let mut rng = StdRng::seed_from_u64(42);
    // (batch, in, out, kernel, padding, height, width)
    let cases = [
        (1, 1, 4, 3, 0, 7, 9),
        (3, 2, 5, 3, 1, 6, 6),
        (2, 3, 2, 5, 2, 8, 7),
        (4, 4, 8, 1, 0, 5, 5),
        (2, 2, 3, 3, 2, 4, 4),
        (5, 6, 7, 2, 1, 6, 3),
        // padding wider than the input: im2col rows that are all padding
        (1, 1, 2, 5, 2, 1, 1),
        (2, 2, 3, 5, 4, 2, 3),
        // eight or more channels in and out: both directions take the shifted-GEMM path
        (3, 8, 9, 3, 0, 7, 6),
        (2, 9, 8, 3, 1, 5, 8),
        (1, 12, 10, 5, 2, 6, 6),
        (2, 16, 8, 2, 1, 4, 3),
    ];
    for (n, c, o, k, p, h, w) in cases {
        let weight = Tensor::from_vec(
            common::uniform(&mut rng, o * c * k * k, 0.5),
            (o, c, k, k),
            &dev,
        )
        .unwrap();
        let bias = Tensor::from_vec(common::uniform(&mut rng, o, 0.5), o, &dev).unwrap();
        let config = Conv2dConfig {
            padding: p,
            ..Default::default()
        };
        let x = Var::from_tensor(
            &Tensor::from_vec(common::pixels(&mut rng, n * c * h * w), (n, c, h, w), &dev).unwrap(),
        )
        .unwrap();
        for relu in [false, true] {
            let mut fast =
                perturb::layers::Conv2d::new(weight.clone(), Some(bias.clone()), config).unwrap();
            if relu {
                fast = fast.with_relu();
            }
            assert!(fast.is_fast());
            let stock = candle_nn::Conv2d::new(weight.clone(), Some(bias.clone()), config);
            let stock = |x: &Tensor| relu_if(relu, stock.forward(x)?);
            let (yf, ys) = (fast.forward(&x).unwrap(), stock(&x).unwrap());
            assert_eq!(yf.dims(), ys.dims());
            assert!(max_abs_diff(&yf, &ys) <= 1e-5 * max_abs(&ys).max(1.0));
            let (gf, gs) = input_grads(&mut rng, &x, &yf, &ys);
            let err = max_abs_diff(&gf, &gs);
            let case = (n, c, o, k, p, h, w, relu);
            assert!(err <= 1e-5 * max_abs(&gs).max(1.0), "case {case:?}: {err}");
            assert!(
                max_abs(&gs) > 0.0,
                "case {case:?}: some unit must be active"
            );
        }
    }
}

#[test]
fn random_linear_layers_match_candle_nn_in_value_and_input_gradient() {
    let dev = Device::Cpu;
    let mut rng = StdRng::seed_from_u64(7);
    // (batch, input shape after the batch, out): flat and image-shaped inputs, one-row batches
    let cases: [(usize, &[usize], usize); 5] = [
        (1, &[5], 3),
        (7, &[12], 1),
        (3, &[2, 3, 4], 9),
        (32, &[64, 4, 4], 200),
        (2, &[1], 17),
    ];
    for (n, dims, out) in cases {
        let inp: usize = dims.iter().product();
        let weight =
            Tensor::from_vec(common::uniform(&mut rng, out * inp, 0.5), (out, inp), &dev).unwrap();
        let bias = Tensor::from_vec(common::uniform(&mut rng, out, 0.5), out, &dev).unwrap();
        let shape: Vec<usize> = std::iter::once(n).chain(dims.iter().copied()).collect();
        let x = Var::from_tensor(
            &Tensor::from_vec(common::pixels(&mut rng, n * inp), shape.as_slice(), &dev).unwrap(),
        )
        .unwrap();
        for relu in [false, true] {
            let mut fast =
                perturb::layers::Linear::new(weight.clone(), Some(bias.clone())).unwrap();
            if relu {
                fast = fast.with_relu();
            }
            assert!(fast.is_fast());
            let stock = candle_nn::Linear::new(weight.clone(), Some(bias.clone()));
            let stock = |x: &Tensor| relu_if(relu, stock.forward(&x.flatten_from(1)?)?);
            let (yf, ys) = (fast.forward(&x).unwrap(), stock(&x).unwrap());
            assert_eq!(yf.dims(), ys.dims());
            let case = (n, dims, out, relu);
            assert!(
                max_abs_diff(&yf, &ys) <= 1e-5 * max_abs(&ys).max(1.0),
                "{case:?}"
            );
            let (gf, gs) = input_grads(&mut rng, &x, &yf, &ys);
            assert_eq!(gf.dims(), x.dims());
            let err = max_abs_diff(&gf, &gs);
            assert!(err <= 1e-5 * max_abs(&gs).max(1.0), "case {case:?}: {err}");
            // (with a ReLU, a one-row batch may have every unit off)
            assert!(
                relu || max_abs(&gs) > 0.0,
                "case {case:?}: a vanishing gradient"
            );
        }
    }
}

#[test]
fn trained_weights_keep_stock_autograd() {
    // Variables (weights being trained) take candle-nn's path, which has weight gradients.
    let dev = Device::Cpu;
    let w = Var::ones((2, 1, 3, 3), candle_core::DType::F32, &dev).unwrap();
    let conv =
        perturb::layers::Conv2d::new(w.as_tensor().clone(), None, Default::default()).unwrap();
    assert!(!conv.is_fast());
    let fc = perturb::layers::Linear::new(
        Var::ones((2, 3), candle_core::DType::F32, &dev)
            .unwrap()
            .as_tensor()
            .clone(),
        None,
    )
    .unwrap();
    assert!(!fc.is_fast());
    let x = Tensor::ones((1, 1, 4, 4), candle_core::DType::F32, &dev).unwrap();
    let grads = conv
        .forward(&x)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert!(grads.get(w.as_tensor()).is_some());
}

#[test]
fn shipped_models_have_stock_gradients_to_1e_5() {
    let dev = Device::Cpu;
    let (images, labels) = Mnist::load_test_default(&dev).unwrap();
    let (x, y) = (
        images.narrow(0, 0, 16).unwrap(),
        labels.narrow(0, 0, 16).unwrap(),
    );
    // EfficientNet-Lite0: tests/integration/imagenet.rs
    for s in zoo::SHIPPED.iter().filter(|s| s.arch.is_mnist()) {
        let path = zoo::models_dir().join(s.file);
        let fast = zoo::load(s.name, &dev).unwrap();
        // The same weights as variables: every layer takes stock candle autograd.
        let tensors = candle_core::safetensors::load(&path, &dev).unwrap();
        let vars: HashMap<String, Tensor> = tensors
            .iter()
            .map(|(k, t)| (k.clone(), Var::from_tensor(t).unwrap().as_tensor().clone()))
            .collect();
        let stock = s.arch.build(&vars, &path).unwrap();
        let (lf, ls) = (fast.forward(&x).unwrap(), stock.forward(&x).unwrap());
        assert!(
            max_abs_diff(&lf, &ls) <= 1e-5 * max_abs(&ls).max(1.0),
            "{}",
            s.name
        );
        // 16 digits run sample by sample through the convolutions; one digit (fewer samples
        // than threads) layer by layer, each layer's GEMMs split over the threads
        for n in [16, 1] {
            let (x, y) = (x.narrow(0, 0, n).unwrap(), y.narrow(0, 0, n).unwrap());
            let goal = Goal::untargeted(&y);
            let gf = loss_and_grad(&fast, &x, &goal, Loss::CrossEntropy).unwrap();
            let gs = loss_and_grad(&stock, &x, &goal, Loss::CrossEntropy).unwrap();
            let err = max_abs_diff(&gf.grad, &gs.grad);
            let scale = max_abs(&gs.grad);
            assert!(
                scale > 0.0 && err <= 1e-5 * scale.max(1.0),
                "{} batch {n}: {err} vs {scale}",
                s.name
            );
        }
    }
}

/// The depthwise layer (EfficientNet's), both its CPU kernel and its composed path for other
/// devices, against candle's own grouped `conv2d` on explicitly padded input: values and input
/// gradients, strides 1 and 2, odd and even sizes, small and larger planes, with and without
/// ReLU6.
#[test]
fn depthwise_layer_matches_candle_grouped_conv2d() {
    use perturb::layers::{same_padding, DepthwiseConv2d};
    let dev = Device::Cpu;
    let mut rng = StdRng::seed_from_u64(7);
    // (batch, channels, kernel, stride, height, width)
    let cases = [
        (2, 3, 3, 1, 7, 9),
        (1, 4, 3, 2, 8, 8),
        (3, 2, 5, 2, 9, 6),
        (2, 5, 5, 1, 6, 7),
        (1, 2, 3, 2, 5, 5),
        // planes long enough for the kernel's blocks of 64 and 16 outputs and their remainders
        (1, 3, 3, 1, 21, 23),
        (2, 2, 5, 2, 30, 17),
    ];
    for (n, c, k, s, h, w) in cases {
        // weights large enough that ReLU6 clips at both ends
        let weight = Tensor::from_vec(
            common::uniform(&mut rng, c * k * k, 2.0),
            (c, 1, k, k),
            &dev,
        )
        .unwrap();
        let bias = Tensor::from_vec(common::uniform(&mut rng, c, 1.0), c, &dev).unwrap();
        let x = Var::from_tensor(
            &(Tensor::from_vec(common::pixels(&mut rng, n * c * h * w), (n, c, h, w), &dev)
                .unwrap()
                * 4.0)
                .unwrap(),
        )
        .unwrap();
        for relu6 in [false, true] {
            let mut layer = DepthwiseConv2d::new(weight.clone(), Some(bias.clone()), s).unwrap();
            if relu6 {
                layer = layer.with_relu6();
            }
            assert!(layer.is_fast());
            let reference = |x: &Tensor| -> candle_core::Result<Tensor> {
                let (pt, pb) = same_padding(h, k, s);
                let (pl, pr) = same_padding(w, k, s);
                let xp = x.pad_with_zeros(2, pt, pb)?.pad_with_zeros(3, pl, pr)?;
                let y = xp
                    .conv2d(&weight, 0, s, 1, c)?
                    .broadcast_add(&bias.reshape((1, c, 1, 1))?)?;
                if relu6 {
                    y.clamp(0f32, 6f32)
                } else {
                    Ok(y)
                }
            };
            let want = reference(x.as_tensor()).unwrap();
            for (path, got) in [
                ("kernel", layer.forward(x.as_tensor()).unwrap()),
                ("composed", layer.forward_stock(x.as_tensor()).unwrap()),
            ] {
                assert_eq!(got.dims(), want.dims(), "{path} {n} {c} {k} {s} {h} {w}");
                let d = max_abs_diff(&got, &want);
                assert!(d < 1e-5, "{path}: values differ by {d}");
            }
            // input gradients of a random linear functional of the output
            let probe = Tensor::from_vec(
                common::uniform(&mut rng, want.elem_count(), 1.0),
                want.dims(),
                &dev,
            )
            .unwrap();
            let grad = |y: Tensor| {
                let g = (y * &probe).unwrap().sum_all().unwrap().backward().unwrap();
                g.get(x.as_tensor()).unwrap().clone()
            };
            let g_want = grad(reference(x.as_tensor()).unwrap());
            for (path, g) in [
                ("kernel", grad(layer.forward(x.as_tensor()).unwrap())),
                (
                    "composed",
                    grad(layer.forward_stock(x.as_tensor()).unwrap()),
                ),
            ] {
                let d = max_abs_diff(&g, &g_want);
                assert!(
                    d < 1e-4 * max_abs(&g_want).max(1.0),
                    "{path}: input gradients differ by {d} ({n} {c} {k} {s} {h} {w} relu6 {relu6})"
                );
            }
        }
    }
}
