//! A register-blocked direct convolution kernel (AVX-512) for the shifted layout of
//! [`ConstConv`](super::conv_cpu::ConstConv): `full[o, p] = Σ_{c,i,j} w[o, c, i, j] ·
//! input[c, p + i·wp + j]` over a zero-padded input plane of width `wp`.
//!
//! The shifted-GEMM path computes the same sum as `KH·KW` small GEMMs (`[O, C] · [C, P]`), and
//! at MNIST sizes (C = 32, P ≈ 600) the `gemm` crate spends a large share of each call packing
//! the same weights and input again. Here the weights are packed once, when the layer is built
//! (`[⌈O/8⌉, C·KH·KW, 8]`), and each block of 8 output channels × 48 output positions stays in
//! 24 registers while the kernel walks all `C·KH·KW` taps, reading the input in place (the last
//! strip of a row is only as wide as it needs to be; channels after the last whole block of 8
//! run one at a time with 192 positions in registers, so a one-channel input gradient wastes no
//! lanes). Every weight broadcast feeds up to 12 fused multiply-adds, every input load 8.
//!
//! [`shifted_transpose`] is the adjoint, for input gradients: the gradient in the forward's
//! output layout summed back into the padded input, tap by tap (per tap a block of 8 input
//! channels × 48 positions is loaded, all output channels added in registers, and stored back).
//! It runs over the forward's positions, fewer than the "full" convolution's on small maps.
//!
//! The sum runs over the taps in a fixed order (channel, then kernel row, then column), so the
//! result depends only on the data, not on threads or batch size. It is used when the CPU has
//! AVX-512F (checked at run time); elsewhere the shifted GEMMs and im2col run. Results then differ
//! between such CPUs in float rounding only.

/// Output channels per register block.
pub(super) const BLOCK_O: usize = 8;

/// The weights `w` (`[O, K]` row-major, `K = C·KH·KW`) in the kernel's layout: blocks of
/// [`BLOCK_O`] output channels, each `[K, BLOCK_O]`, channels past `O` zero.
pub(super) fn pack(w: &[f32], o: usize, k: usize) -> Vec<f32> {
    let blocks = o.div_ceil(BLOCK_O);
    let mut packed = vec![0f32; blocks * k * BLOCK_O];
    for oi in 0..o {
        let (b, lane) = (oi / BLOCK_O, oi % BLOCK_O);
        for t in 0..k {
            packed[(b * k + t) * BLOCK_O + lane] = w[oi * k + t];
        }
    }
    packed
}

/// Whether [`shifted`] can run on this CPU.
pub(super) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The geometry of one shifted convolution.
#[derive(Debug, Clone, Copy)]
pub(super) struct Geometry {
    /// Output channels.
    pub o: usize,
    /// Input channels.
    pub c: usize,
    /// Kernel height and width.
    pub kh: usize,
    pub kw: usize,
    /// Floats per input channel plane (`hp·wp`) and the plane's width.
    pub plane: usize,
    pub wp: usize,
    /// Output positions per channel (`(oh − 1)·wp + ow`).
    pub p_len: usize,
}

/// `full[o·p_len + p] = Σ_{c,i,j} w[o, c, i, j] · input[c·plane + i·wp + j + p]` for
/// `p < p_len`, with `packed` from [`pack`]. Returns `false` (and writes nothing) when the CPU
/// lacks AVX-512F or a slice is too short for the geometry.
pub(super) fn shifted(packed: &[f32], g: Geometry, input: &[f32], full: &mut [f32]) -> bool {
    let k = g.c * g.kh * g.kw;
    let fits = g.c >= 1
        && g.kh >= 1
        && g.kw >= 1
        && g.p_len >= 1
        && packed.len() >= g.o.div_ceil(BLOCK_O) * k * BLOCK_O
        && full.len() >= g.o * g.p_len
        // the farthest tap of the last position
        && input.len() >= (g.c - 1) * g.plane + (g.kh - 1) * g.wp + g.kw - 1 + g.p_len;
    if !fits || !available() {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: AVX-512F is present (checked above) and the extents were checked against
        // the geometry.
        unsafe { avx512::shifted(packed, g, input, full) };
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The weights `w` (`[O, C, KH, KW]`, row-major) for [`shifted_transpose`]: blocks of
/// [`BLOCK_O`] input channels, each `[KH·KW, O, BLOCK_O]`, channels past `C` zero.
pub(super) fn pack_transpose(w: &[f32], [o, c, kh, kw]: [usize; 4]) -> Vec<f32> {
    let taps = kh * kw;
    let mut packed = vec![0f32; c.div_ceil(BLOCK_O) * taps * o * BLOCK_O];
    for oi in 0..o {
        for ci in 0..c {
            let (b, lane) = (ci / BLOCK_O, ci % BLOCK_O);
            for t in 0..taps {
                packed[((b * taps + t) * o + oi) * BLOCK_O + lane] = w[(oi * c + ci) * taps + t];
            }
        }
    }
    packed
}

/// The transpose of [`shifted`], for input gradients: `gx[c·plane + p + i·wp + j] += Σ_o
/// w[o, c, i, j] · grad[o·p_len + p]` for every `p < p_len`, with `packed` from
/// [`pack_transpose`] (`g` is the forward convolution's geometry). It runs over the forward's
/// `p_len` positions, where the "full" convolution of the gradient runs over the input's, which
/// on small maps are a third more (10×10 → 8×8: 78 against 118). Returns `false` (and writes
/// nothing) when the CPU lacks AVX-512F or a slice is too short.
pub(super) fn shifted_transpose(packed: &[f32], g: Geometry, grad: &[f32], gx: &mut [f32]) -> bool {
    let fits = g.c >= 1
        && g.kh >= 1
        && g.kw >= 1
        && g.p_len >= 1
        && packed.len() >= g.c.div_ceil(BLOCK_O) * g.kh * g.kw * g.o * BLOCK_O
        && grad.len() >= g.o * g.p_len
        && gx.len() >= (g.c - 1) * g.plane + (g.kh - 1) * g.wp + g.kw - 1 + g.p_len;
    if !fits || !available() {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: AVX-512F is present and the extents were checked against the geometry.
        unsafe { avx512::shifted_transpose(packed, g, grad, gx) };
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{Geometry, BLOCK_O};

    const LANES: usize = 16;

    /// The mask of the lanes of the vector at `start` that lie before `len`.
    #[inline(always)]
    fn lanes(start: usize, len: usize) -> u16 {
        let n = len.saturating_sub(start).min(LANES);
        ((1u32 << n) - 1) as u16
    }

    /// The masks of `BP` vectors from position `p0`: lanes at or past `len` off.
    #[inline(always)]
    fn strip_masks<const BP: usize>(p0: usize, len: usize) -> [u16; BP] {
        let mut masks = [0u16; BP];
        for (v, m) in masks.iter_mut().enumerate() {
            *m = lanes(p0 + v * LANES, len);
        }
        masks
    }

    /// The strips along `len` positions, as (first position, vectors): 3 vectors each, the last
    /// only as many as it needs (masked lanes cost as much as live ones).
    fn strips(len: usize) -> impl Iterator<Item = (usize, usize)> {
        (0..len.div_ceil(3 * LANES)).map(move |s| {
            let p0 = s * 3 * LANES;
            (p0, (len - p0).div_ceil(LANES).min(3))
        })
    }

    /// # Safety
    /// AVX-512F must be available, and the slices must hold the geometry (see
    /// [`super::shifted`]).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn shifted(packed: &[f32], g: Geometry, input: &[f32], full: &mut [f32]) {
        let k = g.c * g.kh * g.kw;
        let (inp, w, out) = (input.as_ptr(), packed.as_ptr(), full.as_mut_ptr());
        // whole blocks of 8 channels: 8 × 3 vectors in registers
        for ob in 0..g.o / BLOCK_O {
            let (w, out) = (w.add(ob * k * BLOCK_O), out.add(ob * BLOCK_O * g.p_len));
            for (p0, vectors) in strips(g.p_len) {
                match vectors {
                    1 => strip::<BLOCK_O, 1>(w, g, inp, out, p0),
                    2 => strip::<BLOCK_O, 2>(w, g, inp, out, p0),
                    _ => strip::<BLOCK_O, 3>(w, g, inp, out, p0),
                }
            }
        }
        // the channels after the last whole block, one at a time: 12 vectors in registers
        for oi in g.o / BLOCK_O * BLOCK_O..g.o {
            let w = w.add((oi / BLOCK_O) * k * BLOCK_O + oi % BLOCK_O);
            let out = out.add(oi * g.p_len);
            let mut p0 = 0;
            while p0 + 12 * LANES <= g.p_len {
                strip::<1, 12>(w, g, inp, out, p0);
                p0 += 12 * LANES;
            }
            while p0 < g.p_len {
                strip::<1, 4>(w, g, inp, out, p0);
                p0 += 4 * LANES;
            }
        }
    }

    /// Positions `p0 .. p0 + BP·16` (those before `p_len`) of `BO` consecutive output channels:
    /// `w` points at the first channel's weight for the first tap (the next tap's is
    /// `BLOCK_O` floats on, the next channel's one float on), `out` at the first channel's
    /// output row.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn strip<const BO: usize, const BP: usize>(
        w: *const f32,
        g: Geometry,
        inp: *const f32,
        out: *mut f32,
        p0: usize,
    ) {
        let masks = strip_masks::<BP>(p0, g.p_len);
        let mut acc = [[_mm512_setzero_ps(); BP]; BO];
        let mut wt = w;
        for ci in 0..g.c {
            for i in 0..g.kh {
                // lanes past p_len are masked off: their addresses may pass the input, masked
                // loads do not touch them
                let row = inp.wrapping_add(ci * g.plane + i * g.wp + p0);
                for j in 0..g.kw {
                    let src = row.wrapping_add(j);
                    let mut x = [_mm512_setzero_ps(); BP];
                    for (v, xv) in x.iter_mut().enumerate() {
                        *xv = _mm512_maskz_loadu_ps(masks[v], src.wrapping_add(v * LANES));
                    }
                    for (oo, acc_o) in acc.iter_mut().enumerate() {
                        let wv = _mm512_set1_ps(*wt.add(oo));
                        for (a, xv) in acc_o.iter_mut().zip(&x) {
                            *a = _mm512_fmadd_ps(wv, *xv, *a);
                        }
                    }
                    wt = wt.add(BLOCK_O);
                }
            }
        }
        for (oo, acc_o) in acc.iter().enumerate() {
            let dst = out.add(oo * g.p_len + p0);
            for (v, a) in acc_o.iter().enumerate() {
                _mm512_mask_storeu_ps(dst.wrapping_add(v * LANES), masks[v], *a);
            }
        }
    }

    /// # Safety
    /// AVX-512F must be available, and the slices must hold the geometry (see
    /// [`super::shifted_transpose`]).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn shifted_transpose(
        packed: &[f32],
        g: Geometry,
        grad: &[f32],
        gx: &mut [f32],
    ) {
        let taps = g.kh * g.kw;
        for cb in 0..g.c.div_ceil(BLOCK_O) {
            let live = (g.c - cb * BLOCK_O).min(BLOCK_O);
            let w = packed.as_ptr().add(cb * taps * g.o * BLOCK_O);
            let (src, dst) = (grad.as_ptr(), gx.as_mut_ptr().add(cb * BLOCK_O * g.plane));
            for (p0, vectors) in strips(g.p_len) {
                match vectors {
                    1 => transpose_strip::<1>(w, g, src, dst, live, p0),
                    2 => transpose_strip::<2>(w, g, src, dst, live, p0),
                    _ => transpose_strip::<3>(w, g, src, dst, live, p0),
                }
            }
        }
    }

    /// Positions `p0 .. p0 + BP·16` of the gradient, into `live` input channels from `gx`.
    /// Per tap, the 8 × BP block of `gx` it lands on is loaded, all `O` channels are added in
    /// registers, and it is stored back.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn transpose_strip<const BP: usize>(
        w: *const f32,
        g: Geometry,
        grad: *const f32,
        gx: *mut f32,
        live: usize,
        p0: usize,
    ) {
        let masks = strip_masks::<BP>(p0, g.p_len);
        // channels past `live` are masked off entirely (their weights are zero)
        let mut cmask = [[0u16; BP]; BLOCK_O];
        for (cc, row) in cmask.iter_mut().enumerate() {
            if cc < live {
                *row = masks;
            }
        }
        let mut wt = w;
        for i in 0..g.kh {
            for j in 0..g.kw {
                let at = gx.wrapping_add(p0 + i * g.wp + j);
                let mut acc = [[_mm512_setzero_ps(); BP]; BLOCK_O];
                for (cc, acc_c) in acc.iter_mut().enumerate() {
                    for (v, a) in acc_c.iter_mut().enumerate() {
                        let ptr = at.wrapping_add(cc * g.plane + v * LANES);
                        *a = _mm512_maskz_loadu_ps(cmask[cc][v], ptr);
                    }
                }
                for oi in 0..g.o {
                    let src = grad.wrapping_add(oi * g.p_len + p0);
                    let mut x = [_mm512_setzero_ps(); BP];
                    for (v, xv) in x.iter_mut().enumerate() {
                        *xv = _mm512_maskz_loadu_ps(masks[v], src.wrapping_add(v * LANES));
                    }
                    for (cc, acc_c) in acc.iter_mut().enumerate() {
                        let wv = _mm512_set1_ps(*wt.add(cc));
                        for (a, xv) in acc_c.iter_mut().zip(&x) {
                            *a = _mm512_fmadd_ps(wv, *xv, *a);
                        }
                    }
                    wt = wt.add(BLOCK_O);
                }
                for (cc, acc_c) in acc.iter().enumerate() {
                    for (v, a) in acc_c.iter().enumerate() {
                        let ptr = at.wrapping_add(cc * g.plane + v * LANES);
                        _mm512_mask_storeu_ps(ptr, cmask[cc][v], *a);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The geometry of a `kh × kw` kernel over a `hp × wp` padded plane.
    fn geometry((o, c, kh, kw, hp, wp): (usize, usize, usize, usize, usize, usize)) -> Geometry {
        let (oh, ow) = (hp - kh + 1, wp - kw + 1);
        Geometry {
            o,
            c,
            kh,
            kw,
            plane: hp * wp,
            wp,
            p_len: (oh - 1) * wp + ow,
        }
    }

    /// Deterministic values with both signs, no two neighbours alike: `(i·a mod m − m/2) / d`.
    fn pattern(n: usize, a: usize, m: usize, d: f32) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * a % m) as f32 - (m / 2) as f32) / d)
            .collect()
    }

    /// The sum written out naively, in f64.
    fn reference(w: &[f32], g: Geometry, input: &[f32]) -> Vec<f64> {
        let k = g.c * g.kh * g.kw;
        let mut full = vec![0f64; g.o * g.p_len];
        for o in 0..g.o {
            for p in 0..g.p_len {
                let mut s = 0f64;
                for c in 0..g.c {
                    for i in 0..g.kh {
                        for j in 0..g.kw {
                            s += w[o * k + (c * g.kh + i) * g.kw + j] as f64
                                * input[c * g.plane + i * g.wp + j + p] as f64;
                        }
                    }
                }
                full[o * g.p_len + p] = s;
            }
        }
        full
    }

    #[test]
    fn matches_the_naive_sum_on_ragged_blocks() {
        if !available() {
            return;
        }
        // (o, c, kh, kw, hp, wp): channel counts off the block of 8, positions off 48
        for (o, c, kh, kw, hp, wp) in [
            (8, 8, 3, 3, 10, 10),
            (9, 3, 3, 3, 7, 11),
            (3, 1, 1, 1, 1, 5),
            (1, 32, 3, 3, 30, 30),
            (1, 4, 2, 2, 40, 9),
            (17, 5, 2, 4, 9, 13),
            (32, 32, 3, 3, 28, 28),
            (4, 2, 1, 1, 1, 88),
            (16, 2, 1, 1, 1, 88),
        ] {
            let g = geometry((o, c, kh, kw, hp, wp));
            let k = c * kh * kw;
            // deterministic values with both signs, no two alike
            let w = pattern(o * k, 37, 101, 64.0);
            let input = pattern(c * hp * wp, 53, 97, 32.0);
            let sentinel = 1234.5f32;
            let mut full = vec![sentinel; o * g.p_len + 7];
            assert!(shifted(&pack(&w, o, k), g, &input, &mut full));
            let want = reference(&w, g, &input);
            for (idx, (&got, &want)) in full.iter().zip(&want).enumerate() {
                let tol = 1e-5 * want.abs().max(1.0);
                assert!(
                    (got as f64 - want).abs() <= tol,
                    "{:?} at {idx}: {got} vs {want}",
                    (o, c, kh, kw, hp, wp)
                );
            }
            // nothing past the output
            assert!(full[o * g.p_len..].iter().all(|&v| v == sentinel));
        }
    }

    #[test]
    fn transpose_is_the_adjoint_of_the_shifted_sum() {
        if !available() {
            return;
        }
        // the adjoint of `shifted`: every input entry gathers w · grad over the outputs it
        // feeds; checked entry by entry against that sum written out naively
        for (o, c, kh, kw, hp, wp) in [
            (8, 8, 3, 3, 10, 10),
            (5, 9, 3, 3, 7, 11),
            (3, 17, 2, 4, 9, 13),
            (32, 32, 3, 3, 12, 12),
            (2, 3, 1, 1, 1, 70),
            (2, 3, 1, 1, 1, 88),
        ] {
            let g = geometry((o, c, kh, kw, hp, wp));
            let k = c * kh * kw;
            let w = pattern(o * k, 37, 101, 64.0);
            let grad = pattern(o * g.p_len, 53, 97, 32.0);
            // the naive transpose, in f64
            let mut want = vec![0f64; c * hp * wp];
            for oi in 0..o {
                for ci in 0..c {
                    for i in 0..kh {
                        for j in 0..kw {
                            let wv = w[oi * k + (ci * kh + i) * kw + j] as f64;
                            for p in 0..g.p_len {
                                want[ci * g.plane + p + i * wp + j] +=
                                    wv * grad[oi * g.p_len + p] as f64;
                            }
                        }
                    }
                }
            }
            let start = 0.25f32;
            let sentinel = 1234.5f32;
            let mut gx = vec![start; c * hp * wp];
            gx.push(sentinel);
            let packed = pack_transpose(&w, [o, c, kh, kw]);
            assert!(shifted_transpose(&packed, g, &grad, &mut gx));
            for (idx, (&got, &want)) in gx.iter().zip(&want).enumerate() {
                let want = want + start as f64;
                assert!(
                    (got as f64 - want).abs() <= 1e-5 * want.abs().max(1.0),
                    "{:?} at {idx}: {got} vs {want}",
                    (o, c, kh, kw, hp, wp)
                );
            }
            assert_eq!(gx[c * hp * wp], sentinel);
        }
    }

    #[test]
    fn refuses_slices_too_short_for_the_geometry() {
        let g = Geometry {
            o: 2,
            c: 2,
            kh: 3,
            kw: 3,
            plane: 25,
            wp: 5,
            p_len: 13,
        };
        let packed = pack(&[0.5; 36], 2, 18);
        let mut full = vec![0f32; 26];
        assert!(!shifted(&packed, g, &[1.0; 49], &mut full));
        assert!(!shifted(&packed, g, &[1.0; 50], &mut full[..25]));
    }
}
