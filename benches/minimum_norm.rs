//! The minimum-norm attacks (DeepFool, Carlini–Wagner L2, DDN, FAB-T) and the transfer attack
//! MI-FGSM (plain, and with DI and TI) on the shipped MNIST CNNs at batch 32 and 128.
//!
//! `*/in_gradients/*` gives each attack's cost in units of ten loss gradients timed next to it
//! (`common/ten_gradients.rs`) at a fixed ten gradients per sample: MI-FGSM's ten steps, DDN's
//! ten steps, CW's ten Adam steps of one round without early abort. The figure to watch is then
//! the attack's overhead per gradient (1.0: none). DeepFool and FAB-T spend a variable number of
//! gradients (they stop per sample), so they are timed plainly with the passes they spent
//! printed once.
//!
//! `RAYON_NUM_THREADS=2 cargo bench --bench minimum_norm`.

#[path = "common/ten_gradients.rs"]
mod ten_gradients;

use candle_core::Device;
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};
use perturb::attack::{CarliniWagner, Ddn, DeepFool, Fab, MiFgsm, MinimumNorm};
use perturb::data::Mnist;
use perturb::{zoo, Attack, Budget, Goal, Norm};
use ten_gradients::TenGradients;

fn plain(c: &mut Criterion) {
    perturb::tune_allocator();
    let dev = Device::Cpu;
    let (images, labels) = Mnist::load_test_default(&dev).expect("mnist");
    let deepfool = DeepFool::new(Norm::L2).check_gradient(false);
    let cw = CarliniWagner::new()
        .steps(100)
        .binary_steps(1)
        .c(1.0)
        .check_gradient(false);
    let ddn = Ddn::new().check_gradient(false);
    let fab = Fab::new(Norm::L2)
        .steps(20)
        .targets(3)
        .check_gradient(false);
    for name in ["mnist-cnn", "mnist-cnn-fgsm-rs"] {
        let model = zoo::load(name, &dev).expect("model");
        let n = 32;
        let x = images.narrow(0, 0, n).expect("x");
        let goal = Goal::untargeted(&labels.narrow(0, 0, n).expect("y"));
        let mut g = c.benchmark_group(format!("{name}/b{n}"));
        g.sample_size(10);
        let attacks: [(&str, &dyn MinimumNorm); 4] = [
            ("deepfool_l2", &deepfool),
            ("cw_l2_100", &cw),
            ("ddn_100", &ddn),
            ("fab_t_l2_20x3", &fab),
        ];
        for (label, attack) in attacks {
            let spent = attack.minimize(&model, &x, &goal).expect("attack");
            eprintln!(
                "{name}/b{n}/{label}: {} gradients, {} forward passes per batch",
                spent.gradient_evals, spent.forward_evals
            );
            g.bench_function(label, |b| {
                b.iter(|| attack.minimize(&model, &x, &goal).expect("attack"))
            });
        }
        g.finish();
    }
}

fn in_gradients(c: &mut Criterion<TenGradients>) {
    perturb::tune_allocator();
    let dev = Device::Cpu;
    let (images, labels) = Mnist::load_test_default(&dev).expect("mnist");
    let linf = Budget::linf(0.2).expect("budget");
    let mi = MiFgsm::new(linf).check_gradient(false);
    let mi_di_ti = mi.clone().diversity(0.5).ti_kernel(5);
    let cw10 = CarliniWagner::new()
        .steps(10)
        .binary_steps(1)
        .abort_early(false)
        .check_gradient(false);
    let ddn10 = Ddn::new().steps(10).check_gradient(false);
    for name in ["mnist-cnn", "mnist-cnn-fgsm-rs"] {
        let model = zoo::load(name, &dev).expect("model");
        for n in [32usize, 128] {
            let x = images.narrow(0, 0, n).expect("x");
            let goal = Goal::untargeted(&labels.narrow(0, 0, n).expect("y"));
            let mut g = c.benchmark_group(format!("{name}/b{n}/in_gradients"));
            g.sample_size(10).sampling_mode(SamplingMode::Flat);
            g.bench_function("mi_fgsm10", |b| {
                b.iter_custom(|iters| {
                    ten_gradients::rounds(iters, &model, &x, &goal, || {
                        mi.run(&model, &x, &goal).expect("mi-fgsm");
                    })
                })
            });
            g.bench_function("mi_fgsm10_di_ti", |b| {
                b.iter_custom(|iters| {
                    ten_gradients::rounds(iters, &model, &x, &goal, || {
                        mi_di_ti.run(&model, &x, &goal).expect("mi-fgsm");
                    })
                })
            });
            g.bench_function("cw10", |b| {
                b.iter_custom(|iters| {
                    ten_gradients::rounds(iters, &model, &x, &goal, || {
                        cw10.minimize(&model, &x, &goal).expect("cw");
                    })
                })
            });
            g.bench_function("ddn10", |b| {
                b.iter_custom(|iters| {
                    ten_gradients::rounds(iters, &model, &x, &goal, || {
                        ddn10.minimize(&model, &x, &goal).expect("ddn");
                    })
                })
            });
            g.finish();
        }
    }
}

criterion_group!(plain_benches, plain);
criterion_group! {
    name = ratio_benches;
    config = Criterion::default().with_measurement(TenGradients);
    targets = in_gradients
}
criterion_main!(plain_benches, ratio_benches);
