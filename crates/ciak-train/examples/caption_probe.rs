//! How much does the caption steer a model? For held-out scenes, noises their latents to a few
//! sigmas and compares the DiT's x0 prediction with the scene's own caption, another scene's
//! caption and the empty caption. A model that follows its text predicts x0 much better with
//! the right caption at high noise, where the noisy latent says little.
//!
//! It also splits the x0 error on the objects' latent cells by latent frame, for scenes whose
//! first object moves and for those whose objects stay still: where a model draws the first
//! frame (encoded alone, like an image) and not the frames that pack motion, the moving row rises
//! after frame 0 and the still row does not. A third row gives the moving scenes' error with the
//! first object's direction reversed in the caption ("left" for "right", "grows" for "shrinks"):
//! a model that reads the motion words is worse there on the later frames.
//!
//! `cargo run --release -p ciak-train --example caption_probe -- MODEL_DIR [CLIPS] [WORLD.json]`
//!
//! WORLD.json (as `ciak train latents --world`) draws the held-out scenes from a narrowed world,
//! e.g. the one the model trained on; default: the whole world.
//!
//! `PROBE_CLEAN_FIRST=1` gives the model every scene's first latent frame clean, at timestep 0
//! (`flow::condition_first_frames`, what image-first sampling and `first_frame_share` training
//! do): the later frames' rows then show how well the model carries a given first frame on.
use candle_core::{Device, Tensor};
use ciak_engine::model_dir::WanModelDir;
use ciak_engine::pipeline::{LoadOptions, WanPipeline};
use ciak_train::train::flow::{condition_first_frames, flow_batch, FlowBatch, TrainRng};
use ciak_train::train::foreground::foreground_mask;
use ciak_train::train::vae::{clip_tensor, eval_scene_in};
use ciak_train::world::scene::Motion;
use ciak_train::{canonical_caption, render, SamplerConfig};

fn mean_square(t: &Tensor) -> f32 {
    t.sqr().unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap()
}

fn mse(a: &Tensor, b: &Tensor) -> f32 {
    mean_square(&(a - b).unwrap())
}

/// Each channel's mean over frames, height and width: [B, C, F, H, W] -> [B, C, 1, 1, 1].
fn clip_mean(t: &Tensor) -> Tensor {
    t.mean_keepdim(4).unwrap().mean_keepdim(3).unwrap().mean_keepdim(2).unwrap()
}

/// The opposite motion, where there is one (straight lines, grow and shrink).
fn reverse(motion: Motion) -> Option<Motion> {
    use Motion::*;
    Some(match motion {
        Left => Right,
        Right => Left,
        Up => Down,
        Down => Up,
        UpLeft => DownRight,
        DownRight => UpLeft,
        UpRight => DownLeft,
        DownLeft => UpRight,
        Grow => Shrink,
        Shrink => Grow,
        Bounce | Still | Spin => return None,
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let model = std::path::PathBuf::from(&args[1]);
    let clips: u64 = args.get(2).map(|s| s.parse().unwrap()).unwrap_or(6);
    let dev = Device::Cpu;
    let pipe = WanPipeline::load(&WanModelDir::open(&model).unwrap(), &LoadOptions::default()).unwrap();
    let world = match args.get(3) {
        Some(path) => {
            let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
            SamplerConfig::from_json(&serde_json::from_str(&text).unwrap()).unwrap_or_else(|e| panic!("{path}: {e}"))
        }
        None => SamplerConfig::default(),
    };
    let clean_first = std::env::var("PROBE_CLEAN_FIRST").is_ok_and(|v| v == "1");
    let [_, ph, pw] = pipe.transformer.config().patch_size;
    // the trainer's own noising: x_s = (1 - s) x0 + s noise, timestep s * 1000 (frame 0 clean
    // and at timestep 0 with PROBE_CLEAN_FIRST)
    let noised = |z: &Tensor, n: &Tensor, s: f32| -> FlowBatch {
        let fb = flow_batch(z, n, &[s]).unwrap();
        if !clean_first {
            return fb;
        }
        let tokens = (z.dim(3).unwrap() / ph) * (z.dim(4).unwrap() / pw);
        condition_first_frames(fb, z, &[true], tokens).unwrap().0
    };
    if clean_first {
        println!("first latent frame given clean (timestep 0) in every x0 prediction below; its own column (0) means nothing then");
    }
    let scenes: Vec<_> = (0..clips).map(|i| eval_scene_in(1, i, &world)).collect();
    let captions: Vec<String> = scenes.iter().map(canonical_caption).collect();
    let embeds: Vec<Tensor> =
        captions.iter().map(|c| pipe.text_encoder.encode(&[c.clone()]).unwrap().prompt_embeds).collect();
    let empty = pipe.text_encoder.encode(&[String::new()]).unwrap().prompt_embeds;
    println!("text embeddings: mean square {:.4}; caption 0 vs 1 differ by {:.4}, caption 0 vs empty by {:.4}",
        mean_square(&embeds[0]), mse(&embeds[0], &embeds[1 % embeds.len()]), mse(&embeds[0], &empty));
    // does the encoder bind words? swapping two colours changes the "ball" (2) and "background"
    // (8) tokens only if they see their neighbours (a bag of words leaves them as they are)
    let swap: Vec<Tensor> = ["a red ball moves right on a blue background", "a blue ball moves right on a red background"]
        .iter()
        .map(|c| pipe.text_encoder.encode(&[c.to_string()]).unwrap().prompt_embeds.squeeze(0).unwrap())
        .collect();
    let rel = |i: usize| mse(&swap[0].get(i).unwrap(), &swap[1].get(i).unwrap()) / mean_square(&swap[0].get(i).unwrap());
    println!("colours swapped between ball and background: relative change of the ball token {:.4}, background token {:.4}", rel(2), rel(8));
    let mut sums = [[0f32; 3]; 5];
    // the same, on each channel's clip-wide mean only (the background; noise-copy errors average out)
    let mut mean_sums = [[0f32; 3]; 5];
    // baselines: predicting zeros, and predicting each channel's clip-wide mean (what a model that
    // knew the background from the caption alone could reach at sigma 1)
    let mut baselines = [0f32; 3];
    // per scene at sigma 1: background error with its own and with the other caption
    let mut scene_rows = vec![[0f32; 2]; scenes.len()];
    // at sigma 1 with the own caption, over two noise draws: half the mean square difference of
    // the two x0 predictions (the part that follows the noise: leaked noise, which an exact model
    // does not have, since E[x0 | caption] does not depend on it) and the error of their average
    let mut leak = [0f32; 2];
    let sigmas = [0.3f64, 0.7, 0.95, 0.99, 1.0];
    // x0 error with the own caption per latent frame (frame 0 is the first video frame alone)
    let mut frame_sums: Vec<Vec<f32>> = vec![Vec::new(); sigmas.len()];
    // the same on the objects' cells only: [moving, still, one-way movers (own caption), the same
    // with the direction reversed in the caption][sigma] -> (error sum, cell count) per frame
    let mut object_sums: [Vec<Vec<(f32, f32)>>; 4] = std::array::from_fn(|_| vec![Vec::new(); sigmas.len()]);
    let mut object_scenes = [0usize; 4];
    for (i, scene) in scenes.iter().enumerate() {
        // same-shape other scene for the wrong caption
        let other = (1..scenes.len()).map(|k| (i + k) % scenes.len()).find(|&j| scenes[j].aspect == scene.aspect);
        let wrong = other.map(|j| &embeds[j]).unwrap_or(&empty);
        let x = clip_tensor(&render(scene), &dev).unwrap();
        let (mean, _) = pipe.vae.encode(&x).unwrap();
        let z = pipe.vae.normalize_latents(&mean).unwrap();
        let z_mean = clip_mean(&z);
        baselines[0] += mean_square(&z) / clips as f32;
        baselines[1] += mse(&z, &z_mean.broadcast_as(z.shape()).unwrap()) / clips as f32;
        baselines[2] += mean_square(&z_mean) / clips as f32;
        let noise = TrainRng::new(i as u64).gaussian(z.dims(), &dev).unwrap();
        let (lf, lh, lw) = (z.dim(2).unwrap(), z.dim(3).unwrap(), z.dim(4).unwrap());
        let mask = Tensor::from_vec(foreground_mask(scene, lf, lh, lw).unwrap(), (1, 1, lf, lh, lw), &dev).unwrap();
        let kind = usize::from(scene.objects.first().is_none_or(|o| o.motion == Motion::Still));
        object_scenes[kind] += 1;
        let reversed = scene.objects.first().and_then(|o| reverse(o.motion)).map(|motion| {
            let mut flipped = scene.clone();
            flipped.objects[0].motion = motion;
            object_scenes[2] += 1;
            object_scenes[3] += 1;
            pipe.text_encoder.encode(&[canonical_caption(&flipped)]).unwrap().prompt_embeds
        });
        // adds x0's squared error on the objects' cells, per latent frame, to `row`
        let channels = z.dim(1).unwrap() as f32;
        let add_object_error = |row: &mut Vec<(f32, f32)>, x0: &Tensor| {
            row.resize(row.len().max(lf), (0.0, 0.0));
            let err = (x0 - &z).unwrap().sqr().unwrap().sum_keepdim(1).unwrap();
            let sum = |t: &Tensor| t.sum_all().unwrap().to_scalar::<f32>().unwrap();
            for (f, acc) in row.iter_mut().enumerate().take(lf) {
                let m = mask.narrow(2, f, 1).unwrap();
                acc.0 += sum(&(err.narrow(2, f, 1).unwrap() * &m).unwrap());
                acc.1 += sum(&m) * channels;
            }
        };
        let pure: Vec<Tensor> = [i as u64, 1000 + i as u64]
            .iter()
            .map(|&seed| {
                let n = TrainRng::new(seed).gaussian(z.dims(), &dev).unwrap();
                let fb = noised(&z, &n, 1.0);
                let v = pipe.transformer.forward(&fb.noisy, &fb.timesteps, &embeds[i], None).unwrap();
                (&fb.noisy - v).unwrap()
            })
            .collect();
        leak[0] += mse(&pure[0], &pure[1]) / 2.0 / clips as f32;
        leak[1] += mse(&((&pure[0] + &pure[1]).unwrap() * 0.5).unwrap(), &z) / clips as f32;
        for (si, &s) in sigmas.iter().enumerate() {
            let fb = noised(&z, &noise, s as f32);
            for (ci, ctx) in [&embeds[i], wrong, &empty].into_iter().enumerate() {
                let v = pipe.transformer.forward(&fb.noisy, &fb.timesteps, ctx, None).unwrap();
                let x0 = (&fb.noisy - (v * s).unwrap()).unwrap();
                let background = mse(&clip_mean(&x0), &z_mean);
                sums[si][ci] += mse(&x0, &z) / clips as f32;
                mean_sums[si][ci] += background / clips as f32;
                if ci == 0 {
                    let frames = z.dim(2).unwrap();
                    let row = &mut frame_sums[si];
                    row.resize(row.len().max(frames), 0.0);
                    for (f, acc) in row.iter_mut().enumerate().take(frames) {
                        *acc += mse(&x0.narrow(2, f, 1).unwrap(), &z.narrow(2, f, 1).unwrap()) / clips as f32;
                    }
                    add_object_error(&mut object_sums[kind][si], &x0);
                    if reversed.is_some() {
                        add_object_error(&mut object_sums[2][si], &x0);
                    }
                }
                if s == 1.0 && ci < 2 {
                    scene_rows[i][ci] = background;
                }
            }
            if let Some(ctx) = &reversed {
                let v = pipe.transformer.forward(&fb.noisy, &fb.timesteps, ctx, None).unwrap();
                add_object_error(&mut object_sums[3][si], &(&fb.noisy - (v * s).unwrap()).unwrap());
            }
        }
    }
    println!("latent MSE of the x0 prediction (mean over {clips} held-out scenes):");
    println!(
        "baselines: predicting zeros {:.4}, predicting each channel's clip mean {:.4}; clip means alone, zeros: {:.4}",
        baselines[0], baselines[1], baselines[2]
    );
    println!("sigma   own caption   other scene's caption   empty caption");
    for (si, s) in sigmas.iter().enumerate() {
        println!("{s:5}   {:11.4}   {:21.4}   {:13.4}", sums[si][0], sums[si][1], sums[si][2]);
    }
    println!("by latent frame, own caption (0: the first frame alone; then 4 frames each):");
    for (si, s) in sigmas.iter().enumerate() {
        let cells: Vec<String> = frame_sums[si].iter().map(|e| format!("{e:.4}")).collect();
        println!("{s:5}   {}", cells.join("  "));
    }
    let rows = [
        "own caption, scenes whose first object is moving",
        "own caption, scenes whose first object is still",
        "own caption, scenes whose first object moves (or grows, shrinks) one way",
        "the same scenes, the first object's direction reversed in the caption",
    ];
    for (kind, name) in rows.iter().enumerate() {
        println!("objects' cells only, by latent frame, {} scenes, {name}:", object_scenes[kind]);
        for (si, s) in sigmas.iter().enumerate() {
            let cells: Vec<String> = object_sums[kind][si]
                .iter()
                .map(|&(e, n)| if n > 0.0 { format!("{:.4}", e / n) } else { "   -  ".into() })
                .collect();
            println!("{s:5}   {}", cells.join("  "));
        }
    }
    println!(
        "sigma 1, own caption, two noise draws: noise-dependent part of x0 {:.4}, error of the two-draw mean {:.4}",
        leak[0], leak[1]
    );
    println!("per scene at sigma 1, background error with its own / the other caption:");
    for (row, caption) in scene_rows.iter().zip(&captions) {
        println!("  {:.4} / {:.4}  {caption}", row[0], row[1]);
    }
    println!("the same on each channel's clip mean only (the background):");
    for (si, s) in sigmas.iter().enumerate() {
        println!("{s:5}   {:11.4}   {:21.4}   {:13.4}", mean_sums[si][0], mean_sums[si][1], mean_sums[si][2]);
    }
}
