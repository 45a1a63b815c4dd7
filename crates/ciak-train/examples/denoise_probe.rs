//! Does the DiT know objects? For held-out scenes: encode the rendered clip with the model's VAE,
//! noise the latent to sigma, predict x0 = x_t - sigma * v with the scene's caption (one
//! forward, no guidance), decode, and write the frames (rendered on top, then one row per sigma).
//! A model that restores the objects at mid noise but never draws them when sampling from pure
//! noise has a sampling problem; one that blurs them away has not learned them.
//!
//!   cargo run --release -p ciak-train --example denoise_probe -- MODEL_DIR OUT_DIR [CLIPS] [SIGMAS]
//!
//! SIGMAS: comma-separated noise levels, default 0.3,0.6,0.9 (1 shows what the model expects of
//! the caption alone).
use candle_core::{Device, Tensor};
use ciak_engine::model_dir::WanModelDir;
use ciak_engine::pipeline::{LoadOptions, WanPipeline};
use ciak_train::preview::write_png;
use ciak_train::train::flow::TrainRng;
use ciak_train::train::vae::{clip_tensor, eval_scene, frames_rgb8};
use ciak_train::{canonical_caption, render};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (model, out) = (std::path::PathBuf::from(&args[1]), std::path::PathBuf::from(&args[2]));
    let clips: u64 = args.get(3).map(|s| s.parse().unwrap()).unwrap_or(3);
    std::fs::create_dir_all(&out).unwrap();
    let dev = Device::Cpu;
    let pipe = WanPipeline::load(&WanModelDir::open(&model).unwrap(), &LoadOptions::default()).unwrap();
    let sigmas: Vec<f64> = match args.get(4) {
        Some(list) => list.split(',').map(|s| s.parse().expect("SIGMAS: comma-separated numbers")).collect(),
        None => vec![0.3, 0.6, 0.9],
    };
    for i in 0..clips {
        let scene = eval_scene(1, i);
        let caption = canonical_caption(&scene);
        let clip = render(&scene);
        let x = clip_tensor(&clip, &dev).unwrap();
        let (mean, _) = pipe.vae.encode(&x).unwrap();
        let z = pipe.vae.normalize_latents(&mean).unwrap();
        let ctx = pipe.text_encoder.encode(&[caption.clone()]).unwrap().prompt_embeds;
        let noise = TrainRng::new(i).gaussian(z.dims(), &dev).unwrap();
        let mut rows = vec![frames_rgb8(&x).unwrap()];
        for &s in &sigmas {
            let xt = ((&z * (1.0 - s)).unwrap() + (&noise * s).unwrap()).unwrap();
            let t = Tensor::new(&[(s * 1000.0) as f32], &dev).unwrap();
            let v = pipe.transformer.forward(&xt, &t, &ctx, None).unwrap();
            let x0 = (&xt - (v * s).unwrap()).unwrap();
            let mse = (&x0 - &z).unwrap().sqr().unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap();
            println!("clip {i} sigma {s}: latent MSE of the x0 prediction {mse:.4}  ({caption})");
            let dec = pipe.vae.decode(&pipe.vae.denormalize_latents(&x0).unwrap()).unwrap();
            rows.push(frames_rgb8(&dec).unwrap());
        }
        let (w, h, t) = (clip.width, clip.height, clip.frames);
        let picks = [0, t / 2, t - 1];
        let sw = picks.len() * w;
        let mut img = vec![0u8; sw * rows.len() * h * 3];
        for (r, src) in rows.iter().enumerate() {
            for (k, &f) in picks.iter().enumerate() {
                for y in 0..h {
                    let s0 = (f * h + y) * w * 3;
                    let d = ((r * h + y) * sw + k * w) * 3;
                    img[d..d + w * 3].copy_from_slice(&src[s0..s0 + w * 3]);
                }
            }
        }
        write_png(&out.join(format!("probe-{i}.png")), sw, rows.len() * h, &img).unwrap();
    }
}
