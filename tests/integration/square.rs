//! Square Attack: it needs no gradient (a model whose backward is missing is attacked where
//! every gradient attack refuses), it counts its queries exactly, it stays in its budget (exact
//! f64 recount) for both norms, and it is deterministic per seed.

use crate::common;

use candle_core::{Device, Module, Tensor};
use candle_nn::{LayerNorm, Linear};
use common::{host, pixels, uniform, LinearModel};
use perturb::attack::Square;
use perturb::{Attack, Budget, Error, Goal, Pgd};
use rand::{rngs::StdRng, SeedableRng};

/// candle-nn's fused LayerNorm (no backward) under a linear layer, on 8×8 inputs.
fn no_backward_model() -> impl Fn(&Tensor) -> candle_core::Result<Tensor> {
    let mut rng = StdRng::seed_from_u64(77);
    let g = Tensor::from_vec(vec![1f32; 64], 64, &Device::Cpu).unwrap();
    let b = Tensor::from_vec(uniform(&mut rng, 64, 0.1), 64, &Device::Cpu).unwrap();
    let ln = LayerNorm::new(g, b, 1e-5);
    let w = Tensor::from_vec(uniform(&mut rng, 5 * 64, 0.5), (5, 64), &Device::Cpu).unwrap();
    let fc = Linear::new(w, None);
    move |x: &Tensor| fc.forward(&ln.forward(&x.flatten_from(1)?)?)
}

#[test]
fn attacks_a_model_without_backward_where_pgd_refuses() -> perturb::Result<()> {
    let model = no_backward_model();
    let n = 16;
    let x = Tensor::from_vec(
        pixels(&mut StdRng::seed_from_u64(3), n * 64),
        (n, 1, 8, 8),
        &Device::Cpu,
    )?;
    let y = model(&x)?.argmax(1)?;
    let goal = Goal::untargeted(&y);
    for budget in [Budget::linf(0.1)?, Budget::l2(1.0)?] {
        let pgd = Pgd::new(budget).run(&model, &x, &goal);
        assert!(matches!(pgd, Err(Error::GradientMissing)), "{pgd:?}");
        let adv = Square::new(budget).queries(300).run(&model, &x, &goal)?;
        assert_eq!(adv.gradient_evals, 0);
        let fooled = adv.success.iter().filter(|s| **s).count();
        assert!(fooled >= n * 3 / 4, "{}: {fooled} of {n}", budget.norm());
        // the verdict is the model's on the returned point
        let pred = model(&adv.x_adv)?.argmax(1)?.to_vec1::<u32>()?;
        let labels = y.to_vec1::<u32>()?;
        for i in 0..n {
            assert_eq!(adv.success[i], pred[i] != labels[i]);
        }
    }
    Ok(())
}

/// A sample it never fools costs exactly `queries` forward passes, plus the verdict's one.
#[test]
fn queries_are_counted_exactly() -> perturb::Result<()> {
    let m = LinearModel::random(1, 3, 16);
    // the label's logit far ahead: out of reach at this ε
    let model = LinearModel::new(m.w.clone(), vec![50.0, 0.0, 0.0], 3, 16);
    let x = Tensor::full(0.5f32, (3, 1, 4, 4), &Device::Cpu)?;
    let goal = Goal::untargeted(&Tensor::new(&[0u32, 0, 0], &Device::Cpu)?);
    for queries in [1usize, 7, 40] {
        let adv = Square::new(Budget::linf(0.05)?)
            .queries(queries)
            .run(&model, &x, &goal)?;
        assert_eq!(adv.success, [false; 3]);
        assert_eq!(adv.forward_evals, 3 * queries + 3, "{queries} queries");
    }
    Ok(())
}

/// Every point is in the box and within ε by an exact f64 recount, for random inputs, seeds and
/// radii, both norms; the same seed gives the same bits.
#[test]
fn stays_in_budget_and_is_deterministic() -> perturb::Result<()> {
    let model = LinearModel::random(2, 4, 64);
    for seed in 0..12u64 {
        let mut rng = StdRng::seed_from_u64(100 + seed);
        let n = 5;
        let xs = pixels(&mut rng, n * 64);
        let x = Tensor::from_vec(xs.clone(), (n, 1, 8, 8), &Device::Cpu)?;
        let y = Tensor::new(&[0u32, 1, 2, 3, 0], &Device::Cpu)?;
        let scale = [1e-3f32, 0.03, 0.3][seed as usize % 3];
        for budget in [Budget::linf(scale)?, Budget::l2(8.0 * scale)?] {
            let square = Square::new(budget).queries(60).seed(seed);
            let adv = square.run(&model, &x, &Goal::untargeted(&y))?;
            let got = host(&adv.x_adv);
            assert_eq!(
                got,
                host(&square.run(&model, &x, &Goal::untargeted(&y))?.x_adv)
            );
            for i in 0..n {
                let (a, b) = (&got[i * 64..(i + 1) * 64], &xs[i * 64..(i + 1) * 64]);
                assert!(a.iter().all(|v| (0.0..=1.0).contains(v)));
                let diffs = a.iter().zip(b).map(|(p, q)| f64::from(*p) - f64::from(*q));
                let (dist, bound) = match budget.norm() {
                    perturb::Norm::Linf => (
                        diffs.fold(0.0, |m: f64, d| m.max(d.abs())),
                        f64::from(budget.eps()),
                    ),
                    _ => (
                        diffs.map(|d| d * d).sum::<f64>().sqrt(),
                        f64::from(budget.eps()) * (1.0 + 1e-12),
                    ),
                };
                assert!(
                    dist <= bound,
                    "{} seed {seed}: {dist} > {bound}",
                    budget.norm()
                );
            }
        }
    }
    Ok(())
}

#[test]
fn bad_parameters_are_typed_errors() -> perturb::Result<()> {
    let b = Budget::linf(0.1)?;
    for bad in [
        Square::new(b).queries(0),
        Square::new(b).p_init(0.0),
        Square::new(b).p_init(1.5),
        Square::new(Budget::l1(1.0)?),
    ] {
        assert!(matches!(bad.build(), Err(Error::InvalidParameter { .. })));
    }
    let model = LinearModel::random(2, 4, 16);
    let flat = Tensor::full(0.5f32, (2, 16), &Device::Cpu)?;
    let goal = Goal::untargeted(&Tensor::new(&[0u32, 1], &Device::Cpu)?);
    assert!(matches!(
        Square::new(b).run(&model, &flat, &goal),
        Err(Error::ShapeMismatch { .. })
    ));
    Ok(())
}

/// The paper's regime on a real model: on `mnist-cnn` at L∞ ε = 0.3 Square fools at least 90 %
/// of the first 100 test digits within its 5,000 queries (it fools all of them here, mostly in
/// a few dozen queries).
#[test]
fn fools_the_mnist_cnn_at_eps_0_3() -> perturb::Result<()> {
    let dev = Device::Cpu;
    let model = perturb::zoo::load("mnist-cnn", &dev)?;
    let (images, labels) = perturb::data::Mnist::load_test_default(&dev)?;
    let (x, y) = (images.narrow(0, 0, 100)?, labels.narrow(0, 0, 100)?);
    let run = perturb::eval::Evaluator::new(&model, &x, &y)?
        .run(&Square::new(Budget::linf(0.3)?), None)?;
    let r = &run.report;
    assert!(r.attack_success_rate >= 0.9, "{}", r.attack_success_rate);
    assert_eq!(r.gradient_evals, 0);
    Ok(())
}
