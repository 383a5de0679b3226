//! The random-start noise generator: eight xoshiro256+ streams side by side.
//!
//! A random start needs one uniform number per pixel (100k for a batch of 128 MNIST digits).
//! Drawn one by one from `StdRng` (ChaCha12) they cost about 5 ns each, 500 µs per PGD run:
//! three gradients of a small model. [`Noise`] holds eight independent xoshiro256+ generators
//! (Blackman & Vigna 2018, arXiv:1805.01407), advanced together so that the compiler keeps the
//! eight lanes in one vector register, and is seeded by the caller's generator: the same caller
//! state gives the same noise on every machine and thread count (lanes are a data layout, not
//! threads). xoshiro256+ is the generator its authors recommend for floating-point numbers; its
//! weak lowest bits are never used (each `f32` takes 24 bits from the top 48).

use rand::rand_core::impls::fill_bytes_via_next;
use rand::{Rng, RngCore};

use crate::simd::multiversion;

/// Streams advanced together.
const LANES: usize = 8;
/// 2⁻²⁴: a 24-bit integer times this is a uniform `f32` in `[0, 1)`, exactly.
const UNIT: f32 = 1.0 / 16_777_216.0;

/// Eight xoshiro256+ streams; also a [`RngCore`] (for the Gaussian and exponential draws of the
/// L2 and L1 starts), which hands out the lanes' outputs in order.
pub(crate) struct Noise {
    /// `s[k][lane]`: word `k` of each stream's 256-bit state.
    s: [[u64; LANES]; 4],
    /// Outputs of the last advance not yet handed out by `next_u64`.
    out: [u64; LANES],
    used: usize,
}

impl Noise {
    /// Streams seeded from `rng` (32 words; a stream is never all zero, the one state
    /// xoshiro cannot leave).
    pub(crate) fn seeded<R: Rng + ?Sized>(rng: &mut R) -> Self {
        let mut s = [[0u64; LANES]; 4];
        for word in s.iter_mut() {
            for v in word.iter_mut() {
                *v = rng.random();
            }
        }
        for lane in 0..LANES {
            if s.iter().all(|w| w[lane] == 0) {
                s[0][lane] = 1;
            }
        }
        Self {
            s,
            out: [0; LANES],
            used: LANES,
        }
    }

    /// `dst` filled with independent uniform numbers of `[-eps, eps]`: `2·eps·u − eps` in
    /// `f32` for `u` uniform on the 2²⁴ points `k · 2⁻²⁴` of `[0, 1)`. Each advance gives 16
    /// numbers (two per stream, from bits 40–63 and 16–39), taken in order; a tail shorter than
    /// 16 takes the first of them and drops the rest.
    pub(crate) fn fill_symmetric(&mut self, eps: f32, dst: &mut [f32]) {
        fill(&mut self.s, eps, dst);
    }
}

/// One step of every stream; their outputs.
#[inline(always)]
fn advance(s: &mut [[u64; LANES]; 4]) -> [u64; LANES] {
    let [s0, s1, s2, s3] = s;
    let mut out = [0u64; LANES];
    for i in 0..LANES {
        out[i] = s0[i].wrapping_add(s3[i]);
        let t = s1[i] << 17;
        s2[i] ^= s0[i];
        s3[i] ^= s1[i];
        s1[i] ^= s2[i];
        s0[i] ^= s3[i];
        s2[i] ^= t;
        s3[i] = s3[i].rotate_left(45);
    }
    out
}

multiversion! {
    /// [`Noise::fill_symmetric`] on the streams' state `s`.
    fn fill(s: &mut [[u64; LANES]; 4], eps: f32, dst: &mut [f32]) {
        let (scale, shift) = (2.0 * eps * UNIT, eps);
        let uniform = |bits: u64| (bits & 0xff_ffff) as f32 * scale - shift;
        for chunk in dst.chunks_mut(2 * LANES) {
            let r = advance(s);
            let mut vals = [0f32; 2 * LANES];
            for i in 0..LANES {
                vals[i] = uniform(r[i] >> 40);
                vals[LANES + i] = uniform(r[i] >> 16);
            }
            chunk.copy_from_slice(&vals[..chunk.len()]);
        }
    }
}

impl RngCore for Noise {
    fn next_u32(&mut self) -> u32 {
        // the top half: xoshiro256+'s weak bits are the lowest
        (self.next_u64() >> 32) as u32
    }

    fn next_u64(&mut self) -> u64 {
        if self.used == LANES {
            self.out = advance(&mut self.s);
            self.used = 0;
        }
        self.used += 1;
        self.out[self.used - 1]
    }

    fn fill_bytes(&mut self, dst: &mut [u8]) {
        fill_bytes_via_next(self, dst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    /// One xoshiro256+ stream written out plainly, as in the authors' reference code.
    fn reference(mut s: [u64; 4], n: usize) -> Vec<u64> {
        (0..n)
            .map(|_| {
                let out = s[0].wrapping_add(s[3]);
                let t = s[1] << 17;
                s[2] ^= s[0];
                s[3] ^= s[1];
                s[1] ^= s[2];
                s[0] ^= s[3];
                s[2] ^= t;
                s[3] = s[3].rotate_left(45);
                out
            })
            .collect()
    }

    /// Every lane is its own xoshiro256+ stream, and `next_u64` hands the lanes out in order.
    #[test]
    fn lanes_are_xoshiro_streams() {
        let mut noise = Noise::seeded(&mut StdRng::seed_from_u64(5));
        // lane 3 from the published state, the others as seeded
        for (k, word) in noise.s.iter_mut().enumerate() {
            word[3] = k as u64 + 1;
        }
        let streams: Vec<Vec<u64>> = (0..LANES)
            .map(|l| reference([0, 1, 2, 3].map(|k| noise.s[k][l]), 3))
            .collect();
        let drawn: Vec<u64> = (0..3 * LANES).map(|_| noise.next_u64()).collect();
        for (i, v) in drawn.iter().enumerate() {
            assert_eq!(*v, streams[i % LANES][i / LANES], "draw {i}");
        }
        // The plain stream against the authors' C reference (prng.di.unimi.it/xoshiro256plus.c)
        // from the state 1, 2, 3, 4: its first ten outputs, as published with rand_xoshiro.
        let published = [
            5,
            211_106_232_532_999,
            211_106_635_186_183,
            9_223_759_065_350_669_058,
            9_250_833_439_874_351_877,
            13_862_484_359_527_728_515,
            2_346_507_365_006_083_650,
            1_168_864_526_675_804_870,
            34_095_955_243_042_024,
            3_466_914_240_207_415_127,
        ];
        assert_eq!(reference([1, 2, 3, 4], 10), published);
        assert_eq!(streams[3], published[..3]);
    }

    /// The (vectorised) fill is the lanes' plain streams, 16 numbers per advance in the
    /// documented order, for every tail length; for eps = 1/4 (no rounding) the values lie in
    /// [-eps, eps) on the 2²⁴-point grid.
    #[test]
    fn fill_takes_the_streams_in_order() {
        let eps = 0.25f32;
        for len in [0usize, 1, 15, 16, 17, 100, 1000] {
            let mut noise = Noise::seeded(&mut StdRng::seed_from_u64(9));
            let advances = len.div_ceil(2 * LANES);
            let streams: Vec<Vec<u64>> = (0..LANES)
                .map(|l| reference([0, 1, 2, 3].map(|k| noise.s[k][l]), advances))
                .collect();
            // per advance: every lane's bits 40–63, then every lane's bits 16–39
            let want: Vec<u32> = (0..advances)
                .flat_map(|j| {
                    [40, 16]
                        .into_iter()
                        .flat_map(move |sh| (0..LANES).map(move |l| (j, l, sh)))
                })
                .map(|(j, l, sh)| {
                    let k = (streams[l][j] >> sh) & 0xff_ffff;
                    (k as f32 * (2.0 * eps / 16_777_216.0) - eps).to_bits()
                })
                .take(len)
                .collect();
            let mut got = vec![0f32; len];
            noise.fill_symmetric(eps, &mut got);
            assert_eq!(
                got.iter().map(|f| f.to_bits()).collect::<Vec<_>>(),
                want,
                "len {len}"
            );
            assert!(got.iter().all(|v| (-eps..eps).contains(v)), "len {len}");
            assert!(got
                .iter()
                .all(|v| ((v + eps) / (2.0 * eps) * 16_777_216.0).fract() == 0.0));
        }
    }

    /// Uniform and uncorrelated: mean, variance and lag-1 correlation (across lanes and across
    /// the two halves of one output) of 2¹⁸ draws within 5 standard errors of a uniform's.
    #[test]
    fn fill_is_uniform_and_uncorrelated() {
        let n = 1 << 18;
        let mut v = vec![0f32; n];
        Noise::seeded(&mut StdRng::seed_from_u64(1)).fill_symmetric(1.0, &mut v);
        let v: Vec<f64> = v.into_iter().map(f64::from).collect();
        let nf = n as f64;
        let mean = v.iter().sum::<f64>() / nf;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / nf;
        let lag = |k: usize| v.windows(k + 1).map(|w| w[0] * w[k]).sum::<f64>() / nf / var;
        // U(-1, 1): variance 1/3; the mean's standard error √(1/3n), a correlation's 1/√n
        assert!(mean.abs() < 5.0 * (1.0 / (3.0 * nf)).sqrt(), "mean {mean}");
        assert!(
            (var - 1.0 / 3.0).abs() < 5.0 * (4.0 / (45.0 * nf)).sqrt(),
            "var {var}"
        );
        for k in [1, LANES, 2 * LANES] {
            assert!(lag(k).abs() < 5.0 / nf.sqrt(), "lag {k}: {}", lag(k));
        }
    }
}
