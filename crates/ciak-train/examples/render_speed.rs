//! Sampling and rendering speed of the toy world, one thread:
//! `cargo run -p ciak-train --release --example render_speed [clips]`.
use ciak_train::world::{render_into, sample_scene, Aspect, SamplerConfig};
use ciak_train::{caption, Rng, Split};
use std::time::Instant;

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(2000);
    let mut buf = Vec::new();
    for aspects in [vec![Aspect::Wide], vec![Aspect::Tall], vec![Aspect::Square], Aspect::ALL.to_vec()] {
        let label = if aspects.len() == 1 { aspects[0].label() } else { "all" };
        let cfg = SamplerConfig { aspects, ..Default::default() };
        let mut rng = Rng::new(1);
        let t0 = Instant::now();
        let scenes: Vec<_> = (0..n).map(|_| sample_scene(&mut rng, &cfg, Split::Train)).collect();
        let sample_s = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let captions: usize = scenes.iter().map(|s| caption(s, &mut rng).len()).sum();
        let caption_s = t1.elapsed().as_secs_f64();
        let t2 = Instant::now();
        let mut with_camera = 0;
        for s in &scenes {
            render_into(s, &mut buf);
            with_camera += s.camera.is_some() as usize;
        }
        let render_s = t2.elapsed().as_secs_f64();
        println!(
            "{label:>4}: {n} clips x 25 frames: sample {:.3} ms, caption {:.4} ms, render {:.3} ms per clip \
             ({:.0} clips/s; {with_camera} with camera moves; {captions} caption bytes)",
            sample_s * 1e3 / n as f64,
            caption_s * 1e3 / n as f64,
            render_s * 1e3 / n as f64,
            n as f64 / (sample_s + caption_s + render_s),
        );
    }
}
