//! 3-D rotary position embedding of the Wan transformer (diffusers `WanRotaryPosEmbed`).
//!
//! The head dimension is split into a frame, a height and a width part; each part rotates
//! interleaved pairs `(x[2i], x[2i+1])` by `position * 10000^(-2i/d)`.

use candle_core::{DType, Device, Result, Tensor};

const THETA: f64 = 10_000.0;

/// Angles are computed in f64 like diffusers, which casts cos/sin to f32 at the end.
#[derive(Debug, Clone)]
pub struct WanRotaryPosEmbed {
    head_dim: usize,
    max_seq_len: usize,
    /// Sub-dimensions of the head for the frame, height and width axes.
    axis_dims: [usize; 3],
    /// `inv_freq[a][i] = 1 / THETA^(2i / axis_dims[a])`.
    inv_freq: [Vec<f64>; 3],
}

impl WanRotaryPosEmbed {
    pub fn new(head_dim: usize, max_seq_len: usize) -> Result<Self> {
        let h_dim = 2 * (head_dim / 6);
        let w_dim = h_dim;
        let t_dim = head_dim - h_dim - w_dim;
        if !head_dim.is_multiple_of(2) || h_dim == 0 {
            candle_core::bail!("rope: head dim must be even and >= 6, got {head_dim}");
        }
        let axis_dims = [t_dim, h_dim, w_dim];
        let inv_freq = axis_dims.map(|d| {
            (0..d / 2)
                .map(|i| 1.0 / THETA.powf((2 * i) as f64 / d as f64))
                .collect::<Vec<f64>>()
        });
        Ok(Self { head_dim, max_seq_len, axis_dims, inv_freq })
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    pub fn axis_dims(&self) -> [usize; 3] {
        self.axis_dims
    }

    /// Cos and sin of the rotation angle of every pair, tokens in row-major (f, h, w) order.
    ///
    /// Shapes: grid (F', H', W') -> (cos, sin), each [F'*H'*W', head_dim/2] f32.
    pub fn forward(&self, grid: (usize, usize, usize), device: &Device) -> Result<(Tensor, Tensor)> {
        let (f, h, w) = grid;
        let longest = f.max(h).max(w);
        if longest > self.max_seq_len {
            candle_core::bail!(
                "rope: patch grid {f}x{h}x{w} exceeds rope_max_seq_len {}",
                self.max_seq_len
            );
        }
        let half = self.head_dim / 2;
        let tokens = f * h * w;
        let mut cos = Vec::with_capacity(tokens * half);
        let mut sin = Vec::with_capacity(tokens * half);
        for fi in 0..f {
            for hi in 0..h {
                for wi in 0..w {
                    for (pos, freqs) in [fi, hi, wi].into_iter().zip(self.inv_freq.iter()) {
                        for &fr in freqs {
                            let angle = pos as f64 * fr;
                            cos.push(angle.cos() as f32);
                            sin.push(angle.sin() as f32);
                        }
                    }
                }
            }
        }
        let cos = Tensor::from_vec(cos, (tokens, half), device)?;
        let sin = Tensor::from_vec(sin, (tokens, half), device)?;
        Ok((cos, sin))
    }
}

/// Rotates interleaved pairs of `x` in f32 and casts back, as diffusers does with its f32 tables.
///
/// Shapes: x [B, H, L, D], cos/sin [L, D/2] f32 -> [B, H, L, D].
pub fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let dtype = x.dtype();
    let xf = x.to_dtype(DType::F32)?.contiguous()?;
    super::ops::rope_i(&xf, cos, sin)?.to_dtype(dtype)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_matches_diffusers() -> Result<()> {
        let rope = WanRotaryPosEmbed::new(128, 1024)?;
        assert_eq!(rope.axis_dims(), [44, 42, 42]);
        let rope = WanRotaryPosEmbed::new(24, 1024)?;
        assert_eq!(rope.axis_dims(), [8, 8, 8]);
        Ok(())
    }

    #[test]
    fn angles_follow_grid_order() -> Result<()> {
        let rope = WanRotaryPosEmbed::new(24, 1024)?;
        let (cos, sin) = rope.forward((2, 3, 4), &Device::Cpu)?;
        assert_eq!(cos.dims(), &[24, 12]);
        let sin = sin.to_vec2::<f32>()?;
        // token (f=1, h=2, w=3) is row 1*12 + 2*4 + 3 = 23; pair 0 of each axis has frequency 1
        let row = &sin[23];
        assert!((row[0] - 1f32.sin()).abs() < 1e-7);
        assert!((row[4] - 2f32.sin()).abs() < 1e-7);
        assert!((row[8] - 3f32.sin()).abs() < 1e-7);
        // pair 1 of the frame axis: 1 * 10000^(-2/8)
        assert!((row[1] - (10000f64.powf(-0.25)).sin() as f32).abs() < 1e-7);
        Ok(())
    }

    #[test]
    fn rotation_is_interleaved() -> Result<()> {
        let rope = WanRotaryPosEmbed::new(6, 16)?;
        let (cos, sin) = rope.forward((1, 1, 2), &Device::Cpu)?;
        // w=1 rotates the last pair by 1 radian; everything else is at position 0
        let x = Tensor::new(&[[[[1f32, 2., 3., 4., 5., 6.], [1., 2., 3., 4., 5., 6.]]]], &Device::Cpu)?;
        let y = apply_rope(&x, &cos, &sin)?.squeeze(0)?.to_vec3::<f32>()?;
        let (c, s) = (1f32.cos(), 1f32.sin());
        let want = [1., 2., 3., 4., 5. * c - 6. * s, 5. * s + 6. * c];
        for (got, want) in y[0][1].iter().zip(want) {
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }
        assert_eq!(y[0][0], vec![1., 2., 3., 4., 5., 6.]);
        Ok(())
    }
}
