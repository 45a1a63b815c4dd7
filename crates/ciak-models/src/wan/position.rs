//! Coordinate channels: where each latent cell lies in the frame, as extra input channels of the
//! transformer (a ciak extension of the Wan config, `position_channels`).
//!
//! Wan's transformer learns position only through 3D RoPE, which sees relative offsets. From pure
//! noise every token looks alike, so a small model finds its place in the frame only from the
//! grid's edges, slowly and the centre last (docs/training.md, "where a RoPE-only DiT can put an
//! object"). Layouts pinned to the frame (a sky over ground, a gradient, an object that starts at
//! an edge) need that place. Two channels give it: the cell centre's height and width, each from
//! -1 (top, left) to 1 (bottom, right), the same for every latent frame. They are concatenated
//! after the latent channels, as Wan I2V concatenates its condition channels, so the patch
//! embedding is an ordinary Conv3d over `latent + 2` channels and the rest of the model is Wan's.
//! Real Wan checkpoints have none (`position_channels` absent means 0).

use candle_core::{DType, Device, Result, Tensor};

/// The channel counts a model may ask for: none, or (height, width).
pub const SUPPORTED: [usize; 2] = [0, 2];

/// Cell centres of an axis of `n` cells, from -1 to 1: (2i + 1) / n - 1.
fn axis(n: usize) -> Vec<f32> {
    (0..n).map(|i| ((2 * i + 1) as f64 / n as f64 - 1.0) as f32).collect()
}

/// The coordinate channels of a latent grid of `f` x `h` x `w` cells for a batch of `b`.
///
/// Shapes: -> [b, 2, f, h, w]: channel 0 the height coordinate, channel 1 the width coordinate.
pub fn coordinates(b: usize, f: usize, h: usize, w: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let ys = Tensor::from_vec(axis(h), (1, 1, 1, h, 1), device)?.broadcast_as((b, 1, f, h, w))?;
    let xs = Tensor::from_vec(axis(w), (1, 1, 1, 1, w), device)?.broadcast_as((b, 1, f, h, w))?;
    Tensor::cat(&[&ys, &xs], 1)?.to_dtype(dtype)
}

/// `latents` with `channels` coordinate channels appended (none: `latents` as they are).
///
/// Shapes: latents [B, C, F, H, W] -> [B, C + channels, F, H, W].
pub fn append(latents: &Tensor, channels: usize) -> Result<Tensor> {
    match channels {
        0 => Ok(latents.clone()),
        2 => {
            let (b, _, f, h, w) = latents.dims5()?;
            let coords = coordinates(b, f, h, w, latents.dtype(), latents.device())?;
            Tensor::cat(&[latents, &coords], 1)
        }
        n => candle_core::bail!("expected position_channels 0 or 2, got {n}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coordinates_run_from_top_left_to_bottom_right_at_cell_centres() -> Result<()> {
        let c = coordinates(2, 3, 2, 4, DType::F32, &Device::Cpu)?;
        assert_eq!(c.dims(), &[2, 2, 3, 2, 4]);
        let ys = c.get(1)?.get(0)?.get(2)?.to_vec2::<f32>()?;
        let xs = c.get(0)?.get(1)?.get(0)?.to_vec2::<f32>()?;
        assert_eq!(ys, vec![vec![-0.5; 4], vec![0.5; 4]]);
        assert_eq!(xs, vec![vec![-0.75, -0.25, 0.25, 0.75]; 2]);
        Ok(())
    }

    #[test]
    fn append_keeps_the_latents_first_and_refuses_other_counts() -> Result<()> {
        let x = Tensor::randn(0f32, 1., (1, 3, 2, 2, 2), &Device::Cpu)?;
        assert_eq!(append(&x, 0)?.dims(), &[1, 3, 2, 2, 2]);
        let y = append(&x, 2)?;
        assert_eq!(y.dims(), &[1, 5, 2, 2, 2]);
        let diff = (y.narrow(1, 0, 3)? - &x)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert_eq!(diff, 0.0);
        let err = append(&x, 3).unwrap_err().to_string();
        assert!(err.contains("expected position_channels 0 or 2, got 3"), "{err}");
        Ok(())
    }
}
