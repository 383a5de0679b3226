//! Attack cost on every shipped model at batch 1, 32 and 128, as criterion benches.
//!
//! The figure to watch is attack time / (steps × one forward+backward): `loss_and_grad` is that
//! unit. Inputs are the first MNIST test digits with their true labels, so early stopping sees a
//! real success rate. `mnist-cnn/stock` is the same CNN with its weights as candle variables,
//! i.e. candle's own autograd (weight gradients, `conv_transpose2d`), for comparison with the
//! constant-weight fast layers the zoo uses.
//!
//! Threads follow RAYON_NUM_THREADS; state it with the numbers, e.g.
//! `RAYON_NUM_THREADS=2 cargo bench --bench attacks`, or one group:
//! `RAYON_NUM_THREADS=2 cargo bench --bench attacks -- 'mnist-cnn/b32'`.

use std::collections::HashMap;

use candle_core::{Device, Module, Tensor, Var};
use criterion::{criterion_group, criterion_main, Criterion};
use perturb::data::Mnist;
use perturb::{loss_and_grad, zoo, Attack, Budget, Fgsm, Goal, Loss, Pgd};

/// The shipped model `name` with its weights as variables: stock candle autograd everywhere.
fn stock(name: &str) -> zoo::ZooModel {
    let s = zoo::shipped(name).expect("shipped");
    let path = zoo::models_dir().join(s.file);
    let tensors = candle_core::safetensors::load(&path, &Device::Cpu).expect("weights");
    let vars: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, t)| {
            (
                k.clone(),
                Var::from_tensor(t).expect("var").as_tensor().clone(),
            )
        })
        .collect();
    s.arch.build(&vars, &path).expect("build")
}

fn benches(c: &mut Criterion) {
    let dev = Device::Cpu;
    let (images, labels) = Mnist::load_test_default(&dev).expect("mnist");
    let models: Vec<(&str, zoo::ZooModel)> = vec![
        (
            "mnist-linear",
            zoo::load("mnist-linear", &dev).expect("model"),
        ),
        ("mnist-cnn", zoo::load("mnist-cnn", &dev).expect("model")),
        ("mnist-cnn/stock", stock("mnist-cnn")),
    ];
    let budget = Budget::linf(0.1).expect("budget");
    let fgsm = Fgsm::new(budget).check_gradient(false);
    let pgd10 = Pgd::new(budget).steps(10).check_gradient(false);
    let pgd40 = Pgd::new(budget)
        .steps(40)
        .step_size(0.01)
        .check_gradient(false);
    let pgd40_es = pgd40.clone().early_stop(true);
    for (name, model) in &models {
        for n in [1usize, 32, 128] {
            let x = images.narrow(0, 0, n).expect("x");
            let goal = Goal::untargeted(&labels.narrow(0, 0, n).expect("y"));
            let mut g = c.benchmark_group(format!("{name}/b{n}"));
            g.sample_size(10);
            g.bench_function("forward", |b| {
                b.iter(|| model.forward(&x).expect("forward"))
            });
            g.bench_function("loss_and_grad", |b| {
                b.iter(|| loss_and_grad(model, &x, &goal, Loss::CrossEntropy).expect("grad"))
            });
            if name.ends_with("stock") {
                // the comparison point: one fwd+bwd and PGD-10 are enough
                g.bench_function("pgd10", |b| {
                    b.iter(|| pgd10.run(model, &x, &goal).expect("pgd"))
                });
                g.finish();
                continue;
            }
            let attacks: [(&str, &dyn Attack); 4] = [
                ("fgsm", &fgsm),
                ("pgd10", &pgd10),
                ("pgd40", &pgd40),
                ("pgd40_early_stop", &pgd40_es),
            ];
            for (label, attack) in attacks {
                g.bench_function(label, |b| {
                    b.iter(|| attack.run(model, &x, &goal).expect("attack"))
                });
            }
            g.finish();
        }
    }
    // The other norms, once: their projections cost more than L∞'s clamp.
    let (_, cnn) = &models[1];
    let x = images.narrow(0, 0, 32).expect("x");
    let goal = Goal::untargeted(&labels.narrow(0, 0, 32).expect("y"));
    let mut g = c.benchmark_group("mnist-cnn/b32/norms");
    g.sample_size(10);
    for (label, budget) in [
        ("pgd10_l2", Budget::l2(1.5)),
        ("pgd10_l1", Budget::l1(10.0)),
    ] {
        let pgd = Pgd::new(budget.expect("budget"))
            .steps(10)
            .check_gradient(false);
        g.bench_function(label, |b| b.iter(|| pgd.run(cnn, &x, &goal).expect("pgd")));
    }
    g.finish();
}

criterion_group!(attack_benches, benches);
criterion_main!(attack_benches);
