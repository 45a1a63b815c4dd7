//! Training the built-in model's VAE: Wan2.1's `AutoencoderKLWan` at toy size, trained on the toy
//! world's frames, exported as the diffusers `vae/` folder the pipeline loads.
//!
//! Why this VAE: it is the architecture the engine already runs for Wan weights (one engine, not
//! two), its causal 1+4k chunking gives the DiT the latent shapes real Wan checkpoints use, and
//! being fully convolutional it trains on small random crops of short clips (cheap) and runs on
//! full 25-frame frames afterwards. The toy world is flat colours, anti-aliased edges and
//! checkerboards: a narrow, thin model (`base_dim` 8-16, one residual block per level) is enough
//! to reconstruct it, and keeps the decode inside the sampling time budget.
//!
//! Objective: reconstruction (L1 + L2, optionally L1 on the spatial gradients, for sharper
//! edges, and on the frame-to-frame differences, against ghosts and flicker) of a posterior sample
//! `z = mu + exp(logvar/2) * eps`, plus a small KL to N(0, 1). All terms are means (per pixel
//! value, per latent value), so the weights do not depend on the crop size. With
//! `foreground_weight` the reconstruction means weight the pixels near objects above the
//! background, and with `object_crops` part of the crops are centred on an object: objects
//! cover a few percent of a clip, so a plain mean spends its gradient on backdrops.
//!
//! Afterwards the per-channel `latents_mean`/`latents_std` of the posterior means of full-size
//! clips go into the exported config, as Wan's VAE config carries them.
//!
//! Output folder: `config.json` (the run's config), `loss.csv`, `loss.png`, `eval.csv` (PSNR of
//! held-out full-size clips), `checkpoint/`, and after the last step `vae/` (diffusers folder of
//! the EMA weights with the latent statistics).

use super::checkpoint::{find_checkpoint, load_checkpoint, save_checkpoint};
use super::export::DIFFUSERS_VERSION;
use super::flow::TrainRng;
use super::foreground::pixel_mask;
use super::vae_widen::widen_tensor;
use super::lossplot::{read_loss_csv, write_loss_plot, LossLog, LossRow};
use super::optim::{clip_factor, current_tensors, grad_norm, AdamW, AdamWConfig, Ema, LrSchedule, Param};
use super::{Result, TrainError, TrainEvent};
use crate::dataset::sample;
use crate::rng::Rng;
use crate::split::Split;
use crate::world::{render, Clip, SamplerConfig, Scene};
use candle_core::{DType, Device, IndexOp, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use ciak_engine::loader::{read_config, safetensors_files};
use ciak_models::wan::vae::layers::CausalConv3d;
use ciak_models::wan::vae::{AutoencoderKLWan, AutoencoderKLWanConfig, Decoder3d};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The VAE's size; the rest of `AutoencoderKLWanConfig` follows Wan2.1 (no attention outside the
/// mid blocks, no dropout, 3 channels in and out).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaeArch {
    pub base_dim: usize,
    pub num_res_blocks: usize,
    /// Latent channels; the DiT's in/out channels.
    #[serde(default = "defaults::z_dim")]
    pub z_dim: usize,
    #[serde(default = "defaults::dim_mult")]
    pub dim_mult: Vec<usize>,
    #[serde(default = "defaults::temperal_downsample")]
    pub temperal_downsample: Vec<bool>,
    /// Width of the decoder's levels in place of `base_dim` (diffusers' `decoder_base_dim`, as
    /// Wan2.2's VAE has): a wider decoder behind the same encoder. `None`: `base_dim`.
    #[serde(default)]
    pub decoder_base_dim: Option<usize>,
}

impl VaeArch {
    /// The diffusers config with the given latent statistics.
    pub fn config(&self, latents_mean: Vec<f64>, latents_std: Vec<f64>) -> AutoencoderKLWanConfig {
        AutoencoderKLWanConfig {
            base_dim: self.base_dim,
            decoder_base_dim: self.decoder_base_dim,
            z_dim: self.z_dim,
            dim_mult: self.dim_mult.clone(),
            num_res_blocks: self.num_res_blocks,
            attn_scales: vec![],
            temperal_downsample: self.temperal_downsample.clone(),
            dropout: 0.0,
            latents_mean,
            latents_std,
            is_residual: false,
            in_channels: 3,
            out_channels: 3,
            patch_size: None,
            scale_factor_temporal: None,
            scale_factor_spatial: None,
        }
    }

    /// The config before latent statistics exist (mean 0, std 1: identity normalisation).
    pub fn plain_config(&self) -> AutoencoderKLWanConfig {
        self.config(vec![0.0; self.z_dim], vec![1.0; self.z_dim])
    }
}

/// Weights of the loss terms; each term is a mean.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaeLossWeights {
    /// Mean absolute error per pixel value.
    pub l1: f64,
    /// Mean squared error per pixel value (what PSNR measures).
    pub l2: f64,
    /// Mean absolute error of the horizontal and vertical pixel differences (edges).
    #[serde(default)]
    pub edge: f64,
    /// Mean absolute error of the differences between consecutive frames: a moving object drawn
    /// as a smear or a ghost, or a backdrop that flickers, gets them wrong.
    #[serde(default)]
    pub temporal: f64,
    /// Mean KL divergence to N(0, 1) per latent value.
    pub kl: f64,
}

mod defaults {
    pub fn z_dim() -> usize {
        16
    }
    pub fn dim_mult() -> Vec<usize> {
        vec![1, 2, 4, 4]
    }
    pub fn temperal_downsample() -> Vec<bool> {
        vec![false, true, true]
    }
    pub fn min_lr_ratio() -> f64 {
        0.1
    }
    pub fn grad_clip() -> f64 {
        1.0
    }
    pub fn ema_decay() -> f64 {
        0.999
    }
    pub fn checkpoint_every() -> u64 {
        250
    }
    pub fn eval_clips() -> usize {
        6
    }
    pub fn stats_clips() -> usize {
        300
    }
}

/// A VAE training run, read from JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaeTrainConfig {
    /// Seeds the initial weights, the training clips, crops and posterior noise.
    pub seed: u64,
    pub vae: VaeArch,
    pub batch_size: usize,
    /// Frames of each training clip (1+4k), a random window of a 25-frame scene.
    pub clip_frames: usize,
    /// `[width, height]` of the random crops, multiples of 8 and at most 128 (the smallest side
    /// of any aspect ratio).
    pub crop: [usize; 2],
    /// Single-frame crops added to every step, a loss term of their own. One frame is the
    /// VAE's first chunk, an image autoencoder, so these teach colours, shapes and edges at a
    /// ninth of the cost of a 9-frame clip; the clips teach the time convolutions and caches.
    #[serde(default)]
    pub image_batch: usize,
    /// Total optimizer steps (the cosine schedule ends here).
    pub steps: u64,
    /// Peak learning rate.
    pub lr: f64,
    pub warmup_steps: u64,
    #[serde(default = "defaults::min_lr_ratio")]
    pub min_lr_ratio: f64,
    #[serde(default)]
    pub adamw: AdamWConfig,
    /// Max global gradient norm; 0 turns clipping off.
    #[serde(default = "defaults::grad_clip")]
    pub grad_clip: f64,
    #[serde(default = "defaults::ema_decay")]
    pub ema_decay: f64,
    pub loss: VaeLossWeights,
    #[serde(default = "defaults::checkpoint_every")]
    pub checkpoint_every: u64,
    /// Held-out PSNR every this many steps (and always after the last one); 0: only at the end.
    #[serde(default)]
    pub eval_every: u64,
    /// Held-out (`Split::Eval`) full-size clips the PSNR is measured on.
    #[serde(default = "defaults::eval_clips")]
    pub eval_clips: usize,
    /// Full-size training clips whose posterior means give `latents_mean`/`latents_std`.
    #[serde(default = "defaults::stats_clips")]
    pub stats_clips: usize,
    /// Stop (with a checkpoint) after the step that crosses this much training time in this
    /// invocation; resume later.
    #[serde(default)]
    pub max_seconds: Option<f64>,
    /// End this invocation after this step (the learning-rate schedule still runs to `steps`),
    /// with a checkpoint, and export the model as it is then: a stage of a staged run, or a
    /// snapshot to look at. `None`: train to `steps`.
    #[serde(default)]
    pub stop_at: Option<u64>,
    /// Initial bias of the posterior's log-variance channels (`quant_conv.bias[z_dim..]`);
    /// `None` keeps PyTorch's default init (log-variance near 0, posterior std near 1).
    #[serde(default)]
    pub init_logvar: Option<f64>,
    /// A trained diffusers `vae/` folder to start from (relative to the config file; its
    /// architecture must be `vae`); `None`: fresh weights from `seed`.
    #[serde(default)]
    pub init_from: Option<PathBuf>,
    /// Which weights the run trains (see [`VaeTrainPart`]).
    #[serde(default)]
    pub train: VaeTrainPart,
    /// Extra weight of the pixels an object covers on its frame or the frames a latent frame
    /// packs around it (see [`pixel_mask`]): they count `1 + foreground_weight` times in the
    /// reconstruction means. 0: every pixel alike.
    #[serde(default)]
    pub foreground_weight: f64,
    /// Share of the clip crops centred on an object (one picked at random, where it is in the
    /// middle frame of the window) rather than placed at random.
    #[serde(default)]
    pub object_crops: f64,
}

/// The weights a VAE run trains.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VaeTrainPart {
    /// Encoder and decoder.
    #[default]
    All,
    /// The decoder and `post_quant_conv` only, from `init_from`: the encoder keeps its weights,
    /// so the latent space, its statistics and every latent cache and DiT trained on it stay
    /// valid, while the decode improves (as Stable Diffusion's fine-tuned decoders were made).
    Decoder,
}

impl VaeTrainPart {
    /// Whether the parameter `name` (diffusers naming) is trained.
    pub fn trains(self, name: &str) -> bool {
        match self {
            Self::All => true,
            Self::Decoder => name.starts_with("decoder.") || name.starts_with("post_quant_conv."),
        }
    }
}

impl VaeTrainConfig {
    /// Reads a JSON config; `init_from` is taken from the file's folder.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
        let mut cfg: Self = serde_json::from_str(&text)
            .map_err(|e| TrainError::Config { path: path.to_path_buf(), message: e.to_string() })?;
        let base = path.parent().unwrap_or(Path::new("."));
        cfg.init_from = cfg.init_from.map(|v| base.join(v));
        cfg.validate().map_err(|message| TrainError::Config { path: path.to_path_buf(), message })?;
        Ok(cfg)
    }

    /// Checks the values that would otherwise fail deep inside a run.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let v = &self.vae;
        let nonzero = [
            ("vae.base_dim", v.base_dim),
            ("vae.num_res_blocks", v.num_res_blocks),
            ("vae.z_dim", v.z_dim),
            ("batch_size", self.batch_size),
            ("steps", self.steps as usize),
            ("eval_clips", self.eval_clips),
            ("stats_clips", self.stats_clips),
        ];
        if let Some((name, _)) = nonzero.iter().find(|(_, v)| *v == 0) {
            return Err(format!("expected {name} >= 1, got 0"));
        }
        let arch = v.plain_config();
        arch.validate().map_err(|e| format!("vae: {e}"))?;
        let (spatial, temporal) = (arch.spatial_ratio(), arch.temporal_ratio());
        if self.clip_frames == 0 || (self.clip_frames - 1) % temporal != 0 || self.clip_frames > 25 {
            return Err(format!("expected clip_frames = 1+{temporal}k and at most 25, got {}", self.clip_frames));
        }
        for (name, s) in [("width", self.crop[0]), ("height", self.crop[1])] {
            if s == 0 || s % spatial != 0 || s > 128 {
                return Err(format!("expected a crop {name} that is a multiple of {spatial} in 1..=128, got {s}"));
            }
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(format!("expected lr > 0, got {}", self.lr));
        }
        if !(0.0..1.0).contains(&self.ema_decay) {
            return Err(format!("expected ema_decay in [0, 1), got {}", self.ema_decay));
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return Err(format!("expected min_lr_ratio in [0, 1], got {}", self.min_lr_ratio));
        }
        let w = &self.loss;
        let terms = [w.l1, w.l2, w.edge, w.temporal, w.kl];
        if terms.iter().any(|x| !(x.is_finite() && *x >= 0.0)) || w.l1 + w.l2 + w.edge + w.temporal == 0.0 {
            return Err(format!("expected finite, non-negative loss weights with some reconstruction term, got {w:?}"));
        }
        if !(self.foreground_weight.is_finite() && self.foreground_weight >= 0.0) {
            return Err(format!("expected foreground_weight >= 0, got {}", self.foreground_weight));
        }
        if !(0.0..=1.0).contains(&self.object_crops) {
            return Err(format!("expected object_crops in [0, 1], got {}", self.object_crops));
        }
        Ok(())
    }

    fn lr_schedule(&self) -> LrSchedule {
        LrSchedule {
            peak: self.lr,
            warmup_steps: self.warmup_steps,
            total_steps: self.steps,
            min_ratio: self.min_lr_ratio,
        }
    }
}

/// FNV-1a of a parameter name: its initial values depend on the seed and its name only.
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// Salts that give the crops, the held-out clips and the statistics clips their own streams.
const CROP_SALT: u64 = 0xC80B_0000_0000_0001;
const EVAL_SALT: u64 = 0xE7A1_0000_0000_0002;
const STATS_SALT: u64 = 0x57A7_0000_0000_0003;
const IMAGE_SALT: u64 = 0x1A6E_0000_0000_0004;
const WIDEN_SALT: u64 = 0x3D1E_0000_0000_0005;

/// PyTorch's default init of the (diffusers) VAE, which defines no init of its own: conv weights
/// and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming-uniform with a = sqrt(5)), RMS gains 1.
fn init_vars(map: &VarMap, seed: u64) -> Result<()> {
    let vars = sorted_vars(map);
    let fan_in: HashMap<String, usize> = vars
        .iter()
        .filter(|(n, _)| n.ends_with(".weight"))
        .map(|(n, v)| (n.trim_end_matches(".weight").to_string(), v.dims()[1..].iter().product()))
        .collect();
    for (name, var) in vars {
        let n = var.elem_count();
        let values: Vec<f32> = if name.ends_with(".gamma") {
            vec![1.0; n]
        } else {
            let module = name.rsplit_once('.').map(|(m, _)| m).unwrap_or("");
            let fan =
                *fan_in.get(module).ok_or_else(|| TrainError::Data(format!("no weight for the bias `{name}`")))?;
            let bound = 1.0 / (fan as f64).sqrt();
            let mut rng = TrainRng::new(seed ^ name_hash(&name));
            (0..n).map(|_| ((2.0 * rng.uniform() - 1.0) * bound) as f32).collect()
        };
        var.set(&Tensor::from_vec(values, var.shape(), var.device())?)?;
    }
    Ok(())
}

fn sorted_vars(map: &VarMap) -> Vec<(String, Var)> {
    let data = map.data().lock().expect("var map lock");
    let mut vars: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

/// The VAE on trainable weights. The model structs precompute reshaped weights when built, so
/// a fresh view is built from the `Var`s for every step (a copy of a few MB).
struct TrainableVae {
    cfg: AutoencoderKLWanConfig,
    vars: VarMap,
    device: Device,
}

/// One step's model: the engine's encoder (as the pipeline encodes) and an unclamped decoder,
/// since clamping to [-1, 1] would give overshooting pixels no gradient.
struct StepModel {
    vae: AutoencoderKLWan,
    decoder: Decoder3d,
    post_quant_conv: CausalConv3d,
}

impl TrainableVae {
    fn new(cfg: AutoencoderKLWanConfig, seed: u64, device: &Device) -> Result<Self> {
        let vars = VarMap::new();
        let this = Self { cfg, vars, device: device.clone() };
        this.step_model()?;
        init_vars(&this.vars, seed)?;
        Ok(this)
    }

    fn step_model(&self) -> Result<StepModel> {
        let vb = VarBuilder::from_varmap(&self.vars, DType::F32, &self.device);
        let vae = AutoencoderKLWan::new(&self.cfg, vb.clone())?;
        let decoder = Decoder3d::new(&self.cfg, vb.pp("decoder"))?;
        let z = self.cfg.z_dim;
        let post_quant_conv = CausalConv3d::new(z, z, (1, 1), 1, (0, 0), vb.pp("post_quant_conv"))?;
        Ok(StepModel { vae, decoder, post_quant_conv })
    }

    /// Starts the posterior with log-variance `logvar`: with std 1 (the default) the decoder's
    /// first steps see latents that are mostly noise, and a short run cannot wait for the
    /// encoder to drown it out.
    fn set_logvar_bias(&self, logvar: f64) -> Result<()> {
        let z = self.cfg.z_dim;
        let data = self.vars.data().lock().expect("var map lock");
        let bias = data.get("quant_conv.bias").ok_or_else(|| TrainError::Data("no quant_conv.bias".into()))?;
        let mean_half = bias.as_tensor().narrow(0, 0, z)?;
        let logvar_half = Tensor::full(logvar as f32, z, &self.device)?;
        bias.set(&Tensor::cat(&[&mean_half, &logvar_half], 0)?)?;
        Ok(())
    }

    fn params(&self) -> Vec<Param> {
        sorted_vars(&self.vars).into_iter().map(|(k, v)| Param::new(k, v)).collect()
    }

    /// Loads the weights of a trained VAE folder; returns its latent statistics. A decoder of
    /// another width than the folder's (only when `train` is the decoder: a wider decoder
    /// trained behind the folder's encoder) starts as the folder's decoder widened
    /// ([`widen_tensor`]) when its width is a whole multiple of the folder's, and from its fresh
    /// weights otherwise.
    fn load_folder(&self, dir: &Path, train: VaeTrainPart) -> Result<(Vec<f64>, Vec<f64>)> {
        let bad = |message: String| TrainError::Config { path: dir.to_path_buf(), message };
        let cfg: AutoencoderKLWanConfig = read_config(dir)?;
        let width = |c: &AutoencoderKLWanConfig| c.decoder_base_dim.unwrap_or(c.base_dim);
        let (old_width, new_width) = (width(&cfg), width(&self.cfg));
        let other_width = old_width != new_width;
        let widen_by = (other_width && new_width % old_width == 0).then_some(new_width / old_width);
        if other_width && train != VaeTrainPart::Decoder {
            return Err(bad(format!(
                "expected a decoder of width {} as in this folder, got {} (a decoder of another width trains \
                 from fresh weights, with \"train\": \"decoder\")",
                width(&cfg),
                width(&self.cfg)
            )));
        }
        let arch = |c: &AutoencoderKLWanConfig| {
            (c.base_dim, c.z_dim, c.dim_mult.clone(), c.num_res_blocks, c.temperal_downsample.clone())
        };
        if arch(&cfg) != arch(&self.cfg) {
            return Err(bad(format!(
                "expected a VAE of (base_dim, z_dim, dim_mult, num_res_blocks, temperal_downsample) {:?}, got {:?}",
                arch(&self.cfg),
                arch(&cfg)
            )));
        }
        let weights = folder_weights(dir, &self.device)?;
        for (name, var) in sorted_vars(&self.vars) {
            let t = weights.get(&name).ok_or_else(|| bad(format!("expected a weight `{name}`, found none")))?;
            if other_width && VaeTrainPart::Decoder.trains(&name) {
                if let Some(k) = widen_by {
                    let mut rng = TrainRng::new(WIDEN_SALT ^ name_hash(&name));
                    var.set(&widen_tensor(&name, t, var.dims(), k, &mut rng)?)?;
                }
                continue;
            }
            if t.dims() != var.dims() {
                return Err(bad(format!("`{name}`: expected shape {:?}, got {:?}", var.dims(), t.dims())));
            }
            var.set(&t.to_dtype(DType::F32)?)?;
        }
        Ok((cfg.latents_mean, cfg.latents_std))
    }
}

impl StepModel {
    /// Shapes: z [B, z_dim, T, h, w] -> [B, 3, 1+4(T-1), 8h, 8w], not clamped.
    fn decode_unclamped(&self, z: &Tensor) -> Result<Tensor> {
        let (b, _, t, _, _) = z.dims5()?;
        let mut samples = Vec::with_capacity(b);
        for bi in 0..b {
            let mut cache = self.decoder.new_cache();
            let mut frames = Vec::with_capacity(t);
            for ti in 0..t {
                let x = z.i((bi, .., ti))?.unsqueeze(0)?.contiguous()?;
                let x = self.post_quant_conv.forward(&x, None)?;
                frames.push(self.decoder.forward(&x, &mut cache)?);
            }
            samples.push(Tensor::cat(&frames, 0)?.permute((1, 0, 2, 3))?);
        }
        Ok(Tensor::stack(&samples, 0)?)
    }
}

/// The loss of one batch and its parts (all means).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VaeLossParts {
    pub total: f64,
    pub l1: f64,
    pub l2: f64,
    pub edge: f64,
    pub temporal: f64,
    pub kl: f64,
}

/// Clips of one shape for one loss term: `x` [B, 3, T, H, W] in [-1, 1], and optionally the
/// per-pixel weights of the reconstruction means, [B, 1, T, H, W].
#[derive(Debug, Clone)]
pub struct VaeGroup {
    pub x: Tensor,
    pub weights: Option<Tensor>,
}

impl From<Tensor> for VaeGroup {
    fn from(x: Tensor) -> Self {
        Self { x, weights: None }
    }
}

fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

/// The mean of `t` ([B, C, T, H, W]), each value weighted by `w` ([B, 1, T, H, W]) when given.
fn weighted_mean(t: &Tensor, w: Option<&Tensor>) -> Result<Tensor> {
    match w {
        None => Ok(t.mean_all()?),
        Some(w) => {
            let w = w.broadcast_as(t.shape())?;
            Ok(((t * &w)?.sum_all()? / scalar(&w.sum_all()?)?)?)
        }
    }
}

/// The (weighted) mean absolute difference of neighbours along `dim` of the error `d`
/// ([B, C, T, H, W]); a difference takes the weight of its later pixel.
fn difference_l1(d: &Tensor, dim: usize, w: Option<&Tensor>) -> Result<Tensor> {
    let n = d.dim(dim)?;
    let g = (d.narrow(dim, 1, n - 1)? - d.narrow(dim, 0, n - 1)?)?.abs()?;
    weighted_mean(&g, w.map(|w| w.narrow(dim, 1, n - 1)).transpose()?.as_ref())
}

/// The training loss for clips `x` ([B, 3, T, H, W] in [-1, 1]) with optional pixel weights
/// `pw` ([B, 1, T, H, W]) and posterior noise `eps` (shaped like the latents): a scalar that
/// tracks gradients, and its parts. With `part` `Decoder` no gradient reaches the encoder.
fn vae_loss(
    model: &StepModel,
    x: &Tensor,
    pw: Option<&Tensor>,
    eps: &Tensor,
    w: &VaeLossWeights,
    part: VaeTrainPart,
) -> Result<(Tensor, VaeLossParts)> {
    let (mut mean, mut logvar) = model.vae.encode(x)?;
    if part == VaeTrainPart::Decoder {
        (mean, logvar) = (mean.detach(), logvar.detach());
    }
    let z = (&mean + ((&logvar * 0.5)?.exp()? * eps)?)?;
    let rec = model.decode_unclamped(&z)?;
    let diff = (&rec - x)?;
    let l1 = weighted_mean(&diff.abs()?, pw)?;
    let l2 = weighted_mean(&diff.sqr()?, pw)?;
    // KL(N(mu, var) || N(0, 1)) per latent value
    let kl = (((mean.sqr()? + logvar.exp()?)? - 1.0)? - &logvar)?;
    let kl = (kl.mean_all()? * 0.5)?;
    let mut total = ((&l1 * w.l1)? + (&l2 * w.l2)?)?;
    let edge = if w.edge > 0.0 {
        Some(((difference_l1(&diff, 4, pw)? + difference_l1(&diff, 3, pw)?)? * 0.5)?)
    } else {
        None
    };
    if let Some(e) = &edge {
        total = (total + (e * w.edge)?)?;
    }
    let temporal = if w.temporal > 0.0 && diff.dim(2)? > 1 { Some(difference_l1(&diff, 2, pw)?) } else { None };
    if let Some(t) = &temporal {
        total = (total + (t * w.temporal)?)?;
    }
    total = (total + (&kl * w.kl)?)?;
    let parts = VaeLossParts {
        total: scalar(&total)?,
        l1: scalar(&l1)?,
        l2: scalar(&l2)?,
        edge: edge.as_ref().map(scalar).transpose()?.unwrap_or(0.0),
        temporal: temporal.as_ref().map(scalar).transpose()?.unwrap_or(0.0),
        kl: scalar(&kl)?,
    };
    Ok((total, parts))
}

/// A clip as the VAE's input: [1, 3, T, H, W] in [-1, 1].
pub fn clip_tensor(clip: &Clip, device: &Device) -> Result<Tensor> {
    let x = Tensor::from_vec(clip.to_f32(), (clip.frames, clip.height, clip.width, 3), device)?;
    Ok(x.permute((3, 0, 1, 2))?.unsqueeze(0)?.contiguous()?)
}

/// The inverse of [`clip_tensor`]: [1, 3, T, H, W] in [-1, 1] (clamped) -> T RGB8 frames, one
/// after another, rows top first.
pub fn frames_rgb8(x: &Tensor) -> Result<Vec<u8>> {
    let x = x.squeeze(0)?.permute((1, 2, 3, 0))?.contiguous()?;
    let v = x.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    Ok(v.iter().map(|&p| ((p.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8).collect())
}

/// The window `win` of a clip as [3, t, h, w] in [-1, 1].
fn crop_values(clip: &Clip, win: CropWindow) -> Vec<f32> {
    let CropWindow { t0, t, x0, y0, w, h } = win;
    let mut out = vec![0f32; 3 * t * h * w];
    for c in 0..3 {
        for f in 0..t {
            for y in 0..h {
                let row = ((t0 + f) * clip.height + y0 + y) * clip.width * 3;
                let dst = ((c * t + f) * h + y) * w;
                for x in 0..w {
                    out[dst + x] = clip.pixels[row + (x0 + x) * 3 + c] as f32 / 127.5 - 1.0;
                }
            }
        }
    }
    out
}

/// Frames `t0..t0+t` of the window `[x0, x0+w) x [y0, y0+h)` of a `[frames, height, width]`
/// plane of `width` columns, as pixel weights `1 + extra * plane`.
fn crop_weights(plane: &[f32], width: usize, height: usize, win: CropWindow, extra: f32) -> Vec<f32> {
    let CropWindow { t0, t, x0, y0, w, h } = win;
    let mut out = Vec::with_capacity(t * h * w);
    for f in t0..t0 + t {
        for y in y0..y0 + h {
            let row = (f * height + y) * width;
            out.extend(plane[row + x0..row + x0 + w].iter().map(|&m| 1.0 + extra * m));
        }
    }
    out
}

/// Where a training crop lies in its clip: frames `t0..t0+t`, pixels `[x0, x0+w) x [y0, y0+h)`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct CropWindow {
    t0: usize,
    t: usize,
    x0: usize,
    y0: usize,
    w: usize,
    h: usize,
}

/// A random window of `t` frames and `[w, h]` pixels of `scene`; with probability
/// `object_crops` centred (as far as the frame allows) on a random object where it is in the
/// window's middle frame. Draws nothing past the placement when `object_crops` is 0, so runs
/// without it keep their crops.
fn crop_window(scene: &Scene, rng: &mut Rng, t: usize, [w, h]: [usize; 2], object_crops: f64) -> CropWindow {
    let (width, height) = (scene.width(), scene.height());
    let t0 = rng.below(scene.frames - t + 1);
    let mut x0 = rng.below(width - w + 1);
    let mut y0 = rng.below(height - h + 1);
    if object_crops > 0.0 && rng.chance(object_crops as f32) && !scene.objects.is_empty() {
        let i = rng.below(scene.objects.len());
        let [cx, cy] = scene.object_state(i, t0 + t / 2).center;
        let place =
            |c: f32, side: usize, full: usize| ((c - side as f32 / 2.0).round().max(0.0) as usize).min(full - side);
        x0 = place(cx, w, width);
        y0 = place(cy, h, height);
    }
    CropWindow { t0, t, x0, y0, w, h }
}

/// The clips or images of one group: item `j` of `n` drawn from `scene_of(j)` and cropped (see
/// [`crop_window`]) with the rng `rng_of(j)`, `t` frames each; with pixel weights when
/// `cfg.foreground_weight` is set.
fn crop_group(
    cfg: &VaeTrainConfig,
    n: usize,
    t: usize,
    scene_of: &dyn Fn(u64) -> Scene,
    rng_of: &dyn Fn(u64) -> Rng,
    device: &Device,
) -> Result<VaeGroup> {
    let [cw, ch] = cfg.crop;
    let mut values = Vec::with_capacity(n * 3 * t * ch * cw);
    let mut weights = Vec::new();
    // a clip's weights reach over the frames a latent frame packs after the first (Wan: 4), less one
    let reach = if t > 1 { cfg.vae.plain_config().temporal_ratio() - 1 } else { 0 };
    for j in 0..n as u64 {
        let scene = scene_of(j);
        let clip = render(&scene);
        let win = crop_window(&scene, &mut rng_of(j), t, cfg.crop, cfg.object_crops);
        values.extend(crop_values(&clip, win));
        if cfg.foreground_weight > 0.0 {
            let plane = pixel_mask(&scene, reach);
            weights.extend(crop_weights(&plane, clip.width, clip.height, win, cfg.foreground_weight as f32));
        }
    }
    let weights = if weights.is_empty() { None } else { Some(Tensor::from_vec(weights, (n, 1, t, ch, cw), device)?) };
    Ok(VaeGroup { x: Tensor::from_vec(values, (n, 3, t, ch, cw), device)?, weights })
}

/// Training batch of step `step` (0-based): item `step * batch + j` of the training scenes of
/// `seed`, each a window of `clip_frames` frames and a crop (see [`crop_window`]). A function of
/// the step alone, so a resumed run sees the same clips.
///
/// Shapes: -> x [batch, 3, clip_frames, crop_h, crop_w], weights [batch, 1, ...].
pub fn training_batch(cfg: &VaeTrainConfig, step: u64, device: &Device) -> Result<VaeGroup> {
    let sampler = SamplerConfig::default();
    let b = cfg.batch_size as u64;
    crop_group(
        cfg,
        cfg.batch_size,
        cfg.clip_frames,
        &|j| sample(cfg.seed, step * b + j, &sampler, Split::Train).scene,
        &|j| Rng::for_item(cfg.seed ^ CROP_SALT, step * b + j),
        device,
    )
}

/// Single-frame crops of step `step`: item `step * image_batch + j` of a training-scene stream
/// apart from the clips', one frame and crop each (see [`crop_window`]); `None` when
/// `image_batch` is 0.
///
/// Shapes: -> x [image_batch, 3, 1, crop_h, crop_w], weights [image_batch, 1, ...].
pub fn training_images(cfg: &VaeTrainConfig, step: u64, device: &Device) -> Result<Option<VaeGroup>> {
    if cfg.image_batch == 0 {
        return Ok(None);
    }
    let sampler = SamplerConfig::default();
    let b = cfg.image_batch as u64;
    let group = crop_group(
        cfg,
        cfg.image_batch,
        1,
        &|j| sample(cfg.seed ^ IMAGE_SALT, step * b + j, &sampler, Split::Train).scene,
        &|j| Rng::for_item(cfg.seed ^ IMAGE_SALT ^ CROP_SALT, step * b + j),
        device,
    )?;
    Ok(Some(group))
}

/// PSNR in dB of `got` against `want`, both in [-1, 1] (peak-to-peak 2, as 255 for 8-bit).
pub fn psnr_db(got: &Tensor, want: &Tensor) -> Result<f64> {
    let mse = scalar(&(got - want)?.sqr()?.mean_all()?)?;
    Ok(10.0 * (4.0 / mse.max(1e-20)).log10())
}

/// Held-out scene `i` of a run seeded with `seed`: full size, 25 frames, `Split::Eval`.
pub fn eval_scene(seed: u64, i: u64) -> Scene {
    eval_scene_in(seed, i, &SamplerConfig::default())
}

/// [`eval_scene`] drawn from the world `world` instead of the default one.
pub fn eval_scene_in(seed: u64, i: u64, world: &SamplerConfig) -> Scene {
    sample(seed ^ EVAL_SALT, i, world, Split::Eval).scene
}

/// Per-clip PSNR (dB) of encode (posterior mean) then decode, for full clips.
pub fn reconstruction_psnr(vae: &AutoencoderKLWan, scenes: &[Scene]) -> Result<Vec<f64>> {
    scenes
        .iter()
        .map(|scene| {
            let x = clip_tensor(&render(scene), vae.device())?;
            let (mean, _) = vae.encode(&x)?;
            let rec = vae.decode(&mean)?;
            psnr_db(&rec.to_dtype(DType::F32)?, &x)
        })
        .collect()
}

/// Per-channel mean and standard deviation of the posterior means of `clips` full-size
/// training clips (item `i` of the statistics stream of `seed`), accumulated in f64.
pub fn latent_statistics(vae: &AutoencoderKLWan, seed: u64, clips: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    let (mean, cov) = latent_moments(vae, seed, clips)?.mean_and_covariance();
    let std = (0..mean.len()).map(|c| cov[c][c].max(1e-12).sqrt()).collect();
    Ok((mean, std))
}

/// First and second moments of latent vectors (one per latent cell), in f64.
#[derive(Debug, Clone)]
pub struct LatentMoments {
    pub count: usize,
    pub sum: Vec<f64>,
    /// `sum x_i x_j` over the cells, z x z.
    pub cross: Vec<Vec<f64>>,
}

impl LatentMoments {
    /// The mean vector and the (population) covariance matrix.
    pub fn mean_and_covariance(&self) -> (Vec<f64>, Vec<Vec<f64>>) {
        let n = self.count.max(1) as f64;
        let mean: Vec<f64> = self.sum.iter().map(|s| s / n).collect();
        let cov = self
            .cross
            .iter()
            .enumerate()
            .map(|(i, row)| row.iter().enumerate().map(|(j, q)| q / n - mean[i] * mean[j]).collect())
            .collect();
        (mean, cov)
    }
}

/// The moments of the posterior means of `clips` full-size training clips (item `i` of the
/// statistics stream of `seed`), over every latent cell.
pub fn latent_moments(vae: &AutoencoderKLWan, seed: u64, clips: usize) -> Result<LatentMoments> {
    let z = vae.config().z_dim;
    let mut moments = LatentMoments { count: 0, sum: vec![0f64; z], cross: vec![vec![0f64; z]; z] };
    let sampler = SamplerConfig::default();
    for i in 0..clips as u64 {
        let scene = sample(seed ^ STATS_SALT, i, &sampler, Split::Train).scene;
        let (mean, _) = vae.encode(&clip_tensor(&render(&scene), vae.device())?)?;
        // [1, z, T, h, w] -> [z, n]
        let m = mean.to_dtype(DType::F64)?.squeeze(0)?.flatten_from(1)?;
        for (c, s) in m.sum(1)?.to_vec1::<f64>()?.into_iter().enumerate() {
            moments.sum[c] += s;
        }
        for (row, q) in moments.cross.iter_mut().zip(m.matmul(&m.t()?)?.to_vec2::<f64>()?) {
            for (acc, v) in row.iter_mut().zip(q) {
                *acc += v;
            }
        }
        moments.count += m.dim(1)?;
    }
    Ok(moments)
}

/// Every tensor of a VAE folder's safetensors files, by name, in their stored dtype.
pub fn folder_weights(dir: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let mut weights = HashMap::new();
    for file in safetensors_files(dir)? {
        weights.extend(candle_core::safetensors::load(&file, device)?);
    }
    Ok(weights)
}

/// The diffusers `vae/config.json` of a Wan2.1-style VAE.
pub fn vae_config_json(cfg: &AutoencoderKLWanConfig) -> serde_json::Value {
    serde_json::json!({
        "_class_name": "AutoencoderKLWan",
        "_diffusers_version": DIFFUSERS_VERSION,
        "attn_scales": cfg.attn_scales,
        "base_dim": cfg.base_dim,
        "decoder_base_dim": cfg.decoder_base_dim,
        "dim_mult": cfg.dim_mult,
        "dropout": cfg.dropout,
        "latents_mean": cfg.latents_mean,
        "latents_std": cfg.latents_std,
        "num_res_blocks": cfg.num_res_blocks,
        "temperal_downsample": cfg.temperal_downsample,
        "z_dim": cfg.z_dim
    })
}

/// Writes a diffusers `vae/` folder (`config.json` + `diffusion_pytorch_model.safetensors`),
/// beside `out` first and then renamed into place.
pub fn write_vae_folder(cfg: &AutoencoderKLWanConfig, weights: &HashMap<String, Tensor>, out: &Path) -> Result<()> {
    let mut tmp_name = out.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    tmp_name.push(".tmp");
    let tmp = out.with_file_name(tmp_name);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    let config = tmp.join("config.json");
    let text = serde_json::to_string_pretty(&vae_config_json(cfg))
        .map_err(|e| TrainError::Config { path: config.clone(), message: e.to_string() })?;
    std::fs::write(&config, text + "\n").map_err(|e| TrainError::io(&config, e))?;
    candle_core::safetensors::save(weights, tmp.join("diffusion_pytorch_model.safetensors"))?;
    if out.exists() {
        std::fs::remove_dir_all(out).map_err(|e| TrainError::io(out, e))?;
    }
    std::fs::rename(&tmp, out).map_err(|e| TrainError::io(&tmp, e))
}

/// An inference VAE (plain tensors, so the fused kernels run) from named weights.
pub fn vae_from_weights(
    cfg: &AutoencoderKLWanConfig,
    weights: &HashMap<String, Tensor>,
    device: &Device,
) -> Result<AutoencoderKLWan> {
    let plain: HashMap<String, Tensor> =
        weights.iter().map(|(k, t)| Ok((k.clone(), t.detach().copy()?))).collect::<Result<_>>()?;
    Ok(AutoencoderKLWan::new(cfg, VarBuilder::from_tensors(plain, DType::F32, device))?)
}

/// What a checkpoint's `state.json` holds besides the tensors.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct VaeRunState {
    format: u32,
    step: u64,
    rng: TrainRng,
    seconds: f64,
    adam_steps: u64,
    ema_updates: u64,
    config: VaeTrainConfig,
}

const STATE_FORMAT: u32 = 1;
const PARTS: [&str; 3] = ["model", "ema", "optim"];

/// What one step did.
#[derive(Debug, Clone, Copy)]
pub struct VaeStepStats {
    pub loss: VaeLossParts,
    pub lr: f64,
    pub grad_norm: f64,
    pub duration: Duration,
}

/// A VAE training run in progress: weights, optimizer, EMA and the noise stream.
pub struct VaeTrainer {
    pub cfg: VaeTrainConfig,
    model: TrainableVae,
    /// The trained weights (optimizer and EMA).
    params: Vec<Param>,
    /// The weights `cfg.train` leaves as they are.
    frozen: Vec<Param>,
    /// `init_from`'s latent statistics, exported as they are when the encoder is frozen.
    init_stats: Option<(Vec<f64>, Vec<f64>)>,
    opt: AdamW,
    ema: Ema,
    rng: TrainRng,
    step: u64,
    seconds: f64,
}

impl VaeTrainer {
    /// A fresh run (weights from `cfg.seed`).
    pub fn new(cfg: &VaeTrainConfig, device: &Device) -> Result<Self> {
        cfg.validate().map_err(|message| TrainError::Config { path: PathBuf::new(), message })?;
        if cfg.train == VaeTrainPart::Decoder && cfg.init_from.is_none() {
            let message = "expected init_from (a trained VAE folder) with train \"decoder\", got none".into();
            return Err(TrainError::Config { path: PathBuf::new(), message });
        }
        let model = TrainableVae::new(cfg.vae.plain_config(), cfg.seed, device)?;
        if let Some(logvar) = cfg.init_logvar {
            model.set_logvar_bias(logvar)?;
        }
        let init_stats = match &cfg.init_from {
            Some(dir) => Some(model.load_folder(dir, cfg.train)?),
            None => None,
        };
        let (params, frozen): (Vec<Param>, Vec<Param>) = model.params().into_iter().partition(|p| cfg.train.trains(&p.name));
        let opt = AdamW::new(params.clone(), cfg.adamw.clone())?;
        let ema = Ema::new(&params, cfg.ema_decay)?;
        let rng = TrainRng::new(cfg.seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0x7AE5);
        Ok(Self { cfg: cfg.clone(), model, params, frozen, init_stats, opt, ema, rng, step: 0, seconds: 0.0 })
    }

    /// Steps done so far.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// Training time so far, across resumes.
    pub fn seconds(&self) -> f64 {
        self.seconds
    }

    pub fn num_parameters(&self) -> usize {
        self.params.iter().map(|p| p.var.elem_count()).sum()
    }

    pub fn device(&self) -> &Device {
        &self.model.device
    }

    /// The loss on `batch` (see [`Self::train_step_on`]) with the posterior noise drawn from
    /// `noise_seed`, without updating anything.
    pub fn eval_loss(&self, batch: &[VaeGroup], noise_seed: u64) -> Result<VaeLossParts> {
        let model = self.model.step_model()?;
        Ok(self.batch_loss(&model, batch, &mut TrainRng::new(noise_seed))?.1)
    }

    /// The sum of the losses of the groups in `batch`; the parts are their means.
    fn batch_loss(&self, model: &StepModel, batch: &[VaeGroup], rng: &mut TrainRng) -> Result<(Tensor, VaeLossParts)> {
        if batch.is_empty() {
            return Err(TrainError::Data("expected at least one group of clips, got none".into()));
        }
        let mut total: Option<Tensor> = None;
        let mut parts = VaeLossParts { total: 0.0, l1: 0.0, l2: 0.0, edge: 0.0, temporal: 0.0, kl: 0.0 };
        for g in batch {
            let eps = self.latent_noise(&g.x, rng)?;
            let (loss, p) = vae_loss(model, &g.x, g.weights.as_ref(), &eps, &self.cfg.loss, self.cfg.train)?;
            total = Some(match total {
                Some(t) => (t + loss)?,
                None => loss,
            });
            parts.total += p.total;
            let n = batch.len() as f64;
            parts.l1 += p.l1 / n;
            parts.l2 += p.l2 / n;
            parts.edge += p.edge / n;
            parts.temporal += p.temporal / n;
            parts.kl += p.kl / n;
        }
        Ok((total.expect("batch is not empty"), parts))
    }

    fn latent_noise(&self, x: &Tensor, rng: &mut TrainRng) -> Result<Tensor> {
        let (b, _, t, h, w) = x.dims5()?;
        let arch = &self.model.cfg;
        let (tr, sr) = (arch.temporal_ratio(), arch.spatial_ratio());
        rng.gaussian(&[b, arch.z_dim, 1 + (t - 1) / tr, h / sr, w / sr], x.device())
    }

    /// One optimizer step on the clips and images of the current step (see [`training_batch`]
    /// and [`training_images`]).
    pub fn train_step(&mut self) -> Result<VaeStepStats> {
        let mut batch = vec![training_batch(&self.cfg, self.step, &self.model.device)?];
        batch.extend(training_images(&self.cfg, self.step, &self.model.device)?);
        self.train_step_on(&batch)
    }

    /// One optimizer step on groups of clips, each [B, 3, 1+4k, H, W] in [-1, 1] with H and W
    /// multiples of 8; the loss is the sum of the groups' mean losses.
    pub fn train_step_on(&mut self, batch: &[VaeGroup]) -> Result<VaeStepStats> {
        let start = Instant::now();
        let model = self.model.step_model()?;
        let mut rng = self.rng;
        let (loss, parts) = self.batch_loss(&model, batch, &mut rng)?;
        self.rng = rng;
        if !parts.total.is_finite() {
            return Err(TrainError::Diverged { step: self.step + 1, what: format!("loss is {}", parts.total) });
        }
        let grads = loss.backward()?;
        let norm = grad_norm(&grads, &self.params)?;
        if !norm.is_finite() {
            return Err(TrainError::Diverged { step: self.step + 1, what: format!("gradient norm is {norm}") });
        }
        let lr = self.cfg.lr_schedule().at(self.step);
        self.opt.step(&grads, lr, clip_factor(norm, self.cfg.grad_clip))?;
        self.ema.update(&self.params)?;
        self.step += 1;
        let duration = start.elapsed();
        self.seconds += duration.as_secs_f64();
        Ok(VaeStepStats { loss: parts, lr, grad_norm: norm, duration })
    }

    /// Current weights by diffusers name.
    pub fn weights(&self) -> HashMap<String, Tensor> {
        current_tensors(self.params.iter().chain(&self.frozen))
    }

    /// EMA weights by diffusers name (frozen weights as they are).
    pub fn ema_weights(&self) -> HashMap<String, Tensor> {
        self.ema.tensors_with_frozen(&self.params, &self.frozen)
    }

    /// An inference VAE on the EMA weights, with identity latent statistics.
    pub fn ema_vae(&self) -> Result<AutoencoderKLWan> {
        vae_from_weights(&self.model.cfg, &self.ema_weights(), &self.model.device)
    }

    /// Writes everything a bit-identical resume needs into `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let state = VaeRunState {
            format: STATE_FORMAT,
            step: self.step,
            rng: self.rng,
            seconds: self.seconds,
            adam_steps: self.opt.steps(),
            ema_updates: self.ema.updates(),
            config: self.cfg.clone(),
        };
        let (model, ema, optim) = (self.weights(), self.ema_weights(), self.opt.state_tensors());
        save_checkpoint(dir, &[("model", &model), ("ema", &ema), ("optim", &optim)], &state)
    }

    /// Continues the run saved in `dir` under `cfg`, whose architecture and seed must be the
    /// saved ones (schedule, batch, loss weights and the rest may change).
    pub fn resume(cfg: &VaeTrainConfig, dir: &Path, device: &Device) -> Result<Self> {
        let ckpt = load_checkpoint::<VaeRunState>(dir, &PARTS, device)?;
        let state = &ckpt.state;
        let bad = |message: String| TrainError::Resume { path: ckpt.path.clone(), message };
        if state.format != STATE_FORMAT {
            return Err(bad(format!("expected checkpoint format {STATE_FORMAT}, got {}", state.format)));
        }
        if state.config.vae != cfg.vae {
            return Err(bad(format!("vae {:?} in the checkpoint, {:?} in the config", state.config.vae, cfg.vae)));
        }
        if state.config.seed != cfg.seed {
            return Err(bad(format!("seed {} in the checkpoint, {} in the config", state.config.seed, cfg.seed)));
        }
        if state.config.train != cfg.train {
            return Err(bad(format!("train {:?} in the checkpoint, {:?} in the config", state.config.train, cfg.train)));
        }
        let mut trainer = Self::new(cfg, device)?;
        let model = ckpt.part("model")?;
        for p in trainer.params.iter().chain(&trainer.frozen) {
            let t = model.get(&p.name).ok_or_else(|| bad(format!("model weights have no `{}`", p.name)))?;
            if t.dims() != p.var.dims() {
                return Err(bad(format!("`{}`: expected shape {:?}, got {:?}", p.name, p.var.dims(), t.dims())));
            }
            p.var.set(&t.to_dtype(p.var.dtype())?)?;
        }
        trainer.ema.load(&trainer.params, ckpt.part("ema")?, state.ema_updates).map_err(|e| bad(e.to_string()))?;
        trainer.opt.load_state(ckpt.part("optim")?, state.adam_steps).map_err(|e| bad(e.to_string()))?;
        trainer.rng = state.rng;
        trainer.step = state.step;
        trainer.seconds = state.seconds;
        Ok(trainer)
    }

    /// Mean and lowest PSNR of the EMA weights on the first `clips` held-out full-size clips.
    pub fn evaluate(&self, clips: usize) -> Result<EvalReport> {
        let scenes: Vec<Scene> = (0..clips as u64).map(|i| eval_scene(self.cfg.seed, i)).collect();
        let psnr = reconstruction_psnr(&self.ema_vae()?, &scenes)?;
        Ok(EvalReport::new(self.step, psnr))
    }

    /// Computes the latent statistics with the EMA weights (keeps `init_from`'s when the encoder
    /// is frozen: same encoder, same latent space) and writes the diffusers folder.
    pub fn export(&self, out: &Path) -> Result<AutoencoderKLWanConfig> {
        let (mean, std) = match (&self.init_stats, self.cfg.train) {
            (Some(stats), VaeTrainPart::Decoder) => stats.clone(),
            _ => latent_statistics(&self.ema_vae()?, self.cfg.seed, self.cfg.stats_clips)?,
        };
        let cfg = self.cfg.vae.config(mean, std);
        write_vae_folder(&cfg, &self.ema_weights(), out)?;
        Ok(cfg)
    }
}

/// Reconstruction quality of held-out full-size clips.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalReport {
    pub step: u64,
    /// Per clip, dB.
    pub psnr_db: Vec<f64>,
    pub mean_psnr_db: f64,
    pub min_psnr_db: f64,
}

impl EvalReport {
    fn new(step: u64, psnr_db: Vec<f64>) -> Self {
        let mean_psnr_db = psnr_db.iter().sum::<f64>() / psnr_db.len().max(1) as f64;
        let min_psnr_db = psnr_db.iter().copied().fold(f64::INFINITY, f64::min);
        Self { step, psnr_db, mean_psnr_db, min_psnr_db }
    }
}

/// What a VAE training run reports through its progress callback.
#[derive(Debug, Clone, PartialEq)]
pub enum VaeEvent {
    /// The events every trainer reports (resume, step, checkpoint, export, done).
    Train(TrainEvent),
    /// The parts of the loss of step `step` (the total is in the matching `Train(Step)`).
    Loss { step: u64, parts: VaeLossParts },
    /// Held-out reconstruction quality of the EMA weights.
    Eval(EvalReport),
}

/// The result of [`run_vae_training`].
#[derive(Debug, Clone)]
pub struct VaeTrainSummary {
    /// Optimizer steps done in total (including before a resume).
    pub steps: u64,
    pub last_loss: Option<f64>,
    pub checkpoint: PathBuf,
    /// The diffusers `vae/` folder (only once all steps are done).
    pub exported: Option<PathBuf>,
    /// The last held-out evaluation of this call.
    pub eval: Option<EvalReport>,
    /// Training time in total, across resumes.
    pub seconds: f64,
    pub parameters: usize,
}

const EVAL_HEADER: &str = "step,mean_psnr_db,min_psnr_db,seconds";

fn append_eval(path: &Path, report: &EvalReport, seconds: f64) -> Result<()> {
    let fresh = !path.is_file();
    let mut file =
        std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| TrainError::io(path, e))?;
    let mut text = String::new();
    if fresh {
        text.push_str(EVAL_HEADER);
        text.push('\n');
    }
    text.push_str(&format!("{},{:.4},{:.4},{:.3}\n", report.step, report.mean_psnr_db, report.min_psnr_db, seconds));
    file.write_all(text.as_bytes()).map_err(|e| TrainError::io(path, e))
}

/// Trains (or continues training) the VAE per `cfg` into the folder `out` (see the module docs),
/// on the CPU. A fresh run refuses a folder that already has a checkpoint, a resume needs one.
/// After the last step: held-out PSNR, latent statistics, and the `vae/` folder.
pub fn run_vae_training(
    cfg: &VaeTrainConfig,
    out: &Path,
    resume: bool,
    progress: &mut dyn FnMut(&VaeEvent),
) -> Result<VaeTrainSummary> {
    run_vae_training_on(cfg, out, resume, &Device::Cpu, progress)
}

/// [`run_vae_training`] on a given device.
pub fn run_vae_training_on(
    cfg: &VaeTrainConfig,
    out: &Path,
    resume: bool,
    device: &Device,
    progress: &mut dyn FnMut(&VaeEvent),
) -> Result<VaeTrainSummary> {
    super::tune_allocator_for_training();
    std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
    let ckpt_dir = out.join("checkpoint");
    let csv = out.join("loss.csv");
    let plot = out.join("loss.png");
    let eval_csv = out.join("eval.csv");
    let mut trainer = if resume {
        let t = VaeTrainer::resume(cfg, &ckpt_dir, device)?;
        progress(&VaeEvent::Train(TrainEvent::Resumed { step: t.step(), path: ckpt_dir.clone() }));
        t
    } else {
        if let Some(found) = find_checkpoint(&ckpt_dir) {
            return Err(TrainError::Resume {
                path: found,
                message: "this output folder already holds a checkpoint: resume it, or train into another folder"
                    .into(),
            });
        }
        let _ = std::fs::remove_file(&eval_csv);
        VaeTrainer::new(cfg, device)?
    };
    let config_path = out.join("config.json");
    let text = serde_json::to_string_pretty(cfg)
        .map_err(|e| TrainError::Config { path: config_path.clone(), message: e.to_string() })?;
    std::fs::write(&config_path, text).map_err(|e| TrainError::io(&config_path, e))?;
    let mut log = LossLog::open(&csv, resume.then_some(trainer.step()))?;

    let started = Instant::now();
    let mut last_loss = None;
    let mut last_eval = None;
    let mut saved_at = trainer.step();
    let end = cfg.stop_at.map_or(cfg.steps, |s| s.min(cfg.steps));
    while trainer.step() < end {
        let stats = trainer.train_step()?;
        last_loss = Some(stats.loss.total);
        let step = trainer.step();
        log.append(&LossRow { step, loss: stats.loss.total, lr: stats.lr, seconds: trainer.seconds() })?;
        progress(&VaeEvent::Train(TrainEvent::Step {
            step,
            total: cfg.steps,
            loss: stats.loss.total,
            lr: stats.lr,
            grad_norm: stats.grad_norm,
            samples_per_sec: (cfg.batch_size + cfg.image_batch) as f64 / stats.duration.as_secs_f64().max(1e-9),
            images: false,
            elapsed: Duration::from_secs_f64(trainer.seconds()),
        }));
        progress(&VaeEvent::Loss { step, parts: stats.loss });
        if cfg.eval_every > 0 && step.is_multiple_of(cfg.eval_every) && step != cfg.steps {
            let report = trainer.evaluate(cfg.eval_clips)?;
            append_eval(&eval_csv, &report, trainer.seconds())?;
            progress(&VaeEvent::Eval(report.clone()));
            last_eval = Some(report);
        }
        let out_of_time = cfg.max_seconds.is_some_and(|s| started.elapsed().as_secs_f64() >= s);
        let due = cfg.checkpoint_every > 0 && step.is_multiple_of(cfg.checkpoint_every);
        if due || out_of_time || step == end {
            trainer.save(&ckpt_dir)?;
            write_loss_plot(&read_loss_csv(&csv)?, &plot)?;
            saved_at = step;
            progress(&VaeEvent::Train(TrainEvent::Checkpoint { step, path: ckpt_dir.clone() }));
        }
        if out_of_time {
            break;
        }
    }
    if saved_at != trainer.step() || !ckpt_dir.join("state.json").is_file() {
        trainer.save(&ckpt_dir)?;
        progress(&VaeEvent::Train(TrainEvent::Checkpoint { step: trainer.step(), path: ckpt_dir.clone() }));
    }
    if csv.is_file() {
        write_loss_plot(&read_loss_csv(&csv)?, &plot)?;
    }
    let mut exported = None;
    if trainer.step() >= end {
        let report = trainer.evaluate(cfg.eval_clips)?;
        append_eval(&eval_csv, &report, trainer.seconds())?;
        progress(&VaeEvent::Eval(report.clone()));
        last_eval = Some(report);
        let dir = out.join("vae");
        trainer.export(&dir)?;
        progress(&VaeEvent::Train(TrainEvent::Exported { step: trainer.step(), path: dir.clone() }));
        exported = Some(dir);
    }
    progress(&VaeEvent::Train(TrainEvent::Done { step: trainer.step() }));
    Ok(VaeTrainSummary {
        steps: trainer.step(),
        last_loss,
        checkpoint: ckpt_dir,
        exported,
        eval: last_eval,
        seconds: trainer.seconds(),
        parameters: trainer.num_parameters(),
    })
}

/// Timing of one VAE size (see [`benchmark_vae`]).
#[derive(Debug, Clone)]
pub struct VaeBench {
    pub parameters: usize,
    /// Median seconds of `AutoencoderKLWan::decode` of a full clip.
    pub decode_seconds: f64,
    /// Median seconds of `AutoencoderKLWan::encode` of a full clip.
    pub encode_seconds: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Times decode and encode of a full clip (`width` x `height`, `frames` frames) on freshly
/// initialised weights of `arch`: one warm-up, then the median of `runs`.
pub fn benchmark_vae(arch: &VaeArch, width: usize, height: usize, frames: usize, runs: usize) -> Result<VaeBench> {
    let device = Device::Cpu;
    let model = TrainableVae::new(arch.plain_config(), 1, &device)?;
    let weights: HashMap<String, Tensor> =
        sorted_vars(&model.vars).into_iter().map(|(k, v)| (k, v.as_tensor().detach())).collect();
    let parameters = weights.values().map(|t| t.elem_count()).sum();
    let vae = vae_from_weights(&model.cfg, &weights, &device)?;
    let x = (TrainRng::new(2).gaussian(&[1, 3, frames, height, width], &device)? * 0.5)?;
    let (sr, tr) = (model.cfg.spatial_ratio(), model.cfg.temporal_ratio());
    let z = TrainRng::new(3).gaussian(&[1, arch.z_dim, 1 + (frames - 1) / tr, height / sr, width / sr], &device)?;
    let (mut dec, mut enc) = (Vec::new(), Vec::new());
    for i in 0..=runs.max(1) {
        let t = Instant::now();
        vae.decode(&z)?.sum_all()?.to_scalar::<f32>()?;
        let d = t.elapsed().as_secs_f64();
        let t = Instant::now();
        vae.encode(&x)?.0.sum_all()?.to_scalar::<f32>()?;
        let e = t.elapsed().as_secs_f64();
        if i > 0 {
            dec.push(d);
            enc.push(e);
        }
    }
    Ok(VaeBench { parameters, decode_seconds: median(dec), encode_seconds: median(enc) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> VaeTrainConfig {
        serde_json::from_value(serde_json::json!({
            "seed": 5, "vae": {"base_dim": 4, "num_res_blocks": 1}, "batch_size": 1, "clip_frames": 5,
            "crop": [16, 16], "steps": 3, "lr": 1e-3, "warmup_steps": 1,
            "loss": {"l1": 1.0, "l2": 1.0, "edge": 0.5, "kl": 1e-6}
        }))
        .unwrap()
    }

    #[test]
    fn config_checks_frames_and_crops() {
        let cfg = tiny();
        cfg.validate().unwrap();
        let bad = VaeTrainConfig { clip_frames: 6, ..cfg.clone() };
        assert!(bad.validate().unwrap_err().contains("clip_frames = 1+4k"));
        let bad = VaeTrainConfig { crop: [20, 16], ..cfg.clone() };
        assert!(bad.validate().unwrap_err().contains("multiple of 8"));
        let none = VaeLossWeights { l1: 0.0, l2: 0.0, edge: 0.0, temporal: 0.0, kl: 1.0 };
        let bad = VaeTrainConfig { loss: none, ..cfg.clone() };
        assert!(bad.validate().is_err());
        let only_temporal = VaeLossWeights { l1: 0.0, l2: 0.0, edge: 0.0, temporal: 1.0, kl: 1.0 };
        VaeTrainConfig { loss: only_temporal, ..cfg.clone() }.validate().unwrap();
        let bad = VaeTrainConfig { foreground_weight: -1.0, ..cfg.clone() };
        assert_eq!(bad.validate().unwrap_err(), "expected foreground_weight >= 0, got -1");
        let bad = VaeTrainConfig { object_crops: 1.5, ..cfg };
        assert_eq!(bad.validate().unwrap_err(), "expected object_crops in [0, 1], got 1.5");
    }

    #[test]
    fn weighted_means_and_differences() {
        let dev = Device::Cpu;
        // [1, 1, 2, 1, 3]: frame 0 = 0 1 3, frame 1 = 0 0 0
        let d = Tensor::from_vec(vec![0f32, 1.0, 3.0, 0.0, 0.0, 0.0], (1, 1, 2, 1, 3), &dev).unwrap();
        let w = Tensor::from_vec(vec![1f32, 1.0, 3.0, 1.0, 1.0, 1.0], (1, 1, 2, 1, 3), &dev).unwrap();
        let close = |t: Tensor, want: f64| {
            let got = scalar(&t).unwrap();
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        };
        close(weighted_mean(&d, None).unwrap(), 4.0 / 6.0);
        close(weighted_mean(&d, Some(&w)).unwrap(), (1.0 + 9.0) / 8.0);
        // along x: |1-0|, |3-1| on frame 0, zeros on frame 1; weights of the later pixel 1, 3, 1, 1
        close(difference_l1(&d, 4, None).unwrap(), 3.0 / 4.0);
        close(difference_l1(&d, 4, Some(&w)).unwrap(), (1.0 + 6.0) / 6.0);
        // along time: |0-0|, |0-1|, |0-3| with frame 1's weights (all 1)
        close(difference_l1(&d, 2, Some(&w)).unwrap(), 4.0 / 3.0);
    }

    #[test]
    fn object_crops_hold_an_object_and_weights_mark_it() {
        let plain = VaeTrainConfig { crop: [32, 32], clip_frames: 9, ..tiny() };
        let weighted = VaeTrainConfig { foreground_weight: 3.0, ..plain.clone() };
        let centred = VaeTrainConfig { object_crops: 1.0, ..weighted.clone() };
        let dev = Device::Cpu;
        let mut marked = [0usize; 2];
        for step in 0..12 {
            let a = training_batch(&plain, step, &dev).unwrap();
            assert!(a.weights.is_none());
            // weights do not move the crops
            let b = training_batch(&weighted, step, &dev).unwrap();
            let same = scalar(&(&a.x - &b.x).unwrap().abs().unwrap().sum_all().unwrap()).unwrap();
            assert_eq!(same, 0.0, "step {step}");
            for (k, cfg) in [&weighted, &centred].into_iter().enumerate() {
                let w = training_batch(cfg, step, &dev).unwrap().weights.unwrap();
                assert_eq!(w.dims(), &[1, 1, 9, 32, 32]);
                let v = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                assert!(v.iter().all(|&x| x == 1.0 || x == 4.0));
                // the middle frame of the window (index 4) of a centred crop holds its object
                let mid = &v[4 * 32 * 32..5 * 32 * 32];
                marked[k] += mid.iter().any(|&x| x == 4.0) as usize;
            }
        }
        assert_eq!(marked[1], 12, "every centred crop holds an object");
        assert!(marked[0] < 12, "random 32x32 crops miss objects now and then: {marked:?}");
        let images = VaeTrainConfig { image_batch: 2, ..centred };
        let im = training_images(&images, 0, &dev).unwrap().unwrap();
        assert_eq!(im.weights.unwrap().dims(), &[2, 1, 1, 32, 32]);
    }

    #[test]
    fn batches_are_a_function_of_the_step() {
        let cfg = tiny();
        let a = training_batch(&cfg, 3, &Device::Cpu).unwrap().x;
        let b = training_batch(&cfg, 3, &Device::Cpu).unwrap().x;
        let c = training_batch(&cfg, 4, &Device::Cpu).unwrap().x;
        assert_eq!(a.dims(), &[1, 3, 5, 16, 16]);
        let diff = |x: &Tensor, y: &Tensor| scalar(&(x - y).unwrap().abs().unwrap().sum_all().unwrap()).unwrap();
        assert_eq!(diff(&a, &b), 0.0);
        assert!(diff(&a, &c) > 0.0);
        // values in [-1, 1]; a small crop may be one flat colour, but not every one
        let mut varied = false;
        for step in 0..8 {
            let x = training_batch(&cfg, step, &Device::Cpu).unwrap().x;
            let (lo, hi) = (scalar(&x.min_all().unwrap()).unwrap(), scalar(&x.max_all().unwrap()).unwrap());
            assert!((-1.0..=1.0).contains(&lo) && (-1.0..=1.0).contains(&hi), "{lo} {hi}");
            varied |= lo < hi;
        }
        assert!(varied);
        assert!(training_images(&cfg, 0, &Device::Cpu).unwrap().is_none());
        let with_images = VaeTrainConfig { image_batch: 3, ..cfg };
        let im = training_images(&with_images, 2, &Device::Cpu).unwrap().unwrap().x;
        assert_eq!(im.dims(), &[3, 3, 1, 16, 16]);
        let again = training_images(&with_images, 2, &Device::Cpu).unwrap().unwrap().x;
        assert_eq!(diff(&im, &again), 0.0);
    }

    #[test]
    fn crop_reads_the_right_pixels() {
        let (w, h, f) = (5usize, 4usize, 3usize);
        let pixels: Vec<u8> = (0..w * h * f * 3).map(|i| (i % 251) as u8).collect();
        let clip = Clip { width: w, height: h, frames: f, fps: 12, pixels };
        let v = crop_values(&clip, CropWindow { t0: 1, t: 2, x0: 2, y0: 1, w: 3, h: 2 });
        // channel 2, frame 1 of the crop (clip frame 2), row 1 (clip row 2), column 0 (clip column 2)
        let want = clip.pixel(2, 2, 2)[2] as f32 / 127.5 - 1.0;
        assert_eq!(v[((2 * 2 + 1) * 2 + 1) * 3], want);
    }

    /// The training forward (engine encoder, unclamped decoder) is the engine's VAE: decoding
    /// matches `AutoencoderKLWan::decode` wherever that does not clamp.
    #[test]
    fn training_decoder_is_the_engine_decoder() {
        let dev = Device::Cpu;
        let arch = VaeArch {
            base_dim: 4,
            num_res_blocks: 1,
            z_dim: 16,
            dim_mult: defaults::dim_mult(),
            temperal_downsample: defaults::temperal_downsample(),
            decoder_base_dim: None,
        };
        let model = TrainableVae::new(arch.plain_config(), 9, &dev).unwrap();
        let step = model.step_model().unwrap();
        let z = TrainRng::new(4).gaussian(&[1, 16, 3, 2, 3], &dev).unwrap();
        let train = step.decode_unclamped(&z).unwrap();
        assert_eq!(train.dims(), &[1, 3, 9, 16, 24]);
        let weights: HashMap<String, Tensor> =
            sorted_vars(&model.vars).into_iter().map(|(k, v)| (k, v.as_tensor().detach())).collect();
        let engine = vae_from_weights(&model.cfg, &weights, &dev).unwrap().decode(&z).unwrap();
        let err =
            scalar(&(train.clamp(-1f32, 1f32).unwrap() - &engine).unwrap().abs().unwrap().max_all().unwrap()).unwrap();
        assert!(err < 1e-5, "training decoder vs engine decoder: {err}");
        assert!(train.track_op(), "the training decode must reach the weights");
    }

    /// Analytic gradients against central differences, one element of several kinds of weight.
    #[test]
    fn gradients_match_finite_differences() {
        let dev = Device::Cpu;
        let arch = VaeArch {
            base_dim: 4,
            num_res_blocks: 1,
            z_dim: 16,
            dim_mult: defaults::dim_mult(),
            temperal_downsample: defaults::temperal_downsample(),
            decoder_base_dim: None,
        };
        let model = TrainableVae::new(arch.plain_config(), 9, &dev).unwrap();
        let x = (TrainRng::new(5).gaussian(&[1, 3, 5, 16, 16], &dev).unwrap() * 0.5).unwrap();
        let eps = TrainRng::new(6).gaussian(&[1, 16, 2, 2, 2], &dev).unwrap();
        let w = VaeLossWeights { l1: 0.0, l2: 1.0, edge: 0.0, temporal: 0.0, kl: 0.01 };
        let loss = |m: &TrainableVae| vae_loss(&m.step_model().unwrap(), &x, None, &eps, &w, VaeTrainPart::All).unwrap();
        let (l, _) = loss(&model);
        let mut grads = l.backward().unwrap();
        let vars: HashMap<String, Var> = sorted_vars(&model.vars).into_iter().collect();
        for p in vars.values() {
            if let Some(g) = grads.remove(p.as_tensor()) {
                grads.insert(p.as_tensor(), g.detach());
            }
        }
        let mut report = Vec::new();
        let mut names: Vec<&String> = vars.keys().collect();
        names.sort();
        for name in names {
            let var = &vars[name];
            let g = grads.get(var.as_tensor()).map(|g| g.flatten_all().unwrap().to_vec1::<f32>().unwrap());
            let Some(g) = g else {
                report.push(format!("{name}: no gradient"));
                continue;
            };
            let orig = var.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            // the element with the largest gradient: best signal against f32 rounding
            let i = (0..g.len()).max_by(|&a, &b| g[a].abs().total_cmp(&g[b].abs())).unwrap();
            let h = 2e-3f32;
            let eval = |delta: f32| {
                let mut v = orig.clone();
                v[i] += delta;
                var.set(&Tensor::from_vec(v, var.shape(), &dev).unwrap()).unwrap();
                scalar(&loss(&model).0).unwrap()
            };
            let num = (eval(h) - eval(-h)) / (2.0 * h as f64);
            var.set(&Tensor::from_vec(orig, var.shape(), &dev).unwrap()).unwrap();
            // 5% plus the f32 resolution of a loss near 0.5 over 2h (about 1.5e-5)
            if (num - g[i] as f64).abs() > 0.05 * (g[i] as f64).abs() + 3e-5 {
                let rel = (num - g[i] as f64).abs() / num.abs().max(g[i].abs() as f64).max(1e-6);
                report.push(format!("{name}[{i}]: analytic {} numeric {num} (rel {rel:.3})", g[i]));
            }
        }
        assert!(report.is_empty(), "gradient mismatches:\n{}", report.join("\n"));
    }

    #[test]
    fn frames_rgb8_inverts_clip_tensor() {
        let scene = eval_scene(1, 0);
        let clip = render(&scene);
        let back = frames_rgb8(&clip_tensor(&clip, &Device::Cpu).unwrap()).unwrap();
        assert_eq!(back, clip.pixels);
    }

    #[test]
    fn psnr_of_known_error() {
        let a = Tensor::zeros((1, 3, 1, 2, 2), DType::F32, &Device::Cpu).unwrap();
        let b = (a.ones_like().unwrap() * 0.02).unwrap();
        // mse 4e-4 -> 10 log10(4 / 4e-4) = 40 dB
        assert!((psnr_db(&a, &b).unwrap() - 40.0).abs() < 1e-4);
    }
}
