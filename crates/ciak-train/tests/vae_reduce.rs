//! `reduce_vae`: a VAE with the top principal components of another's latents as its channels.
use candle_core::{DType, Device, IndexOp, Tensor};
use ciak_train::train::latents::load_vae;
use ciak_train::train::vae::{clip_tensor, latent_moments};
use ciak_train::train::vae_reduce::reduce_vae;
use ciak_train::{render, sample, SamplerConfig, Split};
use std::path::PathBuf;

/// The parity fixtures' tiny VAE (base_dim 8, 16 latent channels).
fn fixture_vae() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-wan/vae");
    assert!(path.join("config.json").is_file(), "missing fixture {} (see tests/fixtures/README.md)", path.display());
    path
}

fn rms(t: &Tensor) -> f64 {
    t.sqr().unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap().sqrt() as f64
}

#[test]
fn reduced_vae_encodes_the_principal_components_and_decodes_them_back() {
    let dev = Device::Cpu;
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("vae4");
    let (k, clips, seed) = (4, 2, 1);
    let summary = reduce_vae(&fixture_vae(), k, clips, seed, &out).unwrap();
    assert_eq!(summary.eigenvalues.len(), 16);
    assert!(summary.eigenvalues.windows(2).all(|w| w[0] >= w[1]), "{:?}", summary.eigenvalues);
    let total: f64 = summary.eigenvalues.iter().sum();
    assert!((summary.kept_variance - summary.eigenvalues[..k].iter().sum::<f64>() / total).abs() < 1e-9);

    let old = load_vae(&fixture_vae(), &dev).unwrap();
    let new = load_vae(&out, &dev).unwrap();
    let cfg = new.config();
    assert_eq!(cfg.z_dim, k);
    assert_eq!(cfg.latents_mean, vec![0.0; k]);
    for (s, l) in cfg.latents_std.iter().zip(&summary.eigenvalues) {
        assert!((s * s - l).abs() < 1e-9 * l.max(1.0), "std {s} against eigenvalue {l}");
    }

    // over the clips it was fitted on, the new latents are uncorrelated with variances lambda_j
    let (mean, cov) = latent_moments(&new, seed, clips).unwrap().mean_and_covariance();
    let top = summary.eigenvalues[0];
    for i in 0..k {
        assert!(mean[i].abs() < 1e-3 * top.sqrt(), "mean {mean:?}");
        for j in 0..k {
            let want = if i == j { summary.eigenvalues[i] } else { 0.0 };
            assert!((cov[i][j] - want).abs() < 1e-3 * top, "cov[{i}][{j}] = {}, want {want}", cov[i][j]);
        }
    }

    // the encoder is the projection of the old posterior mean, cell by cell
    let scene = sample(99, 0, &SamplerConfig::default(), Split::Train).scene;
    let x = clip_tensor(&render(&scene), &dev).unwrap();
    let (mu_old, _) = old.encode(&x).unwrap();
    let (y, logvar) = new.encode(&x).unwrap();
    assert_eq!(y.dims()[1], k);
    assert_eq!(logvar.dims(), y.dims());
    let to_tensor = |m: &Vec<Vec<f64>>| {
        let rows: Vec<Vec<f32>> = m.iter().map(|r| r.iter().map(|&v| v as f32).collect()).collect();
        Tensor::new(rows, &dev).unwrap()
    };
    let a = to_tensor(&summary.projection);
    assert_eq!((a.dims(), summary.reconstruction.len(), summary.reconstruction[0].len()), (&[k, 16][..], 16, k));
    let mean_t = Tensor::new(summary.mean.iter().map(|&v| v as f32).collect::<Vec<_>>(), &dev).unwrap().reshape((16, 1)).unwrap();
    let cells = mu_old.i(0).unwrap().flatten_from(1).unwrap().to_dtype(DType::F32).unwrap();
    let want = a.matmul(&cells.broadcast_sub(&mean_t).unwrap()).unwrap();
    let got = y.i(0).unwrap().flatten_from(1).unwrap();
    let err = rms(&(&got - &want).unwrap());
    assert!(err < 1e-4 * rms(&want).max(1.0), "encoder off by {err} (rms {})", rms(&want));

    assert!(summary.constant_residual <= summary.constant + 1e-9, "{} of {}", summary.constant_residual, summary.constant);
}

/// The fixture VAE with `post_quant_conv.bias` set so that the decoder's constant input
/// `W_pq mean + b_pq` is 0: then nothing is folded into `conv_in`'s bias and the reduced decoder
/// must equal the old one on `mean + B y` everywhere, borders and first frame included.
#[test]
fn reduced_decoder_is_the_old_one_on_the_reconstruction() {
    let dev = Device::Cpu;
    let tmp = tempfile::tempdir().unwrap();
    let (k, clips, seed) = (4, 2, 1);
    let first = reduce_vae(&fixture_vae(), k, clips, seed, &tmp.path().join("first")).unwrap();
    let centred = tmp.path().join("centred");
    std::fs::create_dir_all(&centred).unwrap();
    std::fs::copy(fixture_vae().join("config.json"), centred.join("config.json")).unwrap();
    let mut weights = ciak_train::train::vae::folder_weights(&fixture_vae(), &dev).unwrap();
    let w_pq = weights["post_quant_conv.weight"].to_dtype(DType::F32).unwrap().reshape((16, 16)).unwrap();
    let mean_t = Tensor::new(first.mean.iter().map(|&v| v as f32).collect::<Vec<_>>(), &dev).unwrap().reshape((16, 1)).unwrap();
    let bias = w_pq.matmul(&mean_t).unwrap().neg().unwrap().squeeze(1).unwrap();
    weights.insert("post_quant_conv.bias".into(), bias);
    candle_core::safetensors::save(&weights, centred.join("diffusion_pytorch_model.safetensors")).unwrap();

    let out = tmp.path().join("vae4");
    let summary = reduce_vae(&centred, k, clips, seed, &out).unwrap();
    assert!(summary.constant_residual < 1e-5, "constant residual {}", summary.constant_residual);
    let old = load_vae(&centred, &dev).unwrap();
    let new = load_vae(&out, &dev).unwrap();
    let mut rng = ciak_train::train::flow::TrainRng::new(3);
    let y = (rng.gaussian(&[1, k, 3, 4, 6], &dev).unwrap() * 2.0).unwrap();
    let b = Tensor::new(
        summary.reconstruction.iter().map(|r| r.iter().map(|&v| v as f32).collect::<Vec<_>>()).collect::<Vec<_>>(),
        &dev,
    )
    .unwrap();
    let back = b.matmul(&y.i(0).unwrap().flatten_from(1).unwrap()).unwrap().broadcast_add(&mean_t).unwrap().reshape((1, 16, 3, 4, 6)).unwrap();
    let old_frames = old.decode(&back).unwrap();
    let new_frames = new.decode(&y).unwrap();
    let diff = rms(&(&new_frames - &old_frames).unwrap());
    assert!(diff < 1e-4, "decoders differ by {diff} (frames rms {})", rms(&old_frames));
}

#[test]
fn reduce_vae_refuses_a_channel_count_it_cannot_make() {
    let tmp = tempfile::tempdir().unwrap();
    for bad in [0, 16, 20] {
        let err = reduce_vae(&fixture_vae(), bad, 1, 1, &tmp.path().join("x")).unwrap_err().to_string();
        assert!(err.contains("expected a z_dim from 1 to 15"), "{err}");
        assert!(err.contains(&format!("got {bad}")), "{err}");
        assert!(!tmp.path().join("x").exists());
    }
}
