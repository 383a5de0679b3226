//! The gradient self-check: passes on models with correct gradients, flags candle's known faults
//! (max-pool backward, fused kernels without backward).

use crate::common;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{LayerNorm, Linear};
use common::{pixels, uniform, LinearModel, SmallCnn};
use perturb::{EvalMode, GradVerdict, GradientCheck, Normalized};
use rand::{rngs::StdRng, SeedableRng};

fn batch(seed: u64, n: usize) -> Tensor {
    let mut rng = StdRng::seed_from_u64(seed);
    Tensor::from_vec(pixels(&mut rng, n * 64), (n, 1, 8, 8), &Device::Cpu).unwrap()
}

fn linear(seed: u64, out: usize, inp: usize) -> Linear {
    let mut rng = StdRng::seed_from_u64(seed);
    let w = Tensor::from_vec(uniform(&mut rng, out * inp, 0.5), (out, inp), &Device::Cpu).unwrap();
    let b = Tensor::from_vec(uniform(&mut rng, out, 0.1), out, &Device::Cpu).unwrap();
    Linear::new(w, Some(b))
}

fn layer_norm(n: usize) -> LayerNorm {
    let mut rng = StdRng::seed_from_u64(77);
    let w: Vec<f32> = uniform(&mut rng, n, 0.3).iter().map(|v| 1.0 + v).collect();
    let w = Tensor::from_vec(w, n, &Device::Cpu).unwrap();
    let b = Tensor::from_vec(uniform(&mut rng, n, 0.1), n, &Device::Cpu).unwrap();
    LayerNorm::new(w, b, 1e-5)
}

/// Batch norm (train/eval behaviour) then a linear layer.
struct BnNet {
    bn: candle_nn::BatchNorm,
    fc: Linear,
}

impl candle_nn::ModuleT for BnNet {
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        self.fc
            .forward(&self.bn.forward_t(x, train)?.flatten_from(1)?)
    }
}

mod correct_models_pass {
    use super::*;

    #[test]
    fn softmax_regression() -> perturb::Result<()> {
        let model = LinearModel::random(1, 10, 64);
        let verdict = GradientCheck::new().run(&model, &batch(2, 2))?;
        assert!(verdict.passed(), "{verdict:?}");
        Ok(())
    }

    #[test]
    fn cnn_with_batch_norm_and_perturbs_max_pool() -> perturb::Result<()> {
        for seed in 0..5 {
            let model = SmallCnn::new(seed, DType::F32);
            let verdict = GradientCheck::new()
                .seed(seed)
                .run(&model, &batch(seed + 10, 2))?;
            assert!(verdict.passed(), "seed {seed}: {verdict:?}");
        }
        Ok(())
    }

    #[test]
    fn normalized_and_eval_wrappers() -> perturb::Result<()> {
        let cnn = SmallCnn::new(3, DType::F32);
        let model = Normalized::new(cnn, &[0.1307], &[0.3081], &Device::Cpu)?;
        assert!(GradientCheck::new().run(&model, &batch(4, 2))?.passed());
        let mut rng = StdRng::seed_from_u64(5);
        let t = |v: Vec<f32>| Tensor::from_vec(v, 1, &Device::Cpu).unwrap();
        let bn = candle_nn::BatchNorm::new(
            1,
            t(vec![0.4]),
            t(vec![0.2]),
            t(vec![1.5]),
            t(uniform(&mut rng, 1, 0.1)),
            1e-5,
        )?;
        let model = EvalMode(BnNet {
            bn,
            fc: linear(6, 4, 64),
        });
        assert!(GradientCheck::new().run(&model, &batch(7, 2))?.passed());
        Ok(())
    }

    /// candle-nn's LayerNorm on a non-contiguous input takes the slow path, built from ops
    /// with backward: correct.
    #[test]
    fn layer_norm_slow_path() -> perturb::Result<()> {
        let (ln, fc) = (layer_norm(8), linear(8, 5, 64));
        let model = move |x: &Tensor| -> candle_core::Result<Tensor> {
            // [N, 1, 8, 8] → transposed (non-contiguous) → layer norm over the last dim.
            let h = ln.forward(&x.squeeze(1)?.t()?)?;
            fc.forward(&h.flatten_from(1)?)
        };
        assert!(GradientCheck::new().run(&model, &batch(8, 2))?.passed());
        Ok(())
    }
}

mod faulty_models_are_flagged {
    use super::*;

    /// candle 0.11.1's max_pool2d backward scales the gradient by 1/4 per 2×2 pool.
    #[test]
    fn candle_max_pool() -> perturb::Result<()> {
        let fc = linear(9, 10, 16);
        let model = move |x: &Tensor| -> candle_core::Result<Tensor> {
            fc.forward(&x.max_pool2d(2)?.flatten_from(1)?)
        };
        match GradientCheck::new().run(&model, &batch(10, 2))? {
            GradVerdict::Mismatch {
                autograd,
                finite_difference,
                relative_error,
            } => {
                assert!(relative_error > 0.5);
                // Along sign(∇) the wrong gradient is a quarter of the true slope.
                assert!((autograd / finite_difference - 0.25).abs() < 0.05);
            }
            other => panic!("not flagged: {other:?}"),
        }
        Ok(())
    }

    /// The fused LayerNorm (contiguous input, with bias) has no backward: alone on the path,
    /// no gradient reaches the input.
    #[test]
    fn fused_layer_norm_alone() -> perturb::Result<()> {
        let (ln, fc) = (layer_norm(64), linear(11, 5, 64));
        let model = move |x: &Tensor| -> candle_core::Result<Tensor> {
            fc.forward(&ln.forward(&x.flatten_from(1)?)?)
        };
        assert_eq!(
            GradientCheck::new().run(&model, &batch(12, 2))?,
            GradVerdict::Missing
        );
        Ok(())
    }

    /// With a residual connection the fused LayerNorm silently drops its term: a wrong gradient.
    #[test]
    fn fused_layer_norm_in_a_residual_block() -> perturb::Result<()> {
        let (ln, fc) = (layer_norm(64), linear(13, 5, 64));
        let model = move |x: &Tensor| -> candle_core::Result<Tensor> {
            let h = x.flatten_from(1)?;
            fc.forward(&(ln.forward(&h)? + &h)?)
        };
        let verdict = GradientCheck::new().run(&model, &batch(14, 2))?;
        assert!(
            matches!(verdict, GradVerdict::Mismatch { .. }),
            "{verdict:?}"
        );
        Ok(())
    }

    /// candle-nn's `softmax_last_dim` is another kernel without backward.
    #[test]
    fn fused_softmax_in_a_residual_block() -> perturb::Result<()> {
        let (fc1, fc2) = (linear(15, 64, 64), linear(16, 5, 64));
        let model = move |x: &Tensor| -> candle_core::Result<Tensor> {
            let h = x.flatten_from(1)?;
            let a = candle_nn::ops::softmax_last_dim(&fc1.forward(&h)?)?;
            fc2.forward(&((a * 8.0)? + &h)?)
        };
        let verdict = GradientCheck::new().run(&model, &batch(16, 2))?;
        assert!(
            matches!(verdict, GradVerdict::Mismatch { .. }),
            "{verdict:?}"
        );
        Ok(())
    }
}
