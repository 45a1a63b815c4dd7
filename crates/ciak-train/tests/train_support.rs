//! Shared by the trainer tests (`#[path]`-included): a word-level tokenizer, captions, tiny configs.
#![allow(dead_code)]
use ciak_train::train::dit::{DitArch, TextArch};
use ciak_train::train::DitTrainConfig;
use std::path::{Path, PathBuf};

/// Writes the built-in word-level tokenizer into `dir` and returns the tokenizer.json path.
pub fn write_tokenizer(dir: &Path) -> PathBuf {
    let path = dir.join("tokenizer.json");
    ciak_train::tokenizer::write_tokenizer_json(&path).unwrap();
    path
}

/// `n` distinct captions made of words the tokenizer knows.
pub fn captions(n: usize) -> Vec<String> {
    let words: Vec<String> = ciak_train::vocabulary().into_iter().filter(|w| w.chars().all(|c| c.is_ascii_alphabetic())).collect();
    assert!(words.len() >= 3 * n, "vocabulary too small: {}", words.len());
    (0..n).map(|i| format!("a {} {} {}", words[3 * i], words[3 * i + 1], words[3 * i + 2])).collect()
}

/// The parity fixtures' tiny VAE (z_dim 16, 8x spatial, 4x temporal).
pub fn fixture_vae() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-wan/vae");
    assert!(path.join("config.json").is_file(), "missing fixture {} (see tests/fixtures/README.md)", path.display());
    path
}

/// A DiT of 2 layers, dim 48 (2 heads x 24), a 2-layer text encoder of width 32, 16 tokens.
pub fn tiny_config(tokenizer: PathBuf) -> DitTrainConfig {
    let transformer = DitArch {
        num_attention_heads: 2,
        attention_head_dim: 24,
        ffn_dim: 96,
        num_layers: 2,
        freq_dim: 64,
        patch_size: [1, 2, 2],
        latent_channels: 16,
        cross_attn_norm: true,
        eps: 1e-6,
        rope_max_seq_len: 1024,
        position_channels: 0,
    };
    let text_encoder = TextArch::new(32, 4, 2);
    DitTrainConfig {
        seed: 11,
        warmup_steps: 2,
        ema_decay: 0.99,
        caption_dropout: 0.25,
        checkpoint_every: 3,
        ..DitTrainConfig::new(transformer, text_encoder, tokenizer, 2, 6, 1e-3)
    }
}
