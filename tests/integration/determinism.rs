//! Same seed, same result: repeated runs are bitwise equal, thread counts do not change the
//! outcome, and different seeds give different random starts.

use crate::common;

use std::process::Command;

use candle_core::{Device, Module, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, Linear};
use common::{host, pixels, uniform};
use perturb::{Adversarial, Attack, Budget, Goal, Norm, Pgd};
use rand::{rngs::StdRng, SeedableRng};

/// A CNN large enough for candle's CPU kernels to split work across threads:
/// conv(1→16, 3×3) → ReLU → conv(16→32, 3×3, stride 2) → ReLU → max-pool 2 → linear(→10).
struct Cnn {
    c1: Conv2d,
    c2: Conv2d,
    fc: Linear,
}

impl Cnn {
    fn new() -> Self {
        let dev = Device::Cpu;
        let mut rng = StdRng::seed_from_u64(1234);
        let mut t = |n: usize, shape: &[usize], s: f32| {
            Tensor::from_vec(uniform(&mut rng, n, s), shape, &dev).unwrap()
        };
        let c1 = Conv2d::new(
            t(16 * 9, &[16, 1, 3, 3], 0.5),
            Some(t(16, &[16], 0.1)),
            Default::default(),
        );
        let cfg = Conv2dConfig {
            stride: 2,
            ..Default::default()
        };
        let c2 = Conv2d::new(
            t(32 * 16 * 9, &[32, 16, 3, 3], 0.15),
            Some(t(32, &[32], 0.1)),
            cfg,
        );
        let fc = Linear::new(
            t(10 * 32 * 36, &[10, 32 * 36], 0.05),
            Some(t(10, &[10], 0.1)),
        );
        Self { c1, c2, fc }
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

fn attack(norm: Norm, seed: u64) -> perturb::Result<Adversarial> {
    let n = 32;
    let mut rng = StdRng::seed_from_u64(99);
    let x = Tensor::from_vec(pixels(&mut rng, n * 784), (n, 1, 28, 28), &Device::Cpu)?;
    let labels: Vec<u32> = (0..n as u32).map(|i| i % 10).collect();
    let y = Tensor::new(labels.as_slice(), &Device::Cpu)?;
    let eps = match norm {
        Norm::Linf => 0.05,
        Norm::L2 => 0.5,
        Norm::L1 => 5.0,
    };
    Pgd::new(Budget::new(norm, eps)?).steps(5).seed(seed).run(
        &Cnn::new(),
        &x,
        &Goal::untargeted(&y),
    )
}

#[test]
fn same_seed_is_bitwise_equal() -> perturb::Result<()> {
    for norm in [Norm::Linf, Norm::L2, Norm::L1] {
        let (a, b) = (attack(norm, 5)?, attack(norm, 5)?);
        let (xa, xb) = (host(&a.x_adv), host(&b.x_adv));
        assert!(
            xa.iter().zip(&xb).all(|(p, q)| p.to_bits() == q.to_bits()),
            "{norm}"
        );
        assert_eq!(a.success, b.success);
        assert_eq!(a.gradient_evals, b.gradient_evals);
    }
    Ok(())
}

#[test]
fn different_seeds_give_different_starts() -> perturb::Result<()> {
    for norm in [Norm::Linf, Norm::L2, Norm::L1] {
        let (a, b) = (host(&attack(norm, 1)?.x_adv), host(&attack(norm, 2)?.x_adv));
        let differing = a.iter().zip(&b).filter(|(p, q)| p != q).count();
        // Many pixels end on the same ε bound (L∞) or are zeroed by the exact L1 projection
        // after large sparse steps, whatever the start; the rest must differ.
        assert!(
            differing > a.len() / 100,
            "{norm}: only {differing} pixels differ"
        );
    }
    Ok(())
}

/// Child process: attack with every norm and write success masks and x_adv to the file named by
/// `PERTURB_DETERMINISM_OUT`. Run by `thread_count_does_not_change_the_result`.
#[test]
#[ignore = "helper run in a child process by thread_count_does_not_change_the_result"]
fn child_writes_adversarials() -> perturb::Result<()> {
    let Ok(path) = std::env::var("PERTURB_DETERMINISM_OUT") else {
        return Ok(());
    };
    let mut out = String::new();
    for norm in [Norm::Linf, Norm::L2, Norm::L1] {
        let adv = attack(norm, 5)?;
        let success: Vec<String> = adv
            .success
            .iter()
            .map(|s| u8::from(*s).to_string())
            .collect();
        out.push_str(&success.join(","));
        out.push('\n');
        let xs: Vec<String> = host(&adv.x_adv)
            .iter()
            .map(|v| v.to_bits().to_string())
            .collect();
        out.push_str(&xs.join(","));
        out.push('\n');
    }
    std::fs::write(path, out).expect("write child output");
    Ok(())
}

fn run_child(threads: usize) -> Vec<Vec<String>> {
    let dir = std::env::temp_dir().join(format!("perturb-det-{}-{threads}", std::process::id()));
    let exe = std::env::current_exe().expect("test binary path");
    let status = Command::new(exe)
        .args([
            "determinism::child_writes_adversarials",
            "--exact",
            "--ignored",
            "--test-threads",
            "1",
        ])
        .env("RAYON_NUM_THREADS", threads.to_string())
        .env("PERTURB_DETERMINISM_OUT", &dir)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("spawn child");
    assert!(status.success());
    let text = std::fs::read_to_string(&dir).expect("child output");
    let _ = std::fs::remove_file(&dir);
    text.lines()
        .map(|l| l.split(',').map(String::from).collect())
        .collect()
}

/// RAYON_NUM_THREADS=1 vs 2 in separate processes: equal success masks, x_adv within 1e-5
/// (printed: whether they are bitwise equal).
#[test]
fn thread_count_does_not_change_the_result() {
    let (one, two) = (run_child(1), run_child(2));
    assert_eq!(one.len(), 6);
    for (norm, i) in [(Norm::Linf, 0), (Norm::L2, 2), (Norm::L1, 4)] {
        assert_eq!(one[i], two[i], "{norm}: success masks differ");
        let parse = |v: &[String]| -> Vec<f32> {
            v.iter()
                .map(|b| f32::from_bits(b.parse().expect("bits")))
                .collect()
        };
        let (a, b) = (parse(&one[i + 1]), parse(&two[i + 1]));
        let max_diff = a
            .iter()
            .zip(&b)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0f32, f32::max);
        println!(
            "{norm}: 1 vs 2 threads, bitwise equal = {}, max |diff| = {max_diff:e}",
            one[i + 1] == two[i + 1]
        );
        assert!(max_diff <= 1e-5, "{norm}: max diff {max_diff}");
    }
}
