//! Attention of the Wan transformer: scaled dot-product attention computed in blocks of query
//! rows, and the diffusers `WanAttention` module (self-attention with RoPE, cross-attention with
//! the optional I2V image branch).

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::ops::{linear, Linear};
use super::rope::apply_rope;

/// Default upper bound on the score-matrix elements materialised at once on the CPU (256 MiB in
/// f32).
pub const DEFAULT_SCORE_BUDGET: usize = 1 << 26;

/// The default on accelerators, where the scores stay in bf16/f16: 512 MiB of scores and as much
/// of probabilities per block. Blocks 4x larger made the Wan2.1-1.3B forward at 32,760 tokens
/// 1.6x faster on an H200 (docs/performance.md).
pub const DEFAULT_SCORE_BUDGET_ACCELERATOR: usize = 1 << 28;

/// 0: the per-device default.
static SCORE_BUDGET: AtomicUsize = AtomicUsize::new(0);

/// Sets, for the whole process, how many score elements [`sdpa`] materialises per block of query
/// rows (at least one row per block whatever the value). Larger blocks mean fewer, larger matrix
/// products (what a GPU wants) and more memory; the result is the same up to rounding.
pub fn set_score_budget(elements: usize) {
    SCORE_BUDGET.store(elements.max(1), Ordering::Relaxed);
}

/// The per-block score budget of [`sdpa`] on `device`, in elements: the one set by
/// [`set_score_budget`], else [`DEFAULT_SCORE_BUDGET`] on the CPU and
/// [`DEFAULT_SCORE_BUDGET_ACCELERATOR`] elsewhere.
pub fn score_budget(device: &Device) -> usize {
    match SCORE_BUDGET.load(Ordering::Relaxed) {
        0 if device.is_cpu() => DEFAULT_SCORE_BUDGET,
        0 => DEFAULT_SCORE_BUDGET_ACCELERATOR,
        n => n,
    }
}

/// Softmax attention without a mask, `softmax(q k^T * scale) v`, bounded memory.
///
/// The query rows are processed in blocks so memory is O(L_k * block), not O(L_q * L_k). The
/// softmax is in f32; on the CPU the matmuls are in f32 too (faster and more exact there than
/// bf16), on accelerators they stay in the input dtype.
///
/// Shapes: q [B, H, L_q, D], k [B, H, L_k, D], v [B, H, L_k, D_v] -> [B, H, L_q, D_v].
pub fn sdpa(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    let (b, h, _, _) = q.dims4()?;
    let l_k = k.dim(2)?;
    let block_rows = (score_budget(q.device()) / (b * h * l_k).max(1)).max(1);
    sdpa_blocked(q, k, v, scale, block_rows)
}

/// [`sdpa`] with an explicit number of query rows per block.
///
/// Shapes: q [B, H, L_q, D], k [B, H, L_k, D], v [B, H, L_k, D_v] -> [B, H, L_q, D_v].
pub fn sdpa_blocked(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, block_rows: usize) -> Result<Tensor> {
    let (b, h, l_q, d) = q.dims4()?;
    let (kb, kh, l_k, kd) = k.dims4()?;
    let (vb, vh, vl, _) = v.dims4()?;
    if (kb, kh, kd) != (b, h, d) || (vb, vh, vl) != (b, h, l_k) {
        candle_core::bail!(
            "sdpa: incompatible shapes q {:?}, k {:?}, v {:?}",
            q.shape(),
            k.shape(),
            v.shape()
        );
    }
    if super::ops::use_cpu_autograd(&[q, k, v]) {
        return super::ops::sdpa_autograd(q, k, v, scale, block_rows);
    }
    let out_dtype = q.dtype();
    let compute = match (q.device().is_cpu(), out_dtype) {
        (true, DType::BF16 | DType::F16) => DType::F32,
        _ => out_dtype,
    };
    // scaling q instead of the scores touches L_q*D elements instead of L_q*L_k
    let q = (q.to_dtype(compute)? * scale)?;
    let kt = k.to_dtype(compute)?.contiguous()?.t()?;
    let v = v.to_dtype(compute)?.contiguous()?;
    let block_rows = block_rows.max(1);
    if block_rows >= l_q {
        return attend(&q, &kt, &v)?.to_dtype(out_dtype);
    }
    let mut blocks = Vec::with_capacity(l_q.div_ceil(block_rows));
    for start in (0..l_q).step_by(block_rows) {
        let rows = block_rows.min(l_q - start);
        blocks.push(attend(&q.narrow(2, start, rows)?, &kt, &v)?);
    }
    Tensor::cat(&blocks, 2)?.to_dtype(out_dtype)
}

/// `softmax(q kt) v` for one block. The scores keep the matmul's dtype: on the CPU that is f32
/// (see [`sdpa_blocked`]); on accelerators bf16/f16, whose softmax kernel sums the exponentials
/// in f32, so casting the scores to f32 and the probabilities back (two extra passes over the
/// score block, 42% of a CUDA forward's time at 9,360 tokens) would add passes, not precision:
/// the scores come out of the matmul rounded to the input dtype already.
fn attend(q: &Tensor, kt: &Tensor, v: &Tensor) -> Result<Tensor> {
    let scores = q.matmul(kt)?;
    let probs = super::ops::softmax_last_dim(&scores)?;
    probs.matmul(v)
}

/// `torch.nn.RMSNorm` with a learned weight.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self { weight: vb.get(dim, "weight")?, eps: eps as f32 })
    }

    /// Shapes: x [..., dim] -> [..., dim].
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        super::ops::rms_norm(x, &self.weight, self.eps)
    }
}

/// Keys and values of the I2V image tokens (`added_kv_proj_dim` set).
#[derive(Debug, Clone)]
struct AddedKv {
    add_k_proj: Linear,
    add_v_proj: Linear,
    norm_added_k: RmsNorm,
}

/// diffusers `WanAttention` with `WanAttnProcessor`; q/k RMSNorm spans all heads.
#[derive(Debug, Clone)]
pub struct WanAttention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    /// Checkpoint key `to_out.0` (`to_out.1` is a dropout).
    to_out: Linear,
    norm_q: RmsNorm,
    norm_k: RmsNorm,
    added_kv: Option<AddedKv>,
    heads: usize,
    head_dim: usize,
}

impl WanAttention {
    /// `added_kv_proj_dim` is `Some` only for the cross-attention of I2V models.
    pub fn new(
        dim: usize,
        heads: usize,
        eps: f64,
        added_kv_proj_dim: Option<usize>,
        vb: VarBuilder,
    ) -> Result<Self> {
        if heads == 0 || !dim.is_multiple_of(heads) {
            candle_core::bail!("attention: dim {dim} is not a multiple of heads {heads}");
        }
        let added_kv = match added_kv_proj_dim {
            Some(kv_dim) => Some(AddedKv {
                add_k_proj: linear(kv_dim, dim, vb.pp("add_k_proj"))?,
                add_v_proj: linear(kv_dim, dim, vb.pp("add_v_proj"))?,
                norm_added_k: RmsNorm::new(dim, eps, vb.pp("norm_added_k"))?,
            }),
            None => None,
        };
        Ok(Self {
            to_q: linear(dim, dim, vb.pp("to_q"))?,
            to_k: linear(dim, dim, vb.pp("to_k"))?,
            to_v: linear(dim, dim, vb.pp("to_v"))?,
            to_out: linear(dim, dim, vb.pp("to_out").pp(0))?,
            norm_q: RmsNorm::new(dim, eps, vb.pp("norm_q"))?,
            norm_k: RmsNorm::new(dim, eps, vb.pp("norm_k"))?,
            added_kv,
            heads,
            head_dim: dim / heads,
        })
    }

    fn split_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, l, _) = x.dims3()?;
        x.reshape((b, l, self.heads, self.head_dim))?.transpose(1, 2)?.contiguous()
    }

    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let out = sdpa(q, k, v, 1.0 / (self.head_dim as f64).sqrt())?;
        let (b, _, l, _) = out.dims4()?;
        out.transpose(1, 2)?.reshape((b, l, self.heads * self.head_dim))
    }

    /// Self-attention with RoPE (cos/sin [L, head_dim/2] f32).
    ///
    /// Shapes: x [B, L, dim] -> [B, L, dim].
    pub fn forward_self(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let q = self.norm_q.forward(&self.to_q.forward(x)?)?;
        let k = self.norm_k.forward(&self.to_k.forward(x)?)?;
        let v = self.to_v.forward(x)?;
        let q = apply_rope(&self.split_heads(&q)?, cos, sin)?;
        let k = apply_rope(&self.split_heads(&k)?, cos, sin)?;
        let out = self.attend(&q, &k, &self.split_heads(&v)?)?;
        self.to_out.forward(&out)
    }

    /// Cross-attention over text tokens, plus a separate attention over image tokens (I2V) whose
    /// output is summed in before `to_out`.
    ///
    /// Shapes: x [B, L, dim], text [B, L_txt, dim], image [B, L_img, dim] -> [B, L, dim].
    pub fn forward_cross(&self, x: &Tensor, text: &Tensor, image: Option<&Tensor>) -> Result<Tensor> {
        let q = self.split_heads(&self.norm_q.forward(&self.to_q.forward(x)?)?)?;
        let k = self.split_heads(&self.norm_k.forward(&self.to_k.forward(text)?)?)?;
        let v = self.split_heads(&self.to_v.forward(text)?)?;
        let mut out = self.attend(&q, &k, &v)?;
        match (&self.added_kv, image) {
            (Some(added), Some(image)) => {
                let k_img = added.norm_added_k.forward(&added.add_k_proj.forward(image)?)?;
                let v_img = added.add_v_proj.forward(image)?;
                let img = self.attend(&q, &self.split_heads(&k_img)?, &self.split_heads(&v_img)?)?;
                out = (out + img)?;
            }
            (None, None) => {}
            (Some(_), None) => candle_core::bail!("attention: this I2V model needs image tokens"),
            (None, Some(_)) => candle_core::bail!("attention: image tokens given to a model without image cross-attention"),
        }
        self.to_out.forward(&out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, D};

    fn naive(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
        let s = (q.matmul(&k.t()?)? * scale)?;
        let m = s.max_keepdim(D::Minus1)?;
        let e = s.broadcast_sub(&m)?.exp()?;
        let p = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?;
        p.matmul(v)
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
    }

    #[test]
    fn blocked_equals_plain() -> Result<()> {
        let dev = Device::Cpu;
        let q = (Tensor::randn(0f32, 1., (2, 3, 37, 16), &dev)? * 2.0)?;
        let k = (Tensor::randn(0f32, 1., (2, 3, 29, 16), &dev)? * 2.0)?;
        let v = Tensor::randn(0f32, 1., (2, 3, 29, 8), &dev)?;
        let scale = 0.25;
        let want = naive(&q, &k, &v, scale)?;
        let plain = sdpa_blocked(&q, &k, &v, scale, usize::MAX)?;
        assert!(max_abs_diff(&plain, &want)? < 1e-5);
        for rows in [1, 5, 16, 36, 37] {
            let got = sdpa_blocked(&q, &k, &v, scale, rows)?;
            assert_eq!(got.dims(), &[2, 3, 37, 8]);
            let err = max_abs_diff(&got, &plain)?;
            assert!(err < 1e-5, "block {rows}: max abs error {err}");
        }
        let auto = sdpa(&q, &k, &v, scale)?;
        assert!(max_abs_diff(&auto, &plain)? < 1e-5);
        Ok(())
    }

    #[test]
    fn bf16_inputs_give_bf16_output() -> Result<()> {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1., (1, 2, 9, 8), &dev)?;
        let k = Tensor::randn(0f32, 1., (1, 2, 7, 8), &dev)?;
        let v = Tensor::randn(0f32, 1., (1, 2, 7, 8), &dev)?;
        let want = sdpa(&q, &k, &v, 0.3)?;
        let (qb, kb, vb) = (q.to_dtype(DType::BF16)?, k.to_dtype(DType::BF16)?, v.to_dtype(DType::BF16)?);
        let got = sdpa_blocked(&qb, &kb, &vb, 0.3, 4)?;
        assert_eq!(got.dtype(), DType::BF16);
        assert!(max_abs_diff(&got.to_dtype(DType::F32)?, &want)? < 0.05);
        Ok(())
    }

    #[test]
    fn shape_mismatch_is_an_error() -> Result<()> {
        let dev = Device::Cpu;
        let q = Tensor::zeros((1, 2, 4, 8), DType::F32, &dev)?;
        let k = Tensor::zeros((1, 2, 5, 8), DType::F32, &dev)?;
        let v = Tensor::zeros((1, 2, 6, 8), DType::F32, &dev)?;
        assert!(sdpa(&q, &k, &v, 1.0).is_err());
        Ok(())
    }
}
