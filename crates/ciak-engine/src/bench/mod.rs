//! `ciak bench`: per-stage times of text to video on the real Wan2.1 architectures with random
//! weights (speed does not depend on weight values), or on a model folder, plus a parity mode that
//! checks a device and dtype against the diffusers fixtures ([`parity`]).
//!
//! The timed path is the production one: the same `TextEncoder`, `WanTransformer3DModel`,
//! `AutoencoderKLWan` and schedulers as `pipeline::WanPipeline`, and [`BenchPipeline::generate_from_latents`]
//! runs `WanPipeline::generate_from_latents`'s loop (a test holds the two bit-identical), with a
//! clock and a device synchronisation around each stage and step.
pub mod memory;
pub mod parity;
pub mod random;

use crate::error::{CiakError, Result};
use crate::loader::{load_varbuilder, read_config, weights_error};
use crate::model_dir::{resolve_model_path, WanModelDir};
use crate::noise;
use crate::pipeline::{decode_latents, sample, GenerateRequest, Geometry, LoadOptions};
use crate::scheduler::{SchedulerConfig, SchedulerKind};
use crate::text::{PromptTokenizer, TextEncoder, MAX_SEQUENCE_LENGTH};
use candle_core::{DType, Device, Tensor};
use ciak_models::wan::transformer::{WanTransformer3DModel, WanTransformerConfig};
use ciak_models::wan::umt5::{Umt5Config, Umt5EncoderModel};
use ciak_models::wan::vae::{AutoencoderKLWan, AutoencoderKLWanConfig};
use random::RandomBackend;
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

/// The prompt every bench run encodes (its length does not matter: UMT5 always reads 512 tokens).
pub const BENCH_PROMPT: &str = "A red fox trots through fresh snow in a birch forest at dawn, soft light, slow camera pan";
pub const BENCH_NEGATIVE_PROMPT: &str = "blurry, low quality, static, distorted";

/// What to build: a real Wan architecture with random weights, or a model folder's own weights.
#[derive(Debug, Clone, PartialEq)]
pub enum BenchModel {
    Wan21T2v1_3b,
    Wan21T2v14b,
    /// A diffusers folder (the built-in model resolves to one), loaded by the checkpoint loader.
    Folder { spec: String, root: PathBuf },
}

impl BenchModel {
    pub const RANDOM_NAMES: [&'static str; 2] = ["wan2.1-1.3b", "wan2.1-14b"];

    /// `wan2.1-1.3b`, `wan2.1-14b`, a built-in model name, a folder or a cached Hugging Face id.
    pub fn parse(spec: &str) -> Result<Self> {
        match spec.to_ascii_lowercase().as_str() {
            "wan2.1-1.3b" | "wan2.1-t2v-1.3b" => Ok(Self::Wan21T2v1_3b),
            "wan2.1-14b" | "wan2.1-t2v-14b" => Ok(Self::Wan21T2v14b),
            _ => Ok(Self::Folder { spec: spec.to_string(), root: resolve_model_path(spec)? }),
        }
    }

    pub fn name(&self) -> String {
        match self {
            Self::Wan21T2v1_3b => Self::RANDOM_NAMES[0].to_string(),
            Self::Wan21T2v14b => Self::RANDOM_NAMES[1].to_string(),
            Self::Folder { spec, .. } => spec.clone(),
        }
    }

    fn random_config(&self) -> Option<WanTransformerConfig> {
        match self {
            Self::Wan21T2v1_3b => Some(WanTransformerConfig::wan21_t2v_1_3b()),
            Self::Wan21T2v14b => Some(WanTransformerConfig::wan21_t2v_14b()),
            Self::Folder { .. } => None,
        }
    }
}

/// Which text encoder a random-weight run builds. Folder models use their own unless `Skip`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextEncoderChoice {
    /// UMT5-XXL on CUDA, [`TextEncoderChoice::Tiny`] on the CPU (UMT5-XXL is 5.7 B parameters).
    Auto,
    /// A 2-layer UMT5 of the right width: times the plumbing, not UMT5-XXL.
    Tiny,
    /// The real UMT5-XXL encoder (11.4 GB in bf16, 23 GB in f32).
    Xxl,
    /// No text encoder: random context of the right shape; no text time is reported.
    Skip,
}

impl std::str::FromStr for TextEncoderChoice {
    type Err = CiakError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Self::Auto),
            "tiny" => Ok(Self::Tiny),
            "xxl" => Ok(Self::Xxl),
            "skip" => Ok(Self::Skip),
            _ => Err(CiakError::InvalidRequest(format!("expected text encoder auto, tiny, xxl or skip, got `{s}`"))),
        }
    }
}

/// One bench run.
#[derive(Debug, Clone)]
pub struct BenchSpec {
    pub model: BenchModel,
    pub width: usize,
    pub height: usize,
    pub frames: usize,
    pub steps: usize,
    pub guidance: f64,
    pub scheduler: Option<SchedulerKind>,
    pub device: Device,
    pub dtype: DType,
    pub vae_dtype: DType,
    pub text_encoder: TextEncoderChoice,
    /// Untimed transformer forwards before the timed ones.
    pub warmup: usize,
    /// Timed transformer forwards (the median is reported).
    pub reps: usize,
    /// Seed of the random weights and of the noise.
    pub seed: u64,
    /// Time one stage alone instead of the whole run.
    pub only: Option<BenchOnly>,
}

/// One stage timed alone, `warmup` untimed then `reps` timed runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchOnly {
    /// The transformer forward: no sampling, no VAE decode, no text-encoder timing (a built text
    /// encoder still makes the context, untimed; `--text-encoder skip` builds none).
    Forward,
    /// The VAE decode of seeded random latents of the request's size: no text encoder, no
    /// transformer forward, no sampling.
    Decode,
}

impl BenchSpec {
    /// diffusers' WanPipeline defaults (832x480, 81 frames, 50 steps, guidance 5) on the CPU in f32.
    pub fn new(model: BenchModel) -> Self {
        Self {
            model,
            width: 832,
            height: 480,
            frames: 81,
            steps: 50,
            guidance: 5.0,
            scheduler: None,
            device: Device::Cpu,
            dtype: DType::F32,
            vae_dtype: DType::F32,
            text_encoder: TextEncoderChoice::Auto,
            warmup: 1,
            reps: 3,
            seed: 0,
            only: None,
        }
    }

    fn request(&self) -> GenerateRequest {
        GenerateRequest {
            negative_prompt: BENCH_NEGATIVE_PROMPT.to_string(),
            width: self.width,
            height: self.height,
            frames: self.frames,
            steps: self.steps,
            guidance: self.guidance,
            scheduler: self.scheduler,
            seed: self.seed,
            ..GenerateRequest::new(BENCH_PROMPT)
        }
    }
}

pub fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "f32",
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        DType::F64 => "f64",
        _ => "other",
    }
}

pub fn device_name(d: &Device) -> String {
    match d.location() {
        candle_core::DeviceLocation::Cpu => "cpu".to_string(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// A clock around one stage: waits for the device before reading it, and resets the host peak
/// memory at the start so each stage reports its own peak.
struct Clock {
    start: Instant,
    cpu: Option<f64>,
}

impl Clock {
    fn start(device: &Device) -> Result<Self> {
        device.synchronize()?;
        memory::reset_peak();
        Ok(Self { start: Instant::now(), cpu: memory::cpu_seconds() })
    }

    fn stop(self, device: &Device) -> Result<Stage> {
        device.synchronize()?;
        let seconds = self.start.elapsed().as_secs_f64();
        let cpu_s = self.cpu.zip(memory::cpu_seconds()).map(|(a, b)| b - a);
        Ok(Stage { seconds, cpu_s, peak_host_rss_bytes: memory::peak_rss_bytes() })
    }
}

/// Time and host memory peak of one stage.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Stage {
    pub seconds: f64,
    /// CPU time of the process (all threads) during the stage: on a shared machine the wall time
    /// includes waiting for cores, this does not. `None` off Linux.
    pub cpu_s: Option<f64>,
    /// Peak resident memory of the process during the stage (since the start of the process where
    /// the peak cannot be reset); `None` off Linux.
    pub peak_host_rss_bytes: Option<u64>,
}

/// What [`BenchPipeline::generate_from_latents`] produced and how long each part took.
#[derive(Debug, Clone)]
pub struct Sampled {
    /// Final latents [1, C, F', h, w] f32.
    pub latents: Tensor,
    /// [F, H, W, 3] f32 in [0, 1].
    pub frames: Tensor,
    /// `None` when the text encoder is skipped.
    pub text: Option<Stage>,
    pub sampling: Stage,
    /// Seconds of each step (transformer forward(s) plus scheduler update).
    pub step_seconds: Vec<f64>,
    pub decode: Stage,
}

/// The pipeline's components, built from random weights or loaded from a folder.
pub struct BenchPipeline {
    pub text_encoder: Option<TextEncoder>,
    pub transformer: WanTransformer3DModel,
    pub vae: AutoencoderKLWan,
    pub scheduler: SchedulerConfig,
    device: Device,
}

/// Build time and parameter count of one component.
#[derive(Debug, Clone, Serialize)]
pub struct Built {
    pub seconds: f64,
    /// Parameters handed out by the random backend; `None` for weights read from files.
    pub params: Option<u64>,
    pub dtype: &'static str,
}

/// How the components were built.
#[derive(Debug, Clone, Serialize)]
pub struct BuildReport {
    /// "random" or "files".
    pub weights: &'static str,
    /// "umt5-xxl", "umt5-tiny", "skipped" or "folder".
    pub text_encoder_kind: String,
    pub text_encoder: Option<Built>,
    pub transformer: Built,
    pub vae: Built,
}

/// A word-level stand-in for the T5 tokenizer (random-weight runs have no tokenizer files): the
/// bench prompts' words, `</s>` appended, `<pad>` = 0. Tokenizing costs microseconds either way.
fn bench_tokenizer(max_len: usize) -> Result<PromptTokenizer> {
    let mut vocab = serde_json::Map::new();
    for tok in ["<pad>", "</s>", "<unk>"] {
        vocab.insert(tok.into(), vocab.len().into());
    }
    let text = format!("{BENCH_PROMPT} {BENCH_NEGATIVE_PROMPT}").to_lowercase();
    for word in text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).chain([","]) {
        if !vocab.contains_key(word) {
            vocab.insert(word.into(), vocab.len().into());
        }
    }
    let special = |id: usize, content: &str| {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
            "normalized": false, "special": true})
    };
    let eos = serde_json::json!({"SpecialToken": {"id": "</s>", "type_id": 0}});
    let seq = |id: &str| serde_json::json!({"Sequence": {"id": id, "type_id": 0}});
    let json = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [special(0, "<pad>"), special(1, "</s>"), special(2, "<unk>")],
        "normalizer": {"type": "Lowercase"},
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": {"type": "TemplateProcessing", "single": [seq("A"), eos.clone()],
            "pair": [seq("A"), eos.clone(), seq("B"), eos],
            "special_tokens": {"</s>": {"id": "</s>", "ids": [1], "tokens": ["</s>"]}}},
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
    });
    // PromptTokenizer reads a file; it keeps the tokenizer in memory, so the file can go at once.
    static SERIAL: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let serial = SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("ciak-bench-tokenizer-{}-{serial}.json", std::process::id()));
    std::fs::write(&path, json.to_string()).map_err(|e| CiakError::io(&path, e))?;
    let tokenizer = PromptTokenizer::from_file(&path, max_len);
    let _ = std::fs::remove_file(&path);
    tokenizer
}

/// UMT5 of the Wan width with 2 small layers and a 256-token vocabulary.
pub fn tiny_umt5_config(d_model: usize) -> Umt5Config {
    Umt5Config { vocab_size: 256, d_model, d_kv: 64, d_ff: 512, num_layers: 2, num_heads: 4, ..Umt5Config::umt5_xxl() }
}

fn built(start: Instant, params: Option<u64>, dtype: DType) -> Built {
    Built { seconds: start.elapsed().as_secs_f64(), params, dtype: dtype_name(dtype) }
}

impl BenchPipeline {
    /// The real architecture of `model` (a random-weight model) with seeded random weights.
    pub fn random(spec: &BenchSpec, log: &mut dyn FnMut(&str)) -> Result<(Self, BuildReport)> {
        let Some(cfg) = spec.model.random_config() else {
            return Err(CiakError::InvalidRequest(format!("`{}` is not a random-weight model", spec.model.name())));
        };
        let device = &spec.device;
        let text_choice = match spec.text_encoder {
            TextEncoderChoice::Auto if device.is_cpu() => TextEncoderChoice::Tiny,
            TextEncoderChoice::Auto => TextEncoderChoice::Xxl,
            other => other,
        };
        let (text_encoder, text_built, text_kind) = match text_choice {
            TextEncoderChoice::Skip => (None, None, "skipped"),
            choice => {
                let (ucfg, kind) = match choice {
                    TextEncoderChoice::Xxl => (Umt5Config::umt5_xxl(), "umt5-xxl"),
                    _ => (tiny_umt5_config(cfg.text_dim), "umt5-tiny"),
                };
                log(&format!("building text encoder {kind} ({} layers) with random weights", ucfg.num_layers));
                let start = Instant::now();
                let backend = RandomBackend::new(spec.seed ^ 0x7E47);
                let model = Umt5EncoderModel::new(&ucfg, backend.varbuilder(spec.dtype, device))?;
                let encoder = TextEncoder::new(bench_tokenizer(MAX_SEQUENCE_LENGTH)?, model);
                device.synchronize()?;
                (Some(encoder), Some(built(start, Some(backend.params()), spec.dtype)), kind)
            }
        };
        log(&format!("building transformer {} with random weights", spec.model.name()));
        let start = Instant::now();
        let backend = RandomBackend::new(spec.seed ^ 0xD17);
        let transformer = WanTransformer3DModel::new(&cfg, backend.varbuilder(spec.dtype, device))?;
        device.synchronize()?;
        let transformer_built = built(start, Some(backend.params()), spec.dtype);
        log("building VAE (Wan2.1) with random weights");
        let start = Instant::now();
        let backend = RandomBackend::new(spec.seed ^ 0x7AE);
        let vae = AutoencoderKLWan::new(&AutoencoderKLWanConfig::wan21(), backend.varbuilder(spec.vae_dtype, device))?;
        device.synchronize()?;
        let vae_built = built(start, Some(backend.params()), spec.vae_dtype);
        let pipe = Self {
            text_encoder,
            transformer,
            vae,
            scheduler: SchedulerConfig::wan(SchedulerKind::UniPc),
            device: device.clone(),
        };
        let report = BuildReport {
            weights: "random",
            text_encoder_kind: text_kind.to_string(),
            text_encoder: text_built,
            transformer: transformer_built,
            vae: vae_built,
        };
        Ok((pipe, report))
    }

    /// Loads a diffusers folder's components as `WanPipeline::load` does (the text encoder is
    /// left out when `skip_text`).
    pub fn load(dir: &WanModelDir, opts: &LoadOptions, skip_text: bool, log: &mut dyn FnMut(&str)) -> Result<(Self, BuildReport)> {
        let device = &opts.device;
        let (text_encoder, text_built) = if skip_text {
            (None, None)
        } else {
            log(&format!("loading text encoder from {}", dir.text_encoder.display()));
            let start = Instant::now();
            let enc = TextEncoder::load(&dir.tokenizer_json(), &dir.text_encoder, opts.dtype, device)?;
            device.synchronize()?;
            (Some(enc), Some(built(start, None, opts.dtype)))
        };
        log(&format!("loading transformer from {}", dir.transformer.display()));
        let start = Instant::now();
        let cfg: WanTransformerConfig = read_config(&dir.transformer)?;
        let vb = crate::loader::load_transformer_varbuilder(&dir.transformer, opts.dtype, device)?;
        let transformer = WanTransformer3DModel::new(&cfg, vb).map_err(weights_error("transformer", &dir.transformer))?;
        device.synchronize()?;
        let transformer_built = built(start, None, opts.dtype);
        log(&format!("loading VAE from {}", dir.vae.display()));
        let start = Instant::now();
        let vae_cfg: AutoencoderKLWanConfig = read_config(&dir.vae)?;
        let vb = load_varbuilder(&dir.vae, opts.vae_dtype, device)?;
        let vae = AutoencoderKLWan::new(&vae_cfg, vb).map_err(weights_error("vae", &dir.vae))?;
        device.synchronize()?;
        let vae_built = built(start, None, opts.vae_dtype);
        let scheduler = SchedulerConfig::load(&dir.scheduler)?;
        let pipe = Self { text_encoder, transformer, vae, scheduler, device: device.clone() };
        let report = BuildReport {
            weights: "files",
            text_encoder_kind: if skip_text { "skipped" } else { "folder" }.to_string(),
            text_encoder: text_built,
            transformer: transformer_built,
            vae: vae_built,
        };
        Ok((pipe, report))
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn geometry(&self) -> Geometry {
        Geometry::new(self.transformer.config(), self.vae.config())
    }

    /// Prompt embeddings for the request's prompts ([B, L, text_dim] in the transformer dtype),
    /// or, without a text encoder, seeded random context of the same shape.
    fn context(&self, prompts: &[String], seed: u64) -> Result<Tensor> {
        let dtype = self.transformer.dtype();
        match &self.text_encoder {
            Some(enc) => Ok(enc.encode(prompts)?.prompt_embeds.to_dtype(dtype)?),
            None => {
                let shape = (prompts.len(), MAX_SEQUENCE_LENGTH, self.transformer.config().text_dim);
                Ok(noise::gaussian(seed ^ 0xC0, shape, &self.device)?.to_dtype(dtype)?)
            }
        }
    }

    /// `WanPipeline::generate_from_latents` with a clock per stage and per step.
    pub fn generate_from_latents(
        &self,
        req: &GenerateRequest,
        latents: Tensor,
        on_step: &mut dyn FnMut(usize, usize, f64),
    ) -> Result<Sampled> {
        self.geometry().validate(req)?;
        let expected = self.geometry().latent_shape(req);
        if latents.dims5()? != expected {
            return Err(CiakError::InvalidRequest(format!(
                "expected initial latents of shape {expected:?}, got {:?}",
                latents.dims()
            )));
        }
        let device = &self.device;
        let do_cfg = req.guidance > 1.0;

        let clock = Clock::start(device)?;
        let mut prompts = vec![req.prompt.clone()];
        if do_cfg {
            prompts.push(req.negative_prompt.clone());
        }
        let context = self.context(&prompts, req.seed)?;
        let text = clock.stop(device)?;
        let text = self.text_encoder.as_ref().map(|_| text);

        let clock = Clock::start(device)?;
        let mut step_seconds = Vec::with_capacity(req.steps);
        let mut step_start = Instant::now();
        let latents = sample(&self.transformer, &self.scheduler, req, latents, &context, &mut |step, total| {
            if step > 0 {
                device.synchronize()?;
                step_seconds.push(step_start.elapsed().as_secs_f64());
                on_step(step, total, step_seconds[step - 1]);
            }
            step_start = Instant::now();
            Ok(())
        })?;
        let sampling = clock.stop(device)?;

        let clock = Clock::start(device)?;
        let frames = decode_latents(&self.vae, &latents, None)?;
        let decode = clock.stop(device)?;
        Ok(Sampled { latents, frames, text, sampling, step_seconds, decode })
    }

    /// One transformer forward of batch 1 at timestep 500 (what diffusers' baseline times):
    /// `warmup` untimed runs, then `reps` timed ones.
    pub fn time_forward(&self, x: &Tensor, context: &Tensor, warmup: usize, reps: usize) -> Result<Timing> {
        let t = Tensor::new(&[500f32], &self.device)?;
        let x = x.to_dtype(self.transformer.dtype())?;
        self.repeat(warmup, reps, || Ok(drop(self.transformer.forward(&x, &t, context, None)?)))
    }

    /// The pipeline's VAE decode of `latents` ([1, C, F', h, w]): `warmup` untimed runs, then
    /// `reps` timed ones.
    pub fn time_decode(&self, latents: &Tensor, warmup: usize, reps: usize) -> Result<Timing> {
        self.repeat(warmup, reps, || Ok(drop(decode_latents(&self.vae, latents, None)?)))
    }

    /// `warmup` untimed calls of `run`, then `reps` (at least 1) timed ones, each between device
    /// synchronisations.
    fn repeat(&self, warmup: usize, reps: usize, mut run: impl FnMut() -> Result<()>) -> Result<Timing> {
        let device = &self.device;
        for _ in 0..warmup {
            run()?;
        }
        let mut seconds = Vec::with_capacity(reps.max(1));
        let mut cpu = Some(0.0);
        let mut peak = None;
        for _ in 0..reps.max(1) {
            let clock = Clock::start(device)?;
            run()?;
            let stage = clock.stop(device)?;
            seconds.push(stage.seconds);
            cpu = cpu.zip(stage.cpu_s).map(|(a, b)| a + b);
            peak = peak.max(stage.peak_host_rss_bytes);
        }
        let runs = seconds.len() as f64;
        Ok(Timing::of(seconds, cpu.map(|c| c / runs), peak))
    }
}

/// Repeated timings of one operation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Timing {
    /// Median of the runs (upper median for an even count).
    pub seconds: f64,
    pub min_s: f64,
    pub max_s: f64,
    pub runs: Vec<f64>,
    /// Mean CPU time per run.
    pub cpu_s: Option<f64>,
    pub peak_host_rss_bytes: Option<u64>,
}

impl Timing {
    fn of(runs: Vec<f64>, cpu_s: Option<f64>, peak_host_rss_bytes: Option<u64>) -> Self {
        let mut sorted = runs.clone();
        sorted.sort_by(f64::total_cmp);
        Timing {
            seconds: sorted[sorted.len() / 2],
            min_s: sorted[0],
            max_s: sorted[sorted.len() - 1],
            runs,
            cpu_s,
            peak_host_rss_bytes,
        }
    }
}

/// The N-step sampling loop.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sampling {
    pub seconds: f64,
    /// Median seconds per step.
    pub per_step_s: f64,
    pub step_seconds: Vec<f64>,
    /// Transformer batch per step: 2 with classifier-free guidance, else 1.
    pub batch: usize,
    pub cpu_s: Option<f64>,
    pub peak_host_rss_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stages {
    /// `None` when the text encoder was skipped.
    pub text_encoder: Option<Stage>,
    /// Batch 1, timestep 500, the conditional context. `None` in a decode-only run.
    pub transformer_forward: Option<Timing>,
    /// `None` in a forward-only or decode-only run (as are `vae_decode` and `total`).
    pub sampling: Option<Sampling>,
    pub vae_decode: Option<Stage>,
    /// Text encoder + sampling + VAE decode: one clip without loading.
    pub total: Option<Stage>,
    /// A decode-only run's decodes of seeded random latents (warmup, then reps timed).
    pub vae_decode_only: Option<Timing>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PeakMemory {
    /// Peak resident memory of the whole run (VmHWM at the end, build included).
    pub host_rss_bytes: Option<u64>,
    /// Peak device memory: the host peak on the CPU; `None` on CUDA, where candle exposes no
    /// allocator statistics.
    pub device_bytes: Option<u64>,
    pub note: String,
}

/// Everything `ciak bench` measured; written as JSON by `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub ciak_version: &'static str,
    pub model: String,
    pub seed: u64,
    pub device: String,
    pub cpu: Option<String>,
    pub threads: usize,
    pub dtype: &'static str,
    pub vae_dtype: &'static str,
    pub width: usize,
    pub height: usize,
    pub frames: usize,
    pub steps: usize,
    pub guidance: f64,
    pub cfg: bool,
    pub scheduler: String,
    /// [1, C, F', H/8, W/8].
    pub latent_shape: [usize; 5],
    /// Transformer tokens per sample (latent cells over the patch volume).
    pub tokens: usize,
    /// Score elements the attention materialises per block of query rows
    /// (`ciak_models::wan::attention::score_budget`).
    pub attention_score_budget: usize,
    pub build: BuildReport,
    pub stages: Stages,
    pub peak_memory: PeakMemory,
    pub wall_s: f64,
}

/// Builds (or loads) the model, then times text encoding, one transformer forward, the sampling
/// loop and the VAE decode. `log` receives progress lines.
pub fn run(spec: &BenchSpec, log: &mut dyn FnMut(&str)) -> Result<BenchReport> {
    let wall = Instant::now();
    let req = spec.request();
    let device = &spec.device;
    let (pipe, build) = match &spec.model {
        BenchModel::Folder { root, .. } => {
            let dir = WanModelDir::open(root)?;
            // Requests are checked before any weight is read, as `ciak generate` does.
            Geometry::of_model(&dir)?.validate(&req)?;
            let opts = LoadOptions { device: device.clone(), dtype: spec.dtype, vae_dtype: spec.vae_dtype };
            BenchPipeline::load(&dir, &opts, spec.text_encoder == TextEncoderChoice::Skip, log)?
        }
        _ => {
            let cfg = spec.model.random_config().expect("random model");
            Geometry::new(&cfg, &AutoencoderKLWanConfig::wan21()).validate(&req)?;
            BenchPipeline::random(spec, log)?
        }
    };
    let geometry = pipe.geometry();
    let shape = geometry.latent_shape(&req);
    let latents = noise::gaussian(spec.seed, shape, device)?;

    let stages = if spec.only == Some(BenchOnly::Decode) {
        log("timing the VAE decode");
        let decode = pipe.time_decode(&latents, spec.warmup, spec.reps)?;
        log(&format!("VAE decode: {:.3} s (median of {})", decode.seconds, decode.runs.len()));
        Stages { text_encoder: None, transformer_forward: None, sampling: None, vae_decode: None, total: None, vae_decode_only: Some(decode) }
    } else {
        log("timing one transformer forward (batch 1)");
        let context = pipe.context(std::slice::from_ref(&req.prompt), spec.seed)?;
        let forward = pipe.time_forward(&latents, &context, spec.warmup, spec.reps)?;
        log(&format!("transformer forward: {:.3} s (median of {})", forward.seconds, forward.runs.len()));
        if spec.only == Some(BenchOnly::Forward) {
            Stages {
                text_encoder: None,
                transformer_forward: Some(forward),
                sampling: None,
                vae_decode: None,
                total: None,
                vae_decode_only: None,
            }
        } else {
            log(&format!("sampling {} steps{}", req.steps, if req.guidance > 1.0 { " with CFG" } else { "" }));
            let sampled = pipe.generate_from_latents(&req, latents, &mut |i, n, s| log(&format!("step {i}/{n}: {s:.3} s")))?;
            sampled_stages(sampled, forward, if req.guidance > 1.0 { 2 } else { 1 })
        }
    };
    let host_peak = memory::peak_rss_bytes();
    let scheduler = req.scheduler.unwrap_or_else(|| pipe.scheduler.kind()).to_string();
    let [_, ph, pw] = pipe.transformer.config().patch_size;
    let pt = pipe.transformer.config().patch_size[0];
    let tokens = (shape.2 / pt) * (shape.3 / ph) * (shape.4 / pw);
    let cpu_device = device.is_cpu();
    let peak_memory = PeakMemory {
        host_rss_bytes: host_peak,
        device_bytes: if cpu_device { host_peak } else { None },
        note: if cpu_device {
            "CPU: peak resident set (VmHWM) of the process".to_string()
        } else {
            "n/a: candle exposes no CUDA allocator statistics; host_rss_bytes is host memory only".to_string()
        },
    };
    Ok(BenchReport {
        ciak_version: env!("CARGO_PKG_VERSION"),
        model: spec.model.name(),
        seed: spec.seed,
        device: device_name(device),
        cpu: memory::cpu_model(),
        threads: std::thread::available_parallelism().map(|t| t.get()).unwrap_or(1),
        dtype: dtype_name(spec.dtype),
        vae_dtype: dtype_name(spec.vae_dtype),
        width: req.width,
        height: req.height,
        frames: req.frames,
        steps: req.steps,
        guidance: req.guidance,
        cfg: req.guidance > 1.0,
        scheduler,
        latent_shape: [shape.0, shape.1, shape.2, shape.3, shape.4],
        tokens,
        attention_score_budget: ciak_models::wan::attention::score_budget(device),
        build,
        stages,
        peak_memory,
        wall_s: wall.elapsed().as_secs_f64(),
    })
}

/// The stages of a full run: text encoding, the sampling loop (`batch` samples per step) and the
/// VAE decode, with their total.
fn sampled_stages(sampled: Sampled, forward: Timing, batch: usize) -> Stages {
    let mut sorted = sampled.step_seconds.clone();
    sorted.sort_by(f64::total_cmp);
    let total_s = sampled.text.map(|s| s.seconds).unwrap_or(0.0) + sampled.sampling.seconds + sampled.decode.seconds;
    let stage_peaks = [sampled.text.and_then(|s| s.peak_host_rss_bytes), sampled.sampling.peak_host_rss_bytes, sampled.decode.peak_host_rss_bytes];
    let total_cpu = match sampled.text {
        Some(t) => t.cpu_s.zip(sampled.sampling.cpu_s).zip(sampled.decode.cpu_s).map(|((a, b), c)| a + b + c),
        None => sampled.sampling.cpu_s.zip(sampled.decode.cpu_s).map(|(b, c)| b + c),
    };
    Stages {
        text_encoder: sampled.text,
        transformer_forward: Some(forward),
        sampling: Some(Sampling {
            seconds: sampled.sampling.seconds,
            per_step_s: sorted[sorted.len() / 2],
            step_seconds: sampled.step_seconds,
            batch,
            cpu_s: sampled.sampling.cpu_s,
            peak_host_rss_bytes: sampled.sampling.peak_host_rss_bytes,
        }),
        vae_decode: Some(sampled.decode),
        total: Some(Stage { seconds: total_s, cpu_s: total_cpu, peak_host_rss_bytes: stage_peaks.into_iter().flatten().max() }),
        vae_decode_only: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::WanPipeline;

    fn fixtures() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
    }

    fn bits(t: &Tensor) -> Vec<u32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap().into_iter().map(f32::to_bits).collect()
    }

    /// The bench's sampling loop must stay the pipeline's: same latents and frames, bit for bit.
    #[test]
    fn bench_loop_equals_the_pipeline_bit_for_bit() {
        let root = fixtures().join("tiny-wan");
        assert!(root.is_dir(), "missing parity fixture {} (tests/fixtures/make_fixtures.py)", root.display());
        let dir = WanModelDir::open(&root).unwrap();
        let opts = LoadOptions::default();
        let pipe = WanPipeline::load(&dir, &opts).unwrap();
        let (bench, build) = BenchPipeline::load(&dir, &opts, false, &mut |_| {}).unwrap();
        assert_eq!(build.weights, "files");
        for (kind, guidance) in [(SchedulerKind::UniPc, 5.0), (SchedulerKind::Euler, 5.0), (SchedulerKind::UniPc, 1.0)] {
            let req = GenerateRequest {
                width: 32,
                height: 32,
                frames: 5,
                steps: 3,
                guidance,
                scheduler: Some(kind),
                negative_prompt: "blurry".into(),
                ..GenerateRequest::new("a red ball")
            };
            let latents = noise::gaussian(3, pipe.latent_shape(&req), &Device::Cpu).unwrap();
            let want = pipe.generate_from_latents(&req, latents.clone(), &mut |_| {}, None).unwrap();
            let mut steps = 0;
            let got = bench.generate_from_latents(&req, latents, &mut |_, _, _| steps += 1).unwrap();
            assert_eq!(steps, 3);
            assert_eq!(got.step_seconds.len(), 3);
            assert_eq!(bits(&got.latents), bits(&want.latents), "{kind} guidance {guidance}: latents");
            assert_eq!(bits(&got.frames), bits(&want.frames), "{kind} guidance {guidance}: frames");
            assert!(got.text.is_some() && got.decode.seconds > 0.0);
        }
    }

    #[test]
    fn the_bench_tokenizer_appends_eos_and_pads() {
        let tok = bench_tokenizer(16).unwrap();
        let out = tok.tokenize(&["A red fox, at dawn".to_string(), String::new()], &Device::Cpu).unwrap();
        let ids: Vec<Vec<u32>> = out.input_ids.to_vec2().unwrap();
        // a red fox , at dawn </s>
        assert_eq!(out.prompts[0].seq_len, 7, "{ids:?}");
        assert!(!ids[0][..7].contains(&2), "every word is known: {ids:?}");
        assert_eq!(ids[1][0], 1, "an empty prompt is just </s>");
        assert!(ids[0].iter().all(|&i| i < 256));
    }

    #[test]
    fn models_parse_and_bad_requests_fail_before_any_weight_is_built() {
        assert_eq!(BenchModel::parse("wan2.1-1.3b").unwrap(), BenchModel::Wan21T2v1_3b);
        assert_eq!(BenchModel::parse("WAN2.1-14B").unwrap(), BenchModel::Wan21T2v14b);
        assert!(BenchModel::parse("/no/such/folder").is_err());
        let spec = BenchSpec { width: 40, ..BenchSpec::new(BenchModel::Wan21T2v14b) };
        let err = run(&spec, &mut |_| panic!("nothing may be built for a bad request")).unwrap_err();
        assert!(err.to_string().contains("expected width a multiple of 16, got 40"), "{err}");
        assert!("big".parse::<TextEncoderChoice>().is_err());
        assert_eq!("skip".parse::<TextEncoderChoice>().unwrap(), TextEncoderChoice::Skip);
    }
}
