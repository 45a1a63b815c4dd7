//! Speed of candidate sizes of the built-in model on this machine (run on demand):
//! `CIAK_BENCH_SIZES=192x4x48x6,256x4x64x6 cargo test --release -p ciak-train --test train_bench -- --ignored --nocapture`
//! Each size is `dim x heads x head_dim x layers` (dim = heads * head_dim, ffn = 4 * dim), on
//! latents [16, 7, 16, 28] (224x128, 25 frames: 784 tokens), 32 text tokens, batch 2.
#[path = "train_support.rs"]
mod support;

use candle_core::Device;
use ciak_train::train::dit::benchmark;

#[test]
#[ignore = "timing run, minutes on 2 cores; see the module docs"]
fn training_and_sampling_speed() {
    let tmp = tempfile::tempdir().unwrap();
    let sizes = std::env::var("CIAK_BENCH_SIZES").unwrap_or_else(|_| "192x4x48x6,256x4x64x6".into());
    let steps: usize = std::env::var("CIAK_BENCH_STEPS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let batch: usize = std::env::var("CIAK_BENCH_BATCH").ok().and_then(|s| s.parse().ok()).unwrap_or(2);
    let latent: [usize; 4] = [16, 7, 16, 28];
    println!("| dim | heads x head_dim | layers | DiT params | tokens | train clips/s (batch {batch}) | train CPU s/clip | CFG step s | CFG step CPU s |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for size in sizes.split(',') {
        let v: Vec<usize> = size.split('x').map(|s| s.trim().parse().expect("dim x heads x head_dim x layers")).collect();
        let (dim, heads, head_dim, layers) = (v[0], v[1], v[2], v[3]);
        assert_eq!(dim, heads * head_dim, "{size}: dim must be heads * head_dim");
        let mut cfg = support::tiny_config(support::write_tokenizer(tmp.path()));
        cfg.transformer.num_attention_heads = heads;
        cfg.transformer.attention_head_dim = head_dim;
        cfg.transformer.num_layers = layers;
        cfg.transformer.ffn_dim = 4 * dim;
        cfg.transformer.freq_dim = 256;
        cfg.text_encoder.d_model = 128;
        cfg.text_encoder.d_kv = 32;
        cfg.text_encoder.num_heads = 4;
        cfg.text_encoder.d_ff = 256;
        cfg.text_len = 32;
        cfg.batch_size = batch;
        let r = benchmark(&cfg, latent, steps, &Device::Cpu).unwrap();
        let cpu = |v: Option<f64>| v.map(|s| format!("{s:.3}")).unwrap_or_else(|| "-".into());
        println!(
            "| {dim} | {heads} x {head_dim} | {layers} | {:.2} M | {} | {:.3} | {} | {:.3} | {} |",
            r.dit_parameters as f64 / 1e6,
            r.tokens,
            r.train_samples_per_sec,
            cpu(r.train_cpu_seconds_per_sample),
            r.cfg_step_seconds,
            cpu(r.cfg_step_cpu_seconds)
        );
        assert!(r.train_samples_per_sec > 0.0 && r.cfg_step_seconds > 0.0);
    }
}
