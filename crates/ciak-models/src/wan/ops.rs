//! Normalisation, softmax and rotary ops that work both for inference and for training.
//!
//! candle's fused kernels (`candle_nn::ops::{softmax_last_dim, rms_norm, layer_norm}` and
//! `candle_nn::rotary_emb::rope_i`) have no backward pass. Each function here runs the fused kernel
//! when no input tracks gradients (inference on loaded weights) and an equivalent composition of
//! differentiable tensor ops otherwise (training on `Var`s), on any device.

use candle_core::{Result, Tensor, D};

/// True when any of the tensors is a `Var` or was computed from one.
fn tracks(tensors: &[&Tensor]) -> bool {
    tensors.iter().any(|t| t.track_op())
}

/// Softmax over the last dimension.
///
/// Shapes: x [..., N] -> [..., N].
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if !tracks(&[x]) {
        return candle_nn::ops::softmax_last_dim(x);
    }
    softmax_last_dim_composed(x)
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
    if !tracks(&[x, weight]) {
        return candle_nn::ops::rms_norm(&x.contiguous()?, weight, eps);
    }
    rms_norm_composed(x, weight, eps)
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
    if !tracks(&[x, weight, bias]) {
        return candle_nn::ops::layer_norm(&x.contiguous()?, weight, bias, eps);
    }
    layer_norm_composed(x, weight, bias, eps)
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
    if !tracks(&[x, cos, sin]) {
        return candle_nn::rotary_emb::rope_i(&x.contiguous()?, cos, sin);
    }
    rope_i_composed(x, cos, sin)
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
