//! Random weights for any model, without files: a `VarBuilder` backend that fills each tensor the
//! model asks for from a hash of (seed, tensor name, element index). Speed does not depend on the
//! weight values, so this times the real architecture; the fill is cheap (a few ns per element,
//! all cores) and deterministic, so CPU and GPU runs see the same weights.
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Serves seeded random tensors and counts how many parameters it handed out.
#[derive(Clone)]
pub struct RandomBackend {
    seed: u64,
    params: Arc<AtomicU64>,
    tensors: Arc<AtomicU64>,
}

impl RandomBackend {
    pub fn new(seed: u64) -> Self {
        Self { seed, params: Arc::default(), tensors: Arc::default() }
    }

    /// Elements handed out so far (the parameter count of the model built from it).
    pub fn params(&self) -> u64 {
        self.params.load(Ordering::Relaxed)
    }

    /// Tensors handed out so far.
    pub fn tensors(&self) -> u64 {
        self.tensors.load(Ordering::Relaxed)
    }

    /// A `VarBuilder` over this backend; counts stay readable through `self`.
    pub fn varbuilder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), dtype, device.clone())
    }
}

/// SplitMix64's increment and output function: `mix(stream + k * GAMMA)` is the k-th output.
const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a of the name, so each tensor gets its own stream whatever the build order.
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xCBF2_9CE4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3))
}

/// How a tensor is filled: `center + half_width * u` with u uniform in [-1, 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fill {
    pub center: f32,
    pub half_width: f32,
}

impl Fill {
    /// Variance-preserving for matrices and kernels (std 1/sqrt(fan_in), so activations keep
    /// their scale through 30-40 layers), about 1 for norm weights, small for biases and tables.
    pub fn for_tensor(name: &str, dims: &[usize]) -> Self {
        let sqrt3 = 3f32.sqrt();
        match dims.len() {
            0 | 1 if name.ends_with("weight") => Fill { center: 1.0, half_width: 0.1 },
            0 | 1 => Fill { center: 0.0, half_width: 0.02 * sqrt3 },
            _ => {
                let fan_in: usize = dims[1..].iter().product::<usize>().max(1);
                Fill { center: 0.0, half_width: sqrt3 / (fan_in as f32).sqrt() }
            }
        }
    }
}

/// Element `2k` and `2k + 1` come from the high and low 24-bit halves of output k, so element i
/// depends only on i and the thread split changes nothing.
fn fill_pairs(stream: u64, fill: Fill, first_pair: usize, out: &mut [f32]) {
    let unit = 2.0 / (1u32 << 24) as f32;
    let to_value = |bits: u64| fill.center + fill.half_width * ((bits & 0xFF_FFFF) as f32 * unit - 1.0);
    let mut pairs = out.chunks_exact_mut(2);
    let mut k = first_pair as u64;
    for pair in &mut pairs {
        let bits = mix(stream.wrapping_add(k.wrapping_mul(GAMMA)));
        pair[0] = to_value(bits >> 40);
        pair[1] = to_value(bits >> 8);
        k += 1;
    }
    if let [last] = pairs.into_remainder() {
        *last = to_value(mix(stream.wrapping_add(k.wrapping_mul(GAMMA))) >> 40);
    }
}

/// `n` values of the stream `stream`, on all cores for large tensors.
fn fill_values(n: usize, stream: u64, fill: Fill) -> Vec<f32> {
    let mut out = vec![0f32; n];
    let threads = std::thread::available_parallelism().map(|t| t.get()).unwrap_or(1);
    if n < (1 << 20) || threads == 1 {
        fill_pairs(stream, fill, 0, &mut out);
        return out;
    }
    // An even chunk length keeps every chunk's pairs aligned with the global pairs.
    let per = n.div_ceil(threads).next_multiple_of(2);
    std::thread::scope(|s| {
        for (c, chunk) in out.chunks_mut(per).enumerate() {
            s.spawn(move || fill_pairs(stream, fill, c * per / 2, chunk));
        }
    });
    out
}

/// The tensor `name` of `shape` for `seed` in `dtype` on `device`: drawn in f32 on the CPU, then
/// converted by candle (on the device for accelerators), so every device sees the same values up
/// to rounding.
pub fn random_tensor(seed: u64, name: &str, shape: &Shape, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
    let fill = Fill::for_tensor(name, shape.dims());
    let values = fill_values(shape.elem_count(), mix(seed ^ name_hash(name)), fill);
    Tensor::from_vec(values, shape, &Device::Cpu)?.to_device(device)?.to_dtype(dtype)
}

impl SimpleBackend for RandomBackend {
    fn get(&self, s: Shape, name: &str, _: Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.params.fetch_add(s.elem_count() as u64, Ordering::Relaxed);
        self.tensors.fetch_add(1, Ordering::Relaxed);
        random_tensor(self.seed, name, &s, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("random weights need a shape: `{name}` was requested without one")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(t: &Tensor) -> Vec<f32> {
        t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn same_seed_and_name_same_values_else_different() {
        let shape = Shape::from((64, 32));
        let a = values(&random_tensor(1, "blocks.0.ffn.w", &shape, DType::F32, &Device::Cpu).unwrap());
        let b = values(&random_tensor(1, "blocks.0.ffn.w", &shape, DType::F32, &Device::Cpu).unwrap());
        let c = values(&random_tensor(2, "blocks.0.ffn.w", &shape, DType::F32, &Device::Cpu).unwrap());
        let d = values(&random_tensor(1, "blocks.1.ffn.w", &shape, DType::F32, &Device::Cpu).unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
    }

    #[test]
    fn statistics_follow_the_fill_rule_and_threads_change_nothing() {
        // Large enough to take the threaded path; its first elements equal a small draw's.
        let big = Shape::from((1 << 11, 1 << 10));
        let v = values(&random_tensor(7, "w", &big, DType::F32, &Device::Cpu).unwrap());
        let small = values(&random_tensor(7, "w", &Shape::from((1, 1 << 10)), DType::F32, &Device::Cpu).unwrap());
        assert_eq!(&v[..1 << 10], &small[..]);
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let std = (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
        let want_std = 1.0 / (1024f64).sqrt();
        assert!(mean.abs() < 1e-4, "mean {mean}");
        assert!((std / want_std - 1.0).abs() < 0.01, "std {std}, want {want_std}");
        let norm = values(&random_tensor(7, "norm.weight", &Shape::from(4096), DType::BF16, &Device::Cpu).unwrap());
        assert!(norm.iter().all(|&x| (0.89..=1.11).contains(&x)), "norm weights near 1");
        let bias = values(&random_tensor(7, "proj.bias", &Shape::from(4096), DType::F16, &Device::Cpu).unwrap());
        assert!(bias.iter().all(|&x| x.abs() < 0.035) && bias.iter().any(|&x| x != 0.0));
    }

    #[test]
    fn backend_counts_parameters_and_builds_a_linear() {
        let backend = RandomBackend::new(0);
        let vb = backend.varbuilder(DType::F32, &Device::Cpu);
        let lin = candle_nn::linear(8, 4, vb.pp("proj")).unwrap();
        assert_eq!(backend.params(), 8 * 4 + 4);
        assert_eq!(backend.tensors(), 2);
        let x = Tensor::ones((2, 8), DType::F32, &Device::Cpu).unwrap();
        let y = candle_core::Module::forward(&lin, &x).unwrap();
        assert_eq!(y.dims(), &[2, 4]);
        assert!(vb.get_unchecked("anything").is_err());
    }
}
