//! Does the DiT draw the shape its caption names, where sampling starts? For held-out scenes of a
//! world (single objects): the scene in each of the four shapes, everything else kept, captioned
//! with its canonical caption. For each variant: pure noise (seeded by the scene, the same for
//! the four), one forward at sigma 1, the x0 prediction x0 = noise - v with the caption alone and
//! with guidance G against the empty caption (as the sampler's first step), its first latent
//! frame decoded. The decoded frame is compared (mean squared error over the pixels where any of
//! the four renders differ from the background) with the first frames of the four renders:
//!
//! - shape right: the nearest render is the variant's own;
//! - margin: (mean distance to the other three - distance to its own) / mean distance between
//!   the renders themselves: 1 when the frame is its render exactly, 0 when it ignores the shape
//!   word (the same blob for all four).
//!
//! `denoise_probe` shows the DiT restoring shapes from noised clips up to sigma 0.6-0.8; this
//! asks whether the caption alone tells it which shape to draw.
//!
//! A third row samples: the first latent frame of the same noise drawn alone as an image (12
//! steps, guidance G, the pipeline's sampler), decoded and compared the same way; what the
//! sampler makes of the sigma-1 answer over its steps.
//!
//!   cargo run --release -p ciak-train --example shape_probe -- MODEL_DIR WORLD_JSON [SCENES [GUIDANCE [OUT_DIR]]]
//!
//! OUT_DIR: also writes `scene-<i>.png` per scene, the four renders' first frames on top and the
//! four guided x0 frames below.
use candle_core::Device;
use ciak_engine::model_dir::WanModelDir;
use ciak_engine::pipeline::{GenerateRequest, LoadOptions, WanPipeline};
use ciak_engine::video::VideoFrames;
use ciak_train::preview::write_png;
use ciak_train::train::flow::TrainRng;
use ciak_train::train::vae::eval_scene_in;
use ciak_train::world::Shape;
use ciak_train::{canonical_caption, render};

#[path = "probe_common/mod.rs"]
mod probe_common;
use probe_common::sigma1_first_frames;

fn main() {
    let usage = "usage: shape_probe MODEL_DIR WORLD_JSON [SCENES [GUIDANCE [OUT_DIR]]]";
    let dir = std::env::args().nth(1).expect(usage);
    let world_path = std::env::args().nth(2).expect(usage);
    let scenes: u64 = std::env::args().nth(3).map_or(20, |n| n.parse().expect("SCENES: a whole number"));
    let guidance: f64 = std::env::args().nth(4).map_or(3.0, |g| g.parse().expect("GUIDANCE: a number"));
    let out_dir = std::env::args().nth(5).map(std::path::PathBuf::from);
    if let Some(d) = &out_dir {
        std::fs::create_dir_all(d).expect("OUT_DIR: a folder that can be made");
    }
    let text = std::fs::read_to_string(&world_path).expect("WORLD_JSON: a readable file");
    let world = ciak_train::SamplerConfig::from_json(&serde_json::from_str(&text).expect("WORLD_JSON: JSON")).expect("WORLD_JSON: SamplerConfig fields");
    let dev = Device::Cpu;
    let pipe = WanPipeline::load(&WanModelDir::open(std::path::Path::new(&dir)).unwrap(), &LoadOptions::default()).unwrap();
    let uncond = pipe.text_encoder.encode(&[String::new()]).unwrap().prompt_embeds;
    // [caption alone, guided, sampled] x shape: (right, margin sum, count)
    let mut sums = [[(0usize, 0f64, 0usize); 4]; 3];
    for i in 0..scenes {
        let scene = eval_scene_in(1, i, &world);
        if scene.objects.len() != 1 {
            continue;
        }
        let variants: Vec<_> = Shape::ALL
            .iter()
            .map(|&shape| {
                let mut s = scene.clone();
                s.objects[0].shape = shape;
                s
            })
            .collect();
        let renders: Vec<Vec<u8>> = variants.iter().map(|s| first_frame(&render(s).pixels, s)).collect();
        let (w, h) = scene.aspect.size();
        // the pixels where the four renders are not all alike (the objects' union)
        let mask: Vec<usize> = (0..w * h).filter(|&p| renders.iter().any(|r| r[p * 3..p * 3 + 3] != renders[0][p * 3..p * 3 + 3])).collect();
        let dist = |a: &[u8], b: &[u8]| {
            let sq: f64 = mask.iter().flat_map(|&p| (0..3).map(move |c| p * 3 + c)).map(|k| (a[k] as f64 - b[k] as f64).powi(2)).sum();
            sq / (mask.len().max(1) * 3) as f64
        };
        let mut between = 0f64;
        for a in 0..4 {
            for b in a + 1..4 {
                between += dist(&renders[a], &renders[b]) / 6.0;
            }
        }
        let shape = [1usize, pipe.transformer.config().out_channels, (scene.frames - 1) / 4 + 1, h / 4, w / 4];
        let noise = TrainRng::new(i).gaussian(&shape, &dev).unwrap();
        let mut drawn: Vec<Vec<u8>> = Vec::new();
        for (k, variant) in variants.iter().enumerate() {
            let ctx = pipe.text_encoder.encode(&[canonical_caption(variant)]).unwrap().prompt_embeds;
            let [alone, guided] = sigma1_first_frames(&pipe, &noise, &ctx, &uncond, guidance);
            let sampled = sampled_first_frame(&pipe, &noise, canonical_caption(variant), guidance, w, h);
            for (g, img) in [&alone, &guided, &sampled].into_iter().enumerate() {
                let d: Vec<f64> = renders.iter().map(|r| dist(img, r)).collect();
                let nearest = (0..4).min_by(|&a, &b| d[a].total_cmp(&d[b])).unwrap();
                let others = (d.iter().sum::<f64>() - d[k]) / 3.0;
                let cell = &mut sums[g][k];
                cell.0 += usize::from(nearest == k);
                cell.1 += (others - d[k]) / between.max(1e-9);
                cell.2 += 1;
            }
            drawn.push(guided);
        }
        if let Some(d) = &out_dir {
            // two rows of four frames: the renders, then the guided x0s
            let mut img = vec![0u8; 4 * w * 2 * h * 3];
            for (r, row) in [&renders, &drawn].iter().enumerate() {
                for (k, frame) in row.iter().enumerate() {
                    for y in 0..h {
                        let dst = ((r * h + y) * 4 * w + k * w) * 3;
                        img[dst..dst + w * 3].copy_from_slice(&frame[y * w * 3..(y + 1) * w * 3]);
                    }
                }
            }
            write_png(&d.join(format!("scene-{i}.png")), 4 * w, 2 * h, &img).unwrap();
        }
    }
    println!("x0 at sigma 1, first frame, nearest of the four renders (shape right / mean margin):");
    println!("(the last row: the first latent frame sampled as an image, {SAMPLE_STEPS} steps, guidance {guidance})");
    for (g, what) in ["caption alone".to_string(), format!("guidance {guidance}"), "sampled".to_string()].iter().enumerate() {
        let cells: Vec<String> = Shape::ALL
            .iter()
            .zip(sums[g])
            .map(|(s, (r, m, n))| format!("{s:?} {:.0}% / {:.3}", 100.0 * r as f64 / n.max(1) as f64, m / n.max(1) as f64))
            .collect();
        let (r, m, n) = sums[g].iter().fold((0, 0.0, 0), |a, c| (a.0 + c.0, a.1 + c.1, a.2 + c.2));
        println!("{what:<14} all {:.1}% / {:.3}   {}", 100.0 * r as f64 / n.max(1) as f64, m / n.max(1) as f64, cells.join("  "));
    }
}

/// Sampler steps of the sampled row (the built-in model's default).
const SAMPLE_STEPS: usize = 12;

/// The first latent frame of `noise` sampled alone as an image with `caption`, decoded to RGB8.
fn sampled_first_frame(pipe: &WanPipeline, noise: &candle_core::Tensor, caption: String, guidance: f64, w: usize, h: usize) -> Vec<u8> {
    let mut req = GenerateRequest::new(caption);
    (req.width, req.height, req.frames, req.steps, req.guidance) = (w, h, 1, SAMPLE_STEPS, guidance);
    let out = pipe.generate_from_latents(&req, noise.narrow(2, 0, 1).unwrap(), &mut |_| {}, None).unwrap();
    VideoFrames::from_tensor(&out.frames).unwrap().frames()[0].data.clone()
}

/// The first frame of a rendered clip's pixels.
fn first_frame(pixels: &[u8], scene: &ciak_train::Scene) -> Vec<u8> {
    let (w, h) = scene.aspect.size();
    pixels[..w * h * 3].to_vec()
}
