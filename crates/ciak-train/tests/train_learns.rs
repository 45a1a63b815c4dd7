//! Training works end to end on a learnable signal: each caption has its own latent pattern, the
//! loss falls well below that of predicting the mean velocity, and the model's velocity depends
//! on the caption (the text encoder and cross-attention learned something).
#[path = "train_support.rs"]
mod support;

use candle_core::{Device, Tensor};
use ciak_train::train::dit::{DitTrainer, SyntheticLatents};
use ciak_train::train::flow::TrainRng;

#[test]
fn loss_falls_and_the_caption_matters() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = support::tiny_config(support::write_tokenizer(tmp.path()));
    cfg.steps = 300;
    cfg.warmup_steps = 10;
    cfg.lr = 5e-3;
    cfg.batch_size = 4;
    cfg.caption_dropout = 0.1;
    let dev = Device::Cpu;
    let captions = support::captions(2);
    let mut source = SyntheticLatents::new(21, [16, 1, 4, 4], captions.clone(), &dev).unwrap();
    let mut trainer = DitTrainer::new(&cfg, &dev).unwrap();
    let mut losses = Vec::new();
    for _ in 0..cfg.steps {
        losses.push(trainer.train_step(&mut source).unwrap().loss);
    }
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
    let (first, last) = (mean(&losses[..15]), mean(&losses[losses.len() - 15..]));
    eprintln!("loss: first 15 steps {first:.4}, last 15 steps {last:.4}");
    // velocity targets have variance ~2 per element; knowing the pattern removes most of it
    assert!(first > 1.0, "{first}");
    assert!(last < 0.5 * first, "loss did not fall enough: {first} -> {last}");

    // at high noise the input says little about the clip, so the caption must decide the velocity
    let x = TrainRng::new(3).gaussian(&[2, 16, 1, 4, 4], &dev).unwrap();
    let t = Tensor::new(&[950f32, 950.0], &dev).unwrap();
    let ctx = trainer.models.encode_text(&captions).unwrap();
    let ctx_swapped = trainer.models.encode_text(&[captions[1].clone(), captions[0].clone()]).unwrap();
    let v = trainer.models.transformer.forward(&x, &t, &ctx, None).unwrap();
    let v_swapped = trainer.models.transformer.forward(&x, &t, &ctx_swapped, None).unwrap();
    let diff = (&v - &v_swapped).unwrap().sqr().unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap();
    eprintln!("mean squared velocity change when the captions are swapped: {diff:.4}");
    assert!(diff > 0.05, "the caption barely changes the prediction: {diff}");
}
