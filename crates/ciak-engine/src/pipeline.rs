//! Text to video with a Wan checkpoint: encode the prompts, denoise seeded noise with
//! classifier-free guidance, decode with the VAE. Mirrors diffusers' `WanPipeline.__call__`.
use crate::error::{CiakError, Result};
use crate::loader::{load_varbuilder, read_config, weights_error};
use crate::model_dir::WanModelDir;
use crate::noise;
use crate::scheduler::{SchedulerConfig, SchedulerKind};
use crate::text::{PromptTokens, TextEncoder};
use candle_core::{DType, Device, Tensor};
use ciak_models::wan::transformer::{WanTransformer3DModel, WanTransformerConfig};
use ciak_models::wan::vae::{AutoencoderKLWan, AutoencoderKLWanConfig, TileConfig};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Where and in which precision each component runs. diffusers runs the VAE in f32 even when the
/// transformer and text encoder are bf16; so do we by default.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: Device,
    pub dtype: DType,
    pub vae_dtype: DType,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { device: Device::Cpu, dtype: DType::F32, vae_dtype: DType::F32 }
    }
}

/// One clip to render. `frames` must be 1+4k and the size a multiple of 16 (VAE 8x, patch 2x).
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt: String,
    pub negative_prompt: String,
    pub width: usize,
    pub height: usize,
    pub frames: usize,
    pub steps: usize,
    /// Classifier-free guidance scale; guidance is applied when it is above 1, as in diffusers.
    pub guidance: f64,
    /// A guidance interval: guidance only at noise levels (sigma, 0 to 1) below this one; the
    /// steps at or above it use the conditional prediction alone (one transformer pass). Guidance
    /// at the highest noise levels pulls every sample toward the caption's mean clip; a model that
    /// has not learned to place objects then draws none (docs/training.md). `None`: every step.
    pub guidance_below: Option<f64>,
    /// Image first: draw the first latent frame alone (a one-frame clip, i.e. an image), then the
    /// clip with that frame held clean, as image-to-video does (Wan2.2 TI2V: the condition frame's
    /// tokens at timestep 0). For models trained with clean first frames (`first_frame_share`);
    /// a one-latent-frame request is drawn in one pass either way.
    pub image_first: bool,
    /// Replaces the checkpoint scheduler's flow shift.
    pub shift: Option<f64>,
    /// Replaces the checkpoint scheduler's family (same shift and training timesteps).
    pub scheduler: Option<SchedulerKind>,
    pub seed: u64,
    /// Spatially tiled VAE decode (bounded memory at large sizes).
    pub vae_tiling: Option<TileConfig>,
}

impl GenerateRequest {
    /// diffusers' WanPipeline defaults (480x832, 81 frames, 50 steps, guidance 5).
    pub fn new(prompt: impl Into<String>) -> Self {
        Self {
            prompt: prompt.into(),
            negative_prompt: String::new(),
            width: 832,
            height: 480,
            frames: 81,
            steps: 50,
            guidance: 5.0,
            guidance_below: None,
            image_first: false,
            shift: None,
            scheduler: None,
            seed: 0,
            vae_tiling: None,
        }
    }
}

/// What the pipeline is doing, reported through the progress callback.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    EncodingText,
    /// `step` of `total` finished after `elapsed` in the denoising loop.
    Denoising { step: usize, total: usize, elapsed: Duration },
    Decoding,
    Done,
}

impl Progress {
    pub fn stage(&self) -> &'static str {
        match self {
            Progress::EncodingText => "encoding text",
            Progress::Denoising { .. } => "denoising",
            Progress::Decoding => "decoding",
            Progress::Done => "done",
        }
    }
}

/// A rendered clip and how it was made.
#[derive(Debug, Clone)]
pub struct Generated {
    /// [F, H, W, 3] f32 in [0, 1].
    pub frames: Tensor,
    /// Final latents [1, C, F', H/8, W/8] (f32) before the VAE.
    pub latents: Tensor,
    pub prompt_tokens: PromptTokens,
    /// Wall time per stage: ("text", ..), ("denoise", ..), ("decode", ..).
    pub timings: Vec<(&'static str, Duration)>,
}

pub struct WanPipeline {
    pub text_encoder: TextEncoder,
    pub transformer: WanTransformer3DModel,
    pub vae: AutoencoderKLWan,
    pub scheduler: SchedulerConfig,
    device: Device,
}

impl WanPipeline {
    /// Loads every component of a diffusers Wan folder through the checkpoint loader.
    pub fn load(dir: &WanModelDir, opts: &LoadOptions) -> Result<Self> {
        let _span = tracing::info_span!("load", model = %dir.root.display()).entered();
        let text_encoder = TextEncoder::load(&dir.tokenizer_json(), &dir.text_encoder, opts.dtype, &opts.device)?;
        let cfg: WanTransformerConfig = read_config(&dir.transformer)?;
        let vb = crate::loader::load_transformer_varbuilder(&dir.transformer, opts.dtype, &opts.device)?;
        let transformer = WanTransformer3DModel::new(&cfg, vb).map_err(weights_error("transformer", &dir.transformer))?;
        let vae_cfg: AutoencoderKLWanConfig = read_config(&dir.vae)?;
        let vb = load_varbuilder(&dir.vae, opts.vae_dtype, &opts.device)?;
        let vae = AutoencoderKLWan::new(&vae_cfg, vb).map_err(weights_error("vae", &dir.vae))?;
        let scheduler = SchedulerConfig::load(&dir.scheduler)?;
        Ok(Self { text_encoder, transformer, vae, scheduler, device: opts.device.clone() })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The model's size and frame constraints.
    pub fn geometry(&self) -> Geometry {
        Geometry::new(self.transformer.config(), self.vae.config())
    }

    /// Pixels per latent cell times the patch size: sizes must be multiples of this.
    pub fn size_multiple(&self) -> usize {
        self.geometry().size_multiple()
    }

    /// Checks a request before any work, with errors that say what was expected.
    pub fn validate(&self, req: &GenerateRequest) -> Result<()> {
        self.geometry().validate(req)
    }

    /// Shape of the initial noise for a request: [1, C, 1+(F-1)/4, H/8, W/8].
    pub fn latent_shape(&self, req: &GenerateRequest) -> (usize, usize, usize, usize, usize) {
        self.geometry().latent_shape(req)
    }

    /// Renders a clip from the request's seed.
    pub fn generate(
        &self,
        req: &GenerateRequest,
        progress: &mut dyn FnMut(&Progress),
        cancel: Option<&AtomicBool>,
    ) -> Result<Generated> {
        self.validate(req)?;
        let latents = noise::gaussian(req.seed, self.latent_shape(req), &self.device)?;
        self.generate_from_latents(req, latents, progress, cancel)
    }

    /// Renders a clip from given initial latents (the request's seed is not used).
    pub fn generate_from_latents(
        &self,
        req: &GenerateRequest,
        latents: Tensor,
        progress: &mut dyn FnMut(&Progress),
        cancel: Option<&AtomicBool>,
    ) -> Result<Generated> {
        self.validate(req)?;
        let check_cancel = |stage: &str| match cancel {
            Some(flag) if flag.load(Ordering::Relaxed) => Err(CiakError::Cancelled { stage: stage.to_string() }),
            _ => Ok(()),
        };
        let expected = self.latent_shape(req);
        if latents.dims5()? != expected {
            return Err(CiakError::InvalidRequest(format!(
                "expected initial latents of shape {expected:?}, got {:?}",
                latents.dims()
            )));
        }
        let mut timings = Vec::new();
        let do_cfg = req.guidance > 1.0;

        check_cancel("encoding text")?;
        progress(&Progress::EncodingText);
        let start = Instant::now();
        let mut prompts = vec![req.prompt.clone()];
        if do_cfg {
            prompts.push(req.negative_prompt.clone());
        }
        let encoded = self.text_encoder.encode(&prompts)?;
        let dtype = self.transformer.dtype();
        let context = encoded.prompt_embeds.to_dtype(dtype)?;
        timings.push(("text", start.elapsed()));

        let start = Instant::now();
        let latents = sample(&self.transformer, &self.scheduler, req, latents, &context, &mut |step, total| {
            if step > 0 {
                progress(&Progress::Denoising { step, total, elapsed: start.elapsed() });
            }
            check_cancel("denoising")
        })?;
        timings.push(("denoise", start.elapsed()));

        check_cancel("decoding")?;
        progress(&Progress::Decoding);
        let start = Instant::now();
        let frames = self.decode(&latents, req.vae_tiling.as_ref())?;
        timings.push(("decode", start.elapsed()));
        progress(&Progress::Done);
        Ok(Generated { frames, latents, prompt_tokens: encoded.prompts[0], timings })
    }

    /// Latents to frames: un-normalise, VAE decode (tiled if asked), map [-1, 1] to [0, 1].
    ///
    /// Shapes: latents [1, C, F', h, w] -> [F, H, W, 3] f32.
    pub fn decode(&self, latents: &Tensor, tiling: Option<&TileConfig>) -> Result<Tensor> {
        decode_latents(&self.vae, latents, tiling)
    }
}

/// Sampling as the request asks: one denoising pass over the whole clip, or with
/// `image_first` two, the first latent frame alone and then the clip held to it. `on_step` counts
/// the steps of both passes as one run (`total` = passes x steps).
///
/// Shapes: as [`denoise`].
pub fn sample(
    transformer: &WanTransformer3DModel,
    scheduler: &SchedulerConfig,
    req: &GenerateRequest,
    latents: Tensor,
    context: &Tensor,
    on_step: &mut dyn FnMut(usize, usize) -> Result<()>,
) -> Result<Tensor> {
    if !(req.image_first && latents.dim(2)? > 1) {
        return denoise(transformer, scheduler, req, latents, context, None, on_step);
    }
    let first = denoise(transformer, scheduler, req, latents.narrow(2, 0, 1)?, context, None, &mut |k, total| {
        on_step(k, 2 * total)
    })?;
    denoise(transformer, scheduler, req, latents, context, Some(&first), &mut |k, total| match k {
        0 => Ok(()),
        k => on_step(total + k, 2 * total),
    })
}

/// The denoising loop: classifier-free guidance (both branches in one batch) and the scheduler,
/// from `latents` to the final latents (f32). `on_step(k, total)` is called before the first
/// step with k = 0 and after each step k; an error from it stops the loop (cancellation).
///
/// `first_frame` ([1, C, 1, h, w], clean) holds the first latent frame fixed, as diffusers'
/// Wan2.2 image-to-video does with `expand_timesteps`: it replaces that frame in every model
/// input, its tokens get timestep 0, and it replaces the frame in the result.
///
/// Shapes: latents [1, C, F', h, w], context [1 or 2, L, text_dim] (cond, then uncond) -> latents.
pub fn denoise(
    transformer: &WanTransformer3DModel,
    scheduler: &SchedulerConfig,
    req: &GenerateRequest,
    latents: Tensor,
    context: &Tensor,
    first_frame: Option<&Tensor>,
    on_step: &mut dyn FnMut(usize, usize) -> Result<()>,
) -> Result<Tensor> {
    let config = match req.scheduler {
        Some(kind) => scheduler.with_kind(kind),
        None => scheduler.clone(),
    };
    let mut scheduler = config.build(req.steps, req.shift)?;
    let mut latents = latents.to_dtype(DType::F32)?;
    let (dtype, device) = (transformer.dtype(), latents.device().clone());
    let do_cfg = req.guidance > 1.0;
    let first_frame = match first_frame {
        Some(f) => Some(FirstFrame::new(f, &latents, transformer.config().patch_size)?),
        None => None,
    };
    let total = scheduler.len();
    on_step(0, total)?;
    for i in 0..total {
        let _span = tracing::info_span!("step", i, total).entered();
        let t = scheduler.timesteps()[i] as f32;
        let x = match &first_frame {
            Some(c) => c.hold(&latents)?,
            None => latents.clone(),
        }
        .to_dtype(dtype)?;
        let sigma = scheduler.sigmas()[i];
        let guided = do_cfg && req.guidance_below.is_none_or(|below| sigma < below);
        let batch = if guided { 2 } else { 1 };
        let timesteps = match &first_frame {
            Some(c) => c.timesteps(t, batch, &device)?,
            None => Tensor::new(vec![t; batch], &device)?,
        };
        let velocity = if guided {
            // Both guidance branches in one batch: same math as two passes, one weight read.
            let x2 = Tensor::cat(&[&x, &x], 0)?;
            let v = transformer.forward(&x2, &timesteps, context, None)?.to_dtype(DType::F32)?;
            let (cond, uncond) = (v.narrow(0, 0, 1)?, v.narrow(0, 1, 1)?);
            (&uncond + ((cond - &uncond)? * req.guidance)?)?
        } else {
            transformer.forward(&x, &timesteps, &context.narrow(0, 0, 1)?, None)?.to_dtype(DType::F32)?
        };
        latents = scheduler.step(&velocity, i, &latents)?;
        on_step(i + 1, total)?;
    }
    match &first_frame {
        Some(c) => c.hold(&latents),
        None => Ok(latents),
    }
}

/// A clean first latent frame held fixed through denoising (see [`denoise`]).
struct FirstFrame {
    /// [1, C, 1, h, w] f32.
    latent: Tensor,
    frames: usize,
    tokens_per_frame: usize,
}

impl FirstFrame {
    fn new(latent: &Tensor, latents: &Tensor, patch: [usize; 3]) -> Result<Self> {
        let (b, c, frames, h, w) = latents.dims5()?;
        let want = (b, c, 1, h, w);
        if latent.dims5()? != want || frames < 2 || patch[0] != 1 {
            return Err(CiakError::InvalidRequest(format!(
                "expected a first frame of shape {want:?} for latents {:?} with temporal patch 1, got {:?} and patch {patch:?}",
                latents.dims(),
                latent.dims()
            )));
        }
        Ok(Self { latent: latent.to_dtype(DType::F32)?, frames, tokens_per_frame: (h / patch[1]) * (w / patch[2]) })
    }

    /// `latents` with the first frame replaced by the clean one.
    fn hold(&self, latents: &Tensor) -> Result<Tensor> {
        Ok(Tensor::cat(&[&self.latent, &latents.narrow(2, 1, self.frames - 1)?], 2)?)
    }

    /// Per-token timesteps [batch, tokens]: 0 on the first frame's tokens, `t` elsewhere.
    fn timesteps(&self, t: f32, batch: usize, device: &Device) -> Result<Tensor> {
        let first = self.tokens_per_frame;
        let row: Vec<f32> = (0..self.frames * first).map(|k| if k < first { 0.0 } else { t }).collect();
        Ok(Tensor::new(row, device)?.unsqueeze(0)?.repeat((batch, 1))?)
    }
}

/// Latents to frames: un-normalise, VAE decode (tiled if asked), map [-1, 1] to [0, 1].
///
/// Shapes: latents [1, C, F', h, w] -> [F, H, W, 3] f32.
pub fn decode_latents(vae: &AutoencoderKLWan, latents: &Tensor, tiling: Option<&TileConfig>) -> Result<Tensor> {
    let _span = tracing::info_span!("vae_decode").entered();
    let z = vae.denormalize_latents(&latents.to_dtype(vae.dtype())?)?;
    let video = match tiling {
        Some(tiles) => vae.decode_tiled(&z, tiles)?,
        None => vae.decode(&z)?,
    };
    let video = ((video.to_dtype(DType::F32)? * 0.5)? + 0.5)?.clamp(0f32, 1f32)?;
    Ok(video.squeeze(0)?.permute((1, 2, 3, 0))?.contiguous()?)
}

/// What a model allows (size multiple, frame rhythm, latent channels), known from its configs
/// alone so requests can be checked before any weight is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub spatial_ratio: usize,
    pub temporal_ratio: usize,
    pub patch: [usize; 3],
    pub latent_channels: usize,
}

impl Geometry {
    pub fn new(transformer: &WanTransformerConfig, vae: &AutoencoderKLWanConfig) -> Self {
        Self {
            spatial_ratio: vae.spatial_ratio(),
            temporal_ratio: vae.temporal_ratio(),
            patch: transformer.patch_size,
            latent_channels: transformer.out_channels,
        }
    }

    /// Reads the two configs of a model folder.
    pub fn of_model(dir: &WanModelDir) -> Result<Self> {
        let transformer: WanTransformerConfig = read_config(&dir.transformer)?;
        let vae: AutoencoderKLWanConfig = read_config(&dir.vae)?;
        Ok(Self::new(&transformer, &vae))
    }

    pub fn size_multiple(&self) -> usize {
        self.spatial_ratio * self.patch[1].max(self.patch[2])
    }

    pub fn validate(&self, req: &GenerateRequest) -> Result<()> {
        let m = self.size_multiple();
        let t = self.temporal_ratio;
        let bad = |msg: String| Err(CiakError::InvalidRequest(msg));
        for (name, v) in [("width", req.width), ("height", req.height)] {
            if v == 0 || v % m != 0 {
                let lo = (v / m * m).max(m);
                return bad(format!("expected {name} a multiple of {m}, got {v} (nearest valid: {lo} or {})", lo + m));
            }
        }
        if req.frames == 0 || (req.frames - 1) % t != 0 {
            let lo = (req.frames.max(1) - 1) / t * t + 1;
            return bad(format!("expected frames = 1+{t}k, got {} (nearest valid: {lo} or {})", req.frames, lo + t));
        }
        if req.steps == 0 {
            return bad("expected steps >= 1, got 0".into());
        }
        if !req.guidance.is_finite() || req.guidance < 0.0 {
            return bad(format!("expected a guidance scale >= 0, got {}", req.guidance));
        }
        if let Some(below) = req.guidance_below {
            if !(below > 0.0 && below <= 1.0) {
                return bad(format!("expected a guidance interval bound (sigma) in (0, 1], got {below}"));
            }
        }
        if let Some(shift) = req.shift {
            if !shift.is_finite() || shift <= 0.0 {
                return bad(format!("expected a shift > 0, got {shift}"));
            }
        }
        if req.prompt.trim().is_empty() {
            return bad("expected a prompt, got an empty one".into());
        }
        Ok(())
    }

    pub fn latent_shape(&self, req: &GenerateRequest) -> (usize, usize, usize, usize, usize) {
        let (s, t) = (self.spatial_ratio, self.temporal_ratio);
        (1, self.latent_channels, (req.frames - 1) / t + 1, req.height / s, req.width / s)
    }
}
