//! A transformer checkpoint with the original Wan key names (as in Wan-AI/Wan2.1-T2V-1.3B, with
//! ComfyUI's `model.diffusion_model.` prefix) loads through the one rename table and gives the
//! same output as the diffusers-named checkpoint it was made from.
mod common;
use candle_core::{DType, Device, Tensor};
use ciak_engine::loader::{is_original_wan_transformer, load_transformer_varbuilder, read_config, Checkpoint};
use ciak_models::wan::transformer::{WanTransformer3DModel, WanTransformerConfig};
use common::{assert_close, fixture, get, load_io};
use std::collections::HashMap;

/// diffusers name -> original Wan name, written out independently of the table under test.
fn to_original(name: &str) -> String {
    let mut n = name.to_string();
    for (d, o) in [
        ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
        ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
        ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
        ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
        ("condition_embedder.time_proj", "time_projection.1"),
        ("proj_out", "head.head"),
        ("ffn.net.0.proj", "ffn.0"),
        ("ffn.net.2", "ffn.2"),
        (".norm2.", ".norm3."),
        ("attn1.to_out.0", "self_attn.o"),
        ("attn2.to_out.0", "cross_attn.o"),
        ("attn1.to_", "self_attn."),
        ("attn2.to_", "cross_attn."),
        ("attn1.norm_", "self_attn.norm_"),
        ("attn2.norm_", "cross_attn.norm_"),
    ] {
        n = n.replace(d, o);
    }
    n = if n == "scale_shift_table" { "head.modulation".into() } else { n.replace("scale_shift_table", "modulation") };
    format!("model.diffusion_model.{n}")
}

#[test]
fn original_wan_names_load_and_match_diffusers() {
    let dir = fixture("tiny-wan/transformer");
    let cfg: WanTransformerConfig = read_config(&dir).unwrap();
    let names = Checkpoint::open(&dir).unwrap().names();
    assert!(!is_original_wan_transformer(&names), "diffusers names must not be taken for original ones");

    let weights = candle_core::safetensors::load(dir.join("diffusion_pytorch_model-00001-of-00002.safetensors"), &Device::Cpu)
        .unwrap()
        .into_iter()
        .chain(candle_core::safetensors::load(dir.join("diffusion_pytorch_model-00002-of-00002.safetensors"), &Device::Cpu).unwrap())
        .map(|(k, v)| (to_original(&k), v))
        .collect::<HashMap<String, Tensor>>();
    assert_eq!(weights.len(), names.len());
    assert!(weights.contains_key("model.diffusion_model.blocks.0.self_attn.q.weight"));
    assert!(weights.contains_key("model.diffusion_model.blocks.1.norm3.bias"));
    let tmp = tempfile::tempdir().unwrap();
    candle_core::safetensors::save(&weights, tmp.path().join("wan2.1_t2v_tiny.safetensors")).unwrap();

    let vb = load_transformer_varbuilder(tmp.path(), DType::F32, &Device::Cpu).unwrap();
    let model = WanTransformer3DModel::new(&cfg, vb).unwrap();
    let io = load_io("transformer_t2v");
    let out = model
        .forward(get(&io, "hidden_states"), get(&io, "timestep"), get(&io, "encoder_hidden_states"), None)
        .unwrap();
    assert_close("original-named checkpoint", &out, get(&io, "output"), 1e-5);
}
