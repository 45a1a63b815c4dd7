//! The models train: built from a `VarMap`, the DiT, the UMT5 encoder and the VAE give finite,
//! non-zero gradients to every parameter (the differentiable ops of `ciak_models::wan::ops`
//! replace candle's fused kernels, which have no backward), and on the same weights the training
//! path and the fused inference path agree. f32 weights take the CPU custom ops; f64 weights take
//! the composed ops (the path CUDA training uses) wherever the models do not cast to f32.
#[path = "train_support.rs"]
mod support;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use ciak_models::wan::transformer::{WanTransformer3DModel, WanTransformerConfig};
use ciak_models::wan::umt5::{Umt5Config, Umt5EncoderModel};
use ciak_models::wan::vae::{AutoencoderKLWan, AutoencoderKLWanConfig};
use ciak_train::train::dit::DitTrainer;
use ciak_train::train::flow::TrainRng;
use std::collections::HashMap;

/// Sets every variable to N(0, std) from a seed: zero-initialised tables would hide bugs.
fn randomize(map: &VarMap, seed: u64, std: f64) {
    let data = map.data().lock().unwrap();
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    let mut rng = TrainRng::new(seed);
    for name in names {
        let var = &data[name];
        let t = (rng.gaussian(var.dims(), &Device::Cpu).unwrap() * std).unwrap();
        var.set(&t.to_dtype(var.dtype()).unwrap()).unwrap();
    }
}

/// Plain (non-`Var`) copies of the variables, for an inference model on the same weights.
fn plain_copies(map: &VarMap) -> HashMap<String, Tensor> {
    let data = map.data().lock().unwrap();
    data.iter().map(|(k, v)| (k.clone(), v.as_tensor().detach().copy().unwrap())).collect()
}

/// Every variable has a finite gradient that is not all zeros.
fn assert_all_gradients(what: &str, map: &VarMap, loss: &Tensor) {
    let grads = loss.backward().unwrap();
    let data = map.data().lock().unwrap();
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    assert!(!names.is_empty());
    for name in names {
        let g = grads.get(data[name].as_tensor()).unwrap_or_else(|| panic!("{what}: `{name}` got no gradient"));
        let abs = g.to_dtype(DType::F64).unwrap().abs().unwrap().flatten_all().unwrap();
        let max = abs.max(0).unwrap().to_scalar::<f64>().unwrap();
        let sum = abs.sum_all().unwrap().to_scalar::<f64>().unwrap();
        assert!(sum.is_finite(), "{what}: `{name}` has a non-finite gradient");
        assert!(max > 0.0, "{what}: `{name}` has an all-zero gradient");
    }
    eprintln!("{what}: {} parameters, all with finite non-zero gradients", data.len());
}

fn max_rel_diff(got: &Tensor, want: &Tensor) -> f64 {
    let (got, want) = (got.to_dtype(DType::F64).unwrap(), want.to_dtype(DType::F64).unwrap());
    let err = (got - &want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
    let scale = want.abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
    assert!(scale > 0.0);
    err / scale
}

fn transformer_case(dtype: DType) {
    let dev = Device::Cpu;
    let cfg = WanTransformerConfig {
        num_attention_heads: 2,
        attention_head_dim: 12,
        text_dim: 8,
        freq_dim: 16,
        ffn_dim: 32,
        num_layers: 2,
        in_channels: 4,
        out_channels: 4,
        ..WanTransformerConfig::wan21_t2v_1_3b()
    };
    let map = VarMap::new();
    let model = WanTransformer3DModel::new(&cfg, VarBuilder::from_varmap(&map, dtype, &dev)).unwrap();
    randomize(&map, 1, 0.3);
    let mut rng = TrainRng::new(2);
    let x = rng.gaussian(&[2, 4, 2, 4, 6], &dev).unwrap().to_dtype(dtype).unwrap();
    let ctx = rng.gaussian(&[2, 5, 8], &dev).unwrap().to_dtype(dtype).unwrap();
    let t = Tensor::new(&[999f32, 500.], &dev).unwrap();
    let out = model.forward(&x, &t, &ctx, None).unwrap();
    assert!(out.track_op(), "a Var model must build a gradient graph");

    let plain = WanTransformer3DModel::new(&cfg, VarBuilder::from_tensors(plain_copies(&map), dtype, &dev)).unwrap();
    let fused = plain.forward(&x, &t, &ctx, None).unwrap();
    assert!(!fused.track_op(), "loaded weights must take the fused inference path");
    let rel = max_rel_diff(&out, &fused);
    eprintln!("transformer {dtype:?}: training vs inference path max relative difference {rel:.2e}");
    assert!(rel <= 1e-5, "training vs inference path: {rel:e}");

    let r = rng.gaussian(out.dims(), &dev).unwrap().to_dtype(dtype).unwrap();
    assert_all_gradients("transformer", &map, &(out * r).unwrap().sum_all().unwrap());
}

#[test]
fn transformer_gradients_and_fused_path_agree() {
    transformer_case(DType::F32);
    transformer_case(DType::F64);
}

fn umt5_case(dtype: DType) {
    let dev = Device::Cpu;
    let cfg = Umt5Config {
        vocab_size: 50,
        d_model: 16,
        d_kv: 4,
        d_ff: 24,
        num_layers: 2,
        num_heads: 3,
        ..Umt5Config::umt5_xxl()
    };
    let map = VarMap::new();
    let model = Umt5EncoderModel::new(&cfg, VarBuilder::from_varmap(&map, dtype, &dev)).unwrap();
    randomize(&map, 3, 0.5);
    let ids = Tensor::new(&[[5u32, 9, 1, 0, 0, 0, 0, 0, 0], [7, 3, 22, 41, 8, 13, 2, 49, 1]], &dev).unwrap();
    let mask = Tensor::new(&[[1u32, 1, 1, 0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1, 1]], &dev).unwrap();
    let out = model.forward(&ids, &mask).unwrap();
    assert!(out.track_op());
    let plain = Umt5EncoderModel::new(&cfg, VarBuilder::from_tensors(plain_copies(&map), dtype, &dev)).unwrap();
    let fused = plain.forward(&ids, &mask).unwrap();
    assert!(!fused.track_op());
    let rel = max_rel_diff(&out, &fused);
    eprintln!("umt5 {dtype:?}: training vs inference path max relative difference {rel:.2e}");
    assert!(rel <= 1e-5, "training vs inference path: {rel:e}");

    let r = TrainRng::new(4).gaussian(out.dims(), &dev).unwrap().to_dtype(out.dtype()).unwrap();
    assert_all_gradients("umt5", &map, &(out * r).unwrap().sum_all().unwrap());
}

#[test]
fn umt5_gradients_and_fused_path_agree() {
    umt5_case(DType::F32);
    umt5_case(DType::F64);
}

#[test]
fn vae_gradients_and_fused_path_agree() {
    let dev = Device::Cpu;
    let cfg = AutoencoderKLWanConfig {
        base_dim: 4,
        z_dim: 4,
        dim_mult: vec![1, 2, 2],
        num_res_blocks: 1,
        temperal_downsample: vec![false, true],
        latents_mean: vec![0.0; 4],
        latents_std: vec![1.0; 4],
        scale_factor_temporal: Some(2),
        scale_factor_spatial: Some(4),
        ..AutoencoderKLWanConfig::wan21()
    };
    let map = VarMap::new();
    let vae = AutoencoderKLWan::new(&cfg, VarBuilder::from_varmap(&map, DType::F32, &dev)).unwrap();
    randomize(&map, 5, 0.2);
    // rebuilt after randomizing: the RMS-norm scales are derived from gamma when the model is built
    let vae_after = AutoencoderKLWan::new(&cfg, VarBuilder::from_varmap(&map, DType::F32, &dev)).unwrap();
    drop(vae);
    let x = (TrainRng::new(6).gaussian(&[1, 3, 5, 8, 8], &dev).unwrap() * 0.5).unwrap();
    let (mean, logvar) = vae_after.encode(&x).unwrap();
    let dec = vae_after.decode(&mean).unwrap();
    assert_eq!(dec.dims(), x.dims());
    let plain = AutoencoderKLWan::new(&cfg, VarBuilder::from_tensors(plain_copies(&map), DType::F32, &dev)).unwrap();
    let (mean_fused, _) = plain.encode(&x).unwrap();
    let dec_fused = plain.decode(&mean_fused).unwrap();
    let rel = max_rel_diff(&dec, &dec_fused);
    eprintln!("vae: training vs inference path max relative difference {rel:.2e}");
    assert!(rel <= 1e-5, "training vs inference path: {rel:e}");
    let r = TrainRng::new(7).gaussian(logvar.dims(), &dev).unwrap();
    let loss = ((dec - &x).unwrap().sqr().unwrap().sum_all().unwrap() + (logvar * r).unwrap().sum_all().unwrap()).unwrap();
    assert_all_gradients("vae", &map, &loss);
}

/// Test inputs for the trainer: two clips of `frames` latent frames and their noise, and the
/// random stream they came from, for more draws.
struct Inputs {
    x0: Tensor,
    noise: Tensor,
    rng: TrainRng,
}

/// A tiny trainer after one step on `frames`-frame synthetic clips of two captions, and inputs of
/// that shape.
fn trainer_after_one_step(frames: usize) -> (tempfile::TempDir, DitTrainer, Vec<String>, Inputs) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = support::tiny_config(support::write_tokenizer(dir.path()));
    let dev = Device::Cpu;
    let mut trainer = DitTrainer::new(&cfg, &dev).unwrap();
    let captions = support::captions(2);
    let mut source = ciak_train::train::dit::SyntheticLatents::new(1, [16, frames, 4, 4], captions.clone(), &dev).unwrap();
    trainer.train_step(&mut source).unwrap();
    let mut rng = TrainRng::new(8);
    let x0 = rng.gaussian(&[2, 16, frames, 4, 4], &dev).unwrap();
    let noise = rng.gaussian(&[2, 16, frames, 4, 4], &dev).unwrap();
    (dir, trainer, captions, Inputs { x0, noise, rng })
}

/// The trainer's own init zeroes the output head (as Wan does), so only the head learns on the
/// first step; from the second step every parameter gets a gradient through the real loss (with
/// the motion term of `temporal_weight`).
#[test]
fn trainer_loss_reaches_every_parameter_after_one_step() {
    let (_dir, trainer, captions, Inputs { x0, noise, .. }) = trainer_after_one_step(2);
    // with the motion term on (two latent frames), which adds to the plain loss
    let loss = trainer.models.loss_terms(&x0, &captions, &noise, &[0.3, 0.9], None, 0.5, &[], &[]).unwrap().mean(0.5).unwrap();
    let plain = trainer.models.loss_terms(&x0, &captions, &noise, &[0.3, 0.9], None, 0.0, &[], &[]).unwrap().mean(0.0).unwrap();
    let (with, without) = (loss.to_scalar::<f32>().unwrap(), plain.to_scalar::<f32>().unwrap());
    assert!(with > without, "motion term: {with} against the plain loss {without}");
    let grads = loss.backward().unwrap();
    for p in trainer.params() {
        let g = grads.get(p.var.as_tensor()).unwrap_or_else(|| panic!("`{}` got no gradient", p.name));
        let max = g.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(max.is_finite() && max > 0.0, "`{}`: max |grad| {max}", p.name);
    }
    eprintln!("trainer: {} parameters receive gradients", trainer.params().len());
}

/// With a clean first frame (`first_frame_share`), the first frame's noise reaches neither the
/// model's input nor the loss; without it, it does. Gradients still reach every parameter.
#[test]
fn clean_first_frame_takes_frame_zero_out_of_the_loss() {
    let (_dir, trainer, captions, Inputs { x0, noise, mut rng }) = trainer_after_one_step(3);
    let dev = Device::Cpu;
    let other_first = rng.gaussian(&[2, 16, 1, 4, 4], &dev).unwrap();
    let noise2 = Tensor::cat(&[&other_first, &noise.narrow(2, 1, 2).unwrap()], 2).unwrap();
    let loss = |noise: &Tensor, clean: &[bool]| {
        trainer.models.loss_terms(&x0, &captions, noise, &[0.7, 0.9], None, 0.5, clean, &[]).unwrap().mean(0.5).unwrap().to_scalar::<f32>().unwrap()
    };
    assert_eq!(loss(&noise, &[true, true]), loss(&noise2, &[true, true]));
    assert_ne!(loss(&noise, &[false, false]), loss(&noise2, &[false, false]));
    assert_ne!(loss(&noise, &[true, false]), loss(&noise2, &[true, false]));
    let l = trainer.models.loss_terms(&x0, &captions, &noise, &[0.7, 0.9], None, 0.5, &[true, true], &[]).unwrap().mean(0.5).unwrap();
    let grads = l.backward().unwrap();
    for p in trainer.params() {
        assert!(grads.get(p.var.as_tensor()).is_some(), "`{}` got no gradient", p.name);
    }
}

/// A sample started from the model's own sigma-1 answer (`own_start`) sees that answer instead
/// of the clip in its input: its loss then no longer depends on the clip through the input, only
/// through the target, and changes from the plain one. The extra forward pass is not trained
/// through, and every parameter still gets a gradient; an unflagged sample is the plain loss.
#[test]
fn own_start_trains_from_the_models_answer() {
    let (_dir, trainer, captions, Inputs { x0, noise, .. }) = trainer_after_one_step(2);
    let sigmas = [0.6, 0.9];
    let loss = |own: &[bool]| trainer.models.loss_terms(&x0, &captions, &noise, &sigmas, None, 0.0, &[], own).unwrap().mean(0.0).unwrap();
    let value = |own: &[bool]| loss(own).to_scalar::<f32>().unwrap();
    assert_eq!(value(&[false, false]), value(&[]));
    assert_ne!(value(&[true, false]), value(&[]));
    assert_ne!(value(&[true, true]), value(&[true, false]));
    let grads = loss(&[true, true]).backward().unwrap();
    for p in trainer.params() {
        assert!(grads.get(p.var.as_tensor()).is_some(), "`{}` got no gradient", p.name);
    }
}

/// candle's backprop as patched in vendor/candle-core (a node's first gradient is stored as it
/// comes instead of being added to zeros) against central differences, on a graph where a leaf
/// gets several contributions, a first one that is a transposed view, a broadcast one, and one
/// through each of the patched unary, reduction and matmul rules.
#[test]
fn backprop_matches_finite_differences() {
    let dev = Device::Cpu;
    let x0: Vec<f64> = (0..12).map(|i| ((i * 7 % 12) as f64 - 5.5) / 4.0).collect();
    let w = Tensor::from_vec((0..12).map(|i| (i as f64 - 6.0) / 5.0).collect::<Vec<_>>(), (4, 3), &dev).unwrap();
    let f = |x: &Tensor| -> Tensor {
        let t = x.t().unwrap(); // [4, 3], not contiguous: the first contribution to x's gradient
        let a = (t.sqr().unwrap() * &w).unwrap().sum_all().unwrap();
        let b = x.matmul(&w).unwrap().gelu().unwrap().sum_all().unwrap();
        let row = x.sum_keepdim(1).unwrap().broadcast_as(x.shape()).unwrap();
        let c = (row * x).unwrap().tanh().unwrap().sum_all().unwrap();
        let d = (x.exp().unwrap() - x.narrow(1, 1, 2).unwrap().sqr().unwrap().sum_all().unwrap().broadcast_as(x.shape()).unwrap())
            .unwrap()
            .sum_all()
            .unwrap();
        (((a + b).unwrap() + c).unwrap() + d).unwrap()
    };
    let x = candle_core::Var::from_vec(x0.clone(), (3, 4), &dev).unwrap();
    let grads = f(x.as_tensor()).backward().unwrap();
    let got: Vec<f64> = grads.get(x.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let eps = 1e-6;
    for i in 0..x0.len() {
        let at = |delta: f64| {
            let mut v = x0.clone();
            v[i] += delta;
            f(&Tensor::from_vec(v, (3, 4), &dev).unwrap()).to_scalar::<f64>().unwrap()
        };
        let want = (at(eps) - at(-eps)) / (2.0 * eps);
        assert!((got[i] - want).abs() < 1e-6 * (1.0 + want.abs()), "element {i}: backprop {} against {want}", got[i]);
    }
}
