//! `ciak train ...`: the built-in model from scratch. `vae` trains the VAE, `latents` encodes
//! training clips with it, `dit` trains the DiT and text encoder on them and exports a diffusers
//! folder with `ciak.json`, `all` runs the three with the committed settings (train/*.json).
//! `preview` writes sample clips as PNG strips with their captions; `tokenizer` writes the
//! word-level tokenizer.json.
use anyhow::{bail, ensure, Context, Result};
use candle_core::Device;
use crate::options::parse_device;
use ciak_engine::model_dir::GenerationDefaults;
use ciak_train::preview::{write_preview, PreviewOptions};
use ciak_train::train::checkpoint::find_checkpoint;
use ciak_train::train::latents::CacheDType;
use ciak_train::train::vae::VaeEvent;
use ciak_train::train::{
    build_latent_cache, run_dit_training, run_vae_training_on, CachedLatents, DitTrainConfig, LatentCacheConfig, TrainEvent,
    VaeTrainConfig,
};
use ciak_train::world::Aspect;
use ciak_train::{SamplerConfig, Split};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Args, Debug)]
pub struct TrainArgs {
    #[command(subcommand)]
    pub command: TrainCommand,
}

#[derive(Subcommand, Debug)]
pub enum TrainCommand {
    /// Render sample clips of the training world as PNG strips plus captions.txt and scenes.json.
    Preview(PreviewArgs),
    /// Write the built-in model's word-level tokenizer.json (every caption word, T5 special ids).
    Tokenizer(TokenizerArgs),
    /// Train the VAE on toy-world clips; exports OUT/vae.
    Vae(VaeArgs),
    /// A VAE with fewer latent channels from a trained one: its latents' top principal components.
    ReduceVae(ReduceVaeArgs),
    /// Encode training clips with a trained VAE into a latent cache.
    Latents(LatentsArgs),
    /// Train the DiT and text encoder on a latent cache; exports OUT/model (diffusers + ciak.json).
    Dit(DitArgs),
    /// VAE, latent cache and DiT in order with the committed settings, into OUT/{vae,latents,dit}.
    All(AllArgs),
}

#[derive(Args, Debug)]
pub struct PreviewArgs {
    /// Number of clips.
    #[arg(long, default_value_t = 16)]
    pub count: usize,
    /// Dataset seed; clip i is item i of this seed, as the trainer draws it.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output folder (created if missing).
    #[arg(long, default_value = "train-preview")]
    pub out: PathBuf,
    /// Only this aspect ratio: 16:9, 9:16 or 1:1 (default: all three).
    #[arg(long, value_parser = parse_aspect)]
    pub aspect: Option<Aspect>,
    /// Draw from the training scenes or the held-out evaluation ones.
    #[arg(long, value_enum, default_value_t = SplitArg::Train)]
    pub split: SplitArg,
    /// Show every Nth frame in the strip (the last frame is always shown).
    #[arg(long, default_value_t = 4)]
    pub every: usize,
    /// A JSON file of world settings (any fields of `SamplerConfig`, the rest default), as
    /// `train latents --world` takes: preview the world a latent cache would be made of.
    #[arg(long, value_name = "FILE")]
    pub world: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct TokenizerArgs {
    /// Where to write it.
    #[arg(long, default_value = "tokenizer.json")]
    pub out: PathBuf,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum SplitArg {
    Train,
    Eval,
}

fn parse_aspect(s: &str) -> Result<Aspect, String> {
    s.parse()
}

impl TrainArgs {
    /// Whether the command trains a DiT on the CPU with its batches split into parts side by
    /// side ([`crate::threads::side_by_side`]; `train all`'s VAE stage runs under it too).
    pub fn runs_side_by_side(&self) -> bool {
        match &self.command {
            TrainCommand::Dit(a) => a.device.device == "cpu" && a.micro_batches.unwrap_or_else(crate::threads::count) > 1,
            TrainCommand::All(a) => a.device.device == "cpu" && crate::threads::count() > 1,
            _ => false,
        }
    }
}

pub fn run(args: TrainArgs) -> Result<()> {
    match args.command {
        TrainCommand::Preview(p) => preview(p),
        TrainCommand::Tokenizer(t) => {
            ciak_train::tokenizer::write_tokenizer_json(&t.out).with_context(|| format!("writing {}", t.out.display()))?;
            println!("wrote {} ({} tokens)", t.out.display(), ciak_train::tokenizer::tokens().len());
            Ok(())
        }
        TrainCommand::Vae(a) => {
            let device = a.device.open()?;
            let run = StageRun { limits: a.limits, log_every: a.log_every, device: &device };
            vae_stage(&a.config, a.init_from.as_deref(), &a.out, a.resume, &run)
                .map(|_| ())
        }
        TrainCommand::ReduceVae(a) => {
            let summary = ciak_train::train::vae_reduce::reduce_vae(&a.vae, a.z_dim, a.clips, a.seed, &a.out)
                .with_context(|| format!("reducing {} to {} latent channels", a.vae.display(), a.z_dim))?;
            let eig: Vec<String> = summary.eigenvalues.iter().map(|l| format!("{l:.3}")).collect();
            println!("eigenvalues of the normalised latents ({} clips): {}", summary.clips, eig.join(" "));
            println!(
                "wrote {} with z_dim {}: {:.2}% of the latent variance kept; decoder constant input rms {:.4}, {:.4} of it folded into conv_in's bias",
                a.out.display(),
                a.z_dim,
                100.0 * summary.kept_variance,
                summary.constant,
                summary.constant_residual
            );
            Ok(())
        }
        TrainCommand::Latents(a) => {
            let device = a.device.open()?;
            let mut sampler = match &a.world {
                None => SamplerConfig::default(),
                Some(file) => read_world(file)?,
            };
            sampler.placement_spread = a.placement_spread.unwrap_or(sampler.placement_spread);
            sampler.amount_spread = a.amount_spread.unwrap_or(sampler.amount_spread);
            latents_stage(&a.vae, a.count, a.seed, sampler, &a.out, a.resume, &device)
        }
        TrainCommand::Dit(a) => {
            let device = a.device.open()?;
            let mut settings = read_dit_settings(&a.config, &a.out)?;
            settings.train.fresh_optimizer = a.fresh_optimizer;
            ensure!(a.micro_batches != Some(0), "expected --micro-batches of at least 1, got 0");
            settings.train.micro_batches = a.micro_batches.or(settings.train.micro_batches);
            if let Some(dir) = &a.init_from {
                ensure!(dir.join("model_index.json").is_file(), "expected --init-from to be an exported model folder (with model_index.json), got {}", dir.display());
                settings.train.init_from = Some(dir.clone());
            }
            let run = StageRun { limits: a.limits, log_every: a.log_every, device: &device };
            dit_stage(&settings, &a.latents, &a.vae, &a.out, a.resume, &run).map(|_| ())
        }
        TrainCommand::All(a) => all(a),
    }
}

fn preview(p: PreviewArgs) -> Result<()> {
    anyhow::ensure!(p.count > 0, "expected --count of at least 1, got 0");
    let split = match p.split {
        SplitArg::Train => Split::Train,
        SplitArg::Eval => Split::Eval,
    };
    let world = match &p.world {
        None => SamplerConfig::default(),
        Some(file) => read_world(file)?,
    };
    let opts = PreviewOptions { count: p.count, seed: p.seed, aspect: p.aspect, split, every: p.every, world };
    let start = Instant::now();
    let entries = write_preview(&p.out, &opts).with_context(|| format!("writing the preview to {}", p.out.display()))?;
    for e in &entries {
        println!("{}  {}", e.file, e.sample.caption);
    }
    println!(
        "wrote {} clips to {} (captions.txt, scenes.json) in {:.2} s",
        entries.len(),
        p.out.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

// ---- training: vae, latents, dit, all ----

/// Settings of `train dit` / `train all` that live beside the trainer's own config in the same
/// JSON file (the trainer's config refuses unknown keys, so they are taken out first).
#[derive(Debug, Clone)]
pub struct DitRunSettings {
    pub train: DitTrainConfig,
    /// What the exported model's `ciak.json` says (size, frames, fps, steps, guidance).
    pub generation: GenerationDefaults,
    /// The latent cache `train all` builds: training items `0..clips` of `seed`.
    pub latent_clips: usize,
    pub latent_seed: u64,
    /// The cache's scene distribution: the world's, with any `SamplerConfig` fields that
    /// `latents` names (`placement_spread`, `object_count_weights`, ...).
    pub sampler: SamplerConfig,
}

/// A DiT config's `latents`: `clips` and `seed`, and any fields of the world's `SamplerConfig`
/// (the rest keep the world's defaults), e.g. `"placement_spread": 0` or, for a curriculum stage,
/// `"object_count_weights": [1, 0, 0]`.
fn parse_latents(l: &Value) -> Result<(usize, u64, SamplerConfig)> {
    let expected = "expected `latents` as {\"clips\": N >= 1, \"seed\": S} plus any world settings (SamplerConfig fields)";
    let mut world = l.as_object().with_context(|| format!("{expected}, got {l}"))?.clone();
    let clips = world.remove("clips").and_then(|v| v.as_u64()).filter(|&c| c > 0);
    let seed = world.remove("seed").and_then(|v| v.as_u64());
    let (Some(clips), Some(seed)) = (clips, seed) else { bail!("{expected}, got {l}") };
    let sampler = SamplerConfig::from_json(&Value::Object(world)).map_err(|e| anyhow::anyhow!("`latents`: {e}"))?;
    Ok((clips as usize, seed, sampler))
}

/// The tokenizer value that means "the built-in word-level tokenizer, written next to the run".
const BUILTIN_TOKENIZER: &str = "builtin";

/// Reads a DiT config file: the trainer's keys plus `generation` and `latents`. A `tokenizer` of
/// `"builtin"` writes the built-in word-level tokenizer into `out` and uses it.
pub fn read_dit_settings(path: &Path, out: &Path) -> Result<DitRunSettings> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading the DiT config {}", path.display()))?;
    let mut value: Value =
        serde_json::from_str(&text).with_context(|| format!("bad JSON in the DiT config {}", path.display()))?;
    let obj = value
        .as_object_mut()
        .with_context(|| format!("bad config {}: expected a JSON object", path.display()))?;
    let generation = obj
        .remove("generation")
        .with_context(|| format!("bad config {}: expected a `generation` object (ciak.json defaults)", path.display()))?;
    let generation = parse_generation(&generation).with_context(|| format!("bad config {}", path.display()))?;
    let (latent_clips, latent_seed, sampler) = match obj.remove("latents") {
        None => (0, 0, SamplerConfig::default()),
        Some(l) => parse_latents(&l).with_context(|| format!("bad config {}", path.display()))?,
    };
    let base = path.parent().unwrap_or(Path::new("."));
    let tokenizer = match obj.get("tokenizer").and_then(Value::as_str) {
        Some(BUILTIN_TOKENIZER) => {
            std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
            let file = out.join("tokenizer.json");
            ciak_train::tokenizer::write_tokenizer_json(&file).with_context(|| format!("writing {}", file.display()))?;
            Some(file)
        }
        _ => None,
    };
    if let Some(file) = &tokenizer {
        obj.insert("tokenizer".into(), Value::String(file.to_string_lossy().into_owned()));
    }
    let mut train: DitTrainConfig =
        serde_json::from_value(value).map_err(|e| anyhow::anyhow!("bad config {}: {e}", path.display()))?;
    train.resolve_paths(base);
    // the built-in tokenizer was written into `out`, a path from the working directory
    if let Some(file) = tokenizer {
        train.tokenizer = file;
    }
    train.validate().map_err(|e| anyhow::anyhow!("bad config {}: {e}", path.display()))?;
    Ok(DitRunSettings { train, generation, latent_clips, latent_seed, sampler })
}

/// `generation` must name every field: a missing one would silently become Wan2.1's default.
fn parse_generation(v: &Value) -> Result<GenerationDefaults> {
    let obj = v.as_object().context("expected `generation` to be an object")?;
    for key in ["width", "height", "frames", "fps", "steps", "guidance"] {
        ensure!(obj.contains_key(key), "expected `generation.{key}`");
    }
    let g: GenerationDefaults = serde_json::from_value(v.clone()).context("bad `generation`")?;
    ensure!(
        g.width.is_multiple_of(16) && g.height.is_multiple_of(16) && g.width > 0 && g.height > 0,
        "expected generation width and height as nonzero multiples of 16, got {}x{}",
        g.width,
        g.height
    );
    for &(w, h) in &g.sizes {
        ensure!(
            w.is_multiple_of(16) && h.is_multiple_of(16) && w > 0 && h > 0,
            "expected generation.sizes as nonzero multiples of 16, got {w}x{h}"
        );
    }
    ensure!(g.frames % 4 == 1, "expected generation.frames = 1+4k, got {}", g.frames);
    ensure!(g.steps > 0 && g.fps > 0.0 && g.guidance >= 0.0, "expected steps >= 1, fps > 0, guidance >= 0");
    Ok(g)
}

#[derive(Args, Debug)]
pub struct VaeArgs {
    /// The VAE training config.
    #[arg(long, default_value = "train/vae.json")]
    pub config: PathBuf,
    /// Run folder: checkpoint/, loss.csv, loss.png, eval.csv and, when done, vae/.
    #[arg(long)]
    pub out: PathBuf,
    /// Continue the checkpoint in --out.
    #[arg(long)]
    pub resume: bool,
    /// Start from this trained VAE folder (overrides the config's `init_from`); a config with
    /// `"train": "decoder"` fine-tunes its decoder and keeps its encoder and latent space.
    #[arg(long, value_name = "DIR")]
    pub init_from: Option<PathBuf>,
    #[command(flatten)]
    pub limits: Limits,
    /// Print every Nth step (the first and last always).
    #[arg(long, default_value_t = 10)]
    pub log_every: u64,
    #[command(flatten)]
    pub device: DeviceArg,
}

#[derive(Args, Debug)]
pub struct ReduceVaeArgs {
    /// The trained VAE folder (config.json + safetensors).
    #[arg(long, value_name = "DIR")]
    pub vae: PathBuf,
    /// Latent channels to keep (fewer than the VAE's).
    #[arg(long)]
    pub z_dim: usize,
    /// Training-world clips whose latents give the principal components.
    #[arg(long, default_value_t = 90)]
    pub clips: usize,
    /// Seed of the clips' statistics stream.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The new VAE folder.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

#[derive(Args, Debug)]
pub struct LatentsArgs {
    /// A trained VAE folder (`train vae` writes it as OUT/vae).
    #[arg(long)]
    pub vae: PathBuf,
    /// Training clips to encode.
    #[arg(long)]
    pub count: usize,
    /// Dataset seed of the clips.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Cache folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Continue an interrupted build in --out (shards already written are kept).
    #[arg(long)]
    pub resume: bool,
    /// A JSON file of world settings (any fields of `SamplerConfig`, the rest default), e.g.
    /// `{"object_count_weights": [1, 0, 0], "background_weights": [1, 0, 0, 0]}` for single
    /// objects on plain backgrounds.
    #[arg(long)]
    pub world: Option<PathBuf>,
    /// Fraction of the room each object's start is drawn from, centred (1, the default: anywhere
    /// it fits; see `SamplerConfig::placement_spread`). Overrides --world.
    #[arg(long)]
    pub placement_spread: Option<f32>,
    /// Fraction of each motion's range of strength (travel, growth, turn) drawn from, centred (1,
    /// the default: the whole range; 0: one strength per motion; see
    /// `SamplerConfig::amount_spread`). Overrides --world.
    #[arg(long)]
    pub amount_spread: Option<f32>,
    #[command(flatten)]
    pub device: DeviceArg,
}

#[derive(Args, Debug)]
pub struct DitArgs {
    /// The DiT training config (trainer settings, `latents`, `generation`).
    #[arg(long, default_value = "train/dit.json")]
    pub config: PathBuf,
    /// A latent cache folder (`train latents`).
    #[arg(long)]
    pub latents: PathBuf,
    /// The trained VAE folder exported with the model.
    #[arg(long)]
    pub vae: PathBuf,
    /// Run folder: checkpoint/, loss.csv, loss.png and, when done, model/ (with ciak.json).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long)]
    pub resume: bool,
    /// With --resume: start AdamW's moments afresh (the checkpoint may lack optim.safetensors),
    /// ramping the learning rate up again over the config's warmup_steps; weights, EMA, step and
    /// data position come from the checkpoint. For a run moved between machines.
    #[arg(long, requires = "resume")]
    pub fresh_optimizer: bool,
    /// Start a fresh run from this exported model folder's weights (e.g. models/builtin) instead
    /// of random ones and the text pretraining; overrides the config's `init_from`. AdamW starts
    /// afresh and the config's schedule runs from step 0. With --resume the checkpoint's weights
    /// are used and this only has to name a model folder (so a staged script can pass both).
    #[arg(long)]
    pub init_from: Option<PathBuf>,
    /// Split each batch into N parts that run side by side, gradients summed: the same step up to
    /// the order of float sums. Default: one per CPU thread (RAYON_NUM_THREADS), 1 on a GPU.
    #[arg(long, value_name = "N")]
    pub micro_batches: Option<usize>,
    #[command(flatten)]
    pub limits: Limits,
    #[arg(long, default_value_t = 10)]
    pub log_every: u64,
    #[command(flatten)]
    pub device: DeviceArg,
}

#[derive(Args, Debug)]
pub struct AllArgs {
    /// Run folder: vae/, latents/, dit/ (the finished model is dit/model).
    #[arg(long)]
    pub out: PathBuf,
    /// Continue: finished stages are skipped, a started one resumes, the rest start.
    #[arg(long)]
    pub resume: bool,
    #[arg(long, default_value = "train/vae.json")]
    pub vae_config: PathBuf,
    #[arg(long, default_value = "train/dit.json")]
    pub dit_config: PathBuf,
    /// Stop with a checkpoint after this much training time per stage (resume later).
    #[arg(long)]
    pub max_seconds: Option<f64>,
    #[arg(long, default_value_t = 10)]
    pub log_every: u64,
    #[command(flatten)]
    pub device: DeviceArg,
}

/// Where a training stage runs.
#[derive(Args, Debug, Clone)]
pub struct DeviceArg {
    /// cpu or cuda (cuda:N for another GPU; needs a build with --features cuda).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

impl DeviceArg {
    fn open(&self) -> Result<Device> {
        parse_device(&self.device)
    }
}

/// "1h02m", "3m05s", "12s".
fn hms(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s:02}s"),
        (h, m, _) => format!("{h}h{m:02}m"),
    }
}

/// Prints training events as plain lines; the ETA comes from this invocation's pace.
struct StepPrinter {
    stage: &'static str,
    log_every: u64,
    started: Instant,
    first_step: Option<u64>,
}

impl StepPrinter {
    fn new(stage: &'static str, log_every: u64) -> Self {
        Self { stage, log_every: log_every.max(1), started: Instant::now(), first_step: None }
    }

    fn event(&mut self, e: &TrainEvent) {
        let stage = self.stage;
        match e {
            TrainEvent::Resumed { step, path } => println!("{stage}: resuming after step {step} from {}", path.display()),
            TrainEvent::Step { step, total, loss, lr, samples_per_sec, images, .. } => {
                let first = *self.first_step.get_or_insert(*step);
                if step % self.log_every != 0 && step != total && *step != first {
                    return;
                }
                let done = (step - first + 1) as f64;
                let eta = self.started.elapsed().as_secs_f64() / done * (total - step) as f64;
                let unit = if *images { "images" } else { "clips" };
                println!(
                    "{stage}: step {step}/{total}  loss {loss:.5}  lr {lr:.2e}  {samples_per_sec:.2} {unit}/s  ETA {}",
                    hms(eta)
                );
            }
            TrainEvent::Checkpoint { step, path } => println!("{stage}: checkpoint at step {step} in {}", path.display()),
            TrainEvent::TextPretrained { path, summary } => println!("{stage}: text encoder pretrained: {summary} ({})", path.display()),
            TrainEvent::Exported { step, path } => println!("{stage}: exported step {step} to {}", path.display()),
            TrainEvent::Done { step } => {
                println!("{stage}: stopped at step {step} after {}", hms(self.started.elapsed().as_secs_f64()))
            }
        }
    }
}

/// `--resume` needs a checkpoint and a fresh run must not find one (it would be overwritten).
fn check_checkpoint(out: &Path, resume: bool, what: &str) -> Result<()> {
    let found = find_checkpoint(&out.join("checkpoint"));
    match (resume, found) {
        (true, None) => bail!("nothing to resume in {}: no checkpoint/ from an earlier `{what}` run (drop --resume)", out.display()),
        (false, Some(p)) => bail!(
            "{} already holds a checkpoint ({}): add --resume to continue it, or pick another --out",
            out.display(),
            p.display()
        ),
        _ => Ok(()),
    }
}

/// Where one invocation of a stage ends early: `--max-seconds`, `--stop-at`.
#[derive(Args, Debug, Clone, Copy, Default)]
pub struct Limits {
    /// Stop with a checkpoint after this much training time (resume later).
    #[arg(long)]
    pub max_seconds: Option<f64>,
    /// End after this step (the schedule still runs to the config's `steps`) with a checkpoint,
    /// and export the model as it is then: one stage of a staged run, or a snapshot.
    #[arg(long, value_name = "STEP")]
    pub stop_at: Option<u64>,
}

impl Limits {
    fn checked(self) -> Result<Self> {
        if let Some(s) = self.max_seconds {
            ensure!(s >= 0.0 && s.is_finite(), "expected --max-seconds >= 0, got {s}");
        }
        if let Some(s) = self.stop_at {
            ensure!(s >= 1, "expected --stop-at of at least 1, got {s}");
        }
        Ok(self)
    }
}

/// How one invocation of a stage runs: its limits, its log interval, its device.
struct StageRun<'a> {
    limits: Limits,
    log_every: u64,
    device: &'a Device,
}

fn vae_stage(config: &Path, init_from: Option<&Path>, out: &Path, resume: bool, run: &StageRun) -> Result<Option<PathBuf>> {
    let mut cfg = VaeTrainConfig::from_file(config).with_context(|| format!("reading the VAE config {}", config.display()))?;
    if let Some(dir) = init_from {
        ensure!(dir.join("config.json").is_file(), "expected --init-from to be a trained VAE folder (with config.json), got {}", dir.display());
        cfg.init_from = Some(dir.to_path_buf());
    }
    let limits = run.limits.checked()?;
    cfg.max_seconds = limits.max_seconds.or(cfg.max_seconds);
    cfg.stop_at = limits.stop_at.or(cfg.stop_at);
    check_checkpoint(out, resume, "train vae")?;
    let mut printer = StepPrinter::new("vae", run.log_every);
    let summary = run_vae_training_on(&cfg, out, resume, run.device, &mut |e| match e {
        VaeEvent::Train(t) => printer.event(t),
        VaeEvent::Eval(r) => {
            println!("vae: held-out PSNR at step {}: mean {:.2} dB, min {:.2} dB", r.step, r.mean_psnr_db, r.min_psnr_db)
        }
        VaeEvent::Loss { .. } => {}
    })
    .with_context(|| format!("training the VAE into {}", out.display()))?;
    match &summary.exported {
        Some(dir) => println!("vae: done, {} steps, {} parameters, model in {}", summary.steps, summary.parameters, dir.display()),
        None => println!("vae: paused at step {}/{}; continue with --resume", summary.steps, cfg.steps),
    }
    Ok(summary.exported)
}

/// A `--world` file: a JSON object of `SamplerConfig` fields.
fn read_world(path: &Path) -> Result<SamplerConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading the world settings {}", path.display()))?;
    let value: Value = serde_json::from_str(&text).with_context(|| format!("bad JSON in the world settings {}", path.display()))?;
    SamplerConfig::from_json(&value).map_err(|e| anyhow::anyhow!("bad world settings {}: {e}", path.display()))
}

/// Whether a folder holds anything of a latent cache.
fn has_latent_files(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name == "cache.json" || name.starts_with("latents-")
        })
    })
}

fn latents_stage(vae: &Path, count: usize, seed: u64, sampler: SamplerConfig, out: &Path, resume: bool, device: &Device) -> Result<()> {
    ensure!(count > 0, "expected --count of at least 1, got 0");
    sampler.validate().map_err(|e| anyhow::anyhow!("bad world settings: {e}"))?;
    ensure!(vae.join("config.json").is_file(), "expected a trained VAE folder (config.json + safetensors) at {}", vae.display());
    match (resume, has_latent_files(out)) {
        (true, false) => bail!("nothing to resume in {}: no latent cache files there (drop --resume)", out.display()),
        (false, true) => bail!("{} already holds a latent cache: add --resume to continue it, or pick another --out", out.display()),
        _ => {}
    }
    let cfg = LatentCacheConfig {
        seed,
        clips: count,
        sampler,
        shard_clips: 64,
        dtype: CacheDType::F16,
    };
    let started = Instant::now();
    let every = (count / 20).max(1);
    let summary = build_latent_cache(vae, out, &cfg, device, &mut |done, total| {
        if done % every == 0 || done == total {
            let secs = started.elapsed().as_secs_f64();
            println!("latents: {done}/{total} clips  {:.2} clips/s", done as f64 / secs.max(1e-9));
        }
    })
    .with_context(|| format!("building the latent cache in {}", out.display()))?;
    println!(
        "latents: done, {} clips in {} shards ({} encoded now, {:.2} clips/s) in {}",
        summary.clips,
        summary.shards,
        summary.encoded,
        summary.clips_per_sec(),
        out.display()
    );
    Ok(())
}

/// Trains the DiT; on completion writes `ciak.json` into the exported model and returns it.
fn dit_stage(
    settings: &DitRunSettings,
    latents: &Path,
    vae: &Path,
    out: &Path,
    resume: bool,
    run: &StageRun,
) -> Result<Option<PathBuf>> {
    ensure!(
        latents.join("cache.json").is_file(),
        "expected a latent cache (cache.json) in {}; build one with `ciak train latents`",
        latents.display()
    );
    ensure!(vae.join("config.json").is_file(), "expected a trained VAE folder (config.json + safetensors) at {}", vae.display());
    check_checkpoint(out, resume, "train dit")?;
    let mut cfg = settings.train.clone();
    cfg.vae = Some(vae.to_path_buf());
    let limits = run.limits.checked()?;
    cfg.max_seconds = limits.max_seconds.or(cfg.max_seconds);
    cfg.stop_at = limits.stop_at.or(cfg.stop_at);
    let mut source = CachedLatents::open(latents, cfg.seed, run.device)
        .with_context(|| format!("opening the latent cache {}", latents.display()))?;
    let counts: Vec<String> = source.counts().iter().map(|(a, n)| format!("{n} x {a}")).collect();
    println!("dit: {} cached clips ({})", source.len(), counts.join(", "));
    let mut printer = StepPrinter::new("dit", run.log_every);
    let summary = run_dit_training(&cfg, &mut source, out, resume, run.device, &mut |e| printer.event(e))
        .with_context(|| format!("training the DiT into {}", out.display()))?;
    let Some(model) = summary.exported else {
        println!("dit: paused at step {}/{}; continue with --resume", summary.steps, cfg.steps);
        return Ok(None);
    };
    let path = model.join("ciak.json");
    let text = serde_json::to_string_pretty(&settings.generation)? + "\n";
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    println!("dit: done, {} steps in {}, model in {}", summary.steps, hms(summary.seconds), model.display());
    Ok(Some(model))
}

fn all(a: AllArgs) -> Result<()> {
    // read both configs before any work, so a typo fails in a second, not after the VAE
    VaeTrainConfig::from_file(&a.vae_config).with_context(|| format!("reading the VAE config {}", a.vae_config.display()))?;
    let device = a.device.open()?;
    let run = StageRun { limits: Limits { max_seconds: a.max_seconds, stop_at: None }, log_every: a.log_every, device: &device };
    let dit_out = a.out.join("dit");
    if !a.resume && [a.out.join("vae"), a.out.join("latents"), dit_out.join("checkpoint")].iter().any(|p| p.exists()) {
        bail!("{} already holds a run: add --resume to continue it, or pick another --out", a.out.display());
    }
    let settings = read_dit_settings(&a.dit_config, &dit_out)?;
    ensure!(
        settings.latent_clips > 0,
        "bad config {}: `train all` needs `latents` ({{\"clips\": N, \"seed\": S}})",
        a.dit_config.display()
    );
    let (vae_out, latents_out) = (a.out.join("vae"), a.out.join("latents"));
    let vae_dir = vae_out.join("vae");
    let done = |marker: &Path| a.resume && marker.is_file();

    if done(&vae_dir.join("config.json")) {
        println!("vae: already trained ({}), skipping", vae_dir.display());
    } else {
        let started = a.resume && find_checkpoint(&vae_out.join("checkpoint")).is_some();
        if vae_stage(&a.vae_config, None, &vae_out, started, &run)?.is_none() {
            return Ok(());
        }
    }

    let resume_latents = a.resume && has_latent_files(&latents_out);
    latents_stage(&vae_dir, settings.latent_clips, settings.latent_seed, settings.sampler.clone(), &latents_out, resume_latents, &device)?;

    let model = dit_out.join("model");
    if done(&model.join("ciak.json")) {
        println!("dit: already trained ({}), skipping", model.display());
        return Ok(());
    }
    let started = a.resume && find_checkpoint(&dit_out.join("checkpoint")).is_some();
    if let Some(model) = dit_stage(&settings, &latents_out, &vae_dir, &dit_out, started, &run)? {
        println!("all: the model is in {}", model.display());
    }
    Ok(())
}
