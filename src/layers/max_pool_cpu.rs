//! Max-pooling as a candle custom op on CPU: the forward pass and a backward pass that routes the
//! gradient to each window's maximum (split evenly among ties), in single loops over the data.
//!
//! Same semantics as the composed version in `super`, about five times faster; other devices use
//! the composed version.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::input_grad::InputGradKernel;

/// Forward op: `[N, C, H, W]` → `[N, C, Ho, Wo]`.
#[derive(Debug, Clone, Copy)]
pub(super) struct MaxPool {
    pub kernel: usize,
    pub stride: usize,
}

fn out_dims(
    shape: &Shape,
    kernel: usize,
    stride: usize,
) -> Result<(usize, usize, usize, usize, usize, usize)> {
    let (n, c, h, w) = shape.dims4()?;
    if kernel == 0 || stride == 0 || kernel > h || kernel > w {
        candle_core::bail!("max_pool2d: kernel {kernel}, stride {stride} do not fit {h}x{w}")
    }
    Ok((
        n * c,
        h,
        w,
        (h - kernel) / stride + 1,
        (w - kernel) / stride + 1,
        n,
    ))
}

/// Geometry of one pooling: plane width, kernel and stride.
#[derive(Clone, Copy)]
struct Geometry {
    w: usize,
    k: usize,
    s: usize,
}

impl Geometry {
    fn new(w: usize, k: usize, s: usize) -> Self {
        Self { w, k, s }
    }

    /// Maximum of window (i, j) of a plane. Branch-free, as [`Geometry::ties`]: on real
    /// activations which element wins is unpredictable, and mispredicted branches made the
    /// backward pass ten times slower than the forward.
    #[inline]
    fn window_max(&self, plane: &[f32], i: usize, j: usize) -> f32 {
        let base = i * self.s * self.w + j * self.s;
        let mut m = f32::NEG_INFINITY;
        for a in 0..self.k {
            for &v in &plane[base + a * self.w..][..self.k] {
                m = m.max(v);
            }
        }
        m
    }

    /// How many elements of window (i, j) equal its maximum `m`.
    #[inline]
    fn ties(&self, plane: &[f32], i: usize, j: usize, m: f32) -> u32 {
        let base = i * self.s * self.w + j * self.s;
        let mut ties = 0u32;
        for a in 0..self.k {
            for &v in &plane[base + a * self.w..][..self.k] {
                ties += u32::from(v == m);
            }
        }
        ties
    }
}

/// Maximum of a 2×2 window, as [`Geometry::window_max`] computes it.
#[inline]
fn max4(a: f32, b: f32, c: f32, d: f32) -> f32 {
    f32::NEG_INFINITY.max(a).max(b).max(c).max(d)
}

impl CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "perturb-max-pool2d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = super::f32_slice(s, l, self.name())?;
        let (y, shape) = forward(x, l.shape(), self.kernel, self.stride)?;
        Ok((CpuStorage::F32(y), shape))
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        super::input_grad::backward(self, arg, res, grad).map(Some)
    }
}

impl InputGradKernel for MaxPool {
    const NAME: &'static str = "perturb-max-pool2d-grad";

    /// [`backward`]: each window's gradient to its maximum in `x`.
    fn input_grad(
        &self,
        (x, x_shape): (&[f32], &Shape),
        _: (&[f32], &Shape),
        g: &[f32],
    ) -> Result<Vec<f32>> {
        backward(x, g, x_shape, self.kernel, self.stride)
    }
}

/// Max-pool a contiguous `[N, C, H, W]` batch `x` of shape `shape`: the pooled data and shape.
pub(super) fn forward(
    x: &[f32],
    shape: &Shape,
    kernel: usize,
    stride: usize,
) -> Result<(Vec<f32>, Shape)> {
    let (planes, h, w, ho, wo, n) = out_dims(shape, kernel, stride)?;
    if x.len() != planes * h * w {
        candle_core::bail!("max_pool2d: input of the wrong size")
    }
    let geo = Geometry::new(w, kernel, stride);
    let mut y = vec![0f32; planes * ho * wo];
    y.par_chunks_mut(ho * wo)
        .zip(x.par_chunks(h * w))
        .for_each(|(out, plane)| forward_plane(plane, out, geo, wo));
    let c = planes / n.max(1);
    Ok((y, Shape::from((n, c, ho, wo))))
}

/// Pool one plane (`h × geo.w`) into `out` (`ho × wo`, every float written).
fn forward_plane(plane: &[f32], out: &mut [f32], geo: Geometry, wo: usize) {
    let w = geo.w;
    if geo.k == 2 && geo.s == 2 {
        for (i, orow) in out.chunks_exact_mut(wo).enumerate() {
            let (r0, r1) = plane[2 * i * w..][..2 * w].split_at(w);
            for (j, o) in orow.iter_mut().enumerate() {
                let (a, b) = (r0[2 * j], r0[2 * j + 1]);
                let (c, d) = (r1[2 * j], r1[2 * j + 1]);
                *o = max4(a, b, c, d);
            }
        }
        return;
    }
    for (i, orow) in out.chunks_exact_mut(wo).enumerate() {
        for (j, o) in orow.iter_mut().enumerate() {
            *o = geo.window_max(plane, i, j);
        }
    }
}

/// The output channels, height and width of pooling a `c × h × w` sample, if it fits.
pub(super) fn out_chw(
    (c, h, w): (usize, usize, usize),
    kernel: usize,
    stride: usize,
) -> Option<(usize, usize, usize)> {
    let fits = kernel > 0 && stride > 0 && kernel <= h && kernel <= w;
    fits.then(|| (c, (h - kernel) / stride + 1, (w - kernel) / stride + 1))
}

/// One sample (`c × h × w`, fitting per [`out_chw`]) pooled into `out`, on the calling thread.
pub(super) fn forward_sample(
    x: &[f32],
    (c, h, w): (usize, usize, usize),
    kernel: usize,
    stride: usize,
    out: &mut [f32],
) {
    let Some((_, ho, wo)) = out_chw((c, h, w), kernel, stride) else {
        return;
    };
    let geo = Geometry::new(w, kernel, stride);
    for (plane, o) in x.chunks_exact(h * w).zip(out.chunks_exact_mut(ho * wo)) {
        forward_plane(plane, o, geo, wo);
    }
}

/// One sample's input gradient into `dx` (every float written), on the calling thread.
pub(super) fn backward_sample(
    x: &[f32],
    g: &[f32],
    (c, h, w): (usize, usize, usize),
    kernel: usize,
    stride: usize,
    dx: &mut [f32],
) {
    let Some((_, ho, wo)) = out_chw((c, h, w), kernel, stride) else {
        return;
    };
    let geo = Geometry::new(w, kernel, stride);
    for ((plane, gplane), dplane) in x
        .chunks_exact(h * w)
        .zip(g.chunks_exact(ho * wo))
        .zip(dx.chunks_exact_mut(h * w))
    {
        backward_plane(plane, gplane, dplane, geo, (ho, wo));
    }
}

/// The input gradient of [`forward`] for the input `x` (of shape `shape`) and the upstream
/// gradient `g`: each window's gradient goes to its maximum, split evenly among ties.
fn backward(x: &[f32], g: &[f32], shape: &Shape, kernel: usize, stride: usize) -> Result<Vec<f32>> {
    let (planes, h, w, ho, wo, _) = out_dims(shape, kernel, stride)?;
    if x.len() != planes * h * w || g.len() != planes * ho * wo {
        candle_core::bail!("max_pool2d grad: input or gradient of the wrong size")
    }
    let geo = Geometry::new(w, kernel, stride);
    let mut dx = vec![0f32; x.len()];
    // Planes are independent, so the parallel split does not change any sum.
    dx.par_chunks_mut(h * w)
        .zip(x.par_chunks(h * w))
        .zip(g.par_chunks(ho * wo))
        .for_each(|((dplane, plane), gplane)| backward_plane(plane, gplane, dplane, geo, (ho, wo)));
    Ok(dx)
}

/// Write one plane's input gradient into `dplane` (every float written).
fn backward_plane(
    plane: &[f32],
    gplane: &[f32],
    dplane: &mut [f32],
    geo: Geometry,
    (ho, wo): (usize, usize),
) {
    if geo.k == 2 && geo.s == 2 {
        backward_2x2(plane, gplane, dplane, geo.w, wo);
        return;
    }
    // windows may overlap (stride < kernel): sum into a zeroed plane
    dplane.fill(0.0);
    for i in 0..ho {
        for j in 0..wo {
            let m = geo.window_max(plane, i, j);
            let ties = geo.ties(plane, i, j, m);
            let share = gplane[i * wo + j] / ties.max(1) as f32;
            for a in 0..geo.k {
                let start = (i * geo.s + a) * geo.w + j * geo.s;
                let (src, dst) = (&plane[start..][..geo.k], &mut dplane[start..][..geo.k]);
                for (d, &v) in dst.iter_mut().zip(src) {
                    *d += if v == m { share } else { 0.0 };
                }
            }
        }
    }
}

/// [`backward`] of one plane for the common 2×2, stride-2 pool: two input rows at a time, each
/// window's four pixels in registers. Windows do not overlap, so each pixel's gradient is
/// written once, not summed; a last row or column that no window covers (odd size) gets zero.
fn backward_2x2(plane: &[f32], g: &[f32], dplane: &mut [f32], w: usize, wo: usize) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") && plane.len() == dplane.len() {
        // SAFETY: the CPU has AVX-512F; the plane and its gradient have the same size.
        unsafe { avx512::backward_2x2(plane, g, dplane, w, wo) };
        return;
    }
    backward_2x2_portable(plane, g, dplane, w, wo);
}

/// [`backward_2x2`] one window at a time.
fn backward_2x2_portable(plane: &[f32], g: &[f32], dplane: &mut [f32], w: usize, wo: usize) {
    let covered = 2 * (g.len() / wo.max(1)) * w;
    for (i, grow) in g.chunks_exact(wo).enumerate() {
        let (r0, r1) = plane[2 * i * w..][..2 * w].split_at(w);
        let (d0, d1) = dplane[2 * i * w..][..2 * w].split_at_mut(w);
        for (j, &gv) in grow.iter().enumerate() {
            let (a, b, c, d) = (r0[2 * j], r0[2 * j + 1], r1[2 * j], r1[2 * j + 1]);
            let m = max4(a, b, c, d);
            let ties =
                u32::from(a == m) + u32::from(b == m) + u32::from(c == m) + u32::from(d == m);
            let share = gv / ties.max(1) as f32;
            let pick = |v: f32| if v == m { share } else { 0.0 };
            d0[2 * j] = pick(a);
            d0[2 * j + 1] = pick(b);
            d1[2 * j] = pick(c);
            d1[2 * j + 1] = pick(d);
        }
        d0[2 * wo..].fill(0.0);
        d1[2 * wo..].fill(0.0);
    }
    dplane[covered..].fill(0.0);
}

/// The 2×2 backward with AVX-512: 16 windows of a row at a time (masked at the row's end), the
/// two input rows de-interleaved into the windows' four pixels, no branches. The same maximum,
/// tie count and IEEE division as the portable loop, so the same bits for finite inputs.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// The low `n` bits set (`n ≤ 16`).
    fn low(n: usize) -> __mmask16 {
        ((1u32 << n) - 1) as __mmask16
    }

    /// # Safety
    /// The CPU has AVX-512F; `plane` and `dplane` hold the same number of floats, at least
    /// `2·(g.len() / wo)` rows of `w ≥ 2·wo`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn backward_2x2(
        plane: &[f32],
        g: &[f32],
        dplane: &mut [f32],
        w: usize,
        wo: usize,
    ) {
        let rows = g.len() / wo.max(1);
        assert!(wo > 0 && 2 * wo <= w && 2 * rows * w <= plane.len().min(dplane.len()));
        let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
        let lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
        let hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
        let one = _mm512_set1_ps(1.0);
        for i in 0..rows {
            // SAFETY (all loads and stores): rows 2i and 2i + 1 lie inside both planes (asserted
            // above); a chunk touches floats 2j .. 2(j + l) ≤ 2·wo ≤ w of them and windows
            // j .. j + l ≤ wo of the gradient row, and masked-off lanes touch no memory.
            let (r0, d0) = (
                plane.as_ptr().add(2 * i * w),
                dplane.as_mut_ptr().add(2 * i * w),
            );
            let (r1, d1) = (r0.add(w), d0.add(w));
            let grow = g.as_ptr().add(i * wo);
            let mut j = 0;
            while j < wo {
                let l = (wo - j).min(16);
                let (m_lo, m_hi) = (low((2 * l).min(16)), low((2 * l).saturating_sub(16)));
                let split = |r: *const f32| {
                    let x_lo = _mm512_maskz_loadu_ps(m_lo, r.add(2 * j));
                    let x_hi = _mm512_maskz_loadu_ps(m_hi, r.add(2 * j + 16));
                    (
                        _mm512_permutex2var_ps(x_lo, even, x_hi),
                        _mm512_permutex2var_ps(x_lo, odd, x_hi),
                    )
                };
                let ((a, b), (c, d)) = (split(r0), split(r1));
                let m = _mm512_max_ps(_mm512_max_ps(_mm512_max_ps(a, b), c), d);
                let ka = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(a, m);
                let kb = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(b, m);
                let kc = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(c, m);
                let kd = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(d, m);
                let ties = _mm512_add_ps(
                    _mm512_add_ps(_mm512_maskz_mov_ps(ka, one), _mm512_maskz_mov_ps(kb, one)),
                    _mm512_add_ps(_mm512_maskz_mov_ps(kc, one), _mm512_maskz_mov_ps(kd, one)),
                );
                let gv = _mm512_maskz_loadu_ps(low(l), grow.add(j));
                let share = _mm512_div_ps(gv, _mm512_max_ps(ties, one));
                let pick = |k| _mm512_maskz_mov_ps(k, share);
                for (dst, (p, q)) in [(d0, (pick(ka), pick(kb))), (d1, (pick(kc), pick(kd)))] {
                    _mm512_mask_storeu_ps(dst.add(2 * j), m_lo, _mm512_permutex2var_ps(p, lo, q));
                    _mm512_mask_storeu_ps(
                        dst.add(2 * j + 16),
                        m_hi,
                        _mm512_permutex2var_ps(p, hi, q),
                    );
                }
                j += l;
            }
            for x in 2 * wo..w {
                *d0.add(x) = 0.0;
                *d1.add(x) = 0.0;
            }
        }
        dplane[2 * rows * w..].fill(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The per-sample backward writes every float of its output, whatever the buffer held (the
    /// chain reuses buffers), and equals the batch backward: odd sizes leave a row and a column
    /// that no window covers, overlapping windows sum.
    #[test]
    fn sample_backward_overwrites_stale_buffers() -> Result<()> {
        for (k, s, h, w) in [(2, 2, 7, 9), (2, 2, 8, 8), (3, 2, 9, 7), (2, 3, 8, 8)] {
            let c = 3;
            let (ho, wo) = ((h - k) / s + 1, (w - k) / s + 1);
            // quantized values: many ties
            let x: Vec<f32> = (0..c * h * w)
                .map(|i| ((i * 7919) % 5) as f32 / 4.0)
                .collect();
            let g: Vec<f32> = (0..c * ho * wo).map(|i| 1.0 + i as f32 / 8.0).collect();
            let want = backward(&x, &g, &Shape::from((1, c, h, w)), k, s)?;
            let mut dx = vec![f32::NAN; c * h * w];
            backward_sample(&x, &g, (c, h, w), k, s, &mut dx);
            assert_eq!(dx, want, "k={k} s={s} {h}x{w}");
            assert!(want.iter().filter(|v| **v != 0.0).count() >= c * ho * wo / 2);
        }
        Ok(())
    }

    /// The dispatched 2×2 backward (AVX-512 where the CPU has it) equals the portable loop bit
    /// for bit, for row lengths around the 16-window chunks, odd sizes and many ties.
    #[test]
    fn backward_2x2_paths_agree_bit_for_bit() {
        let mut tied = 0;
        for (h, w) in [
            (2, 2),
            (5, 7),
            (24, 24),
            (8, 8),
            (6, 33),
            (4, 34),
            (3, 65),
            (26, 26),
        ] {
            let (ho, wo) = (h / 2, w / 2);
            let x: Vec<f32> = (0..h * w)
                .map(|i| ((i * 7919) % 5) as f32 / 4.0 - 0.25)
                .collect();
            let g: Vec<f32> = (0..ho * wo).map(|i| 0.3 + i as f32 / 7.0).collect();
            let (mut fast, mut portable) = (vec![f32::NAN; h * w], vec![f32::NAN; h * w]);
            backward_2x2(&x, &g, &mut fast, w, wo);
            backward_2x2_portable(&x, &g, &mut portable, w, wo);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&fast), bits(&portable), "{h}x{w}");
            // windows whose maximum appears more than once: the tie split is exercised
            tied += (0..ho * wo)
                .filter(|&k| {
                    let at = |a: usize, b: usize| x[(2 * (k / wo) + a) * w + 2 * (k % wo) + b];
                    let v = [at(0, 0), at(0, 1), at(1, 0), at(1, 1)];
                    let m = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    v.iter().filter(|&&u| u == m).count() > 1
                })
                .count();
        }
        assert!(tied > 20, "only {tied} tied windows");
    }
}
