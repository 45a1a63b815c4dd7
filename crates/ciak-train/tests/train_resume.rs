//! Resume is exact: N steps in one go and k steps + checkpoint + resume + N-k steps give the
//! same bits (weights, EMA, AdamW moments, random stream, data position, loss log).
#[path = "train_support.rs"]
mod support;

use candle_core::{Device, Tensor};
use ciak_train::train::dit::{DitTrainer, SyntheticLatents};
use ciak_train::train::lossplot::read_loss_csv;
use ciak_train::train::{run_dit_training, LatentSource, TrainEvent};
use std::collections::HashMap;
use std::path::Path;

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()).collect()
}

fn assert_same_bits(what: &str, a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>) {
    assert_eq!(a.len(), b.len(), "{what}: different tensor sets");
    for (name, ta) in a {
        let tb = b.get(name).unwrap_or_else(|| panic!("{what}: `{name}` missing"));
        assert!(bits(ta) == bits(tb), "{what}: `{name}` differs");
    }
}

fn source(dev: &Device) -> SyntheticLatents {
    SyntheticLatents::new(5, [16, 2, 4, 6], support::captions(3), dev).unwrap()
}

fn load_part(dir: &Path, part: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join(format!("{part}.safetensors")), &Device::Cpu).unwrap()
}

/// A fresh run of `cfg` after three steps, and its source.
fn three_steps(cfg: &ciak_train::train::dit::DitTrainConfig, dev: &Device) -> (DitTrainer, SyntheticLatents) {
    let mut trainer = DitTrainer::new(cfg, dev).unwrap();
    let mut src = source(dev);
    for _ in 0..3 {
        trainer.train_step(&mut src).unwrap();
    }
    (trainer, src)
}

#[test]
fn k_steps_then_resume_equals_an_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = support::tiny_config(support::write_tokenizer(tmp.path()));
    let dev = Device::Cpu;
    let (n, k) = (6, 2);

    let mut straight = DitTrainer::new(&cfg, &dev).unwrap();
    let mut src = source(&dev);
    let mut losses = Vec::new();
    for _ in 0..n {
        losses.push(straight.train_step(&mut src).unwrap().loss);
    }

    let mut first = DitTrainer::new(&cfg, &dev).unwrap();
    let mut src1 = source(&dev);
    let mut resumed_losses = Vec::new();
    for _ in 0..k {
        resumed_losses.push(first.train_step(&mut src1).unwrap().loss);
    }
    let ckpt = tmp.path().join("ckpt");
    first.save(&ckpt, &src1).unwrap();
    drop(first);
    drop(src1);

    // a fresh source: its position comes back from the checkpoint
    let mut src2 = source(&dev);
    let mut second = DitTrainer::resume(&cfg, &ckpt, &mut src2, &dev).unwrap();
    assert_eq!(second.step(), k as u64);
    for _ in k..n {
        resumed_losses.push(second.train_step(&mut src2).unwrap().loss);
    }
    assert_eq!(losses.iter().map(|l| l.to_bits()).collect::<Vec<_>>(), resumed_losses.iter().map(|l| l.to_bits()).collect::<Vec<_>>());
    assert_same_bits("weights", &straight.weights(), &second.weights());
    assert_same_bits("ema", &straight.ema_weights(), &second.ema_weights());
    assert_eq!(src.state(), src2.state());

    // and the runs go on identically (moments and random stream were restored too)
    let a = straight.train_step(&mut src).unwrap().loss;
    let b = second.train_step(&mut src2).unwrap().loss;
    assert_eq!(a.to_bits(), b.to_bits());
    assert_same_bits("weights after one more step", &straight.weights(), &second.weights());
    eprintln!("losses: {losses:?}");
}

/// With `own_start` (samples started from the model's own sigma-1 answer) the run trains
/// differently from the plain one, and a resume still gives the same bits: the flags come from
/// the checkpointed random stream.
#[test]
fn own_start_runs_resume_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let plain = support::tiny_config(support::write_tokenizer(tmp.path()));
    let cfg = ciak_train::train::dit::DitTrainConfig {
        own_start: Some(ciak_train::train::dit::OwnStart { share: 1.0, min_sigma: 0.05 }),
        ..plain.clone()
    };
    let dev = Device::Cpu;
    let losses = |trainer: &mut DitTrainer, src: &mut SyntheticLatents, n: usize| -> Vec<u64> {
        (0..n).map(|_| trainer.train_step(src).unwrap().loss.to_bits()).collect()
    };
    let (mut base, mut base_src) = three_steps(&plain, &dev);
    let (mut straight, mut src) = three_steps(&cfg, &dev);
    let ahead = losses(&mut straight, &mut src, 3);
    assert_ne!(ahead, losses(&mut base, &mut base_src, 3));

    let (first, src1) = three_steps(&cfg, &dev);
    let ckpt = tmp.path().join("own");
    first.save(&ckpt, &src1).unwrap();
    let mut src2 = source(&dev);
    let mut second = DitTrainer::resume(&cfg, &ckpt, &mut src2, &dev).unwrap();
    assert_eq!(losses(&mut second, &mut src2, 3), ahead);
    assert_same_bits("weights", &straight.weights(), &second.weights());
}

#[test]
fn run_dit_training_resumes_from_its_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = support::tiny_config(support::write_tokenizer(tmp.path()));
    let dev = Device::Cpu;
    let straight_dir = tmp.path().join("straight");
    let split_dir = tmp.path().join("split");

    let mut events = Vec::new();
    let summary = run_dit_training(&cfg, &mut source(&dev), &straight_dir, false, &dev, &mut |e| events.push(e.clone())).unwrap();
    assert_eq!(summary.steps, cfg.steps);
    assert!(summary.exported.is_none(), "no VAE configured, so no export");
    let steps: Vec<u64> = events.iter().filter_map(|e| if let TrainEvent::Step { step, .. } = e { Some(*step) } else { None }).collect();
    assert_eq!(steps, (1..=cfg.steps).collect::<Vec<_>>());
    let ckpts: Vec<u64> = events.iter().filter_map(|e| if let TrainEvent::Checkpoint { step, .. } = e { Some(*step) } else { None }).collect();
    assert_eq!(ckpts, vec![3, 6]);
    for file in ["loss.csv", "loss.png", "config.json", "checkpoint/state.json", "checkpoint/model.safetensors"] {
        assert!(straight_dir.join(file).is_file(), "missing {file}");
    }

    // interrupted after one step by the time limit, then resumed with the same settings
    let mut first = cfg.clone();
    first.max_seconds = Some(0.0);
    let s = run_dit_training(&first, &mut source(&dev), &split_dir, false, &dev, &mut |_| {}).unwrap();
    assert_eq!(s.steps, 1);
    // a fresh run into a folder with a checkpoint is refused instead of overwriting it
    let err = run_dit_training(&cfg, &mut source(&dev), &split_dir, false, &dev, &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("already holds a checkpoint"), "{err}");
    let mut events = Vec::new();
    let s = run_dit_training(&cfg, &mut source(&dev), &split_dir, true, &dev, &mut |e| events.push(e.clone())).unwrap();
    assert_eq!(s.steps, cfg.steps);
    assert!(matches!(events[0], TrainEvent::Resumed { step: 1, .. }));

    for part in ["model", "ema", "optim"] {
        assert_same_bits(part, &load_part(&straight_dir.join("checkpoint"), part), &load_part(&split_dir.join("checkpoint"), part));
    }
    let a = read_loss_csv(&straight_dir.join("loss.csv")).unwrap();
    let b = read_loss_csv(&split_dir.join("loss.csv")).unwrap();
    assert_eq!(a.len(), cfg.steps as usize);
    assert_eq!(b.len(), cfg.steps as usize);
    for (ra, rb) in a.iter().zip(&b) {
        assert_eq!((ra.step, ra.loss.to_bits(), ra.lr.to_bits()), (rb.step, rb.loss.to_bits(), rb.lr.to_bits()));
    }

    // a different model size is refused with a message naming it
    let mut other = cfg.clone();
    other.transformer.num_layers = 3;
    let err = run_dit_training(&other, &mut source(&dev), &split_dir, true, &dev, &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("transformer"), "{err}");
}

/// A checkpoint without its optimizer part (what comes back from the GPU machine) resumes with
/// `fresh_optimizer`: weights, EMA, step and data position carry over, AdamW starts afresh and the
/// learning rate ramps up again over `warmup_steps`. Without the flag it is refused.
#[test]
fn fresh_optimizer_resumes_a_checkpoint_without_optimizer_state() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = support::tiny_config(support::write_tokenizer(tmp.path()));
    let dev = Device::Cpu;
    let (first, src) = three_steps(&cfg, &dev);
    let ckpt = tmp.path().join("ckpt");
    first.save(&ckpt, &src).unwrap();
    std::fs::remove_file(ckpt.join("optim.safetensors")).unwrap();

    let err = DitTrainer::resume(&cfg, &ckpt, &mut source(&dev), &dev).err().expect("needs the optimizer part").to_string();
    assert!(err.contains("missing part `optim`"), "{err}");

    let fresh = ciak_train::train::dit::DitTrainConfig { fresh_optimizer: true, warmup_steps: 4, ..cfg.clone() };
    let mut src2 = source(&dev);
    let mut second = DitTrainer::resume(&fresh, &ckpt, &mut src2, &dev).unwrap();
    assert_eq!(second.step(), 3);
    assert_same_bits("weights", &first.weights(), &second.weights());
    assert_same_bits("ema", &first.ema_weights(), &second.ema_weights());
    assert_eq!(src.state(), src2.state());
    // the ramp: a quarter, a half, ... of the schedule's rate, then the schedule itself
    let schedule = DitTrainer::new(&fresh, &dev).unwrap();
    for (k, share) in [(3u64, 0.25), (4, 0.5), (6, 1.0), (7, 1.0)] {
        let (got, want) = (second.lr_at(k), schedule.lr_at(k) * share);
        assert!((got - want).abs() <= 1e-12 * want.abs().max(1.0), "step {k}: {got} vs {want}");
    }
    let stats = second.train_step(&mut src2).unwrap();
    assert!(stats.loss.is_finite() && (stats.lr - schedule.lr_at(3) * 0.25).abs() < 1e-12);

    // the ramp survives a later ordinary resume (its start is in the state)
    let again = tmp.path().join("again");
    second.save(&again, &src2).unwrap();
    let plain = ciak_train::train::dit::DitTrainConfig { fresh_optimizer: false, ..fresh.clone() };
    let third = DitTrainer::resume(&plain, &again, &mut source(&dev), &dev).unwrap();
    assert_eq!(third.lr_at(4).to_bits(), second.lr_at(4).to_bits());
}

/// A three-step run and its export: (the temporary folder, the config, the trainer, the model folder).
fn exported_run(dev: &Device) -> (tempfile::TempDir, ciak_train::train::dit::DitTrainConfig, DitTrainer, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = support::tiny_config(support::write_tokenizer(tmp.path()));
    let (first, _) = three_steps(&cfg, dev);
    let model = tmp.path().join("model");
    first.export(&support::fixture_vae(), &model).unwrap();
    (tmp, cfg, first, model)
}

/// `init_from`: a fresh run starts from an exported model folder's weights (current and EMA both),
/// at step 0, and trains on from there; a folder of another architecture, or without the
/// transformer's weights, is refused with what was expected and what was found.
#[test]
fn init_from_starts_a_fresh_run_from_an_exported_model() {
    let dev = Device::Cpu;
    // the folder lives as long as `_tmp`
    let (_tmp, cfg, first, model) = exported_run(&dev);
    let init = ciak_train::train::dit::DitTrainConfig { init_from: Some(model.clone()), ..cfg.clone() };
    let mut second = DitTrainer::new(&init, &dev).unwrap();
    assert_eq!(second.step(), 0);
    assert_same_bits("weights", &first.ema_weights(), &second.weights());
    assert_same_bits("ema", &first.ema_weights(), &second.ema_weights());
    let random = DitTrainer::new(&cfg, &dev).unwrap();
    let name = "transformer.proj_out.weight";
    assert!(bits(&random.weights()[name]) != bits(&second.weights()[name]), "init_from kept the random weights");
    let stats = second.train_step(&mut source(&dev)).unwrap();
    assert!(stats.loss.is_finite());
    assert!(bits(&first.ema_weights()[name]) != bits(&second.weights()[name]), "the step changed nothing");

    let mut wider = init.clone();
    wider.transformer.ffn_dim = 128;
    let err = DitTrainer::new(&wider, &dev).err().expect("another architecture").to_string();
    assert!(err.contains("expected shape") && err.contains("ffn"), "{err}");
    let mut deeper = init.clone();
    deeper.transformer.num_layers = 1;
    let err = DitTrainer::new(&deeper, &dev).err().expect("fewer layers than the folder").to_string();
    assert!(err.contains("blocks.1"), "{err}");

    std::fs::remove_file(model.join("transformer/diffusion_pytorch_model.safetensors")).unwrap();
    let err = DitTrainer::new(&init, &dev).err().expect("no transformer weights").to_string();
    assert!(err.contains("transformer/diffusion_pytorch_model.safetensors"), "{err}");
}

/// `init_from` into a config that adds coordinate channels (`transformer.position_channels`):
/// the folder's patch embedding is widened with zero weights, so the new model predicts what the
/// old one did until training gives the coordinates weight; the export records the channels and
/// the pipeline loads it and feeds them itself.
#[test]
fn init_from_adds_position_channels_without_changing_the_prediction() {
    use ciak_engine::model_dir::WanModelDir;
    use ciak_engine::pipeline::{LoadOptions, WanPipeline};
    use ciak_train::train::flow::TrainRng;
    let dev = Device::Cpu;
    let (tmp, cfg, first, model) = exported_run(&dev);
    let mut init = ciak_train::train::dit::DitTrainConfig { init_from: Some(model.clone()), ..cfg.clone() };
    init.transformer.position_channels = 2;
    let mut second = DitTrainer::new(&init, &dev).unwrap();
    let name = "transformer.patch_embedding.weight";
    let (old, new) = (&first.ema_weights()[name], &second.weights()[name]);
    assert_eq!((old.dims(), new.dims()), (&[48, 16, 1, 2, 2][..], &[48, 18, 1, 2, 2][..]));
    assert_eq!(bits(&new.narrow(1, 0, 16).unwrap()), bits(old));
    assert!(bits(&new.narrow(1, 16, 2).unwrap()).iter().all(|&b| b == 0), "the new channels start at zero");

    let ema = first.ema_weights();
    for p in first.params() {
        p.var.set(&ema[&p.name]).unwrap();
    }
    let x = TrainRng::new(4).gaussian(&[2, 16, 2, 4, 4], &dev).unwrap();
    let t = Tensor::new(&[700f32, 100.0], &dev).unwrap();
    let ctx = first.models.encode_text(&support::captions(2)).unwrap();
    let want = first.models.transformer.forward(&x, &t, &ctx, None).unwrap();
    let got = second.models.transformer.forward(&x, &t, &ctx, None).unwrap();
    // zero weights add exact zeros; only the order of the sums may differ
    let err = (&got - &want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(err < 1e-5, "widened vs folder model: {err}");

    // training moves the coordinate weights off zero; the export carries them to the pipeline
    second.train_step(&mut source(&dev)).unwrap();
    let moved = second.weights()[name].narrow(1, 16, 2).unwrap();
    assert!(moved.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() > 0.0);
    let out = tmp.path().join("with-positions");
    second.export(&support::fixture_vae(), &out).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("transformer/config.json")).unwrap()).unwrap();
    assert_eq!((json["in_channels"].as_u64(), json["position_channels"].as_u64()), (Some(18), Some(2)));
    let plain: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("transformer/config.json")).unwrap()).unwrap();
    assert!(plain.get("position_channels").is_none(), "a plain model's config stays diffusers' own");
    let pipe = WanPipeline::load(&WanModelDir::open(&out).unwrap(), &LoadOptions::default()).unwrap();
    let ema = second.ema_weights();
    for p in second.params() {
        p.var.set(&ema[&p.name]).unwrap();
    }
    let want = second.models.transformer.forward(&x, &t, &ctx, None).unwrap();
    let got = pipe.transformer.forward(&x, &t, &ctx, None).unwrap();
    let err = (&got - &want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(err < 1e-5, "pipeline vs trainer: {err}");
    // the pipeline draws noise of the latent channels (out_channels), not of in_channels
    let mut req = ciak_engine::pipeline::GenerateRequest::new(support::captions(1)[0].clone());
    (req.width, req.height, req.frames, req.steps) = (32, 32, 5, 2);
    let clip = pipe.generate(&req, &mut |_| {}, None).unwrap();
    assert_eq!((clip.frames.dims(), clip.latents.dim(1).unwrap()), (&[5, 32, 32, 3][..], 16));

    // a 2-channel model goes on with sine features: its weights kept, the sines' at zero
    let sines = ciak_train::train::dit::DitTrainConfig {
        init_from: Some(out.clone()),
        transformer: ciak_train::train::dit::DitArch { position_channels: 6, ..init.transformer.clone() },
        ..init.clone()
    };
    let third = DitTrainer::new(&sines, &dev).unwrap();
    let w = &third.weights()[name];
    assert_eq!(w.dims(), &[48, 22, 1, 2, 2]);
    assert_eq!(bits(&w.narrow(1, 0, 18).unwrap()), bits(&second.ema_weights()[name]));
    assert!(bits(&w.narrow(1, 18, 4).unwrap()).iter().all(|&b| b == 0), "the sine channels start at zero");
    let got = third.models.transformer.forward(&x, &t, &ctx, None).unwrap();
    let err = (&got - &want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(err < 1e-5, "2 + sines vs 2-channel model: {err}");

    let mut three = init.clone();
    three.transformer.position_channels = 3;
    let err = DitTrainer::new(&three, &dev).err().expect("an unsupported count").to_string();
    assert!(err.contains("expected transformer.position_channels 0, 2, or 2 + 4k with k octaves of sine features (k <= 8), got 3"), "{err}");
}
