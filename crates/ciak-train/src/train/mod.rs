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

/// Keeps freed memory in the process instead of returning it to the kernel after every tensor:
/// training allocates and frees the same large activations each step, and with glibc's defaults
/// each of them is a fresh `mmap` whose pages fault in one by one (measured: a quarter of the
/// backward pass on a 4 M-parameter DiT). Sets glibc's mmap threshold to its 32 MiB maximum and
/// turns trimming off; a no-op elsewhere. Call once at start; it is process-wide.
pub fn tune_allocator_for_training() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_THRESHOLD: i32 = -3;
        // SAFETY: mallopt only changes glibc allocator tunables; any value is accepted or refused.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 32 << 20);
            mallopt(M_TRIM_THRESHOLD, i32::MAX);
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
        /// Clips per second over this step (data, text encoder, DiT forward and backward, update).
        samples_per_sec: f64,
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
