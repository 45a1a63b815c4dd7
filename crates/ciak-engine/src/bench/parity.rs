//! `ciak bench --parity DIR`: the diffusers parity fixtures (tests/fixtures) run by the production
//! loader and pipeline on a chosen device and dtype, each output compared with diffusers' f32
//! reference. This is how a GPU build is checked on a machine without Rust.
//!
//! Errors are max |got - want| relative to max |want|. Tolerances come from CPU measurements plus
//! margin ([`tolerance`]): f32 1e-4 everywhere; bf16 and f16 weights per check (the VAE always
//! runs in f32, as in the pipeline).
use crate::error::{CiakError, Result};
use crate::loader::read_json;
use crate::model_dir::WanModelDir;
use crate::pipeline::{GenerateRequest, LoadOptions, WanPipeline};
use crate::scheduler::SchedulerKind;
use candle_core::{DType, Device, Tensor};
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Relative tolerance of one check for weights in `dtype`: about twice the error measured on
/// the CPU (figures in the comments), so a device that computes in lower precision than the CPU
/// (bf16 attention matmuls on CUDA; the CPU runs them in f32) still has room.
pub fn tolerance(check: &str, dtype: DType) -> f64 {
    let module = check.starts_with("umt5") || check.starts_with("transformer");
    match dtype {
        // Measured <= 1.4e-5 on the CPU (summation order only).
        _ if check.starts_with("vae") => 1e-4,
        DType::F32 => 1e-4,
        // umt5 9.1e-3, transformer 8.5e-3, final latents 1.8e-2 / 1.5e-2, frames 4.2e-2 / 3.7e-2.
        DType::BF16 if module => 2e-2,
        DType::BF16 if check.ends_with("final_latents") => 4e-2,
        DType::BF16 => 8e-2,
        // umt5 1.2e-3, transformer 9.7e-4, final latents 2.6e-3, frames 5.7e-3.
        _ if module => 3e-3,
        _ => 1.5e-2,
    }
}

/// One comparison against a fixture tensor.
#[derive(Debug, Clone, Serialize)]
pub struct ParityCheck {
    pub name: String,
    pub max_abs_error: f64,
    /// max |want|.
    pub scale: f64,
    pub relative_error: f64,
    pub tolerance: f64,
    pub passed: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ParityReport {
    pub fixtures: PathBuf,
    pub device: String,
    pub dtype: &'static str,
    pub checks: Vec<ParityCheck>,
    pub passed: bool,
    pub seconds: f64,
}

fn io_file(fixtures: &Path, name: &str) -> Result<PathBuf> {
    let path = fixtures.join("io").join(format!("{name}.safetensors"));
    if !path.is_file() {
        return Err(CiakError::MissingFile { what: format!("parity fixture {name}"), path });
    }
    Ok(path)
}

fn load_io(fixtures: &Path, name: &str) -> Result<(HashMap<String, Tensor>, HashMap<String, String>)> {
    let path = io_file(fixtures, name)?;
    let corrupt = |message: String| CiakError::CorruptWeights { path: path.clone(), message };
    let tensors = candle_core::safetensors::load(&path, &Device::Cpu).map_err(|e| corrupt(e.to_string()))?;
    let bytes = std::fs::read(&path).map_err(|e| CiakError::io(&path, e))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| corrupt(e.to_string()))?;
    Ok((tensors, meta.metadata().clone().unwrap_or_default()))
}

fn get<'a>(io: &'a HashMap<String, Tensor>, name: &str, key: &str) -> Result<&'a Tensor> {
    io.get(key).ok_or_else(|| CiakError::InvalidRequest(format!("parity fixture {name} has no tensor `{key}`")))
}

/// Compares `got` (any device, any float dtype) with `want` in f64 on the CPU.
pub fn compare(name: &str, got: &Tensor, want: &Tensor, tolerance: f64) -> Result<ParityCheck> {
    if got.dims() != want.dims() {
        return Err(CiakError::InvalidRequest(format!(
            "{name}: expected shape {:?}, got {:?}",
            want.dims(),
            got.dims()
        )));
    }
    let got = got.to_device(&Device::Cpu)?.to_dtype(DType::F64)?;
    let want = want.to_dtype(DType::F64)?;
    let max_abs = |t: &Tensor| -> Result<f64> { Ok(t.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?) };
    let err = max_abs(&(&got - &want)?)?;
    let scale = max_abs(&want)?;
    let relative = if scale > 0.0 { err / scale } else { f64::INFINITY };
    // NaN never passes: the comparison is false for it.
    let passed = relative <= tolerance;
    Ok(ParityCheck { name: name.to_string(), max_abs_error: err, scale, relative_error: relative, tolerance, passed })
}

fn pipeline_request(meta: &HashMap<String, String>, name: &str) -> Result<GenerateRequest> {
    let field = |k: &str| {
        meta.get(k).cloned().ok_or_else(|| CiakError::InvalidRequest(format!("parity fixture {name} has no metadata `{k}`")))
    };
    let number = |k: &str| -> Result<f64> {
        field(k)?.parse::<f64>().map_err(|e| CiakError::InvalidRequest(format!("parity fixture {name}: `{k}`: {e}")))
    };
    Ok(GenerateRequest {
        negative_prompt: field("negative_prompt")?,
        width: number("width")? as usize,
        height: number("height")? as usize,
        frames: number("num_frames")? as usize,
        steps: number("num_inference_steps")? as usize,
        guidance: number("guidance_scale")?,
        ..GenerateRequest::new(field("prompt")?)
    })
}

/// Runs every fixture check on `device` with weights in `dtype` (the VAE in f32). `tolerance`
/// replaces every per-check tolerance when given. `log` receives one line per check.
pub fn run(
    fixtures: &Path,
    device: &Device,
    dtype: DType,
    tolerance_override: Option<f64>,
    log: &mut dyn FnMut(&str),
) -> Result<ParityReport> {
    let start = Instant::now();
    let tol = |check: &str| tolerance_override.unwrap_or_else(|| tolerance(check, dtype));
    let dir = WanModelDir::open(&fixtures.join("tiny-wan"))?;
    let pipe = WanPipeline::load(&dir, &LoadOptions { device: device.clone(), dtype, vae_dtype: DType::F32 })?;
    let mut checks = Vec::new();
    let mut push = |check: ParityCheck, log: &mut dyn FnMut(&str)| {
        log(&format!(
            "{:<28} max abs error {:.3e}, relative {:.3e} (tolerance {:.1e}) {}",
            check.name,
            check.max_abs_error,
            check.relative_error,
            check.tolerance,
            if check.passed { "ok" } else { "FAILED" }
        ));
        checks.push(check);
    };

    // Text encoder: the fixture's prompts through tokenizer + UMT5 + zeroed padding rows.
    let prompts_path = fixtures.join("io").join("umt5_prompts.json");
    let prompts: Vec<String> = read_json(&prompts_path, "parity fixture umt5_prompts.json")?;
    let (io, _) = load_io(fixtures, "umt5")?;
    let got = pipe.text_encoder.encode(&prompts)?.prompt_embeds;
    let name = "umt5.prompt_embeds";
    push(compare(name, &got, get(&io, "umt5", "prompt_embeds")?, tol(name))?, log);

    // Transformer: one forward of the tiny T2V model.
    let (io, _) = load_io(fixtures, "transformer_t2v")?;
    let on = |key: &str| -> Result<Tensor> { Ok(get(&io, "transformer_t2v", key)?.to_device(device)?) };
    let x = on("hidden_states")?.to_dtype(dtype)?;
    let ctx = on("encoder_hidden_states")?.to_dtype(dtype)?;
    let got = pipe.transformer.forward(&x, &on("timestep")?, &ctx, None)?;
    let name = "transformer_t2v.output";
    push(compare(name, &got, get(&io, "transformer_t2v", "output")?, tol(name))?, log);

    // VAE decode of raw latents.
    let (io, _) = load_io(fixtures, "vae")?;
    let z = get(&io, "vae", "decode.input")?.to_device(device)?;
    let name = "vae.decode.output";
    push(compare(name, &pipe.vae.decode(&z)?, get(&io, "vae", "decode.output")?, tol(name))?, log);

    // The whole pipeline from fixed latents, both schedulers.
    for (fixture, kind) in [("pipeline", SchedulerKind::UniPc), ("pipeline_euler", SchedulerKind::Euler)] {
        let (io, meta) = load_io(fixtures, fixture)?;
        let req = GenerateRequest { scheduler: Some(kind), ..pipeline_request(&meta, fixture)? };
        let latents = get(&io, fixture, "latents")?.to_device(device)?;
        let out = pipe.generate_from_latents(&req, latents, &mut |_| {}, None)?;
        let name = format!("{fixture}.final_latents");
        push(compare(&name, &out.latents, get(&io, fixture, "final_latents")?, tol(&name))?, log);
        let name = format!("{fixture}.frames");
        push(compare(&name, &out.frames.unsqueeze(0)?, get(&io, fixture, "frames")?, tol(&name))?, log);
    }

    let passed = checks.iter().all(|c| c.passed);
    Ok(ParityReport {
        fixtures: fixtures.to_path_buf(),
        device: super::device_name(device),
        dtype: super::dtype_name(dtype),
        checks,
        passed,
        seconds: start.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixtures() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
    }

    #[test]
    fn compare_measures_relative_error_and_refuses_nan() {
        let want = Tensor::new(&[1f32, -2.0, 4.0], &Device::Cpu).unwrap();
        let got = Tensor::new(&[1f32, -2.0, 4.004], &Device::Cpu).unwrap();
        let c = compare("x", &got, &want, 2e-3).unwrap();
        assert!((c.relative_error - 1e-3).abs() < 1e-6 && c.passed, "{c:?}");
        assert!(!compare("x", &got, &want, 1e-4).unwrap().passed);
        let nan = Tensor::new(&[f32::NAN, -2.0, 4.0], &Device::Cpu).unwrap();
        assert!(!compare("x", &nan, &want, 1.0).unwrap().passed);
        let zeros = Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap();
        assert!(!compare("x", &want, &zeros, 1.0).unwrap().passed, "an all-zero reference proves nothing");
        assert!(compare("x", &want, &Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap(), 1.0).is_err());
    }

    #[test]
    fn missing_fixtures_are_an_error_naming_the_folder() {
        let err = run(Path::new("/no/such/fixtures"), &Device::Cpu, DType::F32, None, &mut |_| {}).unwrap_err();
        assert!(err.to_string().contains("/no/such/fixtures/tiny-wan"), "{err}");
    }

    #[test]
    fn f32_cpu_passes_every_check() {
        let mut lines = Vec::new();
        let report = run(&fixtures(), &Device::Cpu, DType::F32, None, &mut |l| lines.push(l.to_string())).unwrap();
        for line in &lines {
            eprintln!("{line}");
        }
        assert_eq!(report.checks.len(), 7);
        assert!(report.passed, "{:#?}", report.checks);
        assert!(report.checks.iter().all(|c| c.tolerance == 1e-4 && c.relative_error < 1e-4 && c.scale > 0.0));
    }
}
