//! EfficientNet-Lite0 (Tan & Le 2019; the "Lite" variant of TensorFlow's model garden: ReLU6, no
//! squeeze-and-excitation, fixed stem and head), ImageNet-1k, 224×224 RGB.
//!
//! Tensor names are those of the PyTorch port (PyPI `efficientnet-lite-pytorch` 0.1.0), so its
//! state dict converts unchanged (`examples/convert_efficientnet.rs`):
//!
//! ```text
//! _conv_stem 3→32 k3 s2, _bn0, ReLU6
//! _blocks.0 … _blocks.15   MBConv: [_expand_conv 1×1, _bn0, ReLU6] (expansion ≠ 1 only),
//!                          _depthwise_conv k×k stride s, _bn1, ReLU6, _project_conv 1×1, _bn2,
//!                          + input when stride 1 and channels in = out
//! _conv_head 320→1280 1×1, _bn1, ReLU6, global average pool, _fc 1280→1000
//! ```
//! Convolutions use TensorFlow's "same" padding (asymmetric for stride 2), batch norms have
//! ε = 1e-3 and are folded into the preceding convolution at load time (inference only). The
//! model takes pixels in `[0, 1]` and scales them to `[-1, 1]` itself, as the network was trained.

use std::collections::HashMap;

use candle_core::{DType, Module, Tensor};
use candle_nn::Conv2dConfig;

use super::arch::ParamSpec;
use crate::layers::{same_padding, Conv2d, DepthwiseConv2d, Linear};

/// Batch-norm ε of the TensorFlow original.
const BN_EPS: f64 = 1e-3;

/// The seven stages of Lite0: (repeats, kernel, stride, expansion, in, out channels).
const STAGES: [(usize, usize, usize, usize, usize, usize); 7] = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
];

const STEM: usize = 32;
const HEAD: usize = 1280;
const CLASSES: usize = 1000;

/// One MBConv block of the expanded list: (kernel, stride, expansion, in, out).
fn blocks() -> Vec<(usize, usize, usize, usize, usize)> {
    let mut out = Vec::new();
    for &(r, k, s, e, i, o) in &STAGES {
        out.push((k, s, e, i, o));
        out.extend(std::iter::repeat_n((k, 1, e, o, o), r - 1));
    }
    out
}

/// EfficientNet-Lite0 for inference, batch norms folded.
#[derive(Debug, Clone)]
pub struct EfficientNetLite0 {
    /// The stem as a stride-1 convolution with fused ReLU6, subsampled by 2 afterwards: four
    /// times the stem's few multiply-adds, but the constant-weight kernels forward and backward
    /// instead of candle's strided conv2d, whose backward also computes a weight gradient.
    stem: Conv2d,
    blocks: Vec<MbConv>,
    head: Conv2d,
    fc: Linear,
}

#[derive(Debug, Clone)]
struct MbConv {
    expand: Option<Conv2d>,
    depthwise: DepthwiseConv2d,
    project: Conv2d,
    skip: bool,
}

fn spec(name: String, shape: &[usize], fan_in: usize) -> ParamSpec {
    ParamSpec {
        name,
        shape: shape.to_vec(),
        fan_in,
    }
}

fn conv_bn_specs(conv: &str, bn: &str, shape: [usize; 4]) -> Vec<ParamSpec> {
    let fan_in = shape[1] * shape[2] * shape[3];
    let mut v = vec![spec(format!("{conv}.weight"), &shape, fan_in)];
    for p in ["weight", "bias", "running_mean", "running_var"] {
        v.push(spec(format!("{bn}.{p}"), &[shape[0]], fan_in));
    }
    v
}

/// Fold a batch norm into the convolution before it: `w' = w·γ/√(σ²+ε)`, `b' = β − μ·γ/√(σ²+ε)`
/// (computed in f64).
fn fold(t: &HashMap<String, Tensor>, conv: &str, bn: &str) -> Option<(Tensor, Tensor)> {
    let w = t.get(&format!("{conv}.weight"))?;
    let get = |p: &str| -> Option<Vec<f64>> {
        t.get(&format!("{bn}.{p}"))?
            .to_dtype(DType::F64)
            .ok()?
            .to_vec1::<f64>()
            .ok()
    };
    let (gamma, beta, mean, var) = (
        get("weight")?,
        get("bias")?,
        get("running_mean")?,
        get("running_var")?,
    );
    let scale: Vec<f64> = gamma
        .iter()
        .zip(&var)
        .map(|(g, v)| g / (v + BN_EPS).sqrt())
        .collect();
    let bias: Vec<f32> = beta
        .iter()
        .zip(&mean)
        .zip(&scale)
        .map(|((b, m), s)| (b - m * s) as f32)
        .collect();
    let o = w.dim(0).ok()?;
    let per = w.elem_count() / o.max(1);
    let wv = w
        .to_dtype(DType::F64)
        .ok()?
        .flatten_all()
        .ok()?
        .to_vec1::<f64>()
        .ok()?;
    let folded: Vec<f32> = wv
        .iter()
        .enumerate()
        .map(|(i, x)| (x * scale[i / per]) as f32)
        .collect();
    let dev = w.device();
    Some((
        Tensor::from_vec(folded, w.dims(), dev).ok()?,
        Tensor::from_vec(bias, o, dev).ok()?,
    ))
}

impl EfficientNetLite0 {
    /// Parameter names and shapes (the batch-norm statistics included).
    pub fn params() -> Vec<ParamSpec> {
        let mut v = conv_bn_specs("_conv_stem", "_bn0", [STEM, 3, 3, 3]);
        for (b, (k, _, e, i, o)) in blocks().into_iter().enumerate() {
            let p = format!("_blocks.{b}");
            let mid = i * e;
            if e != 1 {
                v.extend(conv_bn_specs(
                    &format!("{p}._expand_conv"),
                    &format!("{p}._bn0"),
                    [mid, i, 1, 1],
                ));
            }
            v.extend(conv_bn_specs(
                &format!("{p}._depthwise_conv"),
                &format!("{p}._bn1"),
                [mid, 1, k, k],
            ));
            v.extend(conv_bn_specs(
                &format!("{p}._project_conv"),
                &format!("{p}._bn2"),
                [o, mid, 1, 1],
            ));
        }
        v.extend(conv_bn_specs("_conv_head", "_bn1", [HEAD, 320, 1, 1]));
        v.push(spec("_fc.weight".into(), &[CLASSES, HEAD], HEAD));
        v.push(spec("_fc.bias".into(), &[CLASSES], HEAD));
        v
    }

    /// Build from named tensors (names and shapes already checked against [`params`]).
    ///
    /// [`params`]: EfficientNetLite0::params
    pub(crate) fn from_tensors(t: &HashMap<String, Tensor>) -> Option<Self> {
        let pointwise = |conv: &str, bn: &str, relu6: bool| -> Option<Conv2d> {
            let (w, b) = fold(t, conv, bn)?;
            let c = Conv2d::new(w, Some(b), Conv2dConfig::default()).ok()?;
            Some(if relu6 { c.with_relu6() } else { c })
        };
        let (stem_w, stem_b) = fold(t, "_conv_stem", "_bn0")?;
        let stem = Conv2d::new(stem_w, Some(stem_b), Conv2dConfig::default())
            .ok()?
            .with_relu6();
        let mut blocks_out = Vec::new();
        for (b, (_, s, e, i, o)) in blocks().into_iter().enumerate() {
            let p = format!("_blocks.{b}");
            let expand = if e != 1 {
                Some(pointwise(
                    &format!("{p}._expand_conv"),
                    &format!("{p}._bn0"),
                    true,
                )?)
            } else {
                None
            };
            let (dw, db) = fold(t, &format!("{p}._depthwise_conv"), &format!("{p}._bn1"))?;
            blocks_out.push(MbConv {
                expand,
                depthwise: DepthwiseConv2d::new(dw, Some(db), s).ok()?.with_relu6(),
                project: pointwise(&format!("{p}._project_conv"), &format!("{p}._bn2"), false)?,
                skip: s == 1 && i == o,
            });
        }
        Some(Self {
            stem,
            blocks: blocks_out,
            head: pointwise("_conv_head", "_bn1", true)?,
            fc: Linear::new(
                t.get("_fc.weight")?.clone(),
                Some(t.get("_fc.bias")?.clone()),
            )
            .ok()?,
        })
    }
}

impl Module for MbConv {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = match &self.expand {
            Some(e) => e.forward(x)?,
            None => x.clone(),
        };
        let h = self.project.forward(&self.depthwise.forward(&h)?)?;
        if self.skip {
            h + x
        } else {
            Ok(h)
        }
    }
}

impl Module for EfficientNetLite0 {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        // pixels in [0, 1] → the network's [-1, 1]
        let x = x.affine(2.0, -1.0)?;
        let (n, (pt, pb), (pl, pr)) = (x.dim(0)?, same_padding(h, 3, 2), same_padding(w, 3, 2));
        let (oh, ow) = (h.div_ceil(2), w.div_ceil(2));
        // stride 1 gives h + pt + pb − 2 rows; pad so that there are exactly 2·oh, then keep the
        // even ones (the extra zero rows only feed odd, discarded outputs)
        let extra_h = (2 * oh + 2).saturating_sub(h + pt + pb);
        let extra_w = (2 * ow + 2).saturating_sub(w + pl + pr);
        let x = x
            .pad_with_zeros(2, pt, pb + extra_h)?
            .pad_with_zeros(3, pl, pr + extra_w)?;
        let full = self.stem.forward(&x)?;
        let mut h = full
            .narrow(2, 0, 2 * oh)?
            .narrow(3, 0, 2 * ow)?
            .reshape((n, STEM, oh, 2, ow, 2))?
            .narrow(3, 0, 1)?
            .narrow(5, 0, 1)?
            .reshape((n, STEM, oh, ow))?;
        for b in &self.blocks {
            h = b.forward(&h)?;
        }
        let h = self.head.forward(&h)?.mean((2, 3))?;
        self.fc.forward(&h)
    }
}
