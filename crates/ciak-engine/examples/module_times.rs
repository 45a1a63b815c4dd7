//! Per-module CPU times of ciak on the tiny parity checkpoint, next to diffusers' times on the
//! same weights and inputs (measured by scripts/diffusers_module_times.py in the same run).
//! Usage: module_times FIXTURES_DIR DIFFUSERS_TIMES_JSON OUT_MD  (see scripts/module-times.sh)
use candle_core::{DType, Device, Tensor};
use ciak_engine::model_dir::WanModelDir;
use ciak_engine::pipeline::{GenerateRequest, LoadOptions, WanPipeline};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Instant;

const RUNS: usize = 7;

/// Median wall time in milliseconds of `RUNS` calls after one warm-up call.
fn median_ms(mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    f()?;
    let mut times = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let start = Instant::now();
        f()?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[RUNS / 2])
}

fn io(fixtures: &PathBuf, name: &str) -> anyhow::Result<HashMap<String, Tensor>> {
    Ok(candle_core::safetensors::load(fixtures.join("io").join(format!("{name}.safetensors")), &Device::Cpu)?)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, fixtures, torch_json, out] = args.as_slice() else {
        anyhow::bail!("usage: module_times FIXTURES_DIR DIFFUSERS_TIMES_JSON OUT_MD");
    };
    let fixtures = PathBuf::from(fixtures);
    let dir = WanModelDir::open(&fixtures.join("tiny-wan"))?;
    let pipe = WanPipeline::load(&dir, &LoadOptions { device: Device::Cpu, dtype: DType::F32, vae_dtype: DType::F32 })?;

    let mut ours: BTreeMap<&str, f64> = BTreeMap::new();
    let t = io(&fixtures, "transformer_t2v")?;
    ours.insert(
        "transformer forward",
        median_ms(|| {
            pipe.transformer.forward(&t["hidden_states"], &t["timestep"], &t["encoder_hidden_states"], None)?;
            Ok(())
        })?,
    );
    let v = io(&fixtures, "vae")?;
    ours.insert("vae encode", median_ms(|| Ok(pipe.vae.encode(&v["encode.input"]).map(|_| ())?))?);
    ours.insert("vae decode", median_ms(|| Ok(pipe.vae.decode(&v["decode.input"]).map(|_| ())?))?);
    let u = io(&fixtures, "umt5")?;
    let ids = u["input_ids"].to_dtype(DType::U32)?;
    let mask = u["attention_mask"].to_dtype(DType::U32)?;
    ours.insert("umt5 forward", median_ms(|| Ok(pipe.text_encoder.model().forward(&ids, &mask).map(|_| ())?))?);
    let p = io(&fixtures, "pipeline")?;
    let req = GenerateRequest { width: 32, height: 32, frames: 9, steps: 4, ..GenerateRequest::new("a red ball") };
    ours.insert(
        "pipeline (4 steps, CFG)",
        median_ms(|| Ok(pipe.generate_from_latents(&req, p["latents"].clone(), &mut |_| {}, None).map(|_| ())?))?,
    );

    let torch: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(torch_json)?)?;
    let cpu = std::fs::read_to_string("/proc/cpuinfo")?
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("unknown")
        .trim()
        .to_string();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load = load.split_whitespace().next().unwrap_or("?").to_string();
    let mut md = String::new();
    md.push_str("# Per-module CPU time: ciak vs diffusers on the tiny parity checkpoint\n\n");
    md.push_str(&format!(
        "Machine: {cpu}, {} threads for ciak (RAYON_NUM_THREADS). ciak: release build, f32, candle 0.11.1. diffusers: {} on torch {} (CPU, \
         `torch.set_num_threads({})`), same weights (`tests/fixtures/tiny-wan`) and inputs (`tests/fixtures/io`). \
         Median of {RUNS} runs after a warm-up; 1-minute load average when written: {load} (other \
         processes slow both sides, torch's thread pool far more). Regenerate with `bash scripts/module-times.sh`.\n\n",
        std::env::var("RAYON_NUM_THREADS").ok().and_then(|n| n.parse().ok()).unwrap_or_else(|| {
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
        }),
        torch["diffusers"].as_str().unwrap_or("?"),
        torch["torch"].as_str().unwrap_or("?"),
        torch["threads"].as_u64().unwrap_or(0),
    ));
    md.push_str("| module | ciak (ms) | diffusers (ms) | ciak / diffusers |\n|---|---:|---:|---:|\n");
    for (name, ms) in &ours {
        let theirs = torch["times_ms"][name].as_f64();
        let (t, ratio) = match theirs {
            Some(t) => (format!("{t:.2}"), format!("{:.2}x", ms / t)),
            None => ("n/a".into(), "n/a".into()),
        };
        md.push_str(&format!("| {name} | {ms:.2} | {t} | {ratio} |\n"));
    }
    md.push_str("\nA ratio above 1 means ciak is slower. These tiny configs measure per-call overhead more than \
                 arithmetic; they are the starting point before any optimisation, not a claim about real sizes.\n");
    std::fs::write(out, &md)?;
    print!("{md}");
    Ok(())
}
