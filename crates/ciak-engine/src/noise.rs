//! Seed to noise, defined here rather than by a crate's RNG so that a seed means the same
//! latent in every ciak version: SplitMix64 from the seed gives 53-bit uniforms, and each
//! pair (u1, u2) gives two normals by Box-Muller, `sqrt(-2 ln u1) * (cos, sin)(2 pi u2)`,
//! computed in f64 and rounded to f32, written in row-major order.
use candle_core::{Device, Result, Shape, Tensor};

/// SplitMix64's increment: draw k of a stream that starts at state `s` is `mix(s + k * GOLDEN)`.
pub const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's output function.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN);
        mix(self.0)
    }

    /// Uniform in (0, 1]: never 0, so the logarithm below is finite.
    pub fn next_open01(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Below this many Box-Muller pairs one thread draws them all.
const PARALLEL_PAIRS: usize = 1 << 16;

/// `n` standard normals of the stream that starts at SplitMix64 state `state` (the module's
/// definition: pairs of uniforms, both Box-Muller branches). The stream is a counter, so long
/// draws are cut into chunks that threads fill independently: the same numbers as one thread
/// drawing them in order, on any thread count. The draw uses `2 * n.div_ceil(2)` states.
pub fn normals(state: u64, n: usize) -> Vec<f32> {
    let pairs = n.div_ceil(2);
    let mut out = vec![0f32; 2 * pairs];
    let fill = |first_pair: usize, chunk: &mut [f32]| {
        let mut rng = SplitMix64::new(state.wrapping_add(GOLDEN.wrapping_mul(2 * first_pair as u64)));
        for pair in chunk.chunks_exact_mut(2) {
            let r = (-2.0 * rng.next_open01().ln()).sqrt();
            let theta = std::f64::consts::TAU * rng.next_open01();
            pair[0] = (r * theta.cos()) as f32;
            pair[1] = (r * theta.sin()) as f32;
        }
    };
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get()).min(16);
    if threads == 1 || pairs < PARALLEL_PAIRS {
        fill(0, &mut out);
    } else {
        let per = pairs.div_ceil(threads);
        std::thread::scope(|s| {
            for (i, chunk) in out.chunks_mut(2 * per).enumerate() {
                let fill = &fill;
                s.spawn(move || fill(i * per, chunk));
            }
        });
    }
    out.truncate(n);
    out
}

/// Standard normal noise of `shape` from `seed` (f32, on `device`).
pub fn gaussian(seed: u64, shape: impl Into<Shape>, device: &Device) -> Result<Tensor> {
    let shape = shape.into();
    let n = shape.elem_count();
    Tensor::from_vec(normals(seed, n), shape, device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_bits_and_normal_statistics() {
        let a: Vec<f32> = gaussian(42, (4, 1000), &Device::Cpu).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = gaussian(42, (4, 1000), &Device::Cpu).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let c: Vec<f32> = gaussian(43, (4, 1000), &Device::Cpu).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
        assert_ne!(a, c);
        let mean = a.iter().map(|&x| x as f64).sum::<f64>() / a.len() as f64;
        let var = a.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / a.len() as f64;
        assert!(mean.abs() < 0.05 && (var - 1.0).abs() < 0.06, "mean {mean}, var {var}");
    }

    #[test]
    fn golden_values_pin_the_definition() {
        // Changing these changes what every recorded seed renders: don't.
        let mut rng = SplitMix64::new(0);
        assert_eq!(rng.next_u64(), 0xE220_A839_7B1D_CDAF);
        let v: Vec<f32> = gaussian(0, 3, &Device::Cpu).unwrap().to_vec1().unwrap();
        assert_eq!(v.len(), 3);
        let again: Vec<f32> = gaussian(0, 4, &Device::Cpu).unwrap().to_vec1().unwrap();
        assert_eq!(&again[..3], &v[..], "a longer draw starts with the shorter one");
    }
}
