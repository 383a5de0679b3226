//! Stride-1 2-D convolution with constant weights as a candle custom op on CPU: per sample,
//! the direct AVX-512 kernel of `direct_cpu.rs` where the CPU has it, else one strided GEMM per
//! kernel offset (8+ input channels) or im2col and one GEMM forward, and an input-only backward
//! that is itself such a convolution (or, without AVX-512, col2im).
//!
//! For stride 1 and padding `p ≤ k − 1`, the gradient with respect to the input is the "full"
//! convolution of the upstream gradient, padded by `k − 1 − p`, with the kernel flipped in space
//! and with input and output channels swapped. So backward runs the forward's fast kernel, with
//! the reduction over `O·KH·KW` (a long, GEMM-friendly inner dimension) instead of candle's
//! `conv_transpose2d` loop, and computes no weight gradient: the weights are constants.

use std::cell::RefCell;
use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::direct_cpu;
use super::input_grad::InputGradKernel;
use super::matmul::{matmul, Strided};

/// A stride-1 convolution `[N, C, H, W]` → `[N, O, H + 2p − KH + 1, W + 2p − KW + 1]` with
/// fixed weights, differentiable with respect to its input only.
#[derive(Debug, Clone)]
pub(super) struct ConstConv {
    /// Weights as a row-major `[O, C·KH·KW]` matrix.
    w: Arc<Vec<f32>>,
    /// The kernel of [`ConstConv::input_gradient`], `[C, O·KH·KW]`: flipped in space, channels
    /// swapped. Flipping twice gives `w` back, so the gradient convolution swaps the two.
    flipped: Arc<Vec<f32>>,
    /// `w` and `flipped` in the direct kernel's layout ([`direct_cpu::pack`]), packed once.
    packed: Arc<Vec<f32>>,
    packed_flipped: Arc<Vec<f32>>,
    /// `w` for the direct kernel's transpose ([`direct_cpu::pack_transpose`]), which computes
    /// the input gradient of layers with 8 or more input channels; empty where unused.
    packed_tr: Arc<Vec<f32>>,
    /// Bias `[O]`, if any.
    bias: Option<Arc<Vec<f32>>>,
    o: usize,
    c: usize,
    kh: usize,
    kw: usize,
    /// Zero padding, the same on every side (`ph` rows, `pw` columns).
    ph: usize,
    pw: usize,
    /// The activation fused after the convolution (bias included).
    act: Act,
    /// Whether to run the direct AVX-512 kernel (the CPU has it); chosen once per layer.
    direct: bool,
}

/// An activation fused into a layer: applied in the same pass forward, and backward masks the
/// upstream gradient where the activation is flat (PyTorch's convention: zero gradient at the
/// kinks, so at exactly 0 and, for ReLU6, exactly 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Act {
    /// None: the identity.
    Linear,
    /// `max(x, 0)`.
    Relu,
    /// `min(max(x, 0), 6)` (MobileNet, EfficientNet-Lite).
    Relu6,
}

impl Act {
    /// Apply in place.
    pub(super) fn apply(self, v: &mut [f32]) {
        match self {
            Act::Linear => {}
            Act::Relu => v.iter_mut().for_each(|x| *x = x.max(0.0)),
            Act::Relu6 => v.iter_mut().for_each(|x| *x = x.clamp(0.0, 6.0)),
        }
    }

    /// `out = g` where the gradient passes (by the activated output `r`), 0 where it is flat.
    pub(super) fn mask(self, g: &[f32], r: &[f32], out: &mut [f32]) {
        for ((o, &gv), &rv) in out.iter_mut().zip(g).zip(r) {
            *o = if self.passes(rv) { gv } else { 0.0 };
        }
    }

    /// Whether the gradient passes at a point whose activated output is `r`.
    #[inline]
    fn passes(self, r: f32) -> bool {
        match self {
            Act::Linear => true,
            Act::Relu => r > 0.0,
            Act::Relu6 => r > 0.0 && r < 6.0,
        }
    }
}

/// Input channels from which [`ConstConv::sample_shifted`]'s GEMMs beat im2col (a first layer
/// with one or three channels keeps im2col: its per-offset GEMMs would sum over almost nothing).
/// The direct kernel, where the CPU has it, takes every channel count.
const SHIFTED_MIN_CHANNELS: usize = 8;

impl ConstConv {
    /// From weights `[O, C, KH, KW]` (row-major data) and a bias; `None` unless
    /// `ph < kh` and `pw < kw` (the backward needs it).
    pub(super) fn new(
        w: Vec<f32>,
        bias: Option<Vec<f32>>,
        dims: [usize; 4],
        (ph, pw): (usize, usize),
    ) -> Option<Self> {
        let [o, c, kh, kw] = dims;
        let ok = w.len() == o * c * kh * kw
            && bias.as_ref().is_none_or(|b| b.len() == o)
            && ph < kh
            && pw < kw;
        ok.then(|| {
            let flipped = flip(&w, [o, c, kh, kw]);
            // a 1×1 kernel without padding is one large GEMM, which gemm does well
            let direct = direct_cpu::available() && !(kh == 1 && kw == 1 && ph == 0 && pw == 0);
            let pack = |w: &[f32], o: usize, k: usize| match direct {
                true => direct_cpu::pack(w, o, k),
                false => Vec::new(),
            };
            let transposed = direct && c >= direct_cpu::BLOCK_O;
            Self {
                packed: Arc::new(pack(&w, o, c * kh * kw)),
                packed_flipped: Arc::new(pack(&flipped, c, o * kh * kw)),
                packed_tr: Arc::new(match transposed {
                    true => direct_cpu::pack_transpose(&w, [o, c, kh, kw]),
                    false => Vec::new(),
                }),
                flipped: Arc::new(flipped),
                w: Arc::new(w),
                bias: bias.map(Arc::new),
                o,
                c,
                kh,
                kw,
                ph,
                pw,
                act: Act::Linear,
                direct,
            }
        })
    }

    /// The same convolution followed by `act`, fused: one pass forward, and backward masks the
    /// upstream gradient while it is copied.
    pub(super) fn with_act(self, act: Act) -> Self {
        Self { act, ..self }
    }

    /// The convolution whose output is this one's input gradient: kernel flipped in space,
    /// channels swapped, padding `k − 1 − p`, no bias.
    fn input_gradient(&self) -> Self {
        let (kh, kw) = (self.kh, self.kw);
        Self {
            w: self.flipped.clone(),
            flipped: self.w.clone(),
            packed: self.packed_flipped.clone(),
            packed_flipped: self.packed.clone(),
            packed_tr: Arc::new(Vec::new()),
            bias: None,
            o: self.c,
            c: self.o,
            kh,
            kw,
            ph: kh - 1 - self.ph,
            pw: kw - 1 - self.pw,
            act: Act::Linear,
            direct: self.direct,
        }
    }

    /// The kernel's shape `[O, C, KH, KW]` and its fused activation.
    pub(super) fn kernel(&self) -> ([usize; 4], Act) {
        ([self.o, self.c, self.kh, self.kw], self.act)
    }

    /// The zero padding `(rows, columns)` on each side.
    pub(super) fn padding(&self) -> (usize, usize) {
        (self.ph, self.pw)
    }

    /// The output size of an `h × w` input; `None` when the kernel does not fit.
    pub(super) fn out_hw(&self, h: usize, w: usize) -> Option<(usize, usize)> {
        let (hp, wp) = (h + 2 * self.ph, w + 2 * self.pw);
        (hp >= self.kh && wp >= self.kw).then(|| (hp - self.kh + 1, wp - self.kw + 1))
    }

    /// A 1×1 kernel without padding needs no im2col: the input is already the matrix.
    fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.ph == 0 && self.pw == 0
    }

    /// Whether to convolve in the shifted layout ([`ConstConv::sample_shifted`]) rather than by
    /// im2col: always with the direct kernel, else once the per-offset GEMMs have enough input
    /// channels to sum over.
    fn shifted(&self) -> bool {
        !self.pointwise() && (self.c >= SHIFTED_MIN_CHANNELS || self.direct)
    }

    /// The shifted layout of an `h × w` input: the padded plane, the output positions on its
    /// width (`p_len = (oh − 1)·wp + ow`), and the output size `(oh, ow)`.
    fn geometry(&self, (h, w): (usize, usize)) -> Option<(direct_cpu::Geometry, (usize, usize))> {
        let (oh, ow) = self.out_hw(h, w)?;
        let (hp, wp) = (h + 2 * self.ph, w + 2 * self.pw);
        let geometry = direct_cpu::Geometry {
            o: self.o,
            c: self.c,
            kh: self.kh,
            kw: self.kw,
            plane: hp * wp,
            wp,
            p_len: (oh - 1) * wp + ow,
        };
        Some((geometry, (oh, ow)))
    }

    /// The batch size of an upstream gradient `g` and layer output `out` of shape `out_shape`
    /// for an `h × w` input, or an error naming `op` if they do not fit the layer.
    fn grad_batch(
        &self,
        (g, out): (&[f32], &[f32]),
        out_shape: &Shape,
        (h, w): (usize, usize),
        op: &str,
    ) -> Result<usize> {
        let (n, o, oh, ow) = out_shape.dims4()?;
        if o != self.o || self.out_hw(h, w) != Some((oh, ow)) || g.len() != out.len() {
            candle_core::bail!("{op}: gradient shape does not fit the layer")
        }
        if g.len() != n * o * oh * ow {
            candle_core::bail!("{op}: gradient of the wrong size")
        }
        Ok(n)
    }

    /// Whether the input gradient runs on the direct kernel's transpose.
    fn transposed(&self) -> bool {
        self.direct && !self.packed_tr.is_empty()
    }

    /// Whether the shifted layout needs a padded copy of the input.
    fn padded(&self) -> bool {
        self.ph + self.pw > 0
    }

    /// Scratch floats one sample of an `h × w` input needs, `masked` if the input is to be
    /// masked first ([`ConstConv::sample`]).
    fn scratch_len(&self, (h, w): (usize, usize), masked: bool) -> usize {
        let Some((g, (oh, ow))) = self.geometry((h, w)) else {
            return 0;
        };
        let mask_copy = if masked && !(self.shifted() && self.padded()) {
            self.c * h * w
        } else {
            0
        };
        mask_copy
            + if self.pointwise() {
                0
            } else if self.shifted() {
                let padded = if self.padded() { self.c * g.plane } else { 0 };
                padded + self.o * g.p_len
            } else {
                self.c * self.kh * self.kw * oh * ow
            }
    }

    /// Convolve one sample without im2col: with the input zero-padded to `hp × wp` (copied
    /// only when there is padding) and the output computed on the padded width (`full[o, p]`,
    /// `p = oy·wp + ox`), kernel offset `(i, j)` reads the input plane at `p + i·wp + j`, a
    /// plain strided matrix. So the convolution is `KH·KW` GEMMs `[O, C] · [C, P]` summed into
    /// `full` (or the direct kernel, which computes the same sums tap by tap in registers), then
    /// the `ow` valid columns of each row are kept, with bias and activation.
    /// `P = (oh − 1)·wp + ow` stops at the last valid output, so no read passes the input.
    fn sample_shifted(
        &self,
        x: &[f32],
        mask: Option<(&[f32], Act)>,
        (h, w): (usize, usize),
        scratch: &mut [f32],
        out: &mut [f32],
        par: gemm::Parallelism,
    ) {
        let Some((geometry, (oh, ow))) = self.geometry((h, w)) else {
            return;
        };
        let (c, o, kh, kw) = (self.c, self.o, self.kh, self.kw);
        let (hp, wp, p_len) = (geometry.plane / geometry.wp, geometry.wp, geometry.p_len);
        let padded_len = if self.padded() { c * hp * wp } else { 0 };
        let (pad_buf, full) = scratch.split_at_mut(padded_len);
        let input: &[f32] = if padded_len > 0 {
            // the scratch is reused: zero the border, copy (and mask) the interior, in one pass
            let (ph, pw) = (self.ph, self.pw);
            for (ci, plane) in pad_buf.chunks_exact_mut(hp * wp).enumerate() {
                plane[..ph * wp].fill(0.0);
                plane[(ph + h) * wp..].fill(0.0);
                for y in 0..h {
                    let row = &mut plane[(ph + y) * wp..][..wp];
                    row[..pw].fill(0.0);
                    row[pw + w..].fill(0.0);
                    let at = (ci * h + y) * w;
                    match mask {
                        Some((m, act)) => {
                            act.mask(&x[at..][..w], &m[at..][..w], &mut row[pw..][..w])
                        }
                        None => row[pw..][..w].copy_from_slice(&x[at..][..w]),
                    }
                }
            }
            pad_buf
        } else {
            x
        };
        let full = &mut full[..o * p_len];
        let direct = self.direct && direct_cpu::shifted(&self.packed, geometry, input, full);
        for i in (0..kh).filter(|_| !direct) {
            for j in 0..kw {
                let first = i == 0 && j == 0;
                // `full` `[O, P]` (+)= the kernel slice `w[o, c, i, j]` (row stride C·KH·KW,
                // column stride KH·KW) times the input read at `c·hp·wp + i·wp + j + p` (row
                // stride hp·wp, column stride 1), whose largest index (C−1)·hp·wp + (KH−1)·wp +
                // KW−1 + P−1 = C·hp·wp − 1 lies inside `input` because oh + KH − 1 = hp and
                // ow + KW − 1 = wp.
                let lhs = Strided::new(&self.w[i * kw + j..], (o, c), (c * kh * kw, kh * kw));
                let rhs = Strided::new(&input[i * wp + j..], (c, p_len), (hp * wp, 1));
                matmul(full, !first, lhs, rhs, par);
            }
        }
        for oi in 0..o {
            let b = self.bias.as_ref().map_or(0.0, |b| b[oi]);
            let src = &full[oi * p_len..][..p_len];
            let dst = &mut out[oi * oh * ow..][..oh * ow];
            for oy in 0..oh {
                let (d, s) = (&mut dst[oy * ow..][..ow], &src[oy * wp..][..ow]);
                match self.act {
                    Act::Linear => d.iter_mut().zip(s).for_each(|(d, s)| *d = s + b),
                    Act::Relu => d.iter_mut().zip(s).for_each(|(d, s)| *d = (s + b).max(0.0)),
                    Act::Relu6 => d
                        .iter_mut()
                        .zip(s)
                        .for_each(|(d, s)| *d = (s + b).clamp(0.0, 6.0)),
                }
            }
        }
    }

    /// Convolve one sample `x` (`[C, H, W]`) into `out` (`[O, OH, OW]`), using `col` as scratch
    /// ([`ConstConv::scratch_len`] floats: the `[C·KH·KW, OH·OW]` im2col buffer, or the shifted
    /// GEMMs' padded input and output).
    fn sample(
        &self,
        x: &[f32],
        mask: Option<(&[f32], Act)>,
        (h, w): (usize, usize),
        col: &mut [f32],
        out: &mut [f32],
        par: gemm::Parallelism,
    ) {
        let Some((oh, ow)) = self.out_hw(h, w) else {
            return;
        };
        if self.shifted() && self.padded() {
            // the mask is applied while the input is copied into its padding
            self.sample_shifted(x, mask, (h, w), col, out, par);
            return;
        }
        let (masked, col) = col.split_at_mut(if mask.is_some() { x.len() } else { 0 });
        let x: &[f32] = match mask {
            Some((m, act)) => {
                act.mask(x, m, masked);
                masked
            }
            None => x,
        };
        if self.shifted() {
            self.sample_shifted(x, None, (h, w), col, out, par);
            return;
        }
        let ohw = oh * ow;
        let (kh, kw, ph, pw) = (self.kh, self.kw, self.ph as isize, self.pw as isize);
        let pointwise = self.pointwise();
        for ci in (0..self.c).filter(|_| !pointwise) {
            let plane = &x[ci * h * w..(ci + 1) * h * w];
            for i in 0..kh {
                for j in 0..kw {
                    let row = &mut col[((ci * kh + i) * kw + j) * ohw..][..ohw];
                    for oy in 0..oh {
                        let y = oy as isize + i as isize - ph;
                        let dst = &mut row[oy * ow..(oy + 1) * ow];
                        if y < 0 || y >= h as isize {
                            dst.fill(0.0);
                            continue;
                        }
                        let src = &plane[y as usize * w..(y as usize + 1) * w];
                        // output columns ox read input column ox + j − pw: inside [0, w) for
                        // ox in lo..hi, padding (zero) outside; one copy instead of a branch
                        // per element
                        let shift = j as isize - pw;
                        let lo = (-shift).clamp(0, ow as isize) as usize;
                        let hi = (w as isize - shift).clamp(lo as isize, ow as isize) as usize;
                        dst[..lo].fill(0.0);
                        if hi > lo {
                            let start = (lo as isize + shift) as usize;
                            dst[lo..hi].copy_from_slice(&src[start..start + (hi - lo)]);
                        }
                        dst[hi..].fill(0.0);
                    }
                }
            }
        }
        let k = self.c * kh * kw;
        match &self.bias {
            Some(b) => {
                for (oi, row) in out.chunks_mut(ohw).enumerate() {
                    row.fill(b[oi]);
                }
            }
            None => out.fill(0.0),
        }
        let col: &[f32] = if pointwise { x } else { col };
        // out `[O, OH·OW]` += w `[O, K]` · col `[K, OH·OW]`
        let (lhs, rhs) = (
            Strided::row_major(&self.w, self.o, k),
            Strided::row_major(col, k, ohw),
        );
        matmul(out, true, lhs, rhs, par);
        self.act.apply(&mut out[..self.o * ohw]);
    }

    /// Convolve a contiguous batch `[N, C, H, W]`; with `mask` (a layer's activated output of
    /// the same shape, and that layer's activation), the input is first zeroed wherever the
    /// activation is flat.
    pub(super) fn batch(
        &self,
        x: &[f32],
        mask: Option<(&[f32], Act)>,
        dims: &Shape,
    ) -> Result<(Vec<f32>, Shape)> {
        let (n, c, h, w) = dims.dims4()?;
        if c != self.c {
            candle_core::bail!(
                "const conv2d: input has {c} channels, the kernel {}",
                self.c
            )
        }
        let Some((oh, ow)) = self.out_hw(h, w) else {
            candle_core::bail!("const conv2d: a {h}x{w} input is smaller than the kernel")
        };
        let (in_len, out_len) = (c * h * w, self.o * oh * ow);
        if x.len() != n * in_len || mask.is_some_and(|(m, _)| m.len() != x.len()) {
            candle_core::bail!("const conv2d: input and mask sizes disagree")
        }
        let mut out = vec![0f32; n * out_len];
        let col_len = self.scratch_len((h, w), mask.is_some());
        for_each_sample(&mut out, out_len, |(i, dst), par| {
            let src = &x[i * in_len..(i + 1) * in_len];
            let m = mask.map(|(m, act)| (&m[i * in_len..(i + 1) * in_len], act));
            with_scratch(col_len, |col| self.sample(src, m, (h, w), col, dst, par));
        });
        Ok((out, Shape::from((n, self.o, oh, ow))))
    }
}

impl ConstConv {
    /// Output channels, height and width for a `c × h × w` input; `None` when the input does
    /// not fit the kernel.
    pub(super) fn out_chw(
        &self,
        (c, h, w): (usize, usize, usize),
    ) -> Option<(usize, usize, usize)> {
        let (oh, ow) = self.out_hw(h, w)?;
        (c == self.c).then_some((self.o, oh, ow))
    }

    /// One sample, on the calling thread: `x` (`[C, H, W]`) into `out` (`[O, OH, OW]`), the
    /// input first masked by `mask` (a layer's activated output and activation) if given.
    /// The caller checks the sizes ([`ConstConv::out_chw`]).
    pub(super) fn forward_sample(
        &self,
        x: &[f32],
        mask: Option<(&[f32], Act)>,
        (h, w): (usize, usize),
        out: &mut [f32],
    ) {
        let len = self.scratch_len((h, w), mask.is_some());
        with_scratch(len, |col| {
            self.sample(x, mask, (h, w), col, out, gemm::Parallelism::None)
        });
    }

    /// One sample's input gradient by the direct kernel's transpose
    /// ([`direct_cpu::shifted_transpose`]): the masked gradient laid out as the forward's
    /// output (`[O, P]` on the padded input's width, zero in the columns past `ow`), summed into
    /// a zeroed padded input plane, whose interior is `gx`. `false` if the kernel refused.
    fn input_grad_transposed(
        &self,
        g: &[f32],
        out: &[f32],
        (h, w): (usize, usize),
        gx: &mut [f32],
    ) -> bool {
        let Some((geometry, (oh, ow))) = self.geometry((h, w)) else {
            return false;
        };
        let (o, c, wp, p_len, plane) =
            (self.o, self.c, geometry.wp, geometry.p_len, geometry.plane);
        with_scratch(o * p_len + c * plane, |scratch| {
            let (grad, padded) = scratch.split_at_mut(o * p_len);
            for (oi, row) in grad.chunks_exact_mut(p_len).enumerate() {
                for oy in 0..oh {
                    let at = (oi * oh + oy) * ow;
                    let dst = &mut row[oy * wp..];
                    self.act
                        .mask(&g[at..][..ow], &out[at..][..ow], &mut dst[..ow]);
                    let end = if oy + 1 < oh { wp } else { ow };
                    dst[ow..end].fill(0.0);
                }
            }
            padded.fill(0.0);
            if !direct_cpu::shifted_transpose(&self.packed_tr, geometry, grad, padded) {
                return false;
            }
            for (ci, dst) in gx.chunks_exact_mut(h * w).enumerate() {
                for (y, row) in dst.chunks_exact_mut(w).enumerate() {
                    row.copy_from_slice(&padded[ci * plane + (y + self.ph) * wp + self.pw..][..w]);
                }
            }
            true
        })
    }

    /// One sample's input gradient, on the calling thread: [`InputGradKernel::input_grad`] of
    /// the upstream gradient `g` and the layer's output `out` (both `[O, OH, OW]`) into `gx`
    /// (`[C, H, W]`, every float written).
    pub(super) fn input_grad_sample(
        &self,
        g: &[f32],
        out: &[f32],
        (h, w): (usize, usize),
        gx: &mut [f32],
    ) {
        let Some((oh, ow)) = self.out_hw(h, w) else {
            return;
        };
        if self.transposed() && self.input_grad_transposed(g, out, (h, w), gx) {
            return;
        }
        if self.c < self.o && !self.direct {
            let op = Col2imGrad {
                conv: self.clone(),
                h,
                w,
            };
            gx.fill(0.0);
            with_scratch(
                self.o * oh * ow + self.c * self.kh * self.kw * oh * ow,
                |s| {
                    let (masked, col) = s.split_at_mut(self.o * oh * ow);
                    self.act.mask(g, out, masked);
                    op.sample(masked, col, gx, gemm::Parallelism::None);
                },
            );
            return;
        }
        let mask = (self.act != Act::Linear).then_some((out, self.act));
        self.input_gradient().forward_sample(g, mask, (oh, ow), gx);
    }
}

/// Run `job((sample, its chunk of out), parallelism)` for every `len`-long chunk of `out`: one
/// sample per rayon task with single-threaded GEMMs when there are at least as many samples as
/// threads; otherwise (a single image) the samples in turn, each GEMM split over the threads.
/// gemm splits the output, never the sum, so the bits do not depend on the choice.
fn for_each_sample(
    out: &mut [f32],
    len: usize,
    job: impl Fn((usize, &mut [f32]), gemm::Parallelism) + Sync + Send,
) {
    let len = len.max(1);
    let threads = rayon::current_num_threads();
    if out.len() / len >= threads {
        out.par_chunks_mut(len)
            .enumerate()
            .for_each(|chunk| job(chunk, gemm::Parallelism::None));
    } else {
        for chunk in out.chunks_mut(len).enumerate() {
            job(chunk, gemm::Parallelism::Rayon(threads));
        }
    }
}

thread_local! {
    /// Each thread's scratch for the per-sample kernels, kept between calls: a layer's padded
    /// input and im2col buffers are neither allocated nor zeroed per call (the kernels write
    /// every float they read). It grows to the largest layer's need and stays that size.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Run `f` on `len` floats of this thread's scratch, of unspecified contents (a fresh buffer
/// if the scratch is in use further up this thread's stack, as when rayon runs another job
/// while waiting).
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
            f(&mut buf[..len])
        }
        Err(_) => f(&mut vec![0f32; len]),
    })
}

impl InputGradKernel for ConstConv {
    const NAME: &'static str = "perturb-const-conv2d-input-grad";

    /// The input gradient (`[N, C, H, W]`) of this convolution and its activation, from the
    /// upstream gradient `g` and the layer's output `out` (both `[N, O, OH, OW]`), on host
    /// slices: the full convolution of the masked gradient, or col2im when the layer has fewer
    /// input than output channels and the CPU lacks the direct kernel (the GEMM path would sum
    /// over almost nothing per output). The backward of the op and of
    /// [`forward_chain`](super::forward_chain)'s chain both come here.
    fn input_grad(
        &self,
        (_, x_shape): (&[f32], &Shape),
        (out, out_shape): (&[f32], &Shape),
        g: &[f32],
    ) -> Result<Vec<f32>> {
        let (_, _, h, w) = x_shape.dims4()?;
        if self.transposed() {
            // sample by sample, as the chain's per-sample backward: the same bits either way
            let n = self.grad_batch((g, out), out_shape, (h, w), "const conv2d grad")?;
            let (in_len, out_len) = (self.c * h * w, g.len() / n.max(1));
            let mut gx = vec![0f32; n * in_len];
            for_each_sample(&mut gx, in_len, |(i, dst), _| {
                let (gi, oi) = (&g[i * out_len..][..out_len], &out[i * out_len..][..out_len]);
                self.input_grad_sample(gi, oi, (h, w), dst);
            });
            return Ok(gx);
        }
        if self.c < self.o && !self.direct {
            // Fewer input than output channels (a first layer, 1 → 32): col2im needs a GEMM
            // over the O outputs and scatters C·K² columns back, where the full convolution
            // would build an O·K²-row im2col of the upstream gradient.
            let op = Col2imGrad {
                conv: self.clone(),
                h,
                w,
            };
            return op.run(g, out, out_shape);
        }
        let mask = (self.act != Act::Linear).then_some((out, self.act));
        Ok(self.input_gradient().batch(g, mask, out_shape)?.0)
    }
}

/// `w` (`[O, C, KH, KW]`) flipped in space with input and output channels swapped:
/// `[C, O, KH, KW]`, entry `(c, o, KH−1−i, KW−1−j)` = `w[o, c, i, j]`.
fn flip(w: &[f32], [o, c, kh, kw]: [usize; 4]) -> Vec<f32> {
    let mut flipped = vec![0f32; w.len()];
    for oi in 0..o {
        for ci in 0..c {
            for i in 0..kh {
                for j in 0..kw {
                    flipped[((ci * o + oi) * kh + (kh - 1 - i)) * kw + (kw - 1 - j)] =
                        w[((oi * c + ci) * kh + i) * kw + j];
                }
            }
        }
    }
    flipped
}

impl CustomOp1 for ConstConv {
    fn name(&self) -> &'static str {
        "perturb-const-conv2d"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = super::f32_slice(storage, layout, "const conv2d")?;
        let (y, shape) = self.batch(x, None, layout.shape())?;
        Ok((CpuStorage::F32(y), shape))
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let grad = if self.act == Act::Linear && self.c >= self.o {
            // the full convolution as an op of its own: differentiable again
            grad_res.contiguous()?.apply_op1(self.input_gradient())?
        } else {
            super::input_grad::backward(self, arg, res, grad_res)?
        };
        Ok(Some(grad))
    }
}

/// Input gradient by col2im: per sample, `cols = Wᵀ · G` (`[C·KH·KW, OH·OW]`, one GEMM over the
/// `O` output channels of the upstream gradient `G`, masked by the activation), then every
/// column entry is added back onto the input pixel it was read from.
struct Col2imGrad {
    conv: ConstConv,
    h: usize,
    w: usize,
}

impl Col2imGrad {
    /// One sample: `g` (`[O, OH·OW]`, masked) into `dst` (`[C, H, W]`, zeroed).
    fn sample(&self, g: &[f32], col: &mut [f32], dst: &mut [f32], par: gemm::Parallelism) {
        let cv = &self.conv;
        let (h, w) = (self.h, self.w);
        let Some((oh, ow)) = cv.out_hw(h, w) else {
            return;
        };
        let (ohw, ck) = (oh * ow, cv.c * cv.kh * cv.kw);
        // `cv.w` is `[O, CK]`, read as its transpose `[CK, O]`
        let (lhs, rhs) = (
            Strided::transposed(&cv.w, ck, cv.o),
            Strided::row_major(g, cv.o, ohw),
        );
        matmul(col, false, lhs, rhs, par);
        let (ph, pw) = (cv.ph, cv.pw);
        for ci in 0..cv.c {
            let plane = &mut dst[ci * h * w..][..h * w];
            for i in 0..cv.kh {
                for j in 0..cv.kw {
                    let row = &col[((ci * cv.kh + i) * cv.kw + j) * ohw..][..ohw];
                    // output columns whose input column ox + j − pw lies in [0, w)
                    let lo = pw.saturating_sub(j);
                    let hi = (w + pw).saturating_sub(j).min(ow);
                    for oy in 0..oh {
                        let Some(y) = (oy + i).checked_sub(ph).filter(|&y| y < h) else {
                            continue;
                        };
                        let drow = &mut plane[y * w..][..w];
                        let srow = &row[oy * ow..][..ow];
                        for ox in lo..hi {
                            drow[ox + j - pw] += srow[ox];
                        }
                    }
                }
            }
        }
    }

    /// The input gradient for the upstream gradient `g` and the layer's output `r`, both of
    /// shape `shape` (`[N, O, OH, OW]`).
    fn run(&self, g: &[f32], r: &[f32], shape: &Shape) -> Result<Vec<f32>> {
        let cv = &self.conv;
        let hw = (self.h, self.w);
        let n = cv.grad_batch((g, r), shape, hw, "const conv2d col2im grad")?;
        let (_, o, oh, ow) = shape.dims4()?;
        let (ohw, in_len) = (oh * ow, cv.c * self.h * self.w);
        let col_len = cv.c * cv.kh * cv.kw * ohw;
        let mut gx = vec![0f32; n * in_len];
        for_each_sample(&mut gx, in_len, |(i, dst), par| {
            let gs = &g[i * o * ohw..][..o * ohw];
            let rs = &r[i * o * ohw..][..o * ohw];
            with_scratch(o * ohw + col_len, |scratch| {
                let (masked, col) = scratch.split_at_mut(o * ohw);
                cv.act.mask(gs, rs, masked);
                self.sample(masked, col, dst, par);
            });
        });
        Ok(gx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1), no two neighbours alike.
    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7919 + seed * 104_729) % 2003) as f32 / 1001.5 - 1.0)
            .collect()
    }

    fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
        let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
        a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
    }

    /// The direct kernel and the portable GEMM / im2col / col2im paths give the same outputs
    /// and input gradients (the integration tests check the default path against candle-nn; on
    /// a CPU with AVX-512 that is the direct kernel, and this keeps the others checked too).
    #[test]
    fn direct_kernel_and_portable_paths_agree() {
        if !direct_cpu::available() {
            return;
        }
        // (batch, in, out, kernel, padding, height, width)
        let cases = [
            (2, 1, 32, 3, 0, 28, 28),
            (3, 32, 32, 3, 0, 26, 26),
            (2, 32, 64, 3, 0, 12, 12),
            (2, 3, 5, 3, 1, 9, 7),
            (1, 9, 17, 5, 2, 11, 6),
            (2, 16, 1, 3, 1, 8, 8),
            // the gradient convolution without padding, and a pointwise one: masked copies
            (2, 8, 8, 3, 2, 5, 6),
            (2, 4, 8, 1, 0, 5, 5),
        ];
        for (seed, (n, c, o, k, p, h, w)) in cases.into_iter().enumerate() {
            for act in [Act::Linear, Act::Relu, Act::Relu6] {
                let (wt, b) = (values(o * c * k * k, seed), values(o, seed + 1));
                let conv = ConstConv::new(wt, Some(b), [o, c, k, k], (p, p))
                    .unwrap()
                    .with_act(act);
                assert!(conv.direct || conv.pointwise());
                let portable = ConstConv {
                    direct: false,
                    ..conv.clone()
                };
                let x: Vec<f32> = values(n * c * h * w, seed + 2)
                    .iter()
                    .map(|v| v * 3.0)
                    .collect();
                let shape = Shape::from((n, c, h, w));
                let (y, y_shape) = conv.batch(&x, None, &shape).unwrap();
                let (y_ref, _) = portable.batch(&x, None, &shape).unwrap();
                let case = (n, c, o, k, p, h, w, act);
                assert!(max_rel_diff(&y, &y_ref) < 1e-5, "forward {case:?}");
                let g = values(y.len(), seed + 3);
                let gx = conv.input_grad((&x, &shape), (&y, &y_shape), &g).unwrap();
                let gx_ref = portable
                    .input_grad((&x, &shape), (&y_ref, &y_shape), &g)
                    .unwrap();
                assert_eq!(gx.len(), x.len());
                assert!(
                    gx_ref.iter().any(|v| *v != 0.0),
                    "gradient {case:?} vanished"
                );
                assert!(max_rel_diff(&gx, &gx_ref) < 1e-5, "gradient {case:?}");
            }
        }
    }
}
