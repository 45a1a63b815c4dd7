//! `ciak eval`: how well a model draws what held-out prompts ask for.
//!
//! - [`prompts`]: the fixed prompt set (`eval/prompts.json`) from the world's held-out split.
//! - [`analyze`]: reads background, objects, colours, shapes, motions and flicker from frames.
//! - [`score`]: compares a reading with the prompt; accuracy per attribute and the bar.
//! - [`report`]: markdown report, per-prompt JSON, contact sheet PNG.
//!
//! Clips come from a [`ClipSource`]: a model through `WanPipeline` (the `ciak generate` path), or
//! the world renderer itself (`--reference`), optionally through H.264 or a VAE, which measures
//! the analyzer's ceiling.
pub mod analyze;
pub mod prompts;
pub mod report;
pub mod score;

pub use analyze::{analyze, Analysis, BackgroundKind, Flicker};
pub use prompts::{build_eval_set, build_eval_set_in, EvalPrompt, EvalSet, Expected};
pub use score::{score, summarize, PromptScore, Summary};

use crate::world::{render, Clip};
use candle_core::{DType, Device, Tensor};
use ciak_engine::error::CiakError;
use ciak_engine::pipeline::{GenerateRequest, WanPipeline};
use ciak_engine::video::{decode_mp4, write_mp4, RgbFrame, VideoFrames};
use ciak_models::wan::vae::AutoencoderKLWan;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Engine(#[from] CiakError),
    #[error("tensor error: {0}")]
    Tensor(#[from] candle_core::Error),
    #[error("{}: {source}", .path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, EvalError>;

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> EvalError + '_ {
    move |source| EvalError::Io { path: path.to_path_buf(), source }
}

/// Something that turns a prompt into frames.
pub trait ClipSource: Sync {
    /// One line for the report ("model models/builtin, 30 steps, ...").
    fn describe(&self) -> String;
    /// The clip for prompt number `index` of the full set; several may be asked for at once
    /// ([`run_eval`]'s `jobs`), so a clip depends on its prompt and index only.
    fn clip(&self, index: usize, prompt: &EvalPrompt) -> Result<SourcedClip>;
}

/// A clip and how long each stage of making it took.
pub struct SourcedClip {
    pub clip: Clip,
    pub timings: Vec<(String, f64)>,
}

/// What a reference clip goes through before it is analysed.
pub enum Roundtrip<'a> {
    /// The rendered pixels as they are.
    None,
    /// Written as MP4 (`ciak generate`'s encoder) and decoded again; `scratch` holds the file.
    H264 { scratch: PathBuf },
    /// Encoded to latents and decoded by a VAE (the model's own: the ceiling it allows).
    Vae(&'a AutoencoderKLWan),
}

/// World-rendered ground truth: the prompt's own scene.
pub struct ReferenceSource<'a> {
    pub roundtrip: Roundtrip<'a>,
}

impl ClipSource for ReferenceSource<'_> {
    fn describe(&self) -> String {
        match &self.roundtrip {
            Roundtrip::None => "reference: world renderer (no model)".into(),
            Roundtrip::H264 { .. } => "reference: world renderer through H.264 (no model)".into(),
            Roundtrip::Vae(_) => "reference: world renderer through the model's VAE (encode + decode)".into(),
        }
    }

    fn clip(&self, index: usize, prompt: &EvalPrompt) -> Result<SourcedClip> {
        let start = Instant::now();
        let clip = render(&prompt.scene);
        let mut timings = vec![("render".to_string(), start.elapsed().as_secs_f64())];
        let clip = match &self.roundtrip {
            Roundtrip::None => clip,
            Roundtrip::H264 { scratch } => {
                let start = Instant::now();
                let out = h264_roundtrip(&clip, scratch, index)?;
                timings.push(("h264".into(), start.elapsed().as_secs_f64()));
                out
            }
            Roundtrip::Vae(vae) => {
                let start = Instant::now();
                let out = vae_roundtrip(&clip, vae)?;
                timings.push(("vae".into(), start.elapsed().as_secs_f64()));
                out
            }
        };
        Ok(SourcedClip { clip, timings })
    }
}

/// Clips from a model through `WanPipeline::generate`, as `ciak generate` makes them.
pub struct ModelSource<'a> {
    pub pipe: &'a WanPipeline,
    /// Shown in the report.
    pub model: String,
    pub steps: usize,
    pub guidance: f64,
    /// Guidance only below this noise level (`GenerateRequest::guidance_below`).
    pub guidance_below: Option<f64>,
    /// The first latent frame drawn first (`GenerateRequest::image_first`).
    pub image_first: bool,
    /// Prompt `i` of the set uses seed `seed + i`, so a `--limit` run matches the full run.
    pub seed: u64,
    pub negative_prompt: String,
}

impl ClipSource for ModelSource<'_> {
    fn describe(&self) -> String {
        format!(
            "model {}: {} steps{}, guidance {}{}, seed {} + prompt index, scheduler {} (shift {})",
            self.model,
            self.steps,
            if self.image_first { " (image first: the first latent frame, then the clip)" } else { "" },
            self.guidance,
            self.guidance_below.map(|b| format!(" below sigma {b}")).unwrap_or_default(),
            self.seed,
            self.pipe.scheduler.kind(),
            self.pipe.scheduler.shift()
        )
    }

    fn clip(&self, index: usize, prompt: &EvalPrompt) -> Result<SourcedClip> {
        let (width, height) = prompt.aspect.size();
        let req = GenerateRequest {
            prompt: prompt.prompt.clone(),
            negative_prompt: self.negative_prompt.clone(),
            width,
            height,
            frames: prompt.frames,
            steps: self.steps,
            guidance: self.guidance,
            guidance_below: self.guidance_below,
            image_first: self.image_first,
            shift: None,
            scheduler: None,
            seed: self.seed.wrapping_add(index as u64),
            vae_tiling: None,
        };
        let out = self.pipe.generate(&req, &mut |_| {}, None)?;
        let video = VideoFrames::from_tensor(&out.frames)?;
        let timings = out.timings.iter().map(|(k, d)| (k.to_string(), d.as_secs_f64())).collect();
        Ok(SourcedClip { clip: clip_from_frames(video.frames(), prompt.fps), timings })
    }
}

/// RGB8 frames (all the same size) as a `Clip`.
pub fn clip_from_frames(frames: &[RgbFrame], fps: u32) -> Clip {
    let (width, height) = frames.first().map(|f| (f.width, f.height)).unwrap_or((0, 0));
    Clip { width, height, frames: frames.len(), fps, pixels: frames.iter().flat_map(|f| f.data.iter().copied()).collect() }
}

fn to_video(clip: &Clip) -> Result<VideoFrames> {
    let frames = (0..clip.frames).map(|f| RgbFrame { width: clip.width, height: clip.height, data: clip.frame(f).to_vec() }).collect();
    Ok(VideoFrames::new(frames)?)
}

/// The clip after an MP4 write (H.264, as `ciak generate` encodes) and decode; `index` names the
/// scratch file, so clips made side by side do not share one.
pub fn h264_roundtrip(clip: &Clip, scratch: &Path, index: usize) -> Result<Clip> {
    std::fs::create_dir_all(scratch).map_err(io_err(scratch))?;
    let path = scratch.join(format!(".ciak-eval-roundtrip-{}-{index}.mp4", std::process::id()));
    write_mp4(&to_video(clip)?, clip.fps as f64, &path, None)?;
    let decoded = decode_mp4(&path);
    let _ = std::fs::remove_file(&path);
    Ok(clip_from_frames(&decoded?, clip.fps))
}

/// The clip after VAE encode (posterior mean) and decode.
pub fn vae_roundtrip(clip: &Clip, vae: &AutoencoderKLWan) -> Result<Clip> {
    let (f, h, w) = (clip.frames, clip.height, clip.width);
    let x = Tensor::from_vec(clip.to_f32(), (f, h, w, 3), &Device::Cpu)?
        .permute((3, 0, 1, 2))?
        .unsqueeze(0)?
        .to_device(vae.device())?
        .to_dtype(vae.dtype())?;
    let (mean, _) = vae.encode(&x)?;
    let y = vae.decode(&mean)?.to_dtype(DType::F32)?;
    let y = ((y * 0.5)? + 0.5)?.clamp(0f32, 1f32)?.squeeze(0)?.permute((1, 2, 3, 0))?.contiguous()?;
    let video = VideoFrames::from_tensor(&y)?;
    Ok(clip_from_frames(video.frames(), clip.fps))
}

/// Everything about one prompt's run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PromptResult {
    /// Position in the full set (the seed offset).
    pub index: usize,
    pub id: String,
    pub prompt: String,
    pub aspect: String,
    pub expected: Expected,
    pub analysis: Analysis,
    pub score: PromptScore,
    /// Seconds per stage of making the clip ("text", "denoise", "decode" or "render", ...).
    pub timings: Vec<(String, f64)>,
    pub seconds_clip: f64,
    pub seconds_analyze: f64,
    /// First, middle and last frame, for the contact sheet.
    #[serde(skip)]
    pub keyframes: Vec<RgbFrame>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalReport {
    pub source: String,
    pub prompts_total: usize,
    pub results: Vec<PromptResult>,
    pub summary: Summary,
    pub seconds_total: f64,
    /// Seconds to load the model (0 for references), set by the caller.
    pub seconds_load: f64,
    pub ciak_version: String,
}

impl EvalSet {
    /// The first `limit` prompts in the order two single-object prompts, one two-object prompt,
    /// two single, ... so a short run keeps the mix; with their indices in the full set.
    pub fn subset(&self, limit: Option<usize>) -> Vec<(usize, &EvalPrompt)> {
        let singles: Vec<usize> = (0..self.prompts.len()).filter(|&i| self.prompts[i].object_count() == 1).collect();
        let others: Vec<usize> = (0..self.prompts.len()).filter(|&i| self.prompts[i].object_count() != 1).collect();
        let (mut s, mut o) = (singles.into_iter().peekable(), others.into_iter().peekable());
        let mut order = Vec::with_capacity(self.prompts.len());
        while s.peek().is_some() || o.peek().is_some() {
            order.extend(s.next());
            order.extend(s.next());
            order.extend(o.next());
        }
        order.truncate(limit.unwrap_or(usize::MAX));
        order.into_iter().map(|i| (i, &self.prompts[i])).collect()
    }
}

/// Makes, analyses and scores one prompt's clip.
fn run_prompt(source: &dyn ClipSource, index: usize, prompt: &EvalPrompt) -> Result<(PromptResult, Clip)> {
    let clip_start = Instant::now();
    let sourced = source.clip(index, prompt)?;
    let seconds_clip = clip_start.elapsed().as_secs_f64();
    let clip = sourced.clip;
    let analyze_start = Instant::now();
    let analysis = analyze(&clip, prompt.object_count());
    let seconds_analyze = analyze_start.elapsed().as_secs_f64();
    let score = score(&prompt.expected, &analysis, clip.frames);
    let keyframes = [0, clip.frames / 2, clip.frames.saturating_sub(1)]
        .map(|f| RgbFrame { width: clip.width, height: clip.height, data: clip.frame(f).to_vec() })
        .to_vec();
    let result = PromptResult {
        index,
        id: prompt.id.clone(),
        prompt: prompt.prompt.clone(),
        aspect: prompt.aspect.label().to_string(),
        expected: prompt.expected.clone(),
        analysis,
        score,
        timings: sourced.timings,
        seconds_clip,
        seconds_analyze,
        keyframes,
    };
    Ok((result, clip))
}

/// Renders, analyses and scores the prompts; `on_result` sees each one as it finishes.
///
/// `jobs` prompts are made at a time, side by side on the thread pool (CPU sources only: with one
/// job every clip is made on the calling thread, where a GPU's context is; each clip depends on its
/// prompt and index only, so the results are the same for any `jobs`; each prompt's times are
/// then those of a clip made beside others). `on_result` still sees them in the set's order.
pub fn run_eval(
    set: &EvalSet,
    source: &dyn ClipSource,
    limit: Option<usize>,
    jobs: usize,
    on_result: &mut dyn FnMut(usize, usize, &PromptResult, &Clip),
) -> Result<EvalReport> {
    let start = Instant::now();
    let chosen = set.subset(limit);
    let mut results = Vec::with_capacity(chosen.len());
    for batch in chosen.chunks(jobs.max(1)) {
        let made = crate::train::map_items(batch, true, |&(index, prompt)| run_prompt(source, index, prompt));
        for one in made {
            let (result, clip) = one?;
            on_result(results.len() + 1, chosen.len(), &result, &clip);
            results.push(result);
        }
    }
    let rows: Vec<(usize, PromptScore, Flicker)> =
        results.iter().map(|r| (r.expected.objects.len(), r.score.clone(), r.analysis.flicker)).collect();
    Ok(EvalReport {
        source: source.describe(),
        prompts_total: set.prompts.len(),
        summary: summarize(&rows),
        results,
        seconds_total: start.elapsed().as_secs_f64(),
        seconds_load: 0.0,
        ciak_version: env!("CARGO_PKG_VERSION").to_string(),
    })
}
