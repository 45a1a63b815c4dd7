//! `ciak eval`: renders the held-out prompt set (eval/prompts.json) with a model, reads every clip
//! with the analyzer and prints per-attribute accuracy, flicker and timings; writes report.md,
//! results.json and contact_sheet.png. `--reference` scores world-rendered ground truth instead
//! (the analyzer's ceiling); `--check` makes a missed bar a failing exit code.
use crate::options::{parse_dtype, parse_device};
use anyhow::{bail, Context, Result};
use candle_core::DType;
use ciak_engine::model_dir::{resolve_model_path, GenerationDefaults, WanModelDir};
use ciak_engine::pipeline::{LoadOptions, WanPipeline};
use ciak_engine::video::{write_mp4, RgbFrame, VideoFrames};
use ciak_train::eval::report::{summary_table, write_report};
use ciak_train::eval::{run_eval, ClipSource, EvalSet, ModelSource, PromptResult, ReferenceSource, Roundtrip};
use ciak_train::world::Clip;
use clap::{Args, ValueEnum};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// A diffusers folder, a Hugging Face id in the local cache, or `builtin`.
    #[arg(long, env = "CIAK_MODEL", default_value = "builtin")]
    pub model: String,
    /// Denoising steps per clip (default: the model's own, from its ciak.json).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Classifier-free guidance scale (default: the model's own, from its ciak.json).
    #[arg(long)]
    pub guidance: Option<f64>,
    /// Guidance only at noise levels (sigma) below this (default: the model's own).
    #[arg(long, value_name = "SIGMA")]
    pub guidance_below: Option<f64>,
    /// Draw each clip's first latent frame first, then the clip from it (default: the model's
    /// own, from its ciak.json)
    #[arg(long, value_name = "BOOL")]
    pub image_first: Option<bool>,
    /// Seed of the first prompt; prompt i of the set uses seed + i.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output folder for report.md, results.json, contact_sheet.png (created if missing).
    #[arg(long, default_value = "eval-out")]
    pub out: PathBuf,
    /// Only the first N prompts (two single-object prompts, then one two-object prompt, ...).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Score world-rendered ground truth instead of a model (the analyzer's ceiling).
    #[arg(long)]
    pub reference: bool,
    /// With --reference: pass the rendered clips through H.264, or through the VAE of --model.
    #[arg(long, value_enum, default_value_t = RoundtripArg::None, requires = "reference")]
    pub roundtrip: RoundtripArg,
    /// Exit with a failure if the bar (accuracy and flicker) is not met.
    #[arg(long)]
    pub check: bool,
    /// Also write every clip as OUT/clips/<id>.mp4.
    #[arg(long)]
    pub videos: bool,
    /// Another prompt set in the eval/prompts.json format.
    #[arg(long, value_name = "FILE")]
    pub prompts: Option<PathBuf>,
    /// f32, bf16 or f16 for the transformer and text encoder (the VAE stays f32).
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// cpu or cuda (cuda:N for another GPU).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Prompts made at a time, side by side (the same results for any N). Default: one per CPU
    /// thread (RAYON_NUM_THREADS) on the CPU, 1 on a GPU.
    #[arg(long, value_name = "N")]
    pub jobs: Option<usize>,
}

impl EvalArgs {
    /// Clips made at a time. One per thread on the CPU by default: candle runs much of a clip's
    /// work on one thread.
    fn jobs(&self) -> usize {
        match self.jobs {
            Some(n) => n,
            None if self.device == "cpu" => crate::threads::count(),
            None => 1,
        }
    }

    /// Whether clips are made side by side on the CPU ([`crate::threads::side_by_side`]).
    pub fn runs_side_by_side(&self) -> bool {
        self.device == "cpu" && self.jobs() > 1
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RoundtripArg {
    None,
    H264,
    Vae,
}

/// The pipeline and the model's generation defaults (ciak.json).
fn load(args: &EvalArgs) -> Result<(WanPipeline, GenerationDefaults)> {
    let root = resolve_model_path(&args.model)?;
    let dir = WanModelDir::open(&root)?;
    let opts = LoadOptions { device: parse_device(&args.device)?, dtype: parse_dtype(&args.dtype, "--dtype")?, vae_dtype: DType::F32 };
    Ok((WanPipeline::load(&dir, &opts)?, dir.defaults()?))
}

fn marks(r: &PromptResult) -> String {
    if r.score.all() {
        return "ok".into();
    }
    let mut wrong = Vec::new();
    for (i, o) in r.score.objects.iter().enumerate() {
        let tag = if r.score.objects.len() > 1 { format!("#{} ", i + 1) } else { String::new() };
        if !o.found {
            wrong.push(format!("{tag}missing"));
            continue;
        }
        for (ok, name) in [(o.color, "colour"), (o.shape, "shape"), (o.motion, "motion")] {
            if !ok {
                wrong.push(format!("{tag}{name}"));
            }
        }
    }
    if !r.score.background {
        wrong.push("background".into());
    }
    format!("FAIL {}", wrong.join(", "))
}

fn write_clip(dir: &Path, id: &str, clip: &Clip) -> Result<()> {
    let frames = (0..clip.frames).map(|f| RgbFrame { width: clip.width, height: clip.height, data: clip.frame(f).to_vec() }).collect();
    write_mp4(&VideoFrames::new(frames)?, clip.fps as f64, &dir.join(format!("{id}.mp4")), None)?;
    Ok(())
}

pub fn run(args: EvalArgs) -> Result<()> {
    let set = match &args.prompts {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            let set = EvalSet::from_json(&text)
                .with_context(|| format!("{} is not a prompt set like eval/prompts.json", path.display()))?;
            for p in &set.prompts {
                p.scene.validate().map_err(|e| anyhow::anyhow!("{}: prompt {}'s scene: {e}", path.display(), p.id))?;
            }
            set
        }
        None => EvalSet::builtin(),
    };
    if set.prompts.is_empty() {
        bail!("the prompt set is empty");
    }
    if args.limit == Some(0) {
        bail!("expected --limit of at least 1, got 0");
    }
    if args.steps == Some(0) {
        bail!("expected --steps of at least 1, got 0");
    }
    match args.jobs {
        Some(0) => bail!("expected --jobs of at least 1, got 0"),
        Some(n) if n > 1 && args.device != "cpu" => {
            bail!("expected --jobs 1 with --device {} (a GPU makes one clip at a time), got {n}", args.device)
        }
        _ => {}
    }
    if let Some(g) = args.guidance {
        if !(g.is_finite() && g >= 0.0) {
            bail!("expected --guidance >= 0, got {g}");
        }
    }
    if let Some(b) = args.guidance_below {
        if !(b > 0.0 && b <= 1.0) {
            bail!("expected --guidance-below in (0, 1], got {b}");
        }
    }
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    let clips_dir = args.out.join("clips");
    if args.videos {
        std::fs::create_dir_all(&clips_dir).with_context(|| format!("cannot create {}", clips_dir.display()))?;
    }

    let load_start = Instant::now();
    let (pipe, defaults) = if !args.reference || args.roundtrip == RoundtripArg::Vae {
        eprintln!("loading {}", args.model);
        let (pipe, defaults) = load(&args)?;
        (Some(pipe), defaults)
    } else {
        (None, GenerationDefaults::default())
    };
    let seconds_load = load_start.elapsed().as_secs_f64();
    let source: Box<dyn ClipSource + '_> = match (&pipe, args.reference) {
        (Some(pipe), false) => Box::new(ModelSource {
            pipe,
            model: args.model.clone(),
            steps: args.steps.unwrap_or(defaults.steps),
            guidance: args.guidance.unwrap_or(defaults.guidance),
            guidance_below: args.guidance_below.or(defaults.guidance_below),
            image_first: args.image_first.unwrap_or(defaults.image_first),
            seed: args.seed,
            negative_prompt: String::new(),
        }),
        (pipe, true) => Box::new(ReferenceSource {
            roundtrip: match (args.roundtrip, pipe) {
                (RoundtripArg::None, _) => Roundtrip::None,
                (RoundtripArg::H264, _) => Roundtrip::H264 { scratch: args.out.clone() },
                (RoundtripArg::Vae, Some(pipe)) => Roundtrip::Vae(&pipe.vae),
                (RoundtripArg::Vae, None) => unreachable!("the model is loaded for a VAE round trip"),
            },
        }),
        (None, false) => unreachable!("the model is loaded unless --reference"),
    };
    eprintln!("{}", source.describe());

    let mut write_error = None;
    let mut on_result = |k: usize, n: usize, r: &PromptResult, clip: &Clip| {
        eprintln!(
            "[{k:>3}/{n}] {:<4} {:<40} clip {:.2} s, analysis {:.2} s",
            r.id,
            marks(r),
            r.seconds_clip,
            r.seconds_analyze
        );
        if args.videos && write_error.is_none() {
            write_error = write_clip(&clips_dir, &r.id, clip).err();
        }
    };
    let jobs = args.jobs();
    let mut report = run_eval(&set, source.as_ref(), args.limit, jobs, &mut on_result)?;
    if let Some(e) = write_error {
        return Err(e.context("writing a clip"));
    }
    report.seconds_load = seconds_load;

    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let files = write_report(&args.out, &report, &command)?;
    println!("{}", summary_table(&report.summary));
    let n = report.results.len().max(1) as f64;
    println!(
        "timings: load {:.1} s, per prompt clip {:.2} s + analysis {:.3} s, total {:.1} s",
        seconds_load,
        report.results.iter().map(|r| r.seconds_clip).sum::<f64>() / n,
        report.results.iter().map(|r| r.seconds_analyze).sum::<f64>() / n,
        report.seconds_total
    );
    let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    println!("wrote {}", names.join(", "));
    if args.check && !report.summary.passes {
        bail!("the bar is not met: {}", report.summary.failures.join("; "));
    }
    Ok(())
}
