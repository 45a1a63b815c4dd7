//! The loader on small checkpoints made here: shards, dtypes, the HF cache, and every bad input.
use candle_core::{DType, Device, Tensor};
use ciak_engine::error::CiakError;
use ciak_engine::loader::{load_varbuilder, read_config, safetensors_files, Checkpoint};
use ciak_engine::model_dir::{hf_snapshot, resolve_model_path, WanModelDir};
use std::collections::HashMap;
use std::path::Path;

fn save(path: &Path, tensors: &[(&str, Tensor)]) {
    let map: HashMap<String, Tensor> = tensors.iter().map(|(k, t)| (k.to_string(), t.clone())).collect();
    candle_core::safetensors::save(&map, path).unwrap();
}

fn arange(n: usize, dims: &[usize]) -> Tensor {
    Tensor::arange(0f32, n as f32, &Device::Cpu).unwrap().reshape(dims).unwrap()
}

/// Two shards and their index, as diffusers' save_pretrained writes them.
fn sharded(dir: &Path) {
    save(&dir.join("model-00001-of-00002.safetensors"), &[("a.weight", arange(4, &[2, 2]))]);
    save(&dir.join("model-00002-of-00002.safetensors"), &[("b.bias", arange(3, &[3]).to_dtype(DType::BF16).unwrap())]);
    let index = r#"{"metadata": {"total_size": 22}, "weight_map": {
        "a.weight": "model-00001-of-00002.safetensors", "b.bias": "model-00002-of-00002.safetensors"}}"#;
    std::fs::write(dir.join("model.safetensors.index.json"), index).unwrap();
}

#[test]
fn sharded_checkpoint_loads_through_its_index_in_any_dtype() {
    let dir = tempfile::tempdir().unwrap();
    sharded(dir.path());
    assert_eq!(safetensors_files(dir.path()).unwrap().len(), 2);
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        let vb = load_varbuilder(dir.path(), dtype, &Device::Cpu).unwrap();
        let a = vb.get((2, 2), "a.weight").unwrap();
        let b = vb.pp("b").get(3, "bias").unwrap();
        assert_eq!((a.dtype(), b.dtype()), (dtype, dtype));
        let a: Vec<f32> = a.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = b.to_dtype(DType::F32).unwrap().to_vec1().unwrap();
        assert_eq!((a, b), (vec![0., 1., 2., 3.], vec![0., 1., 2.]));
    }
}

#[test]
fn wrong_shape_names_the_tensor_and_both_shapes() {
    let dir = tempfile::tempdir().unwrap();
    sharded(dir.path());
    let vb = load_varbuilder(dir.path(), DType::F32, &Device::Cpu).unwrap();
    let err = vb.get((2, 3), "a.weight").unwrap_err().to_string();
    assert!(err.contains("a.weight") && err.contains("[2, 2]") && err.contains("[2, 3]"), "{err}");
    let err = vb.get(5, "missing.weight").unwrap_err().to_string();
    assert!(err.contains("missing.weight") && err.contains("not found"), "{err}");
}

#[test]
fn missing_shard_names_the_shard_and_the_index() {
    let dir = tempfile::tempdir().unwrap();
    sharded(dir.path());
    std::fs::remove_file(dir.path().join("model-00002-of-00002.safetensors")).unwrap();
    let err = load_varbuilder(dir.path(), DType::F32, &Device::Cpu).err().unwrap();
    assert!(matches!(err, CiakError::MissingFile { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("model-00002-of-00002.safetensors") && msg.contains("index.json"), "{msg}");
}

#[test]
fn truncated_and_corrupt_files_are_reported_with_their_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    save(&path, &[("w", arange(64, &[8, 8]))]);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
    let err = load_varbuilder(dir.path(), DType::F32, &Device::Cpu).err().unwrap();
    assert!(matches!(err, CiakError::CorruptWeights { .. }), "{err:?}");
    assert!(err.to_string().contains("model.safetensors"), "{err}");

    for garbage in [&b"not a safetensors file at all"[..], &[0xff; 8][..], &[][..]] {
        std::fs::write(&path, garbage).unwrap();
        let err = load_varbuilder(dir.path(), DType::F32, &Device::Cpu).err().unwrap();
        assert!(matches!(err, CiakError::CorruptWeights { .. }), "{err:?}");
    }
}

#[test]
fn empty_folder_lists_what_was_looked_for() {
    let dir = tempfile::tempdir().unwrap();
    let err = load_varbuilder(dir.path(), DType::F32, &Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("*.safetensors") && err.contains("index.json"), "{err}");
    let err = load_varbuilder(&dir.path().join("nope"), DType::F32, &Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("nope"), "{err}");
}

#[test]
fn renames_let_models_ask_for_diffusers_names() {
    let dir = tempfile::tempdir().unwrap();
    save(&dir.path().join("m.safetensors"), &[("head.head.weight", arange(4, &[2, 2]))]);
    let ckpt = Checkpoint::open(dir.path()).unwrap().with_renames(|k| k.replace("head.head", "proj_out"));
    let vb = ciak_engine::loader::varbuilder(ckpt, DType::F32, &Device::Cpu);
    assert!(vb.contains_tensor("proj_out.weight"));
    assert_eq!(vb.get((2, 2), "proj_out.weight").unwrap().dims(), &[2, 2]);
}

#[derive(Debug, serde::Deserialize)]
#[allow(dead_code)]
struct SmallConfig {
    num_layers: usize,
    eps: f64,
}

#[test]
fn config_with_a_missing_field_names_the_field_and_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), r#"{"eps": 1e-6}"#).unwrap();
    let err = read_config::<SmallConfig>(dir.path()).unwrap_err().to_string();
    assert!(err.contains("num_layers") && err.contains("config.json"), "{err}");
    std::fs::write(dir.path().join("config.json"), "{ not json").unwrap();
    assert!(read_config::<SmallConfig>(dir.path()).is_err());
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    let err = read_config::<SmallConfig>(dir.path()).unwrap_err().to_string();
    assert!(err.contains("config.json"), "{err}");
}

fn write_pipeline(root: &Path, scheduler_class: &str) {
    let index = format!(
        r#"{{"_class_name": "WanPipeline", "_diffusers_version": "0.42.1",
        "scheduler": ["diffusers", "{scheduler_class}"], "text_encoder": ["transformers", "UMT5EncoderModel"],
        "tokenizer": ["transformers", "T5TokenizerFast"], "transformer": ["diffusers", "WanTransformer3DModel"],
        "vae": ["diffusers", "AutoencoderKLWan"]}}"#
    );
    std::fs::write(root.join("model_index.json"), index).unwrap();
    for (dir, file) in [
        ("transformer", "config.json"),
        ("vae", "config.json"),
        ("text_encoder", "config.json"),
        ("tokenizer", "tokenizer.json"),
        ("scheduler", "scheduler_config.json"),
    ] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
        std::fs::write(root.join(dir).join(file), "{}").unwrap();
    }
}

#[test]
fn pipeline_folder_checks_its_index_and_components() {
    let dir = tempfile::tempdir().unwrap();
    let err = WanModelDir::open(dir.path()).unwrap_err().to_string();
    assert!(err.contains("model_index.json"), "{err}");

    write_pipeline(dir.path(), "UniPCMultistepScheduler");
    let model = WanModelDir::open(dir.path()).unwrap();
    assert_eq!(model.tokenizer_json(), dir.path().join("tokenizer/tokenizer.json"));

    std::fs::remove_file(dir.path().join("tokenizer/tokenizer.json")).unwrap();
    let err = WanModelDir::open(dir.path()).unwrap_err().to_string();
    assert!(err.contains("tokenizer") && err.contains("tokenizer.json"), "{err}");

    write_pipeline(dir.path(), "DDIMScheduler");
    let err = WanModelDir::open(dir.path()).unwrap_err().to_string();
    assert!(err.contains("scheduler") && err.contains("DDIMScheduler"), "{err}");
}

#[test]
fn hugging_face_cache_layout_resolves_offline() {
    let cache = tempfile::tempdir().unwrap();
    let repo = cache.path().join("models--Wan-AI--Wan2.1-T2V-1.3B-Diffusers");
    let old = repo.join("snapshots/0000old");
    let main = repo.join("snapshots/abc123");
    std::fs::create_dir_all(&old).unwrap();
    std::fs::create_dir_all(&main).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "abc123\n").unwrap();
    assert_eq!(hf_snapshot(cache.path(), "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"), Some(main.clone()));
    assert_eq!(hf_snapshot(cache.path(), "Wan-AI/other"), None);

    // The only test that touches the environment, so no other test races it.
    std::env::set_var("HF_HUB_CACHE", cache.path());
    assert_eq!(resolve_model_path("Wan-AI/Wan2.1-T2V-1.3B-Diffusers").unwrap(), main);
    let err = resolve_model_path("Wan-AI/Wan2.1-T2V-14B-Diffusers").unwrap_err().to_string();
    assert!(err.contains("models--Wan-AI--Wan2.1-T2V-14B-Diffusers"), "{err}");
    assert!(err.contains(&cache.path().display().to_string()), "{err}");
}
