//! Samplers for the flow-matching ODE: UniPC multistep and flow-match Euler, numerically as
//! diffusers runs them (schedule in f64 like numpy, sample updates in f32 like torch).
//!
//! `SchedulerConfig` reads diffusers' `scheduler/scheduler_config.json` as it is and refuses the
//! options ciak does not implement with a message naming the option and its value.
pub mod euler;
pub mod unipc;

pub use euler::{EulerConfig, EulerScheduler};
pub use unipc::{SolverType, UniPcConfig, UniPcScheduler};

use crate::error::{CiakError, Result};
use candle_core::Tensor;
use serde::Deserialize;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

/// The flow shift of Wan2.1's diffusers scheduler configs (480p; diffusers suggests 5.0 at 720p).
pub const WAN_DEFAULT_SHIFT: f64 = 3.0;

/// One sampling run over a fixed schedule; the pipeline calls `step` for 0..len() in order.
pub trait Scheduler: Send {
    /// The timestep the transformer sees at each step (UniPC: integers, Euler: floats).
    fn timesteps(&self) -> &[f64];

    /// The noise level at each step, plus the final one (0): `len() + 1` values.
    fn sigmas(&self) -> &[f64];

    /// Advances `sample` from `sigmas()[step_index]` to `sigmas()[step_index + 1]` given the
    /// model's velocity; the math runs in f32 and the result has the dtype of `sample`.
    /// Shapes: model_output = sample = [B, C, F, H, W] (any shape, both equal) -> like sample.
    fn step(&mut self, model_output: &Tensor, step_index: usize, sample: &Tensor) -> candle_core::Result<Tensor>;

    /// The number of steps (model evaluations per guidance branch).
    fn len(&self) -> usize;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn kind(&self) -> SchedulerKind;
}

/// The sampler family, as chosen on the command line (`--scheduler unipc|euler`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SchedulerKind {
    UniPc,
    Euler,
}

impl SchedulerKind {
    pub const ALL: [SchedulerKind; 2] = [SchedulerKind::UniPc, SchedulerKind::Euler];

    pub fn name(self) -> &'static str {
        match self {
            SchedulerKind::UniPc => "unipc",
            SchedulerKind::Euler => "euler",
        }
    }
}

impl fmt::Display for SchedulerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SchedulerKind {
    type Err = CiakError;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "unipc" => Ok(SchedulerKind::UniPc),
            "euler" => Ok(SchedulerKind::Euler),
            _ => Err(CiakError::InvalidRequest(format!("expected scheduler unipc or euler, got `{s}`"))),
        }
    }
}

/// diffusers' `scheduler_config.json`; `_class_name` picks the sampler.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "_class_name")]
pub enum SchedulerConfig {
    #[serde(rename = "UniPCMultistepScheduler")]
    UniPc(UniPcConfig),
    #[serde(rename = "FlowMatchEulerDiscreteScheduler")]
    Euler(EulerConfig),
}

impl SchedulerConfig {
    /// Reads `scheduler_config.json` from a diffusers `scheduler/` folder.
    pub fn load(scheduler_dir: &Path) -> Result<Self> {
        crate::loader::read_json(&scheduler_dir.join("scheduler_config.json"), "scheduler_config.json")
    }

    /// Wan2.1's settings for `kind` with the default shift (UniPC is what the Wan checkpoints ship).
    pub fn wan(kind: SchedulerKind) -> Self {
        Self::wan_with_shift(kind, WAN_DEFAULT_SHIFT)
    }

    pub fn wan_with_shift(kind: SchedulerKind, shift: f64) -> Self {
        match kind {
            SchedulerKind::UniPc => SchedulerConfig::UniPc(UniPcConfig { flow_shift: shift, ..UniPcConfig::wan21() }),
            SchedulerKind::Euler => SchedulerConfig::Euler(EulerConfig { shift, ..EulerConfig::wan21() }),
        }
    }

    pub fn kind(&self) -> SchedulerKind {
        match self {
            SchedulerConfig::UniPc(_) => SchedulerKind::UniPc,
            SchedulerConfig::Euler(_) => SchedulerKind::Euler,
        }
    }

    /// The flow shift the config asks for (`flow_shift` for UniPC, `shift` for Euler).
    pub fn shift(&self) -> f64 {
        match self {
            SchedulerConfig::UniPc(c) => c.flow_shift,
            SchedulerConfig::Euler(c) => c.shift,
        }
    }

    pub fn num_train_timesteps(&self) -> usize {
        match self {
            SchedulerConfig::UniPc(c) => c.num_train_timesteps,
            SchedulerConfig::Euler(c) => c.num_train_timesteps,
        }
    }

    /// The same checkpoint schedule (shift, training timesteps) run by another sampler family;
    /// keeps the config as is when it already is of that kind.
    pub fn with_kind(&self, kind: SchedulerKind) -> Self {
        if self.kind() == kind {
            return self.clone();
        }
        match kind {
            SchedulerKind::UniPc => SchedulerConfig::UniPc(UniPcConfig {
                flow_shift: self.shift(),
                num_train_timesteps: self.num_train_timesteps(),
                ..UniPcConfig::wan21()
            }),
            SchedulerKind::Euler => SchedulerConfig::Euler(EulerConfig {
                shift: self.shift(),
                num_train_timesteps: self.num_train_timesteps(),
            }),
        }
    }

    /// A fresh sampler for `steps` steps; `shift_override` replaces the config's shift.
    pub fn build(&self, steps: usize, shift_override: Option<f64>) -> Result<Box<dyn Scheduler>> {
        Ok(match self {
            SchedulerConfig::UniPc(c) => Box::new(UniPcScheduler::new(c, steps, shift_override)?),
            SchedulerConfig::Euler(c) => Box::new(EulerScheduler::new(c, steps, shift_override)?),
        })
    }
}

/// The checks every sampler makes at construction; returns the shift to use.
pub(crate) fn check_request(steps: usize, shift: f64, num_train_timesteps: usize) -> Result<f64> {
    if steps == 0 {
        return Err(CiakError::InvalidRequest("expected steps >= 1, got 0".to_string()));
    }
    if !(shift.is_finite() && shift > 0.0) {
        return Err(CiakError::InvalidRequest(format!("expected shift > 0, got {shift}")));
    }
    if num_train_timesteps == 0 {
        return Err(CiakError::InvalidRequest("expected num_train_timesteps >= 1, got 0".to_string()));
    }
    Ok(shift)
}

/// numpy.linspace for float64, operation for operation (k * step + start, last = stop).
pub(crate) fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 0 {
        return Vec::new();
    }
    if num == 1 {
        return vec![start];
    }
    let div = (num - 1) as f64;
    let delta = stop - start;
    let step = delta / div;
    let mut y: Vec<f64> = (0..num)
        .map(|k| if step == 0.0 { (k as f64 / div) * delta + start } else { k as f64 * step + start })
        .collect();
    y[num - 1] = stop;
    y
}

/// `t * c` with the f32 rounding of torch's tensor-times-scalar.
pub(crate) fn scale(t: &Tensor, c: f32) -> candle_core::Result<Tensor> {
    t.affine(c as f64, 0.0)
}

/// A readable error for a config option ciak does not implement.
pub(crate) fn unsupported(option: &str, value: impl fmt::Display, expected: &str) -> String {
    format!("unsupported {option} = {value} (ciak supports {expected})")
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn all_samplers(steps: usize, shift: f64) -> Vec<(String, Box<dyn Scheduler>)> {
        let mut out = Vec::new();
        for order in 1..=3 {
            for solver_type in [SolverType::Bh1, SolverType::Bh2] {
                let cfg = UniPcConfig { solver_order: order, solver_type, ..UniPcConfig::wan21() };
                let s = UniPcScheduler::new(&cfg, steps, Some(shift)).unwrap();
                out.push((format!("unipc order {order} {solver_type:?}"), Box::new(s) as Box<dyn Scheduler>));
            }
        }
        out.push(("euler".to_string(), SchedulerConfig::wan(SchedulerKind::Euler).build(steps, Some(shift)).unwrap()));
        out
    }

    /// Runs all steps of a sampler from `x` on a velocity field v(element, x, sigma) given in f64.
    fn sample(s: &mut dyn Scheduler, x: &[f64], v: impl Fn(usize, f64, f64) -> f64) -> Vec<Vec<f64>> {
        let dev = Device::Cpu;
        let mut x = Tensor::new(x, &dev).unwrap().to_dtype(DType::F32).unwrap();
        let mut trace = Vec::new();
        for i in 0..s.len() {
            let sigma = s.sigmas()[i];
            let xs = x.to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap();
            let vs: Vec<f64> = xs.iter().enumerate().map(|(k, &xk)| v(k, xk, sigma)).collect();
            let vt = Tensor::new(vs.as_slice(), &dev).unwrap().to_dtype(DType::F32).unwrap();
            x = s.step(&vt, i, &x).unwrap();
            trace.push(x.to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap());
        }
        trace
    }

    #[test]
    fn straight_flows_are_followed_exactly() {
        // Data x0 and noise e joined by straight lines: v = e - x0 everywhere, so every sampler
        // must land on the line at each sigma and end on x0.
        let x0 = [0.7, -1.3, 0.05, 2.5];
        let e = [-0.4, 1.1, 0.9, -2.0];
        for (steps, shift) in [(1, 3.0), (2, 3.0), (3, 1.0), (8, 5.0), (25, 3.0)] {
            for (name, mut s) in all_samplers(steps, shift) {
                let on_line = |sigma: f64| -> Vec<f64> { x0.iter().zip(&e).map(|(a, b)| (1.0 - sigma) * a + sigma * b).collect() };
                let sigmas = s.sigmas().to_vec();
                let trace = sample(s.as_mut(), &on_line(sigmas[0]), |k, _, _| e[k] - x0[k]);
                for (i, got) in trace.iter().enumerate() {
                    for (g, w) in got.iter().zip(on_line(sigmas[i + 1])) {
                        assert!((g - w).abs() < 1e-5, "{name}, {steps} steps, shift {shift}, step {i}: {got:?}");
                    }
                }
            }
        }
    }

    /// The exact probability-flow velocity when the data is N(mu, std^2) and the noise N(0, 1).
    fn gaussian_velocity(mu: f64, std: f64) -> impl Fn(usize, f64, f64) -> f64 {
        move |_, x, sigma| {
            let var = (1.0 - sigma).powi(2) * std * std + sigma * sigma;
            (sigma - (1.0 - sigma) * std * std) / var * (x - (1.0 - sigma) * mu) - mu
        }
    }

    #[test]
    fn unipc_converges_faster_than_euler_on_a_curved_flow() {
        // Gaussian data bends the trajectories; the exact end point is mu + std * z(sigma_0) with
        // z the standardized start. Going from 8 to 64 steps must cut the error about 8x for
        // Euler (first order) and far more for UniPC-2 (second order at least; 49x measured).
        let (mu, std) = (0.5, 0.8);
        let start = [-1.5, -0.3, 0.4, 1.8];
        let final_error = |s: &mut dyn Scheduler| -> f64 {
            let s0 = s.sigmas()[0];
            let var0 = (1.0 - s0).powi(2) * std * std + s0 * s0;
            let trace = sample(s, &start, gaussian_velocity(mu, std));
            let last = trace.last().unwrap();
            let exact = start.iter().map(|x| mu + std * (x - (1.0 - s0) * mu) / var0.sqrt());
            last.iter().zip(exact).map(|(g, w)| (g - w).abs()).fold(0.0, f64::max)
        };
        let build = |kind, steps| SchedulerConfig::wan(kind).build(steps, Some(1.0)).unwrap();
        let mut errors = Vec::new();
        for steps in [8, 16, 32, 64] {
            let unipc = final_error(build(SchedulerKind::UniPc, steps).as_mut());
            let euler = final_error(build(SchedulerKind::Euler, steps).as_mut());
            eprintln!("{steps} steps: unipc {unipc:.3e}, euler {euler:.3e}");
            errors.push((unipc, euler));
        }
        for (i, w) in errors.windows(2).enumerate() {
            let e_ratio = w[0].1 / w[1].1;
            assert!((1.7..2.3).contains(&e_ratio), "euler error ratio {e_ratio:.2} at doubling {i}: {errors:?}");
        }
        for (u, e) in &errors {
            assert!(*u < e / 4.0, "unipc must beat euler by 4x: {errors:?}");
        }
        let u_ratio = errors[0].0 / errors[3].0;
        assert!(u_ratio > 25.0, "unipc error ratio from 8 to 64 steps {u_ratio:.1}: {errors:?}");
    }

    #[test]
    fn linspace_matches_numpy() {
        // numpy.linspace(1, 0.001, 5) and (0, 1, 3), printed with repr().
        assert_eq!(linspace(1.0, 0.001, 5), vec![1.0, 0.75025, 0.5005, 0.25075000000000003, 0.001]);
        assert_eq!(linspace(0.0, 1.0, 3), vec![0.0, 0.5, 1.0]);
        assert_eq!(linspace(2.0, 3.0, 1), vec![2.0]);
        assert!(linspace(2.0, 3.0, 0).is_empty());
    }

    #[test]
    fn kind_parses_and_rejects() {
        assert_eq!("unipc".parse::<SchedulerKind>().unwrap(), SchedulerKind::UniPc);
        assert_eq!("Euler".parse::<SchedulerKind>().unwrap(), SchedulerKind::Euler);
        let err = "ddim".parse::<SchedulerKind>().unwrap_err().to_string();
        assert_eq!(err, "expected scheduler unipc or euler, got `ddim`");
        for k in SchedulerKind::ALL {
            assert_eq!(k.name().parse::<SchedulerKind>().unwrap(), k);
        }
    }

    #[test]
    fn zero_steps_and_bad_shift_are_errors() {
        for kind in SchedulerKind::ALL {
            let cfg = SchedulerConfig::wan(kind);
            let err = cfg.build(0, None).err().expect("0 steps must fail").to_string();
            assert_eq!(err, "expected steps >= 1, got 0", "{kind}");
            for shift in [0.0, -1.0, f64::NAN, f64::INFINITY] {
                let err = cfg.build(4, Some(shift)).err().expect("bad shift must fail").to_string();
                assert!(err.starts_with("expected shift > 0, got"), "{kind}: {err}");
            }
            let s = cfg.build(1, Some(0.5)).unwrap();
            assert_eq!((s.len(), s.timesteps().len(), s.sigmas().len(), s.kind()), (1, 1, 2, kind));
        }
    }

    #[test]
    fn with_kind_keeps_the_schedule() {
        let unipc = SchedulerConfig::wan_with_shift(SchedulerKind::UniPc, 5.0);
        let euler = unipc.with_kind(SchedulerKind::Euler);
        assert_eq!(euler, SchedulerConfig::Euler(EulerConfig { num_train_timesteps: 1000, shift: 5.0 }));
        assert_eq!(euler.with_kind(SchedulerKind::UniPc), unipc);
        assert_eq!(unipc.with_kind(SchedulerKind::UniPc), unipc);
    }

    const WAN_UNIPC_JSON: &str = r#"{
        "_class_name": "UniPCMultistepScheduler", "_diffusers_version": "0.33.0.dev0",
        "beta_end": 0.02, "beta_schedule": "linear", "beta_start": 0.0001, "disable_corrector": [],
        "dynamic_thresholding_ratio": 0.995, "final_sigmas_type": "zero", "flow_shift": 3.0,
        "lower_order_final": true, "num_train_timesteps": 1000, "predict_x0": true,
        "prediction_type": "flow_prediction", "rescale_betas_zero_snr": false, "sample_max_value": 1.0,
        "solver_order": 2, "solver_p": null, "solver_type": "bh2", "steps_offset": 0, "thresholding": false,
        "timestep_spacing": "linspace", "trained_betas": null, "use_beta_sigmas": false,
        "use_exponential_sigmas": false, "use_flow_sigmas": true, "use_karras_sigmas": false
    }"#;

    fn parse(json: &str) -> std::result::Result<SchedulerConfig, String> {
        serde_json::from_str::<SchedulerConfig>(json).map_err(|e| e.to_string())
    }

    fn with(json: &str, key: &str, value: &str) -> String {
        let mut v: serde_json::Value = serde_json::from_str(json).unwrap();
        v[key] = serde_json::from_str(value).unwrap();
        v.to_string()
    }

    #[test]
    fn reads_the_wan_unipc_config() {
        assert_eq!(parse(WAN_UNIPC_JSON).unwrap(), SchedulerConfig::wan(SchedulerKind::UniPc));
    }

    #[test]
    fn unsupported_unipc_options_name_option_and_value() {
        for (key, value, needle) in [
            ("use_karras_sigmas", "true", "use_karras_sigmas = true"),
            ("use_exponential_sigmas", "true", "use_exponential_sigmas = true"),
            ("use_beta_sigmas", "true", "use_beta_sigmas = true"),
            ("use_flow_sigmas", "false", "use_flow_sigmas = false"),
            ("prediction_type", "\"epsilon\"", "prediction_type = \"epsilon\""),
            ("solver_type", "\"dpmsolver\"", "solver_type = \"dpmsolver\""),
            ("solver_order", "4", "solver_order = 4"),
            ("predict_x0", "false", "predict_x0 = false"),
            ("thresholding", "true", "thresholding = true"),
            ("final_sigmas_type", "\"sigma_min\"", "final_sigmas_type = \"sigma_min\""),
            ("lower_order_final", "false", "lower_order_final = false"),
            ("use_dynamic_shifting", "true", "use_dynamic_shifting = true"),
            ("shift_terminal", "0.1", "shift_terminal = 0.1"),
            ("solver_p", "{}", "solver_p"),
        ] {
            let err = parse(&with(WAN_UNIPC_JSON, key, value)).expect_err(key);
            assert!(err.contains(needle), "{key}: {err}");
        }
        let err = parse(&with(WAN_UNIPC_JSON, "_class_name", "\"DDIMScheduler\"")).unwrap_err();
        assert!(err.contains("DDIMScheduler"), "{err}");
        let mut v: serde_json::Value = serde_json::from_str(WAN_UNIPC_JSON).unwrap();
        v.as_object_mut().unwrap().remove("flow_shift");
        let err = parse(&v.to_string()).unwrap_err();
        assert!(err.contains("missing field `flow_shift`"), "{err}");
    }

    #[test]
    fn diffusers_solver_type_aliases_mean_bh2() {
        // diffusers rewrites midpoint/heun/logrho to bh2 in UniPCMultistepScheduler.__init__.
        let cfg = parse(&with(WAN_UNIPC_JSON, "solver_type", "\"midpoint\"")).unwrap();
        assert_eq!(cfg, SchedulerConfig::wan(SchedulerKind::UniPc));
        let cfg = parse(&with(WAN_UNIPC_JSON, "solver_type", "\"bh1\"")).unwrap();
        let SchedulerConfig::UniPc(c) = cfg else { panic!("not UniPC") };
        assert_eq!(c.solver_type, SolverType::Bh1);
    }

    #[test]
    fn reads_a_flow_match_euler_config() {
        let json = r#"{"_class_name": "FlowMatchEulerDiscreteScheduler", "_diffusers_version": "0.33.0.dev0",
            "base_image_seq_len": 256, "base_shift": 0.5, "invert_sigmas": false, "max_image_seq_len": 4096,
            "max_shift": 1.15, "num_train_timesteps": 1000, "shift": 5.0, "shift_terminal": null,
            "use_beta_sigmas": false, "use_dynamic_shifting": false, "use_exponential_sigmas": false,
            "use_karras_sigmas": false}"#;
        assert_eq!(parse(json).unwrap(), SchedulerConfig::wan_with_shift(SchedulerKind::Euler, 5.0));
        for (key, value, needle) in [
            ("use_dynamic_shifting", "true", "use_dynamic_shifting = true"),
            ("invert_sigmas", "true", "invert_sigmas = true"),
            ("shift_terminal", "0.1", "shift_terminal = 0.1"),
            ("use_karras_sigmas", "true", "use_karras_sigmas = true"),
            ("stochastic_sampling", "true", "stochastic_sampling = true"),
        ] {
            let err = parse(&with(json, key, value)).expect_err(key);
            assert!(err.contains(needle), "{key}: {err}");
        }
    }
}
