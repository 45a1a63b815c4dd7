//! The real Wan2.1 transformers built without weights: every tensor the model asks for must be
//! exactly the tensor diffusers has (name, shape, count), and the presets must equal the configs
//! diffusers writes. Key lists: tests/fixtures/keys/*.json (made on the meta device).
mod common;

use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use ciak_models::wan::transformer::{WanTransformer3DModel, WanTransformerConfig};
use ciak_models::wan::vae::{AutoencoderKLWan, AutoencoderKLWanConfig};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

#[derive(serde::Deserialize)]
struct KeyList {
    config: serde_json::Value,
    num_parameters: u64,
    tensors: BTreeMap<String, Vec<usize>>,
}

fn key_list(name: &str) -> KeyList {
    let path = common::fixture(&format!("keys/{name}"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("cannot parse {}: {e}", path.display()))
}

/// One request of the model to its VarBuilder.
#[derive(Debug, Clone)]
struct Request {
    name: String,
    shape: Vec<usize>,
    dtype: DType,
}

/// Records what the model asks for and hands back a broadcast zero, so nothing is allocated.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Request>>>);

impl SimpleBackend for Recorder {
    fn get(&self, s: Shape, name: &str, _: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        self.0.lock().unwrap().push(Request { name: name.to_string(), shape: s.dims().to_vec(), dtype });
        Tensor::zeros((), dtype, dev)?.broadcast_as(s)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> Result<Tensor> {
        candle_core::bail!("`{name}` requested without a shape")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

/// diffusers `_keep_in_fp32_modules` of WanTransformer3DModel, matched against whole key components.
const KEEP_IN_FP32: [&str; 5] = ["time_embedder", "scale_shift_table", "norm1", "norm2", "norm3"];

fn check_against(keys_file: &str, preset: WanTransformerConfig) {
    let keys = key_list(keys_file);
    let parsed: WanTransformerConfig = serde_json::from_value(keys.config.clone()).expect("config of the key list");
    assert_eq!(parsed, preset, "{keys_file}: the config diffusers writes differs from the preset");

    let recorder = Recorder::default();
    let vb = VarBuilder::from_backend(Box::new(recorder.clone()), DType::BF16, Device::Cpu);
    WanTransformer3DModel::new(&preset, vb).expect("build the real-size transformer");
    let requests = recorder.0.lock().unwrap().clone();
    let count = compare_with(keys_file, &keys, &requests);

    // with bf16 weights, exactly the tensors diffusers keeps in fp32 must be requested as f32
    for r in &requests {
        let keep = r.name.split('.').any(|part| KEEP_IN_FP32.contains(&part));
        let want = if keep { DType::F32 } else { DType::BF16 };
        assert_eq!(r.dtype, want, "{keys_file}: dtype of `{}`", r.name);
    }
    eprintln!("{keys_file}: {} tensors, {count} parameters, names, shapes and dtypes as diffusers", requests.len());
}

/// Asserts the requests are exactly diffusers' tensors (names, shapes, count); returns the count.
fn compare_with(keys_file: &str, keys: &KeyList, requests: &[Request]) -> u64 {
    let mut asked = BTreeMap::new();
    for r in requests {
        assert!(asked.insert(r.name.clone(), r.shape.clone()).is_none(), "`{}` requested twice", r.name);
    }
    let ours: BTreeSet<&String> = asked.keys().collect();
    let theirs: BTreeSet<&String> = keys.tensors.keys().collect();
    let missing: Vec<_> = theirs.difference(&ours).collect();
    let extra: Vec<_> = ours.difference(&theirs).collect();
    assert!(missing.is_empty() && extra.is_empty(), "{keys_file}: never requested {missing:?}; not in diffusers {extra:?}");
    for (name, shape) in &asked {
        assert_eq!(shape, &keys.tensors[name], "{keys_file}: shape of `{name}`");
    }
    let count: u64 = asked.values().map(|s| s.iter().product::<usize>() as u64).sum();
    assert_eq!(count, keys.num_parameters, "{keys_file}: parameter count");
    count
}

#[test]
fn wan21_vae_matches_diffusers_keys() {
    let keys = key_list("wan21_vae.json");
    let parsed: AutoencoderKLWanConfig = serde_json::from_value(keys.config.clone()).expect("config of the key list");
    let preset = AutoencoderKLWanConfig::wan21();
    assert_eq!(parsed, preset, "the VAE config diffusers writes differs from the preset");
    let recorder = Recorder::default();
    let vb = VarBuilder::from_backend(Box::new(recorder.clone()), DType::F32, Device::Cpu);
    AutoencoderKLWan::new(&preset, vb).expect("build the real-size VAE");
    let requests = recorder.0.lock().unwrap().clone();
    let count = compare_with("wan21_vae.json", &keys, &requests);
    eprintln!("wan21_vae.json: {} tensors, {count} parameters as diffusers", requests.len());
}

#[test]
fn wan21_t2v_1_3b_matches_diffusers_keys() {
    check_against("wan21_t2v_1_3b_transformer.json", WanTransformerConfig::wan21_t2v_1_3b());
}

#[test]
fn wan21_i2v_14b_matches_diffusers_keys() {
    check_against("wan21_i2v_14b_transformer.json", WanTransformerConfig::wan21_i2v_14b_480p());
}
