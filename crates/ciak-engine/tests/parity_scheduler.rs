//! Scheduler parity with diffusers: timesteps and sigmas for a grid of (steps, shift) pairs
//! (io/scheduler.json) and a short sampling run with a synthetic velocity model
//! (io/scheduler_run.safetensors), for UniPC and flow-match Euler.
mod common;

use candle_core::{DType, Tensor};
use ciak_engine::scheduler::{Scheduler, SchedulerConfig, SchedulerKind};
use serde_json::Value;

/// f32 samples: Euler measured bit-equal, UniPC 1.4e-7 relative (f32 coefficient rounding; 3.9e-7
/// over 77 solver variants checked against diffusers by hand).
const RUN_TOL: f64 = 1e-6;

fn tables() -> Value {
    let path = common::fixture("io/scheduler.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

fn field<'a>(v: &'a Value, key: &str) -> &'a Value {
    v.get(key).unwrap_or_else(|| panic!("scheduler.json: no `{key}` in {}", short(v)))
}

fn short(v: &Value) -> String {
    v.to_string().chars().take(200).collect()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().expect("a JSON list").iter().map(|x| x.as_f64().expect("a number")).collect()
}

/// The config diffusers wrote for this table (it omits the shift), read through our parser.
fn config_of(table: &Value, shift: f64) -> SchedulerConfig {
    let mut cfg = field(table, "config").clone();
    cfg["_class_name"] = field(table, "class").clone();
    let shift_key = if cfg["_class_name"] == "UniPCMultistepScheduler" { "flow_shift" } else { "shift" };
    cfg[shift_key] = shift.into();
    serde_json::from_value(cfg).unwrap_or_else(|e| panic!("diffusers' config does not parse: {e}"))
}

/// The diffusers config of the table `key` must be what ciak calls the Wan default for `kind`.
fn check_table_config(key: &str, kind: SchedulerKind) {
    let t = tables();
    let table = field(&t, key);
    assert_eq!(config_of(table, 3.0), SchedulerConfig::wan(kind), "{key}");
}

/// Schedules for every (steps, shift) pair: integer timesteps exactly, float ones and sigmas
/// to the last bit of their float32 value (JSON parsing may be one f64 ulp off, hence the cast).
fn check_schedules(key: &str, kind: SchedulerKind) {
    let t = tables();
    let table = field(&t, key);
    let runs = field(table, "runs").as_array().expect("runs is a list");
    assert!(runs.len() >= 4, "{key}: only {} schedules in the fixture", runs.len());
    let mut worst_sigma = 0f64;
    for run in runs {
        let steps = field(run, "steps").as_u64().unwrap() as usize;
        let shift = field(run, "shift").as_f64().unwrap();
        let s = config_of(table, 1.0).build(steps, Some(shift)).unwrap();
        assert_eq!(s.kind(), kind);
        let what = format!("{key} steps={steps} shift={shift}");
        let want_t = floats(field(run, "timesteps"));
        let want_s = floats(field(run, "sigmas"));
        assert_eq!(s.len(), steps, "{what}");
        assert_eq!(want_t.len(), steps, "{what}: fixture timesteps");
        if field(run, "timesteps_dtype") == "int64" {
            assert_eq!(s.timesteps(), &want_t[..], "{what}: timesteps");
        } else {
            let got: Vec<f32> = s.timesteps().iter().map(|&v| v as f32).collect();
            let want: Vec<f32> = want_t.iter().map(|&v| v as f32).collect();
            assert_eq!(got, want, "{what}: timesteps");
        }
        assert_eq!(s.sigmas().len(), want_s.len(), "{what}: sigma count");
        for (k, (g, w)) in s.sigmas().iter().zip(&want_s).enumerate() {
            worst_sigma = worst_sigma.max((g - w).abs());
            assert_eq!(*g as f32, *w as f32, "{what}: sigma {k}");
        }
    }
    eprintln!("{key}: {} schedules, max |sigma error| {worst_sigma:.3e}", runs.len());
}

/// The sampling run of `key` ("unipc" or "euler") with v = 0.3 x + 0.2 t / 1000, step by step.
fn check_run(key: &str, kind: SchedulerKind) {
    let t = tables();
    let meta = field(&t, "sampling_run");
    let steps = field(meta, "steps").as_u64().unwrap() as usize;
    let shift = field(meta, "shift").as_f64().unwrap();
    let io = common::load_io("scheduler_run");
    let table = field(&t, if kind == SchedulerKind::UniPc { "unipc" } else { "flow_match_euler" });
    let mut s: Box<dyn Scheduler> = config_of(table, shift).build(steps, None).unwrap();
    let want_t = common::get(&io, &format!("{key}.timesteps")).to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap();
    assert_eq!(s.timesteps(), &want_t[..], "{key}: timesteps of the run");
    let mut x: Tensor = common::get(&io, "x_init").clone();
    assert_eq!(x.dtype(), DType::F32);
    for i in 0..steps {
        // As the fixture: x * 0.3 in f32, plus the f64 scalar 0.2 * t / 1000 rounded to f32.
        let v = x.affine(0.3, 0.2 * (s.timesteps()[i] / 1000.0)).unwrap();
        x = s.step(&v, i, &x).unwrap();
        assert_eq!(x.dtype(), DType::F32);
        common::assert_close(&format!("{key} step {i}"), &x, common::get(&io, &format!("{key}.step{i}")), RUN_TOL);
    }
}

#[test]
fn unipc_config_from_diffusers_is_the_wan_default() {
    check_table_config("unipc", SchedulerKind::UniPc);
}

#[test]
fn euler_config_from_diffusers_is_the_wan_default() {
    check_table_config("flow_match_euler", SchedulerKind::Euler);
}

#[test]
fn unipc_schedules_match_diffusers() {
    check_schedules("unipc", SchedulerKind::UniPc);
}

#[test]
fn euler_schedules_match_diffusers() {
    check_schedules("flow_match_euler", SchedulerKind::Euler);
}

#[test]
fn unipc_sampling_run_matches_diffusers() {
    check_run("unipc", SchedulerKind::UniPc);
}

#[test]
fn euler_sampling_run_matches_diffusers() {
    check_run("euler", SchedulerKind::Euler);
}

#[test]
fn tiny_wan_scheduler_config_loads() {
    let dir = common::fixture("tiny-wan/scheduler");
    let cfg = SchedulerConfig::load(&dir).unwrap();
    assert_eq!(cfg, SchedulerConfig::wan(SchedulerKind::UniPc));
    let s = cfg.build(4, None).unwrap();
    assert_eq!(s.timesteps()[0], 999.0);
}

#[test]
fn a_missing_scheduler_config_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let err = SchedulerConfig::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("scheduler_config.json"), "{err}");
    std::fs::write(dir.path().join("scheduler_config.json"), r#"{"_class_name": "DDIMScheduler"}"#).unwrap();
    let err = SchedulerConfig::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("scheduler_config.json") && err.contains("DDIMScheduler"), "{err}");
}
