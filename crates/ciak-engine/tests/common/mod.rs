//! Shared by the parity tests: fixture paths and comparisons. A missing fixture fails the test.
#![allow(dead_code)]
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::PathBuf;

pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// A fixture file or folder that must exist; panics with the command that makes it.
pub fn fixture(rel: &str) -> PathBuf {
    let path = fixtures_dir().join(rel);
    assert!(
        path.exists(),
        "missing parity fixture {} (make it with tests/fixtures/make_fixtures.py, see tests/fixtures/README.md)",
        path.display()
    );
    path
}

/// All tensors of `tests/fixtures/io/<name>.safetensors`, on the CPU, as stored.
pub fn load_io(name: &str) -> HashMap<String, Tensor> {
    let path = fixture(&format!("io/{name}.safetensors"));
    candle_core::safetensors::load(&path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("cannot read fixture {}: {e}", path.display()))
}

/// The string metadata of an io fixture (prompts, settings).
pub fn io_metadata(name: &str) -> HashMap<String, String> {
    let path = fixture(&format!("io/{name}.safetensors"));
    let bytes = std::fs::read(&path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    meta.metadata().clone().unwrap_or_default()
}

pub fn get<'a>(io: &'a HashMap<String, Tensor>, key: &str) -> &'a Tensor {
    io.get(key).unwrap_or_else(|| {
        let mut keys: Vec<_> = io.keys().collect();
        keys.sort();
        panic!("fixture has no tensor `{key}`; it has {keys:?}")
    })
}

/// Max abs error of `got` against `want`, and the scale (max |want|) it is measured against.
pub fn max_error(got: &Tensor, want: &Tensor) -> (f64, f64) {
    assert_eq!(got.dims(), want.dims(), "shape mismatch");
    let got = got.to_dtype(DType::F64).unwrap();
    let want = want.to_dtype(DType::F64).unwrap();
    let err = (got - &want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
    let scale = want.abs().unwrap().flatten_all().unwrap().max(0).unwrap();
    (err.to_scalar::<f64>().unwrap(), scale.to_scalar::<f64>().unwrap())
}

/// Asserts max |got - want| <= rel_tol * max |want|, printing both figures either way.
pub fn assert_close(what: &str, got: &Tensor, want: &Tensor, rel_tol: f64) {
    let (err, scale) = max_error(got, want);
    let rel = err / scale.max(1e-30);
    eprintln!("{what}: max abs error {err:.3e}, scale {scale:.3e}, relative {rel:.3e} (tolerance {rel_tol:.1e})");
    assert!(scale > 0.0, "{what}: reference output is all zeros, the comparison would prove nothing");
    assert!(
        rel <= rel_tol,
        "{what}: relative error {rel:.3e} exceeds {rel_tol:.1e} (max abs {err:.3e}, scale {scale:.3e})"
    );
}
