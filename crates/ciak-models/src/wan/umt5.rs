//! UMT5 encoder (the Wan text encoder), following transformers' `UMT5EncoderModel`.
//!
//! Precision: RMSNorm statistics, softmax, the gated activation and the residual stream in f32;
//! projections in the weight dtype, except `wo` which is kept f32 under f16 as transformers does
//! (`_keep_in_fp32_modules = ["wo"]`, applied to f16 loads only).

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::{Embedding, Linear, VarBuilder};

/// `text_encoder/config.json` of a diffusers Wan folder (transformers' `UMT5Config`).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct Umt5Config {
    pub vocab_size: usize,
    pub d_model: usize,
    pub d_kv: usize,
    pub d_ff: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub relative_attention_num_buckets: usize,
    pub relative_attention_max_distance: usize,
    pub layer_norm_epsilon: f64,
    pub feed_forward_proj: String,
    pub dense_act_fn: String,
    pub is_gated_act: bool,
}

impl Umt5Config {
    /// UMT5-XXL encoder used by every Wan2.1/2.2 model.
    /// <https://huggingface.co/Wan-AI/Wan2.1-T2V-1.3B-Diffusers/blob/main/text_encoder/config.json>
    pub fn umt5_xxl() -> Self {
        Self {
            vocab_size: 256384,
            d_model: 4096,
            d_kv: 64,
            d_ff: 10240,
            num_layers: 24,
            num_heads: 64,
            relative_attention_num_buckets: 32,
            relative_attention_max_distance: 128,
            layer_norm_epsilon: 1e-6,
            feed_forward_proj: "gated-gelu".to_string(),
            dense_act_fn: "gelu_new".to_string(),
            is_gated_act: true,
        }
    }
}

/// Bucket of `relative_position = key - query` for bidirectional (encoder) attention, as in
/// transformers' `UMT5Attention._relative_position_bucket` with `is_decoder = False`.
pub fn relative_position_bucket(
    relative_position: i64,
    num_buckets: usize,
    max_distance: usize,
) -> usize {
    let half = num_buckets / 2;
    let sign_offset = if relative_position > 0 { half } else { 0 };
    let n = relative_position.unsigned_abs() as usize;
    let max_exact = half / 2;
    if n < max_exact {
        return sign_offset + n;
    }
    // f32 arithmetic like the torch reference, so the truncation lands on the same side at
    // the exact powers (16, 32, 64).
    let log_ratio = (n as f32 / max_exact as f32).ln()
        / ((max_distance as f64 / max_exact as f64).ln() as f32);
    let large = max_exact + (log_ratio * (half - max_exact) as f32) as usize;
    sign_offset + large.min(half - 1)
}

/// Bucket indices [q_len, k_len] as a u32 tensor.
fn relative_position_buckets(
    q_len: usize,
    k_len: usize,
    num_buckets: usize,
    max_distance: usize,
    device: &Device,
) -> Result<Tensor> {
    let mut ids = Vec::with_capacity(q_len * k_len);
    for q in 0..q_len as i64 {
        for k in 0..k_len as i64 {
            ids.push(relative_position_bucket(k - q, num_buckets, max_distance) as u32);
        }
    }
    Tensor::from_vec(ids, (q_len, k_len), device)
}

/// T5 RMSNorm: no mean subtraction, no bias, statistics in f32, result in the weight dtype.
#[derive(Debug, Clone)]
struct Umt5LayerNorm {
    weight: Tensor,
    eps: f64,
}

impl Umt5LayerNorm {
    fn new(size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        // Init hint (ignored by checkpoint backends) matches transformers' ones init.
        let weight = vb.get_with_hints(size, "weight", candle_nn::Init::Const(1.0))?;
        Ok(Self { weight, eps })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let xs = xs.to_dtype(DType::F32)?;
        let inv_rms = xs
            .sqr()?
            .mean_keepdim(D::Minus1)?
            .affine(1.0, self.eps)?
            .sqrt()?
            .recip()?;
        xs.broadcast_mul(&inv_rms)?
            .to_dtype(self.weight.dtype())?
            .broadcast_mul(&self.weight)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Activation {
    GeluTanh,
    GeluErf,
    Relu,
}

impl Activation {
    fn from_name(name: &str) -> Result<Self> {
        match name {
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(Self::GeluTanh),
            "gelu" => Ok(Self::GeluErf),
            "relu" => Ok(Self::Relu),
            other => candle_core::bail!(
                "umt5: unsupported dense_act_fn {other:?}, expected gelu_new, gelu_pytorch_tanh, gelu or relu"
            ),
        }
    }

    fn forward(self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Self::GeluTanh => super::ops::gelu(xs),
            Self::GeluErf => xs.gelu_erf(),
            Self::Relu => xs.relu(),
        }
    }
}

#[derive(Debug, Clone)]
struct Umt5Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    relative_attention_bias: Embedding,
    num_heads: usize,
    d_kv: usize,
}

impl Umt5Attention {
    fn new(cfg: &Umt5Config, vb: VarBuilder) -> Result<Self> {
        let inner = cfg.num_heads * cfg.d_kv;
        Ok(Self {
            q: candle_nn::linear_no_bias(cfg.d_model, inner, vb.pp("q"))?,
            k: candle_nn::linear_no_bias(cfg.d_model, inner, vb.pp("k"))?,
            v: candle_nn::linear_no_bias(cfg.d_model, inner, vb.pp("v"))?,
            o: candle_nn::linear_no_bias(inner, cfg.d_model, vb.pp("o"))?,
            relative_attention_bias: candle_nn::embedding(
                cfg.relative_attention_num_buckets,
                cfg.num_heads,
                vb.pp("relative_attention_bias"),
            )?,
            num_heads: cfg.num_heads,
            d_kv: cfg.d_kv,
        })
    }

    /// `buckets` [L, L] u32, `mask_bias` [B, 1, 1, L] f32 (0 or f32::MIN).
    fn forward(&self, xs: &Tensor, buckets: &Tensor, mask_bias: &Tensor) -> Result<Tensor> {
        let (b, l, _) = xs.dims3()?;
        let heads = |t: Tensor| -> Result<Tensor> {
            t.reshape((b, l, self.num_heads, self.d_kv))?.transpose(1, 2)?.contiguous()
        };
        let q = heads(self.q.forward(xs)?)?;
        let k = heads(self.k.forward(xs)?)?;
        let v = heads(self.v.forward(xs)?)?;
        // T5 folds the 1/sqrt(d) scale into the weights: none here.
        let scores = q.matmul(&k.t()?)?.to_dtype(DType::F32)?;
        let bias = self
            .relative_attention_bias
            .forward(buckets)?
            .to_dtype(DType::F32)?
            .permute((2, 0, 1))?
            .unsqueeze(0)?;
        let scores = scores.broadcast_add(&bias)?.broadcast_add(mask_bias)?;
        let probs = super::ops::softmax_last_dim(&scores)?.to_dtype(v.dtype())?;
        let ctx = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((b, l, self.num_heads * self.d_kv))?;
        self.o.forward(&ctx)
    }
}

#[derive(Debug, Clone)]
struct Umt5DenseGatedActDense {
    wi_0: Linear,
    wi_1: Linear,
    wo: Linear,
    act: Activation,
}

impl Umt5DenseGatedActDense {
    fn new(cfg: &Umt5Config, vb: VarBuilder) -> Result<Self> {
        // transformers keeps `wo` in f32 for f16 loads only (its output overflows f16); bf16 stays bf16.
        let wo_dtype = if vb.dtype() == DType::F16 { DType::F32 } else { vb.dtype() };
        Ok(Self {
            wi_0: candle_nn::linear_no_bias(cfg.d_model, cfg.d_ff, vb.pp("wi_0"))?,
            wi_1: candle_nn::linear_no_bias(cfg.d_model, cfg.d_ff, vb.pp("wi_1"))?,
            wo: candle_nn::linear_no_bias(cfg.d_ff, cfg.d_model, vb.pp("wo").to_dtype(wo_dtype))?,
            act: Activation::from_name(&cfg.dense_act_fn)?,
        })
    }

    /// Returns the `wo` dtype.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let gate = self.act.forward(&self.wi_0.forward(xs)?.to_dtype(DType::F32)?)?;
        let lin = self.wi_1.forward(xs)?.to_dtype(DType::F32)?;
        self.wo.forward(&(gate * lin)?.to_dtype(self.wo.weight().dtype())?)
    }
}

#[derive(Debug, Clone)]
struct Umt5Block {
    attn_norm: Umt5LayerNorm,
    attn: Umt5Attention,
    ff_norm: Umt5LayerNorm,
    ff: Umt5DenseGatedActDense,
}

impl Umt5Block {
    fn new(cfg: &Umt5Config, vb: VarBuilder) -> Result<Self> {
        let eps = cfg.layer_norm_epsilon;
        let l0 = vb.pp("layer").pp(0);
        let l1 = vb.pp("layer").pp(1);
        Ok(Self {
            attn_norm: Umt5LayerNorm::new(cfg.d_model, eps, l0.pp("layer_norm"))?,
            attn: Umt5Attention::new(cfg, l0.pp("SelfAttention"))?,
            ff_norm: Umt5LayerNorm::new(cfg.d_model, eps, l1.pp("layer_norm"))?,
            ff: Umt5DenseGatedActDense::new(cfg, l1.pp("DenseReluDense"))?,
        })
    }

    /// `xs` is the f32 residual stream.
    fn forward(&self, xs: &Tensor, buckets: &Tensor, mask_bias: &Tensor) -> Result<Tensor> {
        let h = self.attn.forward(&self.attn_norm.forward(xs)?, buckets, mask_bias)?;
        let xs = (xs + h.to_dtype(DType::F32)?)?;
        let h = self.ff.forward(&self.ff_norm.forward(&xs)?)?;
        xs + h.to_dtype(DType::F32)?
    }
}

/// The encoder half of UMT5, keys as in transformers' `UMT5EncoderModel` checkpoints.
#[derive(Debug, Clone)]
pub struct Umt5EncoderModel {
    shared: Embedding,
    block: Vec<Umt5Block>,
    final_layer_norm: Umt5LayerNorm,
    cfg: Umt5Config,
    device: Device,
    dtype: DType,
}

impl Umt5EncoderModel {
    pub fn new(cfg: &Umt5Config, vb: VarBuilder) -> Result<Self> {
        if !cfg.is_gated_act {
            candle_core::bail!(
                "umt5: only the gated feed-forward (is_gated_act = true) is supported, got feed_forward_proj {:?}",
                cfg.feed_forward_proj
            );
        }
        // `encoder.embed_tokens.weight` is tied to `shared.weight`; checkpoints may hold either.
        let emb_vb = if vb.contains_tensor("shared.weight") {
            vb.pp("shared")
        } else {
            vb.pp("encoder").pp("embed_tokens")
        };
        let shared = candle_nn::embedding(cfg.vocab_size, cfg.d_model, emb_vb)?;
        let enc = vb.pp("encoder");
        let block = (0..cfg.num_layers)
            .map(|i| Umt5Block::new(cfg, enc.pp("block").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let final_layer_norm =
            Umt5LayerNorm::new(cfg.d_model, cfg.layer_norm_epsilon, enc.pp("final_layer_norm"))?;
        Ok(Self {
            shared,
            block,
            final_layer_norm,
            cfg: cfg.clone(),
            device: vb.device().clone(),
            dtype: vb.dtype(),
        })
    }

    pub fn config(&self) -> &Umt5Config {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Dtype of the weights and of the output.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Shapes: input_ids [B, L] u32, attention_mask [B, L] (1 = token, 0 = padding; any dtype)
    /// -> last_hidden_state [B, L, d_model] in the weight dtype.
    pub fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        let (b, l) = input_ids.dims2()?;
        let mask_dims = attention_mask.dims2()?;
        if mask_dims != (b, l) {
            candle_core::bail!(
                "umt5: attention_mask shape {mask_dims:?} does not match input_ids shape {:?}",
                (b, l)
            );
        }
        let mut xs = self.shared.forward(input_ids)?.to_dtype(DType::F32)?;
        let buckets = relative_position_buckets(
            l,
            l,
            self.cfg.relative_attention_num_buckets,
            self.cfg.relative_attention_max_distance,
            input_ids.device(),
        )?;
        // Additive key-padding mask: 0 for tokens, the most negative f32 for padding.
        let mask_bias = attention_mask
            .to_dtype(DType::F32)?
            .affine(-(f32::MIN as f64), f32::MIN as f64)?
            .reshape((b, 1, 1, l))?;
        for block in &self.block {
            xs = block.forward(&xs, &buckets, &mask_bias)?;
        }
        self.final_layer_norm.forward(&xs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::VarMap;

    #[test]
    fn buckets_match_t5_bidirectional_table() {
        // Expected values from transformers' _relative_position_bucket (32 buckets, max 128).
        let cases: &[(i64, usize)] = &[
            (0, 0),
            (-1, 1),
            (-7, 7),
            (-8, 8),
            (-11, 8),
            (-12, 9),
            (-15, 9),
            (-16, 10),
            (-22, 10),
            (-23, 11),
            (-31, 11),
            (-32, 12),
            (-45, 12),
            (-46, 13),
            (-63, 13),
            (-64, 14),
            (-90, 14),
            (-91, 15),
            (-127, 15),
            (-128, 15),
            (-1000, 15),
            (1, 17),
            (7, 23),
            (8, 24),
            (16, 26),
            (32, 28),
            (64, 30),
            (91, 31),
            (511, 31),
        ];
        for &(rel, want) in cases {
            assert_eq!(relative_position_bucket(rel, 32, 128), want, "relative position {rel}");
        }
    }

    #[test]
    fn buckets_are_monotone_and_in_range() {
        let mut prev = 0;
        for n in 0..2000i64 {
            let b = relative_position_bucket(-n, 32, 128);
            assert!(b < 16 && b >= prev, "n={n} bucket {b} prev {prev}");
            prev = b;
            let p = relative_position_bucket(n, 32, 128);
            assert!(n == 0 && p == 0 || (16..32).contains(&p), "n={n} bucket {p}");
        }
    }

    #[test]
    fn config_reads_hf_json_and_requires_fields() {
        let json = r#"{"architectures":["UMT5EncoderModel"],"d_ff":10240,"d_kv":64,"d_model":4096,
            "decoder_start_token_id":0,"dense_act_fn":"gelu_new","dropout_rate":0.1,"eos_token_id":1,
            "feed_forward_proj":"gated-gelu","initializer_factor":1.0,"is_encoder_decoder":true,
            "is_gated_act":true,"layer_norm_epsilon":1e-06,"model_type":"umt5","num_decoder_layers":24,
            "num_heads":64,"num_layers":24,"output_past":true,"pad_token_id":0,
            "relative_attention_max_distance":128,"relative_attention_num_buckets":32,
            "scalable_attention":true,"tie_word_embeddings":false,"tokenizer_class":"T5Tokenizer",
            "torch_dtype":"float32","transformers_version":"4.49.0","use_cache":true,"vocab_size":256384}"#;
        let cfg: Umt5Config = serde_json::from_str(json).unwrap();
        assert_eq!(cfg, Umt5Config::umt5_xxl());
        let missing = json.replace("\"d_kv\":64,", "");
        assert!(serde_json::from_str::<Umt5Config>(&missing).is_err());
    }

    fn tiny_cfg() -> Umt5Config {
        Umt5Config {
            vocab_size: 50,
            d_model: 16,
            d_kv: 4,
            d_ff: 24,
            num_layers: 2,
            num_heads: 3,
            relative_attention_num_buckets: 32,
            relative_attention_max_distance: 128,
            layer_norm_epsilon: 1e-6,
            feed_forward_proj: "gated-gelu".into(),
            dense_act_fn: "gelu_new".into(),
            is_gated_act: true,
        }
    }

    #[test]
    fn padding_does_not_change_valid_rows() -> Result<()> {
        let dev = Device::Cpu;
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
        let model = Umt5EncoderModel::new(&tiny_cfg(), vb)?;
        let short = Tensor::new(&[[5u32, 9, 1]], &dev)?;
        let short_mask = Tensor::new(&[[1u32, 1, 1]], &dev)?;
        let padded = Tensor::new(&[[5u32, 9, 1, 0, 0, 0]], &dev)?;
        let padded_mask = Tensor::new(&[[1u32, 1, 1, 0, 0, 0]], &dev)?;
        let max_diff = |a: &Tensor, b: &Tensor| -> Result<f32> {
            (a - b)?.abs()?.max_all()?.to_scalar::<f32>()
        };
        let a = model.forward(&short, &short_mask)?;
        let b = model.forward(&padded, &padded_mask)?.narrow(1, 0, 3)?;
        assert_eq!(b.dims(), &[1, 3, 16]);
        let diff = max_diff(&a, &b)?;
        assert!(diff < 1e-5, "padding leaked into valid rows: {diff}");
        // Without the mask the padding keys are attended to and the rows change.
        let ones = Tensor::ones((1, 6), DType::U32, &dev)?;
        let unmasked = model.forward(&padded, &ones)?.narrow(1, 0, 3)?;
        let diff = max_diff(&a, &unmasked)?;
        assert!(diff > 1e-4, "mask had no effect: {diff}");
        Ok(())
    }
}
