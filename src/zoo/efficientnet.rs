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
use crate::layers::{
    forward_chain, forward_residual, same_padding, ChainLayer, Conv2d, DepthwiseConv2d, Linear,
};

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
    /// The stride-2 3×3 stem as a stride-1 2×2 convolution over the space-to-depth input (each
    /// 2×2 pixel block's 3 channels become 12; taps past the 3×3 kernel have zero weights), with
    /// fused ReLU6: the constant-weight kernels forward and backward instead of candle's strided
    /// conv2d (whose backward also computes a weight gradient), over the stride-2 outputs only.
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
        like(w, Tensor::from_vec(folded, w.dims(), dev).ok()?)?,
        like(w, Tensor::from_vec(bias, o, dev).ok()?)?,
    ))
}

/// `t`, made a variable when `source` is one: weights given as variables keep stock candle
/// autograd through the folding (every layer then takes candle's own ops).
fn like(source: &Tensor, t: Tensor) -> Option<Tensor> {
    if source.is_variable() {
        Some(candle_core::Var::from_tensor(&t).ok()?.as_tensor().clone())
    } else {
        Some(t)
    }
}

/// The input of the stride-2 3×3 stem with TensorFlow's "same" padding, as the space-to-depth
/// input of [`space_to_depth_kernel`]'s stride-1 2×2 kernel: padded to exactly `2·(oh + 1)` rows
/// and `2·(ow + 1)` columns (the extra zeros meet only zero weights), pixel `(2r + a, 2c + b)`
/// of channel `ch` becomes channel `4·ch + 2a + b` at `(r, c)`.
fn space_to_depth_input(x: &Tensor) -> candle_core::Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let ((pt, pb), (pl, pr)) = (same_padding(h, 3, 2), same_padding(w, 3, 2));
    let (oh, ow) = (h.div_ceil(2), w.div_ceil(2));
    let extra_h = (2 * oh + 2).saturating_sub(h + pt + pb);
    let extra_w = (2 * ow + 2).saturating_sub(w + pl + pr);
    x.pad_with_zeros(2, pt, pb + extra_h)?
        .pad_with_zeros(3, pl, pr + extra_w)?
        .reshape((n, c, oh + 1, 2, ow + 1, 2))?
        .permute((0, 1, 3, 5, 2, 4))?
        .contiguous()?
        .reshape((n, 4 * c, oh + 1, ow + 1))
}

/// The stride-2 `[O, 3, 3, 3]` stem kernel as a stride-1 `[O, 12, 2, 2]` kernel over the
/// space-to-depth input: `w'[o][4·c + 2a + b][p][q] = w[o][c][2p + a][2q + b]`, zero where
/// `2p + a` or `2q + b` is 3 (past the kernel).
fn space_to_depth_kernel(w: &Tensor) -> Option<Tensor> {
    let (o, c, kh, kw) = w.dims4().ok()?;
    if (kh, kw) != (3, 3) {
        return None;
    }
    let src = w.flatten_all().ok()?.to_vec1::<f32>().ok()?;
    let mut out = vec![0f32; o * c * 4 * 4];
    for oi in 0..o {
        for ci in 0..c {
            for (a, b, p, q) in (0..16).map(|t| (t >> 3, (t >> 2) & 1, (t >> 1) & 1, t & 1)) {
                let (i, j) = (2 * p + a, 2 * q + b);
                if i < 3 && j < 3 {
                    let to = ((oi * c + ci) * 4 + 2 * a + b) * 4 + 2 * p + q;
                    out[to] = src[((oi * c + ci) * 3 + i) * 3 + j];
                }
            }
        }
    }
    Tensor::from_vec(out, (o, 4 * c, 2, 2), w.device()).ok()
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
        let stem = Conv2d::new(
            like(&stem_w, space_to_depth_kernel(&stem_w)?)?,
            Some(stem_b),
            Conv2dConfig::default(),
        )
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
        // one autograd node per block: the expanded maps and their gradients stay inside it
        let mut layers = Vec::with_capacity(3);
        if let Some(e) = &self.expand {
            layers.push(ChainLayer::Conv(e));
        }
        layers.push(ChainLayer::Depthwise(&self.depthwise));
        layers.push(ChainLayer::Conv(&self.project));
        if self.skip {
            forward_residual(x, &layers)
        } else {
            forward_chain(x, &layers)
        }
    }
}

impl Module for EfficientNetLite0 {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        // pixels in [0, 1] → the network's [-1, 1]
        let x = x.affine(2.0, -1.0)?;
        let mut h = self.stem.forward(&space_to_depth_input(&x)?)?;
        for b in &self.blocks {
            h = b.forward(&h)?;
        }
        let h = self.head.forward(&h)?.mean((2, 3))?;
        self.fc.forward(&h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The space-to-depth stem equals candle's stride-2 convolution on the "same"-padded input,
    /// for even, odd and tiny sizes.
    #[test]
    fn space_to_depth_stem_equals_stride_2_convolution() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let w: Vec<f32> = (0..5 * 27)
            .map(|i| ((i * 37 % 19) as f32 - 9.0) / 9.0)
            .collect();
        let w = Tensor::from_vec(w, (5, 3, 3, 3), &dev)?;
        let w2 = space_to_depth_kernel(&w).expect("3x3 kernel");
        for (h, wd) in [(8, 8), (9, 11), (1, 2), (7, 4)] {
            let x: Vec<f32> = (0..2 * 3 * h * wd)
                .map(|i| ((i * 7919) % 23) as f32 / 23.0)
                .collect();
            let x = Tensor::from_vec(x, (2, 3, h, wd), &dev)?;
            let ((pt, pb), (pl, pr)) = (same_padding(h, 3, 2), same_padding(wd, 3, 2));
            let want = x
                .pad_with_zeros(2, pt, pb)?
                .pad_with_zeros(3, pl, pr)?
                .conv2d(&w, 0, 2, 1, 1)?;
            let got = space_to_depth_input(&x)?.conv2d(&w2, 0, 1, 1, 1)?;
            assert_eq!(got.dims(), want.dims(), "{h}x{wd}");
            let d = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(d < 1e-5, "{h}x{wd}: differs by {d}");
        }
        Ok(())
    }

    /// Every stage of the shipped network (stem, each block, head with pooling and classifier)
    /// with the fast kernels against the same folded weights as variables (every layer on
    /// candle's own ops and autograd), each on the same input: the fast stage's input at a photo.
    /// Values and input gradients of a fixed linear functional agree to 1e-5 of their largest
    /// entry. (End to end the two paths round differently, so deep in the network a few
    /// activations within rounding of a ReLU6 kink take different sides: tests/integration/imagenet.rs.)
    #[test]
    fn every_stage_has_stock_values_and_gradients_to_1e_5() -> candle_core::Result<()> {
        use crate::data::{load_photo, sample_photo, Fit, SAMPLE_PHOTOS};
        use candle_core::Var;
        let dev = Device::Cpu;
        let path = crate::zoo::models_dir().join("efficientnet-lite0.safetensors");
        let tensors = candle_core::safetensors::load(&path, &dev)?;
        let vars = tensors
            .iter()
            .map(|(k, t)| Ok((k.clone(), Var::from_tensor(t)?.as_tensor().clone())))
            .collect::<candle_core::Result<HashMap<_, _>>>()?;
        let (fast, stock) = (
            EfficientNetLite0::from_tensors(&tensors).expect("fast"),
            EfficientNetLite0::from_tensors(&vars).expect("stock"),
        );
        assert!(fast.stem.is_fast() && fast.blocks.iter().all(|b| b.depthwise.is_fast()));
        assert!(!stock.stem.is_fast() && stock.blocks.iter().all(|b| !b.depthwise.is_fast()));
        let photo = load_photo(sample_photo(SAMPLE_PHOTOS[0]), 224, Fit::ResizeCrop, &dev)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let max_abs = |t: &Tensor| t.abs()?.max_all()?.to_scalar::<f32>();
        // (values, input gradient of Σ probe·y) of `stage` at `x`
        let run = |stage: &dyn Fn(&Tensor) -> candle_core::Result<Tensor>, x: &Tensor| {
            let x = Var::from_tensor(x)?;
            let y = stage(x.as_tensor())?;
            let n = y.elem_count();
            let probe: Vec<f32> = (0..n)
                .map(|i| ((i * 7919) % 201) as f32 / 100.0 - 1.0)
                .collect();
            let probe = Tensor::from_vec(probe, y.shape(), &dev)?;
            let grads = (&y * &probe)?.sum_all()?.backward()?;
            let Some(g) = grads.get(x.as_tensor()) else {
                candle_core::bail!("no input gradient")
            };
            Ok::<_, candle_core::Error>((y, g.clone()))
        };
        let check = |name: &str,
                     f: &dyn Fn(&Tensor) -> candle_core::Result<Tensor>,
                     s: &dyn Fn(&Tensor) -> candle_core::Result<Tensor>,
                     x: &Tensor|
         -> candle_core::Result<Tensor> {
            let ((yf, gf), (ys, gs)) = (run(f, x)?, run(s, x)?);
            let (dy, my) = (max_abs(&(&yf - &ys)?)?, max_abs(&ys)?);
            let (dg, mg) = (max_abs(&(&gf - &gs)?)?, max_abs(&gs)?);
            assert!(my > 0.0 && dy <= 1e-5 * my, "{name}: values {dy} of {my}");
            assert!(
                mg > 0.0 && dg <= 1e-5 * mg,
                "{name}: gradients {dg} of {mg}"
            );
            f(x)
        };
        let x = space_to_depth_input(&photo.unsqueeze(0)?.affine(2.0, -1.0)?)?;
        let mut h = check(
            "stem",
            &|x| fast.stem.forward(x),
            &|x| stock.stem.forward(x),
            &x,
        )?;
        for (i, (bf, bs)) in fast.blocks.iter().zip(&stock.blocks).enumerate() {
            h = check(
                &format!("block {i}"),
                &|x| bf.forward(x),
                &|x| bs.forward(x),
                &h,
            )?;
        }
        let head = |net: &EfficientNetLite0, x: &Tensor| {
            net.fc.forward(&net.head.forward(x)?.mean((2, 3))?)
        };
        check("head", &|x| head(&fast, x), &|x| head(&stock, x), &h)?;
        Ok(())
    }
}
