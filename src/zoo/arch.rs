//! Architectures of the shipped models, with PyTorch-compatible tensor names.
//!
//! Names follow `nn.Sequential` numbering, so a state dict saved from the equivalent PyTorch
//! model loads here unchanged and vice versa:
//!
//! ```text
//! mnist-linear   fc = nn.Linear(784, 10)                                  on x.flatten(1)
//! small-cnn      features = nn.Sequential(Conv2d(1,32,3), ReLU, Conv2d(32,32,3), ReLU,
//!                                         MaxPool2d(2), Conv2d(32,64,3), ReLU,
//!                                         Conv2d(64,64,3), ReLU, MaxPool2d(2))
//!                classifier = nn.Sequential(Linear(1024,200), ReLU, Dropout(0.5),
//!                                           Linear(200,200), ReLU, Linear(200,10))
//! ```
//! (SmallCNN of Zhang et al. 2019, TRADES, arXiv:1901.08573; we train it without dropout, which
//! keeps training deterministic — the Dropout slot keeps the numbering.)

use std::collections::HashMap;

use candle_core::{Module, Tensor};
use candle_nn::Conv2dConfig;

use crate::layers::{forward_chain, ChainLayer, Conv2d, Linear};

/// One parameter tensor of an architecture.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    /// PyTorch-style name, e.g. `features.0.weight`.
    pub name: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Fan-in of the layer, for PyTorch's default initialization U(−1/√fan_in, 1/√fan_in).
    pub fan_in: usize,
}

/// Softmax regression on flattened 28×28 images: `logits = W·x + b`.
#[derive(Debug, Clone)]
pub struct MnistLinear {
    fc: Linear,
}

/// The TRADES SmallCNN for 28×28 grey images, 10 classes.
#[derive(Debug, Clone)]
pub struct SmallCnn {
    convs: [Conv2d; 4],
    fcs: [Linear; 3],
}

fn spec(name: &str, shape: &[usize], fan_in: usize) -> ParamSpec {
    ParamSpec {
        name: name.to_string(),
        shape: shape.to_vec(),
        fan_in,
    }
}

fn linear_specs(prefix: &str, inp: usize, out: usize) -> [ParamSpec; 2] {
    [
        spec(&format!("{prefix}.weight"), &[out, inp], inp),
        spec(&format!("{prefix}.bias"), &[out], inp),
    ]
}

fn conv_specs(prefix: &str, inp: usize, out: usize) -> [ParamSpec; 2] {
    [
        spec(&format!("{prefix}.weight"), &[out, inp, 3, 3], inp * 9),
        spec(&format!("{prefix}.bias"), &[out], inp * 9),
    ]
}

/// Indices of the convolutions in `features` and of the linear layers in `classifier`.
const CONV_SLOTS: [(usize, usize, usize); 4] = [(0, 1, 32), (2, 32, 32), (5, 32, 64), (7, 64, 64)];
const FC_SLOTS: [(usize, usize, usize); 3] = [(0, 1024, 200), (3, 200, 200), (5, 200, 10)];

impl MnistLinear {
    /// Parameter names and shapes.
    pub fn params() -> Vec<ParamSpec> {
        linear_specs("fc", 784, 10).to_vec()
    }

    /// Build from named tensors (as loaded from safetensors); `trainable` as
    /// [`Linear::trainable`].
    pub(crate) fn from_tensors(t: &HashMap<String, Tensor>, trainable: bool) -> Option<Self> {
        let fc = Linear::new(t.get("fc.weight")?.clone(), Some(t.get("fc.bias")?.clone())).ok()?;
        Some(Self {
            fc: if trainable { fc.trainable() } else { fc },
        })
    }
}

impl Module for MnistLinear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.fc.forward(&x.flatten_from(1)?)
    }
}

impl SmallCnn {
    /// Parameter names and shapes.
    pub fn params() -> Vec<ParamSpec> {
        let convs = CONV_SLOTS
            .iter()
            .flat_map(|&(i, inp, out)| conv_specs(&format!("features.{i}"), inp, out));
        let fcs = FC_SLOTS
            .iter()
            .flat_map(|&(i, inp, out)| linear_specs(&format!("classifier.{i}"), inp, out));
        convs.chain(fcs).collect()
    }

    /// Build from named tensors (as loaded from safetensors); `trainable` as
    /// [`Conv2d::trainable`] and [`Linear::trainable`].
    pub(crate) fn from_tensors(t: &HashMap<String, Tensor>, trainable: bool) -> Option<Self> {
        let conv = |i: usize| -> Option<Conv2d> {
            let w = t.get(&format!("features.{i}.weight"))?.clone();
            let b = t.get(&format!("features.{i}.bias"))?.clone();
            let conv = Conv2d::new(w, Some(b), Conv2dConfig::default()).ok()?;
            let conv = if trainable { conv.trainable() } else { conv };
            Some(conv.with_relu())
        };
        let fc = |i: usize| -> Option<Linear> {
            let w = t.get(&format!("classifier.{i}.weight"))?.clone();
            let b = t.get(&format!("classifier.{i}.bias"))?.clone();
            let fc = Linear::new(w, Some(b)).ok()?;
            Some(if trainable { fc.trainable() } else { fc })
        };
        Some(Self {
            convs: [conv(0)?, conv(2)?, conv(5)?, conv(7)?],
            fcs: [fc(0)?.with_relu(), fc(3)?.with_relu(), fc(5)?],
        })
    }
}

impl Module for SmallCnn {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let [c1, c2, c3, c4] = &self.convs;
        let [f1, f2, f3] = &self.fcs;
        // each layer carries its ReLU (fused on the fast path); on the CPU the whole network is
        // one op, with an input-only backward
        forward_chain(
            x,
            &[
                ChainLayer::Conv(c1),
                ChainLayer::Conv(c2),
                ChainLayer::MaxPool(2, 2),
                ChainLayer::Conv(c3),
                ChainLayer::Conv(c4),
                ChainLayer::MaxPool(2, 2),
                ChainLayer::Linear(f1),
                ChainLayer::Linear(f2),
                ChainLayer::Linear(f3),
            ],
        )
    }
}
