//! Stride-1 2-D convolution with constant weights as a candle custom op on CPU: im2col and one
//! GEMM per sample forward, and an input-only backward that is itself such a convolution.
//!
//! For stride 1 and padding `p ≤ k − 1`, the gradient with respect to the input is the "full"
//! convolution of the upstream gradient, padded by `k − 1 − p`, with the kernel flipped in space
//! and with input and output channels swapped. So backward runs the forward's fast kernel, with
//! the reduction over `O·KH·KW` (a long, GEMM-friendly inner dimension) instead of candle's
//! `conv_transpose2d` loop, and computes no weight gradient: the weights are constants.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// A stride-1 convolution `[N, C, H, W]` → `[N, O, H + 2p − KH + 1, W + 2p − KW + 1]` with
/// fixed weights, differentiable with respect to its input only.
#[derive(Debug, Clone)]
pub(super) struct ConstConv {
    /// Weights as a row-major `[O, C·KH·KW]` matrix.
    w: Arc<Vec<f32>>,
    /// Bias `[O]`, if any.
    bias: Option<Arc<Vec<f32>>>,
    o: usize,
    c: usize,
    kh: usize,
    kw: usize,
    /// Zero padding, the same on every side (`ph` rows, `pw` columns).
    ph: usize,
    pw: usize,
}

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
        ok.then(|| Self {
            w: Arc::new(w),
            bias: bias.map(Arc::new),
            o,
            c,
            kh,
            kw,
            ph,
            pw,
        })
    }

    /// The convolution whose output is this one's input gradient: kernel flipped in space,
    /// channels swapped, padding `k − 1 − p`, no bias.
    fn input_gradient(&self) -> Self {
        let (o, c, kh, kw) = (self.o, self.c, self.kh, self.kw);
        let mut flipped = vec![0f32; self.w.len()];
        for oi in 0..o {
            for ci in 0..c {
                for i in 0..kh {
                    for j in 0..kw {
                        flipped[((ci * o + oi) * kh + (kh - 1 - i)) * kw + (kw - 1 - j)] =
                            self.w[((oi * c + ci) * kh + i) * kw + j];
                    }
                }
            }
        }
        Self {
            w: Arc::new(flipped),
            bias: None,
            o: c,
            c: o,
            kh,
            kw,
            ph: kh - 1 - self.ph,
            pw: kw - 1 - self.pw,
        }
    }

    fn out_hw(&self, h: usize, w: usize) -> Option<(usize, usize)> {
        let (hp, wp) = (h + 2 * self.ph, w + 2 * self.pw);
        (hp >= self.kh && wp >= self.kw).then(|| (hp - self.kh + 1, wp - self.kw + 1))
    }

    /// Convolve one sample `x` (`[C, H, W]`) into `out` (`[O, OH, OW]`), using `col` as the
    /// `[C·KH·KW, OH·OW]` im2col buffer.
    fn sample(&self, x: &[f32], (h, w): (usize, usize), col: &mut [f32], out: &mut [f32]) {
        let Some((oh, ow)) = self.out_hw(h, w) else {
            return;
        };
        let ohw = oh * ow;
        let (kh, kw, ph, pw) = (self.kh, self.kw, self.ph as isize, self.pw as isize);
        for ci in 0..self.c {
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
                        for (ox, d) in dst.iter_mut().enumerate() {
                            let xx = ox as isize + j as isize - pw;
                            *d = if xx < 0 || xx >= w as isize {
                                0.0
                            } else {
                                src[xx as usize]
                            };
                        }
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
        debug_assert!(
            self.w.len() == self.o * k && col.len() >= k * ohw && out.len() >= self.o * ohw
        );
        // SAFETY: `out` is `[O, OH·OW]`, `self.w` is `[O, K]`, `col` holds `[K, OH·OW]`, all
        // row-major and at least that long (checked by the caller and `new`); gemm reads and
        // writes only within those extents.
        unsafe {
            gemm::gemm(
                self.o,
                ohw,
                k,
                out.as_mut_ptr(),
                1,
                ohw as isize,
                true,
                self.w.as_ptr(),
                1,
                k as isize,
                col.as_ptr(),
                1,
                ohw as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    }
}

impl CustomOp1 for ConstConv {
    fn name(&self) -> &'static str {
        "perturb-const-conv2d"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("const conv2d: only f32 is supported")
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("const conv2d: input must be contiguous")
        };
        let x = &data[start..end];
        let (n, c, h, w) = layout.shape().dims4()?;
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
        let mut out = vec![0f32; n * out_len];
        let col_len = c * self.kh * self.kw * oh * ow;
        out.par_chunks_mut(out_len.max(1))
            .zip(x.par_chunks(in_len.max(1)))
            .for_each_init(
                || vec![0f32; col_len],
                |col, (dst, src)| self.sample(src, (h, w), col, dst),
            );
        Ok((CpuStorage::F32(out), Shape::from((n, self.o, oh, ow))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad_res.contiguous()?.apply_op1(self.input_gradient())?;
        Ok(Some(grad))
    }
}
