//! AdamW (own implementation, so its moments can be checkpointed), gradient clipping by global
//! norm, linear warmup + cosine learning-rate decay, and an exponential moving average of the
//! weights. All updates are elementwise tensor ops in the parameter dtype, on any device.

use candle_core::backprop::GradStore;
use candle_core::{DType, Result, Tensor, Var};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// A trainable tensor and its checkpoint name.
#[derive(Debug, Clone)]
pub struct Param {
    pub name: String,
    pub var: Var,
    /// Whether AdamW's weight decay applies (see [`wants_weight_decay`]).
    pub decay: bool,
}

impl Param {
    pub fn new(name: impl Into<String>, var: Var) -> Self {
        let name = name.into();
        let decay = wants_weight_decay(&name, var.rank());
        Self { name, var, decay }
    }
}

/// Decay only weight matrices and kernels. Norm weights and biases (rank 1), token embedding
/// tables, modulation tables and relative-position biases are left alone: they set scales,
/// offsets and lookups, not features.
pub fn wants_weight_decay(name: &str, rank: usize) -> bool {
    let exempt = ["norm", ".bias", "shared.", "embed_tokens.", "scale_shift_table", "relative_attention_bias"];
    rank >= 2 && !exempt.iter().any(|e| name.contains(e))
}

/// Hyper-parameters of [`AdamW`] (torch's defaults except the weight decay).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdamWConfig {
    #[serde(default = "AdamWConfig::default_beta1")]
    pub beta1: f64,
    #[serde(default = "AdamWConfig::default_beta2")]
    pub beta2: f64,
    #[serde(default = "AdamWConfig::default_eps")]
    pub eps: f64,
    #[serde(default = "AdamWConfig::default_weight_decay")]
    pub weight_decay: f64,
}

impl AdamWConfig {
    fn default_beta1() -> f64 {
        0.9
    }
    fn default_beta2() -> f64 {
        0.999
    }
    fn default_eps() -> f64 {
        1e-8
    }
    fn default_weight_decay() -> f64 {
        0.01
    }
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: Self::default_beta1(),
            beta2: Self::default_beta2(),
            eps: Self::default_eps(),
            weight_decay: Self::default_weight_decay(),
        }
    }
}

/// AdamW with decoupled weight decay, as `torch.optim.AdamW`:
/// `p -= lr*wd*p; m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g^2;
/// p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)`.
pub struct AdamW {
    params: Vec<Param>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    cfg: AdamWConfig,
    /// Updates made so far (torch's `step`, for bias correction).
    t: u64,
}

impl AdamW {
    pub fn new(params: Vec<Param>, cfg: AdamWConfig) -> Result<Self> {
        let zeros = |p: &Param| p.var.zeros_like();
        let m = params.iter().map(zeros).collect::<Result<Vec<_>>>()?;
        let v = params.iter().map(zeros).collect::<Result<Vec<_>>>()?;
        Ok(Self { params, m, v, cfg, t: 0 })
    }

    pub fn params(&self) -> &[Param] {
        &self.params
    }

    pub fn config(&self) -> &AdamWConfig {
        &self.cfg
    }

    /// Updates made so far.
    pub fn steps(&self) -> u64 {
        self.t
    }

    /// One update with learning rate `lr`; every gradient is multiplied by `grad_scale` first
    /// (the clipping factor). Parameters without a gradient are left untouched, as in torch.
    pub fn step(&mut self, grads: &GradStore, lr: f64, grad_scale: f64) -> Result<()> {
        self.t += 1;
        let AdamWConfig { beta1, beta2, eps, weight_decay } = self.cfg;
        let bias1 = 1.0 - beta1.powf(self.t as f64);
        let bias2_sqrt = (1.0 - beta2.powf(self.t as f64)).sqrt();
        for (i, p) in self.params.iter().enumerate() {
            let Some(g) = grads.get(p.var.as_tensor()) else { continue };
            // candle can leave a Var's gradient attached to the forward graph (when the Var feeds
            // an op such as a strided conv2d directly); detached, so the moments never chain one
            // step's graph into the next (hundreds of MB a step otherwise)
            let g = g.detach();
            let g = if grad_scale != 1.0 { g.affine(grad_scale, 0.0)? } else { g };
            let m = ((&self.m[i] * beta1)? + (&g * (1.0 - beta1))?)?;
            let v = ((&self.v[i] * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
            let denom = ((v.sqrt()? / bias2_sqrt)? + eps)?;
            let update = ((&m / &denom)? * (lr / bias1))?;
            let w = p.var.as_tensor().detach();
            let w = if p.decay && weight_decay != 0.0 { (w * (1.0 - lr * weight_decay))? } else { w };
            p.var.set(&(w - update)?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }

    /// The moments as `m.<name>` / `v.<name>` tensors, for a checkpoint.
    pub fn state_tensors(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::with_capacity(2 * self.params.len());
        for (i, p) in self.params.iter().enumerate() {
            out.insert(format!("m.{}", p.name), self.m[i].clone());
            out.insert(format!("v.{}", p.name), self.v[i].clone());
        }
        out
    }

    /// Restores the moments of [`Self::state_tensors`] and the update count.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, steps: u64) -> Result<()> {
        for (i, p) in self.params.iter().enumerate() {
            for (prefix, slot) in [("m", &mut self.m[i]), ("v", &mut self.v[i])] {
                let key = format!("{prefix}.{}", p.name);
                let t = tensors
                    .get(&key)
                    .ok_or_else(|| candle_core::Error::Msg(format!("optimizer state has no `{key}`")))?;
                if t.dims() != p.var.dims() {
                    candle_core::bail!("optimizer state `{key}`: expected shape {:?}, got {:?}", p.var.dims(), t.dims());
                }
                *slot = t.to_dtype(p.var.dtype())?.to_device(p.var.device())?;
            }
        }
        self.t = steps;
        Ok(())
    }
}

/// The sum of several passes' gradients, parameter by parameter (a parameter none of them
/// reached stays absent, as in one pass): how the parts of a split batch make one step.
pub fn sum_grads(stores: Vec<GradStore>, params: &[Param]) -> Result<GradStore> {
    let mut stores = stores.into_iter();
    let mut total = stores.next().ok_or_else(|| candle_core::Error::Msg("sum_grads: expected at least one pass".into()))?;
    for mut store in stores {
        for p in params {
            if let Some(g) = store.remove(p.var.as_tensor()) {
                let sum = match total.remove(p.var.as_tensor()) {
                    Some(acc) => (acc + g)?,
                    None => g,
                };
                total.insert(p.var.as_tensor(), sum);
            }
        }
    }
    Ok(total)
}

/// The global L2 norm of the gradients of `params` (missing gradients count as zero), in f64.
pub fn grad_norm(grads: &GradStore, params: &[Param]) -> Result<f64> {
    let sums = params
        .iter()
        .filter_map(|p| grads.get(p.var.as_tensor()))
        .map(|g| g.to_dtype(DType::F32)?.sqr()?.sum_all())
        .collect::<Result<Vec<_>>>()?;
    if sums.is_empty() {
        return Ok(0.0);
    }
    // one device-to-host copy for all parameters
    let per_param = Tensor::stack(&sums, 0)?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
    Ok(per_param.iter().sum::<f64>().sqrt())
}

/// The factor that brings a gradient of norm `norm` down to `max_norm` (1 when already below,
/// or when clipping is off with `max_norm <= 0`), as torch's `clip_grad_norm_`.
pub fn clip_factor(norm: f64, max_norm: f64) -> f64 {
    if max_norm > 0.0 && norm > max_norm {
        max_norm / (norm + 1e-6)
    } else {
        1.0
    }
}

/// Linear warmup from 0 to `peak`, then cosine decay to `peak * min_ratio` at `total` steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    pub peak: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
    pub min_ratio: f64,
}

impl LrSchedule {
    /// The learning rate of update `step` (0-based).
    pub fn at(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.peak * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let progress = ((step - self.warmup_steps) as f64 / span as f64).min(1.0);
        let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        self.peak * (self.min_ratio + (1.0 - self.min_ratio) * cosine)
    }
}

/// Current values by parameter name (detached: they share storage with the parameters).
pub fn current_tensors<'a>(params: impl IntoIterator<Item = &'a Param>) -> HashMap<String, Tensor> {
    params.into_iter().map(|p| (p.name.clone(), p.var.as_tensor().detach())).collect()
}

/// Exponential moving average of parameters: `ema = d*ema + (1-d)*p` after each update, with
/// `d = min(decay, (1+n)/(10+n))` after n updates so early, poor weights fade quickly.
pub struct Ema {
    decay: f64,
    shadow: Vec<Tensor>,
    updates: u64,
}

impl Ema {
    /// Starts from a copy of the current weights.
    pub fn new(params: &[Param], decay: f64) -> Result<Self> {
        let shadow = params.iter().map(|p| p.var.as_tensor().detach().copy()).collect::<Result<Vec<_>>>()?;
        Ok(Self { decay, shadow, updates: 0 })
    }

    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// The decay used by the next update.
    pub fn current_decay(&self) -> f64 {
        let n = self.updates as f64;
        self.decay.min((1.0 + n) / (10.0 + n))
    }

    pub fn update(&mut self, params: &[Param]) -> Result<()> {
        let d = self.current_decay();
        for (s, p) in self.shadow.iter_mut().zip(params) {
            *s = ((&*s * d)? + (p.var.as_tensor().detach() * (1.0 - d))?)?;
        }
        self.updates += 1;
        Ok(())
    }

    /// The averaged weights by parameter name.
    pub fn tensors(&self, params: &[Param]) -> HashMap<String, Tensor> {
        params.iter().zip(&self.shadow).map(|(p, s)| (p.name.clone(), s.clone())).collect()
    }

    /// [`Self::tensors`] plus the current values of weights a run keeps frozen (their average is
    /// themselves).
    pub fn tensors_with_frozen(&self, params: &[Param], frozen: &[Param]) -> HashMap<String, Tensor> {
        let mut w = self.tensors(params);
        w.extend(current_tensors(frozen));
        w
    }

    /// Restores averaged weights saved with [`Self::tensors`] and the update count.
    pub fn load(&mut self, params: &[Param], tensors: &HashMap<String, Tensor>, updates: u64) -> Result<()> {
        for (s, p) in self.shadow.iter_mut().zip(params) {
            let t = tensors
                .get(&p.name)
                .ok_or_else(|| candle_core::Error::Msg(format!("EMA weights have no `{}`", p.name)))?;
            if t.dims() != p.var.dims() {
                candle_core::bail!("EMA `{}`: expected shape {:?}, got {:?}", p.name, p.var.dims(), t.dims());
            }
            *s = t.to_dtype(p.var.dtype())?.to_device(p.var.device())?;
        }
        self.updates = updates;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn decay_exemptions_follow_names_and_rank() {
        assert!(wants_weight_decay("transformer.blocks.0.attn1.to_q.weight", 2));
        assert!(wants_weight_decay("transformer.patch_embedding.weight", 5));
        assert!(!wants_weight_decay("transformer.blocks.0.attn1.to_q.bias", 1));
        assert!(!wants_weight_decay("transformer.blocks.0.attn1.norm_q.weight", 1));
        assert!(!wants_weight_decay("transformer.blocks.0.norm2.weight", 1));
        assert!(!wants_weight_decay("transformer.scale_shift_table", 3));
        assert!(wants_weight_decay("transformer.condition_embedder.text_embedder.linear_1.weight", 2));
        assert!(wants_weight_decay("transformer.condition_embedder.time_proj.weight", 2));
        assert!(!wants_weight_decay("text_encoder.shared.weight", 2));
        assert!(!wants_weight_decay("text_encoder.encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", 2));
        assert!(wants_weight_decay("text_encoder.encoder.block.0.layer.1.DenseReluDense.wi_0.weight", 2));
    }

    /// Two AdamW steps on a 3-vector against torch.optim.AdamW(lr=0.1, betas=(0.9, 0.999),
    /// eps=1e-8, weight_decay=0.1) with loss = sum(p^2 * c), computed by hand in f64.
    #[test]
    fn adamw_matches_torch_update_rule() -> Result<()> {
        let dev = Device::Cpu;
        let p0 = [1.0f64, -2.0, 0.5];
        let c = [1.0f64, 0.5, 3.0];
        let var = Var::from_tensor(&Tensor::new(&p0, &dev)?)?;
        let cfg = AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.1 };
        let mut opt = AdamW::new(vec![Param { name: "w".into(), var: var.clone(), decay: true }], cfg)?;
        let coef = Tensor::new(&c, &dev)?;
        let (lr, wd, b1, b2, eps) = (0.1, 0.1, 0.9f64, 0.999f64, 1e-8);
        let mut want = p0;
        let (mut m, mut v) = ([0.0f64; 3], [0.0f64; 3]);
        for t in 1..=2 {
            let loss = (var.as_tensor().sqr()? * &coef)?.sum_all()?;
            let grads = loss.backward()?;
            opt.step(&grads, lr, 1.0)?;
            for i in 0..3 {
                let g = 2.0 * want[i] * c[i];
                want[i] *= 1.0 - lr * wd;
                m[i] = b1 * m[i] + (1.0 - b1) * g;
                v[i] = b2 * v[i] + (1.0 - b2) * g * g;
                let denom = v[i].sqrt() / (1.0 - b2.powi(t)).sqrt() + eps;
                want[i] -= lr / (1.0 - b1.powi(t)) * m[i] / denom;
            }
        }
        let got = var.as_tensor().to_vec1::<f64>()?;
        for i in 0..3 {
            assert!((got[i] - want[i]).abs() < 1e-12, "p[{i}] = {} want {}", got[i], want[i]);
        }
        assert_eq!(opt.steps(), 2);
        Ok(())
    }

    #[test]
    fn clipping_and_norm() -> Result<()> {
        let dev = Device::Cpu;
        let a = Var::from_tensor(&Tensor::new(&[3.0f32, 0.0], &dev)?)?;
        let b = Var::from_tensor(&Tensor::new(&[[4.0f32]], &dev)?)?;
        let params = vec![Param::new("a", a.clone()), Param::new("b", b.clone())];
        // d/dx (x^2/2) = x: gradients (3, 0) and (4), global norm 5
        let loss = ((a.as_tensor().sqr()?.sum_all()? + b.as_tensor().sqr()?.sum_all()?)? * 0.5)?;
        let grads = loss.backward()?;
        let norm = grad_norm(&grads, &params)?;
        assert!((norm - 5.0).abs() < 1e-6);
        assert!((clip_factor(norm, 1.0) - 0.2).abs() < 1e-6);
        assert_eq!(clip_factor(norm, 10.0), 1.0);
        assert_eq!(clip_factor(norm, 0.0), 1.0);
        Ok(())
    }

    #[test]
    fn lr_warms_up_then_follows_a_cosine() {
        let s = LrSchedule { peak: 1e-3, warmup_steps: 10, total_steps: 110, min_ratio: 0.1 };
        assert!((s.at(0) - 1e-4).abs() < 1e-12);
        assert!((s.at(9) - 1e-3).abs() < 1e-12);
        assert!((s.at(10) - 1e-3).abs() < 1e-12);
        assert!((s.at(60) - 0.55e-3).abs() < 1e-12, "{}", s.at(60));
        assert!((s.at(110) - 1e-4).abs() < 1e-12);
        assert!((s.at(500) - 1e-4).abs() < 1e-12);
        let mut prev = f64::MAX;
        for step in 10..=110 {
            assert!(s.at(step) <= prev);
            prev = s.at(step);
        }
    }

    #[test]
    fn ema_warms_up_its_decay() -> Result<()> {
        let dev = Device::Cpu;
        let var = Var::from_tensor(&Tensor::new(&[0.0f32], &dev)?)?;
        let params = vec![Param::new("w", var.clone())];
        let mut ema = Ema::new(&params, 0.999)?;
        assert!((ema.current_decay() - 0.1).abs() < 1e-12);
        var.set(&Tensor::new(&[1.0f32], &dev)?)?;
        ema.update(&params)?;
        // 0.1 * 0 + 0.9 * 1
        let got = ema.tensors(&params)["w"].to_vec1::<f32>()?[0];
        assert!((got - 0.9).abs() < 1e-6, "{got}");
        assert!((ema.current_decay() - 2.0 / 11.0).abs() < 1e-12);
        for _ in 0..100_000 {
            ema.updates += 1;
        }
        assert_eq!(ema.current_decay(), 0.999);
        Ok(())
    }
}
