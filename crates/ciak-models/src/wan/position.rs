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
//!
//! Sine features: `2 + 4k` channels add, after (height, width), k octaves of sines and cosines of
//! both coordinates, sin(pi 2^j y), cos(pi 2^j y), sin(pi 2^j x), cos(pi 2^j x) for j = 0..k, as
//! NeRF's positional encoding does. A network fed the raw coordinates learns functions of them
//! that vary fast (an outline: where a star's points end and the background begins) far more
//! slowly than smooth ones; the sines hand it those frequencies. A model trained with `2 + 4k`
//! reads the first two channels as a 2-channel one does, so `train dit --init-from` widens a
//! 2-channel model with zero weights for the rest.

use candle_core::{DType, Device, Result, Tensor};

/// The most octaves of sine features (`position_channels` = 2 + 4 x this at most).
pub const MAX_OCTAVES: usize = 8;

/// Whether a model may ask for `channels` coordinate channels: none, (height, width), or those two
/// and 1 to [`MAX_OCTAVES`] octaves of sine features (2 + 4k).
pub fn supported(channels: usize) -> bool {
    channels == 0 || (channels >= 2 && (channels - 2) % 4 == 0 && (channels - 2) / 4 <= MAX_OCTAVES)
}

/// The error text for an unsupported count.
pub fn expected() -> String {
    format!("0, 2, or 2 + 4k with k octaves of sine features (k <= {MAX_OCTAVES})")
}

/// Cell centres of an axis of `n` cells, from -1 to 1: (2i + 1) / n - 1.
fn axis(n: usize) -> Vec<f32> {
    (0..n).map(|i| ((2 * i + 1) as f64 / n as f64 - 1.0) as f32).collect()
}

/// The `channels` coordinate channels (2 + 4k, see the module) of a latent grid of `f` x `h` x `w`
/// cells for a batch of `b`.
///
/// Shapes: -> [b, channels, f, h, w]: channel 0 the height coordinate, channel 1 the width
/// coordinate, then per octave j: sin and cos of pi 2^j times the height, then of the width.
pub fn coordinates(b: usize, channels: usize, f: usize, h: usize, w: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    if channels < 2 || !supported(channels) {
        candle_core::bail!("expected position_channels {}, got {channels}", expected());
    }
    let features = |v: &[f32]| -> Vec<Vec<f32>> {
        let mut out = vec![v.to_vec()];
        for j in 0..(channels - 2) / 4 {
            let k = std::f64::consts::PI * (1u64 << j) as f64;
            out.push(v.iter().map(|&c| (k * c as f64).sin() as f32).collect());
            out.push(v.iter().map(|&c| (k * c as f64).cos() as f32).collect());
        }
        out
    };
    let (ys, xs) = (features(&axis(h)), features(&axis(w)));
    let y = |v: &Vec<f32>| Tensor::from_vec(v.clone(), (1, 1, 1, h, 1), device)?.broadcast_as((b, 1, f, h, w));
    let x = |v: &Vec<f32>| Tensor::from_vec(v.clone(), (1, 1, 1, 1, w), device)?.broadcast_as((b, 1, f, h, w));
    let mut parts = vec![y(&ys[0])?, x(&xs[0])?];
    for (sy, sx) in ys[1..].chunks(2).zip(xs[1..].chunks(2)) {
        parts.extend([y(&sy[0])?, y(&sy[1])?, x(&sx[0])?, x(&sx[1])?]);
    }
    Tensor::cat(&parts, 1)?.to_dtype(dtype)
}

/// `latents` with `channels` coordinate channels appended (none: `latents` as they are).
///
/// Shapes: latents [B, C, F, H, W] -> [B, C + channels, F, H, W].
pub fn append(latents: &Tensor, channels: usize) -> Result<Tensor> {
    if channels == 0 {
        return Ok(latents.clone());
    }
    let (b, _, f, h, w) = latents.dims5()?;
    let coords = coordinates(b, channels, f, h, w, latents.dtype(), latents.device())?;
    Tensor::cat(&[latents, &coords], 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coordinates_run_from_top_left_to_bottom_right_at_cell_centres() -> Result<()> {
        let c = coordinates(2, 2, 3, 2, 4, DType::F32, &Device::Cpu)?;
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
        for bad in [1, 3, 4, 5, 2 + 4 * (MAX_OCTAVES + 1)] {
            let err = append(&x, bad).unwrap_err().to_string();
            assert!(err.contains(&format!("expected position_channels 0, 2, or 2 + 4k with k octaves of sine features (k <= 8), got {bad}")), "{err}");
        }
        Ok(())
    }

    #[test]
    fn sine_features_follow_the_two_coordinates_octave_by_octave() -> Result<()> {
        let (h, w) = (4, 8);
        let c = coordinates(1, 2 + 4 * 3, 2, h, w, DType::F32, &Device::Cpu)?;
        assert_eq!(c.dims(), &[1, 14, 2, h, w]);
        // the first two channels are the plain coordinates, as with 2 channels
        let plain = coordinates(1, 2, 2, h, w, DType::F32, &Device::Cpu)?;
        assert_eq!((c.narrow(1, 0, 2)? - plain)?.abs()?.max_all()?.to_scalar::<f32>()?, 0.0);
        let at = |ch: usize, y: usize, x: usize| -> Result<f32> { c.get(0)?.get(ch)?.get(1)?.get(y)?.get(x)?.to_scalar::<f32>() };
        for j in 0..3 {
            let k = std::f32::consts::PI * (1 << j) as f32;
            for (y, x) in [(0, 0), (1, 5), (3, 7)] {
                let (cy, cx) = ((2 * y + 1) as f32 / h as f32 - 1.0, (2 * x + 1) as f32 / w as f32 - 1.0);
                let want = [(k * cy).sin(), (k * cy).cos(), (k * cx).sin(), (k * cx).cos()];
                for (i, v) in want.iter().enumerate() {
                    let got = at(2 + 4 * j + i, y, x)?;
                    assert!((got - v).abs() < 1e-5, "octave {j} feature {i} at ({y}, {x}): {got} vs {v}");
                }
            }
        }
        // the same in every latent frame and batch item
        let c2 = coordinates(3, 14, 2, h, w, DType::F32, &Device::Cpu)?;
        let first = c2.get(0)?.get(5)?.get(0)?;
        let last = c2.get(2)?.get(5)?.get(1)?;
        assert_eq!((first - last)?.abs()?.max_all()?.to_scalar::<f32>()?, 0.0);
        assert!(supported(0) && supported(2) && supported(6) && supported(34) && !supported(38) && !supported(4));
        Ok(())
    }
}
