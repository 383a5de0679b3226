//! Depthwise 2-D convolution (one `k × k` filter per channel, TensorFlow "same" padding, any
//! stride) with constant weights: a direct CPU kernel with an input-only backward, and a sum of
//! shifted views built from candle ops everywhere else.
//!
//! candle runs a grouped convolution as one convolution per group, so a depthwise layer of 672
//! channels is 672 tiny im2col products forward and 672 `conv_transpose2d` calls backward, plus
//! weight gradients an attack never uses. A depthwise layer has only `k²` multiply-adds per
//! output, so a direct loop over each channel plane is both simpler and faster.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Module, Result, Shape, Tensor};
use rayon::prelude::*;

use super::conv_cpu::Act;
use super::input_grad::InputGradKernel;
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
    padding: Padding,
    act: Act,
    fast: Option<Kernel>,
}

/// How a [`DepthwiseConv2d`] pads its input with zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// TensorFlow's "same", from each input's size ([`same_padding`]).
    Same,
    /// Fixed rows and columns: top, bottom, left, right (as an ONNX graph gives them).
    Explicit([usize; 4]),
}

impl Padding {
    /// Top, bottom, left and right padding of an `h × w` input.
    fn of(self, h: usize, w: usize, k: usize, stride: usize) -> [usize; 4] {
        match self {
            Padding::Same => {
                let (pt, pb) = same_padding(h, k, stride);
                let (pl, pr) = same_padding(w, k, stride);
                [pt, pb, pl, pr]
            }
            Padding::Explicit(p) => p,
        }
    }
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
                padding: Padding::Same,
                act: Act::Linear,
            })
        } else {
            None
        };
        Ok(Self {
            weight,
            bias,
            stride,
            padding: Padding::Same,
            act: Act::Linear,
            fast,
        })
    }

    /// The same layer with another padding (the default is [`Padding::Same`]).
    ///
    /// ```
    /// use candle_core::{Device, Module, Tensor};
    /// use perturb::layers::{DepthwiseConv2d, Padding};
    /// let w = Tensor::ones((1, 1, 3, 3), candle_core::DType::F32, &Device::Cpu)?;
    /// let x = Tensor::ones((1, 1, 4, 4), candle_core::DType::F32, &Device::Cpu)?;
    /// // no padding: a 4×4 input gives 2×2 windows of nine ones
    /// let valid = DepthwiseConv2d::new(w, None, 1)?.with_padding(Padding::Explicit([0; 4]));
    /// assert_eq!(valid.forward(&x)?.flatten_all()?.to_vec1::<f32>()?, [9.0; 4]);
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn with_padding(self, padding: Padding) -> Self {
        Self {
            padding,
            fast: self.fast.map(|k| Kernel { padding, ..k }),
            ..self
        }
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

    /// Whether an activation is fused into the layer.
    pub(crate) fn has_act(&self) -> bool {
        self.act != Act::Linear
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
        let [pt, pb, pl, pr] = self.padding.of(h, w, k, s);
        if h + pt + pb < k || w + pl + pr < k {
            candle_core::bail!("depthwise conv2d: a {h}x{w} input is smaller than the kernel")
        }
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
                x.contiguous()?.apply_op1(kernel.clone())
            }
            _ => self.forward_stock(x),
        }
    }
}

/// The CPU kernel, for any input size.
#[derive(Debug, Clone)]
pub(super) struct Kernel {
    /// Filters `[C, K, K]`.
    w: Arc<Vec<f32>>,
    bias: Option<Arc<Vec<f32>>>,
    c: usize,
    k: usize,
    stride: usize,
    padding: Padding,
    act: Act,
}

impl DepthwiseConv2d {
    /// The fast kernel, if in use.
    pub(super) fn kernel(&self) -> Option<&Kernel> {
        self.fast.as_ref()
    }
}

impl Kernel {
    /// Zero padding of an `h × w` input: top, bottom, left, right.
    fn pad(&self, h: usize, w: usize) -> [usize; 4] {
        self.padding.of(h, w, self.k, self.stride)
    }

    /// The layer on a contiguous batch `x` of `shape`, on host slices.
    pub(super) fn forward(&self, x: &[f32], shape: &Shape) -> Result<(Vec<f32>, Shape)> {
        let (n, h, w, oh, ow) = self.dims(shape)?;
        if x.len() != n * self.c * h * w {
            candle_core::bail!("depthwise conv2d: input of the wrong size")
        }
        let geo = Phases::new(self, (h, w), (oh, ow));
        let mut out = vec![0f32; n * self.c * oh * ow];
        out.par_chunks_mut((oh * ow).max(1))
            .enumerate()
            .for_each_init(Vec::new, |scratch, (plane_index, dst)| {
                let ci = plane_index % self.c;
                let plane = &x[plane_index * h * w..][..h * w];
                let filter = &self.w[ci * self.k * self.k..][..self.k * self.k];
                let b = self.bias.as_ref().map_or(0.0, |b| b[ci]);
                geo.forward_plane(plane, filter, b, scratch, dst);
                self.act.apply(dst);
            });
        Ok((out, Shape::from((n, self.c, oh, ow))))
    }

    fn out_hw(&self, h: usize, w: usize) -> Option<(usize, usize)> {
        let [pt, pb, pl, pr] = self.pad(h, w);
        let (hp, wp) = (h + pt + pb, w + pl + pr);
        (hp >= self.k && wp >= self.k).then(|| {
            (
                (hp - self.k) / self.stride + 1,
                (wp - self.k) / self.stride + 1,
            )
        })
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

impl InputGradKernel for Kernel {
    const NAME: &'static str = "perturb-depthwise-conv2d-grad";

    /// The input gradient (`[N, C, H, W]`) from the upstream gradient `g` and the layer's
    /// output `out` (both `[N, C, OH, OW]`), on host slices.
    fn input_grad(
        &self,
        (_, x_shape): (&[f32], &Shape),
        (out, out_shape): (&[f32], &Shape),
        g: &[f32],
    ) -> Result<Vec<f32>> {
        let (_, _, h, w) = x_shape.dims4()?;
        let (n, c, oh, ow) = out_shape.dims4()?;
        if self.out_hw(h, w) != Some((oh, ow)) || c != self.c {
            candle_core::bail!("depthwise conv2d grad: gradient shape does not fit the input")
        }
        if g.len() != n * c * oh * ow || out.len() != g.len() {
            candle_core::bail!("depthwise conv2d grad: gradient and output sizes disagree")
        }
        let geo = Phases::new(self, (h, w), (oh, ow));
        let mut gx = vec![0f32; n * c * h * w];
        gx.par_chunks_mut((h * w).max(1)).enumerate().for_each_init(
            Vec::new,
            |scratch, (plane_index, dst)| {
                let ci = plane_index % c;
                let gp = &g[plane_index * oh * ow..][..oh * ow];
                let rp = &out[plane_index * oh * ow..][..oh * ow];
                let filter = &self.w[ci * self.k * self.k..][..self.k * self.k];
                geo.backward_plane((gp, rp), self.act, filter, scratch, dst);
            },
        );
        Ok(gx)
    }
}

/// One plane's geometry in the stride's phase layout. Stride `s` splits the zero-padded input
/// into `s²` phase planes, `phase[a][b][r][c] = padded[s·r + a][s·c + b]`, each `hq × wq`; tap
/// `(i, j)` then reads phase `(i mod s, j mod s)` at a fixed offset `(i/s)·wq + j/s` from the
/// output position, so every tap is a stride-1 pass over a contiguous range (outputs laid out
/// with row length `wq`, the `wq − ow` extra columns discarded). The input gradient runs the
/// same passes backwards: each phase of the padded gradient gathers the masked output gradient
/// at minus those offsets.
struct Phases {
    k: usize,
    s: usize,
    /// Padding above and left of the input.
    pt: usize,
    pl: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    /// Rows and columns of each phase plane: `oh + (k−1)/s`, `ow + (k−1)/s`.
    hq: usize,
    wq: usize,
}

impl Phases {
    fn new(kernel: &Kernel, (h, w): (usize, usize), (oh, ow): (usize, usize)) -> Self {
        let (k, s) = (kernel.k, kernel.stride);
        let reach = (k - 1) / s;
        let [pt, _, pl, _] = kernel.pad(h, w);
        Self {
            k,
            s,
            pt,
            pl,
            h,
            w,
            oh,
            ow,
            hq: oh + reach,
            wq: ow + reach,
        }
    }

    fn phase_len(&self) -> usize {
        self.hq * self.wq
    }

    /// Output positions in the phase layout: the last row stops at `ow`.
    fn flat_len(&self) -> usize {
        (self.oh - 1) * self.wq + self.ow
    }

    /// Phase `(a, b)` and offset of tap `(i, j)`.
    fn tap(&self, i: usize, j: usize) -> (usize, usize) {
        let (s, wq) = (self.s, self.wq);
        ((i % s) * s + j % s, (i / s) * wq + j / s)
    }

    /// The input row of phase row `r` of phases `(a, ·)`, if inside the image.
    fn input_row(&self, a: usize, r: usize) -> Option<usize> {
        (self.s * r + a)
            .checked_sub(self.pt)
            .filter(|&y| y < self.h)
    }

    /// The phase columns `c` of phases `(·, b)` whose input column `s·c + b − pl` lies inside
    /// the image.
    fn cols(&self, b: usize) -> std::ops::Range<usize> {
        let (s, pl) = (self.s, self.pl);
        let lo = pl.saturating_sub(b).div_ceil(s);
        let hi = (self.w + pl).saturating_sub(b).div_ceil(s).min(self.wq);
        lo..hi.max(lo)
    }

    /// One plane's convolution plus `bias` into `out` (`oh × ow`, every float written), before
    /// the activation.
    fn forward_plane(
        &self,
        plane: &[f32],
        filter: &[f32],
        bias: f32,
        scratch: &mut Vec<f32>,
        out: &mut [f32],
    ) {
        let (s, pl_len) = (self.s, self.phase_len());
        scratch.resize(s * s * pl_len + self.flat_len(), 0.0);
        let (phases, flat) = scratch.split_at_mut(s * s * pl_len);
        for (p, phase) in phases.chunks_exact_mut(pl_len).enumerate() {
            let (a, b) = (p / s, p % s);
            let cols = self.cols(b);
            for (r, row) in phase.chunks_exact_mut(self.wq).enumerate() {
                let Some(y) = self.input_row(a, r) else {
                    row.fill(0.0);
                    continue;
                };
                let src = &plane[y * self.w..][..self.w];
                row[..cols.start].fill(0.0);
                row[cols.end..].fill(0.0);
                let first = s * cols.start + b - self.pl;
                if s == 1 {
                    row[cols.clone()].copy_from_slice(&src[first..][..cols.len()]);
                } else {
                    for (v, &x) in row[cols.clone()]
                        .iter_mut()
                        .zip(src[first..].iter().step_by(s))
                    {
                        *v = x;
                    }
                }
            }
        }
        let phases = &*phases;
        let taps: Vec<(f32, &[f32])> = (0..self.k * self.k)
            .map(|t| {
                let (p, off) = self.tap(t / self.k, t % self.k);
                (filter[t], &phases[p * pl_len + off..])
            })
            .collect();
        correlate(flat, bias, &taps);
        for (oy, row) in out.chunks_exact_mut(self.ow).enumerate() {
            row.copy_from_slice(&flat[oy * self.wq..][..self.ow]);
        }
    }

    /// One plane's input gradient into `dx` (`h × w`, every float written), from the upstream
    /// gradient and the layer's output `(g, r)` (both `oh × ow`).
    fn backward_plane(
        &self,
        (g, r): (&[f32], &[f32]),
        act: Act,
        filter: &[f32],
        scratch: &mut Vec<f32>,
        dx: &mut [f32],
    ) {
        let (s, pl_len, wq) = (self.s, self.phase_len(), self.wq);
        // The masked gradient in the phase layout, zero in the extra columns, with zeros before
        // (the largest tap offset) and after (up to a whole phase plane) for the gathers.
        let (_, margin) = self.tap(self.k - 1, self.k - 1);
        let ext_len = margin + pl_len;
        scratch.resize(ext_len + s * s * pl_len, 0.0);
        let (ext, phases) = scratch.split_at_mut(ext_len);
        ext.fill(0.0);
        for oy in 0..self.oh {
            let at = oy * self.ow;
            act.mask(
                &g[at..][..self.ow],
                &r[at..][..self.ow],
                &mut ext[margin + oy * wq..][..self.ow],
            );
        }
        let ext = &*ext;
        for (p, phase) in phases.chunks_exact_mut(pl_len).enumerate() {
            let taps: Vec<(f32, &[f32])> = (0..self.k * self.k)
                .filter_map(|t| {
                    let (tp, off) = self.tap(t / self.k, t % self.k);
                    (tp == p).then(|| (filter[t], &ext[margin - off..]))
                })
                .collect();
            correlate(phase, 0.0, &taps);
        }
        let phases = &*phases;
        // the inverse of the forward's phase split; pixels no output reads get 0
        dx.fill(0.0);
        for p in 0..s * s {
            let (a, b) = (p / s, p % s);
            let cols = self.cols(b);
            if cols.is_empty() {
                continue;
            }
            let phase = &phases[p * pl_len..][..pl_len];
            let first = s * cols.start + b - self.pl;
            for r in 0..self.hq {
                let Some(y) = self.input_row(a, r) else {
                    continue;
                };
                let (src, dst) = (
                    &phase[r * wq..][cols.clone()],
                    &mut dx[y * self.w..][..self.w],
                );
                if s == 1 {
                    dst[first..][..src.len()].copy_from_slice(src);
                } else {
                    for (d, &v) in dst[first..].iter_mut().step_by(s).zip(src) {
                        *d = v;
                    }
                }
            }
        }
    }
}

/// `dst[p] = init + Σ_t w_t · src_t[p]` over the taps in order, for every `p` of `dst` (each
/// `src_t` at least as long). With AVX-512 where the CPU has it: the same operations in the same
/// order (no fused multiply-add), so the same bits either way.
fn correlate(dst: &mut [f32], init: f32, taps: &[(f32, &[f32])]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F, checked just above.
        unsafe { correlate_avx512(dst, init, taps) };
        return;
    }
    correlate_portable(dst, init, taps);
}

/// [`correlate`] with four (then one) zmm accumulators held across the taps; the tail as the
/// portable version.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn correlate_avx512(dst: &mut [f32], init: f32, taps: &[(f32, &[f32])]) {
    use std::arch::x86_64::{
        _mm512_add_ps, _mm512_loadu_ps, _mm512_mul_ps, _mm512_set1_ps, _mm512_storeu_ps,
    };
    let n = dst.len();
    assert_sources_cover(n, taps);
    let mut at = 0;
    // SAFETY (all loads and stores): `at + 64 ≤ n` (or `at + 16 ≤ n`) and every source holds
    // at least `n` floats, checked above.
    while at + 64 <= n {
        let mut acc = [_mm512_set1_ps(init); 4];
        for &(w, src) in taps {
            let (wv, p) = (_mm512_set1_ps(w), src.as_ptr().add(at));
            for (q, a) in acc.iter_mut().enumerate() {
                *a = _mm512_add_ps(*a, _mm512_mul_ps(wv, _mm512_loadu_ps(p.add(16 * q))));
            }
        }
        for (q, a) in acc.iter().enumerate() {
            _mm512_storeu_ps(dst.as_mut_ptr().add(at + 16 * q), *a);
        }
        at += 64;
    }
    while at + 16 <= n {
        let mut acc = _mm512_set1_ps(init);
        for &(w, src) in taps {
            let x = _mm512_loadu_ps(src.as_ptr().add(at));
            acc = _mm512_add_ps(acc, _mm512_mul_ps(_mm512_set1_ps(w), x));
        }
        _mm512_storeu_ps(dst.as_mut_ptr().add(at), acc);
        at += 16;
    }
    correlate_portable(&mut dst[at..], init, &shifted_taps(taps, at));
}

/// Every tap's source holds at least the `n` floats a pass reads (the kernels index unchecked).
fn assert_sources_cover(n: usize, taps: &[(f32, &[f32])]) {
    assert!(
        taps.iter().all(|(_, src)| src.len() >= n),
        "depthwise conv2d: a tap's source is shorter than its output"
    );
}

/// The taps with each source advanced by `at` floats.
fn shifted_taps<'a>(taps: &[(f32, &'a [f32])], at: usize) -> Vec<(f32, &'a [f32])> {
    taps.iter().map(|&(w, src)| (w, &src[at..])).collect()
}

/// [`correlate`] in blocks of 64 outputs kept in registers across the taps, then 16, then one.
#[inline(always)]
fn correlate_portable(dst: &mut [f32], init: f32, taps: &[(f32, &[f32])]) {
    #[inline(always)]
    fn block<const B: usize>(dst: &mut [f32], at: usize, init: f32, taps: &[(f32, &[f32])]) {
        let mut acc = [init; B];
        for &(w, src) in taps {
            let src = &src[at..at + B];
            for (a, &x) in acc.iter_mut().zip(src) {
                *a += w * x;
            }
        }
        dst[at..at + B].copy_from_slice(&acc);
    }
    let n = dst.len();
    assert_sources_cover(n, taps);
    let mut at = 0;
    while at + 64 <= n {
        block::<64>(dst, at, init, taps);
        at += 64;
    }
    while at + 16 <= n {
        block::<16>(dst, at, init, taps);
        at += 16;
    }
    while at < n {
        block::<1>(dst, at, init, taps);
        at += 1;
    }
}

impl CustomOp1 for Kernel {
    fn name(&self) -> &'static str {
        "perturb-depthwise-conv2d"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(storage, layout, "depthwise conv2d")?;
        let (out, shape) = self.forward(x, layout.shape())?;
        Ok((CpuStorage::F32(out), shape))
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        super::input_grad::backward(self, arg, res, grad_res).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::{correlate, correlate_portable, same_padding};

    /// The dispatched kernel (AVX-512 where the CPU has it) gives the same bits as the portable
    /// one, and both equal the sum written out, for lengths that use every block size.
    #[test]
    fn correlate_paths_agree_bit_for_bit() {
        let src: Vec<f32> = (0..400)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        for n in [1, 15, 16, 17, 63, 64, 65, 150, 300] {
            let taps: Vec<(f32, &[f32])> = [(0.5f32, 0usize), (-1.25, 3), (0.3, 40), (2.0, 99)]
                .iter()
                .map(|&(w, off)| (w, &src[off..]))
                .collect();
            let (mut fast, mut portable) = (vec![f32::NAN; n], vec![f32::NAN; n]);
            correlate(&mut fast, 0.75, &taps);
            correlate_portable(&mut portable, 0.75, &taps);
            let want: Vec<f32> = (0..n)
                .map(|p| taps.iter().fold(0.75f32, |a, &(w, s)| a + w * s[p]))
                .collect();
            assert_eq!(
                fast.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                portable.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "n = {n}"
            );
            assert_eq!(portable, want, "n = {n}");
        }
    }

    /// Explicit, uneven padding: the fast kernel, the stock composition and candle's grouped
    /// `conv2d` of the pre-padded input give the same outputs and input gradients (to 1e-5).
    #[test]
    fn explicit_padding_matches_a_padded_grouped_conv() -> candle_core::Result<()> {
        use super::{DepthwiseConv2d, Padding};
        use candle_core::{Device, Module, Tensor, Var};
        let dev = Device::Cpu;
        let (c, k) = (3, 3);
        let w = Tensor::arange(0f32, (c * k * k) as f32, &dev)?
            .affine(0.37, -1.1)?
            .sin()?
            .reshape((c, 1, k, k))?;
        let b = Tensor::new(&[0.1f32, -0.2, 0.3], &dev)?;
        // sizes whose padded windows tile exactly: candle's conv2d backward (the reference)
        // returns a gradient of the wrong size otherwise
        for (stride, pads, (h, wd)) in [
            (2, [0, 1, 0, 1], (8usize, 8usize)),
            (1, [2, 0, 1, 3], (7, 8)),
            (2, [1, 2, 0, 0], (6, 9)),
        ] {
            let x = Var::from_tensor(
                &Tensor::arange(0f32, (2 * c * h * wd) as f32, &dev)?
                    .affine(0.11, 0.0)?
                    .cos()?
                    .reshape((2, c, h, wd))?,
            )?;
            let layer = DepthwiseConv2d::new(w.clone(), Some(b.clone()), stride)?
                .with_padding(Padding::Explicit(pads));
            let [t, bo, l, r] = pads;
            let padded = x.pad_with_zeros(2, t, bo)?.pad_with_zeros(3, l, r)?;
            let reference = padded
                .conv2d(&w, 0, stride, 1, c)?
                .broadcast_add(&b.reshape((1, c, 1, 1))?)?;
            let outs = [layer.forward(&x)?, layer.forward_stock(&x)?];
            let probe = reference.affine(0.5, 0.25)?.sin()?.detach();
            let grad_of = |y: &Tensor| -> candle_core::Result<Tensor> {
                let g = (y * &probe)?.sum_all()?.backward()?;
                Ok(g.get(x.as_tensor()).expect("gradient").clone())
            };
            let want = grad_of(&reference)?;
            for y in &outs {
                assert_eq!(y.dims(), reference.dims(), "pads {pads:?}");
                let err = (y - &reference)?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(err < 1e-5, "pads {pads:?}: outputs differ by {err}");
                let gerr = (grad_of(y)? - &want)?
                    .abs()?
                    .max_all()?
                    .to_scalar::<f32>()?;
                assert!(gerr < 1e-5, "pads {pads:?}: gradients differ by {gerr}");
            }
        }
        Ok(())
    }

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
