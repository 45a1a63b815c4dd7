//! `ciak bench`: per-stage times of the real Wan2.1 architectures with random weights (or of a
//! model folder), and `--parity DIR`, the diffusers fixtures run on the chosen device and dtype.
use crate::options::{parse_dtype, parse_device, parse_size};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use ciak_engine::bench::{self, parity, BenchModel, BenchOnly, BenchReport, BenchSpec, TextEncoderChoice, Timing};
use ciak_engine::scheduler::SchedulerKind;
use clap::Args;
use std::path::{Path, PathBuf};

/// Time text encoding, one transformer forward, the N-step CFG sampling and the VAE decode.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// wan2.1-1.3b or wan2.1-14b (real architecture, random weights), builtin, or a diffusers
    /// folder (its own weights).
    #[arg(long, default_value = "wan2.1-1.3b")]
    pub model: String,
    /// Frame size as WIDTHxHEIGHT (multiples of 16).
    #[arg(long, default_value = "832x480")]
    pub size: String,
    /// Number of frames, of the form 1+4k.
    #[arg(long, default_value_t = 81)]
    pub frames: usize,
    /// Denoising steps.
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// Classifier-free guidance scale (above 1: two transformer passes per step, batched).
    #[arg(long, default_value_t = 5.0)]
    pub guidance: f64,
    /// unipc or euler (default: the model's scheduler; UniPC for random weights).
    #[arg(long)]
    pub scheduler: Option<String>,
    /// f32, bf16 or f16 for the transformer and text encoder (default: bf16 on CUDA, f32 on CPU).
    #[arg(long)]
    pub dtype: Option<String>,
    /// f32, bf16 or f16 for the VAE.
    #[arg(long, default_value = "f32")]
    pub vae_dtype: String,
    /// cpu or cuda (cuda:N for another GPU).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Random-weight models: auto (xxl on CUDA, tiny on CPU), tiny, xxl (UMT5-XXL, 5.7 B
    /// parameters) or skip (random context). Folder models: skip leaves theirs out.
    #[arg(long, default_value = "auto")]
    pub text_encoder: String,
    /// Untimed transformer forwards before the timed ones.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Timed transformer forwards (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Seed of the random weights and the noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also write the results as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Instead of timing: run the parity fixtures in DIR (tests/fixtures) on --device with
    /// --dtype and compare with diffusers; exits nonzero when a check is over its tolerance.
    #[arg(long, value_name = "DIR")]
    pub parity: Option<PathBuf>,
    /// Parity mode: one relative tolerance for every check instead of the per-check ones.
    #[arg(long, requires = "parity")]
    pub tolerance: Option<f64>,
    /// Time only the transformer forward (warmup + reps): no sampling, no VAE decode.
    #[arg(long, conflicts_with_all = ["parity", "decode_only"])]
    pub forward_only: bool,
    /// Time only the VAE decode (warmup + reps) of seeded random latents of --size and --frames:
    /// no text encoder, no transformer forward, no sampling.
    #[arg(long, conflicts_with = "parity")]
    pub decode_only: bool,
    /// Attention score elements materialised per block of query rows (default 2^26 = 67108864
    /// on the CPU, 2^28 on CUDA): larger blocks, fewer and larger matrix products, more memory.
    #[arg(long, value_name = "N")]
    pub attention_scores: Option<usize>,
}

fn write_json(path: &Path, text: String) -> Result<()> {
    let tmp = path.with_extension("json.part");
    std::fs::write(&tmp, text + "\n").with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

pub fn run(args: BenchArgs) -> Result<()> {
    let device = parse_device(&args.device)?;
    let dtype = match &args.dtype {
        Some(d) => parse_dtype(d, "--dtype")?,
        None if device.is_cpu() => DType::F32,
        None => DType::BF16,
    };
    if let Some(json) = &args.json {
        // Fail before minutes of work if the result cannot be written.
        let dir = json.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if !dir.is_dir() {
            bail!("cannot write {}: folder {} does not exist", json.display(), dir.display());
        }
    }
    if let Some(fixtures) = &args.parity {
        return run_parity(fixtures, &device, dtype, args.tolerance, args.json.as_deref());
    }
    let (width, height) = parse_size(&args.size)?;
    if args.reps == 0 {
        bail!("expected --reps >= 1, got 0");
    }
    if let Some(n) = args.attention_scores {
        if n == 0 {
            bail!("expected --attention-scores >= 1 (score elements per attention block), got 0");
        }
        ciak_models::wan::attention::set_score_budget(n);
    }
    let spec = BenchSpec {
        width,
        height,
        frames: args.frames,
        steps: args.steps,
        guidance: args.guidance,
        scheduler: args.scheduler.as_deref().map(str::parse::<SchedulerKind>).transpose()?,
        device,
        dtype,
        vae_dtype: parse_dtype(&args.vae_dtype, "--vae-dtype")?,
        text_encoder: args.text_encoder.parse::<TextEncoderChoice>()?,
        warmup: args.warmup,
        reps: args.reps,
        seed: args.seed,
        only: match (args.forward_only, args.decode_only) {
            (true, _) => Some(BenchOnly::Forward),
            (_, true) => Some(BenchOnly::Decode),
            _ => None,
        },
        ..BenchSpec::new(BenchModel::parse(&args.model)?)
    };
    let report = bench::run(&spec, &mut |line| eprintln!("{line}"))?;
    print!("{}", table(&report));
    if let Some(path) = &args.json {
        write_json(path, serde_json::to_string_pretty(&report)?)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn run_parity(fixtures: &Path, device: &Device, dtype: DType, tolerance: Option<f64>, json: Option<&Path>) -> Result<()> {
    let report = parity::run(fixtures, device, dtype, tolerance, &mut |line| println!("{line}"))?;
    println!(
        "parity on {} with {} weights: {} ({} checks, {:.1} s)",
        report.device,
        report.dtype,
        if report.passed { "all within tolerance" } else { "FAILED" },
        report.checks.len(),
        report.seconds
    );
    if let Some(path) = json {
        write_json(path, serde_json::to_string_pretty(&report)?)?;
    }
    if !report.passed {
        let failed: Vec<&str> = report.checks.iter().filter(|c| !c.passed).map(|c| c.name.as_str()).collect();
        bail!("parity failed on {} {}: {}", report.device, report.dtype, failed.join(", "));
    }
    Ok(())
}

fn gib(bytes: Option<u64>) -> String {
    match bytes {
        Some(b) => format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64),
        None => "n/a".to_string(),
    }
}

fn cpu(c: Option<f64>) -> String {
    c.map(|c| format!("cpu {c:.2} s, ")).unwrap_or_default()
}

fn params(p: Option<u64>) -> String {
    match p {
        Some(n) if n >= 1_000_000_000 => format!("{:.3} B params", n as f64 / 1e9),
        Some(n) => format!("{:.1} M params", n as f64 / 1e6),
        None => "from files".to_string(),
    }
}

/// The human-readable result: what ran, then one row per stage.
pub fn table(r: &BenchReport) -> String {
    let mut out = String::new();
    let host = r.cpu.as_deref().unwrap_or("unknown CPU");
    out.push_str(&format!(
        "ciak bench {}: {} ({} weights), {} ({host}, {} threads), {} (VAE {})\n",
        r.ciak_version, r.model, r.build.weights, r.device, r.threads, r.dtype, r.vae_dtype
    ));
    out.push_str(&format!(
        "{}x{}, {} frames -> latent {:?}, {} tokens; {} steps {}, guidance {}{}\n",
        r.width,
        r.height,
        r.frames,
        r.latent_shape,
        r.tokens,
        r.steps,
        r.scheduler,
        r.guidance,
        if r.cfg { " (CFG, batch 2)" } else { "" }
    ));
    out.push_str(&format!("attention: blocks of {} score elements\n", r.attention_score_budget));
    let row = |out: &mut String, stage: &str, seconds: String, note: String| {
        out.push_str(&format!("{stage:<30} {seconds:>11}  {note}\n"));
    };
    let s = |x: f64| format!("{x:.3} s");
    row(&mut out, "stage", "time".into(), "notes".into());
    let b = &r.build;
    if let Some(t) = &b.text_encoder {
        row(&mut out, &format!("build text encoder ({})", b.text_encoder_kind), s(t.seconds), format!("{}, {}", params(t.params), t.dtype));
    }
    row(&mut out, "build transformer", s(b.transformer.seconds), format!("{}, {}", params(b.transformer.params), b.transformer.dtype));
    row(&mut out, "build VAE", s(b.vae.seconds), format!("{}, {}", params(b.vae.params), b.vae.dtype));
    let st = &r.stages;
    match &st.text_encoder {
        Some(t) => row(
            &mut out,
            &format!("text encoder ({})", b.text_encoder_kind),
            s(t.seconds),
            format!("{}peak host {}", cpu(t.cpu_s), gib(t.peak_host_rss_bytes)),
        ),
        None => row(&mut out, "text encoder", "skipped".into(), "random context".into()),
    }
    let timed = |out: &mut String, stage: &str, t: &Timing| {
        let note = format!(
            "median of {} (min {:.3}, max {:.3}), {}peak host {}",
            t.runs.len(),
            t.min_s,
            t.max_s,
            cpu(t.cpu_s),
            gib(t.peak_host_rss_bytes)
        );
        row(out, stage, s(t.seconds), note);
    };
    match &st.transformer_forward {
        Some(f) => timed(&mut out, "transformer forward (batch 1)", f),
        None => row(&mut out, "transformer forward", "skipped".into(), "--decode-only".into()),
    }
    if let Some(d) = &st.vae_decode_only {
        timed(&mut out, "VAE decode", d);
    }
    match (&st.sampling, &st.vae_decode, &st.total) {
        (Some(sm), Some(d), Some(t)) => {
            row(
                &mut out,
                &format!("sampling ({} steps)", r.steps),
                s(sm.seconds),
                format!("{:.3} s/step (median), batch {}, {}peak host {}", sm.per_step_s, sm.batch, cpu(sm.cpu_s), gib(sm.peak_host_rss_bytes)),
            );
            row(&mut out, "VAE decode", s(d.seconds), format!("{}peak host {}", cpu(d.cpu_s), gib(d.peak_host_rss_bytes)));
            row(&mut out, "total (text+sampling+decode)", s(t.seconds), cpu(t.cpu_s).trim_end_matches(", ").to_string());
        }
        _ => row(&mut out, "sampling (and its VAE decode)", "skipped".into(), "--forward-only / --decode-only".into()),
    }
    row(&mut out, "peak memory (host RSS)", gib(r.peak_memory.host_rss_bytes), "whole run, build included".into());
    row(&mut out, "peak memory (device)", gib(r.peak_memory.device_bytes), r.peak_memory.note.clone());
    out
}
