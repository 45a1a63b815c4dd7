//! Can the Wan DiT place something where its caption says, starting from pure noise?
//!
//! The Wan transformer has no absolute position embedding: its only position signal is 3D RoPE
//! in self-attention, which sees relative offsets. At sigma 1 its input is pure noise, the same
//! in distribution at every token, so a token can only tell where it is from the edges of the
//! grid (a token near an edge has no neighbours beyond it). This example trains a small DiT at
//! sigma 1 only, on one-frame latents whose x0 is a caption-dependent flat background with a
//! square "object" at a caption-dependent place, and reports how much of the object the
//! noise-averaged x0 prediction holds as training goes on, per place: an object touching an
//! edge, one a token away from the edges, one in the centre.
//!
//!   cargo run --release -p ciak-train --example position_probe -- [STEPS] [WIDTH] [LAYERS]
//!
//! Columns: for each caption, the object's share recovered (1 - the x0 error inside the object /
//! the error of predicting the background there; 1 = the object is placed, 0 = none of it) and
//! the background's (the same outside the object, against predicting zeros).
//!
//!   cargo run --release -p ciak-train --example position_probe -- sample middle|free|colours [STEPS] [WIDTH] [LAYERS]
//!
//! The sampler's side of it: two captions (two colour pairs), the object either always in the
//! middle (`middle`, what a world with `placement_spread` 0 asks of a still object) or anywhere
//! on the grid (`free`); trained over the usual noise levels (shift 3, caption dropout 0.1),
//! then 16 clips per caption are sampled from pure noise (Euler, 20 steps, guidance 1 and 5).
//! Per sample, a latent pixel counts as object when it is nearer the object's vector than the
//! background's; the report gives the mean count of object pixels (a placed object has 64), the
//! mean fill of the best object-sized window (1 = a whole square object) and, for `middle`, after `@`, how
//! far that window lies from the middle (tokens, rows plus columns; 0 = where the caption puts it).
//!
//! Settings to try, from the environment: PROBE_FOREGROUND (the trainer's `foreground_weight` on
//! the object's cells; pinned places only), PROBE_TEXT_LOCAL (`text_local_attention`),
//! PROBE_SAMPLE_SHIFT (the sampler's shift, default 3), PROBE_TRAIN_SHIFT (training's, default 3),
//! PROBE_TERMINAL (`colours`: the share of training samples at exactly sigma 1, default 0.1),
//! PROBE_OBJECT_COLOURS (`colours`: only the first n colours as objects, default all 10; at 1
//! every object is red and only the background needs reading),
//! PROBE_TOP / PROBE_LEFT (`colours`: the object's place in latent pixels, default the middle,
//! 12 / 24 for the default side; 12 / 0 touches the left edge), PROBE_BACKGROUND_COLOURS (`colours`: only the first n
//! colours as backgrounds, default all 10), PROBE_OBJECT_SCALE (`colours`: the object's vector is
//! its colour's times this, default 1; `middle` and `free` draw theirs at 1.5), PROBE_CAPTIONS
//! (`middle`/`free`: this many captions, each with its own vectors, default 2), PROBE_SAME_OBJECT
//! (`middle`/`free`: 1 gives every caption the first caption's object vector), PROBE_OBJECT_SIDE
//! (the object square's side in latent pixels, default 8 = 2x2 tokens; the fill window follows),
//! PROBE_BATCH and PROBE_LR (default 8 and 1e-3; the built-in DiT configs train at 4 and 4e-4),
//! PROBE_PATCH (the spatial patch side, default 4), PROBE_POSITION (the DiT's coordinate
//! channels, `transformer.position_channels`: 0 or 2, default 0), PROBE_SEED (the trainer's seed: weights, noise and batches; default 3; the task's vectors stay
//! the same, so runs that differ only here show how much of a result is luck).
//!
//!   cargo run --release -p ciak-train --example position_probe -- sample cache=DIR [STEPS] [WIDTH] [LAYERS]
//!
//! `cache=DIR`: the same model on real images, the first latent frames of a latent cache's 16:9
//! clips (PROBE_IMAGES of them, default 8, one fixed caption each; PROBE_TEXT_LEN, default 16);
//! reports per image the object / rest share its samples recover, and PROBE_SAVE=FILE writes the
//! images and samples (safetensors) at every report.
//!
//! `colours`: 90 captions pairing 10 colours as object and background (one vector per colour),
//! the object in the middle: can the model bind each colour word to its role? The report gives
//! the share of samples whose middle / rest is nearest the caption's object / background colour.
use candle_core::{Device, Tensor};
use ciak_train::train::dit::{DitArch, DitTrainer, TextArch};
use ciak_train::train::flow::TrainRng;
use ciak_train::train::{DitTrainConfig, LatentBatch, LatentSource, Result, TrainError};

/// Latent grid of one frame: 8 x 14 tokens of 4x4 latent pixels.
const H: usize = 32;
const W: usize = 56;
const C: usize = 16;

/// Where each caption's object sits: (caption, top row, left column), an 8x8 latent square
/// (2x2 tokens).
const PLACES: [(&str, usize, usize); 4] = [
    ("a red ball on the left", 12, 0),
    ("a blue ball at the top", 0, 24),
    ("a green ball near the corner", 4, 12),
    ("a yellow ball in the middle", 12, 24),
];

/// The object's side in latent pixels: PROBE_OBJECT_SIDE, default 8 (2x2 tokens).
fn side() -> usize {
    knob("PROBE_OBJECT_SIDE", 8.0) as usize
}

/// A square of `side()` at (top, left) as a [1, 1, H, W] mask.
fn square(top: usize, left: usize, device: &Device) -> Result<Tensor> {
    let s = side();
    let mask: Vec<f32> =
        (0..H * W).map(|i| (i / W >= top && i / W < top + s && i % W >= left && i % W < left + s) as u8 as f32).collect();
    Ok(Tensor::from_vec(mask, (1, 1, H, W), device)?)
}

fn compose(background: &Tensor, object: &Tensor, mask: &Tensor) -> Result<Tensor> {
    Ok((background.broadcast_mul(&(1.0 - mask)?)? + object.broadcast_mul(mask)?)?)
}

/// One caption per entry of `captions`, each with its own background and object vectors; the
/// object at the caption's place, or (`places` None) anywhere on the grid.
struct Placed {
    captions: Vec<String>,
    places: Option<Vec<(usize, usize)>>,
    backgrounds: Vec<Tensor>,
    objects: Vec<Tensor>,
    patterns: Vec<Tensor>,
    masks: Vec<Tensor>,
    rng: TrainRng,
    device: Device,
}

impl Placed {
    fn new(captions: Vec<String>, places: Option<Vec<(usize, usize)>>, device: &Device) -> Result<Self> {
        let mut rng = TrainRng::new(7);
        let (mut backgrounds, mut objects) = (Vec::new(), Vec::new());
        for _ in 0..captions.len() {
            backgrounds.push(rng.gaussian(&[C, 1, 1, 1], device)?);
            objects.push((rng.gaussian(&[C, 1, 1, 1], device)? * 1.5)?);
        }
        Self::with_vectors(captions, places, backgrounds, objects, rng, device)
    }

    /// Caption k's background and object vectors given ([C, 1, 1, 1] each).
    fn with_vectors(
        captions: Vec<String>,
        places: Option<Vec<(usize, usize)>>,
        backgrounds: Vec<Tensor>,
        objects: Vec<Tensor>,
        rng: TrainRng,
        device: &Device,
    ) -> Result<Self> {
        let (mut patterns, mut masks) = (Vec::new(), Vec::new());
        for k in 0..captions.len() {
            if let Some(places) = &places {
                let mask = square(places[k].0, places[k].1, device)?;
                patterns.push(compose(&backgrounds[k], &objects[k], &mask)?);
                masks.push(mask);
            }
        }
        Ok(Self { captions, places, backgrounds, objects, patterns, masks, rng, device: device.clone() })
    }

    fn pattern(&mut self, k: usize) -> Result<Tensor> {
        if self.places.is_some() {
            return Ok(self.patterns[k].clone());
        }
        let top = (self.rng.next_u64() % (H - side() + 1) as u64) as usize;
        let left = (self.rng.next_u64() % (W - side() + 1) as u64) as usize;
        compose(&self.backgrounds[k], &self.objects[k], &square(top, left, &self.device)?)
    }
}

impl LatentSource for Placed {
    fn batch(&mut self, n: usize) -> Result<LatentBatch> {
        let picks: Vec<usize> = (0..n).map(|_| (self.rng.next_u64() % self.captions.len() as u64) as usize).collect();
        let latents = Tensor::stack(&picks.iter().map(|&k| self.pattern(k)).collect::<Result<Vec<_>>>()?, 0)?;
        let captions = picks.iter().map(|&k| self.captions[k].clone()).collect();
        // the object's cells, for a foreground-weighted loss (pinned places only)
        let foreground = match self.places {
            Some(_) => Some(Tensor::stack(&picks.iter().map(|&k| self.masks[k].clone()).collect::<Vec<_>>(), 0)?),
            None => None,
        };
        Ok(LatentBatch { latents, captions, foreground })
    }

    fn state(&self) -> serde_json::Value {
        serde_json::json!({ "rng": self.rng.state })
    }

    fn restore(&mut self, _: &serde_json::Value) -> Result<()> {
        Ok(())
    }
}

/// An experiment's setting from the environment (see the header), else `default`.
fn knob(name: &str, default: f64) -> f64 {
    std::env::var(name).map(|v| v.parse().unwrap_or_else(|_| panic!("{name}: a number, got {v}"))).unwrap_or(default)
}

fn config(tokenizer: std::path::PathBuf, steps: u64, heads: usize, layers: usize, terminal_share: f64) -> DitTrainConfig {
    let patch = knob("PROBE_PATCH", 4.0) as usize;
    let transformer = DitArch { position_channels: knob("PROBE_POSITION", 0.0) as usize, ..DitArch::new(heads, layers, patch, C) };
    let base = DitTrainConfig::new(
        transformer,
        TextArch::new(64, 4, 1),
        tokenizer,
        knob("PROBE_BATCH", 8.0) as usize,
        steps,
        knob("PROBE_LR", 1e-3),
    );
    DitTrainConfig {
        seed: knob("PROBE_SEED", 3.0) as u64,
        warmup_steps: 50,
        ema_decay: 0.99,
        caption_dropout: if terminal_share < 1.0 { 0.1 } else { 0.0 },
        foreground_weight: knob("PROBE_FOREGROUND", 0.0),
        shift: knob("PROBE_TRAIN_SHIFT", 3.0),
        terminal_share,
        checkpoint_every: 1_000_000,
        text_local_attention: knob("PROBE_TEXT_LOCAL", 0.0),
        ..base
    }
}

/// Per caption: (object share recovered, background share recovered) by the x0 prediction at
/// sigma 1, averaged over `draws` noise draws.
fn score(trainer: &DitTrainer, source: &Placed, draws: usize, device: &Device) -> Result<Vec<(f64, f64)>> {
    let mut rng = TrainRng::new(99);
    let mut out = Vec::new();
    for (k, caption) in source.captions.iter().enumerate() {
        let ctx = trainer.models.encode_text(&vec![caption.clone(); draws])?;
        let noise = rng.gaussian(&[draws, C, 1, H, W], device)?;
        let t = Tensor::new(vec![1000f32; draws], device)?;
        let v = trainer.models.transformer.forward(&noise, &t, &ctx, None)?;
        let x0 = (&noise - v)?.mean_keepdim(0)?.squeeze(0)?;
        let (target, mask) = (&source.patterns[k], &source.masks[k]);
        let err = (&x0 - target)?.sqr()?;
        let inside = |t: &Tensor, m: &Tensor| -> Result<f64> {
            Ok(t.broadcast_mul(m)?.sum_all()?.to_scalar::<f32>()? as f64 / m.sum_all()?.to_scalar::<f32>()? as f64)
        };
        let outside = (1.0 - mask)?;
        // predicting the background inside the object: the error of not placing it
        let background = target.broadcast_mul(&outside)?.sum_keepdim(2)?.sum_keepdim(3)?.broadcast_div(&outside.sum_all()?)?;
        let miss = target.broadcast_sub(&background)?.sqr()?;
        let object = 1.0 - inside(&err, mask)? / inside(&miss, mask)?;
        let bg = 1.0 - inside(&err, &outside)? / inside(&target.sqr()?, &outside)?;
        out.push((object, bg));
    }
    Ok(out)
}

/// `draws` samples of `caption` from pure noise: Euler over the shift-3 grid (PROBE_SAMPLE_SHIFT)
/// in `steps` steps, classifier-free guidance `guidance` against the empty caption. Returns
/// [draws, C, 1, H, W].
fn sample(trainer: &DitTrainer, caption: &str, draws: usize, steps: usize, guidance: f64, seed: u64) -> Result<Tensor> {
    let device = Device::Cpu;
    let cond = trainer.models.encode_text(&vec![caption.to_string(); draws])?;
    let uncond = trainer.models.encode_text(&vec![String::new(); draws])?;
    let mut x = TrainRng::new(seed).gaussian(&[draws, C, 1, H, W], &device)?;
    let shift = knob("PROBE_SAMPLE_SHIFT", 3.0);
    let sigma = |i: usize| {
        let s = 1.0 - i as f64 / steps as f64;
        shift * s / (1.0 + (shift - 1.0) * s)
    };
    for i in 0..steps {
        let t = Tensor::new(vec![(sigma(i) * 1000.0) as f32; draws], &device)?;
        let vc = trainer.models.transformer.forward(&x, &t, &cond, None)?;
        let v = if guidance == 1.0 {
            vc
        } else {
            let vu = trainer.models.transformer.forward(&x, &t, &uncond, None)?;
            (&vu + ((vc - &vu)? * guidance)?)?
        };
        // the weights are training variables: without the detach, x would hold every step's graph
        x = (x + (v * (sigma(i + 1) - sigma(i)))?)?.detach();
    }
    Ok(x)
}

/// Mean object-pixel count, best window fill (a window of the object's side), and the best window's mean distance from the
/// caption's place in tokens (when the caption has one) of samples of caption `k`.
fn object_stats(source: &Placed, k: usize, samples: &Tensor) -> Result<(f64, f64, Option<f64>)> {
    let d_obj = samples.broadcast_sub(&source.objects[k].unsqueeze(0)?)?.sqr()?.sum_keepdim(1)?;
    let d_bg = samples.broadcast_sub(&source.backgrounds[k].unsqueeze(0)?)?.sqr()?.sum_keepdim(1)?;
    let is_obj: Vec<Vec<f32>> = d_obj.lt(&d_bg)?.to_dtype(candle_core::DType::F32)?.flatten_from(1)?.to_vec2()?;
    let (mut count, mut fill, mut off) = (0.0, 0.0, 0.0);
    let s = side();
    for m in &is_obj {
        count += m.iter().sum::<f32>() as f64;
        let mut best = (0f32, 0, 0);
        for top in 0..=H - s {
            for left in 0..=W - s {
                let n: f32 = (top..top + s).map(|r| m[r * W + left..r * W + left + s].iter().sum::<f32>()).sum();
                if n > best.0 {
                    best = (n, top, left);
                }
            }
        }
        fill += best.0 as f64 / (s * s) as f64;
        if let Some(places) = &source.places {
            let (top, left) = places[k];
            off += (best.1.abs_diff(top) + best.2.abs_diff(left)) as f64 / 4.0;
        }
    }
    let n = is_obj.len() as f64;
    Ok((count / n, fill / n, source.places.as_ref().map(|_| off / n)))
}

/// Per caption (the first 10), the object vector's norm and its distance to the background's, in
/// the units of the unit-variance noise (per channel: divided by sqrt(C)).
fn print_contrast(source: &Placed) -> Result<()> {
    let norm = |t: &Tensor| -> Result<f64> { Ok((t.sqr()?.sum_all()?.to_scalar::<f32>()? as f64 / C as f64).sqrt()) };
    let mut line = String::from("object rms / object-background rms:");
    for k in 0..source.captions.len().min(10) {
        line += &format!(" {:.2}/{:.2}", norm(&source.objects[k])?, norm(&(&source.objects[k] - &source.backgrounds[k])?)?);
    }
    println!("{line}");
    Ok(())
}

/// The mean vector of `x` ([C, 1, H, W]) over the cells where `mask` ([1, 1, H, W]) is 1, as
/// [C, 1, 1, 1].
fn masked_mean(x: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let sum = x.broadcast_mul(mask)?.sum_keepdim(1)?.sum_keepdim(2)?.sum_keepdim(3)?;
    Ok((sum / mask.sum_all()?.to_scalar::<f32>()? as f64)?)
}

const COLOURS: [&str; 10] = ["red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink", "white", "black"];

/// `colours` mode: every ordered pair of distinct colours as "a C1 ball on a C2 background", the
/// object in the middle; each colour one latent vector, shared by objects and backgrounds, so the
/// model has to bind each colour word to its role. Reports, for 10 fixed captions and 8 samples
/// each, how often the middle window's mean vector is nearest the caption's object colour, and the
/// rest of the grid nearest its background colour.
fn colours_run(steps: u64, heads: usize, layers: usize, tokenizer: std::path::PathBuf) -> Result<()> {
    let device = Device::Cpu;
    let mut rng = TrainRng::new(11);
    let palette: Vec<Tensor> = (0..COLOURS.len()).map(|_| rng.gaussian(&[C, 1, 1, 1], &device)).collect::<Result<_>>()?;
    let (mut captions, mut pairs) = (Vec::new(), Vec::new());
    let object_colours = knob("PROBE_OBJECT_COLOURS", COLOURS.len() as f64) as usize;
    let background_colours = knob("PROBE_BACKGROUND_COLOURS", COLOURS.len() as f64) as usize;
    for (a, object) in COLOURS.iter().enumerate().take(object_colours) {
        for (b, background) in COLOURS.iter().enumerate().take(background_colours) {
            if a != b {
                captions.push(format!("a {object} ball on a {background} background"));
                pairs.push((a, b));
            }
        }
    }
    let backgrounds = pairs.iter().map(|&(_, b)| palette[b].clone()).collect();
    let scale = knob("PROBE_OBJECT_SCALE", 1.0);
    let objects = pairs.iter().map(|&(a, _)| palette[a].clone() * scale).collect::<candle_core::Result<_>>()?;
    let place = (knob("PROBE_TOP", ((H - side()) / 2) as f64) as usize, knob("PROBE_LEFT", ((W - side()) / 2) as f64) as usize);
    let places = Some(vec![place; captions.len()]);
    let mut source = Placed::with_vectors(captions.clone(), places, backgrounds, objects, rng, &device)?;
    print_contrast(&source)?;
    let mut trainer = DitTrainer::new(&config(tokenizer, steps, heads, layers, knob("PROBE_TERMINAL", 0.1)), &device)?;
    let nearest = |v: &Tensor| -> Result<usize> {
        let d: Vec<f32> = palette.iter().map(|p| Ok((v - p)?.sqr()?.sum_all()?.to_scalar::<f32>()?)).collect::<Result<_>>()?;
        Ok((0..d.len()).min_by(|&i, &j| d[i].total_cmp(&d[j])).unwrap())
    };
    let mask = square(place.0, place.1, &device)?;
    let outside = (1.0 - &mask)?;
    println!("colours: width {} layers {layers}; {} captions; share of samples whose object / background is the caption's colour", heads * 64, captions.len());
    println!("(in brackets: the middle's mean strength of the object, 0 = background, 1 = the object)");
    println!("step  loss     guidance 1               guidance 5");
    train_reporting(&mut trainer, &mut source, steps, 5, |trainer, source, step, mean| {
        let mut cols = String::new();
        for guidance in [1.0, 5.0] {
            let (mut object_hits, mut background_hits, mut strength, mut n) = (0, 0, 0.0, 0);
            let (mut pixels, mut fill, mut off, mut drawn) = (0.0, 0.0, 0.0, 0.0);
            for k in (0..captions.len()).step_by(captions.len().div_ceil(10)) {
                let x = sample(trainer, &captions[k], 8, 20, guidance, 2000 + k as u64)?;
                // the `middle` mode's measures: object pixels, best window's fill, its offset
                let (p, f, o) = object_stats(source, k, &x)?;
                (pixels, fill, off, drawn) = (pixels + p, fill + f, off + o.unwrap_or(0.0), drawn + 1.0);
                for i in 0..8 {
                    let x = x.get(i)?;
                    let (inside, rest) = (masked_mean(&x, &mask)?, masked_mean(&x, &outside)?);
                    object_hits += (nearest(&inside)? == pairs[k].0) as usize;
                    // how much of the object the middle holds: its mean projected on the line from
                    // the background's vector (0) to the object's (1)
                    let (object, background) = (&palette[pairs[k].0], &palette[pairs[k].1]);
                    let axis = (object - background)?;
                    let along = ((&inside - background)? * &axis)?.sum_all()?.to_scalar::<f32>()?;
                    strength += along as f64 / axis.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
                    background_hits += (nearest(&rest)? == pairs[k].1) as usize;
                    n += 1;
                }
            }
            let n = n as f64;
            cols += &format!("  {:.2} / {:.2} ({:.2}) {:.1} / {:.2} @{:.1}", object_hits as f64 / n, background_hits as f64 / n,
                strength / n, pixels / drawn, fill / drawn, off / drawn);
        }
        println!("{step:>5} {mean:.4} {cols}");
        Ok(())
    })
}

fn sampling_run(mode: &str, steps: u64, heads: usize, layers: usize, tokenizer: std::path::PathBuf) -> Result<()> {
    let device = Device::Cpu;
    if mode == "colours" {
        return colours_run(steps, heads, layers, tokenizer);
    }
    if let Some(dir) = mode.strip_prefix("cache=") {
        return cache_run(std::path::Path::new(dir), steps, heads, layers, tokenizer);
    }
    let mut captions: Vec<String> = vec!["a red ball on a blue background".into(), "a green star on a yellow background".into()];
    // PROBE_CAPTIONS: more captions, each with its own random vectors (colour i on colour i + 5)
    for i in 2..knob("PROBE_CAPTIONS", 2.0) as usize {
        captions.push(format!("a {} ball on a {} background", COLOURS[i % 10], COLOURS[(i + 5) % 10]));
    }
    let places = match mode {
        "middle" => Some(vec![((H - side()) / 2, (W - side()) / 2); captions.len()]),
        "free" => None,
        other => {
            return Err(TrainError::Data(format!(
                "expected `sample middle`, `sample free` or `sample colours`, got `sample {other}`"
            )))
        }
    };
    let mut source = Placed::new(captions.clone(), places, &device)?;
    if knob("PROBE_SAME_OBJECT", 0.0) != 0.0 {
        // every caption's object is the first one's: only the background follows the caption
        let first = source.objects[0].clone();
        let backgrounds = source.backgrounds.clone();
        let places = source.places.clone();
        let objects = vec![first; captions.len()];
        source = Placed::with_vectors(captions.clone(), places, backgrounds, objects, TrainRng::new(7), &device)?;
    }
    print_contrast(&source)?;
    let mut trainer = DitTrainer::new(&config(tokenizer, steps, heads, layers, 0.1), &device)?;
    println!("{mode}: width {} layers {layers}; per caption, object pixels ({} = one object) / best window fill", heads * 64, side() * side());
    println!("step  loss      guidance 1                  guidance 5");
    train_reporting(&mut trainer, &mut source, steps, 5, |trainer, source, step, mean| {
        let mut cols = String::new();
        for guidance in [1.0, 5.0] {
            for (k, caption) in captions.iter().enumerate() {
                let x = sample(trainer, caption, 16, 20, guidance, 1000 + k as u64)?;
                let (count, fill, off) = object_stats(source, k, &x)?;
                cols += &format!(" {count:>6.1} / {fill:.2}");
                if let Some(off) = off {
                    cols += &format!(" @{off:.1}");
                }
            }
            cols += "  ";
        }
        println!("{step:>5} {mean:.4} {cols}");
        Ok(())
    })
}

/// The first latent frames of a latent cache's 16:9 clips, each with one fixed caption (its
/// epoch-0 training caption) and the cells its objects cover: real rendered shapes through the
/// real VAE, drawn like [`Placed`]'s patterns (uniformly, with replacement).
struct CacheImages {
    captions: Vec<String>,
    images: Vec<Tensor>,
    masks: Vec<Tensor>,
    rng: TrainRng,
}

impl CacheImages {
    /// Up to `limit` images from the cache in `dir`.
    fn open(dir: &std::path::Path, limit: usize, device: &Device) -> Result<Self> {
        let mut cache = ciak_train::train::latents::CachedLatents::open(dir, 1, device)?;
        let (mut captions, mut images, mut masks) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..cache.len() {
            let one = cache.batch(1)?.first_frames(1)?;
            if one.latents.dims()[3..] != [H, W] || images.len() == limit {
                continue;
            }
            let mask = one.foreground.ok_or_else(|| TrainError::Data("the cache gave no foreground mask".into()))?;
            captions.push(one.captions[0].clone());
            images.push(one.latents.get(0)?);
            masks.push(mask.get(0)?.gt(0.5)?.to_dtype(candle_core::DType::F32)?);
        }
        if images.is_empty() {
            return Err(TrainError::Data(format!("{}: expected 16:9 clips ({H}x{W} latents), found none", dir.display())));
        }
        Ok(Self { captions, images, masks, rng: TrainRng::new(7) })
    }
}

impl LatentSource for CacheImages {
    fn batch(&mut self, n: usize) -> Result<LatentBatch> {
        let picks: Vec<usize> = (0..n).map(|_| (self.rng.next_u64() % self.images.len() as u64) as usize).collect();
        let latents = Tensor::stack(&picks.iter().map(|&k| self.images[k].clone()).collect::<Vec<_>>(), 0)?;
        let foreground = Tensor::stack(&picks.iter().map(|&k| self.masks[k].clone()).collect::<Vec<_>>(), 0)?;
        Ok(LatentBatch { latents, captions: picks.iter().map(|&k| self.captions[k].clone()).collect(), foreground: Some(foreground) })
    }

    fn state(&self) -> serde_json::Value {
        serde_json::json!({ "rng": self.rng.state })
    }

    fn restore(&mut self, _: &serde_json::Value) -> Result<()> {
        Ok(())
    }
}

/// `cache=DIR` mode: the probe's model and settings on real images (the first latent frames of
/// a cache's 16:9 clips, PROBE_IMAGES of them, default 8) instead of flat squares. Reports, per
/// image, the share of the object recovered by samples from pure noise: 1 - the sample's error
/// on the object's cells / the error there of the image's own background (its median), so 1 =
/// the object drawn as it is, 0 = background there; and the same for the rest against zeros.
fn cache_run(dir: &std::path::Path, steps: u64, heads: usize, layers: usize, tokenizer: std::path::PathBuf) -> Result<()> {
    let device = Device::Cpu;
    let mut source = CacheImages::open(dir, knob("PROBE_IMAGES", 8.0) as usize, &device)?;
    let mut cfg = config(tokenizer, steps, heads, layers, knob("PROBE_TERMINAL", 0.1));
    cfg.text_len = knob("PROBE_TEXT_LEN", 16.0) as usize;
    let mut trainer = DitTrainer::new(&cfg, &device)?;
    for caption in &source.captions {
        println!("  {caption}");
    }
    println!("cache: width {} layers {layers}; {} images; per image, object / rest share recovered by samples", heads * 64, source.images.len());
    let shown = source.images.len().min(8);
    let save = std::env::var("PROBE_SAVE").ok();
    train_reporting(&mut trainer, &mut source, steps, 10, |trainer, source, step, mean| {
        let mut cols = String::new();
        let mut saved = std::collections::HashMap::new();
        for guidance in [1.0, 5.0] {
            for k in 0..shown {
                let x = sample(trainer, &source.captions[k], 4, 20, guidance, 3000 + k as u64)?;
                if save.is_some() {
                    saved.insert(format!("sample-{k}-g{guidance}"), x.clone());
                    saved.insert(format!("truth-{k}"), source.images[k].clone());
                }
                let (truth, mask) = (source.images[k].unsqueeze(0)?, &source.masks[k]);
                let median: Vec<f32> = truth.flatten_from(2)?.get(0)?.to_vec2::<f32>()?.into_iter().map(|mut v| {
                    v.sort_by(f32::total_cmp);
                    v[v.len() / 2]
                }).collect();
                let background = Tensor::from_vec(median, (1, C, 1, 1, 1), &device)?;
                let outside = (1.0 - mask)?;
                let err = |a: &Tensor, m: &Tensor| -> Result<f64> {
                    Ok(a.broadcast_sub(&truth)?.sqr()?.broadcast_mul(m)?.sum_all()?.to_scalar::<f32>()? as f64)
                };
                let object = 1.0 - err(&x, mask)? / 4.0 / err(&background, mask)?.max(1e-6);
                let rest = 1.0 - err(&x, &outside)? / 4.0 / err(&truth.zeros_like()?, &outside)?.max(1e-6);
                cols += &format!(" {object:>5.2}/{rest:.2}");
            }
            cols += "  |";
        }
        if let Some(path) = &save {
            candle_core::safetensors::save(&saved, path)?;
        }
        println!("{step:>5} {mean:.4} {cols}");
        Ok(())
    })
}

/// Trains `steps` steps and calls `report` with the step and the mean loss since the last
/// report, `reports` times in all.
fn train_reporting<S: LatentSource>(
    trainer: &mut DitTrainer,
    source: &mut S,
    steps: u64,
    reports: u64,
    mut report: impl FnMut(&DitTrainer, &S, u64, f64) -> Result<()>,
) -> Result<()> {
    let mut losses = Vec::new();
    for step in 1..=steps {
        losses.push(trainer.train_step(source)?.loss);
        if step % (steps / reports).max(1) == 0 || step == steps {
            let mean = losses.iter().sum::<f64>() / losses.len() as f64;
            losses.clear();
            report(trainer, source, step, mean)?;
        }
    }
    Ok(())
}

fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mode = if args.first().map(|a| a == "sample").unwrap_or(false) {
        args.remove(0);
        Some(args.remove(0))
    } else {
        None
    };
    let steps: u64 = args.first().map(|s| s.parse().expect("STEPS: a whole number")).unwrap_or(1500);
    let heads: usize = args.get(1).map(|s| s.parse::<usize>().expect("WIDTH: a whole number") / 64).unwrap_or(2);
    let layers: usize = args.get(2).map(|s| s.parse().expect("LAYERS: a whole number")).unwrap_or(4);
    let device = Device::Cpu;
    let dir = std::env::temp_dir().join(format!("ciak-position-probe-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let tokenizer = dir.join("tokenizer.json");
    ciak_train::tokenizer::write_tokenizer_json(&tokenizer)?;
    if let Some(mode) = mode {
        sampling_run(&mode, steps, heads, layers, tokenizer)?;
        std::fs::remove_dir_all(&dir).ok();
        return Ok(());
    }
    let cfg = config(tokenizer, steps, heads, layers, 1.0);
    let mut trainer = DitTrainer::new(&cfg, &device)?;
    let captions = PLACES.iter().map(|p| p.0.to_string()).collect();
    let mut source = Placed::new(captions, Some(PLACES.iter().map(|p| (p.1, p.2)).collect()), &device)?;
    let names: Vec<&str> = PLACES.iter().map(|p| p.0.rsplit(' ').next().unwrap()).collect();
    println!("width {} layers {layers}; object / background share recovered at sigma 1", heads * 64);
    println!("step  loss    {}", names.iter().map(|n| format!("{n:>14}")).collect::<String>());
    train_reporting(&mut trainer, &mut source, steps, 10, |trainer, source, step, mean| {
        let cols: String = score(trainer, source, 16, &device)?.iter().map(|(o, b)| format!("   {o:>5.2} / {b:>4.2}")).collect();
        println!("{step:>5} {mean:.4}{cols}");
        Ok(())
    })?;
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}
