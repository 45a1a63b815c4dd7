//! The flow-matching objective, matched to what ciak's samplers do with the model.
//!
//! The samplers (UniPC with flow sigmas, flow-match Euler) integrate `dx/dsigma = v` from
//! sigma = 1 (noise) to 0 (data) along `x_sigma = (1 - sigma) * x0 + sigma * noise`, calling the
//! model with `timestep = sigma * 1000`. So training feeds the model that `x_sigma` and that
//! timestep (a float, as Euler passes it; UniPC passes it truncated to an integer, which the
//! sinusoidal embedding barely distinguishes) and regresses the velocity `noise - x0` with MSE.
//!
//! Noise levels: by default `u ~ U[0, 1)` mapped through the sampler's shift
//! `sigma = s*u / (1 + (s-1)*u)`. The sampler's grid is that same map applied to a uniform grid,
//! so training sees noise levels with the density the sampler visits them (shift 3 puts 3/4 of
//! the mass above sigma 0.5, where the layout of a clip is decided). Logit-normal (SD3) is there
//! as an option.

use super::Result;
use candle_core::{DType, Device, Tensor};
use ciak_engine::noise::{mix, GOLDEN};
use serde::{Deserialize, Serialize};

/// A seeded generator whose whole state is one `u64` (SplitMix64), so a checkpoint saves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrainRng {
    pub state: u64,
}

impl TrainRng {
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN);
        mix(self.state)
    }

    /// Uniform in [0, 1), 53 bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in (0, 1]: never 0, so logarithms stay finite.
    fn open01(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// One standard normal (Box-Muller, the cosine branch).
    pub fn normal(&mut self) -> f64 {
        let r = (-2.0 * self.open01().ln()).sqrt();
        r * (std::f64::consts::TAU * self.open01()).cos()
    }

    /// `n` standard normals as f32, both Box-Muller branches used: the engine's seed-to-noise
    /// stream from the current state (threaded, see [`ciak_engine::noise::normals`]).
    pub fn normals(&mut self, n: usize) -> Vec<f32> {
        let out = ciak_engine::noise::normals(self.state, n);
        self.state = self.state.wrapping_add(GOLDEN.wrapping_mul(2 * n.div_ceil(2) as u64));
        out
    }

    /// Standard normal noise of `shape`, f32 on `device`.
    pub fn gaussian(&mut self, shape: &[usize], device: &Device) -> Result<Tensor> {
        let n = shape.iter().product();
        Ok(Tensor::from_vec(self.normals(n), shape, device)?)
    }
}

/// How training draws noise levels.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SigmaSampling {
    /// `u ~ U[0, 1)` through the sampler's shift: the density of the sampler's own grid.
    ShiftedUniform,
    /// `u = sigmoid(N(mean, std))` through the shift (Stable Diffusion 3's choice).
    LogitNormal { mean: f64, std: f64 },
}

/// The flow shift map of the samplers, `s*u / (1 + (s-1)*u)`.
pub fn shift_sigma(u: f64, shift: f64) -> f64 {
    shift * u / (1.0 + (shift - 1.0) * u)
}

impl SigmaSampling {
    pub fn sample(&self, rng: &mut TrainRng, shift: f64) -> f64 {
        let u = match *self {
            SigmaSampling::ShiftedUniform => rng.uniform(),
            SigmaSampling::LogitNormal { mean, std } => 1.0 / (1.0 + (-(mean + std * rng.normal())).exp()),
        };
        shift_sigma(u, shift)
    }

    /// Like [`Self::sample`], but exactly 1 with probability `terminal_share`. A share of 0 draws
    /// nothing extra, so runs without it keep their random stream.
    pub fn sample_with_terminal(&self, rng: &mut TrainRng, shift: f64, terminal_share: f64) -> f64 {
        if terminal_share > 0.0 && rng.uniform() < terminal_share {
            1.0
        } else {
            self.sample(rng, shift)
        }
    }
}

/// The timestep the samplers pass for noise level `sigma` (`sigma * 1000` in f32, like Euler).
pub fn timestep_of(sigma: f32) -> f32 {
    sigma * 1000.0
}

/// Noisy inputs and velocity targets of a batch.
#[derive(Debug, Clone)]
pub struct FlowBatch {
    /// `(1 - sigma) * x0 + sigma * noise`, [B, C, F, H, W] f32.
    pub noisy: Tensor,
    /// `noise - x0`, like `noisy`.
    pub target: Tensor,
    /// [B] f32: `sigma * 1000` per clip.
    pub timesteps: Tensor,
}

/// Builds the model inputs and targets from clean latents, noise and one sigma per clip.
///
/// Shapes: x0 [B, ...], noise like x0, sigmas (B) -> FlowBatch.
pub fn flow_batch(x0: &Tensor, noise: &Tensor, sigmas: &[f32]) -> Result<FlowBatch> {
    let b = x0.dim(0)?;
    if sigmas.len() != b || noise.dims() != x0.dims() {
        return Err(super::TrainError::Data(format!(
            "flow_batch: expected {b} sigmas and noise of shape {:?}, got {} and {:?}",
            x0.dims(),
            sigmas.len(),
            noise.dims()
        )));
    }
    let x0 = x0.to_dtype(DType::F32)?;
    let s = per_sample(sigmas.to_vec(), &x0)?;
    let one_minus = per_sample(sigmas.iter().map(|s| 1.0 - s).collect(), &x0)?;
    let noisy = (x0.broadcast_mul(&one_minus)? + noise.broadcast_mul(&s)?)?;
    let target = (noise - &x0)?;
    let timesteps = Tensor::from_vec(sigmas.iter().map(|&s| timestep_of(s)).collect::<Vec<f32>>(), b, x0.device())?;
    Ok(FlowBatch { noisy, target, timesteps })
}

/// Restarts the samples flagged in `own` from the model's own answer at sigma 1, as the sampler
/// does: its first step turns pure noise into the caption's mean clip `x0_hat` (a blob where the
/// object goes, with no outline), and every later state holds that answer, not the clip. A flagged
/// sample's input becomes `(1 - sigma) * x0_hat + sigma * noise`, where one Euler step from sigma
/// 1 with that answer lands, and its target the velocity that goes on from there to the clip,
/// `(input - x0) / sigma`, so the model learns to finish what its first step left unsaid (a
/// star's points, a spin) from the caption, instead of trusting its input the way the clip's own
/// noised states let it. With `x0_hat = x0` this is the plain batch.
///
/// `x0_hat` holds the flagged samples only, in order ([N, ...], N = flags set); sigmas of flagged
/// samples must be > 0.
pub fn restart_from_own(fb: FlowBatch, x0: &Tensor, noise: &Tensor, sigmas: &[f32], own: &[bool], x0_hat: &Tensor) -> Result<FlowBatch> {
    let b = x0.dim(0)?;
    let flagged = own.iter().filter(|&&o| o).count();
    if own.len() != b || sigmas.len() != b || x0_hat.dim(0)? != flagged {
        return Err(super::TrainError::Data(format!(
            "restart_from_own: expected {b} flags and sigmas and one prediction per flag, got {}, {} and {} for {flagged}",
            own.len(),
            sigmas.len(),
            x0_hat.dim(0)?
        )));
    }
    if let Some(bad) = own.iter().zip(sigmas).find(|(&o, &s)| o && s <= 0.0) {
        return Err(super::TrainError::Data(format!("restart_from_own: expected sigma > 0 on a flagged sample, got {}", bad.1)));
    }
    let x0 = x0.to_dtype(DType::F32)?;
    let x0_hat = x0_hat.to_dtype(DType::F32)?;
    let (mut noisy, mut target) = (Vec::with_capacity(b), Vec::with_capacity(b));
    let mut k = 0;
    for i in 0..b {
        if own[i] {
            let s = f64::from(sigmas[i]);
            let input = ((x0_hat.narrow(0, k, 1)? * (1.0 - s))? + (noise.narrow(0, i, 1)? * s)?)?;
            target.push(((&input - x0.narrow(0, i, 1)?)? / s)?);
            noisy.push(input);
            k += 1;
        } else {
            noisy.push(fb.noisy.narrow(0, i, 1)?);
            target.push(fb.target.narrow(0, i, 1)?);
        }
    }
    Ok(FlowBatch { noisy: Tensor::cat(&noisy, 0)?, target: Tensor::cat(&target, 0)?, timesteps: fb.timesteps })
}

/// First-frame conditioning, as image-to-video trains it (Wan2.2's TI2V): for each sample with
/// `clean[b]`, latent frame 0 enters the model as it is (its clean latent) and its tokens get
/// timestep 0, while the later frames keep the sample's noise level. The model learns to draw the
/// clip that goes on from a given first frame; the sampler's image-first mode
/// (`ciak_engine::pipeline`) feeds it one it drew itself.
///
/// Returns the batch with per-token timesteps `[B, F * tokens_per_frame]` and the frame mask
/// `[B, 1, F, 1, 1]` (0 on clean frames, 1 elsewhere) that takes them out of the loss; with no
/// clean sample the batch is returned as it is, with no mask.
pub fn condition_first_frames(fb: FlowBatch, x0: &Tensor, clean: &[bool], tokens_per_frame: usize) -> Result<(FlowBatch, Option<Tensor>)> {
    let (b, frames) = (x0.dim(0)?, x0.dim(2)?);
    if clean.len() != b {
        return Err(super::TrainError::Data(format!("condition_first_frames: expected {b} flags, got {}", clean.len())));
    }
    if !clean.iter().any(|&c| c) {
        return Ok((fb, None));
    }
    // 1 where a frame keeps its noise level, 0 on the clean ones, per sample and frame
    let noisy_frames: Vec<f32> = (0..b).flat_map(|i| (0..frames).map(move |f| f32::from(!(clean[i] && f == 0)))).collect();
    let per_clip = fb.timesteps.to_vec1::<f32>()?;
    let timesteps: Vec<f32> = noisy_frames
        .iter()
        .enumerate()
        .flat_map(|(k, &m)| std::iter::repeat_n(m * per_clip[k / frames], tokens_per_frame))
        .collect();
    let mask = Tensor::from_vec(noisy_frames, (b, 1, frames, 1, 1), x0.device())?;
    let keep = mask.affine(-1.0, 1.0)?;
    let noisy = (fb.noisy.broadcast_mul(&mask)? + x0.to_dtype(DType::F32)?.broadcast_mul(&keep)?)?;
    let timesteps = Tensor::from_vec(timesteps, (b, frames * tokens_per_frame), x0.device())?;
    Ok((FlowBatch { noisy, target: fb.target, timesteps }, Some(mask)))
}

/// One value per sample as a `[B, 1, ..., 1]` tensor of `like`'s rank, to broadcast over it.
fn per_sample(values: Vec<f32>, like: &Tensor) -> Result<Tensor> {
    let mut shape = vec![values.len()];
    shape.resize(like.rank(), 1);
    Ok(Tensor::from_vec(values, shape.as_slice(), like.device())?)
}

/// A loss term as its weighted sum and the total weight that makes it a mean. The two are kept
/// apart so that a batch split into parts (one per thread, `DitTrainer`'s micro-batches) divides
/// each part's sum by the whole batch's total: the parts' losses, and so their gradients, then add
/// up to the whole batch's.
pub struct TermSum {
    /// `sum(w * values)`, an f32 scalar that tracks gradients.
    pub sum: Tensor,
    /// `sum(w)` (the element count when unweighted).
    pub weight: f64,
}

impl TermSum {
    /// The weighted sum of `values` over every element and its weight (no weights: all ones),
    /// the weights broadcast to the values' shape.
    pub fn of(values: &Tensor, weights: Option<&Tensor>) -> Result<Self> {
        Ok(match weights {
            None => Self { sum: values.sum_all()?, weight: values.elem_count() as f64 },
            Some(w) => {
                let w = w.broadcast_as(values.shape())?.to_dtype(DType::F32)?;
                Self { sum: (values * &w)?.sum_all()?, weight: w.sum_all()?.to_scalar::<f32>()? as f64 }
            }
        })
    }

    /// The term's share of a mean whose total weight is `total` (its own weight: its mean).
    pub fn over(&self, total: f64) -> Result<Tensor> {
        Ok((&self.sum / total)?)
    }

    /// `sum(w * values) / sum(w)`.
    pub fn mean(&self) -> Result<Tensor> {
        self.over(self.weight)
    }
}

/// The product of two optional weight tensors (broadcast); `None` stands for all ones.
pub fn weight_product(a: Option<Tensor>, b: Option<Tensor>) -> Result<Option<Tensor>> {
    Ok(match (a, b) {
        (Some(a), Some(b)) => Some(a.broadcast_mul(&b)?),
        (a, b) => a.or(b),
    })
}

/// Mean squared error over every element (f32 scalar).
pub fn mse(pred: &Tensor, target: &Tensor) -> Result<Tensor> {
    squared_error(pred, target, None)?.mean()
}

/// [`weighted_mse`] as a [`TermSum`] (no weights: [`mse`]).
pub fn squared_error(pred: &Tensor, target: &Tensor, weights: Option<&Tensor>) -> Result<TermSum> {
    TermSum::of(&(pred.to_dtype(DType::F32)? - target)?.sqr()?, weights)
}

/// `sum(w * (pred - target)^2) / sum(w)` over every element, with `weights` broadcast to the
/// prediction's shape (f32 scalar). Equal weights give [`mse`].
pub fn weighted_mse(pred: &Tensor, target: &Tensor, weights: &Tensor) -> Result<Tensor> {
    squared_error(pred, target, Some(weights))?.mean()
}

/// The motion term of the loss: the mean squared frame-to-frame change of the error in the
/// clean clip the prediction implies, `sum(w' * (d_t(sigma * (pred - target)))^2) / sum(w')`.
///
/// `x0 = x_sigma - sigma * v`, so `sigma * (pred - target)` is the error of the predicted clean
/// clip. Its part that is the same in every frame (a right object drawn in the wrong place for the
/// whole clip) cancels in the frame difference; what is left is the error in how the clip changes
/// over time: an object held still where it should travel costs its whole displacement here
/// while the plain MSE spreads it among everything else. `weights` ([B, 1, F', H', W'], e.g. the
/// object cells) are averaged over each pair of neighbouring frames. `None` for one-frame
/// latents (images), which have no motion. A [`TermSum`]: its `mean()` is the term.
pub fn temporal_error(
    pred: &Tensor,
    target: &Tensor,
    sigmas: &[f32],
    weights: Option<&Tensor>,
    frame_mask: Option<&Tensor>,
) -> Result<Option<TermSum>> {
    let frames = pred.dim(2)?;
    if frames < 2 {
        return Ok(None);
    }
    let b = pred.dim(0)?;
    if sigmas.len() != b {
        return Err(super::TrainError::Data(format!("temporal_error: expected {b} sigmas, got {}", sigmas.len())));
    }
    let err = (pred.to_dtype(DType::F32)? - target)?.broadcast_mul(&per_sample(sigmas.to_vec(), pred)?)?;
    let step = (err.narrow(2, 1, frames - 1)? - err.narrow(2, 0, frames - 1)?)?.sqr()?;
    let pairs = |w: &Tensor| -> Result<(Tensor, Tensor)> {
        let w = w.to_dtype(DType::F32)?;
        Ok((w.narrow(2, 1, frames - 1)?, w.narrow(2, 0, frames - 1)?))
    };
    let weights = weights.map(|w| -> Result<Tensor> {
        let (later, earlier) = pairs(w)?;
        Ok(((later + earlier)? * 0.5)?)
    });
    // a pair with a clean (conditioning) frame in it is not the model's to answer for
    let kept = frame_mask.map(|m| -> Result<Tensor> {
        let (later, earlier) = pairs(m)?;
        Ok((later * earlier)?)
    });
    Ok(Some(TermSum::of(&step, weight_product(weights.transpose()?, kept.transpose()?)?.as_ref())?))
}

/// Classifier-free-guidance dropout: each caption becomes `""` (the pipeline's default negative
/// prompt) with probability `p`, so the model learns the unconditional velocity too.
pub fn drop_captions(captions: &[String], p: f64, rng: &mut TrainRng) -> Vec<String> {
    captions
        .iter()
        .map(|c| if rng.uniform() < p { String::new() } else { c.clone() })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The motion term as a mean.
    fn temporal_mse(pred: &Tensor, target: &Tensor, sigmas: &[f32], w: Option<&Tensor>, mask: Option<&Tensor>) -> Result<Option<Tensor>> {
        temporal_error(pred, target, sigmas, w, mask)?.map(|t| t.mean()).transpose()
    }

    /// Flagged samples start where one Euler step from sigma 1 with the given answer lands and aim
    /// at the clip from there; the others keep the plain batch; the clip itself as the answer is
    /// the plain batch.
    #[test]
    fn restart_from_own_answer() -> Result<()> {
        let dev = Device::Cpu;
        let x0 = Tensor::new(&[[1f32, -2.0], [0.5, 3.0], [2.0, 2.0]], &dev)?;
        let noise = Tensor::new(&[[0.3f32, 0.1], [-1.0, 0.4], [0.0, -0.5]], &dev)?;
        let sigmas = [0.5f32, 0.8, 0.25];
        let plain = flow_batch(&x0, &noise, &sigmas)?;
        let blob = Tensor::new(&[[0f32, 1.0], [4.0, -4.0]], &dev)?;
        let own = [true, false, true];
        let fb = restart_from_own(plain.clone(), &x0, &noise, &sigmas, &own, &blob)?;
        let (noisy, target) = (fb.noisy.to_vec2::<f32>()?, fb.target.to_vec2::<f32>()?);
        let close = |a: f32, b: f32| assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        // sample 0 at sigma 0.5 from (0, 1): input (0.15, 0.55), target (input - x0) / 0.5
        close(noisy[0][0], 0.15);
        close(noisy[0][1], 0.55);
        close(target[0][0], (0.15 - 1.0) / 0.5);
        close(target[0][1], (0.55 + 2.0) / 0.5);
        // sample 1 is not flagged
        assert_eq!(noisy[1], plain.noisy.to_vec2::<f32>()?[1]);
        assert_eq!(target[1], plain.target.to_vec2::<f32>()?[1]);
        // sample 2 takes the second answer
        close(noisy[2][0], 0.75 * 4.0);
        close(target[2][1], (0.75 * -4.0 + 0.25 * -0.5 - 2.0) / 0.25);
        // the clip as the answer gives the plain batch back
        let same = restart_from_own(plain.clone(), &x0, &noise, &sigmas, &[true, true, true], &x0)?;
        for (a, b) in same.target.flatten_all()?.to_vec1::<f32>()?.iter().zip(plain.target.flatten_all()?.to_vec1::<f32>()?) {
            close(*a, b);
        }
        // one answer per flag, and no flag at sigma 0
        assert!(restart_from_own(plain.clone(), &x0, &noise, &sigmas, &own, &x0).is_err());
        assert!(restart_from_own(plain, &x0, &noise, &[0.0, 0.8, 0.25], &own, &blob).is_err());
        Ok(())
    }

    /// The threaded draw gives the serial stream's numbers and leaves the state where the serial
    /// draw leaves it (odd counts too).
    #[test]
    fn threaded_normals_are_the_serial_stream() {
        // the engine threads draws from 1 << 16 pairs on
        for n in [1usize, 7, 2 * (1 << 16) + 3, 5 << 16] {
            let mut threaded = TrainRng::new(42);
            let got = threaded.normals(n);
            let mut serial = TrainRng::new(42);
            let mut want = Vec::new();
            while want.len() < n {
                let r = (-2.0 * serial.open01().ln()).sqrt();
                let theta = std::f64::consts::TAU * serial.open01();
                want.push((r * theta.cos()) as f32);
                want.push((r * theta.sin()) as f32);
            }
            want.truncate(n);
            assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "n = {n}");
            assert_eq!(got.len(), n);
            assert_eq!(threaded.state, serial.state, "n = {n}");
        }
    }

    #[test]
    fn shifted_uniform_matches_the_sampler_grid_density() {
        let mut rng = TrainRng::new(7);
        let shift = 3.0;
        let n = 200_000;
        let draws: Vec<f64> = (0..n).map(|_| SigmaSampling::ShiftedUniform.sample(&mut rng, shift)).collect();
        // P(sigma <= x) = P(u <= x / (s - (s-1) x))
        for x in [0.1, 0.25, 0.5, 0.75, 0.9] {
            let want = x / (shift - (shift - 1.0) * x);
            let got = draws.iter().filter(|&&d| d <= x).count() as f64 / n as f64;
            assert!((got - want).abs() < 0.005, "P(sigma <= {x}) = {got}, want {want}");
        }
        assert!(draws.iter().all(|&d| (0.0..1.0).contains(&d)));
        let ln: Vec<f64> = (0..1000).map(|_| SigmaSampling::LogitNormal { mean: 0.0, std: 1.0 }.sample(&mut rng, 1.0)).collect();
        assert!(ln.iter().all(|&d| d > 0.0 && d < 1.0));
        let mut a = TrainRng::new(3);
        let mut b = TrainRng::new(3);
        let plain: Vec<f64> = (0..100).map(|_| SigmaSampling::ShiftedUniform.sample(&mut a, shift)).collect();
        let none: Vec<f64> = (0..100).map(|_| SigmaSampling::ShiftedUniform.sample_with_terminal(&mut b, shift, 0.0)).collect();
        assert_eq!(plain, none);
        let some: Vec<f64> = (0..20_000).map(|_| SigmaSampling::ShiftedUniform.sample_with_terminal(&mut b, shift, 0.25)).collect();
        let ones = some.iter().filter(|&&d| d == 1.0).count();
        assert!((4_600..5_400).contains(&ones), "{ones} of 20000 at sigma 1");
        // the grid of UniPC with shift 3 at 50 steps starts at 999, 993, 986 (wan-facts 6.1)
        let grid: Vec<i64> = (0..3).map(|i| (shift_sigma(1.0 - i as f64 * (1.0 - 0.001) / 50.0, shift) * 1000.0) as i64).collect();
        assert_eq!(grid[1..], [993, 986]);
    }

    #[test]
    fn flow_batch_interpolates_and_targets_the_velocity() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = TrainRng::new(1);
        let x0 = rng.gaussian(&[3, 2, 1, 2, 2], &dev)?;
        let noise = rng.gaussian(&[3, 2, 1, 2, 2], &dev)?;
        let fb = flow_batch(&x0, &noise, &[0.0, 0.25, 1.0])?;
        let d = |a: &Tensor, b: &Tensor| (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(d(&fb.noisy.get(0)?, &x0.get(0)?), 0.0);
        assert_eq!(d(&fb.noisy.get(2)?, &noise.get(2)?), 0.0);
        let mid = ((x0.get(1)? * 0.75)? + (noise.get(1)? * 0.25)?)?;
        assert!(d(&fb.noisy.get(1)?, &mid) < 1e-6);
        assert!(d(&fb.target, &(&noise - &x0)?) < 1e-6);
        assert_eq!(fb.timesteps.to_vec1::<f32>()?, vec![0.0, 250.0, 1000.0]);
        // a model that predicts the target exactly has zero loss; x0 = noisy - sigma * v
        assert_eq!(mse(&fb.target, &fb.target)?.to_scalar::<f32>()?, 0.0);
        let back = (&fb.noisy.get(1)? - (fb.target.get(1)? * 0.25)?)?;
        assert!(d(&back, &x0.get(1)?) < 1e-6);
        assert!(flow_batch(&x0, &noise, &[0.5]).is_err());
        Ok(())
    }

    /// The motion term sees an error that changes between frames and not one that is the same in
    /// every frame; it scales with sigma (the clean clip's error) and skips images.
    #[test]
    fn temporal_mse_sees_only_the_error_that_changes_over_time() -> Result<()> {
        let dev = Device::Cpu;
        let target = Tensor::zeros((2, 1, 3, 1, 2), DType::F32, &dev)?;
        // sample 0: the same error in every frame; sample 1: an error in the last frame only
        let pred = Tensor::from_vec(vec![1f32, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 2.0, 0.0], (2, 1, 3, 1, 2), &dev)?;
        let got = temporal_mse(&pred, &target, &[1.0, 0.5], None, None)?.unwrap().to_scalar::<f32>()?;
        // sample 1's x0 error is 0.5 * 2 = 1 at one cell of the last frame: one squared step of 1
        // among 2 samples x 2 frame pairs x 2 cells
        assert!((got - 1.0 / 8.0).abs() < 1e-7, "{got}");
        let constant = temporal_mse(&pred.narrow(0, 0, 1)?, &target.narrow(0, 0, 1)?, &[1.0], None, None)?.unwrap();
        assert_eq!(constant.to_scalar::<f32>()?, 0.0);
        // weights on the changing cell's pair count it (w 3 on both frames of the pair 1-2)
        let mut w = vec![1f32; 12];
        w[6 + 2 * 2] = 3.0;
        w[6 + 2] = 3.0;
        let w = Tensor::from_vec(w, (2, 1, 3, 1, 2), &dev)?;
        let weighted = temporal_mse(&pred, &target, &[1.0, 0.5], Some(&w), None)?.unwrap().to_scalar::<f32>()?;
        // pair weights: six of 1, sample 1's cell 0 at frames 0-1 (1 + 3) / 2 = 2, and at frames
        // 1-2 3, which holds the step
        assert!((weighted - 3.0 / 11.0).abs() < 1e-6, "{weighted}");
        let image = Tensor::zeros((1, 1, 1, 1, 2), DType::F32, &dev)?;
        assert!(temporal_mse(&image, &image, &[1.0], None, None)?.is_none());
        assert!(temporal_mse(&pred, &target, &[1.0], None, None).is_err());
        Ok(())
    }

    /// A clean first frame enters as its latent at timestep 0 and leaves the loss; the other
    /// samples and frames are the plain flow batch.
    #[test]
    fn condition_first_frames_cleans_frame_zero_of_the_flagged_samples() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = TrainRng::new(4);
        let x0 = rng.gaussian(&[2, 2, 3, 2, 2], &dev)?;
        let noise = rng.gaussian(&[2, 2, 3, 2, 2], &dev)?;
        let plain = flow_batch(&x0, &noise, &[0.5, 1.0])?;
        let (none, mask) = condition_first_frames(plain.clone(), &x0, &[false, false], 1)?;
        assert!(mask.is_none() && none.timesteps.dims() == [2]);
        let (fb, mask) = condition_first_frames(plain.clone(), &x0, &[false, true], 2)?;
        let d = |a: &Tensor, b: &Tensor| (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(d(&fb.noisy.get(0)?, &plain.noisy.get(0)?), 0.0);
        assert_eq!(d(&fb.noisy.get(1)?.narrow(1, 0, 1)?, &x0.get(1)?.narrow(1, 0, 1)?), 0.0);
        assert_eq!(d(&fb.noisy.get(1)?.narrow(1, 1, 2)?, &noise.get(1)?.narrow(1, 1, 2)?), 0.0);
        assert_eq!(fb.timesteps.to_vec2::<f32>()?, vec![vec![500.0; 6], vec![0.0, 0.0, 1000.0, 1000.0, 1000.0, 1000.0]]);
        let mask = mask.unwrap().flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(mask, vec![1.0, 1.0, 1.0, 0.0, 1.0, 1.0]);
        // the motion term leaves out the pair that holds the clean frame
        let m = Tensor::from_vec(mask, (2, 1, 3, 1, 1), &dev)?;
        let zeros = Tensor::zeros((2, 1, 3, 1, 1), DType::F32, &dev)?;
        let jump = Tensor::from_vec(vec![0f32, 0.0, 0.0, 5.0, 0.0, 0.0], (2, 1, 3, 1, 1), &dev)?;
        assert_eq!(temporal_mse(&jump, &zeros, &[1.0, 1.0], None, Some(&m))?.unwrap().to_scalar::<f32>()?, 0.0);
        assert!(condition_first_frames(plain, &x0, &[true], 1).is_err());
        Ok(())
    }

    #[test]
    fn weighted_mse_weighs_the_marked_cells() -> Result<()> {
        let dev = Device::Cpu;
        let pred = Tensor::from_vec(vec![1f32, 0.0, 0.0, 0.0], (1, 1, 1, 2, 2), &dev)?;
        let target = Tensor::zeros((1, 1, 1, 2, 2), DType::F32, &dev)?;
        let ones = Tensor::ones((1, 1, 1, 2, 2), DType::F32, &dev)?;
        let plain = weighted_mse(&pred, &target, &ones)?.to_scalar::<f32>()?;
        assert!((plain - mse(&pred, &target)?.to_scalar::<f32>()?).abs() < 1e-7);
        // the error sits on a cell weighted 4: (4 * 1) / (4 + 1 + 1 + 1)
        let w = Tensor::from_vec(vec![4f32, 1.0, 1.0, 1.0], (1, 1, 1, 2, 2), &dev)?;
        let got = weighted_mse(&pred, &target, &w)?.to_scalar::<f32>()?;
        assert!((got - 4.0 / 7.0).abs() < 1e-6, "{got}");
        Ok(())
    }

    #[test]
    fn rng_is_seeded_and_normal() {
        let a = TrainRng::new(5).normals(10_001);
        let b = TrainRng::new(5).normals(10_001);
        assert_eq!(a, b);
        let mean = a.iter().map(|&x| x as f64).sum::<f64>() / a.len() as f64;
        let var = a.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / a.len() as f64;
        assert!(mean.abs() < 0.05 && (var - 1.0).abs() < 0.05, "{mean} {var}");
        let mut r = TrainRng::new(9);
        let caps: Vec<String> = (0..10_000).map(|i| format!("c{i}")).collect();
        let dropped = drop_captions(&caps, 0.1, &mut r).iter().filter(|c| c.is_empty()).count();
        assert!((900..1100).contains(&dropped), "{dropped}");
    }
}
