//! PGD-10 against ten loss gradients, alternated: the attack's overhead per step, with the
//! machine's drift cancelled.
//!
//! criterion times each function in its own window of seconds, so on a shared machine whose
//! speed drifts 10–20 % within minutes a ratio of two of its figures carries that drift. Here
//! every round times ten `loss_and_grad` calls, then one PGD-10 (`perturb`, the steps alone),
//! then one judged PGD-10 (`run`), back to back, and the figure is the median over rounds of
//! the per-round ratio. Every shipped model at batch 32 and 128 (EfficientNet-Lite0 at 8 and
//! 32, a few rounds: one PGD-10 at batch 32 takes about 10 s on two cores).
//!
//! `RAYON_NUM_THREADS=2 cargo bench --bench step_ratio` (about 4 minutes on two cores);
//! `ROUNDS=n` sets the MNIST rounds (default 15), `MODELS=mnist-cnn,…` a subset.

mod common;

use std::time::Instant;

use candle_core::{Device, Tensor};
use perturb::data::Mnist;
use perturb::{loss_and_grad, zoo, Attack, Budget, Classifier, Goal, Loss, Pgd};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn seconds(f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64()
}

/// Median per-round ratios (steps alone, judged) of PGD-10 to ten gradients, and the median
/// time of ten gradients in ms.
fn ratios(model: &dyn Classifier, x: &Tensor, goal: &Goal, pgd: &Pgd, rounds: usize) -> [f64; 3] {
    let ten_grads = || {
        for _ in 0..10 {
            loss_and_grad(model, x, goal, Loss::CrossEntropy).expect("grad");
        }
    };
    // warm-up: allocator, caches, thread pool
    ten_grads();
    pgd.perturb(model, x, goal).expect("pgd");
    let (mut steps, mut judged, mut unit) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let g = seconds(ten_grads);
        let p = seconds(|| {
            pgd.perturb(model, x, goal).expect("pgd");
        });
        let r = seconds(|| {
            pgd.run(model, x, goal).expect("pgd");
        });
        steps.push(p / g);
        judged.push(r / g);
        unit.push(g * 1e3);
    }
    [median(steps), median(judged), median(unit)]
}

fn main() {
    perturb::tune_allocator();
    let dev = Device::Cpu;
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    let wanted = std::env::var("MODELS").ok();
    let wanted = |name: &str| {
        wanted
            .as_deref()
            .is_none_or(|w| w.split(',').any(|m| m == name))
    };
    let threads = rayon::current_num_threads();
    println!("PGD-10 / (10 x loss_and_grad), median of per-round ratios, {threads} threads");
    println!("model, batch, rounds: steps alone (perturb), judged (run), 10 gradients (ms)");
    let report = |name: &str, n: usize, rounds: usize, [s, j, g]: [f64; 3]| {
        println!("{name:20} b{n:<4} x{rounds:<3} {s:.3}  {j:.3}  {g:10.1}");
    };
    let (images, labels) = Mnist::load_test_default(&dev).expect("mnist");
    let pgd = Pgd::new(Budget::linf(0.1).expect("budget"))
        .steps(10)
        .check_gradient(false);
    for name in ["mnist-linear", "mnist-cnn", "mnist-cnn-robust"] {
        if !wanted(name) {
            continue;
        }
        let model = zoo::load(name, &dev).expect("model");
        for n in [32usize, 128] {
            let x = images.narrow(0, 0, n).expect("x");
            let goal = Goal::untargeted(&labels.narrow(0, 0, n).expect("y"));
            report(name, n, rounds, ratios(&model, &x, &goal, &pgd, rounds));
        }
    }
    let name = "efficientnet-lite0";
    if wanted(name) {
        let net = zoo::load(name, &dev).expect("model");
        let photos = common::photos(&dev);
        let pgd = common::pgd10_photo();
        for (n, rounds) in [(8usize, 7usize), (32, 3)] {
            let (x, goal) = common::photo_batch(&net, &photos, n);
            report(name, n, rounds, ratios(&net, &x, &goal, &pgd, rounds));
        }
    }
}
