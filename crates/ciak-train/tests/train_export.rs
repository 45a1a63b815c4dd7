//! A trained model exports to a diffusers folder that `WanPipeline::load` opens and samples: the
//! exported EMA weights give the pipeline the same text embeddings and velocities as the
//! trainer computes, with the short prompt length the tokenizer folder declares.
#[path = "train_support.rs"]
mod support;

use candle_core::{Device, Tensor};
use ciak_engine::model_dir::WanModelDir;
use ciak_engine::pipeline::{GenerateRequest, LoadOptions, WanPipeline};
use ciak_engine::scheduler::SchedulerKind;
use ciak_train::train::dit::{DitTrainer, SyntheticLatents};
use ciak_train::train::flow::TrainRng;
use ciak_train::train::{run_dit_training, DitTrainConfig, TrainEvent};

fn max_rel_diff(got: &Tensor, want: &Tensor) -> f64 {
    let err = (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() as f64;
    let scale = want.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() as f64;
    assert!(scale > 0.0, "reference is all zeros");
    err / scale
}

#[test]
fn exported_folder_loads_and_generates() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = support::tiny_config(support::write_tokenizer(tmp.path()));
    cfg.vae = Some(support::fixture_vae());
    cfg.shift = 2.0;
    let dev = Device::Cpu;
    let captions = support::captions(3);
    let mut source = SyntheticLatents::new(3, [16, 2, 4, 4], captions.clone(), &dev).unwrap();
    let out = tmp.path().join("run");
    let mut exported_event = false;
    let summary = run_dit_training(&cfg, &mut source, &out, false, &dev, &mut |e| {
        exported_event |= matches!(e, TrainEvent::Exported { .. })
    })
    .unwrap();
    let model_dir = summary.exported.expect("a VAE is configured, so the run exports");
    assert!(exported_event);

    let dir = WanModelDir::open(&model_dir).unwrap();
    let pipe = WanPipeline::load(&dir, &LoadOptions::default()).unwrap();
    assert_eq!(pipe.text_encoder.tokenizer().max_len(), cfg.text_len, "tokenizer_config.json sets the prompt length");
    assert_eq!(pipe.scheduler.kind(), SchedulerKind::UniPc);
    assert_eq!(pipe.scheduler.shift(), 2.0);

    // the trainer's models on the EMA weights compute what the pipeline computes
    let trainer = DitTrainer::resume(&cfg, &out.join("checkpoint"), &mut source, &dev).unwrap();
    let ema = trainer.ema_weights();
    for p in trainer.params() {
        p.var.set(&ema[&p.name]).unwrap();
    }
    let prompts = vec![captions[0].clone(), String::new()];
    let want = trainer.models.encode_text(&prompts).unwrap();
    let got = pipe.text_encoder.encode(&prompts).unwrap().prompt_embeds;
    assert_eq!(got.dims(), &[2, cfg.text_len, cfg.text_encoder.d_model]);
    let rel = max_rel_diff(&got, &want);
    eprintln!("text embeddings: pipeline vs trainer max relative difference {rel:.2e}");
    assert!(rel <= 1e-5);
    let x = TrainRng::new(4).gaussian(&[2, 16, 2, 4, 4], &dev).unwrap();
    let t = Tensor::new(&[700f32, 100.0], &dev).unwrap();
    let want = trainer.models.transformer.forward(&x, &t, &want, None).unwrap();
    let got = pipe.transformer.forward(&x, &t, &got, None).unwrap();
    let rel = max_rel_diff(&got, &want);
    eprintln!("velocity: pipeline vs trainer max relative difference {rel:.2e}");
    assert!(rel <= 1e-5);

    let mut req = GenerateRequest::new(captions[1].clone());
    req.width = 32;
    req.height = 32;
    req.frames = 5;
    req.steps = 3;
    req.seed = 9;
    let clip = pipe.generate(&req, &mut |_| {}, None).unwrap();
    assert_eq!(clip.frames.dims(), &[5, 32, 32, 3]);
    let v = clip.frames.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(v.iter().all(|x| x.is_finite() && (0.0..=1.0).contains(x)));
    assert!(clip.latents.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() > 0.0);
}

#[test]
fn stop_at_exports_a_stage_and_resume_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = support::tiny_config(support::write_tokenizer(tmp.path()));
    cfg.vae = Some(support::fixture_vae());
    let dev = Device::Cpu;
    let mut source = SyntheticLatents::new(3, [16, 2, 4, 4], support::captions(3), &dev).unwrap();
    let out = tmp.path().join("run");
    let staged = DitTrainConfig { stop_at: Some(2), ..cfg.clone() };
    let s = run_dit_training(&staged, &mut source, &out, false, &dev, &mut |_| {}).unwrap();
    assert_eq!(s.steps, 2);
    let model = s.exported.expect("a stop-at stage exports");
    WanPipeline::load(&WanModelDir::open(&model).unwrap(), &LoadOptions::default()).unwrap();
    let s = run_dit_training(&cfg, &mut source, &out, true, &dev, &mut |_| {}).unwrap();
    assert_eq!((s.steps, s.exported.is_some()), (cfg.steps, true));
}
