//! Fewer latent channels from a trained VAE: its latents' principal components.
//!
//! The DiT sees a latent through its patch embedding: with patch 1x4x4 and 16 channels a token
//! carries 256 numbers, and at low noise the model must hand every one of them back (the
//! velocity is noise minus data, and the noise fills all 256). A DiT 128 or 256 wide cannot, so
//! its samples keep noise and its loss stalls (docs/training.md). The toy world's latents are far
//! from 16-dimensional, though: over the training world, the top 8 principal components of the
//! normalised latents of `train/vae-x4f` hold 99.6% of their variance. This module rebuilds a
//! VAE with `z_dim` k from those k components, with no training:
//!
//! - encoder: the new posterior mean is `y = A (mu - mean)` with `A = V_k^T D^-1` (V_k the top k
//!   eigenvectors of the normalised latents' covariance, D the folder's `latents_std`). Both
//!   `quant_conv` (1x1x1) and `A` are linear maps of `encoder.conv_out`'s output, so they fold
//!   into its weights exactly and the new `quant_conv` is the identity. Each new log-variance
//!   channel is the mean of the old ones (it only sets the training-time posterior noise).
//! - decoder: `post_quant_conv` and the reconstruction `mu = mean + D V_k y` are linear maps
//!   into `decoder.conv_in`, so its weights become `W_in (W_pq D V_k)` and the new
//!   `post_quant_conv` is the identity plus the offset `s` that carries as much of the constant
//!   `c = W_pq mean + b_pq` as the k channels can (`s = G^+ c`); the rest, `r = c - G s`, folds
//!   into `conv_in`'s bias, which is exact away from the borders, where `conv_in` zero-pads.
//! - statistics: the new latents have mean 0 and per-channel std `sqrt(lambda_j)`.
use crate::train::latents::load_vae;
use crate::train::vae::{folder_weights, latent_moments, write_vae_folder};
use crate::train::{Result, TrainError};
use candle_core::{DType, Device, Tensor};
use ciak_models::wan::vae::AutoencoderKLWanConfig;
use std::collections::HashMap;
use std::path::Path;

/// What a reduction kept.
#[derive(Debug, Clone)]
pub struct ReduceSummary {
    /// Eigenvalues of the normalised latents' covariance, largest first (all z_dim of them).
    pub eigenvalues: Vec<f64>,
    /// Share of the normalised latents' variance the kept channels hold.
    pub kept_variance: f64,
    /// Clips the statistics were taken over.
    pub clips: usize,
    /// The old VAE's mean posterior mean (z).
    pub mean: Vec<f64>,
    /// The new latent from the old one: `y = projection (mu - mean)`, k x z.
    pub projection: Vec<Vec<f64>>,
    /// The old latent back from the new: `mu ~ mean + reconstruction y`, z x k.
    pub reconstruction: Vec<Vec<f64>>,
    /// The rms of the part of `decoder.conv_in`'s constant input that the k channels cannot
    /// carry and that is folded into its bias (`r`), beside the rms of the whole constant (`c`):
    /// a residual of 0 makes the decoder exact at the borders too.
    pub constant_residual: f64,
    pub constant: f64,
}

/// Writes to `out` a VAE folder with `z_dim` latent channels made from the one in `vae_dir`,
/// using `clips` training-world clips (drawn with `seed`) for the latent covariance.
pub fn reduce_vae(vae_dir: &Path, z_dim: usize, clips: usize, seed: u64, out: &Path) -> Result<ReduceSummary> {
    let bad = |message: String| TrainError::Config { path: vae_dir.to_path_buf(), message };
    let same = |a: &Path, b: &Path| matches!((a.canonicalize(), b.canonicalize()), (Ok(a), Ok(b)) if a == b);
    if same(vae_dir, out) {
        return Err(bad(format!("expected the reduced VAE to go to another folder than {}, got the same", vae_dir.display())));
    }
    let device = Device::Cpu;
    let vae = load_vae(vae_dir, &device)?;
    let cfg = vae.config().clone();
    let z = cfg.z_dim;
    if z_dim == 0 || z_dim >= z {
        return Err(bad(format!("expected a z_dim from 1 to {} (fewer channels than the VAE's {z}), got {z_dim}", z - 1)));
    }
    if clips == 0 {
        return Err(bad("expected at least 1 clip for the latent statistics, got 0".into()));
    }
    let moments = latent_moments(&vae, seed, clips)?;
    let (mean, cov) = moments.mean_and_covariance();
    let std = &cfg.latents_std;
    // covariance of the normalised latents, D^-1 C D^-1
    let norm_cov: Vec<Vec<f64>> = (0..z).map(|i| (0..z).map(|j| cov[i][j] / (std[i] * std[j])).collect()).collect();
    let (eigenvalues, vectors) = symmetric_eigen(&norm_cov);
    let total: f64 = eigenvalues.iter().map(|l| l.max(0.0)).sum();
    let kept_variance = eigenvalues[..z_dim].iter().map(|l| l.max(0.0)).sum::<f64>() / total.max(1e-300);
    if eigenvalues[z_dim - 1] <= 1e-12 {
        return Err(bad(format!(
            "expected {z_dim} latent directions with variance, the VAE's latents have {} over {clips} clips",
            eigenvalues.iter().filter(|&&l| l > 1e-12).count()
        )));
    }
    // A = V_k^T D^-1 (k x z); the reconstruction B = D V_k (z x k)
    let a: Vec<Vec<f64>> = (0..z_dim).map(|j| (0..z).map(|i| vectors[i][j] / std[i]).collect()).collect();
    let b: Vec<Vec<f64>> = (0..z).map(|i| (0..z_dim).map(|j| std[i] * vectors[i][j]).collect()).collect();

    let mut weights: HashMap<String, Tensor> =
        folder_weights(vae_dir, &device)?.into_iter().map(|(n, t)| Ok((n, t.to_dtype(DType::F32)?))).collect::<Result<_>>()?;
    let take = |weights: &mut HashMap<String, Tensor>, name: &str| -> Result<Tensor> {
        weights.remove(name).ok_or_else(|| bad(format!("expected a weight `{name}`, found none")))
    };
    // encoder: mean rows E = A W_q[:z], logvar row = mean of W_q[z:]; composed with conv_out
    let (wq, bq) = (matrix(&take(&mut weights, "quant_conv.weight")?)?, take(&mut weights, "quant_conv.bias")?.to_vec1::<f32>()?);
    let (wo, bo) = (take(&mut weights, "encoder.conv_out.weight")?, take(&mut weights, "encoder.conv_out.bias")?);
    let mut rows: Vec<Vec<f64>> = Vec::with_capacity(2 * z_dim);
    let mut offsets: Vec<f64> = Vec::with_capacity(2 * z_dim);
    for aj in &a {
        rows.push((0..2 * z).map(|l| (0..z).map(|i| aj[i] * wq[i][l]).sum()).collect());
        offsets.push((0..z).map(|i| aj[i] * (bq[i] as f64 - mean[i])).sum());
    }
    let logvar_row: Vec<f64> = (0..2 * z).map(|l| (z..2 * z).map(|i| wq[i][l]).sum::<f64>() / z as f64).collect();
    let logvar_bias = (z..2 * z).map(|i| bq[i] as f64).sum::<f64>() / z as f64;
    for _ in 0..z_dim {
        rows.push(logvar_row.clone());
        offsets.push(logvar_bias);
    }
    let (conv_out, conv_out_bias) = compose_output(&rows, &offsets, &wo, &bo)?;
    weights.insert("encoder.conv_out.weight".into(), conv_out);
    weights.insert("encoder.conv_out.bias".into(), conv_out_bias);
    weights.insert("quant_conv.weight".into(), identity_conv(2 * z_dim, &device)?);
    weights.insert("quant_conv.bias".into(), Tensor::zeros(2 * z_dim, DType::F32, &device)?);

    // decoder: conv_in sees G y + c, G = W_pq B, c = W_pq mean + b_pq
    let (wp, bp) = (matrix(&take(&mut weights, "post_quant_conv.weight")?)?, take(&mut weights, "post_quant_conv.bias")?.to_vec1::<f32>()?);
    let g: Vec<Vec<f64>> = (0..z).map(|o| (0..z_dim).map(|j| (0..z).map(|i| wp[o][i] * b[i][j]).sum()).collect()).collect();
    let c: Vec<f64> = (0..z).map(|o| (0..z).map(|i| wp[o][i] * mean[i]).sum::<f64>() + bp[o] as f64).collect();
    let s = least_squares(&g, &c);
    let r: Vec<f64> = (0..z).map(|o| c[o] - (0..z_dim).map(|j| g[o][j] * s[j]).sum::<f64>()).collect();
    let (wi, bi) = (take(&mut weights, "decoder.conv_in.weight")?, take(&mut weights, "decoder.conv_in.bias")?);
    let (conv_in, conv_in_bias) = compose_input(&wi, &bi, &g, &r)?;
    weights.insert("decoder.conv_in.weight".into(), conv_in);
    weights.insert("decoder.conv_in.bias".into(), conv_in_bias);
    weights.insert("post_quant_conv.weight".into(), identity_conv(z_dim, &device)?);
    weights.insert("post_quant_conv.bias".into(), Tensor::from_vec(s.iter().map(|&v| v as f32).collect::<Vec<_>>(), z_dim, &device)?);

    let reduced = AutoencoderKLWanConfig {
        z_dim,
        latents_mean: vec![0.0; z_dim],
        latents_std: eigenvalues[..z_dim].iter().map(|l| l.sqrt()).collect(),
        ..cfg
    };
    reduced.validate().map_err(|e| bad(e.to_string()))?;
    write_vae_folder(&reduced, &weights, out)?;
    let rms = |v: &[f64]| (v.iter().map(|x| x * x).sum::<f64>() / v.len() as f64).sqrt();
    let (constant_residual, constant) = (rms(&r), rms(&c));
    Ok(ReduceSummary { eigenvalues, kept_variance, clips, mean, projection: a, reconstruction: b, constant_residual, constant })
}

/// A 1x1x1 conv weight [out, in, 1, 1, 1] as rows of f64.
fn matrix(w: &Tensor) -> Result<Vec<Vec<f64>>> {
    let (o, i) = (w.dim(0)?, w.dim(1)?);
    Ok(w.reshape((o, i))?.to_dtype(DType::F64)?.to_vec2::<f64>()?)
}

fn identity_conv(n: usize, device: &Device) -> Result<Tensor> {
    Ok(Tensor::eye(n, DType::F32, device)?.reshape((n, n, 1, 1, 1))?)
}

/// A conv [L, C, k...] followed by the linear map `rows` [J x L] plus `offsets`: one conv
/// [J, C, k...] with bias `rows b + offsets`.
fn compose_output(rows: &[Vec<f64>], offsets: &[f64], w: &Tensor, bias: &Tensor) -> Result<(Tensor, Tensor)> {
    let dims = w.dims().to_vec();
    let m = Tensor::new(rows.iter().map(|r| r.iter().map(|&v| v as f32).collect::<Vec<_>>()).collect::<Vec<_>>(), w.device())?;
    let flat = w.flatten_from(1)?;
    let mut out_dims = dims.clone();
    out_dims[0] = rows.len();
    let weight = m.matmul(&flat)?.reshape(out_dims)?;
    let bias = (m.matmul(&bias.unsqueeze(1)?)?.squeeze(1)? + Tensor::new(offsets.iter().map(|&v| v as f32).collect::<Vec<_>>(), w.device())?)?;
    Ok((weight, bias))
}

/// A conv [O, Z, k...] fed with `G y + r` (G [Z x K]): one conv [O, K, k...] on y, with `r`
/// folded into the bias as if every tap saw it.
fn compose_input(w: &Tensor, bias: &Tensor, g: &[Vec<f64>], r: &[f64]) -> Result<(Tensor, Tensor)> {
    let dims = w.dims().to_vec();
    let (o, zc) = (dims[0], dims[1]);
    let taps: usize = dims[2..].iter().product();
    let k = g[0].len();
    let gm = Tensor::new(g.iter().map(|row| row.iter().map(|&v| v as f32).collect::<Vec<_>>()).collect::<Vec<_>>(), w.device())?;
    // [O, Z, taps] -> [O, taps, Z] x G -> [O, taps, K] -> [O, K, taps]
    let per_tap = w.reshape((o, zc, taps))?.transpose(1, 2)?.contiguous()?;
    let folded = per_tap.broadcast_matmul(&gm)?.transpose(1, 2)?.contiguous()?;
    let mut out_dims = dims.clone();
    out_dims[1] = k;
    let rt = Tensor::new(r.iter().map(|&v| v as f32).collect::<Vec<_>>(), w.device())?;
    let extra = w.reshape((o, zc, taps))?.sum(2)?.matmul(&rt.unsqueeze(1)?)?.squeeze(1)?;
    Ok((folded.reshape(out_dims)?, (bias + extra)?))
}

/// `argmin_s |G s - c|` through the normal equations (G has full column rank here).
fn least_squares(g: &[Vec<f64>], c: &[f64]) -> Vec<f64> {
    let k = g[0].len();
    let gtg: Vec<Vec<f64>> = (0..k).map(|a| (0..k).map(|b| g.iter().map(|row| row[a] * row[b]).sum()).collect()).collect();
    let gtc: Vec<f64> = (0..k).map(|a| g.iter().zip(c).map(|(row, ci)| row[a] * ci).sum()).collect();
    let (values, vectors) = symmetric_eigen(&gtg);
    // s = V diag(1/lambda) V^T (G^T c)
    (0..k)
        .map(|i| {
            (0..k)
                .filter(|&j| values[j] > 1e-12 * values[0].max(1e-300))
                .map(|j| vectors[i][j] * (0..k).map(|m| vectors[m][j] * gtc[m]).sum::<f64>() / values[j])
                .sum()
        })
        .collect()
}

/// Eigen-decomposition of a symmetric matrix by cyclic Jacobi rotations: eigenvalues largest
/// first, and the matrix whose column j is the unit eigenvector of eigenvalue j.
pub fn symmetric_eigen(m: &[Vec<f64>]) -> (Vec<f64>, Vec<Vec<f64>>) {
    let n = m.len();
    let mut a: Vec<Vec<f64>> = m.to_vec();
    let mut v: Vec<Vec<f64>> = (0..n).map(|i| (0..n).map(|j| (i == j) as u8 as f64).collect()).collect();
    for _sweep in 0..100 {
        let off: f64 = (0..n).flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j))).map(|(i, j)| a[i][j] * a[i][j]).sum();
        let scale: f64 = (0..n).map(|i| a[i][i] * a[i][i]).sum::<f64>().max(1e-300);
        if off <= 1e-30 * scale {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                if a[p][q].abs() < 1e-300 {
                    continue;
                }
                let theta = (a[q][q] - a[p][p]) / (2.0 * a[p][q]);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let (c, s) = (1.0 / (t * t + 1.0).sqrt(), t / (t * t + 1.0).sqrt());
                for k in 0..n {
                    let (akp, akq) = (a[k][p], a[k][q]);
                    a[k][p] = c * akp - s * akq;
                    a[k][q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p][k], a[q][k]);
                    a[p][k] = c * apk - s * aqk;
                    a[q][k] = s * apk + c * aqk;
                }
                for row in v.iter_mut() {
                    let (vkp, vkq) = (row[p], row[q]);
                    row[p] = c * vkp - s * vkq;
                    row[q] = s * vkp + c * vkq;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| a[j][j].total_cmp(&a[i][i]));
    let values = order.iter().map(|&i| a[i][i]).collect();
    let vectors = (0..n).map(|r| order.iter().map(|&i| v[r][i]).collect()).collect();
    (values, vectors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jacobi_recovers_a_known_decomposition() {
        // M = Q diag(5, 2, 0.5) Q^T for a rotation Q
        let (c, s) = (0.6f64, 0.8f64);
        let q = [[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]];
        let d = [2.0, 5.0, 0.5];
        let m: Vec<Vec<f64>> = (0..3).map(|i| (0..3).map(|j| (0..3).map(|k| q[i][k] * d[k] * q[j][k]).sum()).collect()).collect();
        let (values, vectors) = symmetric_eigen(&m);
        for (got, want) in values.iter().zip([5.0, 2.0, 0.5]) {
            assert!((got - want).abs() < 1e-10, "{values:?}");
        }
        // the top eigenvector is Q's second column, up to sign
        let dot: f64 = (0..3).map(|i| vectors[i][0] * q[i][1]).sum();
        assert!((dot.abs() - 1.0).abs() < 1e-10, "{vectors:?}");
        // M v = lambda v for every pair
        for j in 0..3 {
            for i in 0..3 {
                let mv: f64 = (0..3).map(|k| m[i][k] * vectors[k][j]).sum();
                assert!((mv - values[j] * vectors[i][j]).abs() < 1e-10);
            }
        }
    }

    #[test]
    fn least_squares_fits_the_column_space() {
        let g = vec![vec![1.0, 0.0], vec![0.0, 2.0], vec![0.0, 0.0]];
        let s = least_squares(&g, &[3.0, 4.0, 7.0]);
        assert!((s[0] - 3.0).abs() < 1e-12 && (s[1] - 2.0).abs() < 1e-12, "{s:?}");
    }

    #[test]
    fn composed_convs_equal_the_two_in_turn() -> Result<()> {
        let device = Device::Cpu;
        let mut rng = crate::train::flow::TrainRng::new(5);
        let w = rng.gaussian(&[4, 3, 1, 2, 2], &device)?;
        let bias = rng.gaussian(&[4], &device)?;
        let x = rng.gaussian(&[3, 2, 2], &device)?;
        // one tap position: conv output = sum over taps of w[o, c, tap] x[c, tap]
        let conv = |w: &Tensor, b: &Tensor, x: &Tensor| -> Result<Vec<f32>> {
            let o = w.dim(0)?;
            Ok((w.reshape((o, ()))?.matmul(&x.flatten_all()?.unsqueeze(1)?)?.squeeze(1)? + b)?.to_vec1::<f32>()?)
        };
        let rows = vec![vec![1.0, 0.5, 0.0, -1.0], vec![0.0, 2.0, 1.0, 0.0]];
        let (w2, b2) = compose_output(&rows, &[0.25, -0.5], &w, &bias)?;
        let inner = conv(&w, &bias, &x)?;
        let got = conv(&w2, &b2, &x)?;
        for (j, row) in rows.iter().enumerate() {
            let want: f64 = row.iter().zip(&inner).map(|(r, v)| r * *v as f64).sum::<f64>() + [0.25, -0.5][j];
            assert!((got[j] as f64 - want).abs() < 1e-4, "{got:?}");
        }
        // input side: conv(w, G y + r) = conv(w', y) with r in the bias
        let g = vec![vec![1.0, 0.0], vec![0.5, -1.0], vec![0.0, 2.0]];
        let r = [0.1, -0.2, 0.3];
        let y = rng.gaussian(&[2, 2, 2], &device)?;
        let gm = Tensor::new(g.iter().map(|row| row.iter().map(|&v| v as f32).collect::<Vec<_>>()).collect::<Vec<_>>(), &device)?;
        let rt = Tensor::new(r.iter().map(|&v| v as f32).collect::<Vec<_>>(), &device)?.reshape((3, 1, 1))?;
        let fed = (gm.matmul(&y.reshape((2, 4))?)?.reshape((3, 2, 2))?.broadcast_add(&rt))?;
        let (w3, b3) = compose_input(&w, &bias, &g, &r)?;
        let want = conv(&w, &bias, &fed)?;
        let got = conv(&w3, &b3, &y)?;
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() < 1e-4, "{got:?} vs {want:?}");
        }
        Ok(())
    }
}
