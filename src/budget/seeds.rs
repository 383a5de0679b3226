//! Random streams that belong to a sample, not to its place in a batch.
//!
//! An attack's random draws (a random start, a restart's new start, Square's proposals,
//! MI-FGSM's input diversity) come from one generator per sample, seeded by the attack's seed
//! and a 64-bit hash of the sample's pixels. A sample therefore gets the same draws, and the
//! same adversarial example bit for bit, whatever batch it is in, wherever it sits in that
//! batch, whichever samples leave the batch early, and however an evaluation is split into
//! shards or batches. Two batches no longer share their random starts position by position (as
//! one generator per call made them), and an attack called directly on a tensor needs no sample
//! index to be reproducible. Identical images get identical draws: the attack is a function of
//! its input.

use candle_core::Tensor;
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::error::Result;

/// One generator per sample of a batch, keyed by the attack's seed and the sample's pixels;
/// built on first use, so that an attack that draws nothing pays nothing.
pub(crate) struct SampleRngs {
    seed: u64,
    x: Tensor,
    rngs: Vec<StdRng>,
}

impl SampleRngs {
    /// Generators for the rows of `x` (`[N, …]` `f32`), drawn from its pixels on first use.
    pub(crate) fn new(seed: u64, x: &Tensor) -> Self {
        Self {
            seed,
            x: x.clone(),
            rngs: Vec::new(),
        }
    }

    /// The generator of sample `i` of the batch.
    ///
    /// # Errors
    /// Candle's, copying the batch to the host on first use.
    pub(crate) fn get(&mut self, i: usize) -> Result<&mut StdRng> {
        if self.rngs.is_empty() {
            let n = self.x.dim(0)?;
            let host = self.x.flatten_all()?.to_vec1::<f32>()?;
            let d = host.len() / n.max(1);
            self.rngs = (0..n)
                .map(|i| StdRng::seed_from_u64(key(self.seed, &host[i * d..(i + 1) * d])))
                .collect();
        }
        Ok(&mut self.rngs[i])
    }
}

/// SplitMix64's finaliser: a bijection of `u64` whose output bits each depend on every input
/// bit (Steele, Lea & Flood 2014).
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The seed of a sample's generator: the pixels' bit patterns folded through [`mix`] with the
/// attack's seed and the sample's length (so that a prefix of a sample keys differently).
fn key(seed: u64, pixels: &[f32]) -> u64 {
    let mut h = mix(seed ^ 0x9e37_79b9_7f4a_7c15);
    for pair in pixels.chunks(2) {
        let lo = u64::from(pair[0].to_bits());
        let hi = pair.get(1).map_or(0, |v| u64::from(v.to_bits()));
        h = mix(h ^ (lo | hi << 32));
    }
    mix(h ^ pixels.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use rand::Rng;

    #[test]
    fn a_sample_keeps_its_stream_wherever_it_sits() {
        let dev = Device::Cpu;
        let a = [0.1f32, 0.2, 0.3, 0.4];
        let b = [0.5f32, 0.6, 0.7, 0.8];
        let ab = Tensor::new(&[a, b], &dev).unwrap();
        let ba = Tensor::new(&[b, a], &dev).unwrap();
        let first = |r: &mut SampleRngs, i| r.get(i).unwrap().random::<u64>();
        let (mut x, mut y) = (SampleRngs::new(7, &ab), SampleRngs::new(7, &ba));
        assert_eq!(first(&mut x, 0), first(&mut y, 1));
        assert_eq!(first(&mut x, 1), first(&mut y, 0));
        let mut z = SampleRngs::new(8, &ab);
        let mut x = SampleRngs::new(7, &ab);
        assert_ne!(first(&mut x, 0), first(&mut z, 0), "the seed matters");
        assert_ne!(first(&mut x, 0), first(&mut x, 1), "the pixels matter");
        // one flipped bit of one pixel changes the stream
        let mut c = a;
        c[3] = f32::from_bits(c[3].to_bits() ^ 1);
        let mut w = SampleRngs::new(7, &Tensor::new(&[c], &dev).unwrap());
        let mut x = SampleRngs::new(7, &ab);
        assert_ne!(first(&mut x, 0), first(&mut w, 0));
    }
}
