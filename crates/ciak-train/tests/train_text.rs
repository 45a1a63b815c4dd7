//! Text-encoder pretraining: it learns to read the scene from held-out captions, and a DiT run
//! with it keeps the encoder frozen through steps, checkpoints and resumes.
#[path = "train_support.rs"]
mod support;

use candle_core::{Device, Tensor};
use ciak_train::train::dit::{DitTrainer, SyntheticLatents};
use ciak_train::train::text::{pretrain_text_encoder, SceneLabels, TextPretrainConfig, TokenLabels, TokenWords};
use ciak_train::train::{run_dit_training, DitTrainConfig, TrainEvent};
use ciak_train::world::{Background, Color, Shape};
use ciak_train::{sample, SamplerConfig, Split};
use std::collections::HashMap;

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()).collect()
}

fn text_weights(w: &HashMap<String, Tensor>) -> Vec<(String, Vec<u32>)> {
    let mut v: Vec<_> = w.iter().filter(|(k, _)| k.starts_with("text_encoder.")).map(|(k, t)| (k.clone(), bits(t))).collect();
    v.sort();
    v
}

fn accuracy(report: &ciak_train::train::text::TextPretrainReport, head: &str) -> f64 {
    report.accuracy.iter().find(|(n, _)| n == head).unwrap_or_else(|| panic!("no head {head}")).1
}

#[test]
fn labels_follow_the_scene() {
    let scene = sample(3, 0, &SamplerConfig::default(), Split::Train).scene;
    let l = SceneLabels::of(&scene);
    assert_eq!(l.objects.len(), scene.objects.len().min(3));
    let first = Color::ALL.iter().position(|c| *c == scene.background.colors()[0]).unwrap() as u32;
    match scene.background {
        Background::Checkerboard { .. } => assert!(l.background_a <= l.background_b),
        Background::Plain { .. } => assert_eq!((l.background_a, l.background_b), (first, 10)),
        _ => assert_eq!(l.background_a, first),
    }
}

/// The per-token labels: a colour word's role in the scene, the colour of what a shape noun, "sky"
/// or a ground noun names; a word that could mean two things gets no label.
#[test]
fn token_labels_bind_colour_words_to_roles_and_nouns_to_colours() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = DitTrainConfig { text_len: 48, ..support::tiny_config(support::write_tokenizer(tmp.path())) };
    let models = DitTrainer::new(&cfg, &Device::Cpu).unwrap().models;
    let words = TokenWords::of(&models).unwrap();
    let labels = |scene: &ciak_train::world::Scene, caption: &str| {
        let t = models.text_encoder.tokenize(&[caption.to_string()]).unwrap();
        let ids = t.input_ids.get(0).unwrap().to_vec1::<u32>().unwrap();
        TokenLabels::of(scene, &ids, t.prompts[0].seq_len, &words)
    };
    let mut scene = sample(3, 0, &SamplerConfig::default(), Split::Train).scene;
    scene.objects.truncate(1);
    (scene.objects[0].color, scene.objects[0].shape) = (Color::Red, Shape::Circle);
    scene.background = Background::SkyGround { sky: Color::Blue, ground: Color::Green, horizon: 0.5 };
    // a0 red1 ball2 moves3 right4 under5 a6 blue7 sky8 over9 green10 grass11 </s>12; red 0, green 3, blue 5
    let l = labels(&scene, "a red ball moves right under a blue sky over green grass");
    assert_eq!(l.roles, vec![(1, 0), (7, 2), (10, 3)], "object, sky, ground");
    assert_eq!(l.colours, vec![(2, 0), (8, 5), (11, 3)]);

    // red is the ball's and the sky's: neither red word is labelled, the nouns still are
    scene.background = Background::SkyGround { sky: Color::Red, ground: Color::Green, horizon: 0.5 };
    let l = labels(&scene, "a red ball moves right under a red sky over green grass");
    assert_eq!(l.roles, vec![(10, 3)]);
    assert_eq!(l.colours, vec![(2, 0), (8, 0), (11, 3)]);

    // two balls of two colours: "ball" names neither; "sky" means nothing on a plain background
    let mut second = scene.objects[0];
    second.color = Color::Blue;
    scene.objects.push(second);
    scene.background = Background::Plain { color: Color::Green };
    // a0 red1 ball2 and3 a4 blue5 ball6 on7 a8 green9 background10
    let l = labels(&scene, "a red ball and a blue ball on a green background, no sky");
    assert_eq!(l.roles, vec![(1, 0), (5, 0), (9, 1)]);
    assert_eq!(l.colours, vec![]);
}

/// The token heads learn what they are asked on held-out captions, and a rerun on an `init_from`
/// folder pretrains that folder's encoder (its report says so), where a plain `init_from` keeps it.
#[test]
fn token_heads_learn_roles_and_rerun_on_an_init_from_encoder() {
    let tmp = tempfile::tempdir().unwrap();
    let base = DitTrainConfig { text_len: 48, ..support::tiny_config(support::write_tokenizer(tmp.path())) };
    let mut cfg = DitTrainConfig { text_local_attention: 4.0, ..base };
    (cfg.text_encoder.d_model, cfg.text_encoder.d_kv, cfg.text_encoder.d_ff) = (64, 16, 128);
    let first = DitTrainer::new(&cfg, &Device::Cpu).unwrap();
    let model = tmp.path().join("model");
    first.export(&support::fixture_vae(), &model).unwrap();

    let pre = TextPretrainConfig { steps: 400, batch_size: 16, lr: 3e-3, warmup_steps: 20, eval_captions: 64, token_weight: 1.0, rerun_on_init: false };
    let keep = DitTrainConfig { init_from: Some(model.clone()), text_pretrain: Some(pre.clone()), ..cfg.clone() };
    let kept = DitTrainer::new(&keep, &Device::Cpu).unwrap();
    assert!(kept.text_report.is_none());
    assert_eq!(text_weights(&first.weights()), text_weights(&kept.weights()), "the folder's encoder as it is");

    let rerun = DitTrainConfig { text_pretrain: Some(TextPretrainConfig { rerun_on_init: true, ..pre }), ..keep };
    let t = DitTrainer::new(&rerun, &Device::Cpu).unwrap();
    let report = t.text_report.as_ref().expect("the rerun's report");
    eprintln!("{}", report.summary());
    assert!(report.summary().contains("token role"), "{}", report.summary());
    assert_ne!(text_weights(&first.weights()), text_weights(&t.weights()), "the rerun moved the encoder");
    assert!(accuracy(report, "token_role") > 0.95, "{:?}", report.accuracy);
    assert!(accuracy(report, "token_colour") > 0.9, "{:?}", report.accuracy);
    // the DiT starts from the folder all the same
    let name = "transformer.proj_out.weight";
    assert_eq!(bits(&first.weights()[name]), bits(&t.weights()[name]));

    let bad = TextPretrainConfig { token_weight: -1.0, ..Default::default() };
    let err = bad.validate().unwrap_err();
    assert!(err.contains("expected text_pretrain.token_weight >= 0, got -1"), "{err}");
}

/// A width-32 encoder learns the background and the first object's attributes well above chance
/// (10 colours, 4 shapes, 13 motions) on scenes and phrasings it never saw.
#[test]
fn pretraining_reads_held_out_captions() {
    let tmp = tempfile::tempdir().unwrap();
    let base = DitTrainConfig { text_len: 48, ..support::tiny_config(support::write_tokenizer(tmp.path())) };
    let mut cfg = DitTrainConfig { text_local_attention: 4.0, ..base.clone() };
    (cfg.text_encoder.d_model, cfg.text_encoder.d_kv, cfg.text_encoder.d_ff) = (64, 16, 128);
    let trainer = DitTrainer::new(&cfg, &Device::Cpu).unwrap();
    let pre = TextPretrainConfig { steps: 200, batch_size: 16, lr: 3e-3, warmup_steps: 20, eval_captions: 128, ..Default::default() };
    let report = pretrain_text_encoder(&trainer.models, &pre, 5, &Default::default(), &Device::Cpu).unwrap();
    eprintln!("{}", report.summary());
    eprintln!("{:?}", report.accuracy);
    assert!(report.last_loss.is_finite());
    assert!(accuracy(&report, "background_kind") > 0.9, "{:?}", report.accuracy);
    assert!(accuracy(&report, "background_a") > 0.25, "{:?}", report.accuracy);
    assert!(accuracy(&report, "object_shape") > 0.4, "{:?}", report.accuracy);
    assert!(accuracy(&report, "object_motion") > 0.25, "{:?}", report.accuracy);
}

/// With transformers' init the relative-position biases are too small to matter, so each output
/// token is its own word plus the same average of all words: swapping the colours of the ball and
/// the background leaves the "ball" and "background" tokens almost unchanged. Heads that start on
/// their neighbours make those tokens carry their colour.
#[test]
fn local_attention_init_binds_words_to_their_neighbours() {
    let tmp = tempfile::tempdir().unwrap();
    let base = DitTrainConfig { text_len: 48, ..support::tiny_config(support::write_tokenizer(tmp.path())) };
    let a = "a red ball moves right on a blue background".to_string();
    let b = "a blue ball moves right on a red background".to_string();
    // positions: a=0 red=1 ball=2 ... background=8
    let swap_change = |local: f64| {
        let t = DitTrainer::new(&DitTrainConfig { text_local_attention: local, ..base.clone() }, &Device::Cpu).unwrap();
        let e = t.models.encode_text(&[a.clone(), b.clone()]).unwrap();
        let d = (e.get(0).unwrap() - e.get(1).unwrap()).unwrap().sqr().unwrap().mean(1).unwrap().to_vec1::<f32>().unwrap();
        let norm = e.get(0).unwrap().sqr().unwrap().mean(1).unwrap().to_vec1::<f32>().unwrap();
        (d[2] / norm[2], d[8] / norm[8])
    };
    let (plain, local) = (swap_change(0.0), swap_change(4.0));
    eprintln!("relative change of the ball / background tokens when the colours swap: {plain:?} vs {local:?}");
    assert!(local.0 > 10.0 * plain.0 && local.1 > 10.0 * plain.1, "{plain:?} vs {local:?}");
    assert!(local.0 > 0.05 && local.1 > 0.05, "{local:?}");
}

#[test]
fn a_pretrained_text_encoder_stays_frozen_through_the_dit_run() {
    let tmp = tempfile::tempdir().unwrap();
    let base = support::tiny_config(support::write_tokenizer(tmp.path()));
    let pre = TextPretrainConfig { steps: 3, batch_size: 4, lr: 1e-3, warmup_steps: 1, eval_captions: 4, ..Default::default() };
    let cfg = DitTrainConfig { text_pretrain: Some(pre), ..base.clone() };
    let dev = Device::Cpu;
    let source = || SyntheticLatents::new(5, [16, 2, 4, 6], support::captions(3), &dev).unwrap();

    // pretraining changes the encoder from its init; the DiT steps then leave it alone
    let fresh = DitTrainer::new(&base, &dev).unwrap();
    let mut t = DitTrainer::new(&cfg, &dev).unwrap();
    assert!(t.text_report.is_some());
    assert_ne!(text_weights(&fresh.weights()), text_weights(&t.weights()), "pretraining moved the encoder");
    // bits now: the weights share storage with the parameters the optimizer updates in place
    let before: HashMap<String, Vec<u32>> = t.weights().iter().map(|(k, v)| (k.clone(), bits(v))).collect();
    let text_before = text_weights(&t.weights());
    let mut src = source();
    for _ in 0..2 {
        t.train_step(&mut src).unwrap();
    }
    let after = t.weights();
    assert_eq!(text_before, text_weights(&after), "the encoder is frozen");
    assert_eq!(text_weights(&after), text_weights(&t.ema_weights()), "its EMA is itself");
    let changed = before.iter().filter(|(k, _)| k.starts_with("transformer.")).any(|(k, v)| *v != bits(&after[k]));
    assert!(changed, "the DiT trains");
    assert!(t.params().iter().all(|p| p.name.starts_with("transformer.")), "only the DiT is optimised");

    // a run writes the report, checkpoints the frozen encoder and resumes with it
    let out = tmp.path().join("run");
    let mut events = Vec::new();
    run_dit_training(&cfg, &mut source(), &out, false, &dev, &mut |e| events.push(e.clone())).unwrap();
    assert!(events.iter().any(|e| matches!(e, TrainEvent::TextPretrained { .. })));
    assert!(out.join("text_pretrain.json").is_file());
    let saved = candle_core::safetensors::load(out.join("checkpoint/model.safetensors"), &dev).unwrap();
    let resumed = DitTrainer::resume(&cfg, &out.join("checkpoint"), &mut source(), &dev).unwrap();
    assert!(resumed.text_report.is_none(), "a resume does not pretrain again");
    assert_eq!(text_weights(&saved), text_weights(&resumed.weights()));
    // the checkpoint's encoder is the pretrained one, not a fresh init
    assert_ne!(text_weights(&saved), text_weights(&fresh.weights()));
    let err = DitTrainer::resume(&base, &out.join("checkpoint"), &mut source(), &dev).err().unwrap().to_string();
    assert!(err.contains("a pretrained, frozen text encoder in the checkpoint, a jointly trained"), "{err}");

    // bad settings are refused before any work
    let bad = DitTrainConfig {
        text_pretrain: Some(TextPretrainConfig { steps: 0, batch_size: 4, lr: 1e-3, warmup_steps: 1, eval_captions: 4, ..Default::default() }),
        ..base
    };
    let err = DitTrainer::new(&bad, &dev).err().unwrap().to_string();
    assert!(err.contains("expected text_pretrain.steps"), "{err}");
}
