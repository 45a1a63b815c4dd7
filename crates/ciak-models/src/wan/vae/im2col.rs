//! im2col with an analytic backward (col2im), for training the VAE's convolutions on the CPU.
//!
//! The inference path of [`super::layers`] builds each conv's im2col matrix from `narrow`ed views
//! and a `cat`; under autograd every one of those `narrow`s has a backward that allocates a
//! zero tensor the size of the whole input, copies the gradient into it and adds it to the
//! running sum: nine full-size passes per 3x3 conv (more with time taps), which made the VAE
//! trainer's step mostly memset, memcpy and element-wise adds. [`im2col`] is one custom op whose
//! backward scatters the column gradient straight back into one input-sized buffer.

use crate::wan::ops::contiguous_f32;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

/// The shape of a convolution over frames: `kt` time taps at time stride `stride_t`, a `k`x`k`
/// spatial kernel at stride 1 with symmetric zero padding `pad`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kernel {
    pub kt: usize,
    pub stride_t: usize,
    pub k: usize,
    pub pad: usize,
}

/// The im2col matrix of a convolution over `T` frames, one matrix per output frame.
///
/// Shapes: x (T, C, H, W) -> (T_out, kt*C*k*k, Ho*Wo) with T_out = (T-kt)/stride_t+1,
/// Ho = H+2*pad-k+1, Wo = W+2*pad-k+1. Row `(tau*C + c)*k*k + dy*k + dx` of output frame t holds
/// channel c of input frame `t*stride_t + tau` shifted by tap (dy, dx), so a weight of shape
/// `(C_out, kt*C*k*k)` in (t, c, y, x) order times each matrix is the convolution. f32 on the
/// CPU only (the training path of the VAE there); its gradient is [`col2im`].
pub fn im2col(x: &Tensor, kernel: Kernel) -> Result<Tensor> {
    let x = x.contiguous()?;
    x.apply_op1(Im2Col(Geometry::of(x.dims4()?, kernel)?))
}

/// The adjoint of [`im2col`]: sums each column entry back into the input position it was read
/// from. Shapes: col (T_out, kt*C*k*k, Ho*Wo) -> (T, C, H, W) for the (T, C, H, W) input `dims`.
pub fn col2im(col: &Tensor, dims: (usize, usize, usize, usize), kernel: Kernel) -> Result<Tensor> {
    let col = col.contiguous()?;
    col.apply_op1(Col2Im(Geometry::of(dims, kernel)?))
}

/// Sizes shared by the op and its adjoint.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    t: usize,
    c: usize,
    h: usize,
    w: usize,
    kt: usize,
    stride_t: usize,
    k: usize,
    pad: usize,
    t_out: usize,
    ho: usize,
    wo: usize,
}

impl Geometry {
    fn of((t, c, h, w): (usize, usize, usize, usize), kernel: Kernel) -> Result<Self> {
        let Kernel { kt, stride_t, k, pad } = kernel;
        if k == 0 || h + 2 * pad < k || w + 2 * pad < k {
            candle_core::bail!("im2col: a {k}x{k} kernel with padding {pad} does not fit a {h}x{w} frame");
        }
        if kt == 0 || stride_t == 0 || t < kt {
            candle_core::bail!("im2col: {kt} time taps at stride {stride_t} do not fit {t} frames");
        }
        let t_out = (t - kt) / stride_t + 1;
        Ok(Self { t, c, h, w, kt, stride_t, k, pad, t_out, ho: h + 2 * pad + 1 - k, wo: w + 2 * pad + 1 - k })
    }

    fn kernel(&self) -> Kernel {
        Kernel { kt: self.kt, stride_t: self.stride_t, k: self.k, pad: self.pad }
    }

    fn input_len(&self) -> usize {
        self.t * self.c * self.h * self.w
    }

    fn rows(&self) -> usize {
        self.kt * self.c * self.k * self.k
    }

    fn col_len(&self) -> usize {
        self.t_out * self.rows() * self.ho * self.wo
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
        // (output frame, time tap, channel) in row order; `img` is the input plane it reads
        let planes = (0..self.t_out).flat_map(|t| (0..self.kt * self.c).map(move |tc| (t, tc)));
        for (out_plane, (t, tc)) in planes.enumerate() {
            let img = (t * self.stride_t) * self.c + tc;
            for dy in 0..k {
                let (y_lo, y_hi, sy0) = self.span(dy, self.h, self.ho);
                for dx in 0..k {
                    let (x_lo, x_hi, sx0) = self.span(dx, self.w, self.wo);
                    if x_hi == x_lo {
                        continue;
                    }
                    let row = (out_plane * k + dy) * k + dx;
                    for y in y_lo..y_hi {
                        let src = img * plane + (sy0 + y - y_lo) * self.w + sx0;
                        f(src, row * cols + y * self.wo + x_lo, x_hi - x_lo);
                    }
                }
            }
        }
    }
}

/// [`contiguous_f32`] holding exactly `want` values.
fn values<'a>(s: &'a CpuStorage, l: &Layout, want: usize, what: &str) -> Result<&'a [f32]> {
    let v = contiguous_f32(s, l)?;
    if v.len() != want {
        candle_core::bail!("{what}: expected {want} values, got {}", v.len());
    }
    Ok(v)
}

struct Im2Col(Geometry);

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "ciak-im2col"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.0;
        let x = values(s, l, g.input_len(), "im2col")?;
        let mut col = vec![0f32; g.col_len()];
        g.for_each_run(|src, dst, len| col[dst..dst + len].copy_from_slice(&x[src..src + len]));
        Ok((CpuStorage::F32(col), Shape::from((g.t_out, g.rows(), g.ho * g.wo))))
    }

    fn bwd(&self, _x: &Tensor, _col: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = self.0;
        Ok(Some(col2im(grad, (g.t, g.c, g.h, g.w), g.kernel())?))
    }
}

struct Col2Im(Geometry);

impl CustomOp1 for Col2Im {
    fn name(&self) -> &'static str {
        "ciak-col2im"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.0;
        let col = values(s, l, g.col_len(), "col2im")?;
        let mut x = vec![0f32; g.input_len()];
        g.for_each_run(|src, dst, len| {
            for (acc, v) in x[src..src + len].iter_mut().zip(&col[dst..dst + len]) {
                *acc += v;
            }
        });
        Ok((CpuStorage::F32(x), Shape::from((g.t, g.c, g.h, g.w))))
    }

    fn bwd(&self, _col: &Tensor, _x: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(im2col(grad, self.0.kernel())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn ramp(dims: (usize, usize, usize, usize)) -> Tensor {
        let n = dims.0 * dims.1 * dims.2 * dims.3;
        let v: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0).collect();
        Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
    }

    fn kernel(kt: usize, stride_t: usize, k: usize, pad: usize) -> Kernel {
        Kernel { kt, stride_t, k, pad }
    }

    /// The same matrices from zero padding, `narrow`ed windows and stacked frames, as the
    /// inference path builds them.
    fn reference(x: &Tensor, kn: Kernel) -> Result<Tensor> {
        let (t, c, h, w) = x.dims4()?;
        let Kernel { kt, stride_t, k, pad } = kn;
        let (ho, wo) = (h + 2 * pad + 1 - k, w + 2 * pad + 1 - k);
        let xp = x.pad_with_zeros(2, pad, pad)?.pad_with_zeros(3, pad, pad)?;
        let mut taps = Vec::new();
        for dy in 0..k {
            for dx in 0..k {
                taps.push(xp.narrow(2, dy, ho)?.narrow(3, dx, wo)?.unsqueeze(2)?);
            }
        }
        let spatial = Tensor::cat(&taps, 2)?.reshape((t, c * k * k, ho * wo))?;
        let frames = (0..(t - kt) / stride_t + 1)
            .map(|o| spatial.narrow(0, o * stride_t, kt)?.reshape((kt * c * k * k, ho * wo)))
            .collect::<Result<Vec<_>>>()?;
        Tensor::stack(&frames, 0)
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
    }

    const CASES: [((usize, usize, usize, usize), Kernel); 8] = [
        ((2, 3, 5, 7), Kernel { kt: 1, stride_t: 1, k: 3, pad: 1 }),
        ((1, 2, 4, 4), Kernel { kt: 1, stride_t: 1, k: 3, pad: 0 }),
        ((1, 1, 3, 6), Kernel { kt: 1, stride_t: 1, k: 1, pad: 0 }),
        ((2, 2, 6, 5), Kernel { kt: 1, stride_t: 1, k: 5, pad: 2 }),
        ((1, 1, 2, 2), Kernel { kt: 1, stride_t: 1, k: 3, pad: 2 }),
        ((6, 2, 4, 5), Kernel { kt: 3, stride_t: 1, k: 3, pad: 1 }),
        ((7, 3, 2, 3), Kernel { kt: 3, stride_t: 2, k: 1, pad: 0 }),
        ((5, 1, 1, 9), Kernel { kt: 2, stride_t: 3, k: 3, pad: 1 }),
    ];

    #[test]
    fn matches_stacked_padded_windows() -> Result<()> {
        for (dims, kn) in CASES {
            let x = ramp(dims);
            let got = im2col(&x, kn)?;
            let want = reference(&x, kn)?;
            assert_eq!(got.dims(), want.dims(), "{dims:?} {kn:?}");
            assert_eq!(max_diff(&got, &want), 0.0, "{dims:?} {kn:?}");
        }
        Ok(())
    }

    /// The backward is the adjoint: the gradient it gives equals autograd through the
    /// narrow/cat/stack composition, for any upstream gradient, frames read twice included.
    #[test]
    fn gradient_equals_the_composed_gradient() -> Result<()> {
        for (dims, kn) in CASES {
            let x = Var::from_tensor(&ramp(dims))?;
            let shape = im2col(x.as_tensor(), kn)?.shape().clone();
            let probe = ramp((1, 1, 1, shape.elem_count())).reshape(shape)?;
            let ours = (im2col(x.as_tensor(), kn)? * &probe)?.sum_all()?.backward()?;
            let theirs = (reference(x.as_tensor(), kn)? * &probe)?.sum_all()?.backward()?;
            let (a, b) = (ours.get(x.as_tensor()).unwrap(), theirs.get(x.as_tensor()).unwrap());
            assert!(max_diff(a, b) < 1e-4, "{dims:?} {kn:?}: {}", max_diff(a, b));
        }
        // and col2im's own backward is im2col
        let kn = kernel(3, 1, 3, 1);
        let col = Var::from_tensor(&ramp((2, 54, 20, 1)).reshape((2, 54, 20))?)?;
        let x = col2im(col.as_tensor(), (4, 2, 4, 5), kn)?;
        let probe = ramp((4, 2, 4, 5));
        let grads = (x * &probe)?.sum_all()?.backward()?;
        assert_eq!(max_diff(grads.get(col.as_tensor()).unwrap(), &im2col(&probe, kn)?), 0.0);
        Ok(())
    }

    #[test]
    fn refuses_kernels_that_do_not_fit() {
        let err = im2col(&ramp((1, 1, 2, 2)), kernel(1, 1, 5, 0)).unwrap_err().to_string();
        assert!(err.contains("5x5 kernel with padding 0 does not fit a 2x2 frame"), "{err}");
        let err = im2col(&ramp((2, 1, 3, 3)), kernel(3, 1, 3, 1)).unwrap_err().to_string();
        assert!(err.contains("3 time taps at stride 1 do not fit 2 frames"), "{err}");
        let err = col2im(&ramp((1, 1, 9, 3)).reshape((1, 9, 3)).unwrap(), (1, 1, 2, 2), kernel(1, 1, 3, 1));
        assert!(err.unwrap_err().to_string().contains("expected 36 values, got 27"));
    }
}
