//! Training the DiT (`WanTransformer3DModel`) and the toy UMT5 text encoder together with the
//! flow-matching objective of [`super::flow`]; AdamW, EMA, checkpoints, loss log and plot.
//!
//! Text goes through `ciak_engine::text::TextEncoder`, the pipeline's own code: the same
//! tokenizer settings (`text_len` tokens, `</s>` kept, padding), the same UMT5 forward and the
//! same zeroed rows past each prompt's length. Only the weights differ: `Var`s here, so the
//! gradient reaches the text encoder.
//!
//! Output folder: `config.json` (the config of the run), `loss.csv`, `loss.png`, `checkpoint/`
//! and, when a VAE folder is configured, `model/` (the diffusers folder of the EMA weights).

use super::checkpoint::{find_checkpoint, load_checkpoint, save_checkpoint};
use super::export::{export_pipeline, ExportSpec};
use super::flow::{
    condition_first_frames, drop_captions, flow_batch, restart_from_own, squared_error, timestep_of, temporal_error, weight_product, SigmaSampling, TermSum, TrainRng,
};
use super::lossplot::{read_loss_csv, write_loss_plot, LossLog, LossRow};
use super::optim::{clip_factor, current_tensors, grad_norm, sum_grads, AdamW, AdamWConfig, Ema, LrSchedule, Param};
use super::text::{pretrain_text_encoder, TextPretrainConfig, TextPretrainReport};
use super::{map_items, LatentBatch, LatentSource, Result, TrainError, TrainEvent};
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use ciak_engine::text::{PromptTokenizer, TextEncoder};
use ciak_models::wan::position;
use ciak_models::wan::transformer::{WanTransformer3DModel, WanTransformerConfig};
use ciak_models::wan::umt5::{relative_position_bucket, Umt5Config, Umt5EncoderModel};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The DiT's size; the rest of `WanTransformerConfig` follows Wan2.1 T2V.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DitArch {
    pub num_attention_heads: usize,
    /// Must split into three even RoPE parts: even and >= 6 (32, 48, 64 all work).
    pub attention_head_dim: usize,
    pub ffn_dim: usize,
    pub num_layers: usize,
    #[serde(default = "defaults::freq_dim")]
    pub freq_dim: usize,
    #[serde(default = "defaults::patch_size")]
    pub patch_size: [usize; 3],
    /// Latent channels of the VAE (`z_dim`), in and out.
    #[serde(default = "defaults::latent_channels")]
    pub latent_channels: usize,
    #[serde(default = "defaults::yes")]
    pub cross_attn_norm: bool,
    #[serde(default = "defaults::eps")]
    pub eps: f64,
    #[serde(default = "defaults::rope_max_seq_len")]
    pub rope_max_seq_len: usize,
    /// Coordinate channels appended to the latents (0; 2: height and width; 2 + 4k: and k octaves of
    /// their sines and cosines; ciak_models' `wan::position`): the patch embedding reads `latent_channels + position_channels`.
    #[serde(default)]
    pub position_channels: usize,
}

impl DitArch {
    /// `heads` heads of 64 channels, a 4x feed-forward, `layers` blocks, patches of 1 x `patch` x
    /// `patch` over `latent_channels`; the rest at the JSON defaults.
    pub fn new(heads: usize, layers: usize, patch: usize, latent_channels: usize) -> Self {
        Self {
            num_attention_heads: heads,
            attention_head_dim: 64,
            ffn_dim: heads * 64 * 4,
            num_layers: layers,
            freq_dim: defaults::freq_dim(),
            patch_size: [1, patch, patch],
            latent_channels,
            cross_attn_norm: defaults::yes(),
            eps: defaults::eps(),
            rope_max_seq_len: defaults::rope_max_seq_len(),
            position_channels: 0,
        }
    }
}

/// The text encoder's size; the rest of `Umt5Config` follows UMT5 (gated GELU, 32 buckets).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextArch {
    pub d_model: usize,
    pub d_kv: usize,
    pub num_heads: usize,
    pub num_layers: usize,
    pub d_ff: usize,
    #[serde(default = "defaults::buckets")]
    pub relative_attention_num_buckets: usize,
    #[serde(default = "defaults::max_distance")]
    pub relative_attention_max_distance: usize,
    #[serde(default = "defaults::eps")]
    pub layer_norm_epsilon: f64,
}

impl TextArch {
    /// Width `d_model` split over `num_heads` heads, a 2x feed-forward, `num_layers` blocks; the
    /// rest at the JSON defaults.
    pub fn new(d_model: usize, num_heads: usize, num_layers: usize) -> Self {
        Self {
            d_model,
            d_kv: d_model / num_heads.max(1),
            num_heads,
            num_layers,
            d_ff: 2 * d_model,
            relative_attention_num_buckets: defaults::buckets(),
            relative_attention_max_distance: defaults::max_distance(),
            layer_norm_epsilon: defaults::eps(),
        }
    }
}

mod defaults {
    pub fn freq_dim() -> usize {
        256
    }
    pub fn patch_size() -> [usize; 3] {
        [1, 2, 2]
    }
    pub fn latent_channels() -> usize {
        16
    }
    pub fn yes() -> bool {
        true
    }
    pub fn eps() -> f64 {
        1e-6
    }
    pub fn rope_max_seq_len() -> usize {
        1024
    }
    pub fn buckets() -> usize {
        32
    }
    pub fn max_distance() -> usize {
        128
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
    pub fn caption_dropout() -> f64 {
        0.1
    }
    pub fn shift() -> f64 {
        3.0
    }
    pub fn sigma_sampling() -> super::SigmaSampling {
        super::SigmaSampling::ShiftedUniform
    }
    pub fn checkpoint_every() -> u64 {
        500
    }
}

/// A training run, read from JSON. Paths are relative to the config file's folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DitTrainConfig {
    /// Seeds the initial weights and the noise, noise levels and caption dropout.
    pub seed: u64,
    pub transformer: DitArch,
    pub text_encoder: TextArch,
    /// The word-level `tokenizer.json`; the text encoder's vocabulary is its size.
    pub tokenizer: PathBuf,
    /// Tokens per prompt (padded/truncated); exported as the tokenizer's `model_max_length`.
    pub text_len: usize,
    pub batch_size: usize,
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
    /// Probability that a caption is replaced by "" (classifier-free guidance).
    #[serde(default = "defaults::caption_dropout")]
    pub caption_dropout: f64,
    /// Extra loss weight on latent cells an object touches: each such cell counts
    /// `1 + foreground_weight` times (the mean is taken over the weights, so the loss stays on the
    /// scale of a plain MSE). 0: plain MSE. Objects cover a few percent of a toy clip, so without
    /// it the gradient is almost all background.
    #[serde(default)]
    pub foreground_weight: f64,
    /// Weight of the motion term added to the loss on clip steps ([`temporal_error`]: the
    /// frame-to-frame change of the predicted clean clip's error, weighted like the main term).
    /// The plain MSE lets a blob that stays where the object starts pass for most of a moving
    /// object; this term charges it the object's travel. 0: off.
    #[serde(default)]
    pub temporal_weight: f64,
    /// Share of the clips on clip steps trained with a clean first latent frame (timestep 0 on its
    /// tokens, no loss on it; [`super::flow::condition_first_frames`]): the image-to-video task,
    /// which the sampler's image-first mode uses for text-to-video too (the first latent frame
    /// drawn alone as an image, the clip then drawn from it). Where the object is and what it
    /// looks like is then in the input, so the later frames only have to carry it on, a relative
    /// offset that RoPE attention sees directly. 0: off.
    #[serde(default)]
    pub first_frame_share: f64,
    /// Flow shift of the exported sampler and of the training noise levels.
    #[serde(default = "defaults::shift")]
    pub shift: f64,
    #[serde(default = "defaults::sigma_sampling")]
    pub sigma_sampling: SigmaSampling,
    /// Share of clips trained at exactly sigma = 1, where every sample starts. There the model
    /// sees pure noise, so its best answer is the mean clip of its caption: the only place the
    /// background and layout must come from the text. A toy clip's flat background survives
    /// 95% noise when pooled over the latent, so the shifted density alone visits noise levels
    /// where the caption matters a few percent of the time. 0: off.
    #[serde(default)]
    pub terminal_share: f64,
    #[serde(default = "defaults::checkpoint_every")]
    pub checkpoint_every: u64,
    /// Stop (with a checkpoint) after the step that crosses this much training time in this
    /// invocation; resume later with `--resume`.
    #[serde(default)]
    pub max_seconds: Option<f64>,
    /// End this invocation after this step (the learning-rate schedule still runs to `steps`),
    /// with a checkpoint, and export the model as it is then: a stage of a staged run, or a
    /// snapshot to look at. `None`: train to `steps`.
    #[serde(default)]
    pub stop_at: Option<u64>,
    /// On resume, take the weights, EMA, step, random stream and data position from the
    /// checkpoint but start AdamW's moments afresh (the checkpoint may lack its `optim` part), with
    /// the learning rate ramped up again over `warmup_steps`: how a run moves between machines
    /// when its 2x-sized optimizer state cannot travel (the GPU machine's transfer limits).
    #[serde(default)]
    pub fresh_optimizer: bool,
    /// Parts each batch is split into, run side by side, their gradients summed
    /// ([`DitTrainer::set_micro_batches`]): how a batch uses every CPU core. The same step up to
    /// the order of float sums, so it may change between invocations of one run. `None`: one per
    /// thread of the pool on the CPU, 1 on a GPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub micro_batches: Option<usize>,
    /// Pretrain the text encoder on the world's captions before the DiT and keep it frozen
    /// through the DiT run, as Wan's UMT5 is (see `train::text`); `None`: the encoder trains
    /// jointly with the DiT from scratch.
    #[serde(default)]
    pub text_pretrain: Option<TextPretrainConfig>,
    /// Initial relative-position bias of the text encoder's attention heads toward their nearest
    /// neighbours (head h of every layer prefers offset -1, +1, -2, +2, ... by this many logits);
    /// 0 keeps transformers' init (N(0, d_model^-0.5), about 0.09 at d_model 128). T5 has no
    /// other position signal: with biases that small every head attends almost uniformly, the
    /// encoder's outputs are a bag of words ("a red ball on a blue background" and "a blue ball
    /// on a red background" come out nearly alike), and a DiT run moves the biases too little to
    /// change that (measured: docs/training.md). A head that starts on its neighbour lets "red"
    /// mark "ball" and "blue" mark "background" from the first step.
    #[serde(default)]
    pub text_local_attention: f64,
    /// A trained VAE folder (`config.json` + safetensors) to export with; no export without one.
    #[serde(default)]
    pub vae: Option<PathBuf>,
    /// A model folder this run exported before (`transformer/` and `text_encoder/` in diffusers
    /// layout, e.g. `models/builtin`) whose weights a fresh run starts from, instead of `seed`'s
    /// and the text pretraining (unless `text_pretrain.rerun_on_init` runs it again on the folder's
    /// encoder): the current weights and the EMA both start as the folder's, AdamW
    /// starts afresh, and the schedule runs from step 0. How a run goes on when its checkpoint
    /// (with the optimizer's moments) is gone but its shipped model is not.
    #[serde(default)]
    pub init_from: Option<PathBuf>,
    /// Joint image and video training, as Wan trains on images beside its videos: a share of the
    /// steps trains on single frames instead of clips. `None`: clips only.
    #[serde(default)]
    pub image_steps: Option<ImageSteps>,
    /// Samples started from the model's own sigma-1 answer instead of the clip
    /// ([`super::flow::restart_from_own`]). `None`: every input is the clip noised.
    #[serde(default)]
    pub own_start: Option<OwnStart>,
}

/// Training on the states the sampler hands on. The clip's own noised states still show its
/// outline down to sigma 0.8 or so, so a model trained only on them learns to keep what its input
/// shows and to take the rest from the caption only near sigma 1, where the best answer is the
/// caption's mean clip: a blob of the right colour where the object goes. The sampler's later
/// states hold that blob, and the model keeps it (docs/training.md, "Session of 2026-11-29
/// (fifth)"). A share of the samples at sigma in `[min_sigma, 1)` starts instead from the model's
/// own sigma-1 answer (one forward pass more, without gradients) and trains toward the clip.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OwnStart {
    /// Chance that a sample in the range starts from the model's answer, in (0, 1].
    pub share: f64,
    /// Lowest noise level that does, in (0, 1): below it the target, which undoes the whole
    /// difference between the answer and the clip in the remaining `sigma`, grows as 1 / sigma.
    pub min_sigma: f64,
}

impl OwnStart {
    fn validate(&self) -> std::result::Result<(), String> {
        if !(self.share > 0.0 && self.share <= 1.0) {
            return Err(format!("expected own_start.share in (0, 1], got {}", self.share));
        }
        if !(self.min_sigma > 0.0 && self.min_sigma < 1.0) {
            return Err(format!("expected own_start.min_sigma in (0, 1), got {}", self.min_sigma));
        }
        Ok(())
    }
}

/// Steps on single frames: each is the first latent frame of cached clips. The causal VAE encodes
/// a clip's first latent frame from its first frame alone, so that slice is exactly the latent of
/// the image, and the DiT (temporal patch 1) sees it as a one-frame video at RoPE frame 0. An image
/// has a seventh of a default clip's tokens and a fiftieth of its attention, so a step on
/// `batches x batch_size` images costs less than one on `batch_size` clips: the appearance of
/// objects and backgrounds (colour, shape, size, where things are) is learned from several times
/// more scenes per CPU hour, and the clip steps teach motion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSteps {
    /// Share of the optimizer steps that train on images, in (0, 1]. Which steps is fixed by the
    /// step number (step s, 0-based, is an image step when floor((s + 1) share) > floor(s share)),
    /// so a resumed run draws the same steps.
    pub share: f64,
    /// Batches of `batch_size` clips drawn from the latent cache per image step; their first
    /// frames train together (one forward per aspect ratio, the loss weighted by image count).
    pub batches: usize,
}

impl ImageSteps {
    /// Whether step `step` (0-based) trains on images.
    pub fn is_image_step(&self, step: u64) -> bool {
        ((step + 1) as f64 * self.share).floor() > (step as f64 * self.share).floor()
    }

    fn validate(&self, patch_t: usize) -> std::result::Result<(), String> {
        if !(self.share > 0.0 && self.share <= 1.0) {
            return Err(format!("expected image_steps.share in (0, 1], got {}", self.share));
        }
        if self.batches == 0 {
            return Err("expected image_steps.batches >= 1, got 0".into());
        }
        if patch_t != 1 {
            return Err(format!("image_steps needs transformer.patch_size[0] = 1 (one latent frame per image), got {patch_t}"));
        }
        Ok(())
    }
}

impl DitTrainConfig {
    /// A run of `steps` steps at batch `batch_size` and peak learning rate `lr` with every other
    /// setting at its JSON default (off for the optional terms, the values of [`defaults`]
    /// otherwise; seed 0, 16 text tokens, no warm-up): the base that probes and tests change with
    /// struct update syntax, so a new setting needs its default in one place only.
    pub fn new(transformer: DitArch, text_encoder: TextArch, tokenizer: PathBuf, batch_size: usize, steps: u64, lr: f64) -> Self {
        Self {
            seed: 0,
            transformer,
            text_encoder,
            tokenizer,
            text_len: 16,
            batch_size,
            steps,
            lr,
            warmup_steps: 0,
            min_lr_ratio: defaults::min_lr_ratio(),
            adamw: AdamWConfig::default(),
            grad_clip: defaults::grad_clip(),
            ema_decay: defaults::ema_decay(),
            caption_dropout: defaults::caption_dropout(),
            foreground_weight: 0.0,
            temporal_weight: 0.0,
            first_frame_share: 0.0,
            shift: defaults::shift(),
            sigma_sampling: defaults::sigma_sampling(),
            terminal_share: 0.0,
            checkpoint_every: defaults::checkpoint_every(),
            max_seconds: None,
            stop_at: None,
            fresh_optimizer: false,
            micro_batches: None,
            text_pretrain: None,
            text_local_attention: 0.0,
            vae: None,
            init_from: None,
            image_steps: None,
            own_start: None,
        }
    }

    /// Reads a JSON config; relative paths are taken from the file's folder.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
        let mut cfg: Self =
            serde_json::from_str(&text).map_err(|e| TrainError::Config { path: path.to_path_buf(), message: e.to_string() })?;
        cfg.resolve_paths(path.parent().unwrap_or(Path::new(".")));
        cfg.validate().map_err(|message| TrainError::Config { path: path.to_path_buf(), message })?;
        Ok(cfg)
    }

    /// Takes the config's relative paths (`tokenizer`, `vae`, `init_from`) from `base`, the
    /// folder of the file it was read from; absolute paths stay as they are.
    pub fn resolve_paths(&mut self, base: &Path) {
        self.tokenizer = base.join(&self.tokenizer);
        self.vae = self.vae.take().map(|v| base.join(v));
        self.init_from = self.init_from.take().map(|v| base.join(v));
    }

    /// Checks the values that would otherwise fail deep inside a run.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if let Some(pre) = &self.text_pretrain {
            pre.validate()?;
        }
        let t = &self.transformer;
        let hd = t.attention_head_dim;
        if !hd.is_multiple_of(2) || hd < 6 {
            return Err(format!("expected transformer.attention_head_dim even and >= 6 (RoPE), got {hd}"));
        }
        if !position::supported(t.position_channels) {
            return Err(format!("expected transformer.position_channels {}, got {}", position::expected(), t.position_channels));
        }
        let nonzero = [
            ("transformer.num_attention_heads", t.num_attention_heads),
            ("transformer.ffn_dim", t.ffn_dim),
            ("transformer.num_layers", t.num_layers),
            ("transformer.latent_channels", t.latent_channels),
            ("text_encoder.d_model", self.text_encoder.d_model),
            ("text_encoder.num_heads", self.text_encoder.num_heads),
            ("text_encoder.d_kv", self.text_encoder.d_kv),
            ("text_encoder.d_ff", self.text_encoder.d_ff),
            ("text_len", self.text_len),
            ("batch_size", self.batch_size),
            ("steps", self.steps as usize),
            ("micro_batches", self.micro_batches.unwrap_or(1)),
        ];
        if let Some((name, _)) = nonzero.iter().find(|(_, v)| *v == 0) {
            return Err(format!("expected {name} >= 1, got 0"));
        }
        if t.patch_size.contains(&0) {
            return Err(format!("expected a nonzero transformer.patch_size, got {:?}", t.patch_size));
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(format!("expected lr > 0, got {}", self.lr));
        }
        if !(0.0..1.0).contains(&self.ema_decay) {
            return Err(format!("expected ema_decay in [0, 1), got {}", self.ema_decay));
        }
        if !(0.0..=1.0).contains(&self.caption_dropout) {
            return Err(format!("expected caption_dropout in [0, 1], got {}", self.caption_dropout));
        }
        if !(self.foreground_weight >= 0.0 && self.foreground_weight.is_finite()) {
            return Err(format!("expected foreground_weight >= 0, got {}", self.foreground_weight));
        }
        if !(self.temporal_weight >= 0.0 && self.temporal_weight.is_finite()) {
            return Err(format!("expected temporal_weight >= 0, got {}", self.temporal_weight));
        }
        if !(0.0..=1.0).contains(&self.first_frame_share) {
            return Err(format!("expected first_frame_share in [0, 1], got {}", self.first_frame_share));
        }
        if self.first_frame_share > 0.0 && t.patch_size[0] != 1 {
            return Err(format!("first_frame_share needs transformer.patch_size[0] = 1, got {}", t.patch_size[0]));
        }
        if !(0.0..=1.0).contains(&self.terminal_share) {
            return Err(format!("expected terminal_share in [0, 1], got {}", self.terminal_share));
        }
        if !(self.shift > 0.0 && self.shift.is_finite()) {
            return Err(format!("expected shift > 0, got {}", self.shift));
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return Err(format!("expected min_lr_ratio in [0, 1], got {}", self.min_lr_ratio));
        }
        if let Some(images) = &self.image_steps {
            images.validate(t.patch_size[0])?;
        }
        if let Some(own) = &self.own_start {
            own.validate()?;
        }
        Ok(())
    }

    /// The diffusers config of the DiT (T2V, text width = the text encoder's `d_model`).
    pub fn transformer_config(&self) -> WanTransformerConfig {
        let t = &self.transformer;
        WanTransformerConfig {
            patch_size: t.patch_size,
            num_attention_heads: t.num_attention_heads,
            attention_head_dim: t.attention_head_dim,
            in_channels: t.latent_channels + t.position_channels,
            out_channels: t.latent_channels,
            text_dim: self.text_encoder.d_model,
            freq_dim: t.freq_dim,
            ffn_dim: t.ffn_dim,
            num_layers: t.num_layers,
            cross_attn_norm: t.cross_attn_norm,
            qk_norm: Some("rms_norm_across_heads".to_string()),
            eps: t.eps,
            image_dim: None,
            added_kv_proj_dim: None,
            rope_max_seq_len: t.rope_max_seq_len,
            pos_embed_seq_len: None,
            position_channels: t.position_channels,
        }
    }

    /// The transformers config of the text encoder for a tokenizer of `vocab_size` ids.
    pub fn umt5_config(&self, vocab_size: usize) -> Umt5Config {
        let t = &self.text_encoder;
        Umt5Config {
            vocab_size,
            d_model: t.d_model,
            d_kv: t.d_kv,
            d_ff: t.d_ff,
            num_layers: t.num_layers,
            num_heads: t.num_heads,
            relative_attention_num_buckets: t.relative_attention_num_buckets,
            relative_attention_max_distance: t.relative_attention_max_distance,
            layer_norm_epsilon: t.layer_norm_epsilon,
            feed_forward_proj: "gated-gelu".to_string(),
            dense_act_fn: "gelu_new".to_string(),
            is_gated_act: true,
        }
    }

    fn lr_schedule(&self) -> LrSchedule {
        LrSchedule { peak: self.lr, warmup_steps: self.warmup_steps, total_steps: self.steps, min_ratio: self.min_lr_ratio }
    }

    /// Whether a checkpoint written under `other` holds the same model (sizes and tokens).
    fn same_model(&self, other: &Self) -> std::result::Result<(), String> {
        if self.transformer != other.transformer {
            return Err(format!("transformer {:?} in the checkpoint, {:?} in the config", other.transformer, self.transformer));
        }
        if self.text_encoder != other.text_encoder {
            return Err(format!("text_encoder {:?} in the checkpoint, {:?} in the config", other.text_encoder, self.text_encoder));
        }
        if self.text_len != other.text_len {
            return Err(format!("text_len {} in the checkpoint, {} in the config", other.text_len, self.text_len));
        }
        if self.text_pretrain.is_some() != other.text_pretrain.is_some() {
            let says = |c: &Self| if c.text_pretrain.is_some() { "a pretrained, frozen" } else { "a jointly trained" };
            return Err(format!("{} text encoder in the checkpoint, {} in the config", says(other), says(self)));
        }
        Ok(())
    }
}

/// The tensors of one component of an exported model folder (`dir/file`, as the exporter writes
/// it), named with `prefix` as the trainer names them; read by the VAE trainer's folder reader.
fn read_model_weights(dir: &Path, file: &str, prefix: &str, device: &Device) -> Result<HashMap<String, Tensor>> {
    let path = dir.join(file);
    let Some(component) = path.parent().filter(|_| path.is_file()) else {
        let message = format!("expected an exported model folder with {file}, found no such file");
        return Err(TrainError::Config { path: dir.to_path_buf(), message });
    };
    let tensors = super::vae::folder_weights(component, device)?;
    Ok(tensors.into_iter().map(|(k, t)| (format!("{prefix}{k}"), t)).collect())
}

/// Number of ids of a `tokenizer.json`, added tokens included.
pub fn tokenizer_vocab_size(tokenizer_json: &Path) -> Result<usize> {
    let tok = tokenizers::Tokenizer::from_file(tokenizer_json).map_err(|e| {
        TrainError::Engine(ciak_engine::error::CiakError::Tokenizer { path: tokenizer_json.to_path_buf(), message: e.to_string() })
    })?;
    Ok(tok.get_vocab_size(true))
}

/// FNV-1a of a parameter name: each parameter's initial values depend on the seed and its name
/// only, not on how many parameters come before it.
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// How one parameter starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Init {
    Zeros,
    Ones,
    Normal(f64),
    /// Uniform in [-bound, bound].
    Uniform(f64),
}

/// Xavier-uniform bound for a weight of shape [out, in...] (torch computes fans on `flatten(1)`).
fn xavier(dims: &[usize]) -> f64 {
    let fan_out = dims[0] as f64;
    let fan_in = dims[1..].iter().product::<usize>() as f64;
    (6.0 / (fan_in + fan_out)).sqrt()
}

/// Wan's init (`WanModel.init_weights`): xavier-uniform linears and patch embedding, N(0, 0.02)
/// text and time embedders, zero output head, modulation tables N(0, 1)/sqrt(dim), unit norms.
fn dit_init(name: &str, dims: &[usize], dim: usize) -> Init {
    if name.ends_with(".bias") {
        Init::Zeros
    } else if name.contains("norm") {
        Init::Ones
    } else if name.contains("scale_shift_table") {
        Init::Normal(1.0 / (dim as f64).sqrt())
    } else if name == "proj_out.weight" {
        Init::Zeros
    } else if name.contains("text_embedder") || name.contains("time_embedder") {
        Init::Normal(0.02)
    } else {
        Init::Uniform(xavier(dims))
    }
}

/// transformers' T5/UMT5 init with `initializer_factor` 1.
fn umt5_init(name: &str, cfg: &Umt5Config) -> Init {
    let (d, kv, h, ff) = (cfg.d_model as f64, cfg.d_kv as f64, cfg.num_heads as f64, cfg.d_ff as f64);
    if name.contains("layer_norm") {
        Init::Ones
    } else if name.starts_with("shared") || name.contains("embed_tokens") {
        Init::Normal(1.0)
    } else if name.contains("SelfAttention.q.") {
        Init::Normal((d * kv).powf(-0.5))
    } else if name.contains("SelfAttention.o.") {
        Init::Normal((h * kv).powf(-0.5))
    } else if name.contains("DenseReluDense.wo") {
        Init::Normal(ff.powf(-0.5))
    } else {
        // k, v, wi_0, wi_1, relative_attention_bias
        Init::Normal(d.powf(-0.5))
    }
}

pub(crate) fn init_var(var: &Var, init: Init, rng: &mut TrainRng) -> Result<()> {
    let n = var.elem_count();
    let values: Vec<f32> = match init {
        Init::Zeros => vec![0.0; n],
        Init::Ones => vec![1.0; n],
        Init::Normal(std) => rng.normals(n).into_iter().map(|x| x * std as f32).collect(),
        Init::Uniform(bound) => (0..n).map(|_| ((2.0 * rng.uniform() - 1.0) * bound) as f32).collect(),
    };
    let t = Tensor::from_vec(values, var.shape(), var.device())?.to_dtype(var.dtype())?;
    var.set(&t)?;
    Ok(())
}

/// Adds `amount` to the relative-position bias [buckets, heads] of each head at its preferred
/// offset: head h prefers -1, +1, -2, +2, ... (key position minus query position).
fn add_local_bias(var: &Var, cfg: &Umt5Config, amount: f64) -> Result<()> {
    let (buckets, heads) = var.dims2()?;
    let mut bias = var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
    for h in 0..heads {
        let step = (h / 2 + 1) as i64;
        let offset = if h % 2 == 0 { -step } else { step };
        let b = relative_position_bucket(offset, cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance);
        if b < buckets {
            bias[b * heads + h] += amount as f32;
        }
    }
    var.set(&Tensor::from_vec(bias, (buckets, heads), var.device())?)?;
    Ok(())
}

fn sorted_vars(map: &VarMap) -> Vec<(String, Var)> {
    let data = map.data().lock().expect("var map lock");
    let mut vars: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

/// The DiT and the text encoder with trainable (`Var`) weights.
pub struct DitModels {
    pub transformer_cfg: WanTransformerConfig,
    pub text_cfg: Umt5Config,
    pub transformer: WanTransformer3DModel,
    /// The pipeline's text path (tokenizer + UMT5 + zeroed padding) on the trainable weights.
    pub text_encoder: TextEncoder,
    /// The text encoder is frozen (`text_pretrain`): the loss takes no gradient through it.
    text_frozen: bool,
    dit_vars: VarMap,
    text_vars: VarMap,
}

impl DitModels {
    /// Builds both models with fresh weights from `cfg.seed`.
    pub fn new(cfg: &DitTrainConfig, vocab_size: usize, device: &Device) -> Result<Self> {
        let transformer_cfg = cfg.transformer_config();
        let text_cfg = cfg.umt5_config(vocab_size);
        let dit_vars = VarMap::new();
        let text_vars = VarMap::new();
        let transformer = WanTransformer3DModel::new(&transformer_cfg, VarBuilder::from_varmap(&dit_vars, DType::F32, device))?;
        let vb = VarBuilder::from_varmap(&text_vars, DType::F32, device);
        // created first so the embedding is stored as `shared.weight`, the name HF checkpoints use
        vb.get_with_hints((vocab_size, text_cfg.d_model), "shared.weight", candle_nn::Init::Const(0.0))?;
        let umt5 = Umt5EncoderModel::new(&text_cfg, vb)?;
        let tokenizer = PromptTokenizer::from_file(&cfg.tokenizer, cfg.text_len)?;
        let models = Self {
            transformer_cfg,
            text_cfg,
            transformer,
            text_encoder: TextEncoder::new(tokenizer, umt5),
            text_frozen: cfg.text_pretrain.is_some(),
            dit_vars,
            text_vars,
        };
        models.init_weights(cfg.seed, cfg.text_local_attention)?;
        Ok(models)
    }

    fn init_weights(&self, seed: u64, local_attention: f64) -> Result<()> {
        let dim = self.transformer_cfg.inner_dim();
        for (name, var) in sorted_vars(&self.dit_vars) {
            let mut rng = TrainRng::new(seed ^ name_hash(&format!("transformer.{name}")));
            init_var(&var, dit_init(&name, var.dims(), dim), &mut rng)?;
        }
        for (name, var) in sorted_vars(&self.text_vars) {
            let mut rng = TrainRng::new(seed ^ name_hash(&format!("text_encoder.{name}")));
            init_var(&var, umt5_init(&name, &self.text_cfg), &mut rng)?;
            if local_attention != 0.0 && name.contains("relative_attention_bias") {
                add_local_bias(&var, &self.text_cfg, local_attention)?;
            }
        }
        Ok(())
    }

    /// Every trainable tensor, named `transformer.<key>` / `text_encoder.<key>`, sorted.
    pub fn params(&self) -> Vec<Param> {
        let dit = sorted_vars(&self.dit_vars).into_iter().map(|(k, v)| Param::new(format!("transformer.{k}"), v));
        let text = sorted_vars(&self.text_vars).into_iter().map(|(k, v)| Param::new(format!("text_encoder.{k}"), v));
        dit.chain(text).collect()
    }

    pub fn num_parameters(&self) -> (usize, usize) {
        let count = |m: &VarMap| sorted_vars(m).iter().map(|(_, v)| v.elem_count()).sum();
        (count(&self.dit_vars), count(&self.text_vars))
    }

    /// Prompt embeddings exactly as the pipeline computes them, with gradients to the encoder.
    ///
    /// Shapes: captions (B) -> [B, text_len, d_model].
    pub fn encode_text(&self, captions: &[String]) -> Result<Tensor> {
        Ok(self.text_encoder.encode(captions)?.prompt_embeds)
    }

    /// The terms of the flow-matching loss of one batch for given noise and noise levels, as sums
    /// and their weights ([`LossTerms::mean`]: the batch's loss, a scalar that tracks gradients).
    ///
    /// `weights` ([B, 1, F', H', W'], broadcast over channels) turns it into a weighted mean;
    /// `temporal_weight` > 0 adds the motion term ([`temporal_error`]) on clips;
    /// `clean_first[b]` gives sample b its first latent frame clean ([`condition_first_frames`];
    /// empty: none).
    #[allow(clippy::too_many_arguments)]
    pub fn loss_terms(
        &self,
        latents: &Tensor,
        captions: &[String],
        noise: &Tensor,
        sigmas: &[f32],
        weights: Option<&Tensor>,
        temporal_weight: f64,
        clean_first: &[bool],
        own_start: &[bool],
    ) -> Result<LossTerms> {
        let context = self.encode_text(captions)?;
        // a frozen encoder needs no backward pass through it
        let context = if self.text_frozen { context.detach() } else { context };
        let fb = flow_batch(latents, noise, sigmas)?;
        let fb = if own_start.iter().any(|&o| o) {
            let picked: Vec<u32> = (0..own_start.len() as u32).filter(|&i| own_start[i as usize]).collect();
            let picked = Tensor::new(picked.as_slice(), latents.device())?;
            let pure = noise.index_select(&picked, 0)?;
            let t1 = Tensor::full(timestep_of(1.0), pure.dim(0)?, latents.device())?;
            let velocity = self.transformer.forward(&pure, &t1, &context.index_select(&picked, 0)?.detach(), None)?.detach();
            restart_from_own(fb, latents, noise, sigmas, own_start, &(pure - velocity)?)?
        } else {
            fb
        };
        let (fb, frame_mask) = if clean_first.is_empty() {
            (fb, None)
        } else {
            let [_, ph, pw] = self.transformer.config().patch_size;
            let tokens_per_frame = (latents.dim(3)? / ph) * (latents.dim(4)? / pw);
            condition_first_frames(fb, latents, clean_first, tokens_per_frame)?
        };
        // the main term leaves the clean frames out
        let main_weights = weight_product(weights.cloned(), frame_mask.clone())?;
        let pred = self.transformer.forward(&fb.noisy, &fb.timesteps, &context, None)?;
        let main = squared_error(&pred, &fb.target, main_weights.as_ref())?;
        let motion = if temporal_weight == 0.0 {
            None
        } else {
            temporal_error(&pred, &fb.target, sigmas, weights, frame_mask.as_ref())?
        };
        Ok(LossTerms { main, motion })
    }
}

/// The loss of a batch (or of a part of one) before its terms are made means.
pub struct LossTerms {
    /// The flow-matching (velocity) error.
    pub main: TermSum,
    /// The motion term ([`temporal_error`]); `None` when off or on one-frame latents.
    pub motion: Option<TermSum>,
}

impl LossTerms {
    /// The terms' own weights (main, motion; 0 where there is no motion term).
    pub fn totals(&self) -> (f64, f64) {
        (self.main.weight, self.motion.as_ref().map_or(0.0, |m| m.weight))
    }

    /// The batch's loss: `main + temporal_weight * motion`, each term its own mean.
    pub fn mean(&self, temporal_weight: f64) -> Result<Tensor> {
        self.combine(self.totals(), temporal_weight)
    }

    /// `main / totals.0 + temporal_weight * motion / totals.1`: with the terms' own totals, the
    /// batch's loss; with a whole batch's totals, this part's share of it.
    pub fn combine(&self, totals: (f64, f64), temporal_weight: f64) -> Result<Tensor> {
        let main = self.main.over(totals.0)?;
        Ok(match &self.motion {
            Some(motion) => (main + (motion.over(totals.1)? * temporal_weight)?)?,
            None => main,
        })
    }
}

/// Splits `transformer.` / `text_encoder.` names into the two components' checkpoint keys.
pub fn split_components(tensors: &HashMap<String, Tensor>) -> (HashMap<String, Tensor>, HashMap<String, Tensor>) {
    let mut dit = HashMap::new();
    let mut text = HashMap::new();
    for (k, t) in tensors {
        if let Some(rest) = k.strip_prefix("transformer.") {
            dit.insert(rest.to_string(), t.clone());
        } else if let Some(rest) = k.strip_prefix("text_encoder.") {
            text.insert(rest.to_string(), t.clone());
        }
    }
    (dit, text)
}

/// A random source with a learnable signal, for tests and benchmarks: each clip is one of a few
/// fixed latent patterns (one per caption) plus a little noise.
pub struct SyntheticLatents {
    shape: [usize; 4],
    captions: Vec<String>,
    patterns: Vec<Tensor>,
    rng: TrainRng,
    device: Device,
}

impl SyntheticLatents {
    /// Clips of latent shape `[C, F', H', W']`, one pattern per caption.
    pub fn new(seed: u64, shape: [usize; 4], captions: Vec<String>, device: &Device) -> Result<Self> {
        if captions.is_empty() {
            return Err(TrainError::Data("SyntheticLatents needs at least one caption".into()));
        }
        let patterns = (0..captions.len())
            .map(|i| TrainRng::new(seed ^ name_hash(&format!("pattern{i}"))).gaussian(&shape, device))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { shape, captions, patterns, rng: TrainRng::new(seed), device: device.clone() })
    }
}

impl LatentSource for SyntheticLatents {
    fn batch(&mut self, n: usize) -> Result<LatentBatch> {
        let mut latents = Vec::with_capacity(n);
        let mut captions = Vec::with_capacity(n);
        for _ in 0..n {
            let k = (self.rng.next_u64() % self.captions.len() as u64) as usize;
            let jitter = (self.rng.gaussian(&self.shape, &self.device)? * 0.1)?;
            latents.push((&self.patterns[k] + jitter)?);
            captions.push(self.captions[k].clone());
        }
        Ok(LatentBatch { latents: Tensor::stack(&latents, 0)?, captions, foreground: None })
    }

    fn state(&self) -> serde_json::Value {
        serde_json::json!({ "rng": self.rng.state })
    }

    fn restore(&mut self, state: &serde_json::Value) -> Result<()> {
        self.rng.state = state
            .get("rng")
            .and_then(|v| v.as_u64())
            .ok_or_else(|| TrainError::Data(format!("SyntheticLatents: expected {{\"rng\": u64}}, got {state}")))?;
        Ok(())
    }
}

/// What a checkpoint's `state.json` holds besides the tensors.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RunState {
    format: u32,
    /// Optimizer steps done.
    step: u64,
    rng: TrainRng,
    source: serde_json::Value,
    /// Training time so far, across resumes.
    seconds: f64,
    adam_steps: u64,
    ema_updates: u64,
    vocab_size: usize,
    config: DitTrainConfig,
    /// The step at which AdamW last started afresh (see `fresh_optimizer`).
    #[serde(default)]
    rewarm_from: Option<u64>,
}

const STATE_FORMAT: u32 = 1;
const PARTS: [&str; 3] = ["model", "ema", "optim"];

/// The result of [`run_dit_training`].
#[derive(Debug, Clone)]
pub struct TrainSummary {
    /// Optimizer steps done in total (including before a resume).
    pub steps: u64,
    /// Loss of the last step run by this call, if any.
    pub last_loss: Option<f64>,
    pub checkpoint: PathBuf,
    /// The diffusers folder of the EMA weights (only when a VAE is configured).
    pub exported: Option<PathBuf>,
    /// Training time in total, across resumes.
    pub seconds: f64,
}

/// A run in progress: models, optimizer, EMA and the random stream.
pub struct DitTrainer {
    pub cfg: DitTrainConfig,
    pub models: DitModels,
    /// The trained weights (optimizer and EMA).
    params: Vec<Param>,
    /// The weights the run leaves as they are (the pretrained text encoder).
    frozen: Vec<Param>,
    /// What the text pretraining of a fresh run reached.
    pub text_report: Option<TextPretrainReport>,
    opt: AdamW,
    ema: Ema,
    rng: TrainRng,
    step: u64,
    seconds: f64,
    vocab_size: usize,
    /// The step at which AdamW last started afresh: the learning rate ramps up again from there.
    rewarm_from: Option<u64>,
    /// Parts each batch is split into, run side by side ([`Self::set_micro_batches`]).
    micro_batches: usize,
}

/// `n` samples as up to `parts` runs of consecutive ones, as even as can be: (start, count).
fn split_batch(n: usize, parts: usize) -> Vec<(usize, usize)> {
    let parts = parts.clamp(1, n.max(1));
    let mut start = 0;
    (0..parts)
        .map(|i| {
            let count = n / parts + usize::from(i < n % parts);
            start += count;
            (start - count, count)
        })
        .collect()
}

/// What one step did.
#[derive(Debug, Clone, Copy)]
pub struct StepStats {
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub duration: Duration,
    /// Clips, or images on an image step, that the step trained on.
    pub samples: usize,
    /// Whether it was an image step (`image_steps`).
    pub images: bool,
}

/// A source's batch, checked against the model's latent channels.
fn check_batch(batch: LatentBatch, channels: usize) -> Result<LatentBatch> {
    let dims = batch.latents.dims();
    if dims.len() != 5 || dims[0] != batch.captions.len() || dims[1] != channels || dims[0] == 0 {
        return Err(TrainError::Data(format!(
            "expected latents [B, {channels}, F, H, W] with one caption per clip, got {dims:?} and {} captions",
            batch.captions.len()
        )));
    }
    Ok(batch)
}

/// The patch embedding of a model without coordinate channels, widened with zero weights to a
/// config that adds them (`transformer.position_channels`): the widened model computes what the
/// old one did until training gives the new channels weight. `None` for any other weight, or for
/// one whose shape differs otherwise.
fn added_input_channels(name: &str, want: &[usize], have: &Tensor) -> Result<Option<Tensor>> {
    let dims = have.dims();
    let widened = name == "transformer.patch_embedding.weight"
        && dims.len() == 5
        && want.len() == 5
        && dims[1] < want[1]
        && (0..5).all(|i| i == 1 || dims[i] == want[i]);
    if !widened {
        return Ok(None);
    }
    let mut zeros = dims.to_vec();
    zeros[1] = want[1] - dims[1];
    let zeros = Tensor::zeros(zeros, have.dtype(), have.device())?;
    Ok(Some(Tensor::cat(&[have, &zeros], 1)?))
}

impl DitTrainer {
    /// A fresh run (weights from `cfg.seed`; with `text_pretrain`, the text encoder pretrained),
    /// or from `cfg.init_from`'s weights.
    pub fn new(cfg: &DitTrainConfig, device: &Device) -> Result<Self> {
        let Some(dir) = &cfg.init_from else {
            return Self::build(cfg, device, true);
        };
        let mut trainer = Self::build(cfg, device, false)?;
        let mut weights = read_model_weights(dir, "transformer/diffusion_pytorch_model.safetensors", "transformer.", device)?;
        weights.extend(read_model_weights(dir, "text_encoder/model.safetensors", "text_encoder.", device)?);
        let bad = |message: String| TrainError::Config { path: dir.clone(), message };
        let all: Vec<&Param> = trainer.params.iter().chain(&trainer.frozen).collect();
        for p in &all {
            let t = weights.get(&p.name).ok_or_else(|| bad(format!("expected a weight `{}` for this config's model, the folder has none", p.name)))?;
            let t = match added_input_channels(&p.name, p.var.dims(), t)? {
                Some(extended) => extended,
                None if t.dims() != p.var.dims() => {
                    return Err(bad(format!("`{}`: expected shape {:?} (the config's model), got {:?}", p.name, p.var.dims(), t.dims())));
                }
                None => t.clone(),
            };
            p.var.set(&t.to_dtype(p.var.dtype())?)?;
        }
        if let Some(extra) = weights.keys().find(|k| !all.iter().any(|p| &p.name == *k)) {
            return Err(bad(format!("expected only the config's model weights, got `{extra}` as well (another architecture?)")));
        }
        if let Some(pre) = cfg.text_pretrain.as_ref().filter(|p| p.rerun_on_init) {
            trainer.text_report = Some(pretrain_text_encoder(&trainer.models, pre, cfg.seed, &cfg.adamw, device)?);
        }
        trainer.ema = Ema::new(&trainer.params, cfg.ema_decay)?;
        Ok(trainer)
    }

    /// The run's models and optimizer; `pretrain`: run the text pretraining (a resume loads the
    /// pretrained encoder from its checkpoint instead).
    fn build(cfg: &DitTrainConfig, device: &Device, pretrain: bool) -> Result<Self> {
        cfg.validate().map_err(|message| TrainError::Config { path: PathBuf::new(), message })?;
        let vocab_size = tokenizer_vocab_size(&cfg.tokenizer)?;
        let models = DitModels::new(cfg, vocab_size, device)?;
        let text_report = match (&cfg.text_pretrain, pretrain) {
            (Some(pre), true) => Some(pretrain_text_encoder(&models, pre, cfg.seed, &cfg.adamw, device)?),
            _ => None,
        };
        let frozen_text = cfg.text_pretrain.is_some();
        let (params, frozen): (Vec<Param>, Vec<Param>) =
            models.params().into_iter().partition(|p| !(frozen_text && p.name.starts_with("text_encoder.")));
        let opt = AdamW::new(params.clone(), cfg.adamw.clone())?;
        let ema = Ema::new(&params, cfg.ema_decay)?;
        // a stream apart from the init streams (those are seeded with seed ^ hash(name))
        let rng = TrainRng::new(cfg.seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0x5EED);
        let cfg = cfg.clone();
        // on the CPU one part per thread: candle runs most element-wise ops (and their backward) on
        // one thread, so a batch split across the threads keeps every core busy; a GPU is fed best
        // by one large batch (and its parts, if asked for, run one after another on this thread)
        let micro_batches = cfg.micro_batches.unwrap_or(if device.is_cpu() { rayon::current_num_threads() } else { 1 });
        Ok(Self { cfg, models, params, frozen, text_report, opt, ema, rng, step: 0, seconds: 0.0, vocab_size, rewarm_from: None, micro_batches })
    }

    /// Splits each batch into up to `parts` parts (by samples) whose forward and backward passes
    /// run side by side on the thread pool, their gradients summed. Each part's loss is divided by
    /// its whole batch's weights, so the step is the whole batch's: the same random draws and the
    /// same update, up to the order of float sums (relative 1e-6). Default: the pool's threads on
    /// the CPU, 1 on a GPU (where parts, if asked for, run one after another).
    pub fn set_micro_batches(&mut self, parts: usize) {
        self.micro_batches = parts.max(1);
    }

    /// Steps done so far.
    pub fn step(&self) -> u64 {
        self.step
    }

    pub fn seconds(&self) -> f64 {
        self.seconds
    }

    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// One optimizer step on a batch from `source`.
    pub fn train_step(&mut self, source: &mut dyn LatentSource) -> Result<StepStats> {
        self.train_step_marked(source, &mut |_| Ok(()))
    }

    /// One step as [`Self::train_step`], timed by phase: after each phase the device finishes
    /// its queued work, then the phase's wall time is recorded (batch, noise, forward, backward,
    /// grad_norm, optimizer, ema). The synchronisations make the step a little slower than an
    /// unprofiled one; the split is what they are for.
    pub fn profile_step(&mut self, source: &mut dyn LatentSource) -> Result<Vec<(&'static str, f64)>> {
        let device = self.params[0].var.device().clone();
        let mut phases = Vec::new();
        let mut last = Instant::now();
        self.train_step_marked(source, &mut |name| {
            device.synchronize()?;
            phases.push((name, last.elapsed().as_secs_f64()));
            last = Instant::now();
            Ok(())
        })?;
        Ok(phases)
    }

    /// The step, calling `mark` with each phase's name as it ends.
    fn train_step_marked(
        &mut self,
        source: &mut dyn LatentSource,
        mark: &mut dyn FnMut(&'static str) -> Result<()>,
    ) -> Result<StepStats> {
        let start = Instant::now();
        let c = self.cfg.transformer.latent_channels;
        let image_spec = self.cfg.image_steps.as_ref().filter(|i| i.is_image_step(self.step));
        let images = image_spec.is_some();
        let groups = match image_spec {
            Some(spec) => {
                let mut batches = Vec::with_capacity(spec.batches);
                for _ in 0..spec.batches {
                    batches.push(check_batch(source.batch(self.cfg.batch_size)?, c)?.first_frames(1)?);
                }
                LatentBatch::group_by_shape(batches)?
            }
            None => vec![check_batch(source.batch(self.cfg.batch_size)?, c)?],
        };
        mark("batch")?;
        let samples: usize = groups.iter().map(|g| g.captions.len()).sum();
        // draws in a fixed order, group by group: captions, noise levels, noise
        let mut inputs = Vec::with_capacity(groups.len());
        for batch in &groups {
            let captions = drop_captions(&batch.captions, self.cfg.caption_dropout, &mut self.rng);
            let sigmas: Vec<f32> = (0..batch.captions.len())
                .map(|_| self.cfg.sigma_sampling.sample_with_terminal(&mut self.rng, self.cfg.shift, self.cfg.terminal_share) as f32)
                .collect();
            let noise = self.rng.gaussian(batch.latents.dims(), batch.latents.device())?;
            let weights = match (&batch.foreground, self.cfg.foreground_weight) {
                (Some(mask), fw) if fw > 0.0 => Some(((mask * fw)? + 1.0)?),
                _ => None,
            };
            // drawn only when asked for, so runs without it keep their random stream
            let share = self.cfg.first_frame_share;
            let clean_first: Vec<bool> = if share > 0.0 && batch.latents.dim(2)? > 1 {
                (0..batch.captions.len()).map(|_| self.rng.uniform() < share).collect()
            } else {
                Vec::new()
            };
            // drawn only when asked for, like the flags above
            let own_start: Vec<bool> = match &self.cfg.own_start {
                Some(own) => sigmas
                    .iter()
                    .map(|&s| {
                        let draw = self.rng.uniform();
                        f64::from(s) >= own.min_sigma && s < 1.0 && draw < own.share
                    })
                    .collect(),
                None => Vec::new(),
            };
            inputs.push((captions, sigmas, noise, weights, clean_first, own_start));
        }
        mark("noise")?;
        // each group split into up to `micro_batches` parts, run side by side; each part's loss
        // is its share of its group's (the group's totals) times the group's share of the samples
        let parts: Vec<(usize, usize, usize)> = groups
            .iter()
            .enumerate()
            .flat_map(|(g, batch)| split_batch(batch.captions.len(), self.micro_batches).into_iter().map(move |(s, n)| (g, s, n)))
            .collect();
        let (models, temporal_weight) = (&self.models, self.cfg.temporal_weight);
        let side_by_side = self.params[0].var.device().is_cpu();
        let terms: Vec<LossTerms> = map_items(&parts, side_by_side, |&(g, s, n)| {
            let (captions, sigmas, noise, weights, clean_first, own_start) = &inputs[g];
            let part = |t: &Tensor| t.narrow(0, s, n);
            models.loss_terms(
                &part(&groups[g].latents)?,
                &captions[s..s + n],
                &part(noise)?,
                &sigmas[s..s + n],
                weights.as_ref().map(part).transpose()?.as_ref(),
                temporal_weight,
                clean_first.get(s..s + n).unwrap_or_default(),
                own_start.get(s..s + n).unwrap_or_default(),
            )
        })
        .into_iter()
        .collect::<Result<_>>()?;
        let mut totals = vec![(0.0, 0.0); groups.len()];
        for (&(g, _, _), t) in parts.iter().zip(&terms) {
            let (main, motion) = t.totals();
            totals[g].0 += main;
            totals[g].1 += motion;
        }
        let losses: Vec<Tensor> = parts
            .iter()
            .zip(&terms)
            .map(|(&(g, _, _), t)| {
                // a group's share of the images (1 for a clip step: exact, the same bits as no scaling)
                let share = groups[g].captions.len() as f64 / samples as f64;
                Ok((t.combine(totals[g], temporal_weight)? * share)?)
            })
            .collect::<Result<_>>()?;
        drop(terms);
        let mut loss_value = 0.0;
        for l in &losses {
            loss_value += l.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        }
        mark("forward")?;
        if !loss_value.is_finite() {
            return Err(TrainError::Diverged { step: self.step + 1, what: format!("loss is {loss_value}") });
        }
        let stores: Vec<GradStore> =
            map_items(&losses, side_by_side, |l| l.backward()).into_iter().collect::<candle_core::Result<_>>()?;
        drop(losses);
        let grads = sum_grads(stores, &self.params)?;
        mark("backward")?;
        let norm = grad_norm(&grads, &self.params)?;
        mark("grad_norm")?;
        if !norm.is_finite() {
            return Err(TrainError::Diverged { step: self.step + 1, what: format!("gradient norm is {norm}") });
        }
        let lr = self.lr_at(self.step);
        self.opt.step(&grads, lr, clip_factor(norm, self.cfg.grad_clip))?;
        mark("optimizer")?;
        self.ema.update(&self.params)?;
        mark("ema")?;
        self.step += 1;
        let duration = start.elapsed();
        self.seconds += duration.as_secs_f64();
        Ok(StepStats { loss: loss_value, lr, grad_norm: norm, duration, samples, images })
    }

    /// Current weights by parameter name.
    pub fn weights(&self) -> HashMap<String, Tensor> {
        current_tensors(self.params.iter().chain(&self.frozen))
    }

    /// EMA weights by parameter name (frozen weights as they are).
    pub fn ema_weights(&self) -> HashMap<String, Tensor> {
        self.ema.tensors_with_frozen(&self.params, &self.frozen)
    }

    /// The learning rate of step `step` (0-based): the schedule's, ramped up linearly over
    /// `warmup_steps` again after a fresh optimizer.
    pub fn lr_at(&self, step: u64) -> f64 {
        let lr = self.cfg.lr_schedule().at(step);
        match self.rewarm_from {
            Some(from) if self.cfg.warmup_steps > 0 && step >= from => {
                lr * ((step - from + 1) as f64 / self.cfg.warmup_steps as f64).min(1.0)
            }
            _ => lr,
        }
    }

    /// Writes everything a bit-identical resume needs into `dir`.
    pub fn save(&self, dir: &Path, source: &dyn LatentSource) -> Result<()> {
        let state = RunState {
            format: STATE_FORMAT,
            step: self.step,
            rng: self.rng,
            source: source.state(),
            seconds: self.seconds,
            adam_steps: self.opt.steps(),
            ema_updates: self.ema.updates(),
            vocab_size: self.vocab_size,
            config: self.cfg.clone(),
            rewarm_from: self.rewarm_from,
        };
        let (model, ema, optim) = (self.weights(), self.ema_weights(), self.opt.state_tensors());
        save_checkpoint(dir, &[("model", &model), ("ema", &ema), ("optim", &optim)], &state)
    }

    /// Continues the run saved in `dir` under `cfg`, whose model must be the saved one
    /// (schedule, batch size and the other settings may change).
    pub fn resume(cfg: &DitTrainConfig, dir: &Path, source: &mut dyn LatentSource, device: &Device) -> Result<Self> {
        let parts = if cfg.fresh_optimizer { &PARTS[..2] } else { &PARTS[..] };
        let ckpt = load_checkpoint::<RunState>(dir, parts, device)?;
        let state = &ckpt.state;
        let bad = |message: String| TrainError::Resume { path: ckpt.path.clone(), message };
        if state.format != STATE_FORMAT {
            return Err(bad(format!("expected checkpoint format {STATE_FORMAT}, got {}", state.format)));
        }
        cfg.same_model(&state.config).map_err(bad)?;
        let mut trainer = Self::build(cfg, device, false)?;
        if trainer.vocab_size != state.vocab_size {
            return Err(bad(format!(
                "the tokenizer has {} ids, the checkpoint's text encoder {}",
                trainer.vocab_size, state.vocab_size
            )));
        }
        let model = ckpt.part("model")?;
        for p in trainer.params.iter().chain(&trainer.frozen) {
            let t = model.get(&p.name).ok_or_else(|| bad(format!("model weights have no `{}`", p.name)))?;
            if t.dims() != p.var.dims() {
                return Err(bad(format!("`{}`: expected shape {:?}, got {:?}", p.name, p.var.dims(), t.dims())));
            }
            p.var.set(&t.to_dtype(p.var.dtype())?)?;
        }
        trainer.ema.load(&trainer.params, ckpt.part("ema")?, state.ema_updates).map_err(|e| bad(e.to_string()))?;
        if cfg.fresh_optimizer {
            trainer.rewarm_from = Some(state.step);
        } else {
            trainer.opt.load_state(ckpt.part("optim")?, state.adam_steps).map_err(|e| bad(e.to_string()))?;
            trainer.rewarm_from = state.rewarm_from;
        }
        trainer.rng = state.rng;
        trainer.step = state.step;
        trainer.seconds = state.seconds;
        source.restore(&state.source)?;
        Ok(trainer)
    }

    /// Writes the diffusers folder of the EMA weights to `out`.
    pub fn export(&self, vae_dir: &Path, out: &Path) -> Result<()> {
        let (dit, text) = split_components(&self.ema_weights());
        export_pipeline(
            &ExportSpec {
                transformer_cfg: &self.models.transformer_cfg,
                transformer_weights: &dit,
                text_cfg: &self.models.text_cfg,
                text_weights: &text,
                tokenizer_json: &self.cfg.tokenizer,
                text_len: self.cfg.text_len,
                vae_dir,
                shift: self.cfg.shift,
            },
            out,
        )
    }
}

/// Trains (or continues training) per `cfg` into the folder `out`; see the module docs for
/// what it holds. A fresh run refuses a folder that already has a checkpoint, a resume needs
/// one. Events go to `progress` after every step, checkpoint and export.
pub fn run_dit_training(
    cfg: &DitTrainConfig,
    source: &mut dyn LatentSource,
    out: &Path,
    resume: bool,
    device: &Device,
    progress: &mut dyn FnMut(&TrainEvent),
) -> Result<TrainSummary> {
    super::tune_allocator_for_training();
    std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
    let ckpt_dir = out.join("checkpoint");
    let csv = out.join("loss.csv");
    let plot = out.join("loss.png");
    let mut trainer = if resume {
        let t = DitTrainer::resume(cfg, &ckpt_dir, source, device)?;
        progress(&TrainEvent::Resumed { step: t.step(), path: ckpt_dir.clone() });
        t
    } else {
        if let Some(found) = find_checkpoint(&ckpt_dir) {
            return Err(TrainError::Resume {
                path: found,
                message: "this output folder already holds a checkpoint: resume it, or train into another folder".into(),
            });
        }
        let t = DitTrainer::new(cfg, device)?;
        if let Some(report) = &t.text_report {
            let path = out.join("text_pretrain.json");
            let text = serde_json::to_string_pretty(report)
                .map_err(|e| TrainError::Config { path: path.clone(), message: e.to_string() })?;
            std::fs::write(&path, text + "\n").map_err(|e| TrainError::io(&path, e))?;
            progress(&TrainEvent::TextPretrained { path, summary: report.summary() });
        }
        t
    };
    let config_path = out.join("config.json");
    let text = serde_json::to_string_pretty(cfg).map_err(|e| TrainError::Config { path: config_path.clone(), message: e.to_string() })?;
    std::fs::write(&config_path, text).map_err(|e| TrainError::io(&config_path, e))?;
    let mut log = LossLog::open(&csv, resume.then_some(trainer.step()))?;

    let started = Instant::now();
    let mut last_loss = None;
    let mut saved_at = trainer.step();
    let end = cfg.stop_at.map_or(cfg.steps, |s| s.min(cfg.steps));
    while trainer.step() < end {
        let stats = trainer.train_step(source)?;
        last_loss = Some(stats.loss);
        let step = trainer.step();
        log.append(&LossRow { step, loss: stats.loss, lr: stats.lr, seconds: trainer.seconds() })?;
        progress(&TrainEvent::Step {
            step,
            total: cfg.steps,
            loss: stats.loss,
            lr: stats.lr,
            grad_norm: stats.grad_norm,
            samples_per_sec: stats.samples as f64 / stats.duration.as_secs_f64().max(1e-9),
            images: stats.images,
            elapsed: Duration::from_secs_f64(trainer.seconds()),
        });
        let out_of_time = cfg.max_seconds.is_some_and(|s| started.elapsed().as_secs_f64() >= s);
        let due = cfg.checkpoint_every > 0 && step.is_multiple_of(cfg.checkpoint_every);
        if due || out_of_time || step == end {
            trainer.save(&ckpt_dir, source)?;
            write_loss_plot(&read_loss_csv(&csv)?, &plot)?;
            saved_at = step;
            progress(&TrainEvent::Checkpoint { step, path: ckpt_dir.clone() });
        }
        if out_of_time {
            break;
        }
    }
    if saved_at != trainer.step() || !ckpt_dir.join("state.json").is_file() {
        trainer.save(&ckpt_dir, source)?;
        progress(&TrainEvent::Checkpoint { step: trainer.step(), path: ckpt_dir.clone() });
    }
    if csv.is_file() {
        write_loss_plot(&read_loss_csv(&csv)?, &plot)?;
    }
    let exported = match &cfg.vae {
        Some(vae) if trainer.step() >= end => {
            let dir = out.join("model");
            trainer.export(vae, &dir)?;
            progress(&TrainEvent::Exported { step: trainer.step(), path: dir.clone() });
            Some(dir)
        }
        _ => None,
    };
    progress(&TrainEvent::Done { step: trainer.step() });
    Ok(TrainSummary { steps: trainer.step(), last_loss, checkpoint: ckpt_dir, exported, seconds: trainer.seconds() })
}

/// Speed of a model size on this machine (see [`benchmark`]). Wall times depend on what else
/// the machine runs; the CPU seconds (all threads of this process) do much less.
#[derive(Debug, Clone)]
pub struct BenchReport {
    pub dit_parameters: usize,
    pub text_parameters: usize,
    pub tokens: usize,
    /// Training clips per second (median over the timed steps, after one warm-up step).
    pub train_samples_per_sec: f64,
    /// Process CPU seconds per training clip (median), when the OS reports it.
    pub train_cpu_seconds_per_sample: Option<f64>,
    /// One CFG sampling step: a batch-2 forward on inference (non-`Var`) weights, median.
    pub cfg_step_seconds: f64,
    pub cfg_step_cpu_seconds: Option<f64>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// User + system CPU time of this process (Linux `/proc/self/stat`, 100 ticks a second).
pub fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // fields after the parenthesised command name; utime and stime are fields 14 and 15
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// Times `steps` training steps on synthetic latents of shape `[C, F', H', W']` and `steps`
/// CFG sampling forwards of the same size (the text encoder runs once per generation, so it is
/// left out of the sampling time).
pub fn benchmark(cfg: &DitTrainConfig, latent_shape: [usize; 4], steps: usize, device: &Device) -> Result<BenchReport> {
    super::tune_allocator_for_training();
    let steps = steps.max(1);
    let mut trainer = DitTrainer::new(cfg, device)?;
    let captions = vec!["a red ball".to_string(), "a blue box".to_string()];
    let mut source = SyntheticLatents::new(cfg.seed, latent_shape, captions, device)?;
    let (mut train, mut train_cpu) = (Vec::new(), Vec::new());
    for i in 0..=steps {
        let cpu0 = process_cpu_seconds();
        let s = trainer.train_step(&mut source)?;
        if i > 0 {
            train.push(cfg.batch_size as f64 / s.duration.as_secs_f64());
            if let (Some(a), Some(b)) = (cpu0, process_cpu_seconds()) {
                train_cpu.push((b - a) / cfg.batch_size as f64);
            }
        }
    }
    // inference weights: plain tensors, so the fused kernels run as in the pipeline
    let (dit_weights, _) = split_components(&trainer.weights());
    let plain: HashMap<String, Tensor> = dit_weights.into_iter().map(|(k, t)| Ok((k, t.copy()?))).collect::<Result<_>>()?;
    let model = WanTransformer3DModel::new(&trainer.models.transformer_cfg, VarBuilder::from_tensors(plain, DType::F32, device))?;
    let [c, f, h, w] = latent_shape;
    let x = TrainRng::new(1).gaussian(&[2, c, f, h, w], device)?;
    let t = Tensor::new(&[500f32, 500.0], device)?;
    let ctx = TrainRng::new(2).gaussian(&[2, cfg.text_len, cfg.text_encoder.d_model], device)?;
    let (mut sample, mut sample_cpu) = (Vec::new(), Vec::new());
    for i in 0..=steps {
        let (start, cpu0) = (Instant::now(), process_cpu_seconds());
        let v = model.forward(&x, &t, &ctx, None)?;
        v.sum_all()?.to_scalar::<f32>()?;
        if i > 0 {
            sample.push(start.elapsed().as_secs_f64());
            if let (Some(a), Some(b)) = (cpu0, process_cpu_seconds()) {
                sample_cpu.push(b - a);
            }
        }
    }
    let (dit_parameters, text_parameters) = trainer.models.num_parameters();
    let [pt, ph, pw] = cfg.transformer.patch_size;
    let opt_median = |v: Vec<f64>| (v.len() == steps).then(|| median(v));
    Ok(BenchReport {
        dit_parameters,
        text_parameters,
        tokens: (f / pt) * (h / ph) * (w / pw),
        train_samples_per_sec: median(train),
        train_cpu_seconds_per_sample: opt_median(train_cpu),
        cfg_step_seconds: median(sample),
        cfg_step_cpu_seconds: opt_median(sample_cpu),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The smallest config a run needs; everything else has a default.
    const MINIMAL: &str = r#"{
        "seed": 7,
        "transformer": {"num_attention_heads": 4, "attention_head_dim": 48, "ffn_dim": 768, "num_layers": 6},
        "text_encoder": {"d_model": 128, "d_kv": 32, "num_heads": 4, "num_layers": 2, "d_ff": 256},
        "tokenizer": "tokenizer.json",
        "text_len": 32,
        "batch_size": 4,
        "steps": 20000,
        "lr": 3e-4,
        "warmup_steps": 500
    }"#;

    #[test]
    fn config_reads_json_with_defaults_and_resolves_paths() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dit.json");
        std::fs::write(&path, MINIMAL.replace("\"warmup_steps\": 500", "\"warmup_steps\": 500, \"vae\": \"vae\"")).unwrap();
        let cfg = DitTrainConfig::from_file(&path).unwrap();
        assert_eq!(cfg.tokenizer, dir.path().join("tokenizer.json"));
        assert_eq!(cfg.vae, Some(dir.path().join("vae")));
        assert_eq!((cfg.shift, cfg.caption_dropout, cfg.ema_decay, cfg.grad_clip), (3.0, 0.1, 0.999, 1.0));
        assert_eq!(cfg.sigma_sampling, SigmaSampling::ShiftedUniform);
        assert_eq!(cfg.transformer.patch_size, [1, 2, 2]);
        let t = cfg.transformer_config();
        assert_eq!((t.inner_dim(), t.text_dim, t.in_channels), (192, 128, 16));
        // a JSON round trip (as saved into checkpoints) gives the same config
        let back: DitTrainConfig = serde_json::from_str(&serde_json::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(back, cfg);
        let ln = MINIMAL.replace("\"lr\": 3e-4", "\"lr\": 3e-4, \"sigma_sampling\": {\"kind\": \"logit_normal\", \"mean\": 0.0, \"std\": 1.0}");
        let cfg: DitTrainConfig = serde_json::from_str(&ln).unwrap();
        assert_eq!(cfg.sigma_sampling, SigmaSampling::LogitNormal { mean: 0.0, std: 1.0 });
    }

    /// `DitTrainConfig::new`, `DitArch::new` and `TextArch::new` give what the same settings read
    /// from JSON give: their defaults are the JSON defaults.
    #[test]
    fn constructors_match_the_json_defaults() {
        let json = r#"{
            "seed": 0,
            "transformer": {"num_attention_heads": 3, "attention_head_dim": 64, "ffn_dim": 768, "num_layers": 2,
                            "patch_size": [1, 4, 4], "latent_channels": 8},
            "text_encoder": {"d_model": 64, "d_kv": 16, "num_heads": 4, "num_layers": 1, "d_ff": 128},
            "tokenizer": "tokenizer.json",
            "text_len": 16,
            "batch_size": 4,
            "steps": 100,
            "lr": 1e-3,
            "warmup_steps": 0
        }"#;
        let from_json: DitTrainConfig = serde_json::from_str(json).unwrap();
        let built = DitTrainConfig::new(DitArch::new(3, 2, 4, 8), TextArch::new(64, 4, 1), "tokenizer.json".into(), 4, 100, 1e-3);
        assert_eq!(built, from_json);
    }

    #[test]
    fn config_errors_name_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dit.json");
        for (edit, want) in [
            (("\"lr\": 3e-4", "\"lr\": 3e-4, \"learning_rate\": 1"), "learning_rate"),
            (("\"attention_head_dim\": 48", "\"attention_head_dim\": 45"), "attention_head_dim"),
            (("\"batch_size\": 4", "\"batch_size\": 0"), "batch_size"),
            (("\"seed\": 7,", ""), "seed"),
            (("\"lr\": 3e-4", "\"lr\": 3e-4, \"terminal_share\": 1.5"), "expected terminal_share in [0, 1], got 1.5"),
            (("\"lr\": 3e-4", "\"lr\": 3e-4, \"temporal_weight\": -0.5"), "expected temporal_weight >= 0, got -0.5"),
        ] {
            std::fs::write(&path, MINIMAL.replace(edit.0, edit.1)).unwrap();
            let err = DitTrainConfig::from_file(&path).unwrap_err().to_string();
            assert!(err.contains(want) && err.contains("dit.json"), "{err}");
        }
    }

    #[test]
    fn init_follows_wan_and_t5() {
        assert_eq!(dit_init("blocks.0.attn1.to_q.bias", &[8], 8), Init::Zeros);
        assert_eq!(dit_init("blocks.0.attn1.norm_q.weight", &[8], 8), Init::Ones);
        assert_eq!(dit_init("proj_out.weight", &[64, 8], 8), Init::Zeros);
        assert_eq!(dit_init("scale_shift_table", &[1, 2, 64], 64), Init::Normal(0.125));
        assert_eq!(dit_init("condition_embedder.text_embedder.linear_1.weight", &[8, 4], 8), Init::Normal(0.02));
        assert_eq!(dit_init("patch_embedding.weight", &[8, 4, 1, 2, 2], 8), Init::Uniform((6.0f64 / 24.0).sqrt()));
        let t5 = Umt5Config { d_model: 64, d_kv: 16, num_heads: 4, d_ff: 256, ..Umt5Config::umt5_xxl() };
        assert_eq!(umt5_init("encoder.block.0.layer.0.SelfAttention.q.weight", &t5), Init::Normal(1.0 / 32.0));
        assert_eq!(umt5_init("encoder.block.0.layer.1.DenseReluDense.wo.weight", &t5), Init::Normal(1.0 / 16.0));
        assert_eq!(umt5_init("encoder.final_layer_norm.weight", &t5), Init::Ones);
        assert_eq!(umt5_init("shared.weight", &t5), Init::Normal(1.0));
    }
}
