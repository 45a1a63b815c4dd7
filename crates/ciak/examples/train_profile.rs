//! Where a DiT training step spends its time on a device: per-phase wall times of whole steps
//! (batch, noise, forward, backward, grad_norm, optimizer, ema) at several batch sizes, on
//! synthetic latents or on a latent cache (LATENTS), then
//! single ops of the training graph (forward + backward) at the config's real shapes, then the
//! VAE encode of the latent cache (render vs encode) when a VAE folder is given.
//!
//! `cargo run --release -p ciak --example train_profile -- CONFIG DEVICE [BATCHES] [STEPS] [VAE] [LATENTS]`
//! (`PROFILE_MICRO_BATCHES=N`: split each batch into N parts instead of the trainer's default)
//! e.g. `... train/dit-x4-gpu.json cuda 4,32,64 6 .gpu/vae` (with `--features cuda`).
use candle_core::{DType, Device, Module, Tensor, Var, D};
use ciak_models::wan::ops;
use ciak_train::train::dit::{DitTrainer, SyntheticLatents};
use ciak_train::train::flow::TrainRng;
use ciak_train::train::latents::load_vae;
use ciak_train::train::vae::clip_tensor;
use ciak_train::train::{CachedLatents, DitTrainConfig, LatentSource};
use ciak_train::{render, sample, SamplerConfig, Split};
use std::time::Instant;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// Reads a `train/dit*.json` the way `ciak train dit` does: `generation` and `latents` dropped,
/// `"tokenizer": "builtin"` written to a temporary file.
fn read_config(path: &str) -> Res<DitTrainConfig> {
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    let obj = v.as_object_mut().ok_or("expected a JSON object")?;
    obj.remove("generation");
    obj.remove("latents");
    if obj.get("tokenizer").and_then(|t| t.as_str()) == Some("builtin") {
        let file = std::env::temp_dir().join("ciak-train-profile-tokenizer.json");
        ciak_train::tokenizer::write_tokenizer_json(&file)?;
        obj.insert("tokenizer".into(), file.to_string_lossy().into_owned().into());
    }
    Ok(serde_json::from_value(v)?)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median milliseconds of `f` over `reps` runs after one warm-up, the device synchronised.
fn time_ms(device: &Device, reps: usize, mut f: impl FnMut() -> Res<()>) -> Res<f64> {
    f()?;
    device.synchronize()?;
    let mut times = Vec::new();
    for _ in 0..reps {
        let t = Instant::now();
        f()?;
        device.synchronize()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(median(times))
}

/// Forward and backward of `op` on a fresh variable of `shape`.
fn fwd_bwd(device: &Device, shape: &[usize], op: &dyn Fn(&Tensor) -> candle_core::Result<Tensor>) -> Res<(f64, f64)> {
    let x = Var::from_tensor(&TrainRng::new(3).gaussian(shape, device)?)?;
    let fwd = time_ms(device, 5, || Ok(op(x.as_tensor())?.sum_all().map(|_| ())?))?;
    let both = time_ms(device, 5, || {
        op(x.as_tensor())?.sum_all()?.backward()?;
        Ok(())
    })?;
    Ok((fwd, both - fwd))
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        return Err("usage: train_profile CONFIG DEVICE [BATCHES] [STEPS] [VAE|-] [LATENTS]".into());
    }
    let device = match args[2].as_str() {
        "cpu" => Device::Cpu,
        _ => Device::new_cuda(0)?,
    };
    if let Err(e) = ciak_engine::cuda_pool::keep_pool_memory(&device) {
        eprintln!("warning: {e}");
    }
    let base = read_config(&args[1])?;
    let batches: Vec<usize> =
        args.get(3).map_or("4".into(), |s| s.clone()).split(',').map(str::parse).collect::<Result<_, _>>()?;
    let steps: usize = args.get(4).map_or(Ok(4), |s| s.parse())?;
    // 16:9 latents of the 4x VAE: 25 frames -> 7, 128x224 -> 32x56
    let latent = [base.transformer.latent_channels, 7, 32, 56];

    println!("== whole steps on {:?}: median ms per phase over {steps} steps (after one warm-up)", device);
    for &b in &batches {
        let cfg = DitTrainConfig { batch_size: b, ..base.clone() };
        let mut trainer = DitTrainer::new(&cfg, &device)?;
        // the trainer's default: one part per thread on the CPU, 1 on a GPU
        if let Ok(parts) = std::env::var("PROFILE_MICRO_BATCHES") {
            trainer.set_micro_batches(parts.parse()?);
        }
        let captions = vec!["a red ball moves to the right on a blue background".to_string(), "a blue box".into()];
        // the latent cache when one is given (real captions, foreground weights, three aspects)
        let mut source: Box<dyn LatentSource> = match args.get(6) {
            Some(dir) => Box::new(CachedLatents::open(std::path::Path::new(dir), cfg.seed, &device)?),
            None => Box::new(SyntheticLatents::new(cfg.seed, latent, captions, &device)?),
        };
        trainer.profile_step(source.as_mut())?;
        let runs: Vec<Vec<(&str, f64)>> =
            (0..steps).map(|_| trainer.profile_step(source.as_mut())).collect::<Result<_, _>>()?;
        let mut line = format!("batch {b:4}:");
        let mut total = 0.0;
        for (i, (name, _)) in runs[0].iter().enumerate() {
            let ms = median(runs.iter().map(|r| r[i].1 * 1e3).collect());
            total += ms;
            line += &format!("  {name} {ms:.1}");
        }
        println!("{line}  | total {total:.1} ms, {:.1} clips/s", b as f64 / total * 1e3);
    }

    let b = batches.iter().copied().max().unwrap_or(4);
    let t = &base.transformer;
    let (heads, hd) = (t.num_attention_heads, t.attention_head_dim);
    let dim = heads * hd;
    let [_, f, h, w] = latent;
    let [pt, ph, pw] = t.patch_size;
    let l = (f / pt) * (h / ph) * (w / pw);
    println!("== single ops at batch {b} ({l} tokens, width {dim}): forward ms, backward ms");
    let lin_w = Var::from_tensor(&TrainRng::new(5).gaussian(&[t.ffn_dim, dim], &device)?.affine(0.05, 0.0)?)?;
    let lin_b = Var::zeros(t.ffn_dim, DType::F32, &device)?;
    let lin = ops::Linear::new(lin_w.as_tensor().clone(), Some(lin_b.as_tensor().clone()));
    let ln_w = Var::from_tensor(&Tensor::ones(dim, DType::F32, &device)?)?;
    let ln_b = Var::from_tensor(&Tensor::zeros(dim, DType::F32, &device)?)?;
    let modulation = Var::from_tensor(&TrainRng::new(6).gaussian(&[b, 1, dim], &device)?)?;
    let (cos, sin) = {
        let angles = Tensor::arange(0f32, (l * hd / 2) as f32, &device)?.reshape((l, hd / 2))?.affine(1e-3, 0.0)?;
        (angles.cos()?, angles.sin()?)
    };
    let kt = TrainRng::new(7).gaussian(&[b, heads, hd, l], &device)?;
    let cases: Vec<(&str, Vec<usize>, Box<dyn Fn(&Tensor) -> candle_core::Result<Tensor>>)> = vec![
        ("linear (weights tracked)", vec![b, l, dim], Box::new(|x| lin.forward(x))),
        ("gelu", vec![b, l, t.ffn_dim], Box::new(ops::gelu)),
        ("layer_norm", vec![b, l, dim], Box::new(|x| ops::layer_norm(x, ln_w.as_tensor(), ln_b.as_tensor(), 1e-6))),
        ("rms_norm", vec![b, l, dim], Box::new(|x| ops::rms_norm(x, ln_w.as_tensor(), 1e-6))),
        ("broadcast_mul (modulation)", vec![b, l, dim], Box::new(|x| ops::broadcast_mul(x, modulation.as_tensor()))),
        ("rope_i", vec![b, heads, l, hd], Box::new(|x| ops::rope_i(x, &cos, &sin))),
        ("q k^T", vec![b, heads, l, hd], Box::new(|x| x.matmul(&kt))),
        ("softmax", vec![b, heads, l, l], Box::new(ops::softmax_last_dim)),
        ("sum over batch and tokens", vec![b, l, dim], Box::new(|x| x.sum_keepdim(1)?.sum_keepdim(0))),
        ("transpose + contiguous", vec![b, l, heads, hd], Box::new(|x| x.transpose(1, 2)?.contiguous())),
        ("mean over last dim", vec![b, l, dim], Box::new(|x| x.mean_keepdim(D::Minus1))),
    ];
    for (name, shape, op) in &cases {
        let (fwd, bwd) = fwd_bwd(&device, shape, op.as_ref())?;
        println!("{name:28} {shape:?}: {fwd:8.2} {bwd:8.2}");
    }

    if let Some(vae_dir) = args.get(5).filter(|a| *a != "-") {
        let vae = load_vae(std::path::Path::new(vae_dir), &device)?;
        let scene = sample(1, 0, &SamplerConfig::default(), Split::Train).scene;
        let render_ms = time_ms(&device, 5, || {
            render(&scene);
            Ok(())
        })?;
        let x = clip_tensor(&render(&scene), &device)?;
        let encode_ms = time_ms(&device, 3, || Ok(vae.encode(&x).map(|_| ())?))?;
        println!("== VAE encode of a {:?} clip: render {render_ms:.1} ms, encode {encode_ms:.1} ms", x.dims());
    }

    Ok(())
}
