//! UniPC multistep (UniP predictor + UniC corrector, B(h) variants) on flow sigmas, as
//! diffusers' `UniPCMultistepScheduler` with `prediction_type="flow_prediction"`,
//! `use_flow_sigmas=True`, `predict_x0=True`, `final_sigmas_type="zero"`.
//! Reference: https://github.com/huggingface/diffusers/blob/main/src/diffusers/schedulers/scheduling_unipc_multistep.py
use super::{check_request, linspace, scale, unsupported, Scheduler, SchedulerKind};
use crate::error::{CiakError, Result};
use candle_core::{bail, DType, Tensor};
use serde::Deserialize;

/// The B(h) function of the UniPC paper: bh1 = h, bh2 = e^h - 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SolverType {
    Bh1,
    Bh2,
}

/// The UniPC settings ciak runs; anything else in the file is refused when it is read.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "RawUniPcConfig")]
pub struct UniPcConfig {
    pub num_train_timesteps: usize,
    /// 1 to 3; 2 is what Wan uses.
    pub solver_order: usize,
    pub solver_type: SolverType,
    /// Must be true for solver_order >= 2: the last step goes to sigma 0, where only order 1 is finite.
    pub lower_order_final: bool,
    /// Step indices after which the corrector is skipped.
    pub disable_corrector: Vec<usize>,
    pub flow_shift: f64,
}

impl UniPcConfig {
    /// Wan2.1 T2V/I2V diffusers scheduler, as `UniPCMultistepScheduler(prediction_type="flow_prediction",
    /// use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=3.0)` in
    /// https://github.com/huggingface/diffusers/blob/main/scripts/convert_wan_to_diffusers.py
    pub fn wan21() -> Self {
        Self {
            num_train_timesteps: 1000,
            solver_order: 2,
            solver_type: SolverType::Bh2,
            lower_order_final: true,
            disable_corrector: Vec::new(),
            flow_shift: super::WAN_DEFAULT_SHIFT,
        }
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if !(1..=3).contains(&self.solver_order) {
            return Err(unsupported("solver_order", self.solver_order, "1, 2 or 3"));
        }
        if self.solver_order >= 2 && !self.lower_order_final {
            return Err(unsupported(
                "lower_order_final",
                false,
                "true with final_sigmas_type zero; diffusers gives inf/NaN on the last step otherwise",
            ));
        }
        if self.num_train_timesteps == 0 {
            return Err("expected num_train_timesteps >= 1, got 0".to_string());
        }
        Ok(())
    }
}

/// `scheduler_config.json` of `UniPCMultistepScheduler` as diffusers writes it (unknown keys ignored).
#[derive(Deserialize)]
struct RawUniPcConfig {
    num_train_timesteps: usize,
    solver_order: usize,
    prediction_type: String,
    thresholding: bool,
    predict_x0: bool,
    solver_type: String,
    lower_order_final: bool,
    disable_corrector: Vec<usize>,
    solver_p: Option<serde_json::Value>,
    use_karras_sigmas: bool,
    use_exponential_sigmas: bool,
    use_beta_sigmas: bool,
    use_flow_sigmas: bool,
    flow_shift: f64,
    final_sigmas_type: String,
    // Newer than the Wan2.1 configs (diffusers 0.33), hence optional.
    #[serde(default)]
    use_dynamic_shifting: bool,
    #[serde(default)]
    shift_terminal: Option<f64>,
}

impl TryFrom<RawUniPcConfig> for UniPcConfig {
    type Error = String;

    fn try_from(raw: RawUniPcConfig) -> std::result::Result<Self, String> {
        let flags = [
            ("use_karras_sigmas", raw.use_karras_sigmas, "flow sigmas only"),
            ("use_exponential_sigmas", raw.use_exponential_sigmas, "flow sigmas only"),
            ("use_beta_sigmas", raw.use_beta_sigmas, "flow sigmas only"),
            ("thresholding", raw.thresholding, "false only"),
            ("use_dynamic_shifting", raw.use_dynamic_shifting, "a fixed flow_shift only"),
        ];
        for (name, value, expected) in flags {
            if value {
                return Err(unsupported(name, true, expected));
            }
        }
        if !raw.use_flow_sigmas {
            return Err(unsupported("use_flow_sigmas", false, "true only (flow-matching models)"));
        }
        if raw.prediction_type != "flow_prediction" {
            return Err(unsupported("prediction_type", format!("{:?}", raw.prediction_type), "\"flow_prediction\""));
        }
        if !raw.predict_x0 {
            return Err(unsupported("predict_x0", false, "true only (flow_prediction needs it)"));
        }
        if raw.final_sigmas_type != "zero" {
            return Err(unsupported("final_sigmas_type", format!("{:?}", raw.final_sigmas_type), "\"zero\""));
        }
        if let Some(t) = raw.shift_terminal {
            return Err(unsupported("shift_terminal", t, "null only"));
        }
        if let Some(p) = raw.solver_p.filter(|p| !p.is_null()) {
            return Err(unsupported("solver_p", p, "null only"));
        }
        let solver_type = match raw.solver_type.as_str() {
            "bh1" => SolverType::Bh1,
            // diffusers' __init__ maps the DPM-Solver names to bh2 the same way.
            "bh2" | "midpoint" | "heun" | "logrho" => SolverType::Bh2,
            other => return Err(unsupported("solver_type", format!("{other:?}"), "\"bh1\" or \"bh2\"")),
        };
        let cfg = UniPcConfig {
            num_train_timesteps: raw.num_train_timesteps,
            solver_order: raw.solver_order,
            solver_type,
            lower_order_final: raw.lower_order_final,
            disable_corrector: raw.disable_corrector,
            flow_shift: raw.flow_shift,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// UniPC sampler state for one run; `step(.., 0, ..)` starts a new run.
pub struct UniPcScheduler {
    cfg: UniPcConfig,
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    /// The same sigmas as f32, the dtype diffusers does the coefficient math in.
    sigmas_f32: Vec<f32>,
    /// x0 predictions of the latest steps, oldest first, at most solver_order.
    history: Vec<Tensor>,
    /// The sample before the latest predictor step, which the corrector refines.
    last_sample: Option<Tensor>,
    this_order: usize,
    lower_order_nums: usize,
    next_step: usize,
}

impl UniPcScheduler {
    pub fn new(cfg: &UniPcConfig, steps: usize, shift_override: Option<f64>) -> Result<Self> {
        let shift = check_request(steps, shift_override.unwrap_or(cfg.flow_shift), cfg.num_train_timesteps)?;
        cfg.validate().map_err(CiakError::InvalidRequest)?;
        let train = cfg.num_train_timesteps as f64;
        // set_timesteps with use_flow_sigmas: numpy float64 all the way, then int64 / float32 casts.
        let mut s = linspace(1.0, 1.0 / train, steps + 1);
        s.truncate(steps);
        for v in s.iter_mut() {
            *v = shift * *v / (1.0 + (shift - 1.0) * *v);
        }
        // Keeps log(alpha) and log(sigma) finite on the first update.
        if (s[0] - 1.0).abs() < 1e-6 {
            s[0] -= 1e-6;
        }
        let timesteps = s.iter().map(|v| (v * train).trunc()).collect();
        let sigmas_f32: Vec<f32> = s.iter().map(|&v| v as f32).chain([0.0]).collect();
        Ok(Self {
            cfg: UniPcConfig { flow_shift: shift, ..cfg.clone() },
            timesteps,
            sigmas: sigmas_f32.iter().map(|&v| v as f64).collect(),
            sigmas_f32,
            history: Vec::new(),
            last_sample: None,
            this_order: 0,
            lower_order_nums: 0,
            next_step: 0,
        })
    }

    pub fn config(&self) -> &UniPcConfig {
        &self.cfg
    }

    fn reset(&mut self) {
        self.history.clear();
        self.last_sample = None;
        self.this_order = 0;
        self.lower_order_nums = 0;
        self.next_step = 0;
    }

    /// Scalar coefficients of one update from sigma index `s0` to `t`, using the x0 history at
    /// sigma indices `prev` (newest first); f32 like diffusers' 0-dim tensors.
    fn coefficients(&self, t: usize, s0: usize, prev: &[usize]) -> Coefficients {
        let sig = &self.sigmas_f32;
        let lambda = |s: f32| (1.0 - s).ln() - s.ln();
        let (sigma_t, sigma_s0) = (sig[t], sig[s0]);
        let alpha_t = 1.0 - sigma_t;
        let lambda_s0 = lambda(sigma_s0);
        let h = lambda(sigma_t) - lambda_s0;
        let mut rks: Vec<f32> = prev.iter().map(|&si| (lambda(sig[si]) - lambda_s0) / h).collect();
        rks.push(1.0);
        let hh = -h;
        let h_phi_1 = hh.exp_m1();
        let b_h = match self.cfg.solver_type {
            SolverType::Bh1 => hh,
            SolverType::Bh2 => hh.exp_m1(),
        };
        let order = rks.len();
        let mut b = Vec::with_capacity(order);
        let mut h_phi_k = h_phi_1 / hh - 1.0;
        let mut factorial = 1u64;
        for i in 1..=order {
            b.push(h_phi_k * factorial as f32 / b_h);
            factorial *= i as u64 + 1;
            h_phi_k = h_phi_k / hh - (1.0 / factorial as f64) as f32;
        }
        let r = (0..order).map(|i| rks.iter().map(|&rk| rk.powi(i as i32)).collect()).collect();
        Coefficients { ratio: sigma_t / sigma_s0, alpha_h_phi_1: alpha_t * h_phi_1, alpha_b_h: alpha_t * b_h, rks, r, b }
    }

    /// (m_k - m0) / r_k for the older x0 predictions, newest first.
    fn differences(&self, m0: &Tensor, older: &[Tensor], rks: &[f32]) -> candle_core::Result<Vec<Tensor>> {
        older.iter().zip(rks).map(|(mk, &rk)| (mk - m0)?.broadcast_div(&Tensor::new(rk, m0.device())?)).collect()
    }

    /// The x0 prediction `k` steps back from the newest (0 = newest).
    fn history_back(&self, k: usize) -> &Tensor {
        &self.history[self.history.len() - 1 - k]
    }

    /// UniC: refines the sample the last predictor produced, now that x0 at step `i` is known.
    fn correct(&self, x0_now: &Tensor, i: usize, this_sample: &Tensor) -> candle_core::Result<Tensor> {
        let Some(last_sample) = &self.last_sample else { return Ok(this_sample.clone()) };
        let order = self.this_order;
        let prev: Vec<usize> = (1..order).map(|k| i - (k + 1)).collect();
        let c = self.coefficients(i, i - 1, &prev);
        let m0 = self.history_back(0);
        let older: Vec<Tensor> = (1..order).map(|k| self.history_back(k).clone()).collect();
        let d1s = self.differences(m0, &older, &c.rks)?;
        let rhos = if order == 1 { vec![0.5] } else { solve(c.r, c.b) };
        let x_t_ = (scale(last_sample, c.ratio)? - scale(m0, c.alpha_h_phi_1)?)?;
        let d1_t = (x0_now - m0)?;
        let mut res: Option<Tensor> = None;
        for (d1, &rho) in d1s.iter().zip(&rhos) {
            let term = scale(d1, rho)?;
            res = Some(match res {
                None => term,
                Some(acc) => (acc + term)?,
            });
        }
        let last = scale(&d1_t, rhos[order - 1])?;
        let res = match res {
            None => last,
            Some(acc) => (acc + last)?,
        };
        x_t_ - scale(&res, c.alpha_b_h)?
    }

    /// UniP: predicts the sample at step `i + 1` from x0 predictions up to step `i`.
    fn predict(&self, i: usize, x: &Tensor, order: usize) -> candle_core::Result<Tensor> {
        let prev: Vec<usize> = (1..order).map(|k| i - k).collect();
        let c = self.coefficients(i + 1, i, &prev);
        let m0 = self.history_back(0);
        let x_t_ = (scale(x, c.ratio)? - scale(m0, c.alpha_h_phi_1)?)?;
        if order == 1 {
            // No history term; skipping it avoids diffusers' 0 * inf = NaN for bh1 at sigma 0.
            return Ok(x_t_);
        }
        let older: Vec<Tensor> = (1..order).map(|k| self.history_back(k).clone()).collect();
        let d1s = self.differences(m0, &older, &c.rks)?;
        let rhos = if order == 2 {
            vec![0.5]
        } else {
            let r = c.r[..order - 1].iter().map(|row| row[..order - 1].to_vec()).collect();
            solve(r, c.b[..order - 1].to_vec())
        };
        let mut res = scale(&d1s[0], rhos[0])?;
        for (d1, &rho) in d1s.iter().zip(&rhos).skip(1) {
            res = (res + scale(d1, rho)?)?;
        }
        x_t_ - scale(&res, c.alpha_b_h)?
    }
}

struct Coefficients {
    /// sigma_t / sigma_s0
    ratio: f32,
    /// alpha_t * h * phi_1(h)
    alpha_h_phi_1: f32,
    /// alpha_t * B(h)
    alpha_b_h: f32,
    /// r_k for the older predictions, then 1.
    rks: Vec<f32>,
    /// R[i][k] = r_k^i
    r: Vec<Vec<f32>>,
    b: Vec<f32>,
}

/// Solves the small system R rho = b in f32 like LAPACK's sgesv (partial pivoting, reciprocal
/// pivot scaling, back substitution by division), which torch.linalg.solve calls on CPU.
fn solve(mut a: Vec<Vec<f32>>, mut b: Vec<f32>) -> Vec<f32> {
    let n = b.len();
    for j in 0..n {
        let p = (j..n).fold(j, |best, i| if a[i][j].abs() > a[best][j].abs() { i } else { best });
        a.swap(j, p);
        b.swap(j, p);
        let inv = 1.0 / a[j][j];
        for i in j + 1..n {
            a[i][j] *= inv;
            for k in j + 1..n {
                a[i][k] -= a[i][j] * a[j][k];
            }
        }
    }
    for j in 0..n {
        for i in j + 1..n {
            b[i] -= b[j] * a[i][j];
        }
    }
    for k in (0..n).rev() {
        b[k] /= a[k][k];
        for i in 0..k {
            b[i] -= b[k] * a[i][k];
        }
    }
    b
}

impl Scheduler for UniPcScheduler {
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
        SchedulerKind::UniPc
    }

    fn step(&mut self, model_output: &Tensor, step_index: usize, sample: &Tensor) -> candle_core::Result<Tensor> {
        let n = self.len();
        if step_index >= n {
            bail!("UniPC step index {step_index} out of range: the schedule has {n} steps");
        }
        if step_index == 0 {
            self.reset();
        } else if step_index != self.next_step {
            bail!("UniPC steps must run in order: expected step {}, got {step_index}", self.next_step);
        }
        if model_output.shape() != sample.shape() {
            bail!("UniPC step: model output {:?} and sample {:?} differ in shape", model_output.shape(), sample.shape());
        }
        let i = step_index;
        let out_dtype = sample.dtype();
        let sample = sample.to_dtype(DType::F32)?;
        let v = model_output.to_dtype(DType::F32)?;
        // Flow prediction: x0 = x - sigma * v.
        let x0 = (&sample - scale(&v, self.sigmas_f32[i])?)?;
        let use_corrector = i > 0 && !self.cfg.disable_corrector.contains(&(i - 1));
        let sample = if use_corrector { self.correct(&x0, i, &sample)? } else { sample };
        self.history.push(x0);
        if self.history.len() > self.cfg.solver_order {
            self.history.remove(0);
        }
        let order = if self.cfg.lower_order_final { self.cfg.solver_order.min(n - i) } else { self.cfg.solver_order };
        self.this_order = order.min(self.lower_order_nums + 1);
        let prev_sample = self.predict(i, &sample, self.this_order)?;
        self.last_sample = Some(sample);
        if self.lower_order_nums < self.cfg.solver_order {
            self.lower_order_nums += 1;
        }
        self.next_step = i + 1;
        prev_sample.to_dtype(out_dtype)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn sched(steps: usize, shift: f64) -> UniPcScheduler {
        UniPcScheduler::new(&UniPcConfig::wan21(), steps, Some(shift)).unwrap()
    }

    #[test]
    fn wan_50_steps_shift_3_schedule() {
        // Values from diffusers, quoted in wan-facts.md section 6.1.
        let s = sched(50, 3.0);
        assert_eq!(&s.timesteps()[..4], &[999.0, 993.0, 986.0, 979.0]);
        assert_eq!(&s.timesteps()[47..], &[162.0, 113.0, 60.0]);
        let want = [0.999999f32, 0.9932501, 0.9863154, 0.9791884];
        for (k, w) in want.iter().enumerate() {
            assert_eq!(s.sigmas_f32[k], *w, "sigma {k}");
        }
        assert_eq!(s.sigmas_f32[49], 0.06040539);
        assert_eq!(s.sigmas().len(), 51);
        assert_eq!(s.sigmas()[50], 0.0);
        let s = sched(50, 5.0);
        assert_eq!(&s.timesteps()[..4], &[999.0, 995.0, 991.0, 987.0]);
        assert_eq!(s.timesteps()[49], 96.0);
    }

    #[test]
    fn one_two_steps_and_shift_one() {
        let s = sched(1, 3.0);
        assert_eq!(s.timesteps(), &[999.0]);
        assert_eq!(s.sigmas(), &[0.999999f32 as f64, 0.0]);
        // linspace(1, 0.001, 3)[:-1] = [1, 0.5005]; 3 * 0.5005 / (1 + 2 * 0.5005) = 0.7503748...
        let s = sched(2, 3.0);
        assert_eq!(s.timesteps(), &[999.0, 750.0]);
        assert_eq!(s.sigmas()[1], (1.5015f64 / 2.001) as f32 as f64);
        // Shift 1 leaves the linspace as it is: [1, 0.75025, 0.5005, 0.25075] (first nudged).
        let s = sched(4, 1.0);
        assert_eq!(s.timesteps(), &[999.0, 750.0, 500.0, 250.0]);
        assert_eq!(s.sigmas(), &[0.999999f32 as f64, 0.75025f32 as f64, 0.5005f32 as f64, 0.25075f32 as f64, 0.0]);
    }

    #[test]
    fn single_step_returns_the_x0_prediction() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::new(&[0.5f32, -1.25, 2.0], &dev)?;
        let v = Tensor::new(&[0.1f32, 0.7, -0.3], &dev)?;
        let mut s = sched(1, 3.0);
        let out = s.step(&v, 0, &x)?.to_vec1::<f32>()?;
        let sigma = s.sigmas_f32[0];
        let want: Vec<f32> = [0.5f32, -1.25, 2.0].iter().zip([0.1f32, 0.7, -0.3]).map(|(x, v)| x - sigma * v).collect();
        assert_eq!(out, want);
        Ok(())
    }

    #[test]
    fn out_of_order_steps_are_errors() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::zeros(4, DType::F32, &dev)?;
        let mut s = sched(3, 3.0);
        assert!(s.step(&x, 1, &x).is_err());
        s.step(&x, 0, &x)?;
        assert!(s.step(&x, 2, &x).is_err());
        assert!(s.step(&x, 3, &x).is_err());
        s.step(&x, 1, &x)?;
        // Step 0 again starts a new run.
        s.step(&x, 0, &x)?;
        s.step(&x, 1, &x)?;
        Ok(())
    }

    #[test]
    fn solve_matches_a_hand_solution() {
        let x = solve(vec![vec![1.0, 1.0], vec![-0.8, 1.0]], vec![0.3, 0.5]);
        // 1.8 x0 = 0.3 - 0.5 -> x0 = -1/9, x1 = 0.3 + 1/9
        assert!((x[0] + 1.0 / 9.0).abs() < 1e-7 && (x[1] - (0.3 + 1.0 / 9.0)).abs() < 1e-7, "{x:?}");
        let x = solve(vec![vec![1.0, 1.0, 1.0], vec![-1.0, -2.0, 1.0], vec![1.0, 4.0, 1.0]], vec![6.0, -2.0, 12.0]);
        for (got, want) in x.iter().zip([1.0f32, 2.0, 3.0]) {
            assert!((got - want).abs() < 1e-6, "{x:?}");
        }
    }
}
