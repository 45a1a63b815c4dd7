//! A wider decoder that starts as the trained one (Net2Net's widening, Chen et al. 2016).
//!
//! A decoder `k` times as wide (`decoder_base_dim` = k x the folder's width) trained from fresh
//! weights has to relearn everything the folder's decoder knows: at base 16 that is about 11 h
//! on one CPU thread. Instead every channel `c` of the folder's decoder becomes `k` channels
//! `c, C + c, ..., (k-1)C + c` that compute the same values, so the wide decoder draws exactly
//! what the narrow one drew, and training starts from there:
//!
//! - a layer's outputs: each output channel's weights and bias are copied to its `k` places;
//! - a layer's inputs: the weight of an old input channel is split among its `k` copies in
//!   random shares that sum to 1, so the sum over the copies is the old weighted input. The
//!   shares differ per weight, which breaks the copies' symmetry (equal shares would give them
//!   equal gradients for ever);
//! - `WanRMS_norm` (`x / ||x|| * sqrt(C) * gamma`): `k` copies of `x` have `sqrt(k)` times the norm
//!   and `sqrt(kC)` is `sqrt(k)` times the scale, so copying `gamma` keeps its output;
//! - the mid block's attention (one head, logits scaled by `1/sqrt(C)`): copied `q` and `k` give
//!   `k` times the dot product against `sqrt(k)` times the scale, so the `q` rows are divided by
//!   `sqrt(k)`;
//! - grouped outputs are widened group by group: `to_qkv` holds `q`, `k`, `v` and an upsampler's
//!   `time_conv` the channels of two frames, each `C` wide.
//!
//! Residual sums, SiLU, nearest upsampling and the causal caches act per channel, so they keep
//! the copies equal. `conv_in` (from the latent) keeps its input width and `conv_out` (to RGB)
//! its output width.
use crate::train::flow::TrainRng;
use crate::train::{Result, TrainError};
use candle_core::{DType, Tensor};

/// How many equal groups a tensor's output channels fall into (see the module docs).
fn output_groups(name: &str) -> usize {
    if name.contains(".to_qkv.") {
        3
    } else if name.contains(".time_conv.") {
        2
    } else {
        1
    }
}

/// Old index of new channel `j` on an axis of `old` channels in `groups` groups, widened `k` times:
/// within a group the new layout is `k` copies of the old one after another.
fn source_channel(j: usize, old: usize, groups: usize, k: usize) -> usize {
    let width = old / groups;
    let (group, within) = (j / (k * width), j % (k * width));
    group * width + within % width
}

/// `old` (a decoder weight, bias or norm gain named `name`) widened to `new_dims`, the shape of
/// the same tensor in a decoder `k` times as wide; `rng` draws the input shares.
pub fn widen_tensor(name: &str, old: &Tensor, new_dims: &[usize], k: usize, rng: &mut TrainRng) -> Result<Tensor> {
    let old_dims = old.dims();
    let bad = |what: &str| {
        TrainError::Data(format!(
            "widening `{name}` {k} times: expected a shape {what}, got {old_dims:?} -> {new_dims:?}"
        ))
    };
    if old_dims.len() != new_dims.len() || old_dims.is_empty() {
        return Err(bad("of the same rank"));
    }
    let widened = |axis: usize| -> Result<bool> {
        match (old_dims.get(axis), new_dims.get(axis)) {
            (Some(&o), Some(&n)) if n == o => Ok(false),
            (Some(&o), Some(&n)) if n == k * o => Ok(true),
            (None, None) => Ok(false),
            _ => Err(bad(&format!("whose axis {axis} is the same or {k} times as wide"))),
        }
    };
    let (wide_out, wide_in) = (widened(0)?, widened(1)?);
    if old_dims.iter().skip(2).zip(new_dims.iter().skip(2)).any(|(o, n)| o != n) {
        return Err(bad("with the same kernel"));
    }
    let groups = if wide_out { output_groups(name) } else { 1 };
    if old_dims[0] % groups != 0 {
        return Err(bad(&format!("whose outputs split into {groups} groups")));
    }
    let (old_out, old_in) = (old_dims[0], old_dims.get(1).copied().unwrap_or(1));
    let (new_out, new_in) = (new_dims[0], new_dims.get(1).copied().unwrap_or(1));
    let inner: usize = old_dims.iter().skip(2).product();
    let values: Vec<f32> = old.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    // copied q rows would double the attention logits' dot product against sqrt(k) of its scale
    let q_scale = if wide_out && name.contains(".to_qkv.") { 1.0 / (k as f32).sqrt() } else { 1.0 };
    let q_rows = new_out / 3;
    let mut out = vec![0f32; new_out * new_in * inner];
    let (mut draws, mut shares) = (vec![0f64; k], vec![0f32; k]);
    for o in 0..new_out {
        let so = if wide_out { source_channel(o, old_out, groups, k) } else { o };
        let scale = if o < q_rows { q_scale } else { 1.0 };
        for i in 0..old_in {
            for x in 0..inner {
                let v = values[(so * old_in + i) * inner + x] * scale;
                if !wide_in {
                    out[(o * new_in + i) * inner + x] = v;
                    continue;
                }
                // shares (1 + (a_r - mean a) / 2) / k with a_r uniform: positive, summing to 1
                draws.iter_mut().for_each(|a| *a = rng.uniform());
                let mean = draws.iter().sum::<f64>() / k as f64;
                for (s, a) in shares.iter_mut().zip(&draws) {
                    *s = ((1.0 + (a - mean) / 2.0) / k as f64) as f32;
                }
                for (r, s) in shares.iter().enumerate() {
                    out[(o * new_in + r * old_in + i) * inner + x] = v * s;
                }
            }
        }
    }
    Ok(Tensor::from_vec(out, new_dims, old.device())?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn grouped_outputs_are_copied_group_by_group() {
        // time_conv: 2 frames x 3 channels, twice as wide -> [f0: c0 c1 c2 c0 c1 c2, f1: ...]
        let map: Vec<usize> = (0..12).map(|j| source_channel(j, 6, 2, 2)).collect();
        assert_eq!(map, [0, 1, 2, 0, 1, 2, 3, 4, 5, 3, 4, 5]);
        assert_eq!((0..4).map(|j| source_channel(j, 2, 1, 2)).collect::<Vec<_>>(), [0, 1, 0, 1]);
    }

    #[test]
    fn input_shares_sum_to_the_old_weight_and_differ() {
        let old = Tensor::new(&[[1f32, -2.0], [0.5, 4.0]], &Device::Cpu).unwrap();
        let wide = widen_tensor("decoder.x.conv1.weight", &old, &[4, 4], 2, &mut TrainRng::new(1)).unwrap();
        let w: Vec<Vec<f32>> = wide.to_vec2().unwrap();
        for o in 0..4 {
            for i in 0..2 {
                let sum = w[o][i] + w[o][i + 2];
                let want = [[1f32, -2.0], [0.5, 4.0]][o % 2][i];
                assert!((sum - want).abs() < 1e-6, "row {o} input {i}: {sum} vs {want}");
            }
        }
        assert_ne!(w[0][0], w[0][2], "the copies' shares differ");
        assert_ne!(w[0][0], w[2][0], "so do the copied rows'");
        let err = widen_tensor("decoder.x.weight", &old, &[3, 4], 2, &mut TrainRng::new(1)).unwrap_err();
        assert!(err.to_string().contains("axis 0 is the same or 2 times as wide"), "{err}");
    }
}
