//! Input gradients against independent truths: closed forms for softmax regression, and central
//! finite differences in f64 for a conv net with stride, padding, batch norm, ReLU and max-pool.

use crate::common;

use candle_core::{DType, Device, Module, Tensor, Var};
use common::{host, pixels, LinearModel, SmallCnn};
use perturb::{loss_and_grad, Goal, Loss};
use rand::{rngs::StdRng, SeedableRng};

/// Softmax of a logit vector in f64.
fn softmax(z: &[f64]) -> Vec<f64> {
    let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = z.iter().map(|v| (v - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

mod softmax_regression {
    use super::*;

    /// d CE(Wx + b, y) / dx = Wᵀ (softmax(Wx + b) − onehot(y)), and its negation when targeted.
    #[test]
    fn cross_entropy_gradient_is_the_closed_form() -> perturb::Result<()> {
        let (k, d, n) = (5, 12, 4);
        let model = LinearModel::random(1, k, d);
        let mut rng = StdRng::seed_from_u64(2);
        let xs = pixels(&mut rng, n * d);
        let x = Tensor::from_vec(xs.clone(), (n, 1, 3, 4), &Device::Cpu)?;
        let classes = [0u32, 3, 4, 1];
        let y = Tensor::new(&classes, &Device::Cpu)?;
        for targeted in [false, true] {
            let goal = if targeted {
                Goal::targeted(&y)
            } else {
                Goal::untargeted(&y)
            };
            let out = loss_and_grad(&model, &x, &goal, Loss::CrossEntropy)?;
            let got = host(&out.grad);
            let losses = out.loss.to_vec1::<f32>()?;
            for i in 0..n {
                let z = model.logits_f64(&xs[i * d..(i + 1) * d]);
                let p = softmax(&z);
                let sign = if targeted { -1.0 } else { 1.0 };
                let ce = -p[classes[i] as usize].ln();
                assert!((losses[i] as f64 - sign * ce).abs() < 1e-5);
                for c in 0..d {
                    let want: f64 = (0..k)
                        .map(|j| {
                            let onehot = if j == classes[i] as usize { 1.0 } else { 0.0 };
                            model.w[j * d + c] as f64 * (p[j] - onehot)
                        })
                        .sum::<f64>()
                        * sign;
                    let g = got[i * d + c] as f64;
                    assert!(
                        (g - want).abs() < 1e-5,
                        "sample {i} pixel {c}: {g} vs {want}"
                    );
                }
            }
        }
        Ok(())
    }

    /// CW margin below κ: d/dx (max_{j≠y} z_j − z_y) = w_{j*} − w_y.
    #[test]
    fn cw_margin_gradient_is_the_weight_difference() -> perturb::Result<()> {
        let (k, d, n) = (4, 6, 3);
        let model = LinearModel::random(3, k, d);
        let mut rng = StdRng::seed_from_u64(4);
        let xs = pixels(&mut rng, n * d);
        let x = Tensor::from_vec(xs.clone(), (n, 1, 2, 3), &Device::Cpu)?;
        let classes = [1u32, 0, 3];
        let y = Tensor::new(&classes, &Device::Cpu)?;
        for targeted in [false, true] {
            let goal = if targeted {
                Goal::targeted(&y)
            } else {
                Goal::untargeted(&y)
            };
            let out = loss_and_grad(&model, &x, &goal, Loss::cw(1e3)?)?;
            let got = host(&out.grad);
            for i in 0..n {
                let z = model.logits_f64(&xs[i * d..(i + 1) * d]);
                let c = classes[i] as usize;
                let other = (0..k)
                    .filter(|&j| j != c)
                    .max_by(|&a, &b| z[a].total_cmp(&z[b]))
                    .unwrap();
                let sign = if targeted { -1.0 } else { 1.0 };
                for p in 0..d {
                    let want = sign * (model.w[other * d + p] - model.w[c * d + p]) as f64;
                    assert!((got[i * d + p] as f64 - want).abs() < 1e-5);
                }
            }
        }
        Ok(())
    }

    /// Once the margin exceeds κ the CW objective is flat: zero gradient.
    #[test]
    fn cw_margin_saturates_at_kappa() -> perturb::Result<()> {
        // Logits = the two pixels; label 1 while pixel 0 is far larger: margin 0.9 > κ = 0.5.
        let model = |x: &Tensor| x.flatten_from(1);
        let x = Tensor::new(&[[[[1.0f32, 0.1]]]], &Device::Cpu)?;
        let y = Tensor::new(&[1u32], &Device::Cpu)?;
        let out = loss_and_grad(&model, &x, &Goal::untargeted(&y), Loss::cw(0.5)?)?;
        assert_eq!(host(&out.grad), [0.0, 0.0]);
        assert_eq!(out.loss.to_vec1::<f32>()?, [0.5]);
        Ok(())
    }

    /// All three losses against central differences of the objective in f64.
    #[test]
    fn every_loss_matches_finite_differences() -> perturb::Result<()> {
        let (k, d) = (6, 5);
        let model = LinearModel::random(5, k, d);
        let mut rng = StdRng::seed_from_u64(6);
        let xs = pixels(&mut rng, d);
        let x = Tensor::from_vec(xs.clone(), (1, 1, 1, d), &Device::Cpu)?;
        let y = Tensor::new(&[2u32], &Device::Cpu)?;
        for loss in [Loss::CrossEntropy, Loss::cw(1e3)?, Loss::Dlr] {
            for targeted in [false, true] {
                let goal = if targeted {
                    Goal::targeted(&y)
                } else {
                    Goal::untargeted(&y)
                };
                let got = host(&loss_and_grad(&model, &x, &goal, loss)?.grad);
                let objective = |xs: &[f64]| -> perturb::Result<f64> {
                    // Logits in f64 from f64 inputs, objective evaluated by perturb in f64.
                    let z: Vec<f64> = (0..k)
                        .map(|j| {
                            (0..d)
                                .map(|c| model.w[j * d + c] as f64 * xs[c])
                                .sum::<f64>()
                                + model.b[j] as f64
                        })
                        .collect();
                    let logits = Tensor::from_vec(z, (1, k), &Device::Cpu)?;
                    let cls = Tensor::new(&[2u32], &Device::Cpu)?;
                    Ok(loss.objective(&logits, &cls, targeted)?.to_vec1::<f64>()?[0])
                };
                let base: Vec<f64> = xs.iter().map(|v| *v as f64).collect();
                for c in 0..d {
                    let h = 1e-6;
                    let (mut up, mut down) = (base.clone(), base.clone());
                    up[c] += h;
                    down[c] -= h;
                    let fd = (objective(&up)? - objective(&down)?) / (2.0 * h);
                    let g = got[c] as f64;
                    assert!(
                        (g - fd).abs() < 1e-4 * (1.0 + fd.abs()),
                        "{loss:?} targeted={targeted} pixel {c}: autograd {g} vs fd {fd}"
                    );
                }
            }
        }
        Ok(())
    }
}

mod conv_net {
    use super::*;

    /// Autograd (f32) equals central differences of the same network evaluated in f64.
    #[test]
    fn cnn_gradient_matches_f64_finite_differences() -> perturb::Result<()> {
        let net32 = SmallCnn::new(11, DType::F32);
        let net64 = SmallCnn::new(11, DType::F64);
        let mut rng = StdRng::seed_from_u64(12);
        let n = 3;
        let xs = pixels(&mut rng, n * 64);
        let x = Tensor::from_vec(xs.clone(), (n, 1, 8, 8), &Device::Cpu)?;
        let classes = [0u32, 1, 2];
        let y = Tensor::new(&classes, &Device::Cpu)?;
        let got = host(&loss_and_grad(&net32, &x, &Goal::untargeted(&y), Loss::CrossEntropy)?.grad);
        let x64: Vec<f64> = xs.iter().map(|v| *v as f64).collect();
        let y_t = Tensor::new(&classes, &Device::Cpu)?;
        let objective = |v: &[f64]| -> perturb::Result<f64> {
            let t = Tensor::from_vec(v.to_vec(), (n, 1, 8, 8), &Device::Cpu)?;
            let z = net64.forward(&t)?;
            let o = Loss::CrossEntropy.objective(&z, &y_t, false)?;
            Ok(o.sum_all()?.to_scalar::<f64>()?)
        };
        let mut compared = 0;
        let mut max_abs = 0.0f64;
        for c in 0..x64.len() {
            let fd_at = |h: f64| -> perturb::Result<f64> {
                let (mut up, mut down) = (x64.clone(), x64.clone());
                up[c] += h;
                down[c] -= h;
                Ok((objective(&up)? - objective(&down)?) / (2.0 * h))
            };
            let (fd, fd_small) = (fd_at(1e-5)?, fd_at(1e-6)?);
            // A ReLU or max-pool kink inside [-h, h] shows as disagreement between step sizes.
            if (fd - fd_small).abs() > 1e-6 {
                continue;
            }
            compared += 1;
            let err = (got[c] as f64 - fd).abs();
            max_abs = max_abs.max(err);
            assert!(
                err < 1e-5 + 1e-4 * fd.abs(),
                "pixel {c}: autograd {} vs fd {fd}",
                got[c]
            );
        }
        assert!(
            compared >= 180,
            "only {compared} of 192 pixels away from kinks"
        );
        assert!(max_abs < 1e-5);
        // The gradient is not trivially zero.
        assert!(got.iter().filter(|g| g.abs() > 1e-3).count() > 50);
        Ok(())
    }
}

mod max_pool {
    use super::*;

    /// perturb's max-pool routes the gradient to the maximum; candle 0.11.1's scales it by 1/4.
    #[test]
    fn gradient_goes_to_the_maximum_unlike_candles() -> perturb::Result<()> {
        let mut rng = StdRng::seed_from_u64(21);
        let xs = pixels(&mut rng, 2 * 3 * 6 * 6);
        let x = Var::from_vec(xs.clone(), (2, 3, 6, 6), &Device::Cpu)?;
        let ours = perturb::layers::max_pool2d(x.as_tensor(), 2, 2)?;
        let theirs = x.as_tensor().max_pool2d(2)?;
        assert_eq!(
            host(&ours),
            host(&theirs),
            "forward values must be identical"
        );
        let g_ours = host(ours.sum_all()?.backward()?.get(x.as_tensor()).unwrap());
        let g_theirs = host(theirs.sum_all()?.backward()?.get(x.as_tensor()).unwrap());
        // Reference: 1 at each window's (unique) maximum, 0 elsewhere.
        let mut want = vec![0.0f32; xs.len()];
        for plane in 0..6 {
            for wi in 0..3 {
                for wj in 0..3 {
                    let idx = |a: usize, b: usize| plane * 36 + (2 * wi + a) * 6 + 2 * wj + b;
                    let best = [(0, 0), (0, 1), (1, 0), (1, 1)]
                        .iter()
                        .map(|&(a, b)| idx(a, b))
                        .max_by(|&p, &q| xs[p].total_cmp(&xs[q]))
                        .unwrap();
                    want[best] = 1.0;
                }
            }
        }
        assert_eq!(g_ours, want);
        let scaled: Vec<f32> = want.iter().map(|v| v / 4.0).collect();
        assert_eq!(
            g_theirs, scaled,
            "candle's known max-pool fault changed: revisit the docs"
        );
        Ok(())
    }

    /// Overlapping windows (kernel 3, stride 2) agree with candle's forward, and ties share the
    /// gradient evenly.
    #[test]
    fn overlapping_windows_and_ties() -> perturb::Result<()> {
        let mut rng = StdRng::seed_from_u64(22);
        let x = Tensor::from_vec(pixels(&mut rng, 2 * 7 * 7), (1, 2, 7, 7), &Device::Cpu)?;
        let ours = perturb::layers::max_pool2d(&x, 3, 2)?;
        let theirs = x.max_pool2d_with_stride(3, 2)?;
        assert_eq!(host(&ours), host(&theirs));
        let flat = Var::new(&[[[[0.5f32, 0.5], [0.1, 0.5]]]], &Device::Cpu)?;
        let y = perturb::layers::max_pool2d(flat.as_tensor(), 2, 2)?;
        let g = host(y.sum_all()?.backward()?.get(flat.as_tensor()).unwrap());
        let third = 1.0 / 3.0;
        assert_eq!(g, [third, third, 0.0, third]);
        Ok(())
    }

    /// The CPU custom op and the composed version agree exactly, values and gradients, with
    /// overlapping windows, odd sizes and ties (quantized pixels).
    #[test]
    fn custom_op_equals_composed_version() -> perturb::Result<()> {
        let mut rng = StdRng::seed_from_u64(23);
        for (k, s, h, w) in [
            (2, 2, 8, 8),
            (2, 2, 7, 9),
            (3, 2, 9, 7),
            (3, 1, 5, 6),
            (2, 3, 8, 8),
        ] {
            let v: Vec<f32> = pixels(&mut rng, 2 * 3 * h * w)
                .iter()
                .map(|p| (p * 4.0).round() / 4.0) // many ties
                .collect();
            let x = Var::from_vec(v, (2, 3, h, w), &Device::Cpu)?;
            let upstream = {
                let (ho, wo) = ((h - k) / s + 1, (w - k) / s + 1);
                Tensor::from_vec(
                    pixels(&mut rng, 2 * 3 * ho * wo),
                    (2, 3, ho, wo),
                    &Device::Cpu,
                )?
            };
            let fast = perturb::layers::max_pool2d(x.as_tensor(), k, s)?;
            let slow = perturb::layers::max_pool2d_composed(x.as_tensor(), k, s)?;
            assert_eq!(host(&fast), host(&slow), "values, k={k} s={s}");
            let g_fast = (fast * &upstream)?.sum_all()?.backward()?;
            let g_slow = (slow * &upstream)?.sum_all()?.backward()?;
            let (a, b) = (
                host(g_fast.get(x.as_tensor()).unwrap()),
                host(g_slow.get(x.as_tensor()).unwrap()),
            );
            for (p, q) in a.iter().zip(&b) {
                assert!((p - q).abs() < 1e-6, "gradients, k={k} s={s}: {p} vs {q}");
            }
        }
        Ok(())
    }
}
