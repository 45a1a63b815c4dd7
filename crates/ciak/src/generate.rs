//! `ciak generate`: prompt in, MP4 (plus recipe sidecar, optional PNG frames) out.
use crate::options::{
    default_output_name, frames_for_seconds, parse_aspect, parse_device, parse_dtype, parse_size, size_for_aspect,
};
use crate::progress::Reporter;
use anyhow::{bail, Context, Result};
use candle_core::DType;
use ciak_engine::model_dir::{resolve_model_path, GenerationDefaults, WanModelDir};
use ciak_engine::pipeline::{GenerateRequest, Geometry, LoadOptions, WanPipeline};
use ciak_engine::recipe::{weights_sha256, Recipe, StageTime};
use ciak_engine::scheduler::SchedulerKind;
use ciak_engine::video::{write_mp4, write_png_sequence, write_strip, VideoFrames};
use clap::Args;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// What to show. Required unless --recipe gives it.
    pub prompt: Option<String>,
    /// The built-in model (`builtin`, the default), a diffusers folder, or a Hugging Face id
    /// found in the local cache.
    #[arg(long, env = "CIAK_MODEL")]
    pub model: Option<String>,
    /// Frame size as WIDTHxHEIGHT (multiples of 16).
    #[arg(long, conflicts_with = "aspect")]
    pub size: Option<String>,
    /// Aspect ratio at the model's default area: 16:9, 9:16, 1:1, 2.39:1.
    #[arg(long)]
    pub aspect: Option<String>,
    /// Clip length in seconds (rounded to the nearest 1+4k frames).
    #[arg(long, conflicts_with = "frames")]
    pub seconds: Option<f64>,
    /// Number of frames, of the form 1+4k.
    #[arg(long)]
    pub frames: Option<usize>,
    /// Frames per second (default: the model's).
    #[arg(long)]
    pub fps: Option<f64>,
    /// Denoising steps (default: the model's).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Classifier-free guidance scale (default: the model's).
    #[arg(long)]
    pub guidance: Option<f64>,
    /// Guidance only at noise levels (sigma, 0 to 1) below this; the steps above use the prompt
    /// alone (default: the model's; none: every step)
    #[arg(long, value_name = "SIGMA")]
    pub guidance_below: Option<f64>,
    /// Draw the first latent frame first, then the clip from it, as image-to-video does
    /// (default: the model's; the built-in model's says whether it was trained for it)
    #[arg(long, value_name = "BOOL")]
    pub image_first: Option<bool>,
    /// Flow shift (default: the checkpoint scheduler's).
    #[arg(long)]
    pub shift: Option<f64>,
    /// unipc or euler (default: the checkpoint's scheduler).
    #[arg(long)]
    pub scheduler: Option<String>,
    /// Seed of the first clip (default: random, printed and recorded in the recipe).
    #[arg(long)]
    pub seed: Option<u64>,
    /// What to steer away from (default: the model's).
    #[arg(long)]
    pub negative_prompt: Option<String>,
    /// Render N clips from seeds seed, seed+1, ...
    #[arg(long, default_value_t = 1)]
    pub variations: usize,
    /// f32, bf16 or f16 for the transformer and text encoder (the VAE stays f32). Default f32.
    #[arg(long)]
    pub dtype: Option<String>,
    /// cpu or cuda (cuda:N for another GPU).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Output MP4 (default: a name made from the prompt and seed).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Overwrite existing output files.
    #[arg(long)]
    pub force: bool,
    /// Also write the frames as PNGs into this folder.
    #[arg(long)]
    pub frames_dir: Option<PathBuf>,
    /// Also write a still preview: frames side by side in one PNG (see --strip-frames).
    #[arg(long, value_name = "FILE.png")]
    pub strip: Option<PathBuf>,
    /// How many frames the --strip preview shows, spread evenly, first and last included.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=64), requires = "strip")]
    pub strip_frames: u64,
    /// Re-render the clip a recipe (JSON sidecar) describes; other flags override it.
    #[arg(long)]
    pub recipe: Option<PathBuf>,
    /// One JSON event per line on stderr instead of a progress bar.
    #[arg(long)]
    pub json: bool,
    /// Write a Chrome trace (chrome://tracing, Perfetto) of every stage and step to FILE.
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,
    /// Say more (token counts, words the model does not know).
    #[arg(short, long)]
    pub verbose: bool,
}

/// Everything one run needs: flags first, then the recipe, then the model's own defaults.
struct Plan {
    prompt: String,
    negative_prompt: String,
    size: (usize, usize),
    frames: usize,
    fps: f64,
    steps: usize,
    guidance: f64,
    guidance_below: Option<f64>,
    image_first: bool,
    shift: Option<f64>,
    scheduler: Option<SchedulerKind>,
    seed: u64,
    dtype: DType,
}

/// Flags and recipe, before the model is known.
fn read_recipe(args: &GenerateArgs) -> Result<Option<Recipe>> {
    Ok(args.recipe.as_deref().map(Recipe::read).transpose()?)
}

fn plan(args: &GenerateArgs, recipe: Option<&Recipe>, defaults: &GenerationDefaults, geometry: &Geometry) -> Result<Plan> {
    let prompt = match (&args.prompt, recipe) {
        (Some(p), _) => p.clone(),
        (None, Some(r)) => r.prompt.clone(),
        (None, None) => bail!("expected a prompt: ciak generate \"a red ball moves right\""),
    };
    if prompt.trim().is_empty() {
        bail!("expected a prompt, got an empty one");
    }
    let seed = args.seed.or(recipe.map(|r| r.seed)).unwrap_or_else(random_seed);
    let scheduler = match (&args.scheduler, recipe) {
        (Some(s), _) => Some(s.parse::<SchedulerKind>()?),
        (None, Some(r)) => Some(r.scheduler.parse::<SchedulerKind>()?),
        (None, None) => None,
    };
    if args.variations == 0 {
        bail!("expected --variations >= 1, got 0");
    }
    let fps = args.fps.or(recipe.map(|r| r.fps)).unwrap_or(defaults.fps);
    if !(fps.is_finite() && fps > 0.0) {
        bail!("expected --fps > 0, got {fps}");
    }
    let size = match (args.size.as_deref(), args.aspect.as_deref(), recipe) {
        (Some(s), _, _) => parse_size(s)?,
        (None, Some(a), _) => size_for_aspect((defaults.width, defaults.height), &defaults.sizes, parse_aspect(a)?, geometry.size_multiple()),
        (None, None, Some(r)) => (r.width, r.height),
        (None, None, None) => (defaults.width, defaults.height),
    };
    let frames = match (args.frames, args.seconds, recipe) {
        (Some(f), _, _) => f,
        (None, Some(s), _) => frames_for_seconds(s, fps, geometry.temporal_ratio)?,
        (None, None, Some(r)) => r.frames,
        (None, None, None) => defaults.frames,
    };
    let dtype = match (&args.dtype, recipe) {
        (Some(d), _) => d.as_str(),
        (None, Some(r)) => r.dtype.as_str(),
        (None, None) => "f32",
    };
    Ok(Plan {
        prompt,
        negative_prompt: args
            .negative_prompt
            .clone()
            .or(recipe.map(|r| r.negative_prompt.clone()))
            .unwrap_or_else(|| defaults.negative_prompt.clone()),
        size,
        frames,
        fps,
        steps: args.steps.or(recipe.map(|r| r.steps)).unwrap_or(defaults.steps),
        guidance: args.guidance.or(recipe.map(|r| r.guidance)).unwrap_or(defaults.guidance),
        // a recipe is a whole description: its absent interval means none, not the model's
        guidance_below: match recipe {
            Some(r) => args.guidance_below.or(r.guidance_below),
            None => args.guidance_below.or(defaults.guidance_below),
        },
        image_first: args.image_first.or(recipe.map(|r| r.image_first)).unwrap_or(defaults.image_first),
        shift: args.shift.or(recipe.map(|r| r.shift)),
        scheduler,
        seed,
        dtype: parse_dtype(dtype, "--dtype")?,
    })
}

/// `dir/name.ext` -> `dir/name-s<seed>.ext`: one file per variation.
fn with_seed(path: &Path, seed: u64, ext: &str) -> PathBuf {
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("clip");
    path.with_file_name(format!("{stem}-s{seed}.{ext}"))
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now()) >> 1
}

/// Fails early, before minutes of rendering, if the output cannot be written there.
fn check_writable(path: &Path, force: bool) -> Result<()> {
    if path.exists() && !force {
        bail!("{} already exists (pass --force to overwrite)", path.display());
    }
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !dir.is_dir() {
        bail!("cannot write {}: folder {} does not exist", path.display(), dir.display());
    }
    let probe = dir.join(format!(".ciak-write-test-{}", std::process::id()));
    std::fs::write(&probe, b"").with_context(|| format!("cannot write into {}", dir.display()))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        _ => "f32",
    }
}

/// Installs the Chrome trace writer; the returned guard flushes the file when dropped.
fn start_trace(path: &Path) -> Result<tracing_chrome::FlushGuard> {
    use tracing_subscriber::prelude::*;
    check_writable(path, true)?;
    let (layer, guard) = tracing_chrome::ChromeLayerBuilder::new().file(path).include_args(true).build();
    tracing_subscriber::registry().with(layer).try_init().context("a tracing subscriber is already installed")?;
    Ok(guard)
}

pub fn run(args: GenerateArgs) -> Result<()> {
    let total_start = Instant::now();
    let recipe = read_recipe(&args)?;
    let _trace = args.trace.as_deref().map(start_trace).transpose()?;
    let device = parse_device(&args.device)?;
    let model_spec = args.model.clone().or(recipe.as_ref().map(|r| r.model.clone())).unwrap_or_else(|| "builtin".into());
    let root = resolve_model_path(&model_spec)?;
    let dir = WanModelDir::open(&root)?;
    // Requests are checked against the model's configs before any weight is read.
    let geometry = Geometry::of_model(&dir)?;
    let plan = plan(&args, recipe.as_ref(), &dir.defaults()?, &geometry)?;
    let (width, height) = plan.size;
    let frames = plan.frames;
    if frames < 2 {
        bail!("expected at least 2 frames for an MP4, got {frames} (try --frames 5)");
    }
    let request = |seed: u64, scheduler: Option<SchedulerKind>, shift: Option<f64>| GenerateRequest {
        prompt: plan.prompt.clone(),
        negative_prompt: plan.negative_prompt.clone(),
        width,
        height,
        frames,
        steps: plan.steps,
        guidance: plan.guidance,
        guidance_below: plan.guidance_below,
        image_first: plan.image_first,
        shift,
        scheduler,
        seed,
        vae_tiling: None,
    };
    geometry.validate(&request(plan.seed, plan.scheduler, plan.shift))?;

    // Outputs are named and checked before the model loads.
    let seeds: Vec<u64> = (0..args.variations as u64).map(|i| plan.seed.wrapping_add(i)).collect();
    let outputs: Vec<PathBuf> = seeds
        .iter()
        .map(|&seed| match (&args.output, args.variations) {
            (Some(o), 1) => o.clone(),
            (Some(o), _) => with_seed(o, seed, "mp4"),
            (None, _) => PathBuf::from(default_output_name(&plan.prompt, seed, "mp4")),
        })
        .collect();
    let strips: Vec<Option<PathBuf>> = seeds
        .iter()
        .map(|&seed| {
            args.strip.as_ref().map(|s| if args.variations == 1 { s.clone() } else { with_seed(s, seed, "png") })
        })
        .collect();
    for (out, strip) in outputs.iter().zip(&strips) {
        check_writable(out, args.force)?;
        check_writable(&out.with_extension("json"), args.force)?;
        if let Some(strip) = strip {
            check_writable(strip, args.force)?;
        }
    }

    let reporter = Reporter::new(args.json);
    reporter.stage(1, seeds.len(), "loading model");
    let load_start = Instant::now();
    let pipe = WanPipeline::load(&dir, &LoadOptions { device, dtype: plan.dtype, vae_dtype: DType::F32 })?;
    let load_time = load_start.elapsed();
    let weights = weights_sha256(&root)?;
    let scheduler_kind = plan.scheduler.unwrap_or_else(|| pipe.scheduler.kind());
    let shift = plan.shift.unwrap_or_else(|| pipe.scheduler.shift());

    for (i, ((&seed, out), strip)) in seeds.iter().zip(&outputs).zip(&strips).enumerate() {
        let clip = i + 1;
        let req = request(seed, Some(scheduler_kind), Some(shift));
        let result = pipe.generate(&req, &mut |p| reporter.report(clip, seeds.len(), p), None)?;
        if args.verbose && i == 0 {
            let unknown = pipe.text_encoder.tokenizer().unknown_words(&plan.prompt)?;
            if !unknown.is_empty() {
                eprintln!("words the model does not know (ignored): {}", unknown.join(", "));
            }
        }
        if result.prompt_tokens.truncated {
            eprintln!(
                "warning: the prompt needs {} tokens; the text encoder reads {}, so it was cut",
                result.prompt_tokens.full_len, result.prompt_tokens.seq_len
            );
        } else if args.verbose {
            eprintln!("prompt: {} tokens", result.prompt_tokens.seq_len);
        }
        reporter.stage(clip, seeds.len(), "writing");
        let _write_span = tracing::info_span!("write", clip).entered();
        let write_start = Instant::now();
        let mut timings = vec![StageTime::new("load", load_time.as_secs_f64())];
        timings.extend(result.timings.iter().map(|(k, d)| StageTime::new(*k, d.as_secs_f64())));
        let mut recipe = Recipe {
            model: model_spec.clone(),
            weights_sha256: weights.clone(),
            scheduler: scheduler_kind.to_string(),
            steps: plan.steps,
            shift,
            guidance: plan.guidance,
            guidance_below: plan.guidance_below,
            image_first: plan.image_first,
            seed,
            width,
            height,
            frames,
            fps: plan.fps,
            prompt: plan.prompt.clone(),
            negative_prompt: plan.negative_prompt.clone(),
            dtype: dtype_name(plan.dtype).into(),
            ciak_version: env!("CARGO_PKG_VERSION").into(),
            timings,
        };
        let video = VideoFrames::from_tensor(&result.frames)?;
        if let Some(frames_dir) = &args.frames_dir {
            let dir = if seeds.len() > 1 { frames_dir.join(format!("s{seed}")) } else { frames_dir.clone() };
            write_png_sequence(&video, &dir)?;
        }
        write_mp4(&video, plan.fps, out, Some(&recipe.to_json()))?;
        if let Some(strip) = strip {
            write_strip(&video, args.strip_frames as usize, strip)?;
        }
        recipe.timings.push(StageTime::new("write", write_start.elapsed().as_secs_f64()));
        write_atomic(&out.with_extension("json"), recipe.to_json().as_bytes())?;
        reporter.finish();
        let summary: Vec<String> = recipe.timings.iter().map(|t| format!("{} {:.2} s", t.stage, t.seconds)).collect();
        eprintln!("wrote {} ({}x{}, {} frames, seed {seed}): {}", out.display(), width, height, frames, summary.join(", "));
        if args.json {
            println!("{}", serde_json::json!({"event": "done", "output": out, "recipe": out.with_extension("json"), "seed": seed}));
        }
    }
    eprintln!("total {:.2} s", total_start.elapsed().as_secs_f64());
    Ok(())
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("json.part");
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
