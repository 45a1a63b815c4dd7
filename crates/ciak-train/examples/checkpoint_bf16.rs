//! The travelling copy of a DiT run: a checkpoint's EMA weights in bf16 and its `state.json`,
//! half the size of the EMA alone and a quarter of the checkpoint, so that a run started on the
//! CPU fits the GPU machine's 64 MiB working-tree limit beside the repository and the binary.
//! There `scripts/gpu-train.sh` (RESUME=DIR) starts the model from the EMA weights and continues
//! with `ciak train dit --resume --fresh-optimizer`; the resume reads bf16 into f32 weights.
//!
//! `cargo run --release -p ciak-train --example checkpoint_bf16 -- CHECKPOINT_DIR OUT_DIR`
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

fn run(src: &PathBuf, out: &PathBuf) -> Result<(), String> {
    let ema_path = src.join("ema.safetensors");
    let ema = candle_core::safetensors::load(&ema_path, &Device::Cpu)
        .map_err(|e| format!("expected a checkpoint's ema.safetensors at {}: {e}", ema_path.display()))?;
    let half: HashMap<String, Tensor> = ema
        .into_iter()
        .map(|(k, t)| t.to_dtype(DType::BF16).map(|t| (k, t)))
        .collect::<candle_core::Result<_>>()
        .map_err(|e| e.to_string())?;
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    candle_core::safetensors::save(&half, out.join("ema.safetensors")).map_err(|e| e.to_string())?;
    std::fs::copy(src.join("state.json"), out.join("state.json"))
        .map_err(|e| format!("expected {}: {e}", src.join("state.json").display()))?;
    let bytes = std::fs::metadata(out.join("ema.safetensors")).map(|m| m.len()).unwrap_or(0);
    println!("{} tensors, {:.1} MB of bf16 EMA weights in {}", half.len(), bytes as f64 / 1e6, out.display());
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let [_, src, out] = &args[..] else {
        eprintln!("usage: checkpoint_bf16 CHECKPOINT_DIR OUT_DIR");
        return ExitCode::from(2);
    };
    match run(&PathBuf::from(src), &PathBuf::from(out)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
