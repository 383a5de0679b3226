//! Convolutions and fully connected layers whose weights are being trained, as candle custom ops
//! on CPU whose backward computes the weight and bias gradients with the same GEMMs as the input
//! gradient.
//!
//! candle 0.11's own convolution backward computes the input gradient with `conv_transpose2d`
//! (a direct loop) and the weight gradient as a convolution of permuted tensors; for SmallCNN at
//! batch 128 a training step took some 60 forward passes. Here forward is the constant-weight
//! kernel of `conv_cpu.rs` built from the weights' current values, the input gradient is that
//! layer's own input-gradient kernel (skipped when the input needs none, as a network's input
//! in training), and the weight gradient is, per chunk of samples, one GEMM of the masked
//! upstream gradient `[O, S·P]` by the chunk's im2col matrix `[S·P, C·KH·KW]`. Chunks have a
//! fixed size and their partial sums are added in order, so the bits do not depend on the
//! thread count.

use std::sync::OnceLock;

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::conv_cpu::{Act, ConstConv};
use super::input_grad::{self, InputGradKernel};
use super::linear_cpu::{parallelism, ConstLinear};
use super::matmul::{matmul, Strided};

/// Samples per partial weight gradient: the unit of parallel work and of the fixed summation
/// order.
const CHUNK: usize = 8;

/// The contiguous `f32` data of a weight or bias argument.
fn host<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    super::f32_slice(s, l, op)
}

/// Split the flat `[weight…, bias…]` gradient of a [`WeightGrad`] op into the two tensors.
fn split(flat: &Tensor, w: &Tensor, b: &Tensor) -> Result<(Tensor, Tensor)> {
    let wl = w.elem_count();
    let gw = flat.narrow(0, 0, wl)?.reshape(w.shape())?;
    let gb = flat.narrow(0, wl, b.elem_count())?.reshape(b.shape())?;
    Ok((gw, gb))
}

/// The gradients of a layer's (input, weight, bias).
type ThreeGrads = (Option<Tensor>, Option<Tensor>, Option<Tensor>);

/// The gradients of a layer's input (only where the input needs one: not a network's input in
/// training), weight and bias, for the upstream gradient `grad` of its output `res`.
fn gradients<K: InputGradKernel>(
    kernel: &K,
    layer: Layer,
    (x, w, b): (&Tensor, &Tensor, &Tensor),
    res: &Tensor,
    grad: &Tensor,
) -> Result<ThreeGrads> {
    let gx = match x.track_op() {
        true => Some(input_grad::backward(kernel, x, res, grad)?),
        false => None,
    };
    let flat = grad.contiguous()?.apply_op3_no_bwd(
        &x.contiguous()?,
        &res.contiguous()?,
        &WeightGrad(layer),
    )?;
    let (gw, gb) = split(&flat, w, b)?;
    Ok((gx, Some(gw), Some(gb)))
}

/// `act(conv(x, w) + b)` of a stride-1 convolution with padding `pad` (each below the kernel's
/// size): arguments `x` `[N, C, H, W]`, `w` `[O, C, KH, KW]`, `b` `[O]`, all three
/// differentiable.
pub(super) struct TrainConv {
    pad: (usize, usize),
    act: Act,
    /// The layer with the weights of the forward call, for the backward.
    built: OnceLock<ConstConv>,
}

impl TrainConv {
    pub(super) fn new(pad: (usize, usize), act: Act) -> Self {
        Self {
            pad,
            act,
            built: OnceLock::new(),
        }
    }
}

impl CustomOp3 for TrainConv {
    fn name(&self) -> &'static str {
        "perturb-train-conv2d"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
        sb: &CpuStorage,
        lb: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = super::f32_slice(sx, lx, self.name())?;
        let (o, c, kh, kw) = lw.shape().dims4()?;
        let w = host(sw, lw, self.name())?.to_vec();
        let b = host(sb, lb, self.name())?.to_vec();
        let Some(conv) = ConstConv::new(w, Some(b), [o, c, kh, kw], self.pad) else {
            candle_core::bail!("{}: bias or padding does not fit the kernel", self.name())
        };
        let conv = conv.with_act(self.act);
        let out = conv.batch(x, None, lx.shape())?;
        // one forward per op: candle builds a new op for every call of the layer
        let _ = self.built.set(conv);
        Ok((CpuStorage::F32(out.0), out.1))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<ThreeGrads> {
        let Some(conv) = self.built.get() else {
            candle_core::bail!("{}: backward before forward", self.name())
        };
        gradients(conv, Layer::Conv(conv.clone()), (x, w, b), res, grad)
    }
}

/// `act(x · Wᵀ + b)` for `x` `[N, …]` (`in` features per row), `w` `[out, in]`, `b` `[out]`,
/// all three differentiable.
pub(super) struct TrainLinear {
    act: Act,
    built: OnceLock<ConstLinear>,
}

impl TrainLinear {
    pub(super) fn new(act: Act) -> Self {
        Self {
            act,
            built: OnceLock::new(),
        }
    }
}

impl CustomOp3 for TrainLinear {
    fn name(&self) -> &'static str {
        "perturb-train-linear"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
        sb: &CpuStorage,
        lb: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = super::f32_slice(sx, lx, self.name())?;
        let (out, inp) = lw.shape().dims2()?;
        let w = host(sw, lw, self.name())?.to_vec();
        let b = host(sb, lb, self.name())?.to_vec();
        let Some(fc) = ConstLinear::new(w, Some(b), out, inp) else {
            candle_core::bail!("{}: bias does not fit the weights", self.name())
        };
        let fc = fc.with_act(self.act);
        let (y, shape) = fc.forward(x, lx.shape())?;
        let _ = self.built.set(fc);
        Ok((CpuStorage::F32(y), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<ThreeGrads> {
        let Some(fc) = self.built.get() else {
            candle_core::bail!("{}: backward before forward", self.name())
        };
        gradients(fc, Layer::Linear(fc.clone()), (x, w, b), res, grad)
    }
}

/// The layer whose weight gradient a [`WeightGrad`] computes.
enum Layer {
    Conv(ConstConv),
    Linear(ConstLinear),
}

/// (upstream gradient, the layer's input, its output) → the gradients of its weight and bias,
/// flattened one after the other.
struct WeightGrad(Layer);

impl CustomOp3 for WeightGrad {
    fn name(&self) -> &'static str {
        "perturb-weight-grad"
    }

    fn cpu_fwd(
        &self,
        sg: &CpuStorage,
        lg: &Layout,
        sx: &CpuStorage,
        lx: &Layout,
        sr: &CpuStorage,
        lr: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if lg.shape() != lr.shape() {
            candle_core::bail!("{}: gradient and output shapes differ", self.name())
        }
        let g = super::f32_slice(sg, lg, self.name())?;
        let x = super::f32_slice(sx, lx, self.name())?;
        let r = super::f32_slice(sr, lr, self.name())?;
        let flat = match &self.0 {
            Layer::Conv(conv) => conv_weight_grad(conv, (g, r, lg.shape()), (x, lx.shape()))?,
            Layer::Linear(fc) => linear_weight_grad(fc, (g, r), (x, lx.shape()))?,
        };
        let len = flat.len();
        Ok((CpuStorage::F32(flat), Shape::from(len)))
    }
}

/// `[∂L/∂W (O·C·KH·KW), ∂L/∂b (O)]` of a convolution from the upstream gradient `g` and output
/// `r` (`[N, O, OH, OW]`) and the input `x` (`[N, C, H, W]`).
fn conv_weight_grad(
    conv: &ConstConv,
    (g, r, out_shape): (&[f32], &[f32], &Shape),
    (x, x_shape): (&[f32], &Shape),
) -> Result<Vec<f32>> {
    let ([o, c, kh, kw], act) = conv.kernel();
    let (n, xc, h, w) = x_shape.dims4()?;
    let (gn, go, oh, ow) = out_shape.dims4()?;
    if xc != c || gn != n || go != o || conv.out_hw(h, w) != Some((oh, ow)) {
        candle_core::bail!("perturb-weight-grad: gradient shape does not fit the convolution")
    }
    let (p, ck, in_len) = (oh * ow, c * kh * kw, c * h * w);
    if g.len() != n * o * p || x.len() != n * in_len {
        candle_core::bail!("perturb-weight-grad: input or gradient of the wrong size")
    }
    let (ph, pw) = conv.padding();
    let (hp, wp) = (h + 2 * ph, w + 2 * pw);
    let (plane, p_len) = (hp * wp, (oh - 1) * wp + ow);
    let taps = kh * kw;
    let partials: Vec<Vec<f32>> = (0..n.div_ceil(CHUNK))
        .into_par_iter()
        .map(|chunk| {
            let samples = chunk * CHUNK..n.min((chunk + 1) * CHUNK);
            let span = samples.len() * plane;
            // The chunk's inputs channel-major, `[C, S·plane]` (each sample's padded plane after
            // the previous one's), and its masked gradients `[O, S·plane]` at the same
            // positions (row `oy` of sample `s` at `s·plane + oy·wp`), zero elsewhere. Kernel
            // offset `(i, j)` then meets, at gradient position `q`, the input at
            // `q + i·wp + j` of the same sample, so one GEMM per offset covers the whole chunk:
            // positions where the sum straddles two samples carry a zero gradient.
            let mut xt = vec![0f32; c * span];
            let mut gt = vec![0f32; o * span];
            let mut part = vec![0f32; taps * o * c + o];
            let (acc, gb) = part.split_at_mut(taps * o * c);
            for (si, sample) in samples.enumerate() {
                for ci in 0..c {
                    let dst = &mut xt[ci * span + si * plane..][..plane];
                    for y in 0..h {
                        let src = &x[((sample * c + ci) * h + y) * w..][..w];
                        dst[(ph + y) * wp + pw..][..w].copy_from_slice(src);
                    }
                }
                for oi in 0..o {
                    let dst = &mut gt[oi * span + si * plane..][..plane];
                    for oy in 0..oh {
                        let at = ((sample * o + oi) * oh + oy) * ow;
                        act.mask(&g[at..][..ow], &r[at..][..ow], &mut dst[oy * wp..][..ow]);
                    }
                }
            }
            for (b, row) in gb.iter_mut().zip(gt.chunks_exact(span.max(1))) {
                *b = row.iter().sum();
            }
            // positions up to the last sample's last output
            let k_len = span - plane + p_len;
            for i in 0..kh {
                for j in 0..kw {
                    // ∂L/∂w[:, :, i, j] `[O, C]` = gt `[O, K]` · the inputs read at
                    // `c·span + i·wp + j + q` (`[K, C]`: row stride 1, column stride `span`),
                    // whose last index (C−1)·span + (KH−1)·wp + KW−1 + K−1 = C·span − 1 lies
                    // inside `xt` (p_len + (KH−1)·wp + KW − 1 = plane)
                    let lhs = Strided::new(&gt, (o, k_len), (span, 1));
                    let rhs = Strided::new(&xt[i * wp + j..], (k_len, c), (1, span));
                    let dst = &mut acc[(i * kw + j) * o * c..][..o * c];
                    matmul(dst, false, lhs, rhs, gemm::Parallelism::None);
                }
            }
            part
        })
        .collect();
    let total = sum_in_order(partials, taps * o * c + o);
    // `[KH·KW, O, C]` to the weight's `[O, C, KH, KW]`, then the bias
    let mut flat = vec![0f32; o * ck + o];
    for t in 0..taps {
        for oi in 0..o {
            for ci in 0..c {
                flat[(oi * c + ci) * taps + t] = total[(t * o + oi) * c + ci];
            }
        }
    }
    flat[o * ck..].copy_from_slice(&total[taps * o * c..]);
    Ok(flat)
}

/// `[∂L/∂W (out·in), ∂L/∂b (out)]` of a fully connected layer from the upstream gradient `g` and
/// output `r` (`[N, out]`) and the input `x` (`[N, in]`, or `[N, …]` with `in` per row).
fn linear_weight_grad(
    fc: &ConstLinear,
    (g, r): (&[f32], &[f32]),
    (x, x_shape): (&[f32], &Shape),
) -> Result<Vec<f32>> {
    let (out, inp, act) = fc.dims();
    let n = fc.rows(x.len(), x_shape)?;
    if g.len() != n * out || r.len() != g.len() {
        candle_core::bail!("perturb-weight-grad: gradient shape does not fit the linear layer")
    }
    let mut gm = vec![0f32; g.len()];
    act.mask(g, r, &mut gm);
    let mut flat = vec![0f32; out * inp + out];
    let (gw, gb) = flat.split_at_mut(out * inp);
    // gw `[out, in]` = gmᵀ `[out, N]` · x `[N, in]`; gemm splits the output, never the sum
    let (lhs, rhs) = (
        Strided::transposed(&gm, out, n),
        Strided::row_major(x, n, inp),
    );
    matmul(gw, false, lhs, rhs, parallelism(n * out * inp));
    for row in gm.chunks_exact(out) {
        gb.iter_mut().zip(row).for_each(|(b, v)| *b += v);
    }
    Ok(flat)
}

/// The sum of equally long partial gradients, added in their order.
fn sum_in_order(partials: Vec<Vec<f32>>, len: usize) -> Vec<f32> {
    let mut parts = partials.into_iter();
    let mut total = parts.next().unwrap_or_else(|| vec![0f32; len]);
    for part in parts {
        total.iter_mut().zip(&part).for_each(|(t, v)| *t += v);
    }
    total
}
