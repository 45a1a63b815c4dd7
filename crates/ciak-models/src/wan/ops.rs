//! Normalisation, softmax and rotary ops that work both for inference and for training.
//!
//! candle's fused kernels (`candle_nn::ops::{softmax_last_dim, rms_norm, layer_norm}` and
//! `candle_nn::rotary_emb::rope_i`) have no backward pass. Each function here picks one of three
//! paths:
//! - no input tracks gradients (inference on loaded weights): the fused kernel;
//! - training on the CPU in f32: a custom op that runs the same fused kernel forward and an
//!   analytic backward (a few large tensor ops instead of the graph of a composition);
//! - training elsewhere (CUDA, other dtypes): a composition of differentiable tensor ops.
//!
//! The CPU custom ops also cover GELU (candle's backward of it is a dozen ops with `powf`), whole
//! attention ([`sdpa_autograd`]: probabilities recomputed in the backward pass, blocks of query
//! rows, so memory stays O(L) per row block as in the forward), and broadcasts ([`Linear`]'s bias,
//! [`broadcast_mul`], [`broadcast_add`]) whose gradient candle sums with a strided reduction that
//! is 50-100x slower than the GEMM with a ones vector used here.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Device, Layout, Module, Result, Shape, Tensor, D};
use candle_nn::VarBuilder;

/// True when any of the tensors is a `Var` or was computed from one.
fn tracks(tensors: &[&Tensor]) -> bool {
    tensors.iter().any(|t| t.track_op())
}

/// Which implementation an op uses for these inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Fused,
    CpuAutograd,
    Composed,
}

fn path(tensors: &[&Tensor]) -> Path {
    if !tracks(tensors) {
        Path::Fused
    } else if tensors.iter().all(|t| t.device().is_cpu() && t.dtype() == DType::F32) {
        Path::CpuAutograd
    } else {
        Path::Composed
    }
}

/// True when [`sdpa_autograd`] applies: gradients are tracked and everything is f32 on the CPU.
pub fn use_cpu_autograd(tensors: &[&Tensor]) -> bool {
    path(tensors) == Path::CpuAutograd
}

/// A plain (untracked) tensor holding a contiguous f32 CPU storage, for the custom ops' forwards.
fn plain(storage: &CpuStorage, layout: &Layout) -> Result<Tensor> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("ciak custom op: expected an f32 input");
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Tensor::from_slice(&data[start..end], layout.shape(), &Device::Cpu),
        None => candle_core::bail!("ciak custom op: expected a contiguous input"),
    }
}

fn into_storage(t: &Tensor) -> Result<(CpuStorage, Shape)> {
    Ok((CpuStorage::F32(t.flatten_all()?.to_vec1::<f32>()?), t.shape().clone()))
}

/// Sums `t` [..., N] over every dimension but the last: [N].
fn sum_to_last(t: &Tensor) -> Result<Tensor> {
    let n = t.dim(D::Minus1)?;
    t.reshape(((), n))?.sum(0)
}

/// Softmax over the last dimension of f32 CPU tensors with a vectorized exp (candle's calls
/// libm's expf per element), rows split across candle's thread count.
struct SoftmaxOp;

/// Below this many elements one thread does the whole softmax.
const PARALLEL_MIN_ELEMENTS: usize = 1 << 18;

/// [`softmax_rows_portable`] compiled for AVX2 and FMA when the CPU has them (the release build
/// targets baseline x86-64, whose SSE2 vectors are half as wide; measured: the softmax was a
/// tenth of the default clip's time on a Zen 3 core). The same operations in the same order, so
/// the same bits either way.
fn softmax_rows(src: &[f32], dst: &mut [f32], n: usize) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports the features the function is compiled for (checked above).
        return unsafe { softmax_rows_avx2(src, dst, n) };
    }
    softmax_rows_portable(src, dst, n)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_rows_avx2(src: &[f32], dst: &mut [f32], n: usize) {
    softmax_rows_portable(src, dst, n)
}

#[inline(always)]
fn softmax_rows_portable(src: &[f32], dst: &mut [f32], n: usize) {
    const LANES: usize = 8;
    for (s, d) in src.chunks_exact(n).zip(dst.chunks_exact_mut(n)) {
        let mut lanes = [f32::NEG_INFINITY; LANES];
        let chunks = s.chunks_exact(LANES);
        let tail = chunks.remainder();
        for c in chunks {
            for (m, &x) in lanes.iter_mut().zip(c) {
                *m = m.max(x);
            }
        }
        let max = tail.iter().chain(&lanes).fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        for (y, &x) in d.iter_mut().zip(s) {
            let z = x - max;
            // exp_approx is only valid above -87.3; below that exp underflows to 0 anyway
            let e = exp_approx(z.max(-87.0));
            *y = if z < -87.0 { 0.0 } else { e };
        }
        let mut sums = [0f32; LANES];
        let chunks = d.chunks_exact(LANES);
        let tail: f32 = chunks.remainder().iter().sum();
        for c in chunks {
            for (acc, &y) in sums.iter_mut().zip(c) {
                *acc += y;
            }
        }
        let inv = 1.0 / (sums.iter().sum::<f32>() + tail);
        for y in d.iter_mut() {
            *y *= inv;
        }
    }
}

impl CustomOp1 for SoftmaxOp {
    fn name(&self) -> &'static str {
        "ciak-softmax-last-dim"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let src = contiguous_f32(s, l)?;
        let n = l.shape().dims().last().copied().unwrap_or(1).max(1);
        let mut dst = vec![0f32; src.len()];
        let threads = candle_core::utils::get_num_threads().max(1);
        let rows = src.len() / n;
        if threads == 1 || src.len() < PARALLEL_MIN_ELEMENTS || rows < threads {
            softmax_rows(src, &mut dst, n);
        } else {
            let per = rows.div_ceil(threads) * n;
            std::thread::scope(|scope| {
                for (s, d) in src.chunks(per).zip(dst.chunks_mut(per)) {
                    scope.spawn(move || softmax_rows(s, d, n));
                }
            });
        }
        Ok((CpuStorage::F32(dst), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let (y, g) = (y.detach(), g.detach());
        let dot = (&g * &y)?.sum_keepdim(D::Minus1)?;
        Ok(Some((g.broadcast_sub(&dot)? * y)?))
    }
}

/// The output `y` of a fused forward kernel run on a detached input, put back into the graph of
/// `x` with the analytic backward of `O`: how CUDA training uses candle's fused kernels, which
/// have no backward of their own. The forward only copies `y` (one pass over it).
struct Reattach<O>(O);

impl<O: CustomOp1> CustomOp2 for Reattach<O> {
    fn name(&self) -> &'static str {
        "ciak-reattach"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, y: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        Ok((y.try_clone(l)?, l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        y: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        Ok((y.try_clone(l)?, l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _: &Tensor, res: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((self.0.bwd(x, res, g)?, None))
    }
}

/// `y` (a fresh contiguous tensor computed from `x.detach()`) as the output of [`Reattach`].
fn reattach<O: CustomOp1 + Send + Sync + 'static>(x: &Tensor, y: &Tensor, op: O) -> Result<Tensor> {
    if !y.is_contiguous() || y.layout().start_offset() != 0 || y.dims() != x.dims() {
        candle_core::bail!("reattach: expected a fresh contiguous output of shape {:?}", x.shape());
    }
    x.apply_op2(y, Reattach(op))
}

struct RmsNormOp {
    eps: f32,
}

impl CustomOp2 for RmsNormOp {
    fn name(&self) -> &'static str {
        "ciak-rms-norm"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        into_storage(&candle_nn::ops::rms_norm(&plain(s1, l1)?, &plain(s2, l2)?, self.eps)?)
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _y: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (xd, wd, g) = (x.detach(), w.detach(), g.detach());
        let r = xd.sqr()?.mean_keepdim(D::Minus1)?.affine(1.0, self.eps as f64)?.sqrt()?.recip()?;
        let xhat = xd.broadcast_mul(&r)?;
        let dxhat = g.broadcast_mul(&wd)?;
        let proj = (&dxhat * &xhat)?.mean_keepdim(D::Minus1)?;
        let dx = (dxhat - xhat.broadcast_mul(&proj)?)?.broadcast_mul(&r)?;
        let dw = if w.track_op() { Some(sum_to_last(&(g * xhat)?)?) } else { None };
        Ok((Some(dx), dw))
    }
}

struct LayerNormOp {
    eps: f32,
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "ciak-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        into_storage(&candle_nn::ops::layer_norm(&plain(s1, l1)?, &plain(s2, l2)?, &plain(s3, l3)?, self.eps)?)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (xd, wd, g) = (x.detach(), w.detach(), g.detach());
        let centered = xd.broadcast_sub(&xd.mean_keepdim(D::Minus1)?)?;
        let r = centered.sqr()?.mean_keepdim(D::Minus1)?.affine(1.0, self.eps as f64)?.sqrt()?.recip()?;
        let xhat = centered.broadcast_mul(&r)?;
        let dxhat = g.broadcast_mul(&wd)?;
        let mean_d = dxhat.mean_keepdim(D::Minus1)?;
        let proj = (&dxhat * &xhat)?.mean_keepdim(D::Minus1)?;
        let dx = dxhat.broadcast_sub(&mean_d)?.sub(&xhat.broadcast_mul(&proj)?)?.broadcast_mul(&r)?;
        let dw = if w.track_op() { Some(sum_to_last(&(&g * xhat)?)?) } else { None };
        let db = if b.track_op() { Some(sum_to_last(&g)?) } else { None };
        Ok((Some(dx), dw, db))
    }
}

/// `sqrt(2/pi)`, and the cubic coefficient of the tanh GELU (candle's and PyTorch's constants).
const GELU_C: f32 = 0.797_884_6;
const GELU_A: f32 = 0.044_715;

/// `exp(x)` for |x| <= 80 to about 2e-7 relative: `2^n * e^r` with `|r| <= ln2/2` and a degree-7
/// Taylor polynomial, branch-free so loops over slices vectorize (libm's tanhf does not).
#[inline(always)]
fn exp_approx(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const MAGIC: f32 = 12_582_912.0;
    // adding 1.5 * 2^23 rounds to an integer held in the low mantissa bits (no float->int cast)
    let t = x * std::f32::consts::LOG2_E + MAGIC;
    let n = t - MAGIC;
    let n_bits = t.to_bits().wrapping_sub(MAGIC.to_bits());
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    p * f32::from_bits(n_bits.wrapping_add(127) << 23)
}

/// `tanh(u)` to about 2e-7 absolute (it saturates to +-1 in f32 beyond |u| = 9).
#[inline(always)]
fn tanh_approx(u: f32) -> f32 {
    let e = exp_approx(2.0 * u.clamp(-9.0, 9.0));
    (e - 1.0) / (e + 1.0)
}

#[inline(always)]
fn gelu_value(x: f32) -> f32 {
    0.5 * x * (1.0 + tanh_approx(GELU_C * x * (1.0 + GELU_A * x * x)))
}

#[inline(always)]
fn gelu_slope(x: f32) -> f32 {
    let t = tanh_approx(GELU_C * x * (1.0 + GELU_A * x * x));
    0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * GELU_C * (1.0 + 3.0 * GELU_A * x * x)
}

/// The values of a contiguous f32 CPU storage, as a custom op's `cpu_fwd` receives it.
pub(crate) fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(data), Some((start, end))) => Ok(&data[start..end]),
        _ => candle_core::bail!("ciak custom op: expected a contiguous f32 input"),
    }
}

/// tanh GELU on f32 CPU tensors, vectorized (candle's calls libm's tanhf per element).
struct GeluOp;

impl CustomOp1 for GeluOp {
    fn name(&self) -> &'static str {
        "ciak-gelu-tanh"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let out: Vec<f32> = contiguous_f32(s, l)?.iter().map(|&x| gelu_value(x)).collect();
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let g = g.detach().contiguous()?;
        Ok(Some(x.detach().apply_op2_no_bwd(&g, &GeluGradOp)?))
    }
}

/// `g * gelu'(x)` in one pass.
struct GeluGradOp;

impl CustomOp2 for GeluGradOp {
    fn name(&self) -> &'static str {
        "ciak-gelu-tanh-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, g) = (contiguous_f32(s1, l1)?, contiguous_f32(s2, l2)?);
        if x.len() != g.len() {
            candle_core::bail!("gelu grad: {} inputs, {} gradients", x.len(), g.len());
        }
        let out: Vec<f32> = x.iter().zip(g).map(|(&x, &g)| g * gelu_slope(x)).collect();
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Attention with an analytic backward; see [`sdpa_autograd`].
struct SdpaOp {
    scale: f64,
    block_rows: usize,
}

impl CustomOp3 for SdpaOp {
    fn name(&self) -> &'static str {
        "ciak-sdpa"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (q, k, v) = (plain(s1, l1)?, plain(s2, l2)?, plain(s3, l3)?);
        into_storage(&super::attention::sdpa_blocked(&q, &k, &v, self.scale, self.block_rows)?)
    }

    /// With P = softmax(s q k^T): dv = P^T g, dS = P * (g v^T - rowsum(g * out)),
    /// dq = s dS k, dk = s dS^T q; P is recomputed block by block.
    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        out: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (q, k, v, out, g) = (q.detach(), k.detach(), v.detach(), out.detach(), g.detach().contiguous()?);
        let l_q = q.dim(2)?;
        let qs = (q * self.scale)?;
        let kt = k.t()?;
        let vt = v.t()?;
        let delta = (&g * &out)?.sum_keepdim(D::Minus1)?;
        let mut dq = Vec::with_capacity(l_q.div_ceil(self.block_rows));
        let mut dk: Option<Tensor> = None;
        let mut dv: Option<Tensor> = None;
        for start in (0..l_q).step_by(self.block_rows) {
            let rows = self.block_rows.min(l_q - start);
            let qb = qs.narrow(2, start, rows)?;
            let gb = g.narrow(2, start, rows)?;
            let p = softmax_last_dim(&qb.matmul(&kt)?)?;
            let dv_b = p.t()?.matmul(&gb)?;
            let ds = (gb.matmul(&vt)?.broadcast_sub(&delta.narrow(2, start, rows)?)? * &p)?;
            dq.push((ds.matmul(&k)? * self.scale)?);
            let dk_b = ds.t()?.matmul(&qb)?;
            dk = Some(match dk {
                Some(acc) => (acc + dk_b)?,
                None => dk_b,
            });
            dv = Some(match dv {
                Some(acc) => (acc + dv_b)?,
                None => dv_b,
            });
        }
        Ok((Some(Tensor::cat(&dq, 2)?), dk, dv))
    }
}

/// Materialises a broadcast; the backward sums the gradient over the broadcast dimensions with
/// one GEMM against a ones vector per run of such dimensions.
struct ExpandOp {
    shape: Vec<usize>,
}

impl CustomOp1 for ExpandOp {
    fn name(&self) -> &'static str {
        "ciak-expand"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        into_storage(&plain(s, l)?.broadcast_as(self.shape.as_slice())?.contiguous()?)
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(sum_to_shape(&g.detach(), x.dims())?))
    }
}

/// Sums `g` down to `src` (same rank, each dim 1 or equal), one GEMM per run of summed dims.
fn sum_to_shape(g: &Tensor, src: &[usize]) -> Result<Tensor> {
    let mut cur = g.dims().to_vec();
    let mut g = g.contiguous()?;
    let rank = cur.len();
    let mut i = 0;
    while i < rank {
        if src[i] != 1 || cur[i] == 1 {
            i += 1;
            continue;
        }
        let mut j = i;
        while j < rank && src[j] == 1 {
            j += 1;
        }
        let a: usize = cur[..i].iter().product();
        let r: usize = cur[i..j].iter().product();
        let c: usize = cur[j..].iter().product();
        g = if c == 1 {
            g.reshape((a, r))?.sum_keepdim(1)?
        } else {
            Tensor::ones((a, 1, r), g.dtype(), g.device())?.matmul(&g.reshape((a, r, c))?)?
        };
        cur[i..j].iter_mut().for_each(|d| *d = 1);
        g = g.reshape(cur.as_slice())?;
        i = j;
    }
    g.reshape(src)
}

/// `x.broadcast_as(shape)`; when training on the CPU a materialised copy with a fast backward.
///
/// Shapes: x [...] broadcastable to `shape` -> `shape`.
pub fn broadcast_as(x: &Tensor, shape: &[usize]) -> Result<Tensor> {
    if x.dims() == shape {
        return Ok(x.clone());
    }
    if !use_cpu_autograd(&[x]) {
        return x.broadcast_as(shape);
    }
    if x.rank() > shape.len() {
        candle_core::bail!("broadcast_as: cannot broadcast {:?} to {shape:?}", x.shape());
    }
    let mut padded = vec![1usize; shape.len() - x.rank()];
    padded.extend_from_slice(x.dims());
    if padded.iter().zip(shape).any(|(&s, &t)| s != 1 && s != t) {
        candle_core::bail!("broadcast_as: cannot broadcast {:?} to {shape:?}", x.shape());
    }
    x.reshape(padded)?.contiguous()?.apply_op1(ExpandOp { shape: shape.to_vec() })
}

fn broadcast_pair(a: &Tensor, b: &Tensor, op: &'static str) -> Result<(Tensor, Tensor)> {
    let shape = a.shape().broadcast_shape_binary_op(b.shape(), op)?;
    Ok((broadcast_as(a, shape.dims())?, broadcast_as(b, shape.dims())?))
}

/// `a.broadcast_mul(b)` with the fast broadcast backward when training on the CPU.
pub fn broadcast_mul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if !use_cpu_autograd(&[a, b]) {
        return a.broadcast_mul(b);
    }
    let (a, b) = broadcast_pair(a, b, "broadcast_mul")?;
    a * b
}

/// `a.broadcast_add(b)` with the fast broadcast backward when training on the CPU.
pub fn broadcast_add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if !use_cpu_autograd(&[a, b]) {
        return a.broadcast_add(b);
    }
    let (a, b) = broadcast_pair(a, b, "broadcast_add")?;
    a + b
}

/// `candle_nn::Linear` (same weights, same inference path) whose bias gradient is a GEMM when
/// training on the CPU.
#[derive(Debug, Clone)]
pub struct Linear {
    inner: candle_nn::Linear,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { inner: candle_nn::Linear::new(weight, bias) }
    }

    pub fn weight(&self) -> &Tensor {
        self.inner.weight()
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.inner.bias()
    }
}

impl Module for Linear {
    /// Shapes: x [..., in] -> [..., out].
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self.inner.bias() {
            Some(bias) if use_cpu_autograd(&[x, bias]) => {
                let y = candle_nn::Linear::new(self.inner.weight().clone(), None).forward(x)?;
                broadcast_add(&y, bias)
            }
            _ => self.inner.forward(x),
        }
    }
}

/// `candle_nn::linear`: weight `[out, in]` and bias `[out]` under `vb`.
pub fn linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    Ok(Linear { inner: candle_nn::linear(in_dim, out_dim, vb)? })
}

/// Softmax attention `softmax(scale q k^T) v` for training on the CPU (f32, tracked inputs):
/// the forward is `attention::sdpa_blocked`, the backward recomputes the probabilities in blocks
/// of `block_rows` query rows instead of keeping the whole score matrix per layer.
///
/// Shapes: q [B, H, L_q, D], k [B, H, L_k, D], v [B, H, L_k, D_v] -> [B, H, L_q, D_v].
pub fn sdpa_autograd(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, block_rows: usize) -> Result<Tensor> {
    q.contiguous()?.apply_op3(&k.contiguous()?, &v.contiguous()?, SdpaOp { scale, block_rows: block_rows.max(1) })
}

/// GELU with the tanh approximation (`x.gelu()`); f32 on the CPU runs a vectorized kernel whose
/// tanh is within 2e-7 of libm's, with and without gradients.
///
/// Shapes: x [...] -> [...].
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    let cpu_f32 = x.device().is_cpu() && x.dtype() == DType::F32;
    match path(&[x]) {
        Path::Fused if cpu_f32 => x.contiguous()?.apply_op1_no_bwd(&GeluOp),
        Path::CpuAutograd => x.contiguous()?.apply_op1(GeluOp),
        _ => x.gelu(),
    }
}

/// Softmax over the last dimension.
///
/// Shapes: x [..., N] -> [..., N].
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let cpu_f32 = x.device().is_cpu() && x.dtype() == DType::F32;
    match path(&[x]) {
        Path::Fused if cpu_f32 => x.contiguous()?.apply_op1_no_bwd(&SoftmaxOp),
        Path::Fused => candle_nn::ops::softmax_last_dim(x),
        Path::CpuAutograd => x.contiguous()?.apply_op1(SoftmaxOp),
        // CUDA: the fused kernel forward, SoftmaxOp's backward (5x fewer passes than composed)
        Path::Composed if x.device().is_cuda() => {
            reattach(x, &candle_nn::ops::softmax_last_dim(&x.detach().contiguous()?)?, SoftmaxOp)
        }
        Path::Composed => softmax_last_dim_composed(x),
    }
}

/// The differentiable form of [`softmax_last_dim`].
///
/// Shapes: x [..., N] -> [..., N].
pub fn softmax_last_dim_composed(x: &Tensor) -> Result<Tensor> {
    // softmax is shift invariant, so the max needs no gradient
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// `x * rsqrt(mean(x^2) + eps) * weight` over the last dimension (torch `RMSNorm`).
///
/// Shapes: x [..., N], weight [N] -> [..., N].
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor> {
    match path(&[x, weight]) {
        // candle's fused norms have no f64 kernel
        Path::Fused if x.dtype() == DType::F64 => rms_norm_composed(x, weight, eps),
        Path::Fused => candle_nn::ops::rms_norm(&x.contiguous()?, weight, eps),
        Path::CpuAutograd => {
            check_norm_shapes("rms_norm", x, &[weight])?;
            x.contiguous()?.apply_op2(&weight.contiguous()?, RmsNormOp { eps })
        }
        Path::Composed => rms_norm_composed(x, weight, eps),
    }
}

fn check_norm_shapes(op: &str, x: &Tensor, params: &[&Tensor]) -> Result<()> {
    let n = x.dim(D::Minus1)?;
    if params.iter().any(|p| p.dims() != [n]) {
        let shapes: Vec<_> = params.iter().map(|p| p.shape().clone()).collect();
        candle_core::bail!("{op}: parameters {shapes:?} do not match input {:?}", x.shape());
    }
    Ok(())
}

/// The differentiable form of [`rms_norm`].
///
/// Shapes: x [..., N], weight [N] -> [..., N].
pub fn rms_norm_composed(x: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor> {
    let n = x.dim(D::Minus1)?;
    if weight.dims1()? != n {
        candle_core::bail!("rms_norm: weight {:?} does not match input {:?}", weight.shape(), x.shape());
    }
    let inv_rms = x.sqr()?.mean_keepdim(D::Minus1)?.affine(1.0, eps as f64)?.sqrt()?.recip()?;
    x.broadcast_mul(&inv_rms)?.broadcast_mul(weight)
}

/// `(x - mean) / sqrt(var + eps) * weight + bias` over the last dimension (torch `LayerNorm`).
///
/// Shapes: x [..., N], weight [N], bias [N] -> [..., N].
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f32) -> Result<Tensor> {
    match path(&[x, weight, bias]) {
        Path::Fused if x.dtype() == DType::F64 => layer_norm_composed(x, weight, bias, eps),
        Path::Fused => candle_nn::ops::layer_norm(&x.contiguous()?, weight, bias, eps),
        Path::CpuAutograd => {
            check_norm_shapes("layer_norm", x, &[weight, bias])?;
            x.contiguous()?.apply_op3(&weight.contiguous()?, &bias.contiguous()?, LayerNormOp { eps })
        }
        Path::Composed => layer_norm_composed(x, weight, bias, eps),
    }
}

/// The differentiable form of [`layer_norm`].
///
/// Shapes: x [..., N], weight [N], bias [N] -> [..., N].
pub fn layer_norm_composed(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f32) -> Result<Tensor> {
    let n = x.dim(D::Minus1)?;
    if weight.dims1()? != n || bias.dims1()? != n {
        candle_core::bail!(
            "layer_norm: weight {:?} / bias {:?} do not match input {:?}",
            weight.shape(),
            bias.shape(),
            x.shape()
        );
    }
    let centered = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
    let inv_std = centered.sqr()?.mean_keepdim(D::Minus1)?.affine(1.0, eps as f64)?.sqrt()?.recip()?;
    centered.broadcast_mul(&inv_std)?.broadcast_mul(weight)?.broadcast_add(bias)
}

/// Rotates interleaved pairs `(x[2i], x[2i+1])` by the angles whose cos/sin are given
/// (`candle_nn::rotary_emb::rope_i`).
///
/// Shapes: x [B, H, L, D] contiguous, cos/sin [L, D/2] -> [B, H, L, D].
pub fn rope_i(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    match path(&[x, cos, sin]) {
        Path::Fused => candle_nn::rotary_emb::rope_i(&x.contiguous()?, cos, sin),
        // the tables are constants: only the rotated input needs a gradient
        Path::CpuAutograd if !tracks(&[cos, sin]) => {
            x.contiguous()?.apply_op3(&cos.contiguous()?, &sin.contiguous()?, RopeOp)
        }
        _ => rope_i_composed(x, cos, sin),
    }
}

struct RopeOp;

impl CustomOp3 for RopeOp {
    fn name(&self) -> &'static str {
        "ciak-rope-i"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        into_storage(&candle_nn::rotary_emb::rope_i(&plain(s1, l1)?, &plain(s2, l2)?, &plain(s3, l3)?)?)
    }

    /// A rotation's transpose is the rotation by the opposite angle.
    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dx = candle_nn::rotary_emb::rope_i(&g.detach().contiguous()?, cos, &sin.neg()?)?;
        Ok((Some(dx), None, None))
    }
}

/// The differentiable form of [`rope_i`].
///
/// Shapes: x [B, H, L, D], cos/sin [L, D/2] -> [B, H, L, D].
pub fn rope_i_composed(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (b, h, l, d) = x.dims4()?;
    if d % 2 != 0 || cos.dims2()? != (l, d / 2) || sin.dims2()? != (l, d / 2) {
        candle_core::bail!(
            "rope: expected cos/sin [{l}, {}] for x {:?}, got {:?} and {:?}",
            d / 2,
            x.shape(),
            cos.shape(),
            sin.shape()
        );
    }
    let pairs = x.reshape((b, h, l, d / 2, 2))?;
    let x0 = pairs.narrow(4, 0, 1)?;
    let x1 = pairs.narrow(4, 1, 1)?;
    let cos = cos.reshape((l, d / 2, 1))?;
    let sin = sin.reshape((l, d / 2, 1))?;
    let y0 = (x0.broadcast_mul(&cos)? - x1.broadcast_mul(&sin)?)?;
    let y1 = (x0.broadcast_mul(&sin)? + x1.broadcast_mul(&cos)?)?;
    Tensor::cat(&[y0, y1], 4)?.reshape((b, h, l, d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    fn randn(shape: &[usize], scale: f64) -> Tensor {
        (Tensor::randn(0f32, 1., shape, &Device::Cpu).unwrap() * scale).unwrap()
    }

    #[test]
    fn composed_equals_fused() -> Result<()> {
        // wide value ranges: softmax must survive large logits, norms large offsets
        let x = (randn(&[3, 5, 37], 4.0) + 2.0)?;
        let w = randn(&[37], 1.0);
        let b = randn(&[37], 1.0);
        let cases = [
            ("softmax", candle_nn::ops::softmax_last_dim(&x)?, softmax_last_dim_composed(&x)?),
            ("softmax kernel", candle_nn::ops::softmax_last_dim(&x)?, softmax_last_dim(&x)?),
            ("rms_norm", candle_nn::ops::rms_norm(&x, &w, 1e-6)?, rms_norm_composed(&x, &w, 1e-6)?),
            ("layer_norm", candle_nn::ops::layer_norm(&x, &w, &b, 1e-6)?, layer_norm_composed(&x, &w, &b, 1e-6)?),
        ];
        for (name, fused, composed) in cases {
            let scale = fused.abs()?.max_all()?.to_scalar::<f32>()?;
            let err = max_abs_diff(&fused, &composed);
            assert!(err <= 1e-5 * scale.max(1.0), "{name}: max abs error {err} (scale {scale})");
        }
        let q = randn(&[2, 3, 7, 12], 1.0);
        let ang = randn(&[7, 6], 3.0);
        let (cos, sin) = (ang.cos()?, ang.sin()?);
        let err = max_abs_diff(&candle_nn::rotary_emb::rope_i(&q, &cos, &sin)?, &rope_i_composed(&q, &cos, &sin)?);
        assert!(err <= 1e-6, "rope: max abs error {err}");
        Ok(())
    }

    #[test]
    fn dispatch_follows_gradient_tracking() -> Result<()> {
        let x = randn(&[4, 9], 2.0);
        let var = Var::from_tensor(&x)?;
        let plain = softmax_last_dim(&x)?;
        assert!(!plain.track_op());
        let tracked = softmax_last_dim(var.as_tensor())?;
        assert!(tracked.track_op());
        assert!(max_abs_diff(&plain, &tracked) < 1e-6);
        // only the weight is a Var: still the composed path, and the weight gets a gradient
        let w = Var::from_tensor(&randn(&[9], 1.0))?;
        let y = rms_norm(&x, w.as_tensor(), 1e-6)?;
        let grads = y.sqr()?.sum_all()?.backward()?;
        assert!(grads.get(w.as_tensor()).is_some());
        Ok(())
    }

    /// The CUDA training softmax (fused forward, reattached analytic backward), run on the CPU:
    /// the fused values exactly, the composed form's gradient.
    #[test]
    fn reattached_softmax_has_the_composed_gradient() -> Result<()> {
        let x = (randn(&[3, 5, 37], 4.0) + 2.0)?;
        let f = |t: &[Tensor]| reattach(&t[0], &candle_nn::ops::softmax_last_dim(&t[0].detach())?, SoftmaxOp);
        check_cpu_autograd("reattached softmax", &[x], &f, &|t| softmax_last_dim_composed(&t[0]))
    }

    /// Forward values and input gradients of `f` on Vars (the CPU custom ops for f32) against the
    /// composed reference `reference`, for a random projection of the output.
    fn check_cpu_autograd(
        name: &str,
        inputs: &[Tensor],
        f: &dyn Fn(&[Tensor]) -> Result<Tensor>,
        reference: &dyn Fn(&[Tensor]) -> Result<Tensor>,
    ) -> Result<()> {
        let vars: Vec<Var> = inputs.iter().map(Var::from_tensor).collect::<Result<_>>()?;
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let fused = f(inputs)?;
        let got = f(&ts)?;
        let want = reference(&ts)?;
        assert_eq!(max_abs_diff(&got, &fused), 0.0, "{name}: the training forward must equal the fused one");
        let scale = want.abs()?.max_all()?.to_scalar::<f32>()?.max(1e-3);
        assert!(max_abs_diff(&got, &want) <= 1e-6 * scale, "{name}: forward differs from the composed reference");
        let r = randn(got.dims(), 1.0);
        let g_got = (got * &r)?.sum_all()?.backward()?;
        let g_want = (want * &r)?.sum_all()?.backward()?;
        for (i, t) in ts.iter().enumerate() {
            let (a, b) = (g_got.get(t).expect("gradient"), g_want.get(t).expect("reference gradient"));
            let scale = b.abs()?.max_all()?.to_scalar::<f32>()?;
            let err = max_abs_diff(a, b);
            assert!(scale > 0.0 && err <= 1e-5 * scale, "{name}: d/d input {i}: error {err} (scale {scale})");
        }
        Ok(())
    }

    fn naive_attention(t: &[Tensor], scale: f64) -> Result<Tensor> {
        let s = (t[0].matmul(&t[1].t()?)? * scale)?;
        softmax_last_dim_composed(&s)?.matmul(&t[2])
    }

    #[test]
    fn softmax_kernel_handles_masks_threads_and_odd_widths() -> Result<()> {
        // -inf and f32::MIN entries (masked keys) get exactly zero weight, as with libm's expf
        let x = Tensor::new(&[[0.5f32, f32::NEG_INFINITY, 2.0, f32::MIN], [1.0, 1.0, 1.0, 1.0]], &Device::Cpu)?;
        let y = softmax_last_dim(&x)?.to_vec2::<f32>()?;
        assert_eq!((y[0][1], y[0][3]), (0.0, 0.0));
        assert!((y[0][0] + y[0][2] - 1.0).abs() < 1e-6 && (y[1][2] - 0.25).abs() < 1e-7);
        // large enough for the threaded path, with a width that is not a multiple of 8
        let big = randn(&[301, 1037], 5.0);
        let err = max_abs_diff(&softmax_last_dim(&big)?, &candle_nn::ops::softmax_last_dim(&big)?);
        assert!(err < 1e-6, "{err}");
        // the dispatched kernel (AVX2 where the CPU has it) gives the portable kernel's bits
        let src = big.flatten_all()?.to_vec1::<f32>()?;
        let (mut a, mut b) = (vec![0f32; src.len()], vec![0f32; src.len()]);
        softmax_rows(&src, &mut a, 1037);
        softmax_rows_portable(&src, &mut b, 1037);
        assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "the kernels disagree");
        Ok(())
    }

    #[test]
    fn fast_gelu_matches_libm() -> Result<()> {
        let xs: Vec<f32> = (-4000..=4000).map(|i| i as f32 * 0.005).chain([-80.0, -20.0, 20.0, 80.0, 0.0]).collect();
        let mut worst = 0f64;
        for &x in &xs {
            let exact = 0.5 * x as f64 * (1.0 + (GELU_C as f64 * (x as f64 + GELU_A as f64 * (x as f64).powi(3))).tanh());
            let err = (gelu_value(x) as f64 - exact).abs() / (1.0 + exact.abs());
            worst = worst.max(err);
            let e = (exp_approx(x.clamp(-80.0, 80.0)) as f64 - (x.clamp(-80.0, 80.0) as f64).exp()).abs();
            assert!(e <= 3e-7 * (x.clamp(-80.0, 80.0) as f64).exp(), "exp({x})");
        }
        assert!(worst < 3e-7, "gelu relative error {worst}");
        let t = Tensor::new(xs.as_slice(), &Device::Cpu)?;
        let err = max_abs_diff(&gelu(&t)?, &t.gelu()?);
        assert!(err < 2e-6, "against candle's gelu: {err}");
        Ok(())
    }

    #[test]
    fn cpu_autograd_ops_match_the_composed_gradients() -> Result<()> {
        let x = (randn(&[3, 5, 16], 2.0) + 0.5)?;
        let w = randn(&[16], 1.0);
        let b = randn(&[16], 1.0);
        check_cpu_autograd("softmax", std::slice::from_ref(&x), &|t| softmax_last_dim(&t[0]), &|t| softmax_last_dim_composed(&t[0]))?;
        check_cpu_autograd(
            "rms_norm",
            &[x.clone(), w.clone()],
            &|t| rms_norm(&t[0], &t[1], 1e-6),
            &|t| rms_norm_composed(&t[0], &t[1], 1e-6),
        )?;
        check_cpu_autograd(
            "layer_norm",
            &[x.clone(), w.clone(), b.clone()],
            &|t| layer_norm(&t[0], &t[1], &t[2], 1e-6),
            &|t| layer_norm_composed(&t[0], &t[1], &t[2], 1e-6),
        )?;
        // candle's own GELU is differentiable: it is the reference (to the kernel's 2e-7)
        check_cpu_autograd("gelu", &[(x.clone() * 2.0)?], &|t| gelu(&t[0]), &|t| t[0].gelu())?;
        let ang = randn(&[7, 6], 3.0);
        let (cos, sin) = (ang.cos()?, ang.sin()?);
        check_cpu_autograd(
            "rope",
            &[randn(&[2, 3, 7, 12], 1.0)],
            &|t| rope_i(&t[0], &cos, &sin),
            &|t| rope_i_composed(&t[0], &cos, &sin),
        )?;
        let (a, m, c) = (randn(&[2, 5, 6], 1.0), randn(&[2, 1, 6], 1.0), randn(&[6], 1.0));
        check_cpu_autograd("broadcast_mul", &[a.clone(), m.clone()], &|t| broadcast_mul(&t[0], &t[1]), &|t| t[0].broadcast_mul(&t[1]))?;
        check_cpu_autograd("broadcast_add", &[a.clone(), c.clone()], &|t| broadcast_add(&t[0], &t[1]), &|t| t[0].broadcast_add(&t[1]))?;
        check_cpu_autograd("broadcast_as", &[randn(&[3, 1, 2, 1], 1.0)], &|t| broadcast_as(&t[0], &[4, 3, 5, 2, 7]), &|t| t[0].broadcast_as((4, 3, 5, 2, 7)))?;
        let (w, bias) = (randn(&[4, 6], 1.0), randn(&[4], 1.0));
        check_cpu_autograd(
            "linear",
            &[a.clone(), w.clone(), bias.clone()],
            &|t| Linear::new(t[1].clone(), Some(t[2].clone())).forward(&t[0]),
            &|t| candle_nn::Linear::new(t[1].clone(), Some(t[2].clone())).forward(&t[0]),
        )?;
        let qkv = [randn(&[2, 3, 11, 8], 1.5), randn(&[2, 3, 9, 8], 1.5), randn(&[2, 3, 9, 5], 1.0)];
        for rows in [11, 4] {
            check_cpu_autograd(
                "sdpa",
                &qkv,
                &|t| {
                    if t[0].track_op() {
                        sdpa_autograd(&t[0], &t[1], &t[2], 0.3, rows)
                    } else {
                        super::super::attention::sdpa_blocked(&t[0], &t[1], &t[2], 0.3, rows)
                    }
                },
                &|t| naive_attention(t, 0.3),
            )?;
        }
        Ok(())
    }

    /// Central finite differences of `sum(f(x) * r)` against the autograd gradient, in f64.
    fn check_grad(name: &str, f: &dyn Fn(&Tensor) -> Result<Tensor>, shape: &[usize]) -> Result<()> {
        let dev = Device::Cpu;
        let x0 = randn(shape, 1.5).to_dtype(DType::F64)?;
        let r = randn(shape, 1.0).to_dtype(DType::F64)?;
        let var = Var::from_tensor(&x0)?;
        let loss = (f(var.as_tensor())? * &r)?.sum_all()?;
        let grad = loss.backward()?.get(var.as_tensor()).expect("gradient").flatten_all()?.to_vec1::<f64>()?;
        let flat = x0.flatten_all()?.to_vec1::<f64>()?;
        let h = 1e-6;
        for i in (0..flat.len()).step_by(3) {
            let eval = |delta: f64| -> Result<f64> {
                let mut v = flat.clone();
                v[i] += delta;
                let x = Tensor::from_vec(v, shape, &dev)?;
                (f(&x)? * &r)?.sum_all()?.to_scalar::<f64>()
            };
            let numeric = (eval(h)? - eval(-h)?) / (2.0 * h);
            assert!(
                (numeric - grad[i]).abs() <= 1e-6 * (1.0 + numeric.abs()),
                "{name}: d/dx[{i}] autograd {} vs numeric {numeric}",
                grad[i]
            );
        }
        Ok(())
    }

    #[test]
    fn composed_gradients_match_finite_differences() -> Result<()> {
        let w = randn(&[8], 1.0).to_dtype(DType::F64)?;
        let b = randn(&[8], 1.0).to_dtype(DType::F64)?;
        let ang = randn(&[5, 4], 3.0).to_dtype(DType::F64)?;
        let (cos, sin) = (ang.cos()?, ang.sin()?);
        check_grad("softmax", &softmax_last_dim_composed, &[3, 8])?;
        check_grad("rms_norm", &|x| rms_norm_composed(x, &w, 1e-6), &[3, 8])?;
        check_grad("layer_norm", &|x| layer_norm_composed(x, &w, &b, 1e-6), &[3, 8])?;
        check_grad("rope", &|x| rope_i_composed(x, &cos, &sin), &[1, 2, 5, 8])?;
        Ok(())
    }
}
