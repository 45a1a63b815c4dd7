//! Wan2.1 diffusion transformer, diffusers `WanTransformer3DModel` (T2V and I2V).
//!
//! Field names follow the diffusers checkpoint keys. Precision follows diffusers: with a
//! half-precision VarBuilder, `time_embedder`, every `scale_shift_table`, the affine `norm2` of
//! the blocks and the image-embedder norms stay f32, and layer norms plus modulation run in f32.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Deserializer};

use super::attention::WanAttention;
use super::ops::{broadcast_add, broadcast_mul, linear, Linear};
use super::position;
use super::rope::WanRotaryPosEmbed;

/// `config.json` of a diffusers `WanTransformer3DModel`, read as it is.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct WanTransformerConfig {
    /// (t, h, w) patch of the Conv3d patch embedding.
    pub patch_size: [usize; 3],
    pub num_attention_heads: usize,
    pub attention_head_dim: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub text_dim: usize,
    pub freq_dim: usize,
    pub ffn_dim: usize,
    pub num_layers: usize,
    pub cross_attn_norm: bool,
    /// diffusers always builds RMSNorm across heads whatever this says; so do we.
    #[serde(deserialize_with = "nullable")]
    pub qk_norm: Option<String>,
    pub eps: f64,
    /// Width of the CLIP image tokens (I2V); `null` for T2V.
    #[serde(deserialize_with = "nullable")]
    pub image_dim: Option<usize>,
    /// Input width of `attn2.add_k_proj`/`add_v_proj` (I2V); `null` for T2V.
    #[serde(deserialize_with = "nullable")]
    pub added_kv_proj_dim: Option<usize>,
    pub rope_max_seq_len: usize,
    /// Learned image-token positions of FLF2V models; absent from older configs.
    #[serde(default)]
    pub pos_embed_seq_len: Option<usize>,
    /// ciak extension, absent from diffusers configs (0): coordinate channels appended to the
    /// latents inside `forward` ([`super::position`]); they count in `in_channels`.
    #[serde(default)]
    pub position_channels: usize,
}

/// Like serde's `Option` handling, but a missing key is an error: only `null` means `None`.
fn nullable<'de, De: Deserializer<'de>, T: Deserialize<'de>>(de: De) -> std::result::Result<Option<T>, De::Error> {
    Option::<T>::deserialize(de)
}

impl WanTransformerConfig {
    /// <https://huggingface.co/Wan-AI/Wan2.1-T2V-1.3B-Diffusers/blob/main/transformer/config.json>
    pub fn wan21_t2v_1_3b() -> Self {
        Self {
            patch_size: [1, 2, 2],
            num_attention_heads: 12,
            attention_head_dim: 128,
            in_channels: 16,
            out_channels: 16,
            text_dim: 4096,
            freq_dim: 256,
            ffn_dim: 8960,
            num_layers: 30,
            cross_attn_norm: true,
            qk_norm: Some("rms_norm_across_heads".to_string()),
            eps: 1e-6,
            image_dim: None,
            added_kv_proj_dim: None,
            rope_max_seq_len: 1024,
            pos_embed_seq_len: None,
            position_channels: 0,
        }
    }

    /// <https://huggingface.co/Wan-AI/Wan2.1-T2V-14B-Diffusers/blob/main/transformer/config.json>
    pub fn wan21_t2v_14b() -> Self {
        Self { num_attention_heads: 40, ffn_dim: 13824, num_layers: 40, ..Self::wan21_t2v_1_3b() }
    }

    /// <https://huggingface.co/Wan-AI/Wan2.1-I2V-14B-480P-Diffusers/blob/main/transformer/config.json>
    pub fn wan21_i2v_14b_480p() -> Self {
        Self {
            in_channels: 36,
            image_dim: Some(1280),
            added_kv_proj_dim: Some(5120),
            ..Self::wan21_t2v_14b()
        }
    }

    /// Width of the residual stream, heads * head_dim.
    pub fn inner_dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    /// The channels `forward` takes: `in_channels` less the coordinate channels it appends.
    pub fn input_channels(&self) -> usize {
        self.in_channels.saturating_sub(self.position_channels)
    }

    fn patch_volume(&self) -> usize {
        self.patch_size.iter().product()
    }
}

/// diffusers `FP32LayerNorm`: normalises in f32, returns f32 (callers cast back).
#[derive(Debug, Clone)]
struct LayerNormF32 {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
}

impl LayerNormF32 {
    fn no_affine(dim: usize, eps: f64, device: &Device) -> Result<Self> {
        Ok(Self {
            weight: Tensor::ones(dim, DType::F32, device)?,
            bias: Tensor::zeros(dim, DType::F32, device)?,
            eps: eps as f32,
        })
    }

    fn affine(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let vb = vb.set_dtype(DType::F32);
        Ok(Self { weight: vb.get(dim, "weight")?, bias: vb.get(dim, "bias")?, eps: eps as f32 })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.to_dtype(DType::F32)?.contiguous()?;
        super::ops::layer_norm(&x, &self.weight, &self.bias, self.eps)
    }
}

/// `norm * (1 + scale) + shift`, all f32.
fn modulate(norm: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    broadcast_add(&broadcast_mul(norm, &(scale + 1.0)?)?, shift)
}

/// Splits `table + emb` (f32) into its rows.
///
/// Shapes: table [1, n, dim]; emb [B, n, dim] -> n x [B, 1, dim], or emb [B, L, n, dim] -> n x [B, L, dim].
fn modulation(table: &Tensor, emb: &Tensor) -> Result<Vec<Tensor>> {
    let emb = emb.to_dtype(DType::F32)?;
    let n = table.dim(1)?;
    match emb.rank() {
        3 => {
            let sum = emb.broadcast_add(table)?;
            (0..n).map(|i| sum.narrow(1, i, 1)).collect()
        }
        4 => {
            let sum = emb.broadcast_add(&table.unsqueeze(0)?)?;
            (0..n).map(|i| sum.narrow(2, i, 1)?.squeeze(2)).collect()
        }
        r => candle_core::bail!("modulation: expected a rank 3 or 4 embedding, got rank {r}"),
    }
}

/// `Timesteps(freq_dim, flip_sin_to_cos=True, downscale_freq_shift=0)`: [cos | sin], f32.
///
/// Mirrors torch's f32 arithmetic; exp/sin/cos are evaluated in f64 and rounded once.
fn timestep_embedding(timesteps: &[f32], dim: usize, device: &Device) -> Result<Tensor> {
    let half = dim / 2;
    let neg_log_period = -(10_000f64.ln()) as f32;
    let freqs: Vec<f32> = (0..half)
        .map(|j| (((neg_log_period * j as f32) / half as f32) as f64).exp() as f32)
        .collect();
    let mut out = Vec::with_capacity(timesteps.len() * dim);
    for &t in timesteps {
        let args: Vec<f64> = freqs.iter().map(|&f| (t * f) as f64).collect();
        out.extend(args.iter().map(|a| a.cos() as f32));
        out.extend(args.iter().map(|a| a.sin() as f32));
        // diffusers zero-pads an odd embedding width
        if dim % 2 == 1 {
            out.push(0.0);
        }
    }
    Tensor::from_vec(out, (timesteps.len(), dim), device)
}

/// `TimestepEmbedding`: linear_1 -> SiLU -> linear_2.
#[derive(Debug, Clone)]
struct TimestepEmbedding {
    linear_1: Linear,
    linear_2: Linear,
}

impl TimestepEmbedding {
    fn new(in_dim: usize, dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            linear_1: linear(in_dim, dim, vb.pp("linear_1"))?,
            linear_2: linear(dim, dim, vb.pp("linear_2"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.linear_2.forward(&self.linear_1.forward(x)?.silu()?)
    }
}

/// `PixArtAlphaTextProjection` with GELU-tanh.
#[derive(Debug, Clone)]
struct TextProjection {
    linear_1: Linear,
    linear_2: Linear,
}

impl TextProjection {
    fn new(in_dim: usize, dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            linear_1: linear(in_dim, dim, vb.pp("linear_1"))?,
            linear_2: linear(dim, dim, vb.pp("linear_2"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.linear_2.forward(&super::ops::gelu(&self.linear_1.forward(x)?)?)
    }
}

/// diffusers `FeedForward`: `net.0.proj` -> GELU -> `net.2` (`net.1` is a dropout).
#[derive(Debug, Clone)]
struct FeedForward {
    net_0_proj: Linear,
    net_2: Linear,
    /// Exact (erf) GELU instead of the tanh approximation.
    exact_gelu: bool,
}

impl FeedForward {
    fn new(dim: usize, inner: usize, dim_out: usize, exact_gelu: bool, vb: VarBuilder) -> Result<Self> {
        let net = vb.pp("net");
        Ok(Self {
            net_0_proj: linear(dim, inner, net.pp(0).pp("proj"))?,
            net_2: linear(inner, dim_out, net.pp(2))?,
            exact_gelu,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.net_0_proj.forward(x)?;
        let h = if self.exact_gelu { h.gelu_erf()? } else { super::ops::gelu(&h)? };
        self.net_2.forward(&h)
    }
}

/// `WanImageEmbedding`: CLIP tokens -> FP32 LayerNorm -> FF (exact GELU) -> FP32 LayerNorm.
#[derive(Debug, Clone)]
struct ImageEmbedding {
    norm1: LayerNormF32,
    ff: FeedForward,
    norm2: LayerNormF32,
    pos_embed: Option<Tensor>,
}

/// `nn.LayerNorm`'s default, used by the image embedder's norms.
const IMAGE_NORM_EPS: f64 = 1e-5;

impl ImageEmbedding {
    fn new(in_dim: usize, dim: usize, pos_embed_seq_len: Option<usize>, vb: VarBuilder) -> Result<Self> {
        let pos_embed = match pos_embed_seq_len {
            Some(len) => Some(vb.get((1, len, in_dim), "pos_embed")?),
            None => None,
        };
        Ok(Self {
            norm1: LayerNormF32::affine(in_dim, IMAGE_NORM_EPS, vb.pp("norm1"))?,
            ff: FeedForward::new(in_dim, in_dim, dim, true, vb.pp("ff"))?,
            norm2: LayerNormF32::affine(dim, IMAGE_NORM_EPS, vb.pp("norm2"))?,
            pos_embed,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let x = match &self.pos_embed {
            // FLF2V: first- and last-frame tokens of consecutive batch rows share one sequence
            Some(pos) => {
                let (_, l, d) = x.dims3()?;
                x.reshape(((), 2 * l, d))?.broadcast_add(pos)?
            }
            None => x.clone(),
        };
        let h = self.norm1.forward(&x)?.to_dtype(dtype)?;
        let h = self.ff.forward(&h)?;
        self.norm2.forward(&h)?.to_dtype(dtype)
    }
}

/// `WanTimeTextImageEmbedding`.
#[derive(Debug, Clone)]
struct ConditionEmbedder {
    time_embedder: TimestepEmbedding,
    time_proj: Linear,
    text_embedder: TextProjection,
    image_embedder: Option<ImageEmbedding>,
    freq_dim: usize,
}

impl ConditionEmbedder {
    fn new(cfg: &WanTransformerConfig, vb: VarBuilder) -> Result<Self> {
        let dim = cfg.inner_dim();
        let image_embedder = match cfg.image_dim {
            Some(image_dim) => Some(ImageEmbedding::new(
                image_dim,
                dim,
                cfg.pos_embed_seq_len,
                vb.pp("image_embedder"),
            )?),
            None => None,
        };
        Ok(Self {
            time_embedder: TimestepEmbedding::new(
                cfg.freq_dim,
                dim,
                vb.pp("time_embedder").set_dtype(DType::F32),
            )?,
            time_proj: linear(dim, 6 * dim, vb.pp("time_proj"))?,
            text_embedder: TextProjection::new(cfg.text_dim, dim, vb.pp("text_embedder"))?,
            image_embedder,
            freq_dim: cfg.freq_dim,
        })
    }

    /// Returns (temb [N, dim], timestep_proj [N, 6*dim]) in `dtype` for N flattened timesteps.
    fn time(&self, timesteps: &Tensor, dtype: DType) -> Result<(Tensor, Tensor)> {
        let t = timesteps.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let emb = timestep_embedding(&t, self.freq_dim, timesteps.device())?;
        let temb = self.time_embedder.forward(&emb)?.to_dtype(dtype)?;
        let proj = self.time_proj.forward(&temb.silu()?)?;
        Ok((temb, proj))
    }
}

/// `WanTransformerBlock`.
#[derive(Debug, Clone)]
pub struct WanTransformerBlock {
    norm1: LayerNormF32,
    attn1: WanAttention,
    attn2: WanAttention,
    /// Affine LayerNorm before cross-attention; `None` when `cross_attn_norm` is false.
    norm2: Option<LayerNormF32>,
    ffn: FeedForward,
    norm3: LayerNormF32,
    /// [1, 6, dim] f32: shift/scale/gate of self-attention, then of the FFN.
    scale_shift_table: Tensor,
}

impl WanTransformerBlock {
    pub fn new(cfg: &WanTransformerConfig, vb: VarBuilder) -> Result<Self> {
        let dim = cfg.inner_dim();
        let heads = cfg.num_attention_heads;
        let device = vb.device().clone();
        let norm2 = if cfg.cross_attn_norm {
            Some(LayerNormF32::affine(dim, cfg.eps, vb.pp("norm2"))?)
        } else {
            None
        };
        Ok(Self {
            norm1: LayerNormF32::no_affine(dim, cfg.eps, &device)?,
            attn1: WanAttention::new(dim, heads, cfg.eps, None, vb.pp("attn1"))?,
            attn2: WanAttention::new(dim, heads, cfg.eps, cfg.added_kv_proj_dim, vb.pp("attn2"))?,
            norm2,
            ffn: FeedForward::new(dim, cfg.ffn_dim, dim, false, vb.pp("ffn"))?,
            norm3: LayerNormF32::no_affine(dim, cfg.eps, &device)?,
            scale_shift_table: vb.set_dtype(DType::F32).get((1, 6, dim), "scale_shift_table")?,
        })
    }

    /// Shapes: x [B, L, dim], text [B, L_txt, dim], image [B, L_img, dim],
    /// timestep_proj [B, 6, dim] or per token [B, L, 6, dim], cos/sin [L, head_dim/2] -> [B, L, dim].
    pub fn forward(
        &self,
        x: &Tensor,
        text: &Tensor,
        image: Option<&Tensor>,
        timestep_proj: &Tensor,
        rope: (&Tensor, &Tensor),
    ) -> Result<Tensor> {
        let dtype = x.dtype();
        let m = modulation(&self.scale_shift_table, timestep_proj)?;
        let (shift_msa, scale_msa, gate_msa) = (&m[0], &m[1], &m[2]);
        let (c_shift_msa, c_scale_msa, c_gate_msa) = (&m[3], &m[4], &m[5]);

        let h = modulate(&self.norm1.forward(x)?, shift_msa, scale_msa)?.to_dtype(dtype)?;
        let attn = self.attn1.forward_self(&h, rope.0, rope.1)?;
        let x = (x.to_dtype(DType::F32)? + broadcast_mul(&attn.to_dtype(DType::F32)?, gate_msa)?)?
            .to_dtype(dtype)?;

        let h = match &self.norm2 {
            Some(norm2) => norm2.forward(&x)?.to_dtype(dtype)?,
            None => x.clone(),
        };
        let x = (&x + self.attn2.forward_cross(&h, text, image)?)?;

        let h = modulate(&self.norm3.forward(&x)?, c_shift_msa, c_scale_msa)?.to_dtype(dtype)?;
        let ff = self.ffn.forward(&h)?;
        (x.to_dtype(DType::F32)? + broadcast_mul(&ff.to_dtype(DType::F32)?, c_gate_msa)?)?.to_dtype(dtype)
    }
}

/// diffusers `WanTransformer3DModel`: predicts the flow velocity of a video latent.
#[derive(Debug, Clone)]
pub struct WanTransformer3DModel {
    /// Conv3d with kernel = stride = patch, stored as a linear over [c][kt][kh][kw] patch vectors.
    patch_embedding: Linear,
    condition_embedder: ConditionEmbedder,
    rope: WanRotaryPosEmbed,
    blocks: Vec<WanTransformerBlock>,
    norm_out: LayerNormF32,
    /// [1, 2, dim] f32: shift and scale of the output head.
    scale_shift_table: Tensor,
    proj_out: Linear,
    cfg: WanTransformerConfig,
    dtype: DType,
}

impl WanTransformer3DModel {
    pub fn new(cfg: &WanTransformerConfig, vb: VarBuilder) -> Result<Self> {
        let dim = cfg.inner_dim();
        let [pt, ph, pw] = cfg.patch_size;
        if cfg.patch_volume() == 0 || cfg.num_attention_heads == 0 {
            candle_core::bail!("transformer: patch_size {:?} and heads must be nonzero", cfg.patch_size);
        }
        if !position::supported(cfg.position_channels) || cfg.position_channels >= cfg.in_channels {
            candle_core::bail!(
                "transformer: expected position_channels {} and below in_channels {}, got {}",
                position::expected(),
                cfg.in_channels,
                cfg.position_channels
            );
        }
        let patch_in = cfg.in_channels * pt * ph * pw;
        let pe = vb.pp("patch_embedding");
        let pe_weight = pe.get((dim, cfg.in_channels, pt, ph, pw), "weight")?.reshape((dim, patch_in))?;
        let patch_embedding = Linear::new(pe_weight, Some(pe.get(dim, "bias")?));
        let blocks_vb = vb.pp("blocks");
        let blocks = (0..cfg.num_layers)
            .map(|i| WanTransformerBlock::new(cfg, blocks_vb.pp(i)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            patch_embedding,
            condition_embedder: ConditionEmbedder::new(cfg, vb.pp("condition_embedder"))?,
            rope: WanRotaryPosEmbed::new(cfg.attention_head_dim, cfg.rope_max_seq_len)?,
            blocks,
            norm_out: LayerNormF32::no_affine(dim, cfg.eps, vb.device())?,
            scale_shift_table: vb.clone().set_dtype(DType::F32).get((1, 2, dim), "scale_shift_table")?,
            proj_out: linear(dim, cfg.out_channels * cfg.patch_volume(), vb.pp("proj_out"))?,
            cfg: cfg.clone(),
            dtype: vb.dtype(),
        })
    }

    pub fn config(&self) -> &WanTransformerConfig {
        &self.cfg
    }

    /// The compute dtype (that of the VarBuilder); inputs are cast to it, the output has it.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// `timestep` holds one (float-valued) diffusion timestep per batch row, or one per token
    /// ([B, F'*H'*W'], Wan2.2 style). `encoder_hidden_states_image` is required by I2V models
    /// (CLIP tokens, attended separately from the text) and refused by T2V models. diffusers instead
    /// takes all but the last 512 context tokens as image tokens; both agree for 512 text tokens.
    ///
    /// Shapes: hidden_states [B, C_in - position_channels, F, H, W], timestep [B] or [B, L],
    /// encoder_hidden_states [B, L_txt, text_dim], encoder_hidden_states_image [B, L_img, image_dim]
    /// -> [B, C_out, F, H, W].
    pub fn forward(
        &self,
        hidden_states: &Tensor,
        timestep: &Tensor,
        encoder_hidden_states: &Tensor,
        encoder_hidden_states_image: Option<&Tensor>,
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        let (b, c, f, h, w) = hidden_states.dims5()?;
        let [pt, ph, pw] = cfg.patch_size;
        if c != cfg.input_channels() {
            candle_core::bail!("transformer: expected {} input channels, got {c}", cfg.input_channels());
        }
        if f % pt != 0 || h % ph != 0 || w % pw != 0 {
            candle_core::bail!(
                "transformer: latent {f}x{h}x{w} (frames x height x width) is not divisible by patch {pt}x{ph}x{pw}"
            );
        }
        let (fp, hp, wp) = (f / pt, h / ph, w / pw);
        let tokens = fp * hp * wp;
        let (tb, _, text_dim) = encoder_hidden_states.dims3()?;
        if tb != b || text_dim != cfg.text_dim {
            candle_core::bail!(
                "transformer: expected encoder_hidden_states [{b}, L, {}], got {:?}",
                cfg.text_dim,
                encoder_hidden_states.shape()
            );
        }

        let (cos, sin) = self.rope.forward((fp, hp, wp), hidden_states.device())?;

        // the coordinate channels, if any, join the latents here
        let c_in = cfg.in_channels;
        let x = position::append(&hidden_states.to_dtype(self.dtype)?, cfg.position_channels)?
            .reshape(vec![b, c_in, fp, pt, hp, ph, wp, pw])?
            .permute([0, 2, 4, 6, 1, 3, 5, 7])?
            .reshape((b, tokens, c_in * pt * ph * pw))?;
        let mut x = self.patch_embedding.forward(&x)?;

        let per_token = match timestep.dims() {
            [tb] if *tb == b => false,
            [tb, tl] if *tb == b && *tl == tokens => true,
            _ => candle_core::bail!(
                "transformer: expected timestep [{b}] or [{b}, {tokens}], got {:?}",
                timestep.shape()
            ),
        };
        let dim = cfg.inner_dim();
        let (temb, proj) = self.condition_embedder.time(&timestep.flatten_all()?, self.dtype)?;
        let (temb, timestep_proj) = if per_token {
            (temb.reshape((b, tokens, 1, dim))?, proj.reshape((b, tokens, 6, dim))?)
        } else {
            (temb.reshape((b, 1, dim))?, proj.reshape((b, 6, dim))?)
        };

        let text = self
            .condition_embedder
            .text_embedder
            .forward(&encoder_hidden_states.to_dtype(self.dtype)?)?;
        let image = match (&self.condition_embedder.image_embedder, encoder_hidden_states_image) {
            (Some(embedder), Some(image)) => {
                let (ib, _, image_dim) = image.dims3()?;
                if ib != b || Some(image_dim) != cfg.image_dim {
                    candle_core::bail!(
                        "transformer: expected encoder_hidden_states_image [{b}, L, {}], got {:?}",
                        cfg.image_dim.unwrap_or(0),
                        image.shape()
                    );
                }
                Some(embedder.forward(&image.to_dtype(self.dtype)?)?)
            }
            (None, None) => None,
            (Some(_), None) => candle_core::bail!("transformer: this I2V model needs encoder_hidden_states_image"),
            (None, Some(_)) => {
                candle_core::bail!("transformer: encoder_hidden_states_image given to a model without image_dim")
            }
        };

        for block in &self.blocks {
            x = block.forward(&x, &text, image.as_ref(), &timestep_proj, (&cos, &sin))?;
        }

        let m = modulation(&self.scale_shift_table, &temb)?;
        let x = modulate(&self.norm_out.forward(&x)?, &m[0], &m[1])?.to_dtype(self.dtype)?;
        let x = self.proj_out.forward(&x)?;
        x.reshape(vec![b, fp, hp, wp, pt, ph, pw, cfg.out_channels])?
            .permute([0, 7, 1, 4, 2, 5, 3, 6])?
            .reshape((b, cfg.out_channels, f, h, w))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::VarMap;

    fn tiny(image: bool) -> WanTransformerConfig {
        WanTransformerConfig {
            num_attention_heads: 2,
            attention_head_dim: 12,
            text_dim: 8,
            freq_dim: 16,
            ffn_dim: 32,
            num_layers: 2,
            in_channels: if image { 12 } else { 4 },
            out_channels: 4,
            image_dim: image.then_some(6),
            added_kv_proj_dim: image.then_some(24),
            ..WanTransformerConfig::wan21_t2v_1_3b()
        }
    }

    fn random_model(cfg: &WanTransformerConfig) -> Result<WanTransformer3DModel> {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        // first pass creates the variables; zero-initialised tables and biases would hide bugs
        WanTransformer3DModel::new(cfg, vb.clone())?;
        for var in varmap.all_vars() {
            var.set(&(Tensor::randn(0f32, 1., var.shape(), &Device::Cpu)? * 0.3)?)?;
        }
        WanTransformer3DModel::new(cfg, vb)
    }

    #[test]
    fn config_reads_diffusers_json_and_rejects_missing_keys() {
        let json = r#"{"_class_name": "WanTransformer3DModel", "_diffusers_version": "0.33.0.dev0",
            "added_kv_proj_dim": null, "attention_head_dim": 128, "cross_attn_norm": true, "eps": 1e-06,
            "ffn_dim": 8960, "freq_dim": 256, "image_dim": null, "in_channels": 16, "num_attention_heads": 12,
            "num_layers": 30, "out_channels": 16, "patch_size": [1, 2, 2], "qk_norm": "rms_norm_across_heads",
            "rope_max_seq_len": 1024, "text_dim": 4096}"#;
        let cfg: WanTransformerConfig = serde_json::from_str(json).unwrap();
        assert_eq!(cfg, WanTransformerConfig::wan21_t2v_1_3b());
        assert_eq!(cfg.inner_dim(), 1536);
        let missing = json.replace(r#""image_dim": null,"#, "");
        let err = serde_json::from_str::<WanTransformerConfig>(&missing).unwrap_err();
        assert!(err.to_string().contains("image_dim"), "{err}");
    }

    #[test]
    fn timestep_embedding_is_cos_then_sin() -> Result<()> {
        let emb = timestep_embedding(&[0.0, 3.0], 8, &Device::Cpu)?.to_vec2::<f32>()?;
        assert_eq!(emb[0], vec![1., 1., 1., 1., 0., 0., 0., 0.]);
        // freq_j = 10000^(-j/4)
        for j in 0..4 {
            let arg = 3.0 * 10000f64.powf(-(j as f64) / 4.0);
            assert!((emb[1][j] as f64 - arg.cos()).abs() < 1e-6);
            assert!((emb[1][4 + j] as f64 - arg.sin()).abs() < 1e-6);
        }
        Ok(())
    }

    #[test]
    fn per_token_timesteps_equal_scalar_ones() -> Result<()> {
        let cfg = tiny(false);
        let model = random_model(&cfg)?;
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1., (2, 4, 2, 4, 6), &dev)?;
        let ctx = Tensor::randn(0f32, 1., (2, 5, 8), &dev)?;
        let t = Tensor::new(&[999f32, 500.], &dev)?;
        let scalar = model.forward(&x, &t, &ctx, None)?;
        assert_eq!(scalar.dims(), &[2, 4, 2, 4, 6]);
        let t_tok = t.unsqueeze(1)?.broadcast_as((2, 12))?.contiguous()?;
        let tokens = model.forward(&x, &t_tok, &ctx, None)?;
        let err = (scalar - tokens)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        assert!(err < 1e-5, "max abs error {err}");
        Ok(())
    }

    #[test]
    fn position_channels_are_the_coordinates_appended_to_the_input() -> Result<()> {
        // one set of weights read as a plain 6-channel model and as a 4-channel one plus coordinates
        let plain_cfg = WanTransformerConfig { in_channels: 6, ..tiny(false) };
        let pos_cfg = WanTransformerConfig { position_channels: 2, ..plain_cfg.clone() };
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        WanTransformer3DModel::new(&plain_cfg, vb.clone())?;
        for var in varmap.all_vars() {
            var.set(&(Tensor::randn(0f32, 1., var.shape(), &Device::Cpu)? * 0.3)?)?;
        }
        let plain = WanTransformer3DModel::new(&plain_cfg, vb.clone())?;
        let with_pos = WanTransformer3DModel::new(&pos_cfg, vb)?;
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1., (1, 4, 2, 4, 8), &dev)?;
        let ctx = Tensor::randn(0f32, 1., (1, 5, 8), &dev)?;
        let t = Tensor::new(&[700f32], &dev)?;
        // cell centres from -1 (top, left) to 1 (bottom, right)
        let ys: Vec<f32> = (0..4).map(|i| (2 * i + 1) as f32 / 4.0 - 1.0).collect();
        let xs: Vec<f32> = (0..8).map(|i| (2 * i + 1) as f32 / 8.0 - 1.0).collect();
        let ys = Tensor::from_vec(ys, (1, 1, 1, 4, 1), &dev)?.broadcast_as((1, 1, 2, 4, 8))?;
        let xs = Tensor::from_vec(xs, (1, 1, 1, 1, 8), &dev)?.broadcast_as((1, 1, 2, 4, 8))?;
        let want = plain.forward(&Tensor::cat(&[&x, &ys, &xs], 1)?, &t, &ctx, None)?;
        let got = with_pos.forward(&x, &t, &ctx, None)?;
        assert_eq!(got.dims(), &[1, 4, 2, 4, 8]);
        let err = (&want - &got)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        assert!(err < 1e-5, "max abs error {err}");
        // the coordinates matter: the same input without them gives another output
        let zeros = Tensor::zeros((1, 2, 2, 4, 8), DType::F32, &dev)?;
        let blind = plain.forward(&Tensor::cat(&[&x, &zeros], 1)?, &t, &ctx, None)?;
        assert!((&blind - &got)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()? > 1e-3);
        let err = with_pos.forward(&Tensor::cat(&[&x, &zeros], 1)?, &t, &ctx, None).unwrap_err().to_string();
        assert!(err.contains("expected 4 input channels, got 6"), "{err}");
        let bad = WanTransformerConfig { position_channels: 3, ..plain_cfg };
        let err = WanTransformer3DModel::new(&bad, VarBuilder::zeros(DType::F32, &dev)).err().unwrap().to_string();
        assert!(err.contains("expected position_channels 0, 2, or 2 + 4k"), "{err}");
        Ok(())
    }

    #[test]
    fn output_depends_on_every_input_and_checks_shapes() -> Result<()> {
        let cfg = tiny(true);
        let model = random_model(&cfg)?;
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1., (1, 12, 1, 2, 4), &dev)?;
        let ctx = Tensor::randn(0f32, 1., (1, 3, 8), &dev)?;
        let img = Tensor::randn(0f32, 1., (1, 4, 6), &dev)?;
        let t = Tensor::new(&[10f32], &dev)?;
        let base = model.forward(&x, &t, &ctx, Some(&img))?;
        let diff = |other: Tensor| -> Result<f32> {
            (&base - other)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
        };
        assert!(diff(model.forward(&x, &Tensor::new(&[11f32], &dev)?, &ctx, Some(&img))?)? > 1e-4);
        assert!(diff(model.forward(&x, &t, &(&ctx * 2.0)?, Some(&img))?)? > 1e-4);
        // the image embedder starts with a LayerNorm, so perturb rather than rescale
        let img2 = (&img + Tensor::randn(0f32, 1., (1, 4, 6), &dev)?)?;
        assert!(diff(model.forward(&x, &t, &ctx, Some(&img2))?)? > 1e-4);
        assert!(model.forward(&x, &t, &ctx, None).is_err());
        assert!(model.forward(&x.narrow(1, 0, 4)?, &t, &ctx, Some(&img)).is_err());
        assert!(model.forward(&x, &t, &ctx.narrow(2, 0, 4)?, Some(&img)).is_err());
        Ok(())
    }
}
