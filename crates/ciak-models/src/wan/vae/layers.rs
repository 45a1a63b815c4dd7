//! Building blocks of the Wan2.1 VAE (diffusers `autoencoder_kl_wan.py`).
//!
//! Inside the VAE one sample is stored frame-major, `(T, C, H, W)`: per-frame 2-D ops then see
//! one contiguous batch, a time slice is a contiguous `narrow`, and the upsample3d interleave is
//! a plain reshape.

use super::im2col::{im2col, Kernel};
use crate::wan::ops;
use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::VarBuilder;

/// Frames of each causal conv's input kept between chunks (diffusers `CACHE_T`).
pub const CACHE_T: usize = 2;

/// State of one feature-cache slot (diffusers `feat_cache[idx]`).
#[derive(Debug, Clone, Default)]
pub enum Slot {
    /// Nothing seen yet (`None`).
    #[default]
    Empty,
    /// upsample3d after its first chunk: the next chunk's time_conv sees zero history (`"Rep"`).
    Rep,
    /// Trailing input frames, `(t <= CACHE_T, C, H, W)`.
    Frames(Tensor),
}

/// Per-conv feature cache of one encode or decode pass; slot indices are fixed at build time.
#[derive(Debug, Clone)]
pub struct FeatCache {
    slots: Vec<Slot>,
}

impl FeatCache {
    pub fn new(num_slots: usize) -> Self {
        Self { slots: vec![Slot::Empty; num_slots] }
    }

    fn frames(&self, slot: usize) -> Option<&Tensor> {
        match &self.slots[slot] {
            Slot::Frames(t) => Some(t),
            _ => None,
        }
    }
}

/// Hands out cache slot indices while a model is built, in diffusers' call order.
#[derive(Debug, Default)]
pub struct SlotCounter(usize);

impl SlotCounter {
    pub fn take(&mut self) -> usize {
        self.0 += 1;
        self.0 - 1
    }

    pub fn count(&self) -> usize {
        self.0
    }
}

/// Last `CACHE_T` frames of `prev ++ x`, copied so the cache does not pin the whole chunk.
fn trailing_frames(prev: Option<&Tensor>, x: &Tensor) -> Result<Tensor> {
    let t = x.dim(0)?;
    if t >= CACHE_T {
        return x.narrow(0, t - CACHE_T, CACHE_T)?.copy();
    }
    match prev {
        Some(p) => {
            let need = (CACHE_T - t).min(p.dim(0)?);
            let p = p.narrow(0, p.dim(0)? - need, need)?;
            Tensor::cat(&[&p, x], 0)
        }
        None => x.copy(),
    }
}

/// 2-D convolution with bias on `(N, C, H, W)`, symmetric padding.
#[derive(Debug, Clone)]
pub struct Conv2d {
    /// `(C_out, C_in, k, k)`; only the strided (downsampling) path uses it in this form.
    weight: Tensor,
    /// `(C_out, C_in*k*k)`, the GEMM form.
    weight_2d: Tensor,
    bias: Tensor,
    k: usize,
    padding: usize,
    stride: usize,
}

impl Conv2d {
    pub fn new(in_c: usize, out_c: usize, k: usize, padding: usize, stride: usize, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get((out_c, in_c, k, k), "weight")?;
        let weight_2d = weight.reshape((out_c, in_c * k * k))?;
        let bias = vb.get(out_c, "bias")?.reshape((1, out_c, 1, 1))?;
        Ok(Self { weight, weight_2d, bias, k, padding, stride })
    }
}

impl Module for Conv2d {
    /// Shapes: x (N, C_in, H, W) -> (N, C_out, H', W').
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.stride == 1 {
            conv_gemm(x, &self.weight_2d, &self.bias, 1, 1, self.k, self.padding)
        } else {
            x.conv2d(&self.weight, self.padding, self.stride, 1, 1)?.broadcast_add(&self.bias)
        }
    }
}

/// Upper bound on the im2col buffer of one GEMM; larger convs run in bands of output rows.
/// Bands that stay in cache win: a base_dim 8 decode to 25x128x224 took ~0.8 s CPU with 2 MiB,
/// ~1.05 s with 256 KiB (per-band overhead) and ~2.2-2.5 s with 16 MiB (cache misses).
const COL_BUDGET_BYTES: usize = 2 << 20;

/// The same bound on a GPU, where a band costs a few kernel launches whatever its size and the
/// cache is not the limit: 2 MiB bands made the built-in 4x VAE encode a clip in ~120 ms on an
/// H200 (hundreds of tiny GEMMs per conv), batching clips gained nothing. 256 MiB keeps a
/// 224x128 frame in one band and bounds a 480x832 Wan decode's buffers.
const GPU_COL_BUDGET_BYTES: usize = 256 << 20;

fn col_budget(device: &candle_core::Device) -> usize {
    if device.is_cpu() {
        COL_BUDGET_BYTES
    } else {
        GPU_COL_BUDGET_BYTES
    }
}

/// Convolution as im2col + GEMM: stride 1 in space, `stride_t` in time, no time padding
/// (callers pad), symmetric spatial padding `pad`.
///
/// The spatially padded frames are flattened to rows of `(H+2p+1)*(W+2p)` values; the window of
/// tap (dy, dx) is then the contiguous range starting at `dy*Wp + dx`, so the spatial im2col
/// matrix of each input frame is one memcpy per (channel, tap) instead of a per-pixel gather.
/// It is built once per input frame; the kt frames an output frame needs are then a contiguous
/// (kt*C*k*k, len) block used in place, so time taps cost no extra copies. Outputs are computed on
/// the padded width and the `2p` extra columns dropped. Large frames run in bands of rows.
///
/// Shapes: seq (T_in, C, H, W), weight (C_out, kt*C*k*k) in (t, c, y, x) order
/// -> (T_out, C_out, H+2p-k+1, W+2p-k+1), T_out = (T_in - kt) / stride_t + 1.
fn conv_gemm(
    seq: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    kt: usize,
    stride_t: usize,
    k: usize,
    pad: usize,
) -> Result<Tensor> {
    if ops::use_cpu_autograd(&[seq, weight, bias]) {
        return conv_gemm_autograd(seq, weight, bias, Kernel { kt, stride_t, k, pad });
    }
    let (t_in, c, h, w) = seq.dims4()?;
    let c_out = weight.dim(0)?;
    let t_out = (t_in - kt) / stride_t + 1;
    let (h_out, w_out) = (h + 2 * pad + 1 - k, w + 2 * pad + 1 - k);
    // One spare zero row at the bottom keeps the last tap's flat range inside the buffer.
    let extra = usize::from(k > 1);
    let x = if pad > 0 || extra > 0 {
        seq.pad_with_zeros(3, pad, pad)?.pad_with_zeros(2, pad, pad + extra)?
    } else {
        seq.clone()
    };
    let (hp, wp) = (h + 2 * pad + extra, w + 2 * pad);
    let flat = x.reshape((t_in, c, hp * wp))?;
    let kk9 = c * k * k;
    let bytes_per_row = t_in * kk9 * wp * seq.dtype().size_in_bytes();
    let band = (col_budget(seq.device()) / bytes_per_row.max(1)).clamp(1, h_out);
    let band_rows = |r0: usize| -> Result<Tensor> {
        let rows = band.min(h_out - r0);
        let len = rows * wp;
        let col = if k == 1 {
            flat.narrow(2, r0 * wp, len)?.contiguous()?
        } else {
            let mut taps = Vec::with_capacity(k * k);
            for dy in 0..k {
                for dx in 0..k {
                    taps.push(flat.narrow(2, (r0 + dy) * wp + dx, len)?.unsqueeze(2)?);
                }
            }
            // (T_in, C, k*k, len): copy2d-compatible, one memcpy per (frame, channel, tap).
            Tensor::cat(&taps, 2)?.reshape((t_in, kk9, len))?
        };
        let y = if kt == 1 && stride_t == 1 {
            weight.broadcast_as((t_out, c_out, kk9))?.matmul(&col)?
        } else {
            // Frames t*s .. t*s+kt-1 of `col` are one contiguous (kt*C*k*k, len) matrix.
            let ys = (0..t_out)
                .map(|t| weight.matmul(&col.narrow(0, t * stride_t, kt)?.reshape((kt * kk9, len))?))
                .collect::<Result<Vec<_>>>()?;
            Tensor::stack(&ys, 0)?
        };
        let y = y.reshape((t_out, c_out, rows, wp))?;
        let y = if wp != w_out { y.narrow(3, 0, w_out)? } else { y };
        y.broadcast_add(bias)
    };
    // Bands are independent: on the CPU they run side by side, each GEMM small enough that
    // splitting it across threads cost more than it gained (the default clip's decode took
    // 1.3 s on one thread and 1.7-2.0 s on two).
    let starts: Vec<usize> = (0..h_out).step_by(band).collect();
    let outs = if seq.device().is_cpu() && starts.len() > 1 {
        use rayon::prelude::*;
        starts.into_par_iter().map(band_rows).collect::<Result<Vec<_>>>()?
    } else {
        starts.into_iter().map(band_rows).collect::<Result<Vec<_>>>()?
    };
    Tensor::cat(&outs, 2)
}

/// [`conv_gemm`] when training on the CPU in f32: the im2col matrices of all output frames, time
/// taps included, are one [`im2col`] op whose backward is a single col2im (instead of a
/// zero-padded copy and an add per tap, per band and per output frame), and the conv is one
/// batched GEMM over the output frames. The same result as the banded path, at the memory of
/// `kt` copies of each frame's matrix, which the backward pass needs anyway.
fn conv_gemm_autograd(seq: &Tensor, weight: &Tensor, bias: &Tensor, kernel: Kernel) -> Result<Tensor> {
    let (_, _, h, w) = seq.dims4()?;
    let (k, pad) = (kernel.k, kernel.pad);
    let col = im2col(seq, kernel)?;
    let (t_out, rows, _) = col.dims3()?;
    let c_out = weight.dim(0)?;
    let y = ops::broadcast_as(weight, &[t_out, c_out, rows])?.matmul(&col)?;
    ops::broadcast_add(&y.reshape((t_out, c_out, h + 2 * pad + 1 - k, w + 2 * pad + 1 - k))?, bias)
}

/// `WanCausalConv3d`: Conv3d whose time padding (2*p_t) is all in front, spatial padding symmetric.
/// candle has no conv3d; [`conv_gemm`] folds the time taps into the im2col matrix.
#[derive(Debug, Clone)]
pub struct CausalConv3d {
    /// `(C_out, kt*C_in*k*k)`: the checkpoint tensor with time taps outermost.
    weight: Tensor,
    bias: Tensor,
    kt: usize,
    k: usize,
    stride_t: usize,
    pad_front: usize,
    pad_s: usize,
}

impl CausalConv3d {
    /// `kernel` = (kt, k) with a kxk spatial kernel, `padding` = (p_t, p_s) as in nn.Conv3d.
    pub fn new(
        in_c: usize,
        out_c: usize,
        kernel: (usize, usize),
        stride_t: usize,
        padding: (usize, usize),
        vb: VarBuilder,
    ) -> Result<Self> {
        let (kt, k) = kernel;
        let w = vb.get((out_c, in_c, kt, k, k), "weight")?;
        let weight = w.permute((0, 2, 1, 3, 4))?.reshape((out_c, kt * in_c * k * k))?;
        let bias = vb.get(out_c, "bias")?.reshape((1, out_c, 1, 1))?;
        Ok(Self { weight, bias, kt, k, stride_t, pad_front: 2 * padding.0, pad_s: padding.1 })
    }

    /// Shapes: x (T, C_in, H, W), cache (t_c <= 2, C_in, H, W) -> (T_out, C_out, H, W).
    ///
    /// `cache` holds the frames before `x` (diffusers `cache_x`); it replaces that many of the
    /// zero frames in front and is ignored by a conv without time padding, as in diffusers.
    pub fn forward(&self, x: &Tensor, cache: Option<&Tensor>) -> Result<Tensor> {
        let (_, c, h, w) = x.dims4()?;
        let mut parts: Vec<Tensor> = Vec::with_capacity(3);
        let mut front = self.pad_front;
        let cache = cache.filter(|_| self.pad_front > 0);
        if let Some(cache) = cache {
            let n = cache.dim(0)?;
            if n > front {
                candle_core::bail!("causal conv cache has {n} frames, at most {front} allowed");
            }
            front -= n;
        }
        if front > 0 {
            parts.push(Tensor::zeros((front, c, h, w), x.dtype(), x.device())?);
        }
        if let Some(cache) = cache {
            parts.push(cache.clone());
        }
        parts.push(x.clone());
        let seq = if parts.len() == 1 { x.clone() } else { Tensor::cat(&parts, 0)? };
        let len = seq.dim(0)?;
        if len < self.kt {
            candle_core::bail!("causal conv needs at least {} frames, got {len}", self.kt);
        }
        conv_gemm(&seq, &self.weight, &self.bias, self.kt, self.stride_t, self.k, self.pad_s)
    }

    /// Runs the conv on `x` with the cache in `slot`, then stores the new trailing frames there.
    pub fn forward_cached(&self, x: &Tensor, cache: &mut FeatCache, slot: usize) -> Result<Tensor> {
        let prev = cache.frames(slot);
        let next = trailing_frames(prev, x)?;
        let y = self.forward(x, prev)?;
        cache.slots[slot] = Slot::Frames(next);
        Ok(y)
    }
}

/// `WanRMS_norm`: `F.normalize(x, dim=channels) * sqrt(C) * gamma`, computed in f32.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    /// `sqrt(C) * gamma` as `(1, C, 1, 1)` f32.
    scale: Tensor,
}

impl RmsNorm {
    /// `images` selects the checkpoint gamma shape: (C,1,1) for 2-D use, (C,1,1,1) for 3-D.
    pub fn new(c: usize, images: bool, vb: VarBuilder) -> Result<Self> {
        let gamma = if images { vb.get((c, 1, 1), "gamma")? } else { vb.get((c, 1, 1, 1), "gamma")? };
        let scale = (gamma.to_dtype(DType::F32)?.reshape((1, c, 1, 1))? * (c as f64).sqrt())?;
        Ok(Self { scale })
    }
}

impl Module for RmsNorm {
    /// Shapes: x (N, C, H, W) -> (N, C, H, W).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let xf = x.to_dtype(DType::F32)?;
        // F.normalize: divide by max(||x||_2, 1e-12), no eps inside the sqrt.
        let norm = channel_sum(&xf.sqr()?)?.sqrt()?.maximum(1e-12)?;
        xf.broadcast_div(&norm)?.broadcast_mul(&self.scale)?.to_dtype(dtype)
    }
}

/// Sum over dim 1 of (N, C, H, W), keeping the dim. candle's CPU reduction over a middle dim
/// does a divmod per element; as a (1xC) @ (CxHW) matmul it is ~10x faster on large frames.
fn channel_sum(x: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    if n * h * w < 4096 || !x.is_contiguous() {
        return x.sum_keepdim(1);
    }
    let ones = Tensor::ones((1, 1, c), x.dtype(), x.device())?.broadcast_as((n, 1, c))?;
    ones.matmul(&x.reshape((n, c, h * w))?)?.reshape((n, 1, h, w))
}

/// `WanResidualBlock`: two RMS-norm/SiLU/causal-conv stages plus a (1x1x1 conv) shortcut.
#[derive(Debug, Clone)]
pub struct ResidualBlock {
    norm1: RmsNorm,
    conv1: CausalConv3d,
    norm2: RmsNorm,
    conv2: CausalConv3d,
    conv_shortcut: Option<CausalConv3d>,
    slot1: usize,
    slot2: usize,
}

impl ResidualBlock {
    pub fn new(in_c: usize, out_c: usize, slots: &mut SlotCounter, vb: VarBuilder) -> Result<Self> {
        let norm1 = RmsNorm::new(in_c, false, vb.pp("norm1"))?;
        let conv1 = CausalConv3d::new(in_c, out_c, (3, 3), 1, (1, 1), vb.pp("conv1"))?;
        let norm2 = RmsNorm::new(out_c, false, vb.pp("norm2"))?;
        let conv2 = CausalConv3d::new(out_c, out_c, (3, 3), 1, (1, 1), vb.pp("conv2"))?;
        let conv_shortcut = if in_c != out_c {
            Some(CausalConv3d::new(in_c, out_c, (1, 1), 1, (0, 0), vb.pp("conv_shortcut"))?)
        } else {
            None
        };
        Ok(Self { norm1, conv1, norm2, conv2, conv_shortcut, slot1: slots.take(), slot2: slots.take() })
    }

    /// Shapes: x (T, C_in, H, W) -> (T, C_out, H, W).
    pub fn forward(&self, x: &Tensor, cache: &mut FeatCache) -> Result<Tensor> {
        let h = match &self.conv_shortcut {
            Some(conv) => conv.forward(x, None)?,
            None => x.clone(),
        };
        let y = self.norm1.forward(x)?.silu()?;
        let y = self.conv1.forward_cached(&y, cache, self.slot1)?;
        let y = self.norm2.forward(&y)?.silu()?;
        let y = self.conv2.forward_cached(&y, cache, self.slot2)?;
        y + h
    }
}

/// `WanAttentionBlock`: single-head self-attention over the pixels of each frame.
#[derive(Debug, Clone)]
pub struct AttentionBlock {
    norm: RmsNorm,
    to_qkv: Conv2d,
    proj: Conv2d,
    dim: usize,
}

impl AttentionBlock {
    pub fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm: RmsNorm::new(dim, true, vb.pp("norm"))?,
            to_qkv: Conv2d::new(dim, 3 * dim, 1, 0, 1, vb.pp("to_qkv"))?,
            proj: Conv2d::new(dim, dim, 1, 0, 1, vb.pp("proj"))?,
            dim,
        })
    }

    /// Shapes: x (T, C, H, W) -> (T, C, H, W).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (t, c, h, w) = x.dims4()?;
        let qkv = self.to_qkv.forward(&self.norm.forward(x)?)?.reshape((t, 3 * c, h * w))?;
        // Channel-first views: q, k, v are (T, C, HW); channels [0:C] q, [C:2C] k, [2C:3C] v.
        let q = qkv.narrow(1, 0, c)?;
        let k = qkv.narrow(1, c, c)?;
        let v = qkv.narrow(1, 2 * c, c)?;
        let scores = (q.transpose(1, 2)?.matmul(&k)? * (1.0 / (self.dim as f64).sqrt()))?;
        let dtype = scores.dtype();
        let probs = crate::wan::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?.to_dtype(dtype)?;
        // out^T = v @ probs^T keeps the result channel-first.
        let out = v.matmul(&probs.t()?)?.reshape((t, c, h, w))?;
        self.proj.forward(&out)? + x
    }
}

/// Resampling mode of `WanResample`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResampleMode {
    Upsample2d,
    Upsample3d,
    Downsample2d,
    Downsample3d,
}

/// `WanResample`: per-frame 2x spatial up/down sampling, with a causal time conv for the 3d modes.
#[derive(Debug, Clone)]
pub struct Resample {
    mode: ResampleMode,
    /// diffusers `resample.1` (index 0 is the parameter-free upsample or zero pad).
    resample: Conv2d,
    time_conv: Option<CausalConv3d>,
    slot: usize,
}

impl Resample {
    /// Wan2.1: upsampling halves the channels (`upsample_out_dim = dim / 2`).
    pub fn new(dim: usize, mode: ResampleMode, slots: &mut SlotCounter, vb: VarBuilder) -> Result<Self> {
        let rvb = vb.pp("resample").pp("1");
        let (resample, time_conv) = match mode {
            ResampleMode::Upsample2d => (Conv2d::new(dim, dim / 2, 3, 1, 1, rvb)?, None),
            ResampleMode::Upsample3d => (
                Conv2d::new(dim, dim / 2, 3, 1, 1, rvb)?,
                Some(CausalConv3d::new(dim, 2 * dim, (3, 1), 1, (1, 0), vb.pp("time_conv"))?),
            ),
            ResampleMode::Downsample2d => (Conv2d::new(dim, dim, 3, 0, 2, rvb)?, None),
            ResampleMode::Downsample3d => (
                Conv2d::new(dim, dim, 3, 0, 2, rvb)?,
                Some(CausalConv3d::new(dim, dim, (3, 1), 2, (0, 0), vb.pp("time_conv"))?),
            ),
        };
        let slot = if time_conv.is_some() { slots.take() } else { usize::MAX };
        Ok(Self { mode, resample, time_conv, slot })
    }

    /// Shapes: x (T, C, H, W) -> upsample2d (T, C/2, 2H, 2W), upsample3d (T', C/2, 2H, 2W) with
    /// T' = T on the first chunk and 2T afterwards, downsample2d (T, C, H/2, W/2), downsample3d
    /// (T', C, H/2, W/2) with T' = T on the first chunk, else (T+1-3)/2+1.
    pub fn forward(&self, x: &Tensor, cache: &mut FeatCache) -> Result<Tensor> {
        match self.mode {
            ResampleMode::Upsample2d | ResampleMode::Upsample3d => {
                let x = if self.mode == ResampleMode::Upsample3d { self.time_upsample(x, cache)? } else { x.clone() };
                let (_, _, h, w) = x.dims4()?;
                // nearest-exact at an integer factor of 2 is plain nearest.
                let up = x.upsample_nearest2d(2 * h, 2 * w)?;
                self.resample.forward(&up)
            }
            ResampleMode::Downsample2d | ResampleMode::Downsample3d => {
                // ZeroPad2d((0, 1, 0, 1)): one zero column right, one zero row bottom.
                let padded = x.pad_with_zeros(D::Minus1, 0, 1)?.pad_with_zeros(D::Minus2, 0, 1)?;
                let y = self.resample.forward(&padded)?;
                if self.mode == ResampleMode::Downsample3d {
                    self.time_downsample(&y, cache)
                } else {
                    Ok(y)
                }
            }
        }
    }

    fn time_upsample(&self, x: &Tensor, cache: &mut FeatCache) -> Result<Tensor> {
        let time_conv = self.time_conv.as_ref().expect("upsample3d has a time_conv");
        let (t, c, h, w) = x.dims4()?;
        let y = match std::mem::take(&mut cache.slots[self.slot]) {
            Slot::Empty => {
                // First chunk: the frame passes through untouched and the slot turns "Rep".
                cache.slots[self.slot] = Slot::Rep;
                return Ok(x.clone());
            }
            Slot::Rep => {
                let zero = Tensor::zeros((1, c, h, w), x.dtype(), x.device())?;
                cache.slots[self.slot] = Slot::Frames(trailing_frames(Some(&zero), x)?);
                time_conv.forward(x, None)?
            }
            Slot::Frames(prev) => {
                cache.slots[self.slot] = Slot::Frames(trailing_frames(Some(&prev), x)?);
                time_conv.forward(x, Some(&prev))?
            }
        };
        // (T, 2C, H, W): channels [0:C] are the earlier frame of each pair, [C:2C] the later.
        y.reshape((2 * t, c, h, w))
    }

    fn time_downsample(&self, x: &Tensor, cache: &mut FeatCache) -> Result<Tensor> {
        let time_conv = self.time_conv.as_ref().expect("downsample3d has a time_conv");
        let t = x.dim(0)?;
        let last = x.narrow(0, t - 1, 1)?.copy()?;
        match std::mem::replace(&mut cache.slots[self.slot], Slot::Frames(last)) {
            // First chunk: no time conv; only the last frame is needed later.
            Slot::Empty | Slot::Rep => Ok(x.clone()),
            Slot::Frames(prev) => {
                let n = prev.dim(0)?;
                let seq = Tensor::cat(&[&prev.narrow(0, n - 1, 1)?, x], 0)?;
                time_conv.forward(&seq, None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, IndexOp};
    use std::collections::HashMap;

    fn randn(shape: &[usize], seed: u64) -> Tensor {
        // Deterministic pseudo-random values in [-1, 1] without depending on candle's RNG.
        let n: usize = shape.iter().product();
        let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15).wrapping_add(1);
        let v: Vec<f32> = (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn vb_from(map: HashMap<String, Tensor>) -> VarBuilder<'static> {
        VarBuilder::from_tensors(map, DType::F32, &Device::Cpu)
    }

    /// Textbook Conv3d on (C, T, H, W) with zero padding (pt_front, 0) in time, ps in space.
    fn naive_conv3d(x: &Tensor, w: &Tensor, b: &Tensor, stride_t: usize, pt_front: usize, ps: usize) -> Vec<f32> {
        let (ci, t, h, wd) = x.dims4().unwrap();
        let (co, _, kt, kh, kw) = w.dims5().unwrap();
        let xv: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        let wv: Vec<f32> = w.flatten_all().unwrap().to_vec1().unwrap();
        let bv: Vec<f32> = b.to_vec1().unwrap();
        let tp = t + pt_front;
        let t_out = (tp - kt) / stride_t + 1;
        let (h_out, w_out) = (h + 2 * ps - kh + 1, wd + 2 * ps - kw + 1);
        let mut out = vec![0f32; co * t_out * h_out * w_out];
        for o in 0..co {
            for to in 0..t_out {
                for yo in 0..h_out {
                    for xo in 0..w_out {
                        let mut acc = bv[o] as f64;
                        for c in 0..ci {
                            for a in 0..kt {
                                let ti = (to * stride_t + a) as isize - pt_front as isize;
                                if ti < 0 {
                                    continue;
                                }
                                for dy in 0..kh {
                                    let yi = (yo + dy) as isize - ps as isize;
                                    if yi < 0 || yi >= h as isize {
                                        continue;
                                    }
                                    for dx in 0..kw {
                                        let xi = (xo + dx) as isize - ps as isize;
                                        if xi < 0 || xi >= wd as isize {
                                            continue;
                                        }
                                        let xidx = ((c * t + ti as usize) * h + yi as usize) * wd + xi as usize;
                                        let widx = (((o * ci + c) * kt + a) * kh + dy) * kw + dx;
                                        acc += xv[xidx] as f64 * wv[widx] as f64;
                                    }
                                }
                            }
                        }
                        out[((o * t_out + to) * h_out + yo) * w_out + xo] = acc as f32;
                    }
                }
            }
        }
        out
    }

    fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    fn to_frame_major(x: &Tensor) -> Tensor {
        x.permute((1, 0, 2, 3)).unwrap().contiguous().unwrap()
    }

    #[allow(clippy::too_many_arguments)]
    fn conv_case(
        ci: usize,
        co: usize,
        kt: usize,
        k: usize,
        stride_t: usize,
        pt: usize,
        ps: usize,
        t: usize,
        hw: (usize, usize),
    ) {
        let w = randn(&[co, ci, kt, k, k], 1);
        let b = randn(&[co], 2);
        let x = randn(&[ci, t, hw.0, hw.1], 3);
        let mut map = HashMap::new();
        map.insert("weight".to_string(), w.clone());
        map.insert("bias".to_string(), b.clone());
        let conv = CausalConv3d::new(ci, co, (kt, k), stride_t, (pt, ps), vb_from(map)).unwrap();
        let got = conv.forward(&to_frame_major(&x), None).unwrap();
        let got = got.permute((1, 0, 2, 3)).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let want = naive_conv3d(&x, &w, &b, stride_t, 2 * pt, ps);
        let err = max_abs_diff(&got, &want);
        assert!(err < 1e-4, "conv3d k=({kt},{k}) stride_t={stride_t}: max err {err}");
    }

    #[test]
    fn causal_conv3d_matches_naive_conv3d() {
        conv_case(4, 5, 3, 3, 1, 1, 1, 5, (6, 7)); // resnet conv
        conv_case(4, 8, 3, 1, 1, 1, 0, 4, (6, 7)); // upsample3d time_conv
        conv_case(4, 4, 3, 1, 2, 0, 0, 5, (6, 7)); // downsample3d time_conv
        conv_case(3, 6, 1, 1, 1, 0, 0, 3, (6, 7)); // shortcut / quant conv

        // im2col of (3 + 2 pad) frames x 16 ch x 9 taps x 42 x 40 floats exceeds the budget: row bands.
        const { assert!(5 * 16 * 9 * 42 * 40 * 4 > 2 * COL_BUDGET_BYTES) };
        conv_case(16, 8, 3, 3, 1, 1, 1, 3, (40, 40));
        // 1x1 time convs in bands: (4 + 2) and 5 frames x 64 ch x 64 x 64 floats.
        const { assert!(5 * 64 * 64 * 64 * 4 > 2 * COL_BUDGET_BYTES) };
        conv_case(64, 8, 3, 1, 1, 1, 0, 4, (64, 64));
        conv_case(64, 8, 3, 1, 2, 0, 0, 5, (64, 64));
    }

    #[test]
    fn causal_conv3d_cache_equals_one_shot() {
        let (ci, co) = (3, 4);
        let mut map = HashMap::new();
        map.insert("weight".to_string(), randn(&[co, ci, 3, 3, 3], 4));
        map.insert("bias".to_string(), randn(&[co], 5));
        let conv = CausalConv3d::new(ci, co, (3, 3), 1, (1, 1), vb_from(map)).unwrap();
        let x = randn(&[9, ci, 5, 5], 6);
        let whole = conv.forward(&x, None).unwrap();
        // Chunks 1, 4, 4 and 1, 1, 1, ... exercise both cache rules (>=2 frames and prepend).
        for sizes in [vec![1, 4, 4], vec![1; 9], vec![2, 1, 3, 3]] {
            let mut cache = FeatCache::new(1);
            let mut outs = vec![];
            let mut at = 0;
            for n in sizes {
                outs.push(conv.forward_cached(&x.narrow(0, at, n).unwrap(), &mut cache, 0).unwrap());
                at += n;
            }
            let chunked = Tensor::cat(&outs, 0).unwrap();
            let err = (chunked - &whole).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(err < 1e-5, "chunked causal conv differs by {err}");
        }
    }

    #[test]
    fn rms_norm_matches_f_normalize() {
        let c = 5;
        let mut map = HashMap::new();
        let gamma = randn(&[c, 1, 1, 1], 7);
        map.insert("gamma".to_string(), gamma.clone());
        let norm = RmsNorm::new(c, false, vb_from(map)).unwrap();
        let x = randn(&[2, c, 3, 4], 8);
        let got = norm.forward(&x).unwrap();
        for f in 0..2 {
            for y in 0..3 {
                for xx in 0..4 {
                    let v: Vec<f32> = x.i((f, .., y, xx)).unwrap().to_vec1().unwrap();
                    let n = v.iter().map(|a| a * a).sum::<f32>().sqrt().max(1e-12);
                    for (ch, vc) in v.iter().enumerate() {
                        let g = gamma.i((ch, 0, 0, 0)).unwrap().to_scalar::<f32>().unwrap();
                        let want = vc / n * (c as f32).sqrt() * g;
                        let have = got.i((f, ch, y, xx)).unwrap().to_scalar::<f32>().unwrap();
                        assert!((want - have).abs() < 1e-5, "{want} vs {have}");
                    }
                }
            }
        }
        // An all-zero pixel stays zero (the 1e-12 clamp), it does not become NaN.
        let z = norm.forward(&Tensor::zeros((1, c, 1, 1), DType::F32, &Device::Cpu).unwrap()).unwrap();
        assert_eq!(z.flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![0.0; c]);
    }

    fn resample_weights(dim: usize, mode: ResampleMode) -> HashMap<String, Tensor> {
        let mut map = HashMap::new();
        let out = match mode {
            ResampleMode::Upsample2d | ResampleMode::Upsample3d => dim / 2,
            _ => dim,
        };
        map.insert("resample.1.weight".into(), randn(&[out, dim, 3, 3], 10));
        map.insert("resample.1.bias".into(), randn(&[out], 11));
        match mode {
            ResampleMode::Upsample3d => {
                map.insert("time_conv.weight".into(), randn(&[2 * dim, dim, 3, 1, 1], 12));
                map.insert("time_conv.bias".into(), randn(&[2 * dim], 13));
            }
            ResampleMode::Downsample3d => {
                map.insert("time_conv.weight".into(), randn(&[dim, dim, 3, 1, 1], 12));
                map.insert("time_conv.bias".into(), randn(&[dim], 13));
            }
            _ => {}
        }
        map
    }

    fn max_err(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
    }

    /// wan-facts 5.3: chunked downsample3d == `[f0] ++ conv_stride2_nopad([f0, f1, ..., fN])`.
    #[test]
    fn downsample3d_chunked_equals_one_shot() {
        let dim = 4;
        let map = resample_weights(dim, ResampleMode::Downsample3d);
        let vb = vb_from(map.clone());
        let mut slots = SlotCounter::default();
        let rs = Resample::new(dim, ResampleMode::Downsample3d, &mut slots, vb.clone()).unwrap();
        let x = randn(&[9, dim, 6, 6], 14);
        let mut cache = FeatCache::new(slots.count());
        let mut outs = vec![rs.forward(&x.narrow(0, 0, 1).unwrap(), &mut cache).unwrap()];
        outs.push(rs.forward(&x.narrow(0, 1, 4).unwrap(), &mut cache).unwrap());
        outs.push(rs.forward(&x.narrow(0, 5, 4).unwrap(), &mut cache).unwrap());
        let chunked = Tensor::cat(&outs, 0).unwrap();
        assert_eq!(chunked.dims(), &[5, dim, 3, 3]);

        // One shot: the 2-D part on all frames, then [f0] ++ time_conv(all frames).
        let conv2d = Conv2d::new(dim, dim, 3, 0, 2, vb.pp("resample").pp("1")).unwrap();
        let padded = x.pad_with_zeros(3, 0, 1).unwrap().pad_with_zeros(2, 0, 1).unwrap();
        let f = conv2d.forward(&padded).unwrap();
        let tc = CausalConv3d::new(dim, dim, (3, 1), 2, (0, 0), vb.pp("time_conv")).unwrap();
        let one_shot = Tensor::cat(&[f.narrow(0, 0, 1).unwrap(), tc.forward(&f, None).unwrap()], 0).unwrap();
        let err = max_err(&chunked, &one_shot);
        assert!(err < 1e-5, "downsample3d chunked vs one-shot: {err}");
    }

    /// wan-facts 5.3: chunked upsample3d == frame 0 untouched, frames 1.. through a causal
    /// time_conv with zero history, interleaved x2.
    #[test]
    fn upsample3d_chunked_equals_one_shot() {
        let dim = 4;
        let map = resample_weights(dim, ResampleMode::Upsample3d);
        let vb = vb_from(map);
        let mut slots = SlotCounter::default();
        let rs = Resample::new(dim, ResampleMode::Upsample3d, &mut slots, vb.clone()).unwrap();
        let x = randn(&[4, dim, 3, 3], 15);
        for chunk in [1usize, 3] {
            let mut cache = FeatCache::new(slots.count());
            let mut outs = vec![rs.forward(&x.narrow(0, 0, 1).unwrap(), &mut cache).unwrap()];
            let mut at = 1;
            while at < 4 {
                let n = chunk.min(4 - at);
                outs.push(rs.forward(&x.narrow(0, at, n).unwrap(), &mut cache).unwrap());
                at += n;
            }
            let chunked = Tensor::cat(&outs, 0).unwrap();
            assert_eq!(chunked.dims(), &[7, dim / 2, 6, 6]);

            let conv2d = Conv2d::new(dim, dim / 2, 3, 1, 1, vb.pp("resample").pp("1")).unwrap();
            let tc = CausalConv3d::new(dim, 2 * dim, (3, 1), 1, (1, 0), vb.pp("time_conv")).unwrap();
            let rest = tc.forward(&x.narrow(0, 1, 3).unwrap(), None).unwrap().reshape((6, dim, 3, 3)).unwrap();
            let frames = Tensor::cat(&[x.narrow(0, 0, 1).unwrap(), rest], 0).unwrap();
            let one_shot = conv2d.forward(&frames.upsample_nearest2d(6, 6).unwrap()).unwrap();
            let err = max_err(&chunked, &one_shot);
            assert!(err < 1e-5, "upsample3d chunked (chunk {chunk}) vs one-shot: {err}");
        }
    }

    #[test]
    fn attention_matches_reference() {
        let dim = 4;
        let mut map = HashMap::new();
        map.insert("norm.gamma".into(), randn(&[dim, 1, 1], 20));
        map.insert("to_qkv.weight".into(), randn(&[3 * dim, dim, 1, 1], 21));
        map.insert("to_qkv.bias".into(), randn(&[3 * dim], 22));
        map.insert("proj.weight".into(), randn(&[dim, dim, 1, 1], 23));
        map.insert("proj.bias".into(), randn(&[dim], 24));
        let vb = vb_from(map.clone());
        let attn = AttentionBlock::new(dim, vb.clone()).unwrap();
        let x = randn(&[2, dim, 3, 2], 25);
        let got = attn.forward(&x).unwrap();

        // Reference written the diffusers way: (T, HW, 3C) then chunk on the last dim.
        let norm = RmsNorm::new(dim, true, vb.pp("norm")).unwrap();
        let y = norm.forward(&x).unwrap();
        let wq = map["to_qkv.weight"].reshape((3 * dim, dim)).unwrap();
        let tokens = y.reshape((2, dim, 6)).unwrap().transpose(1, 2).unwrap(); // (T, HW, C)
        let qkv = tokens.broadcast_matmul(&wq.t().unwrap()).unwrap().broadcast_add(&map["to_qkv.bias"]).unwrap();
        let q = qkv.narrow(2, 0, dim).unwrap();
        let k = qkv.narrow(2, dim, dim).unwrap();
        let v = qkv.narrow(2, 2 * dim, dim).unwrap();
        let s = (q.matmul(&k.t().unwrap()).unwrap() / (dim as f64).sqrt()).unwrap();
        let o = candle_nn::ops::softmax_last_dim(&s).unwrap().matmul(&v).unwrap(); // (T, HW, C)
        let wp = map["proj.weight"].reshape((dim, dim)).unwrap();
        let p = o.broadcast_matmul(&wp.t().unwrap()).unwrap().broadcast_add(&map["proj.bias"]).unwrap();
        let want = (p.transpose(1, 2).unwrap().reshape((2, dim, 3, 2)).unwrap() + &x).unwrap();
        let err = max_err(&got, &want);
        assert!(err < 1e-5, "attention: {err}");
    }
}
