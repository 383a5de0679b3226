//! Depthwise 2-D convolution (one `k × k` filter per channel, TensorFlow "same" padding, any
//! stride) with constant weights: a direct CPU kernel with an input-only backward, and a sum of
//! shifted views built from candle ops everywhere else.
//!
//! candle runs a grouped convolution as one convolution per group, so a depthwise layer of 672
//! channels is 672 tiny im2col products forward and 672 `conv_transpose2d` calls backward, plus
//! weight gradients an attack never uses. A depthwise layer has only `k²` multiply-adds per
//! output, so a direct loop over each channel plane is both simpler and faster.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Module, Result, Shape, Tensor};
use rayon::prelude::*;

use super::conv_cpu::Act;
use super::{activate, f32_slice, is_constant_cpu_f32};

/// TensorFlow's "same" padding of one spatial dimension: the output has `ceil(size / stride)`
/// positions and the padding `(before, after)` is split with the extra pixel after.
///
/// ```
/// assert_eq!(perturb::layers::same_padding(224, 3, 2), (0, 1));
/// assert_eq!(perturb::layers::same_padding(112, 5, 1), (2, 2));
/// ```
pub fn same_padding(size: usize, kernel: usize, stride: usize) -> (usize, usize) {
    let out = size.div_ceil(stride);
    let total = ((out.max(1) - 1) * stride + kernel).saturating_sub(size);
    (total / 2, total - total / 2)
}

/// A depthwise convolution layer, weights `[C, 1, K, K]`, bias `[C]`, with TensorFlow's "same"
/// padding computed from each input's size (as EfficientNet and MobileNet use it) and an
/// optional fused ReLU6.
///
/// With constant `f32` weights on the CPU it runs a direct kernel whose backward computes only
/// the input gradient; otherwise (weights being trained, other devices) it is composed of candle
/// ops with stock autograd ([`forward_stock`](Self::forward_stock)). Both agree to float
/// rounding.
///
/// ```
/// use candle_core::{Device, Module, Tensor, Var};
/// use perturb::layers::DepthwiseConv2d;
/// let dev = Device::Cpu;
/// let w = Tensor::arange(0f32, 18.0, &dev)?.reshape((2, 1, 3, 3))?;
/// let conv = DepthwiseConv2d::new(w, None, 2)?;
/// let x = Var::new(vec![0.5f32; 2 * 5 * 5], &dev)?.reshape((1, 2, 5, 5))?;
/// let y = conv.forward(&x)?;
/// assert_eq!(y.dims(), &[1, 2, 3, 3]); // ceil(5 / 2) = 3
/// // the centre output of channel 0 sees the whole kernel: 0.5 · (0 + 1 + … + 8)
/// assert_eq!(y.get(0)?.get(0)?.get(1)?.get(1)?.to_scalar::<f32>()?, 18.0);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct DepthwiseConv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: usize,
    act: Act,
    fast: Option<Kernel>,
}

impl DepthwiseConv2d {
    /// A depthwise convolution with `weight` `[C, 1, K, K]`, an optional `bias` `[C]` and
    /// `stride`.
    ///
    /// # Errors
    /// When the shapes do not fit, the stride is zero, or the weights cannot be read.
    pub fn new(weight: Tensor, bias: Option<Tensor>, stride: usize) -> Result<Self> {
        let (c, one, kh, kw) = weight.dims4()?;
        if one != 1 || kh != kw || kh == 0 || stride == 0 {
            candle_core::bail!(
                "depthwise conv2d: weight {:?} with stride {stride}, expected [C, 1, K, K] and stride ≥ 1",
                weight.dims()
            )
        }
        if let Some(b) = &bias {
            if b.dims() != [c] {
                candle_core::bail!("depthwise conv2d: bias {:?}, expected [{c}]", b.dims())
            }
        }
        let fast = if is_constant_cpu_f32(&weight) && bias.as_ref().is_none_or(is_constant_cpu_f32)
        {
            Some(Kernel {
                w: Arc::new(weight.flatten_all()?.to_vec1::<f32>()?),
                bias: bias
                    .as_ref()
                    .map(|b| b.to_vec1::<f32>().map(Arc::new))
                    .transpose()?,
                c,
                k: kh,
                stride,
                pad: [0; 4],
                act: Act::Linear,
            })
        } else {
            None
        };
        Ok(Self {
            weight,
            bias,
            stride,
            act: Act::Linear,
            fast,
        })
    }

    /// The same layer followed by a fused ReLU6 (gradient 0 at 0 and 6, as PyTorch).
    pub fn with_relu6(self) -> Self {
        Self {
            act: Act::Relu6,
            fast: self.fast.map(|k| Kernel {
                act: Act::Relu6,
                ..k
            }),
            ..self
        }
    }

    /// Whether the fast constant-weight kernel is in use (on CPU `f32` inputs).
    pub fn is_fast(&self) -> bool {
        self.fast.is_some()
    }

    /// The same computation with candle ops and stock autograd, for weights being trained and
    /// for other devices: a sum over the `K²` taps of shifted (and, for stride 2, subsampled)
    /// views of the padded input times one weight per channel. candle's grouped `conv2d` would
    /// run one convolution per channel, hundreds of kernel launches per layer on a GPU.
    ///
    /// # Errors
    /// Shape errors from candle.
    pub fn forward_stock(&self, x: &Tensor) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        let k = self.weight.dim(2)?;
        let s = self.stride;
        let (pt, pb) = same_padding(h, k, s);
        let (pl, pr) = same_padding(w, k, s);
        let (oh, ow) = ((h + pt + pb - k) / s + 1, (w + pl + pr - k) / s + 1);
        // s − 1 extra zero rows and columns at the end let every tap take s·o rows and columns
        let xp = x
            .pad_with_zeros(2, pt, pb + s - 1)?
            .pad_with_zeros(3, pl, pr + s - 1)?;
        let mut y: Option<Tensor> = None;
        for i in 0..k {
            for j in 0..k {
                let tap = xp.narrow(2, i, s * oh)?.narrow(3, j, s * ow)?;
                let tap = if s == 1 {
                    tap
                } else {
                    tap.contiguous()?
                        .reshape((n, c, oh, s, ow, s))?
                        .narrow(3, 0, 1)?
                        .narrow(5, 0, 1)?
                        .reshape((n, c, oh, ow))?
                };
                let wij = self
                    .weight
                    .narrow(2, i, 1)?
                    .narrow(3, j, 1)?
                    .reshape((1, c, 1, 1))?;
                let term = tap.broadcast_mul(&wij)?;
                y = Some(match y {
                    Some(acc) => (acc + term)?,
                    None => term,
                });
            }
        }
        let Some(y) = y else {
            candle_core::bail!("depthwise conv2d: empty kernel")
        };
        let y = match &self.bias {
            Some(b) => y.broadcast_add(&b.reshape((1, c, 1, 1))?)?,
            None => y,
        };
        activate(&y, self.act)
    }
}

impl Module for DepthwiseConv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.fast {
            Some(kernel) if x.device().is_cpu() && x.dtype() == DType::F32 => {
                let (_, _, h, w) = x.dims4()?;
                let (pt, pb) = same_padding(h, kernel.k, kernel.stride);
                let (pl, pr) = same_padding(w, kernel.k, kernel.stride);
                let op = Kernel {
                    pad: [pt, pb, pl, pr],
                    ..kernel.clone()
                };
                x.contiguous()?.apply_op1(op)
            }
            _ => self.forward_stock(x),
        }
    }
}

/// The CPU kernel for one input size (the padding is part of it).
#[derive(Debug, Clone)]
struct Kernel {
    /// Filters `[C, K, K]`.
    w: Arc<Vec<f32>>,
    bias: Option<Arc<Vec<f32>>>,
    c: usize,
    k: usize,
    stride: usize,
    /// Zero padding: top, bottom, left, right.
    pad: [usize; 4],
    act: Act,
}

impl Kernel {
    fn out_hw(&self, h: usize, w: usize) -> Option<(usize, usize)> {
        let [pt, pb, pl, pr] = self.pad;
        let (hp, wp) = (h + pt + pb, w + pl + pr);
        (hp >= self.k && wp >= self.k).then(|| {
            (
                (hp - self.k) / self.stride + 1,
                (wp - self.k) / self.stride + 1,
            )
        })
    }

    /// The output columns `ox` whose input column `ox·s + j − pl` lies inside `[0, w)`.
    fn cols(&self, j: usize, w: usize, ow: usize) -> std::ops::Range<usize> {
        let (s, pl) = (self.stride, self.pad[2]);
        let lo = if j >= pl { 0 } else { (pl - j).div_ceil(s) };
        let hi = if w + pl > j {
            (w + pl - j).div_ceil(s).min(ow)
        } else {
            0
        };
        lo..hi.max(lo)
    }

    /// The input row of output row `oy` and kernel row `i`, if inside the image.
    fn row(&self, oy: usize, i: usize, h: usize) -> Option<usize> {
        (oy * self.stride + i)
            .checked_sub(self.pad[0])
            .filter(|&y| y < h)
    }

    fn dims(&self, shape: &Shape) -> Result<(usize, usize, usize, usize, usize)> {
        let (n, c, h, w) = shape.dims4()?;
        if c != self.c {
            candle_core::bail!(
                "depthwise conv2d: input has {c} channels, the kernel {}",
                self.c
            )
        }
        let Some((oh, ow)) = self.out_hw(h, w) else {
            candle_core::bail!("depthwise conv2d: a {h}x{w} input is smaller than the kernel")
        };
        Ok((n, h, w, oh, ow))
    }
}

impl CustomOp1 for Kernel {
    fn name(&self) -> &'static str {
        "perturb-depthwise-conv2d"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(storage, layout, "depthwise conv2d")?;
        let (n, h, w, oh, ow) = self.dims(layout.shape())?;
        let (k, s, pl) = (self.k, self.stride, self.pad[2]);
        let mut out = vec![0f32; n * self.c * oh * ow];
        out.par_chunks_mut((oh * ow).max(1))
            .enumerate()
            .for_each(|(plane_index, dst)| {
                let ci = plane_index % self.c;
                let plane = &x[plane_index * h * w..][..h * w];
                let filter = &self.w[ci * k * k..][..k * k];
                let b = self.bias.as_ref().map_or(0.0, |b| b[ci]);
                for oy in 0..oh {
                    let orow = &mut dst[oy * ow..][..ow];
                    orow.fill(b);
                    for i in 0..k {
                        let Some(y) = self.row(oy, i, h) else {
                            continue;
                        };
                        let xrow = &plane[y * w..][..w];
                        for j in 0..k {
                            let wv = filter[i * k + j];
                            for ox in self.cols(j, w, ow) {
                                orow[ox] += wv * xrow[ox * s + j - pl];
                            }
                        }
                    }
                }
                self.act.apply(dst);
            });
        Ok((CpuStorage::F32(out), Shape::from((n, self.c, oh, ow))))
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let (_, _, h, w) = arg.dims4()?;
        let op = InputGrad {
            kernel: self.clone(),
            h,
            w,
        };
        // First-order only: attacks need no second derivatives.
        let g = grad_res
            .contiguous()?
            .apply_op2_no_bwd(&res.contiguous()?, &op)?;
        Ok(Some(g))
    }
}

/// (upstream gradient, the layer's output) → the gradient with respect to the layer's input.
struct InputGrad {
    kernel: Kernel,
    h: usize,
    w: usize,
}

impl CustomOp2 for InputGrad {
    fn name(&self) -> &'static str {
        "perturb-depthwise-conv2d-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() {
            candle_core::bail!("depthwise conv2d grad: gradient and output shapes differ")
        }
        let g = f32_slice(s1, l1, "depthwise conv2d grad")?;
        let r = f32_slice(s2, l2, "depthwise conv2d grad")?;
        let kn = &self.kernel;
        let (n, c, oh, ow) = l1.shape().dims4()?;
        let (h, w) = (self.h, self.w);
        if kn.out_hw(h, w) != Some((oh, ow)) || c != kn.c {
            candle_core::bail!("depthwise conv2d grad: gradient shape does not fit the input")
        }
        let (k, s, pl) = (kn.k, kn.stride, kn.pad[2]);
        let mut gx = vec![0f32; n * c * h * w];
        gx.par_chunks_mut((h * w).max(1)).enumerate().for_each_init(
            || vec![0f32; oh * ow],
            |masked, (plane_index, dst)| {
                let ci = plane_index % c;
                let gp = &g[plane_index * oh * ow..][..oh * ow];
                let rp = &r[plane_index * oh * ow..][..oh * ow];
                kn.act.mask(gp, rp, masked);
                let filter = &kn.w[ci * k * k..][..k * k];
                for oy in 0..oh {
                    let grow = &masked[oy * ow..][..ow];
                    for i in 0..k {
                        let Some(y) = kn.row(oy, i, h) else {
                            continue;
                        };
                        let xrow = &mut dst[y * w..][..w];
                        for j in 0..k {
                            let wv = filter[i * k + j];
                            for ox in kn.cols(j, w, ow) {
                                xrow[ox * s + j - pl] += wv * grow[ox];
                            }
                        }
                    }
                }
            },
        );
        Ok((CpuStorage::F32(gx), Shape::from((n, c, h, w))))
    }
}

#[cfg(test)]
mod tests {
    use super::same_padding;

    #[test]
    fn same_padding_matches_tensorflow() {
        // stride 1: k − 1 split evenly; stride 2 on an even size: the extra pixel goes after
        assert_eq!(same_padding(112, 3, 1), (1, 1));
        assert_eq!(same_padding(112, 5, 1), (2, 2));
        assert_eq!(same_padding(224, 3, 2), (0, 1));
        assert_eq!(same_padding(112, 5, 2), (1, 2));
        assert_eq!(same_padding(7, 3, 2), (1, 1));
    }
}
