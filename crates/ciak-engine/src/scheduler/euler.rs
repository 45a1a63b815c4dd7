//! Flow-match Euler, as diffusers' `FlowMatchEulerDiscreteScheduler` without dynamic shifting:
//! x_next = x + (sigma_next - sigma) * v.
//! Reference: https://github.com/huggingface/diffusers/blob/main/src/diffusers/schedulers/scheduling_flow_match_euler_discrete.py
use super::{check_request, linspace, scale, unsupported, Scheduler, SchedulerKind};
use crate::error::Result;
use candle_core::{bail, DType, Tensor};
use serde::Deserialize;

/// The flow-match Euler settings ciak runs; anything else in the file is refused when it is read.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "RawEulerConfig")]
pub struct EulerConfig {
    pub num_train_timesteps: usize,
    pub shift: f64,
}

impl EulerConfig {
    /// Wan2.1's shift with diffusers' flow-match Euler (the scheduler the first Wan2.1 diffusers
    /// upload named in model_index.json); https://huggingface.co/Wan-AI/Wan2.1-T2V-1.3B-Diffusers
    pub fn wan21() -> Self {
        Self { num_train_timesteps: 1000, shift: super::WAN_DEFAULT_SHIFT }
    }
}

/// `scheduler_config.json` of `FlowMatchEulerDiscreteScheduler` as diffusers writes it.
#[derive(Deserialize)]
struct RawEulerConfig {
    num_train_timesteps: usize,
    shift: f64,
    use_dynamic_shifting: bool,
    // Added across diffusers releases, so older files may lack them.
    #[serde(default)]
    invert_sigmas: bool,
    #[serde(default)]
    shift_terminal: Option<f64>,
    #[serde(default)]
    use_karras_sigmas: bool,
    #[serde(default)]
    use_exponential_sigmas: bool,
    #[serde(default)]
    use_beta_sigmas: bool,
    #[serde(default)]
    stochastic_sampling: bool,
}

impl TryFrom<RawEulerConfig> for EulerConfig {
    type Error = String;

    fn try_from(raw: RawEulerConfig) -> std::result::Result<Self, String> {
        let flags = [
            ("use_dynamic_shifting", raw.use_dynamic_shifting, "a fixed shift only"),
            ("invert_sigmas", raw.invert_sigmas, "false only"),
            ("use_karras_sigmas", raw.use_karras_sigmas, "shifted linear sigmas only"),
            ("use_exponential_sigmas", raw.use_exponential_sigmas, "shifted linear sigmas only"),
            ("use_beta_sigmas", raw.use_beta_sigmas, "shifted linear sigmas only"),
            ("stochastic_sampling", raw.stochastic_sampling, "deterministic sampling only"),
        ];
        for (name, value, expected) in flags {
            if value {
                return Err(unsupported(name, true, expected));
            }
        }
        if let Some(t) = raw.shift_terminal {
            return Err(unsupported("shift_terminal", t, "null only"));
        }
        if raw.num_train_timesteps == 0 {
            return Err("expected num_train_timesteps >= 1, got 0".to_string());
        }
        Ok(EulerConfig { num_train_timesteps: raw.num_train_timesteps, shift: raw.shift })
    }
}

/// Flow-match Euler over a fixed schedule; stateless between steps.
pub struct EulerScheduler {
    cfg: EulerConfig,
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    sigmas_f32: Vec<f32>,
}

impl EulerScheduler {
    pub fn new(cfg: &EulerConfig, steps: usize, shift_override: Option<f64>) -> Result<Self> {
        let shift = check_request(steps, shift_override.unwrap_or(cfg.shift), cfg.num_train_timesteps)?;
        let train = cfg.num_train_timesteps;
        // __init__ shifts the float32 training grid once, in float32 ...
        let shift_f32 = |s: f32| (shift as f32 * s) / (1.0 + (shift - 1.0) as f32 * s);
        // The grid's ends are T / T = 1 and 1 / T.
        let sigma_max = shift_f32(1.0) as f64;
        let sigma_min = shift_f32(1.0 / train as f32) as f64;
        // ... and set_timesteps shifts the float64 linspace between those ends again.
        let ts = linspace(sigma_max * train as f64, sigma_min * train as f64, steps);
        let sigmas_f32: Vec<f32> = ts
            .iter()
            .map(|t| {
                let s = t / train as f64;
                (shift * s / (1.0 + (shift - 1.0) * s)) as f32
            })
            .chain([0.0])
            .collect();
        let timesteps = sigmas_f32[..steps].iter().map(|&s| (s * train as f32) as f64).collect();
        Ok(Self {
            cfg: EulerConfig { shift, ..cfg.clone() },
            timesteps,
            sigmas: sigmas_f32.iter().map(|&s| s as f64).collect(),
            sigmas_f32,
        })
    }

    pub fn config(&self) -> &EulerConfig {
        &self.cfg
    }
}

impl Scheduler for EulerScheduler {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }

    fn len(&self) -> usize {
        self.timesteps.len()
    }

    fn kind(&self) -> SchedulerKind {
        SchedulerKind::Euler
    }

    /// Unlike diffusers the result keeps the sample's dtype: diffusers casts it to the model
    /// output's dtype, which rounds f32 latents to bf16 after every step of a bf16 model.
    fn step(&mut self, model_output: &Tensor, step_index: usize, sample: &Tensor) -> candle_core::Result<Tensor> {
        let n = self.len();
        if step_index >= n {
            bail!("Euler step index {step_index} out of range: the schedule has {n} steps");
        }
        if model_output.shape() != sample.shape() {
            bail!("Euler step: model output {:?} and sample {:?} differ in shape", model_output.shape(), sample.shape());
        }
        let dt = self.sigmas_f32[step_index + 1] - self.sigmas_f32[step_index];
        let x = sample.to_dtype(DType::F32)?;
        let v = model_output.to_dtype(DType::F32)?;
        (x + scale(&v, dt)?)?.to_dtype(sample.dtype())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn sched(steps: usize, shift: f64) -> EulerScheduler {
        EulerScheduler::new(&EulerConfig::wan21(), steps, Some(shift)).unwrap()
    }

    #[test]
    fn schedules_for_one_two_steps_and_shift_one() {
        let s = sched(1, 3.0);
        assert_eq!(s.timesteps(), &[1000.0]);
        assert_eq!(s.sigmas(), &[1.0, 0.0]);
        // Shift 1: linspace(1000, 1, 2) / 1000 = [1, 0.001], timesteps 1000 and float32(0.001) * 1000.
        let s = sched(2, 1.0);
        assert_eq!(s.sigmas(), &[1.0, 0.001f32 as f64, 0.0]);
        assert_eq!(s.timesteps(), &[1000.0, (0.001f32 * 1000.0) as f64]);
        // Shift 3 is applied twice: sigma_min = s(s(0.001)).
        let s = sched(2, 3.0);
        let once = (3.0f32 * 0.001) / (1.0 + 2.0f32 * 0.001);
        let twice = 3.0 * once as f64 / (1.0 + 2.0 * once as f64);
        assert_eq!(s.sigmas()[1], twice as f32 as f64);
        assert!(s.sigmas()[1] > 0.0088 && s.sigmas()[1] < 0.009, "{}", s.sigmas()[1]);
    }

    #[test]
    fn step_is_an_euler_step() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::new(&[0.5f32, -1.25, 2.0], &dev)?;
        let v = Tensor::new(&[0.1f32, 0.7, -0.3], &dev)?;
        let mut s = sched(1, 3.0);
        let want: Vec<f32> = [0.5f32, -1.25, 2.0].iter().zip([0.1f32, 0.7, -0.3]).map(|(x, v)| x - v).collect();
        assert_eq!(s.step(&v, 0, &x)?.to_vec1::<f32>()?, want);
        assert!(s.step(&v, 1, &x).is_err());
        let x16 = x.to_dtype(DType::BF16)?;
        assert_eq!(s.step(&v, 0, &x16)?.dtype(), DType::BF16);
        Ok(())
    }
}
