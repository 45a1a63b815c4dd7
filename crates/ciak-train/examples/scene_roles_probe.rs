//! Does the DiT put the sky's colour on top and the ground's below, where sampling starts? For the
//! 90 ordered pairs of distinct colours X, Y: the caption "a C ball moves right under a X sky over
//! Y ground" (C a third colour), pure noise (seeded by the pair), one forward at sigma 1, the x0
//! prediction x0 = noise - v with the caption alone and with guidance G against the empty caption
//! (as the sampler's first step), its first latent frame decoded. The decoded frame's top fifth and
//! bottom fifth are compared with the rendered colours of X and Y:
//!
//! - roles right: the top is nearer X than Y and the bottom nearer Y than X;
//! - margin: (|top - Y| - |top - X| + |bottom - X| - |bottom - Y|) / (2 |X - Y|), 1 when each band
//!   is its role's colour exactly, 0 when both are the same blend, -1 when swapped.
//!
//! A DiT that reads the roles from the caption gets them right from sigma 1 on; one that only
//! knows which two colours are named paints a blend (margin near 0) and lets the noise decide.
//!
//!   cargo run --release -p ciak-train --example scene_roles_probe -- MODEL_DIR [GUIDANCE]
use candle_core::Device;
use ciak_engine::model_dir::WanModelDir;
use ciak_engine::pipeline::{LoadOptions, WanPipeline};
use ciak_train::train::flow::TrainRng;
use ciak_train::world::Color;

#[path = "probe_common/mod.rs"]
mod probe_common;
use probe_common::sigma1_first_frames;

fn main() {
    let dir = std::env::args().nth(1).expect("usage: scene_roles_probe MODEL_DIR [GUIDANCE]");
    let guidance: f64 = std::env::args().nth(2).map_or(3.0, |g| g.parse().expect("GUIDANCE: a number"));
    let dev = Device::Cpu;
    let pipe = WanPipeline::load(&WanModelDir::open(std::path::Path::new(&dir)).unwrap(), &LoadOptions::default()).unwrap();
    let cfg = pipe.transformer.config();
    let (w, h, frames) = (224usize, 128usize, 25usize);
    let shape = (1, cfg.out_channels, (frames - 1) / 4 + 1, h / 4, w / 4);
    let uncond = pipe.text_encoder.encode(&[String::new()]).unwrap().prompt_embeds;
    let dist = |a: [f64; 3], b: [f64; 3]| a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f64>().sqrt();
    let rgb = |c: Color| c.rgb().map(f64::from);
    // [caption alone, guided]: (roles right, margin sum)
    let mut sums = [(0usize, 0f64); 2];
    let mut n = 0usize;
    for (i, sky) in Color::ALL.into_iter().enumerate() {
        for (j, ground) in Color::ALL.into_iter().enumerate() {
            if i == j {
                continue;
            }
            let ball = Color::ALL.into_iter().find(|c| *c != sky && *c != ground).unwrap();
            let caption = format!("a {} ball moves right under a {} sky over {} ground", ball.name(), sky.name(), ground.name());
            let ctx = pipe.text_encoder.encode(&[caption]).unwrap().prompt_embeds;
            let noise = TrainRng::new((i * 10 + j) as u64).gaussian(&[shape.0, shape.1, shape.2, shape.3, shape.4], &dev).unwrap();
            for (k, img) in sigma1_first_frames(&pipe, &noise, &ctx, &uncond, guidance).iter().enumerate() {
                let band = |rows: std::ops::Range<usize>| {
                    let mut s = [0f64; 3];
                    let count = (rows.len() * w) as f64;
                    for y in rows {
                        for x in 0..w {
                            for c in 0..3 {
                                s[c] += img[(y * w + x) * 3 + c] as f64 / count;
                            }
                        }
                    }
                    s
                };
                let (top, bottom) = (band(0..h / 5), band(h - h / 5..h));
                let (x, y) = (rgb(sky), rgb(ground));
                let right = dist(top, x) < dist(top, y) && dist(bottom, y) < dist(bottom, x);
                let margin = (dist(top, y) - dist(top, x) + dist(bottom, x) - dist(bottom, y)) / (2.0 * dist(x, y));
                sums[k].0 += usize::from(right);
                sums[k].1 += margin;
            }
            n += 1;
        }
    }
    println!("{n} sky/ground colour pairs, x0 at sigma 1, first frame");
    for (k, what) in ["caption alone", &format!("guidance {guidance}")].iter().enumerate() {
        println!("{what:<14}  roles right {:.1}%  mean margin {:.3}", 100.0 * sums[k].0 as f64 / n as f64, sums[k].1 / n as f64);
    }
}
