//! Shared fixtures: seeded small models built from explicit weights, in f32 or f64.
#![allow(dead_code)]

pub mod momentum;

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{BatchNorm, Conv2d, Conv2dConfig, Linear, ModuleT};
use rand::{rngs::StdRng, Rng, SeedableRng};

/// `n` values uniform in [-scale, scale].
pub fn uniform(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-scale..=scale)).collect()
}

/// `n` pixels uniform in [0, 1].
pub fn pixels(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(0.0..=1.0)).collect()
}

/// Softmax regression `logits = x·Wᵀ + b` on flattened inputs, weights kept for oracles.
#[derive(Clone)]
pub struct LinearModel {
    pub w: Vec<f32>, // [k, d] row-major
    pub b: Vec<f32>, // [k]
    pub k: usize,
    pub d: usize,
    wt: Tensor,
    bt: Tensor,
}

impl LinearModel {
    pub fn new(w: Vec<f32>, b: Vec<f32>, k: usize, d: usize) -> Self {
        let wt = Tensor::from_vec(w.clone(), (k, d), &Device::Cpu).unwrap();
        let bt = Tensor::from_vec(b.clone(), k, &Device::Cpu).unwrap();
        Self { w, b, k, d, wt, bt }
    }

    pub fn random(seed: u64, k: usize, d: usize) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let w = uniform(&mut rng, k * d, 1.0);
        let b = uniform(&mut rng, k, 0.5);
        Self::new(w, b, k, d)
    }

    /// Logits in f64 on the host for one flattened sample.
    pub fn logits_f64(&self, x: &[f32]) -> Vec<f64> {
        (0..self.k)
            .map(|j| {
                let row = &self.w[j * self.d..(j + 1) * self.d];
                let dot: f64 = row.iter().zip(x).map(|(w, x)| *w as f64 * *x as f64).sum();
                dot + self.b[j] as f64
            })
            .collect()
    }
}

impl Module for LinearModel {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.flatten_from(1)?
            .matmul(&self.wt.t()?)?
            .broadcast_add(&self.bt)
    }
}

/// A small CNN: conv(1→4, 3×3, stride 2, padding 1) → batch norm (eval) → ReLU → max-pool 2×2
/// (perturb's) → linear(4·2·2 → 3), on `[N, 1, 8, 8]` inputs. Same weights in any float dtype.
pub struct SmallCnn {
    conv: Conv2d,
    bn: BatchNorm,
    fc: Linear,
}

impl SmallCnn {
    pub fn new(seed: u64, dtype: DType) -> Self {
        let dev = Device::Cpu;
        let mut rng = StdRng::seed_from_u64(seed);
        let t = |v: Vec<f32>, shape: &[usize]| {
            Tensor::from_vec(v, shape, &dev)
                .unwrap()
                .to_dtype(dtype)
                .unwrap()
        };
        let conv_w = t(uniform(&mut rng, 4 * 9, 0.8), &[4, 1, 3, 3]);
        let conv_b = t(uniform(&mut rng, 4, 0.2), &[4]);
        let cfg = Conv2dConfig {
            padding: 1,
            stride: 2,
            ..Default::default()
        };
        let conv = Conv2d::new(conv_w, Some(conv_b), cfg);
        let mean = t(uniform(&mut rng, 4, 0.3), &[4]);
        let var: Vec<f32> = uniform(&mut rng, 4, 0.5).iter().map(|v| 1.0 + v).collect();
        let gamma: Vec<f32> = uniform(&mut rng, 4, 0.5).iter().map(|v| 1.0 + v).collect();
        let beta = t(uniform(&mut rng, 4, 0.2), &[4]);
        let bn = BatchNorm::new(4, mean, t(var, &[4]), t(gamma, &[4]), beta, 1e-5).unwrap();
        let fc = Linear::new(
            t(uniform(&mut rng, 3 * 16, 0.8), &[3, 16]),
            Some(t(uniform(&mut rng, 3, 0.2), &[3])),
        );
        Self { conv, bn, fc }
    }
}

impl Module for SmallCnn {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.conv.forward(x)?;
        let h = self.bn.forward_t(&h, false)?.relu()?;
        let h = perturb::layers::max_pool2d(&h, 2, 2)?;
        self.fc.forward(&h.flatten_from(1)?)
    }
}

/// Host copy of a tensor as f32.
pub fn host(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// The bits of an f32 tensor's values, for bit-for-bit comparisons.
pub fn bits(t: &Tensor) -> Vec<u32> {
    host(t).iter().map(|v| v.to_bits()).collect()
}

/// The largest absolute value of a tensor.
pub fn max_abs(t: &Tensor) -> f32 {
    host(t).iter().fold(0f32, |m, v| m.max(v.abs()))
}

/// The first `n` MNIST test digits and their labels.
pub fn test_digits(n: usize) -> (Tensor, Tensor) {
    let (images, labels) =
        perturb::data::Mnist::load_test_default(&candle_core::Device::Cpu).unwrap();
    (
        images.narrow(0, 0, n).unwrap(),
        labels.narrow(0, 0, n).unwrap(),
    )
}

/// Peak resident set size of this process, in KiB (Linux): what the child processes of the
/// memory and bomb tests report.
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
