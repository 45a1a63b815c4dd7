//! The built-in VAE's trainer (learning, resume, export through the engine's loader) and the
//! latent cache (round trip, normalisation, the `LatentSource` it serves the DiT trainer).
use candle_core::{DType, Device, IndexOp, Tensor};
use ciak_engine::loader::{load_varbuilder, read_config};
use ciak_models::wan::vae::{AutoencoderKLWan, AutoencoderKLWanConfig};
use ciak_train::train::latents::{
    build_latent_cache, encode_scene, load_vae, CacheDType, CacheManifest, CachedLatents, LatentCacheConfig,
};
use ciak_train::train::lossplot::read_loss_csv;
use ciak_train::train::vae::{
    clip_tensor, run_vae_training, training_batch, VaeArch, VaeEvent, VaeGroup, VaeLossWeights, VaeTrainConfig,
    VaeTrainPart, VaeTrainer,
};
use ciak_train::train::{LatentSource, TrainEvent};
use ciak_train::world::{render, SamplerConfig, Scene};
use ciak_train::{sample, Split};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A VAE of base_dim 4 trained on 16x16 crops of 5 frames: seconds per test in a debug build.
fn tiny_config() -> VaeTrainConfig {
    VaeTrainConfig {
        seed: 3,
        vae: VaeArch {
            base_dim: 4,
            num_res_blocks: 1,
            z_dim: 16,
            dim_mult: vec![1, 2, 4, 4],
            temperal_downsample: vec![false, true, true],
            decoder_base_dim: None,
        },
        batch_size: 2,
        clip_frames: 5,
        crop: [16, 16],
        steps: 4,
        lr: 3e-3,
        warmup_steps: 1,
        min_lr_ratio: 0.1,
        adamw: Default::default(),
        grad_clip: 1.0,
        ema_decay: 0.9,
        loss: VaeLossWeights { l1: 1.0, l2: 1.0, edge: 0.5, temporal: 0.0, kl: 1e-5 },
        checkpoint_every: 2,
        eval_every: 0,
        eval_clips: 1,
        stats_clips: 2,
        max_seconds: None,
        stop_at: None,
        init_logvar: Some(-4.0),
        image_batch: 2,
        init_from: None,
        train: VaeTrainPart::All,
        foreground_weight: 0.0,
        object_crops: 0.0,
    }
}

fn bits(map: &HashMap<String, Tensor>) -> Vec<(String, Vec<u32>)> {
    let mut v: Vec<_> = map
        .iter()
        .map(|(k, t)| {
            (k.clone(), t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()).collect())
        })
        .collect();
    v.sort();
    v
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn committed_config_is_valid() {
    let cfg = VaeTrainConfig::from_file(&repo_root().join("train/vae.json")).unwrap();
    assert_eq!(cfg.vae.z_dim, 16, "the DiT's in_channels");
    assert_eq!(cfg.vae.dim_mult, vec![1, 2, 4, 4]);
    assert_eq!(cfg.vae.temperal_downsample, vec![false, true, true]);
    // a misspelt key is an error, not a silent default
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("vae.json");
    std::fs::write(
        &bad,
        std::fs::read_to_string(repo_root().join("train/vae.json")).unwrap().replace("\"steps\"", "\"stepz\""),
    )
    .unwrap();
    assert!(VaeTrainConfig::from_file(&bad).is_err());

    // every committed VAE setting (train/vae*.json) parses and validates
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo_root().join("train"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json") && p.file_name().unwrap().to_str().unwrap().starts_with("vae"))
        .collect();
    files.sort();
    assert!(files.len() >= 10, "{files:?}");
    for path in &files {
        let cfg = VaeTrainConfig::from_file(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        cfg.validate().unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

#[test]
fn a_few_steps_reduce_the_loss_on_a_fixed_batch() {
    let cfg = tiny_config();
    let dev = Device::Cpu;
    let mut trainer = VaeTrainer::new(&cfg, &dev).unwrap();
    let bias = trainer.weights()["quant_conv.bias"].to_vec1::<f32>().unwrap();
    assert_eq!(&bias[16..], &[-4.0; 16], "init_logvar sets the log-variance half of quant_conv.bias");
    assert!(bias[..16].iter().all(|b| b.abs() < 1.0));
    let x = training_batch(&cfg, 0, &dev).unwrap();
    assert_eq!(x.x.dims(), &[2, 3, 5, 16, 16]);
    let x = [x];
    let before = trainer.eval_loss(&x, 7).unwrap();
    let mut losses = Vec::new();
    for _ in 0..12 {
        losses.push(trainer.train_step_on(&x).unwrap().loss.total);
    }
    let after = trainer.eval_loss(&x, 7).unwrap();
    eprintln!("before {before:?}\nafter {after:?}\nlosses {losses:?}");
    assert!(after.total < 0.6 * before.total, "loss {} -> {}", before.total, after.total);
    assert!(after.l1 < before.l1 && after.l2 < before.l2);
    assert!(before.kl > 0.0 && after.kl.is_finite());
    assert_eq!(trainer.step(), 12);
}

#[test]
fn resume_continues_bit_identically() {
    let cfg = tiny_config();
    let dev = Device::Cpu;
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tmp.path().join("checkpoint");

    let mut straight = VaeTrainer::new(&cfg, &dev).unwrap();
    let mut losses = Vec::new();
    for _ in 0..3 {
        losses.push(straight.train_step().unwrap().loss.total);
    }
    let mut first = VaeTrainer::new(&cfg, &dev).unwrap();
    first.train_step().unwrap();
    first.save(&ckpt).unwrap();
    drop(first);
    let mut second = VaeTrainer::resume(&cfg, &ckpt, &dev).unwrap();
    assert_eq!(second.step(), 1);
    let mut resumed = vec![losses[0]];
    for _ in 1..3 {
        resumed.push(second.train_step().unwrap().loss.total);
    }
    assert_eq!(
        losses.iter().map(|l| l.to_bits()).collect::<Vec<_>>(),
        resumed.iter().map(|l| l.to_bits()).collect::<Vec<_>>()
    );
    assert_eq!(bits(&straight.weights()), bits(&second.weights()));
    assert_eq!(bits(&straight.ema_weights()), bits(&second.ema_weights()));

    // another architecture is refused, naming what differs
    let mut other = cfg.clone();
    other.vae.base_dim = 8;
    let err = VaeTrainer::resume(&other, &ckpt, &dev).err().expect("a different VAE must not resume");
    assert!(err.to_string().contains("vae"), "{err}");
}

#[test]
fn run_resumes_and_exports_a_folder_the_engine_loads() {
    let cfg = tiny_config();
    let tmp = tempfile::tempdir().unwrap();
    let straight = tmp.path().join("straight");
    let split = tmp.path().join("split");

    let mut events = Vec::new();
    let summary = run_vae_training(&cfg, &straight, false, &mut |e| events.push(e.clone())).unwrap();
    assert_eq!(summary.steps, cfg.steps);
    let steps: Vec<u64> = events
        .iter()
        .filter_map(|e| if let VaeEvent::Train(TrainEvent::Step { step, .. }) = e { Some(*step) } else { None })
        .collect();
    assert_eq!(steps, (1..=cfg.steps).collect::<Vec<_>>());
    let eval = summary.eval.clone().expect("a final evaluation");
    assert_eq!(eval.psnr_db.len(), cfg.eval_clips);
    assert!(eval.mean_psnr_db.is_finite() && eval.mean_psnr_db > 0.0, "{eval:?}");
    for file in [
        "loss.csv",
        "loss.png",
        "eval.csv",
        "config.json",
        "checkpoint/state.json",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
    ] {
        assert!(straight.join(file).is_file(), "missing {file}");
    }

    // stopped by the time limit after one step, refused as a fresh run, then resumed
    let first = VaeTrainConfig { max_seconds: Some(0.0), ..cfg.clone() };
    let s = run_vae_training(&first, &split, false, &mut |_| {}).unwrap();
    assert_eq!((s.steps, s.exported.is_none()), (1, true));
    let err = run_vae_training(&cfg, &split, false, &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("already holds a checkpoint"), "{err}");
    let mut events = Vec::new();
    let s = run_vae_training(&cfg, &split, true, &mut |e| events.push(e.clone())).unwrap();
    assert_eq!(s.steps, cfg.steps);
    assert!(matches!(events[0], VaeEvent::Train(TrainEvent::Resumed { step: 1, .. })));
    let (a, b) = (read_loss_csv(&straight.join("loss.csv")).unwrap(), read_loss_csv(&split.join("loss.csv")).unwrap());
    assert_eq!(
        a.iter().map(|r| r.loss.to_bits()).collect::<Vec<_>>(),
        b.iter().map(|r| r.loss.to_bits()).collect::<Vec<_>>()
    );
    let (wa, wb) = (
        straight.join("vae/diffusion_pytorch_model.safetensors"),
        split.join("vae/diffusion_pytorch_model.safetensors"),
    );
    assert_eq!(std::fs::read(&wa).unwrap(), std::fs::read(&wb).unwrap(), "same weights either way");

    // a staged run: --stop-at ends after that step with an export, the resume goes on to the end
    // and lands on the same weights as the straight run
    let staged = tmp.path().join("staged");
    let s = run_vae_training(&VaeTrainConfig { stop_at: Some(2), ..cfg.clone() }, &staged, false, &mut |_| {}).unwrap();
    assert_eq!(s.steps, 2);
    assert!(s.exported.is_some() && staged.join("vae/config.json").is_file(), "a stop-at stage exports");
    let s = run_vae_training(&cfg, &staged, true, &mut |_| {}).unwrap();
    assert_eq!((s.steps, s.exported.is_some()), (cfg.steps, true));
    let wc = staged.join("vae/diffusion_pytorch_model.safetensors");
    assert_eq!(std::fs::read(&wa).unwrap(), std::fs::read(&wc).unwrap(), "staged run = straight run");

    // the folder goes through the engine's loader and config parsing
    let vae_dir = straight.join("vae");
    let vcfg: AutoencoderKLWanConfig = read_config(&vae_dir).unwrap();
    assert_eq!((vcfg.base_dim, vcfg.z_dim, vcfg.num_res_blocks), (4, 16, 1));
    assert_eq!(vcfg.latents_mean.len(), 16);
    assert!(vcfg.latents_std.iter().all(|s| s.is_finite() && *s > 0.0), "{:?}", vcfg.latents_std);
    let dev = Device::Cpu;
    let vae = AutoencoderKLWan::new(&vcfg, load_varbuilder(&vae_dir, DType::F32, &dev).unwrap()).unwrap();
    // the exported weights are the EMA weights of the checkpoint
    let ema = candle_core::safetensors::load(straight.join("checkpoint/ema.safetensors"), &dev).unwrap();
    let exported = candle_core::safetensors::load(&wa, &dev).unwrap();
    assert_eq!(bits(&ema), bits(&exported));

    // decodes a full-size latent of the 16:9 clip (7 latent frames of 16x28) to 25 frames
    let z = Tensor::randn(0f32, 1.0, (1, 16, 7, 16, 28), &dev).unwrap();
    let frames = vae.decode(&vae.denormalize_latents(&z).unwrap()).unwrap();
    assert_eq!(frames.dims(), &[1, 3, 25, 128, 224]);
    assert!(max_abs(&frames) <= 1.0);

    // latents_mean/std are the statistics of normalised latents: a full clip's posterior mean
    // normalises to roughly zero mean, unit scale
    let scene = sample(99, 0, &SamplerConfig::default(), Split::Train).scene;
    let (mu, _) = vae.encode(&clip_tensor(&render(&scene), &dev).unwrap()).unwrap();
    let n = vae.normalize_latents(&mu).unwrap();
    let rms = n.sqr().unwrap().mean_all().unwrap().sqrt().unwrap().to_scalar::<f32>().unwrap();
    assert!((0.2..5.0).contains(&rms), "normalised latent rms {rms}");
}

/// A decoder fine-tune starts from a trained folder, changes only the decoder side and exports
/// the folder's own latent statistics, so latent caches and DiTs made with it stay valid.
#[test]
fn decoder_fine_tune_keeps_the_encoder_and_its_latent_space() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    run_vae_training(&VaeTrainConfig { steps: 2, ..tiny_config() }, &base, false, &mut |_| {}).unwrap();
    let fine = VaeTrainConfig {
        init_from: Some(base.join("vae")),
        train: VaeTrainPart::Decoder,
        seed: 5,
        ..tiny_config()
    };
    let out = tmp.path().join("fine");
    let summary = run_vae_training(&fine, &out, false, &mut |_| {}).unwrap();
    assert_eq!(summary.steps, fine.steps);
    let dev = Device::Cpu;
    let load = |dir: &Path| candle_core::safetensors::load(dir.join("diffusion_pytorch_model.safetensors"), &dev).unwrap();
    let (before, after) = (load(&base.join("vae")), load(&out.join("vae")));
    assert_eq!(before.len(), after.len());
    let values = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let (mut same, mut changed) = (0, 0);
    for (name, t) in &before {
        let equal = values(t) == values(&after[name]);
        if VaeTrainPart::Decoder.trains(name) {
            changed += usize::from(!equal);
        } else {
            assert!(equal, "`{name}` is frozen and must not change");
            same += 1;
        }
    }
    assert!(same > 0 && changed > 0, "{same} frozen, {changed} trained weights changed");
    let (a, b): (AutoencoderKLWanConfig, AutoencoderKLWanConfig) =
        (read_config(&base.join("vae")).unwrap(), read_config(&out.join("vae")).unwrap());
    assert_eq!((a.latents_mean, a.latents_std), (b.latents_mean, b.latents_std), "same latent statistics");
    // the number reported is what the optimizer trains
    let trained: usize = after.iter().filter(|(n, _)| VaeTrainPart::Decoder.trains(n)).map(|(_, t)| t.elem_count()).sum();
    assert_eq!(summary.parameters, trained);

    // resuming with the other part is refused; so are a decoder run without a folder and a
    // folder of another architecture
    let err = run_vae_training(&VaeTrainConfig { train: VaeTrainPart::All, ..fine.clone() }, &out, true, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("train Decoder in the checkpoint, All in the config"), "{err}");
    let err = VaeTrainer::new(&VaeTrainConfig { init_from: None, ..fine.clone() }, &dev).err().unwrap().to_string();
    assert!(err.contains("expected init_from"), "{err}");
    let other = VaeTrainConfig { init_from: Some(fixture_vae()), ..fine.clone() };
    let err = VaeTrainer::new(&other, &dev).err().expect("another architecture is refused").to_string();
    assert!(err.contains("expected a VAE of (base_dim"), "{err}");

    // a wider decoder behind the same encoder: the encoder loads, and the decoder, twice as wide,
    // starts as the folder's widened: the same pixels from the same latents
    let wide = VaeTrainConfig { vae: VaeArch { decoder_base_dim: Some(8), ..fine.vae.clone() }, ..fine.clone() };
    let narrow = load_vae(&base.join("vae"), &dev).unwrap();
    let widened = VaeTrainer::new(&wide, &dev).unwrap().ema_vae().unwrap();
    let z = (Tensor::randn(0f32, 1.0, (1, 16, 3, 4, 4), &dev).unwrap() * 0.5).unwrap();
    let (want, got) = (narrow.decode(&z).unwrap(), widened.decode(&z).unwrap());
    assert_eq!(want.dims(), got.dims());
    let diff = max_abs(&(&want - &got).unwrap());
    assert!(diff < 1e-4 && max_abs(&want) > 1e-2, "widened decoder: max difference {diff}");
    assert!(max_abs(&want) < 1.0, "the clip is not clamped flat");
    // a width that is no whole multiple starts fresh
    let odd = VaeTrainConfig { vae: VaeArch { decoder_base_dim: Some(6), ..fine.vae.clone() }, ..fine.clone() };
    let fresh = VaeTrainer::new(&odd, &dev).unwrap().ema_vae().unwrap();
    let far = max_abs(&(&want - &fresh.decode(&z).unwrap()).unwrap());
    assert!(far > 1e-2, "a fresh decoder draws something else: {far}");
    let wide_out = tmp.path().join("wide");
    run_vae_training(&wide, &wide_out, false, &mut |_| {}).unwrap();
    let wider = load(&wide_out.join("vae"));
    for (name, t) in &before {
        if VaeTrainPart::Decoder.trains(name) {
            continue;
        }
        assert_eq!(values(t), values(&wider[name]), "`{name}` comes from the folder's encoder");
    }
    let (o, w) = (&before["decoder.conv_in.weight"], &wider["decoder.conv_in.weight"]);
    assert_eq!(o.dim(0).unwrap() * 2, w.dim(0).unwrap(), "decoder width 8 against base_dim 4");
    let exported: AutoencoderKLWanConfig = read_config(&wide_out.join("vae")).unwrap();
    assert_eq!(exported.decoder_base_dim, Some(8));
    let base_cfg: AutoencoderKLWanConfig = read_config(&base.join("vae")).unwrap();
    assert_eq!((exported.latents_mean, exported.latents_std), (base_cfg.latents_mean, base_cfg.latents_std));
    let err = VaeTrainer::new(&VaeTrainConfig { train: VaeTrainPart::All, ..wide }, &dev).err().unwrap().to_string();
    assert!(err.contains("expected a decoder of width 4 as in this folder, got 8"), "{err}");

    // a config file names the folder relative to itself
    let file = tmp.path().join("fine.json");
    let mut json = serde_json::to_value(&fine).unwrap();
    json["init_from"] = "base/vae".into();
    std::fs::write(&file, json.to_string()).unwrap();
    let read = VaeTrainConfig::from_file(&file).unwrap();
    assert_eq!(read.init_from.as_deref(), Some(tmp.path().join("base/vae").as_path()));
    assert_eq!(read.train, VaeTrainPart::Decoder);
}

/// The parity fixtures' tiny VAE (base_dim 8, real Wan latent statistics).
fn fixture_vae() -> PathBuf {
    let path = repo_root().join("tests/fixtures/tiny-wan/vae");
    assert!(path.join("config.json").is_file(), "missing fixture {} (see tests/fixtures/README.md)", path.display());
    path
}

#[test]
fn latent_cache_round_trips_and_serves_batches() {
    let dev = Device::Cpu;
    let vae_dir = fixture_vae();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cache");
    let cfg = LatentCacheConfig {
        seed: 4,
        clips: 9,
        sampler: SamplerConfig::default(),
        shard_clips: 2,
        dtype: CacheDType::F16,
    };
    let mut seen = Vec::new();
    let started = Instant::now();
    let summary = build_latent_cache(&vae_dir, &dir, &cfg, &dev, &mut |done, total| seen.push((done, total))).unwrap();
    eprintln!(
        "encoded {} clips in {:.2}s ({:.2} clips/s)",
        summary.encoded,
        started.elapsed().as_secs_f64(),
        summary.clips_per_sec()
    );
    assert_eq!((summary.clips, summary.encoded), (9, 9));
    assert_eq!(seen.last(), Some(&(9, 9)));

    let manifest: CacheManifest =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cache.json")).unwrap()).unwrap();
    assert_eq!(manifest.shards.iter().map(|s| s.clips).sum::<usize>(), 9);
    assert!(manifest.shards.iter().all(|s| s.clips <= 2));
    let vcfg: AutoencoderKLWanConfig = read_config(&vae_dir).unwrap();
    assert_eq!(manifest.vae.latents_mean, vcfg.latents_mean);

    // every stored row is the VAE's normalised posterior mean of its scene
    let vae = load_vae(&vae_dir, &dev).unwrap();
    let mut rows = 0;
    for info in &manifest.shards {
        let (w, h) = info.aspect.size();
        assert_eq!(info.latent_shape, [16, 7, h / 8, w / 8]);
        let lat = candle_core::safetensors::load(dir.join(&info.latents), &dev).unwrap()["latents"].clone();
        assert_eq!(lat.dtype(), DType::F16);
        let scenes: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join(&info.scenes)).unwrap()).unwrap();
        let items = scenes["items"].as_array().unwrap();
        for (row, item) in items.iter().enumerate() {
            let index = item["index"].as_u64().unwrap();
            let scene = sample(cfg.seed, index, &cfg.sampler, Split::Train).scene;
            let stored: Scene = serde_json::from_value(item["scene"].clone()).unwrap();
            assert_eq!(stored, scene, "item {index}");
            assert_eq!(scene.aspect, info.aspect);
            let (mu, _) = vae.encode(&clip_tensor(&render(&scene), &dev).unwrap()).unwrap();
            let want = mu
                .broadcast_sub(
                    &Tensor::new(vcfg.latents_mean.iter().map(|&v| v as f32).collect::<Vec<_>>().as_slice(), &dev)
                        .unwrap()
                        .reshape((1, 16, 1, 1, 1))
                        .unwrap(),
                )
                .unwrap()
                .broadcast_div(
                    &Tensor::new(vcfg.latents_std.iter().map(|&v| v as f32).collect::<Vec<_>>().as_slice(), &dev)
                        .unwrap()
                        .reshape((1, 16, 1, 1, 1))
                        .unwrap(),
                )
                .unwrap()
                .squeeze(0)
                .unwrap();
            let got = lat.i(row).unwrap().to_dtype(DType::F32).unwrap();
            let err = max_abs(&(&got - &want).unwrap());
            assert!(err <= 2e-3 * max_abs(&want).max(1.0), "item {index}: f16 round trip error {err}");
            assert_eq!(encode_scene(&vae, &scene).unwrap().dims(), got.dims());
            rows += 1;
        }
    }
    assert_eq!(rows, 9);

    // a second build with the same VAE skips every shard
    let again = build_latent_cache(&vae_dir, &dir, &cfg, &dev, &mut |_, _| {}).unwrap();
    assert_eq!(again.encoded, 0);

    // the source: single-aspect batches, every clip of an epoch once, fresh captions per epoch
    let mut src = CachedLatents::open(&dir, 8, &dev).unwrap();
    assert_eq!(src.len(), 9);
    let counts: HashMap<_, _> = src.counts().into_iter().collect();
    let full_batches: usize = counts.values().map(|c| c / 2).sum();
    assert!(full_batches >= 1, "{counts:?}");
    let mut epoch0 = Vec::new();
    for _ in 0..full_batches {
        let b = src.batch(2).unwrap();
        assert_eq!(b.latents.dtype(), DType::F32);
        let d = b.latents.dims().to_vec();
        assert_eq!((d.len(), d[0], d[1], d[2]), (5, 2, 16, 7));
        assert_eq!(b.captions.len(), 2);
        assert!(b.captions.iter().all(|c| !c.trim().is_empty()));
        epoch0.push(b);
    }
    assert_eq!(src.epoch(), 0);
    // each clip of the epoch is distinct
    let keys: HashSet<Vec<u32>> = epoch0
        .iter()
        .flat_map(|b| {
            (0..2).map(move |i| {
                b.latents
                    .i(i)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
                    .iter()
                    .map(|x| x.to_bits())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    assert_eq!(keys.len(), 2 * full_batches);

    // state/restore: a second source picks up exactly where the first one is
    let state = src.state();
    let mut other = CachedLatents::open(&dir, 8, &dev).unwrap();
    other.restore(&state).unwrap();
    let (a, b) = (src.batch(2).unwrap(), other.batch(2).unwrap());
    assert_eq!(src.epoch(), 1);
    assert_eq!(a.captions, b.captions);
    assert_eq!(max_abs(&(&a.latents - &b.latents).unwrap()), 0.0);

    // over many epochs the same clip gets more than one wording
    let mut captions_of: HashMap<Vec<u32>, HashSet<String>> = HashMap::new();
    for _ in 0..(12 * full_batches) {
        let b = src.batch(2).unwrap();
        for i in 0..2 {
            let key = b
                .latents
                .i(i)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect();
            captions_of.entry(key).or_default().insert(b.captions[i].clone());
        }
    }
    assert!(captions_of.values().any(|c| c.len() > 1), "captions never vary: {captions_of:?}");

    // a batch larger than any aspect's clips is refused with the counts
    let mut big = CachedLatents::open(&dir, 8, &dev).unwrap();
    let err = big.batch(9).err().expect("no aspect has 9 clips");
    assert!(err.to_string().contains("clips of one aspect ratio"), "{err}");
}

/// Decode/encode time of a full 224x128x25 clip per VAE size (fresh weights; the time does not
/// depend on the values), release build:
/// `VAE_SIZES=8x1,12x1 cargo test --release -p ciak-train --test train_vae -- --ignored --nocapture vae_speed_table`.
/// Wall time is the median of 3 runs after a warm-up; CPU time is this process's user + system
/// time per run, which on a busy machine is the better guide to the time on an idle one.
#[test]
#[ignore]
fn vae_speed_table() {
    let sizes: Vec<(usize, usize)> = std::env::var("VAE_SIZES")
        .ok()
        .map(|s| {
            s.split(',')
                .map(|p| {
                    let (a, b) = p.split_once('x').unwrap();
                    (a.parse().unwrap(), b.parse().unwrap())
                })
                .collect()
        })
        .unwrap_or_else(|| vec![(8, 1), (12, 1), (16, 1), (8, 2)]);
    let dev = Device::Cpu;
    let base = VaeTrainConfig::from_file(&repo_root().join("train/vae.json")).unwrap();
    println!(
        "| base_dim | num_res_blocks | parameters | decode wall s | decode CPU s | encode wall s | encode CPU s |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (base_dim, num_res_blocks) in sizes {
        let mut cfg = base.clone();
        cfg.vae.base_dim = base_dim;
        cfg.vae.num_res_blocks = num_res_blocks;
        let trainer = VaeTrainer::new(&cfg, &dev).unwrap();
        let vae = trainer.ema_vae().unwrap();
        let x = clip_tensor(
            &render(
                &sample(
                    1,
                    0,
                    &SamplerConfig { aspects: vec![ciak_train::world::Aspect::Wide], ..Default::default() },
                    Split::Train,
                )
                .scene,
            ),
            &dev,
        )
        .unwrap();
        let z = Tensor::randn(0f32, 1.0, (1, 16, 7, 16, 28), &dev).unwrap();
        let (mut dec, mut enc) = (Vec::new(), Vec::new());
        for run in 0..4 {
            let (w, c) = (Instant::now(), cpu_seconds());
            vae.decode(&z).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
            let d = (w.elapsed().as_secs_f64(), cpu_seconds() - c);
            let (w, c) = (Instant::now(), cpu_seconds());
            vae.encode(&x).unwrap().0.sum_all().unwrap().to_scalar::<f32>().unwrap();
            let e = (w.elapsed().as_secs_f64(), cpu_seconds() - c);
            if run > 0 {
                dec.push(d);
                enc.push(e);
            }
        }
        let med = |v: &[(f64, f64)], k: usize| {
            let mut x: Vec<f64> = v.iter().map(|p| if k == 0 { p.0 } else { p.1 }).collect();
            x.sort_by(f64::total_cmp);
            x[x.len() / 2]
        };
        println!(
            "| {base_dim} | {num_res_blocks} | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
            trainer.num_parameters(),
            med(&dec, 0),
            med(&dec, 1),
            med(&enc, 0),
            med(&enc, 1)
        );
    }
}

/// Seconds per training step of a config file (`VAE_CONFIG`, default train/vae.json).
#[test]
#[ignore]
fn vae_step_speed() {
    let path = std::env::var("VAE_CONFIG").map(PathBuf::from).unwrap_or_else(|_| repo_root().join("train/vae.json"));
    let cfg = VaeTrainConfig::from_file(&path).unwrap();
    let mut t = VaeTrainer::new(&cfg, &Device::Cpu).unwrap();
    println!("parameters {}", t.num_parameters());
    let steps = std::env::var("VAE_STEPS").ok().and_then(|s| s.parse().ok()).unwrap_or(6);
    for _ in 0..steps {
        let s = Instant::now();
        let c = cpu_seconds();
        let st = t.train_step().unwrap();
        println!(
            "step {} loss {:.4} wall {:.2}s cpu {:.2}s rss {} MB",
            t.step(),
            st.loss.total,
            s.elapsed().as_secs_f64(),
            cpu_seconds() - c,
            rss_mb()
        );
    }
}

/// The built-in VAE's training run with the committed settings:
/// `VAE_OUT=target/vae-train [VAE_RESUME=1] cargo test --release -p ciak-train --test train_vae -- --ignored --nocapture train_builtin_vae`.
#[test]
#[ignore]
fn train_builtin_vae() {
    let cfg = VaeTrainConfig::from_file(&repo_root().join("train/vae.json")).unwrap();
    let out = std::env::var("VAE_OUT").map(PathBuf::from).unwrap_or_else(|_| repo_root().join("target/vae-train"));
    let resume = std::env::var("VAE_RESUME").is_ok_and(|v| v == "1");
    let summary = run_vae_training(&cfg, &out, resume, &mut |e| match e {
        VaeEvent::Train(TrainEvent::Step { step, total, loss, lr, grad_norm, samples_per_sec, elapsed, .. }) => {
            if step % 10 == 0 || *step == 1 {
                println!(
                    "step {step}/{total} loss {loss:.5} lr {lr:.2e} grad {grad_norm:.3} {samples_per_sec:.2} clips/s {:.0}s",
                    elapsed.as_secs_f64()
                );
            }
        }
        VaeEvent::Loss { step, parts } if step % 50 == 0 => println!("  parts {parts:?}"),
        VaeEvent::Loss { .. } => {}
        other => println!("{other:?}"),
    })
    .unwrap();
    println!("{summary:?}");
    if let Some(dir) = &summary.exported {
        time_decode(dir);
    }
}

fn time_decode(dir: &Path) {
    let dev = Device::Cpu;
    let vae = load_vae(dir, &dev).unwrap();
    let z = Tensor::randn(0f32, 1.0, (1, 16, 7, 16, 28), &dev).unwrap();
    let mut times = Vec::new();
    for _ in 0..4 {
        let s = Instant::now();
        vae.decode(&vae.denormalize_latents(&z).unwrap()).unwrap();
        times.push(s.elapsed().as_secs_f64());
    }
    println!("decode 224x128x25: {times:?} s");
}

/// User + system CPU time of this process (Linux `/proc/self/stat`, 100 ticks per second).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    let tick = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}

/// Resident memory of this process in MB (Linux `/proc/self/status`).
fn rss_mb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb / 1024)
        .unwrap_or(0)
}

/// Fits one fixed batch of images for `VAE_STEPS` steps (optimisation check).
#[test]
#[ignore]
fn overfit_probe() {
    let mut cfg = VaeTrainConfig::from_file(&repo_root().join("train/vae.json")).unwrap();
    if let Ok(lr) = std::env::var("VAE_LR") {
        cfg.lr = lr.parse().unwrap();
    }
    if let Ok(b) = std::env::var("VAE_BASE_DIM") {
        cfg.vae.base_dim = b.parse().unwrap();
    }
    if let Ok(v) = std::env::var("VAE_INIT_LOGVAR") {
        cfg.init_logvar = v.parse().ok();
    }
    cfg.warmup_steps = 10;
    let steps = std::env::var("VAE_STEPS").ok().and_then(|s| s.parse().ok()).unwrap_or(100);
    cfg.steps = steps;
    let dev = Device::Cpu;
    let mut t = VaeTrainer::new(&cfg, &dev).unwrap();
    let images = ciak_train::train::vae::training_images(&cfg, 0, &dev).unwrap().unwrap();
    let batch = [VaeGroup::from(images.x.narrow(0, 0, 4).unwrap())];
    for s in 0..steps {
        let st = t.train_step_on(&batch).unwrap();
        if s % 10 == 0 || s + 1 == steps {
            println!(
                "step {} l1 {:.4} l2 {:.4} psnr {:.2} grad {:.3}",
                s + 1,
                st.loss.l1,
                st.loss.l2,
                10.0 * (4.0 / st.loss.l2).log10(),
                st.grad_norm
            );
        }
    }
}
