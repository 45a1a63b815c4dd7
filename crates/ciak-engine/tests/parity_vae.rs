//! AutoencoderKLWan parity with diffusers on the tiny fixture VAE (base_dim 8), plus the tensor
//! names and shapes of the real Wan2.1 VAE.
mod common;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use ciak_engine::loader::{load_varbuilder, read_config};
use ciak_models::wan::vae::{AutoencoderKLWan, AutoencoderKLWanConfig, TileConfig};
use common::{assert_close, fixture, get, io_metadata, load_io, max_error};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// f32 tolerance relative to the output scale (measured errors are ~1e-6 relative).
const F32_TOL: f64 = 2e-5;

fn tiny_vae(dtype: DType) -> AutoencoderKLWan {
    let dir = fixture("tiny-wan/vae");
    let cfg: AutoencoderKLWanConfig = read_config(&dir).expect("tiny vae config");
    let vb = load_varbuilder(&dir, dtype, &Device::Cpu).expect("tiny vae weights");
    AutoencoderKLWan::new(&cfg, vb).expect("build tiny vae")
}

#[test]
fn encode_matches_diffusers() {
    let io = load_io("vae");
    let vae = tiny_vae(DType::F32);
    let (mean, logvar) = vae.encode(get(&io, "encode.input")).unwrap();
    assert_eq!(mean.dims(), &[1, 16, 3, 4, 4]);
    assert_close("encode.mean", &mean, get(&io, "encode.mean"), F32_TOL);
    assert_close("encode.logvar", &logvar, get(&io, "encode.logvar"), F32_TOL);
}

#[test]
fn encode_rejects_frame_counts_other_than_1_plus_4k() {
    let vae = tiny_vae(DType::F32);
    let x = Tensor::zeros((1, 3, 8, 32, 32), DType::F32, &Device::Cpu).unwrap();
    let err = vae.encode(&x).unwrap_err().to_string();
    assert!(err.contains("expected frames = 1+4k, got 8"), "{err}");
}

#[test]
fn decode_matches_diffusers() {
    let io = load_io("vae");
    let vae = tiny_vae(DType::F32);
    let out = vae.decode(get(&io, "decode.input")).unwrap();
    assert_eq!(out.dims(), &[1, 3, 9, 32, 32]);
    assert_close("decode.output", &out, get(&io, "decode.output"), F32_TOL);

    // Streaming the same decode chunk by chunk gives the same frames: 1, then 4 per latent frame.
    let mut chunks = Vec::new();
    vae.decode_chunks(get(&io, "decode.input"), |c| {
        chunks.push(c);
        Ok(())
    })
    .unwrap();
    assert_eq!(chunks.iter().map(|c| c.dim(2).unwrap()).collect::<Vec<_>>(), vec![1, 4, 4]);
    let streamed = Tensor::cat(&chunks, 2).unwrap();
    assert_eq!(max_error(&streamed, &out).0, 0.0);
}

#[test]
fn decode_of_a_batch_equals_each_sample() {
    let io = load_io("vae");
    let vae = tiny_vae(DType::F32);
    let z0 = get(&io, "decode.input");
    let z1 = (z0.flip(&[3]).unwrap() * 0.5).unwrap();
    let both = vae.decode(&Tensor::cat(&[z0, &z1], 0).unwrap()).unwrap();
    assert_eq!(max_error(&both.narrow(0, 0, 1).unwrap(), &vae.decode(z0).unwrap()).0, 0.0);
    assert_eq!(max_error(&both.narrow(0, 1, 1).unwrap(), &vae.decode(&z1).unwrap()).0, 0.0);
}

fn fixture_tiles() -> TileConfig {
    let meta = io_metadata("vae");
    let read = |k: &str| -> usize {
        let v = meta.get(k).unwrap_or_else(|| panic!("vae fixture metadata lacks {k}: {meta:?}"));
        v.trim().parse().unwrap_or_else(|e| panic!("metadata {k} = {v:?}: {e}"))
    };
    TileConfig {
        tile_sample_min_height: read("tile_sample_min_height"),
        tile_sample_min_width: read("tile_sample_min_width"),
        tile_sample_stride_height: read("tile_sample_stride_height"),
        tile_sample_stride_width: read("tile_sample_stride_width"),
    }
}

/// Tiling is an approximation, not an identity: on this fixture (32 px tiles every 16 px over a
/// 64 px frame, random weights) max |tiled - untiled| is 1.5205 in diffusers and here alike.
const TILED_VS_UNTILED_MEASURED: f64 = 1.5205;
const TILED_VS_UNTILED_TOL: f64 = 1e-3;

#[test]
fn decode_tiled_matches_diffusers() {
    let io = load_io("vae");
    let vae = tiny_vae(DType::F32);
    let tiles = fixture_tiles();
    assert_eq!(
        tiles,
        TileConfig {
            tile_sample_min_height: 32,
            tile_sample_min_width: 32,
            tile_sample_stride_height: 16,
            tile_sample_stride_width: 16
        }
    );
    let z = get(&io, "decode_tiled.input");
    let tiled = vae.decode_tiled(z, &tiles).unwrap();
    assert_eq!(tiled.dims(), &[1, 3, 5, 64, 64]);
    assert_close("decode_tiled.output", &tiled, get(&io, "decode_tiled.output"), F32_TOL);

    let untiled = vae.decode(z).unwrap();
    assert_close("decode_untiled.output", &untiled, get(&io, "decode_untiled.output"), F32_TOL);

    let (diff, _) = max_error(&tiled, &untiled);
    let (diff_ref, _) = max_error(get(&io, "decode_tiled.output"), get(&io, "decode_untiled.output"));
    eprintln!("tiled vs untiled: max |diff| ours {diff:.6}, diffusers {diff_ref:.6}");
    assert!((diff - diff_ref).abs() <= 1e-4, "tiling error differs from diffusers': {diff} vs {diff_ref}");
    assert!((diff - TILED_VS_UNTILED_MEASURED).abs() <= TILED_VS_UNTILED_TOL, "tiled vs untiled {diff}");

    // Bad tile settings are an error, not a silent gap or an endless loop.
    let bad = TileConfig { tile_sample_stride_height: 4, ..tiles };
    assert!(vae.decode_tiled(z, &bad).unwrap_err().to_string().contains("tile strides of at least 8 pixels"));
    let bad = TileConfig { tile_sample_stride_width: 40, ..tiles };
    assert!(vae.decode_tiled(z, &bad).unwrap_err().to_string().contains("no larger than the tile sizes"));

    // Latents that fit in one tile decode exactly as without tiling (diffusers' rule).
    let small = vae.decode_tiled(&z.narrow(3, 0, 4).unwrap().narrow(4, 0, 4).unwrap(), &tiles).unwrap();
    let plain = vae.decode(&z.narrow(3, 0, 4).unwrap().narrow(4, 0, 4).unwrap()).unwrap();
    assert_eq!(max_error(&small, &plain).0, 0.0);
}

/// bf16 weights and activations (norms, softmax in f32) against the f32 diffusers output.
/// Measured: max abs error 9.1e-2 on outputs of scale 1 (random weights, ~20 conv layers at
/// 8-bit mantissa); the tolerance leaves about 2x margin. Mean abs error measured 6.1e-3, also
/// asserted with 2x margin.
const BF16_TOL: f64 = 0.2;
const BF16_MEAN_TOL: f64 = 1.2e-2;

#[test]
fn decode_bf16_is_close_to_f32_reference() {
    let io = load_io("vae");
    let vae = tiny_vae(DType::BF16);
    assert_eq!(vae.dtype(), DType::BF16);
    let out = vae.decode(get(&io, "decode.input")).unwrap();
    assert_eq!(out.dtype(), DType::BF16);
    let out = out.to_dtype(DType::F32).unwrap();
    let want = get(&io, "decode.output");
    assert_close("decode.output bf16", &out, want, BF16_TOL);
    let mean_err = (&out - want).unwrap().abs().unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap() as f64;
    eprintln!("decode.output bf16: mean abs error {mean_err:.3e} (tolerance {BF16_MEAN_TOL:.1e})");
    assert!(mean_err <= BF16_MEAN_TOL, "bf16 mean abs error {mean_err:.3e}");
}

#[test]
fn latent_normalisation_round_trips_with_config_stats() {
    let vae = tiny_vae(DType::F32);
    let cfg = vae.config().clone();
    let mu = Tensor::ones((1, 16, 2, 3, 3), DType::F32, &Device::Cpu).unwrap();
    let z = vae.normalize_latents(&mu).unwrap();
    let v: Vec<f32> = z.narrow(1, 3, 1).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let want = ((1.0 - cfg.latents_mean[3]) / cfg.latents_std[3]) as f32;
    assert!(v.iter().all(|x| (x - want).abs() < 1e-6), "{v:?} vs {want}");
    let back = vae.denormalize_latents(&z).unwrap();
    assert!(max_error(&back, &mu).0 < 1e-6);
}

/// Records the names and shapes the model asks for, handing out cheap zero tensors.
struct Recorder {
    asked: Arc<Mutex<BTreeMap<String, Vec<usize>>>>,
}

impl SimpleBackend for Recorder {
    fn get(&self, s: Shape, name: &str, _: candle_nn::Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.asked.lock().unwrap().insert(name.to_string(), s.dims().to_vec());
        Tensor::zeros((), dtype, dev)?.broadcast_as(s)
    }
    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("unexpected unchecked read of {name}")
    }
    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

#[test]
fn real_wan21_vae_reads_exactly_the_diffusers_tensors() {
    #[derive(serde::Deserialize)]
    struct Keys {
        tensors: BTreeMap<String, Vec<usize>>,
    }
    let path = fixture("keys/wan21_vae.json");
    let keys: Keys = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let asked = Arc::new(Mutex::new(BTreeMap::new()));
    let vb = VarBuilder::from_backend(Box::new(Recorder { asked: asked.clone() }), DType::BF16, Device::Cpu);
    AutoencoderKLWan::new(&AutoencoderKLWanConfig::wan21(), vb).unwrap();
    let asked = asked.lock().unwrap().clone();
    let want: BTreeSet<_> = keys.tensors.keys().collect();
    let got: BTreeSet<_> = asked.keys().collect();
    assert_eq!(got.difference(&want).collect::<Vec<_>>(), Vec::<&&String>::new(), "read but not in the checkpoint");
    assert_eq!(want.difference(&got).collect::<Vec<_>>(), Vec::<&&String>::new(), "in the checkpoint but never read");
    for (k, shape) in &keys.tensors {
        assert_eq!(&asked[k], shape, "shape of {k}");
    }
}

/// CPU seconds used by this process so far (user + system), from /proc on Linux.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// Timings: `cargo test --release -p ciak-engine --test parity_vae -- --ignored --nocapture`.
/// Prints wall time and process CPU time, since a shared machine makes wall time noisy.
#[test]
#[ignore]
fn bench_decode() {
    let vae = tiny_vae(DType::F32);
    let io = load_io("vae");
    let time = |what: &str, reps: usize, f: &dyn Fn()| {
        f();
        let (t0, c0) = (Instant::now(), cpu_seconds());
        for _ in 0..reps {
            f();
        }
        let wall = t0.elapsed().as_secs_f64() * 1e3 / reps as f64;
        let cpu = cpu_seconds().zip(c0).map(|(c1, c0)| (c1 - c0) * 1e3 / reps as f64).unwrap_or(f64::NAN);
        eprintln!("{what}: {wall:.1} ms wall, {cpu:.0} ms CPU");
    };
    let z = get(&io, "decode.input");
    time("tiny fixture decode [1,16,3,4,4] -> [1,3,9,32,32]", 20, &|| drop(vae.decode(z).unwrap()));
    let x = get(&io, "encode.input");
    time("tiny fixture encode [1,3,9,32,32] -> [1,16,3,4,4]", 20, &|| drop(vae.encode(x).unwrap()));
    let z = Tensor::randn(0f32, 1.0, (1, 16, 7, 16, 28), &Device::Cpu).unwrap();
    time("base_dim 8 decode [1,16,7,16,28] -> [1,3,25,128,224]", 3, &|| drop(vae.decode(&z).unwrap()));
}
