//! Attack cost on a small CNN (MNIST-sized input), batch 32, as criterion benches.
//!
//! The figure to watch is attack time / (steps × one forward+backward): `loss_and_grad` is that
//! unit. Threads follow RAYON_NUM_THREADS (state it when reporting numbers), e.g.
//! `RAYON_NUM_THREADS=2 cargo bench --bench attacks`.

use candle_core::{Device, Module, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, Linear};
use criterion::{criterion_group, criterion_main, Criterion};
use perturb::{loss_and_grad, Attack, Budget, Fgsm, Goal, Loss, Pgd};
use rand::{rngs::StdRng, Rng, SeedableRng};

/// conv(1→32, 3×3) → ReLU → conv(32→64, 3×3) → ReLU → max-pool 2 → linear(→10), random weights.
struct Cnn {
    c1: Conv2d,
    c2: Conv2d,
    fc: Linear,
}

impl Cnn {
    fn new() -> candle_core::Result<Self> {
        let mut rng = StdRng::seed_from_u64(0);
        let mut t = |shape: &[usize], s: f32| {
            let n = shape.iter().product();
            let v: Vec<f32> = (0..n).map(|_| rng.random_range(-s..=s)).collect();
            Tensor::from_vec(v, shape, &Device::Cpu)
        };
        let cfg = Conv2dConfig::default();
        Ok(Self {
            c1: Conv2d::new(t(&[32, 1, 3, 3], 0.3)?, Some(t(&[32], 0.1)?), cfg),
            c2: Conv2d::new(t(&[64, 32, 3, 3], 0.06)?, Some(t(&[64], 0.1)?), cfg),
            fc: Linear::new(t(&[10, 64 * 12 * 12], 0.01)?, Some(t(&[10], 0.1)?)),
        })
    }
}

impl Module for Cnn {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.c1.forward(x)?.relu()?;
        let h = self.c2.forward(&h)?.relu()?;
        let h = perturb::layers::max_pool2d(&h, 2, 2)?;
        self.fc.forward(&h.flatten_from(1)?)
    }
}

fn benches(c: &mut Criterion) {
    let model = Cnn::new().expect("model");
    let n = 32;
    let mut rng = StdRng::seed_from_u64(1);
    let v: Vec<f32> = (0..n * 784).map(|_| rng.random::<f32>()).collect();
    let x = Tensor::from_vec(v, (n, 1, 28, 28), &Device::Cpu).expect("input");
    let y: Vec<u32> = (0..n as u32).map(|i| i % 10).collect();
    let goal = Goal::untargeted(&Tensor::new(y.as_slice(), &Device::Cpu).expect("labels"));
    let budget = Budget::linf(0.1).expect("budget");
    let mut g = c.benchmark_group("cnn_b32");
    g.sample_size(10);
    g.bench_function("forward", |b| {
        b.iter(|| model.forward(&x).expect("forward"))
    });
    g.bench_function("loss_and_grad", |b| {
        b.iter(|| loss_and_grad(&model, &x, &goal, Loss::CrossEntropy).expect("grad"))
    });
    let fgsm = Fgsm::new(budget).check_gradient(false);
    g.bench_function("fgsm", |b| {
        b.iter(|| fgsm.run(&model, &x, &goal).expect("fgsm"))
    });
    let pgd = Pgd::new(budget).steps(10).check_gradient(false);
    g.bench_function("pgd10_linf", |b| {
        b.iter(|| pgd.run(&model, &x, &goal).expect("pgd"))
    });
    for (name, budget) in [
        ("pgd10_l2", Budget::l2(1.0)),
        ("pgd10_l1", Budget::l1(10.0)),
    ] {
        let pgd = Pgd::new(budget.expect("budget"))
            .steps(10)
            .check_gradient(false);
        g.bench_function(name, |b| {
            b.iter(|| pgd.run(&model, &x, &goal).expect("pgd"))
        });
    }
    g.finish();
}

criterion_group!(attack_benches, benches);
criterion_main!(attack_benches);
