//! Reconstructions of held-out clips by a trained VAE, to look at: for each clip a PNG with the
//! rendered frames on top and the VAE's encode -> decode below, plus per-frame PSNR on stdout.
//!
//!   cargo run --release -p ciak-train --example vae_recon -- VAE_DIR OUT_DIR [CLIPS] [SEED]
use candle_core::{DType, Device, Tensor};
use ciak_train::preview::write_png;
use ciak_train::render;
use ciak_train::train::latents::load_vae;
use ciak_train::train::vae::{clip_tensor, eval_scene, frames_rgb8};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (vae_dir, out) = (std::path::PathBuf::from(&args[1]), std::path::PathBuf::from(&args[2]));
    let clips: u64 = args.get(3).map(|s| s.parse().unwrap()).unwrap_or(4);
    let seed: u64 = args.get(4).map(|s| s.parse().unwrap()).unwrap_or(1);
    std::fs::create_dir_all(&out).unwrap();
    let vae = load_vae(&vae_dir, &Device::Cpu).unwrap();
    for i in 0..clips {
        let scene = eval_scene(seed, i);
        let clip = render(&scene);
        let x = clip_tensor(&clip, &Device::Cpu).unwrap();
        for (cw, ch) in [(64usize, 64usize), (128, 64), (128, 128)] {
            let xc = x.narrow(3, 0, ch).unwrap().narrow(4, 0, cw).unwrap().contiguous().unwrap();
            let (m, _) = vae.encode(&xc).unwrap();
            let r = vae.decode(&m).unwrap().to_dtype(DType::F32).unwrap();
            let mse = (r.clamp(-1f32, 1f32).unwrap() - &xc).unwrap().sqr().unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap() / 4.0;
            println!("clip {i} crop {cw}x{ch}: PSNR {:.1}", -10.0 * (mse as f64).log10());
        }
        let (mean, logvar) = vae.encode(&x).unwrap();
        let f = |t: &Tensor| t.flatten_all().unwrap().to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap();
        let (m, lv) = (f(&mean), f(&logvar));
        let rms = (m.iter().map(|v| v * v).sum::<f32>() / m.len() as f32).sqrt();
        let std_mean = lv.iter().map(|v| (v / 2.0).exp()).sum::<f32>() / lv.len() as f32;
        println!("clip {i}: posterior mean rms {rms:.4}, posterior std (mean) {std_mean:.4}, logvar range {:.2}..{:.2}",
            lv.iter().cloned().fold(f32::INFINITY, f32::min), lv.iter().cloned().fold(f32::NEG_INFINITY, f32::max));
        let rec = vae.decode(&mean).unwrap().to_dtype(DType::F32).unwrap();
        let (w, h, t) = (clip.width, clip.height, clip.frames);
        let (a, b) = (frames_rgb8(&x).unwrap(), frames_rgb8(&rec).unwrap());
        let per_frame: Vec<String> = (0..t)
            .map(|f| {
                let r = f * h * w * 3..(f + 1) * h * w * 3;
                let mse = a[r.clone()].iter().zip(&b[r]).map(|(p, q)| (*p as f64 - *q as f64).powi(2)).sum::<f64>()
                    / (h * w * 3) as f64;
                format!("{:.1}", 10.0 * (255.0f64 * 255.0 / mse.max(1e-9)).log10())
            })
            .collect();
        println!("clip {i} ({w}x{h}): PSNR per frame {}", per_frame.join(" "));
        let picks = [0, t / 4, t / 2, 3 * t / 4, t - 1];
        let sw = picks.len() * w;
        let mut img = vec![0u8; sw * 2 * h * 3];
        for (row, src) in [&a, &b].into_iter().enumerate() {
            for (k, &f) in picks.iter().enumerate() {
                for y in 0..h {
                    let s = (f * h + y) * w * 3;
                    let d = ((row * h + y) * sw + k * w) * 3;
                    img[d..d + w * 3].copy_from_slice(&src[s..s + w * 3]);
                }
            }
        }
        write_png(&out.join(format!("recon-{i}.png")), sw, 2 * h, &img).unwrap();
    }
}
