//! im2col with an analytic backward (col2im), for training the VAE's convolutions on the CPU.
//!
//! The inference path of [`super::layers`] builds each conv's im2col matrix from `narrow`ed views
//! and a `cat`; under autograd every one of those `narrow`s has a backward that allocates a
//! zero tensor the size of the whole input, copies the gradient into it and adds it to the
//! running sum: nine full-size passes per 3x3 conv (more with time taps), which made the VAE
//! trainer's step mostly memset, memcpy and element-wise adds. [`im2col`] is one custom op whose
//! backward scatters the column gradient straight back into one input-sized buffer.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

/// The im2col matrix of a stride-1 `k`x`k` convolution with symmetric zero padding `pad`.
///
/// Shapes: x (N, C, H, W) -> (N, C*k*k, Ho*Wo) with Ho = H+2*pad-k+1, Wo = W+2*pad-k+1; row
/// `c*k*k + dy*k + dx` holds input channel c shifted by tap (dy, dx), so a weight reshaped to
/// `(C_out, C*k*k)` times the matrix is the convolution. f32 on the CPU only (the training path
/// of the VAE there); its gradient is [`col2im`].
pub fn im2col(x: &Tensor, k: usize, pad: usize) -> Result<Tensor> {
    let x = x.contiguous()?;
    x.apply_op1(Im2Col(Geometry::of(x.dims4()?, k, pad)?))
}

/// The adjoint of [`im2col`]: sums each column entry back into the input position it was read
/// from. Shapes: col (N, C*k*k, Ho*Wo) -> (N, C, H, W) for the (N, C, H, W) input `dims`.
pub fn col2im(col: &Tensor, dims: (usize, usize, usize, usize), k: usize, pad: usize) -> Result<Tensor> {
    let col = col.contiguous()?;
    col.apply_op1(Col2Im(Geometry::of(dims, k, pad)?))
}

/// Sizes shared by the op and its adjoint.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    pad: usize,
    ho: usize,
    wo: usize,
}

impl Geometry {
    fn of((n, c, h, w): (usize, usize, usize, usize), k: usize, pad: usize) -> Result<Self> {
        if k == 0 || h + 2 * pad < k || w + 2 * pad < k {
            candle_core::bail!("im2col: a {k}x{k} kernel with padding {pad} does not fit a {h}x{w} frame");
        }
        Ok(Self { n, c, h, w, k, pad, ho: h + 2 * pad + 1 - k, wo: w + 2 * pad + 1 - k })
    }

    fn input_len(&self) -> usize {
        self.n * self.c * self.h * self.w
    }

    fn col_len(&self) -> usize {
        self.n * self.c * self.k * self.k * self.ho * self.wo
    }

    /// For tap offset `d` (dy or dx) along an axis of `size` inputs and `out` outputs: the first
    /// output index whose source is inside the input, one past the last, and the source of the
    /// first (output o reads input o + d - pad).
    fn span(&self, d: usize, size: usize, out: usize) -> (usize, usize, usize) {
        let lo = self.pad.saturating_sub(d).min(out);
        let hi = (size + self.pad).saturating_sub(d).clamp(lo, out);
        (lo, hi, (lo + d).saturating_sub(self.pad))
    }

    /// Calls `f(input_offset, col_offset, len)` for every contiguous run of in-range reads, in
    /// col order; everything else in the col matrix is zero padding.
    fn for_each_run(&self, mut f: impl FnMut(usize, usize, usize)) {
        let (k, plane, cols) = (self.k, self.h * self.w, self.ho * self.wo);
        for img in 0..self.n * self.c {
            for dy in 0..k {
                let (y_lo, y_hi, sy0) = self.span(dy, self.h, self.ho);
                for dx in 0..k {
                    let (x_lo, x_hi, sx0) = self.span(dx, self.w, self.wo);
                    if x_hi == x_lo {
                        continue;
                    }
                    let row = (img * k + dy) * k + dx;
                    for y in y_lo..y_hi {
                        let src = img * plane + (sy0 + y - y_lo) * self.w + sx0;
                        f(src, row * cols + y * self.wo + x_lo, x_hi - x_lo);
                    }
                }
            }
        }
    }
}

fn contiguous<'a>(s: &'a CpuStorage, l: &Layout, want: usize, what: &str) -> Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(data), Some((start, end))) if end - start == want => Ok(&data[start..end]),
        (CpuStorage::F32(_), Some((start, end))) => {
            candle_core::bail!("{what}: expected {want} values, got {}", end - start)
        }
        _ => candle_core::bail!("{what}: expected a contiguous f32 CPU tensor"),
    }
}

struct Im2Col(Geometry);

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "ciak-im2col"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.0;
        let x = contiguous(s, l, g.input_len(), "im2col")?;
        let mut col = vec![0f32; g.col_len()];
        g.for_each_run(|src, dst, len| col[dst..dst + len].copy_from_slice(&x[src..src + len]));
        Ok((CpuStorage::F32(col), Shape::from((g.n, g.c * g.k * g.k, g.ho * g.wo))))
    }

    fn bwd(&self, _x: &Tensor, _col: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = self.0;
        Ok(Some(col2im(grad, (g.n, g.c, g.h, g.w), g.k, g.pad)?))
    }
}

struct Col2Im(Geometry);

impl CustomOp1 for Col2Im {
    fn name(&self) -> &'static str {
        "ciak-col2im"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.0;
        let col = contiguous(s, l, g.col_len(), "col2im")?;
        let mut x = vec![0f32; g.input_len()];
        g.for_each_run(|src, dst, len| {
            for (acc, v) in x[src..src + len].iter_mut().zip(&col[dst..dst + len]) {
                *acc += v;
            }
        });
        Ok((CpuStorage::F32(x), Shape::from((g.n, g.c, g.h, g.w))))
    }

    fn bwd(&self, _col: &Tensor, _x: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = self.0;
        Ok(Some(im2col(grad, g.k, g.pad)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    fn ramp(dims: (usize, usize, usize, usize)) -> Tensor {
        let n = dims.0 * dims.1 * dims.2 * dims.3;
        let v: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0).collect();
        Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
    }

    /// The same matrix from zero padding and `narrow`ed windows, as the inference path builds it.
    fn reference(x: &Tensor, k: usize, pad: usize) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        let (ho, wo) = (h + 2 * pad + 1 - k, w + 2 * pad + 1 - k);
        let xp = x.pad_with_zeros(2, pad, pad)?.pad_with_zeros(3, pad, pad)?;
        let mut taps = Vec::new();
        for dy in 0..k {
            for dx in 0..k {
                taps.push(xp.narrow(2, dy, ho)?.narrow(3, dx, wo)?.unsqueeze(2)?);
            }
        }
        Tensor::cat(&taps, 2)?.reshape((n, c * k * k, ho * wo))
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
    }

    #[test]
    fn matches_padded_windows_for_every_kernel_and_padding() -> Result<()> {
        for (dims, k, pad) in [
            ((2, 3, 5, 7), 3, 1),
            ((1, 2, 4, 4), 3, 0),
            ((1, 1, 3, 6), 1, 0),
            ((2, 2, 6, 5), 5, 2),
            ((1, 1, 2, 2), 3, 2),
            ((1, 2, 1, 9), 3, 1),
        ] {
            let x = ramp(dims);
            let got = im2col(&x, k, pad)?;
            let want = reference(&x, k, pad)?;
            assert_eq!(got.dims(), want.dims(), "{dims:?} k {k} pad {pad}");
            assert_eq!(max_diff(&got, &want), 0.0, "{dims:?} k {k} pad {pad}");
        }
        Ok(())
    }

    /// The backward is the adjoint: the gradient it gives equals autograd through the
    /// narrow/cat composition, for any upstream gradient.
    #[test]
    fn gradient_equals_the_composed_gradient() -> Result<()> {
        for (dims, k, pad) in [((2, 3, 5, 7), 3, 1), ((1, 2, 6, 5), 5, 2), ((1, 1, 2, 2), 3, 2)] {
            let x = Var::from_tensor(&ramp(dims))?;
            let probe = ramp((1, 1, 1, im2col(x.as_tensor(), k, pad)?.elem_count()));
            let probe = probe.reshape(im2col(x.as_tensor(), k, pad)?.shape())?;
            let ours = (im2col(x.as_tensor(), k, pad)? * &probe)?.sum_all()?.backward()?;
            let theirs = (reference(x.as_tensor(), k, pad)? * &probe)?.sum_all()?.backward()?;
            let (a, b) = (ours.get(x.as_tensor()).unwrap(), theirs.get(x.as_tensor()).unwrap());
            assert!(max_diff(a, b) < 1e-4, "{dims:?} k {k} pad {pad}: {}", max_diff(a, b));
        }
        // and col2im's own backward is im2col
        let col = Var::from_tensor(&ramp((1, 18, 20, 1)).reshape((1, 18, 20))?)?;
        let x = col2im(col.as_tensor(), (1, 2, 4, 5), 3, 1)?;
        let probe = ramp((1, 2, 4, 5));
        let grads = (x * &probe)?.sum_all()?.backward()?;
        assert_eq!(max_diff(grads.get(col.as_tensor()).unwrap(), &im2col(&probe, 3, 1)?), 0.0);
        assert_eq!(col2im(col.as_tensor(), (1, 2, 4, 5), 3, 1)?.dtype(), DType::F32);
        Ok(())
    }

    #[test]
    fn refuses_a_kernel_larger_than_the_padded_frame() {
        let err = im2col(&ramp((1, 1, 2, 2)), 5, 0).unwrap_err().to_string();
        assert!(err.contains("5x5 kernel with padding 0 does not fit a 2x2 frame"), "{err}");
    }
}
