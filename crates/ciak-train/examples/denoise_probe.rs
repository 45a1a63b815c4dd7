//! Does the DiT know objects? For held-out scenes: encode the rendered clip with the model's VAE,
//! noise the latent to sigma, predict x0 = x_t - sigma * v with the scene's caption (one
//! forward, no guidance), decode, and write the frames (rendered on top, then one row per sigma).
//! A model that restores the objects at mid noise but never draws them when sampling from pure
//! noise has a sampling problem; one that blurs them away has not learned them.
//!
//!   cargo run --release -p ciak-train --example denoise_probe -- MODEL_DIR OUT_DIR [CLIPS] [SIGMAS]
//!       [SAMPLE_STEPS [GUIDANCE [GUIDE_BELOW]]]
//!
//! SIGMAS: comma-separated noise levels, default 0.3,0.6,0.9 (1 shows what the model expects of
//! the caption alone).
//!
//! SAMPLE_STEPS (optional, after SIGMAS): instead of one x0 prediction, sample from the noised
//! clip down to sigma 0 in that many Euler steps with classifier-free guidance GUIDANCE (default
//! 5; the empty caption as the unconditional branch), as image-to-video strength would: does the
//! sampler keep an object it is given at that noise level, or erase it? GUIDE_BELOW: guidance only
//! at noise levels under it (a guidance interval), the conditional prediction alone above.
//!
//! Options before the positional arguments: `--world FILE` draws the scenes from that world (a
//! JSON object of `SamplerConfig` fields, as `ciak train latents --world` takes) instead of the
//! default one; `--train SEED` probes training scenes (item i of the latent cache made with SEED,
//! the scenes the DiT learned from) instead of held-out ones.
//!
//! Every decoded clip (the VAE round trip of the rendered clip, then each sigma's) is also read by
//! `ciak eval`'s analyzer and scored against the scene's caption; the table at the end gives, per
//! row, the share of objects whose colour, shape and motion are right and of right backgrounds.
//! Where shape is right in the round trip and at sigma 0.3 but not at 0.6, the DiT loses shape at
//! mid noise; where it is wrong at every sigma, the DiT does not draw shapes at all.
use candle_core::{Device, Tensor};
use ciak_engine::model_dir::WanModelDir;
use ciak_engine::pipeline::{LoadOptions, WanPipeline};
use ciak_train::preview::write_png;
use ciak_train::train::flow::TrainRng;
use ciak_train::eval::{analyze, score, summarize, Expected, PromptScore};
use ciak_train::train::vae::{clip_tensor, eval_scene_in, frames_rgb8};
use ciak_train::{canonical_caption, render, Clip};

fn main() {
    let mut args: Vec<String> = std::env::args().collect();
    let mut world = ciak_train::SamplerConfig::default();
    let mut train_seed: Option<u64> = None;
    while args.len() > 2 && args[1].starts_with("--") {
        let value = args.remove(2);
        match args.remove(1).as_str() {
            "--world" => {
                let text = std::fs::read_to_string(&value).expect("--world: a readable JSON file");
                world = ciak_train::SamplerConfig::from_json(&serde_json::from_str(&text).expect("--world: JSON"))
                    .expect("--world: SamplerConfig fields");
            }
            "--train" => train_seed = Some(value.parse().expect("--train: a seed")),
            other => panic!("unknown option {other}: expected --world FILE or --train SEED"),
        }
    }
    let (model, out) = (std::path::PathBuf::from(&args[1]), std::path::PathBuf::from(&args[2]));
    let clips: u64 = args.get(3).map(|s| s.parse().unwrap()).unwrap_or(3);
    std::fs::create_dir_all(&out).unwrap();
    let dev = Device::Cpu;
    let pipe = WanPipeline::load(&WanModelDir::open(&model).unwrap(), &LoadOptions::default()).unwrap();
    let sigmas: Vec<f64> = match args.get(4) {
        Some(list) => list.split(',').map(|s| s.parse().expect("SIGMAS: comma-separated numbers")).collect(),
        None => vec![0.3, 0.6, 0.9],
    };
    let sample_steps: Option<usize> = args.get(5).map(|s| s.parse().expect("SAMPLE_STEPS: a whole number"));
    let guidance: f64 = args.get(6).map(|s| s.parse().expect("GUIDANCE: a number")).unwrap_or(5.0);
    // guidance only below this noise level (a guidance interval); above it the conditional alone
    let guide_below: f64 = args.get(7).map(|s| s.parse().expect("GUIDE_BELOW: a number")).unwrap_or(f64::INFINITY);
    let uncond = pipe.text_encoder.encode(&[String::new()]).unwrap().prompt_embeds;
    // per row (round trip, then each sigma): (object count, score, flicker) of every clip
    let mut scores: Vec<Vec<_>> = vec![Vec::new(); sigmas.len() + 1];
    for i in 0..clips {
        let scene = match train_seed {
            Some(seed) => ciak_train::sample(seed, i, &world, ciak_train::Split::Train).scene,
            None => eval_scene_in(1, i, &world),
        };
        let caption = canonical_caption(&scene);
        let clip = render(&scene);
        let x = clip_tensor(&clip, &dev).unwrap();
        let (mean, _) = pipe.vae.encode(&x).unwrap();
        let z = pipe.vae.normalize_latents(&mean).unwrap();
        let ctx = pipe.text_encoder.encode(&[caption.clone()]).unwrap().prompt_embeds;
        let noise = TrainRng::new(i).gaussian(z.dims(), &dev).unwrap();
        let mut rows = vec![frames_rgb8(&x).unwrap()];
        let expected = Expected::of_caption(&scene, &caption);
        let mut read = |row: usize, frames: &[u8]| {
            let decoded = Clip { width: clip.width, height: clip.height, frames: clip.frames, fps: clip.fps, pixels: frames.to_vec() };
            let n = scene.objects.len();
            let analysis = analyze(&decoded, n);
            let s: PromptScore = score(&expected, &analysis, clip.frames);
            scores[row].push((n, s, analysis.flicker));
        };
        read(0, &frames_rgb8(&pipe.vae.decode(&mean).unwrap()).unwrap());
        for &s in &sigmas {
            let xt = ((&z * (1.0 - s)).unwrap() + (&noise * s).unwrap()).unwrap();
            let t = Tensor::new(&[(s * 1000.0) as f32], &dev).unwrap();
            let x0 = match sample_steps {
                None => {
                    let v = pipe.transformer.forward(&xt, &t, &ctx, None).unwrap();
                    (&xt - (v * s).unwrap()).unwrap()
                }
                Some(n) => {
                    // flow matching: x_s = (1 - s) x0 + s noise, dx/ds = v = noise - x0
                    let mut x = xt.clone();
                    for k in 0..n {
                        let (from, to) = (s * (n - k) as f64 / n as f64, s * (n - k - 1) as f64 / n as f64);
                        let t = Tensor::new(&[(from * 1000.0) as f32], &dev).unwrap();
                        let vc = pipe.transformer.forward(&x, &t, &ctx, None).unwrap();
                        let v = if from < guide_below {
                            let vu = pipe.transformer.forward(&x, &t, &uncond, None).unwrap();
                            (&vu + ((vc - &vu).unwrap() * guidance).unwrap()).unwrap()
                        } else {
                            vc
                        };
                        x = (x + (v * (to - from)).unwrap()).unwrap();
                    }
                    x
                }
            };
            let mse = (&x0 - &z).unwrap().sqr().unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap();
            let what = if sample_steps.is_some() { "the sample" } else { "the x0 prediction" };
            println!("clip {i} sigma {s}: latent MSE of {what} {mse:.4}  ({caption})");
            let dec = pipe.vae.decode(&pipe.vae.denormalize_latents(&x0).unwrap()).unwrap();
            rows.push(frames_rgb8(&dec).unwrap());
            read(rows.len() - 1, rows.last().unwrap());
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
    println!("\nread by the eval's analyzer, {clips} clips (objects of every count pooled with single ones):");
    println!("{:<12} {:>7} {:>7} {:>7} {:>11} {:>8}", "row", "colour", "shape", "motion", "background", "flicker");
    for (row, results) in scores.iter().enumerate() {
        // score every object as if single, so clips of any object count pool into one accuracy
        let pooled: Vec<_> = results
            .iter()
            .flat_map(|(_, s, f)| s.objects.iter().map(move |o| (1, PromptScore { objects: vec![*o], ..s.clone() }, f.clone())))
            .collect();
        let a = summarize(&pooled);
        let name = if row == 0 { "round trip".to_string() } else { format!("sigma {}", sigmas[row - 1]) };
        let pct = |v: f64| format!("{:.1}%", 100.0 * v);
        println!(
            "{name:<12} {:>7} {:>7} {:>7} {:>11} {:>8.2}",
            pct(a.single.color),
            pct(a.single.shape),
            pct(a.single.motion),
            pct(a.single.background),
            a.flicker_mean
        );
    }
}
