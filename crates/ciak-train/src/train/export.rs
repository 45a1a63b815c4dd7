//! Writes a trained model as a diffusers `WanPipeline` folder, the layout
//! `ciak_engine::model_dir::WanModelDir::open` and diffusers' `WanPipeline.from_pretrained` read:
//!
//! ```text
//! model_index.json
//! transformer/config.json, diffusion_pytorch_model.safetensors
//! text_encoder/config.json, model.safetensors
//! tokenizer/tokenizer.json, tokenizer_config.json (model_max_length = the training text length)
//! scheduler/scheduler_config.json (UniPC, flow prediction, the training shift)
//! vae/ (copied from the VAE trainer's folder)
//! ```
//!
//! The folder is written beside its destination and renamed into place.

use super::{Result, TrainError};
use candle_core::Tensor;
use ciak_models::wan::transformer::WanTransformerConfig;
use ciak_models::wan::umt5::Umt5Config;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;

/// The diffusers version whose file layout the exported configs follow.
pub const DIFFUSERS_VERSION: &str = "0.42.1";

/// What goes into an exported pipeline folder.
pub struct ExportSpec<'a> {
    pub transformer_cfg: &'a WanTransformerConfig,
    /// Diffusers keys (`blocks.0.attn1.to_q.weight`, ...).
    pub transformer_weights: &'a HashMap<String, Tensor>,
    pub text_cfg: &'a Umt5Config,
    /// transformers keys (`shared.weight`, `encoder.block.0...`).
    pub text_weights: &'a HashMap<String, Tensor>,
    pub tokenizer_json: &'a Path,
    /// Prompt length the model was trained with.
    pub text_len: usize,
    /// A VAE folder: `config.json` plus its safetensors (single or sharded with an index).
    pub vae_dir: &'a Path,
    /// Flow shift of the scheduler.
    pub shift: f64,
}

pub fn model_index_json() -> Value {
    json!({
        "_class_name": "WanPipeline",
        "_diffusers_version": DIFFUSERS_VERSION,
        "boundary_ratio": null,
        "expand_timesteps": false,
        "scheduler": ["diffusers", "UniPCMultistepScheduler"],
        "text_encoder": ["transformers", "UMT5EncoderModel"],
        "tokenizer": ["transformers", "AutoTokenizer"],
        "transformer": ["diffusers", "WanTransformer3DModel"],
        "transformer_2": [null, null],
        "vae": ["diffusers", "AutoencoderKLWan"]
    })
}

pub fn transformer_config_json(cfg: &WanTransformerConfig) -> Value {
    let mut json = json!({
        "_class_name": "WanTransformer3DModel",
        "_diffusers_version": DIFFUSERS_VERSION,
        "added_kv_proj_dim": cfg.added_kv_proj_dim,
        "attention_head_dim": cfg.attention_head_dim,
        "cross_attn_norm": cfg.cross_attn_norm,
        "eps": cfg.eps,
        "ffn_dim": cfg.ffn_dim,
        "freq_dim": cfg.freq_dim,
        "image_dim": cfg.image_dim,
        "in_channels": cfg.in_channels,
        "num_attention_heads": cfg.num_attention_heads,
        "num_layers": cfg.num_layers,
        "out_channels": cfg.out_channels,
        "patch_size": cfg.patch_size,
        "pos_embed_seq_len": cfg.pos_embed_seq_len,
        "qk_norm": cfg.qk_norm,
        "rope_max_seq_len": cfg.rope_max_seq_len,
        "text_dim": cfg.text_dim
    });
    // ciak's own key, written only when used, so a plain model's config is diffusers' byte for byte
    if cfg.position_channels > 0 {
        json["position_channels"] = json!(cfg.position_channels);
    }
    json
}

pub fn umt5_config_json(cfg: &Umt5Config) -> Value {
    json!({
        "architectures": ["UMT5EncoderModel"],
        "classifier_dropout": 0.0,
        "d_ff": cfg.d_ff,
        "d_kv": cfg.d_kv,
        "d_model": cfg.d_model,
        "decoder_start_token_id": 0,
        "dense_act_fn": cfg.dense_act_fn,
        "dropout_rate": 0.0,
        "dtype": "float32",
        "eos_token_id": 1,
        "feed_forward_proj": cfg.feed_forward_proj,
        "initializer_factor": 1.0,
        "is_encoder_decoder": true,
        "is_gated_act": cfg.is_gated_act,
        "layer_norm_epsilon": cfg.layer_norm_epsilon,
        "model_type": "umt5",
        "num_decoder_layers": cfg.num_layers,
        "num_heads": cfg.num_heads,
        "num_layers": cfg.num_layers,
        "pad_token_id": 0,
        "relative_attention_max_distance": cfg.relative_attention_max_distance,
        "relative_attention_num_buckets": cfg.relative_attention_num_buckets,
        "scalable_attention": true,
        "tie_word_embeddings": true,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "use_cache": true,
        "vocab_size": cfg.vocab_size
    })
}

/// A word-level tokenizer loads through transformers' generic fast tokenizer.
pub fn tokenizer_config_json(text_len: usize) -> Value {
    json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": text_len,
        "pad_token": "<pad>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "padding_side": "right",
        "truncation_side": "right"
    })
}

/// UniPC as Wan2.1 ships it (bh2, order 2, flow sigmas), with `shift`.
pub fn scheduler_config_json(shift: f64) -> Value {
    json!({
        "_class_name": "UniPCMultistepScheduler",
        "_diffusers_version": DIFFUSERS_VERSION,
        "beta_end": 0.02,
        "beta_schedule": "linear",
        "beta_start": 0.0001,
        "disable_corrector": [],
        "dynamic_thresholding_ratio": 0.995,
        "final_sigmas_type": "zero",
        "flow_shift": shift,
        "lower_order_final": true,
        "num_train_timesteps": 1000,
        "predict_x0": true,
        "prediction_type": "flow_prediction",
        "rescale_betas_zero_snr": false,
        "sample_max_value": 1.0,
        "shift_terminal": null,
        "sigma_max": null,
        "sigma_min": null,
        "solver_order": 2,
        "solver_p": null,
        "solver_type": "bh2",
        "steps_offset": 0,
        "thresholding": false,
        "time_shift_type": "exponential",
        "timestep_spacing": "linspace",
        "trained_betas": null,
        "use_beta_sigmas": false,
        "use_dynamic_shifting": false,
        "use_exponential_sigmas": false,
        "use_flow_sigmas": true,
        "use_karras_sigmas": false
    })
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| TrainError::Config { path: path.to_path_buf(), message: e.to_string() })?;
    std::fs::write(path, text + "\n").map_err(|e| TrainError::io(path, e))
}

fn mkdir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(|e| TrainError::io(path, e))
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to).map(|_| ()).map_err(|e| TrainError::io(from, e))
}

/// Copies a VAE folder's `config.json` and weights (single, or shards with their index).
fn copy_vae(from: &Path, to: &Path) -> Result<()> {
    let config = from.join("config.json");
    if !config.is_file() {
        return Err(TrainError::Config { path: config, message: "expected the VAE's config.json".into() });
    }
    copy(&config, &to.join("config.json"))?;
    let mut weights = 0;
    for entry in std::fs::read_dir(from).map_err(|e| TrainError::io(from, e))? {
        let path = entry.map_err(|e| TrainError::io(from, e))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        if name.ends_with(".safetensors") || name.ends_with(".safetensors.index.json") {
            copy(&path, &to.join(&name))?;
            weights += usize::from(name.ends_with(".safetensors"));
        }
    }
    if weights == 0 {
        return Err(TrainError::Config { path: from.to_path_buf(), message: "expected VAE weights (*.safetensors)".into() });
    }
    Ok(())
}

/// Writes the pipeline folder `out`, replacing an existing one only once the new one is complete.
pub fn export_pipeline(spec: &ExportSpec, out: &Path) -> Result<()> {
    let mut tmp_name = out.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    tmp_name.push(".tmp");
    let tmp = out.with_file_name(tmp_name);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    }
    for sub in ["transformer", "text_encoder", "tokenizer", "scheduler", "vae"] {
        mkdir(&tmp.join(sub))?;
    }
    write_json(&tmp.join("model_index.json"), &model_index_json())?;

    write_json(&tmp.join("transformer/config.json"), &transformer_config_json(spec.transformer_cfg))?;
    candle_core::safetensors::save(spec.transformer_weights, tmp.join("transformer/diffusion_pytorch_model.safetensors"))?;

    write_json(&tmp.join("text_encoder/config.json"), &umt5_config_json(spec.text_cfg))?;
    candle_core::safetensors::save(spec.text_weights, tmp.join("text_encoder/model.safetensors"))?;

    copy(spec.tokenizer_json, &tmp.join("tokenizer/tokenizer.json"))?;
    write_json(&tmp.join("tokenizer/tokenizer_config.json"), &tokenizer_config_json(spec.text_len))?;
    write_json(&tmp.join("scheduler/scheduler_config.json"), &scheduler_config_json(spec.shift))?;
    copy_vae(spec.vae_dir, &tmp.join("vae"))?;

    if out.exists() {
        std::fs::remove_dir_all(out).map_err(|e| TrainError::io(out, e))?;
    }
    std::fs::rename(&tmp, out).map_err(|e| TrainError::io(&tmp, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_read_back_as_the_engine_reads_them() {
        let cfg = WanTransformerConfig { num_layers: 3, text_dim: 64, ..WanTransformerConfig::wan21_t2v_1_3b() };
        let back: WanTransformerConfig = serde_json::from_value(transformer_config_json(&cfg)).unwrap();
        assert_eq!(back, cfg);
        let t5 = Umt5Config { vocab_size: 300, d_model: 64, num_layers: 2, ..Umt5Config::umt5_xxl() };
        let back: Umt5Config = serde_json::from_value(umt5_config_json(&t5)).unwrap();
        assert_eq!(back, t5);
        let sched: ciak_engine::scheduler::SchedulerConfig = serde_json::from_value(scheduler_config_json(2.5)).unwrap();
        assert_eq!(sched.kind(), ciak_engine::scheduler::SchedulerKind::UniPc);
        assert_eq!(sched.shift(), 2.5);
    }
}
