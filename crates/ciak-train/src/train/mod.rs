//! The trainer of ciak's built-in model: a Wan DiT and a toy UMT5 text encoder trained jointly on
//! candle's autograd with the flow-matching (velocity) objective the pipeline samples.
//!
//! - [`flow`]: the objective (noise levels, noisy inputs, velocity target, caption dropout).
//! - [`optim`]: AdamW with saved moments, global-norm clipping, warmup + cosine LR, EMA weights.
//! - [`checkpoint`]: save and resume everything, bit-identically.
//! - [`lossplot`]: the loss log (CSV) and its plot (PNG).
//! - [`dit`]: the training run (`run_dit_training`) and its JSON config.
//! - [`export`]: the diffusers-format folder that `WanPipeline::load` reads.
//! - [`vae`]: the built-in VAE (Wan2.1 `AutoencoderKLWan` at toy size) trained on toy frames.
//! - [`vae_reduce`]: a VAE with fewer latent channels, from a trained one's principal components.
//! - [`latents`]: the VAE latent cache of training clips, read by the DiT trainer.
pub mod checkpoint;
pub mod dit;
pub mod export;
pub mod flow;
pub mod foreground;
pub mod latents;
pub mod lossplot;
pub mod optim;
pub mod text;
pub mod vae;
pub mod vae_reduce;
pub mod vae_widen;

pub use dit::{run_dit_training, DitTrainConfig, TrainSummary};
pub use latents::{build_latent_cache, CachedLatents, LatentCacheConfig};
pub use vae::{run_vae_training, run_vae_training_on, VaeTrainConfig, VaeTrainSummary};

use candle_core::Tensor;
use std::path::PathBuf;
use std::time::Duration;

/// Everything that can stop a training run; each message says what was expected and found.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("tensor error: {0}")]
    Tensor(#[from] candle_core::Error),

    #[error(transparent)]
    Engine(#[from] ciak_engine::error::CiakError),

    #[error("{}: {source}", .path.display())]
    Io { path: PathBuf, source: std::io::Error },

    /// A training config or checkpoint state that does not parse or does not fit.
    #[error("bad config {}: {message}", .path.display())]
    Config { path: PathBuf, message: String },

    /// A checkpoint that cannot be resumed (missing part, tensor, or a different model).
    #[error("cannot resume from {}: {message}", .path.display())]
    Resume { path: PathBuf, message: String },

    /// The data source failed or returned a batch of the wrong shape.
    #[error("data: {0}")]
    Data(String),

    /// The loss or the gradients stopped being finite.
    #[error("training diverged at step {step}: {what}")]
    Diverged { step: u64, what: String },
}

pub type Result<T, E = TrainError> = std::result::Result<T, E>;

impl TrainError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TrainError::Io { path: path.into(), source }
    }
}

/// `f` of every item, in order; side by side on the thread pool when `side_by_side` and there is
/// more than one item, else on the calling thread (where a GPU's context is current: keep GPU
/// work there).
pub(crate) fn map_items<T: Sync, R: Send>(items: &[T], side_by_side: bool, f: impl Fn(&T) -> R + Sync + Send) -> Vec<R> {
    use rayon::prelude::*;
    if side_by_side && items.len() > 1 {
        items.par_iter().map(f).collect()
    } else {
        items.iter().map(f).collect()
    }
}

/// Keeps freed memory in the process instead of returning it to the kernel after every tensor:
/// training allocates and frees the same large activations each step, and with glibc's defaults
/// each of them is a fresh `mmap` whose pages fault in one by one (measured: a quarter of the
/// backward pass on a 4 M-parameter DiT). Sets glibc's mmap threshold to its 32 MiB maximum,
/// serves the larger blocks (attention scores, a batch's activations) from the heap too instead of
/// mapping each afresh, and turns trimming off; a no-op elsewhere. The DiT run of
/// `docs/training.md` ("Measured costs") took 8% less time with the heap for every size, at the
/// same peak memory. Call once at start; it is process-wide.
pub fn tune_allocator_for_training() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_THRESHOLD: i32 = -3;
        const M_MMAP_MAX: i32 = -4;
        // SAFETY: mallopt only changes glibc allocator tunables; any value is accepted or refused.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 32 << 20);
            mallopt(M_TRIM_THRESHOLD, i32::MAX);
            mallopt(M_MMAP_MAX, 0);
        }
    }
}

/// One training batch: clean latents as the pipeline samples them (already normalised with the
/// VAE's `latents_mean`/`latents_std`), and one caption per clip.
#[derive(Debug, Clone)]
pub struct LatentBatch {
    /// [B, C, F', H', W'] f32.
    pub latents: Tensor,
    pub captions: Vec<String>,
    /// [B, 1, F', H', W'] f32: 1 on latent cells an object touches, else 0 (see
    /// [`foreground::foreground_mask`]); `None` when the source does not know its scenes.
    pub foreground: Option<Tensor>,
}

impl LatentBatch {
    /// The first `frames` latent frames of every clip (masks too), captions unchanged.
    pub fn first_frames(&self, frames: usize) -> Result<Self> {
        let have = self.latents.dim(2)?;
        if frames == 0 || frames > have {
            return Err(TrainError::Data(format!("expected 1 to {have} latent frames to keep, got {frames}")));
        }
        let foreground = match &self.foreground {
            Some(mask) => Some(mask.narrow(2, 0, frames)?.contiguous()?),
            None => None,
        };
        Ok(Self { latents: self.latents.narrow(2, 0, frames)?.contiguous()?, captions: self.captions.clone(), foreground })
    }

    /// Joins batches of the same latent shape (all but the batch dimension) into one, keeping the
    /// order in which each shape first appears and the batches' order within a shape.
    pub fn group_by_shape(batches: Vec<Self>) -> Result<Vec<Self>> {
        let mut groups: Vec<Vec<Self>> = Vec::new();
        for b in batches {
            match groups.iter_mut().find(|g| g[0].latents.dims()[1..] == b.latents.dims()[1..]) {
                Some(g) => g.push(b),
                None => groups.push(vec![b]),
            }
        }
        groups.into_iter().map(Self::concat).collect()
    }

    fn concat(parts: Vec<Self>) -> Result<Self> {
        if parts.len() == 1 {
            return Ok(parts.into_iter().next().expect("one part"));
        }
        let latents = Tensor::cat(&parts.iter().map(|p| &p.latents).collect::<Vec<_>>(), 0)?;
        let masks: Option<Vec<&Tensor>> = parts.iter().map(|p| p.foreground.as_ref()).collect();
        let foreground = match masks {
            Some(m) => Some(Tensor::cat(&m, 0)?),
            None => None,
        };
        Ok(Self { latents, captions: parts.into_iter().flat_map(|p| p.captions).collect(), foreground })
    }
}

/// Where training clips come from (the toy world through the VAE latent cache, or a test source).
///
/// The state round-trips through a checkpoint, so a resumed run draws the same batches as an
/// uninterrupted one.
pub trait LatentSource {
    /// The next `n` clips; all of one latent shape (mixed aspect ratios go in separate batches).
    fn batch(&mut self, n: usize) -> Result<LatentBatch>;

    /// Where the source is in its stream (position, shuffle state, ...), saved with checkpoints.
    fn state(&self) -> serde_json::Value;

    /// Continues from a [`Self::state`] value.
    fn restore(&mut self, state: &serde_json::Value) -> Result<()>;
}

/// What a training run reports through its progress callback.
#[derive(Debug, Clone, PartialEq)]
pub enum TrainEvent {
    /// Continuing from the checkpoint in `path`, after `step` steps.
    Resumed { step: u64, path: PathBuf },
    /// `step` (1-based) finished.
    Step {
        step: u64,
        total: u64,
        loss: f64,
        lr: f64,
        /// Gradient norm before clipping.
        grad_norm: f64,
        /// Clips (images on an image step) per second over this step (data, text encoder, DiT
        /// forward and backward, update).
        samples_per_sec: f64,
        /// Whether the step trained on images (`image_steps` of the DiT config).
        images: bool,
        /// Training time so far, across resumes.
        elapsed: Duration,
    },
    /// A checkpoint (and the loss plot) was written after `step` steps.
    Checkpoint { step: u64, path: PathBuf },
    /// The diffusers folder of the EMA weights was written.
    Exported { step: u64, path: PathBuf },
    Done { step: u64 },
    /// The text encoder was pretrained (a fresh run with `text_pretrain`); the report is in
    /// `path` (JSON), `summary` is one line of it.
    TextPretrained { path: PathBuf, summary: String },
}
