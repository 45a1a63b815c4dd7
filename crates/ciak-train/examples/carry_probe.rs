//! Given a clean first latent frame, can the Wan DiT carry its object forward?
//!
//! Image-to-video (`first_frame_share`, the sampler's image-first mode) hands the model the
//! first latent frame clean, at timestep 0. Where the object is and what it looks like is then in
//! the input; the later frames only have to copy it, one step further each frame in the direction
//! the caption names: a relative offset, which the 3D RoPE of self-attention sees directly. This
//! example trains a DiT of the built-in model's size on that task alone and reports, as training
//! goes on, whether the later frames hold the object where it truly is, where it started (copied
//! but not moved), or nowhere (lost).
//!
//! The clips: latents [C = 8, F = 7, H = 32, W = 56] (8 x 14 tokens of 4x4 latent pixels per
//! frame). Each clip is a flat background vector with an 8x8 latent-pixel square (2x2 tokens,
//! token aligned) of an object vector, both fixed per colour ([C] gaussians, the object's times
//! 1.5, like `position_probe`). Captions are "a <colour> square <motion>", with 4 colours (red,
//! blue, green, yellow) and 5 motions (moves left / right / up / down, stays still). In frame f
//! the square sits 4 * f latent pixels (f tokens) from its frame-0 place in the caption's
//! direction; the frame-0 place is drawn so that the whole track stays on the grid. (With 7
//! frames an up or down track spans the full height, so its start row is the edge it starts
//! from; only its column is free.) Every training clip has frame 0 clean and out of the loss
//! (`first_frame_share` 1); the noise levels are the usual ones (shift 3, shifted uniform),
//! caption dropout 0.1.
//!
//!   cargo run --release -p ciak-train --example carry_probe -- [STEPS] [WIDTH] [LAYERS]
//!
//! STEPS default 2000; WIDTH the DiT's width, a multiple of 64 (heads of 64), default 256 = 4
//! heads; LAYERS default 6 (ffn 4 x width): the built-in model's DiT.
//!
//! Reports (at step 0, every PROBE_REPORT steps and at the end): on a fixed held-out set (every
//! colour x motion, PROBE_EVAL_REPEATS starts each, default 2: 40 scenes, from their own seed),
//! the x0 prediction at sigma 1 with frame 0 clean (timestep 0 on its tokens, exactly as the
//! trainer conditions it) and frames 1.. pure noise, averaged over PROBE_DRAWS noise draws
//! (default 4; the same draws at every report). Columns, per latent frame f = 1..F-1, three
//! numbers `true/start/still`:
//!
//! - true: over the moving scenes, the object's share recovered at its true place in frame f:
//!   1 - (x0 error there) / (the error of predicting the background there), as `position_probe`'s
//!   score; 1 = the object is where it should be, 0 = background there, < 0 = worse than that.
//! - start: over the moving scenes, the object's share at its frame-0 place in frame f, on the
//!   cells of it the object does not truly cover in frame f (in frame 1 the trailing half of the
//!   square, after that all of it): 1 - (error against the object there) / (the error of the
//!   background there). 1 = the object stayed behind (copied without moving), 0 = background
//!   there, as the truth has it.
//! - still: over the "stays still" scenes, the `true` share (true place = frame-0 place).
//!
//! So "moved" reads high/~0, "copied but not moved" low/high (frame 1: ~0.5/high, as half the
//! square overlaps), "lost" ~0/~0. Before training, the same scores of four fixed predictions
//! are printed as a reference: the truth, frame 0 copied into every frame, the background, and
//! zeros (about where an untrained model starts: zero is nearer the object than the background
//! is, so it scores above 0).
//!
//! Settings, from the environment: PROBE_BATCH (default 8), PROBE_LR (peak, default 4e-4; warmup
//! 50 steps, cosine down to 0.1 of it), PROBE_REPORT (steps between reports, default 100),
//! PROBE_FOREGROUND (the trainer's `foreground_weight` on the object's cells in every frame,
//! default 0), PROBE_TERMINAL (the trainer's `terminal_share`, default 0), PROBE_FRAMES (latent
//! frames per clip, 2 to 7, default 7: fewer is cheaper per step), PROBE_DRAWS (noise draws per
//! held-out scene, default 4), PROBE_EVAL_REPEATS (held-out starts per colour x motion, default
//! 2), PROBE_SEED (the trainer's seed: weights, noise and batches; default 3; the colours and
//! the held-out set stay the same).
//!
//! The scores use the current weights (not the EMA), like `position_probe`.
use candle_core::{Device, Tensor};
use ciak_train::train::dit::{DitArch, DitTrainer, TextArch};
use ciak_train::train::flow::{condition_first_frames, flow_batch, TrainRng};
use ciak_train::train::{DitTrainConfig, LatentBatch, LatentSource, Result, TrainError};
use std::time::Instant;

/// Latent channels.
const C: usize = 8;
/// Latent grid of one frame: 8 x 14 tokens of 4x4 latent pixels.
const H: usize = 32;
const W: usize = 56;
/// The spatial patch side: one token is PATCH x PATCH latent pixels, and the object moves one
/// token per frame.
const PATCH: usize = 4;
/// The object's side in latent pixels (2x2 tokens).
const SIDE: usize = 8;
/// Latent frames at most (and by default).
const MAX_FRAMES: usize = 7;

const COLOURS: [&str; 4] = ["red", "blue", "green", "yellow"];

/// The motions: caption words and the move per frame in tokens, (rows, columns).
const MOTIONS: [(&str, isize, isize); 5] =
    [("moves left", 0, -1), ("moves right", 0, 1), ("moves up", -1, 0), ("moves down", 1, 0), ("stays still", 0, 0)];

/// The run's settings: the arguments and the environment's knobs.
struct Settings {
    steps: u64,
    heads: usize,
    layers: usize,
    batch: usize,
    lr: f64,
    report: u64,
    foreground: f64,
    terminal: f64,
    frames: usize,
    draws: usize,
    repeats: usize,
    seed: u64,
}

const USAGE: &str = "usage: carry_probe [STEPS] [WIDTH] [LAYERS]  (defaults 2000 256 6; WIDTH a multiple of 64)";

/// A setting from the environment, else `default`; an error names the knob and its value.
fn knob(name: &str, default: f64) -> std::result::Result<f64, String> {
    match std::env::var(name) {
        Ok(v) => match v.trim().parse::<f64>() {
            Ok(x) if x.is_finite() => Ok(x),
            _ => Err(format!("{name}: expected a number, got `{v}`")),
        },
        Err(_) => Ok(default),
    }
}

/// A whole-number knob in `min..=max`.
fn count_knob(name: &str, default: usize, min: usize, max: usize) -> std::result::Result<usize, String> {
    let x = knob(name, default as f64)?;
    if x.fract() != 0.0 || x < min as f64 || x > max as f64 {
        return Err(format!("{name}: expected a whole number from {min} to {max}, got {x}"));
    }
    Ok(x as usize)
}

/// A whole-number argument, `default` when absent.
fn arg<T: std::str::FromStr>(args: &[String], i: usize, name: &str, default: T) -> std::result::Result<T, String> {
    match args.get(i) {
        None => Ok(default),
        Some(s) => s.parse().map_err(|_| format!("{name}: expected a whole number, got `{s}`\n{USAGE}")),
    }
}

impl Settings {
    fn from_args_and_env(args: &[String]) -> std::result::Result<Self, String> {
        if args.len() > 3 {
            return Err(format!("expected at most 3 arguments, got {}\n{USAGE}", args.len()));
        }
        let steps: u64 = arg(args, 0, "STEPS", 2000)?;
        let width: usize = arg(args, 1, "WIDTH", 256)?;
        let layers: usize = arg(args, 2, "LAYERS", 6)?;
        if steps == 0 {
            return Err(format!("STEPS: expected at least 1\n{USAGE}"));
        }
        if width == 0 || width % 64 != 0 {
            return Err(format!("WIDTH: expected a positive multiple of 64 (heads of 64), got {width}\n{USAGE}"));
        }
        if layers == 0 {
            return Err(format!("LAYERS: expected at least 1\n{USAGE}"));
        }
        let lr = knob("PROBE_LR", 4e-4)?;
        if lr <= 0.0 {
            return Err(format!("PROBE_LR: expected a positive number, got {lr}"));
        }
        let foreground = knob("PROBE_FOREGROUND", 0.0)?;
        if foreground < 0.0 {
            return Err(format!("PROBE_FOREGROUND: expected 0 or more, got {foreground}"));
        }
        let terminal = knob("PROBE_TERMINAL", 0.0)?;
        if !(0.0..=1.0).contains(&terminal) {
            return Err(format!("PROBE_TERMINAL: expected a share from 0 to 1, got {terminal}"));
        }
        let seed = knob("PROBE_SEED", 3.0)?;
        if seed < 0.0 || seed.fract() != 0.0 {
            return Err(format!("PROBE_SEED: expected a whole number of 0 or more, got {seed}"));
        }
        Ok(Self {
            steps,
            heads: width / 64,
            layers,
            batch: count_knob("PROBE_BATCH", 8, 1, 4096)?,
            lr,
            report: count_knob("PROBE_REPORT", 100, 1, usize::MAX)? as u64,
            foreground,
            terminal,
            frames: count_knob("PROBE_FRAMES", MAX_FRAMES, 2, MAX_FRAMES)?,
            draws: count_knob("PROBE_DRAWS", 4, 1, 1024)?,
            repeats: count_knob("PROBE_EVAL_REPEATS", 2, 1, 1000)?,
            seed: seed as u64,
        })
    }
}

/// Each colour's background and object vectors ([C] each), fixed (seed 7) for every run.
struct Palette {
    backgrounds: Vec<Vec<f32>>,
    objects: Vec<Vec<f32>>,
}

impl Palette {
    fn new() -> Self {
        let mut rng = TrainRng::new(7);
        let (mut backgrounds, mut objects) = (Vec::new(), Vec::new());
        for _ in COLOURS {
            backgrounds.push(rng.normals(C));
            objects.push(rng.normals(C).into_iter().map(|v| v * 1.5).collect());
        }
        Self { backgrounds, objects }
    }

    /// |object - background|^2 of `colour` (summed over channels): the error per cell of
    /// predicting one where the other is.
    fn contrast(&self, colour: usize) -> f64 {
        self.objects[colour].iter().zip(&self.backgrounds[colour]).map(|(o, b)| ((o - b) as f64).powi(2)).sum()
    }
}

/// The token-aligned starts along one axis of `span` latent pixels from which `frames - 1` moves
/// of `step` tokens keep the square on the grid.
fn starts(step: isize, span: usize, frames: usize) -> Vec<usize> {
    let last = (span - SIDE) as isize;
    (0..=(span - SIDE) / PATCH)
        .map(|i| i * PATCH)
        .filter(|&s| (0..=last).contains(&(s as isize + step * (PATCH * (frames - 1)) as isize)))
        .collect()
}

/// One clip: a colour, a motion and the square's frame-0 place (top row, left column, latent
/// pixels).
#[derive(Debug, Clone, Copy)]
struct Scene {
    colour: usize,
    motion: usize,
    top: usize,
    left: usize,
}

impl Scene {
    /// A scene of `colour` and `motion` with its start drawn from `rng` among those that keep the
    /// whole track on the grid.
    fn draw(rng: &mut TrainRng, colour: usize, motion: usize, frames: usize) -> Self {
        let (_, dy, dx) = MOTIONS[motion];
        let (rows, cols) = (starts(dy, H, frames), starts(dx, W, frames));
        let top = rows[(rng.next_u64() % rows.len() as u64) as usize];
        let left = cols[(rng.next_u64() % cols.len() as u64) as usize];
        Self { colour, motion, top, left }
    }

    fn caption(&self) -> String {
        format!("a {} square {}", COLOURS[self.colour], MOTIONS[self.motion].0)
    }

    fn still(&self) -> bool {
        MOTIONS[self.motion].1 == 0 && MOTIONS[self.motion].2 == 0
    }

    /// The square's (top, left) in frame `f`.
    fn place(&self, f: usize) -> (usize, usize) {
        let (_, dy, dx) = MOTIONS[self.motion];
        let shift = |at: usize, d: isize| (at as isize + d * (PATCH * f) as isize) as usize;
        (shift(self.top, dy), shift(self.left, dx))
    }

    /// Whether the square covers latent pixel (y, x) in frame `f`.
    fn covers(&self, f: usize, y: usize, x: usize) -> bool {
        let (top, left) = self.place(f);
        (top..top + SIDE).contains(&y) && (left..left + SIDE).contains(&x)
    }

    /// The clip's latent [C, F, H, W] and its object cells [1, F, H, W] (1 on the square), flat.
    fn render(&self, palette: &Palette, frames: usize) -> (Vec<f32>, Vec<f32>) {
        let mut mask = vec![0f32; frames * H * W];
        for f in 0..frames {
            for y in 0..H {
                for x in 0..W {
                    mask[(f * H + y) * W + x] = f32::from(u8::from(self.covers(f, y, x)));
                }
            }
        }
        let (bg, obj) = (&palette.backgrounds[self.colour], &palette.objects[self.colour]);
        let latent = (0..C).flat_map(|c| mask.iter().map(move |&m| if m > 0.0 { obj[c] } else { bg[c] })).collect();
        (latent, mask)
    }
}

/// Scenes stacked as latents [n, C, F, H, W] and object cells [n, 1, F, H, W].
fn stack(scenes: &[Scene], palette: &Palette, frames: usize, device: &Device) -> Result<(Tensor, Tensor)> {
    let (mut latents, mut masks) = (Vec::new(), Vec::new());
    for scene in scenes {
        let (latent, mask) = scene.render(palette, frames);
        latents.extend(latent);
        masks.extend(mask);
    }
    let n = scenes.len();
    Ok((Tensor::from_vec(latents, (n, C, frames, H, W), device)?, Tensor::from_vec(masks, (n, 1, frames, H, W), device)?))
}

/// The training clips: colour, motion and start drawn at random for every clip.
struct Carry {
    palette: Palette,
    frames: usize,
    rng: TrainRng,
    device: Device,
}

impl LatentSource for Carry {
    fn batch(&mut self, n: usize) -> Result<LatentBatch> {
        let scenes: Vec<Scene> = (0..n)
            .map(|_| {
                let colour = (self.rng.next_u64() % COLOURS.len() as u64) as usize;
                let motion = (self.rng.next_u64() % MOTIONS.len() as u64) as usize;
                Scene::draw(&mut self.rng, colour, motion, self.frames)
            })
            .collect();
        let (latents, foreground) = stack(&scenes, &self.palette, self.frames, &self.device)?;
        Ok(LatentBatch { latents, captions: scenes.iter().map(Scene::caption).collect(), foreground: Some(foreground) })
    }

    fn state(&self) -> serde_json::Value {
        serde_json::json!({ "rng": self.rng.state })
    }

    fn restore(&mut self, state: &serde_json::Value) -> Result<()> {
        let rng = state["rng"].as_u64().ok_or_else(|| TrainError::Data(format!("expected {{\"rng\": <u64>}}, got {state}")))?;
        self.rng = TrainRng::new(rng);
        Ok(())
    }
}

fn config(tokenizer: std::path::PathBuf, s: &Settings) -> DitTrainConfig {
    DitTrainConfig {
        seed: s.seed,
        warmup_steps: 50,
        ema_decay: 0.99,
        foreground_weight: s.foreground,
        // every clip: frame 0 clean at timestep 0, out of the loss
        first_frame_share: 1.0,
        terminal_share: s.terminal,
        checkpoint_every: 1_000_000,
        ..DitTrainConfig::new(DitArch::new(s.heads, s.layers, PATCH, C), TextArch::new(64, 4, 1), tokenizer, s.batch, s.steps, s.lr)
    }
}

/// The fixed held-out scenes: every colour x motion `repeats` times, starts from seed 1234.
fn held_out(repeats: usize, frames: usize) -> Vec<Scene> {
    let mut rng = TrainRng::new(1234);
    let mut scenes = Vec::new();
    for motion in 0..MOTIONS.len() {
        for colour in 0..COLOURS.len() {
            for _ in 0..repeats {
                scenes.push(Scene::draw(&mut rng, colour, motion, frames));
            }
        }
    }
    scenes
}

/// Per latent frame 1..F-1: (true, start) shares averaged over the moving scenes and the true
/// share over the still ones (see the header), of the x0 predictions `preds` (one flat
/// [C, F, H, W] per scene).
fn scores(scenes: &[Scene], preds: &[Vec<f32>], palette: &Palette, frames: usize) -> Vec<(f64, f64, f64)> {
    let mut out = Vec::new();
    for f in 1..frames {
        let (mut moving_true, mut moving_start, mut still, mut n_moving, mut n_still) = (0.0, 0.0, 0.0, 0usize, 0usize);
        for (scene, pred) in scenes.iter().zip(preds) {
            let obj = &palette.objects[scene.colour];
            let contrast = palette.contrast(scene.colour);
            // squared distance (over channels) of the prediction at (y, x) from `v`
            let dist = |y: usize, x: usize, v: &[f32]| -> f64 {
                (0..C).map(|c| ((pred[((c * frames + f) * H + y) * W + x] - v[c]) as f64).powi(2)).sum()
            };
            let (mut true_err, mut true_n, mut start_err, mut start_n) = (0.0, 0usize, 0.0, 0usize);
            for y in 0..H {
                for x in 0..W {
                    if scene.covers(f, y, x) {
                        true_err += dist(y, x, obj);
                        true_n += 1;
                    } else if scene.covers(0, y, x) {
                        // where the object started and no longer is: its share there
                        start_err += dist(y, x, obj);
                        start_n += 1;
                    }
                }
            }
            let share = |err: f64, n: usize| 1.0 - err / n as f64 / contrast;
            if scene.still() {
                still += share(true_err, true_n);
                n_still += 1;
            } else {
                moving_true += share(true_err, true_n);
                moving_start += share(start_err, start_n);
                n_moving += 1;
            }
        }
        let mean = |sum: f64, n: usize| if n == 0 { f64::NAN } else { sum / n as f64 };
        out.push((mean(moving_true, n_moving), mean(moving_start, n_moving), mean(still, n_still)));
    }
    out
}

/// The x0 predictions at sigma 1 of the held-out `scenes`, frame 0 clean: per scene, `draws`
/// noise draws (from seed 99, the same at every report) averaged, as flat [C, F, H, W].
fn predict(trainer: &DitTrainer, scenes: &[Scene], palette: &Palette, s: &Settings, device: &Device) -> Result<Vec<Vec<f32>>> {
    let mut rng = TrainRng::new(99);
    let tokens_per_frame = (H / PATCH) * (W / PATCH);
    let mut out = Vec::new();
    for scene in scenes {
        let (x0, _) = stack(&vec![*scene; s.draws], palette, s.frames, device)?;
        let noise = rng.gaussian(x0.dims(), device)?;
        // exactly the trainer's inputs at sigma 1 with a clean first frame
        let fb = flow_batch(&x0, &noise, &vec![1.0; s.draws])?;
        let (fb, _) = condition_first_frames(fb, &x0, &vec![true; s.draws], tokens_per_frame)?;
        let ctx = trainer.models.encode_text(&vec![scene.caption(); s.draws])?;
        let v = trainer.models.transformer.forward(&fb.noisy, &fb.timesteps, &ctx, None)?;
        // x0 = x_sigma - sigma * v at sigma 1 (frame 0's own value means nothing: it is not scored)
        let pred = (&fb.noisy - v)?.detach().mean(0)?;
        out.push(pred.flatten_all()?.to_vec1::<f32>()?);
    }
    Ok(out)
}

/// One report line's columns: `true/start/still` per frame.
fn columns(scores: &[(f64, f64, f64)]) -> String {
    scores.iter().map(|(t, s, still)| format!(" {t:>5.2}/{s:>5.2}/{still:>5.2}")).collect()
}

/// Checks the held-out clips hold what the scores assume: a still clip's every frame is frame 0,
/// a moving clip's frame f is frame 0 moved f tokens (and the square stays whole on the grid).
fn check_scenes(scenes: &[Scene], palette: &Palette, frames: usize) -> Result<()> {
    for scene in scenes {
        let (latent, mask) = scene.render(palette, frames);
        let (_, dy, dx) = MOTIONS[scene.motion];
        for f in 0..frames {
            let cells: f32 = mask[f * H * W..(f + 1) * H * W].iter().sum();
            if cells != (SIDE * SIDE) as f32 {
                return Err(TrainError::Data(format!("{scene:?}: frame {f} holds {cells} object cells, expected {}", SIDE * SIDE)));
            }
            for c in 0..C {
                for y in 0..H {
                    for x in 0..W {
                        // the cell of frame 0 this one was carried from, if on the grid
                        let (y0, x0) = (y as isize - dy * (PATCH * f) as isize, x as isize - dx * (PATCH * f) as isize);
                        let here = latent[((c * frames + f) * H + y) * W + x];
                        let want = if (0..H as isize).contains(&y0) && (0..W as isize).contains(&x0) {
                            latent[((c * frames) * H + y0 as usize) * W + x0 as usize]
                        } else {
                            palette.backgrounds[scene.colour][c]
                        };
                        if here != want {
                            return Err(TrainError::Data(format!("{scene:?}: frame {f} at ({y}, {x}) is not frame 0 carried")));
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// The reference scores of four fixed predictions: the truth, frame 0 in every frame (copied,
/// not moved), the background alone and zeros.
fn print_references(scenes: &[Scene], palette: &Palette, frames: usize) {
    let truth: Vec<Vec<f32>> = scenes.iter().map(|s| s.render(palette, frames).0).collect();
    let copied: Vec<Vec<f32>> = truth
        .iter()
        .map(|t| {
            let frame0 = |c: usize| t[c * frames * H * W..(c * frames + 1) * H * W].to_vec();
            (0..C).flat_map(|c| (0..frames).flat_map(move |_| frame0(c))).collect()
        })
        .collect();
    let background: Vec<Vec<f32>> =
        scenes.iter().map(|s| (0..C).flat_map(|c| vec![palette.backgrounds[s.colour][c]; frames * H * W]).collect()).collect();
    // zeros: about what an untrained model gives (x0 = noise - v, averaged over the draws); the
    // shares it scores are above 0, as zero is nearer the object (x1.5) than the background is
    let zeros: Vec<Vec<f32>> = scenes.iter().map(|_| vec![0.0; C * frames * H * W]).collect();
    for (name, preds) in [("truth", &truth), ("copy", &copied), ("bg", &background), ("zero", &zeros)] {
        println!("{name:>5} {:>6} {}", "-", columns(&scores(scenes, preds, palette, frames)));
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("carry_probe: {e}");
        std::process::exit(1);
    }
}

fn run() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}\n(see the example's header for the columns and the PROBE_* settings)");
        return Ok(());
    }
    let s = Settings::from_args_and_env(&args)?;
    let device = Device::Cpu;
    let dir = std::env::temp_dir().join(format!("ciak-carry-probe-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let tokenizer = dir.join("tokenizer.json");
    ciak_train::tokenizer::write_tokenizer_json(&tokenizer)?;
    let result = probe(&s, tokenizer, &device);
    std::fs::remove_dir_all(&dir).ok();
    result
}

fn probe(s: &Settings, tokenizer: std::path::PathBuf, device: &Device) -> std::result::Result<(), Box<dyn std::error::Error>> {
    // every caption word must be in the built-in vocabulary (an unknown word reads as <unk>)
    let vocabulary = ciak_train::tokenizer::tokens();
    for word in COLOURS.iter().chain(MOTIONS.iter().map(|m| &m.0)).flat_map(|w| w.split(' ')).chain(["a", "square"]) {
        if !vocabulary.iter().any(|v| v == word) {
            return Err(format!("caption word `{word}` is not in the built-in vocabulary").into());
        }
    }
    let palette = Palette::new();
    let scenes = held_out(s.repeats, s.frames);
    check_scenes(&scenes, &palette, s.frames)?;
    let mut trainer = DitTrainer::new(&config(tokenizer, s), device)?;
    let (dit, text) = trainer.models.num_parameters();
    // the source's own copy of the (fixed) palette: the reports borrow `palette` while it trains
    let mut source = Carry { palette: Palette::new(), frames: s.frames, rng: TrainRng::new(5), device: device.clone() };
    let moving = scenes.iter().filter(|sc| !sc.still()).count();
    println!(
        "carry_probe: width {} ({} heads) layers {}, {dit} DiT + {text} text parameters; latents [{C}, {}, {H}, {W}], batch {}, lr {}, {} steps",
        s.heads * 64,
        s.heads,
        s.layers,
        s.frames,
        s.batch,
        s.lr,
        s.steps
    );
    println!(
        "held out: {} scenes ({moving} moving, {} still), x0 at sigma 1 with frame 0 clean, mean of {} noise draws",
        scenes.len(),
        scenes.len() - moving,
        s.draws
    );
    println!("per latent frame f: true/start/still = moving objects' share at their true place / moving objects' share left at");
    println!("their frame-0 place (cells not truly covered in f) / still objects' share (1 = object there, 0 = background)");
    let head: String = (1..s.frames).map(|f| format!(" {:>17}", format!("frame {f}"))).collect();
    println!(" step   loss {head}   elapsed");
    print_references(&scenes, &palette, s.frames);
    let start = Instant::now();
    let report = |trainer: &DitTrainer, step: u64, loss: Option<f64>, step_seconds: Option<f64>| -> Result<()> {
        let preds = predict(trainer, &scenes, &palette, s, device)?;
        let loss = loss.map_or("     -".to_string(), |l| format!("{l:.4}"));
        let per_step = step_seconds.map_or(String::new(), |t| format!(" ({t:.2} s/step)"));
        println!("{step:>5} {loss} {}   {:.0} s{per_step}", columns(&scores(&scenes, &preds, &palette, s.frames)), start.elapsed().as_secs_f64());
        Ok(())
    };
    report(&trainer, 0, None, None)?;
    let (mut losses, mut seconds) = (Vec::new(), 0.0);
    for step in 1..=s.steps {
        let stats = trainer.train_step(&mut source)?;
        losses.push(stats.loss);
        seconds += stats.duration.as_secs_f64();
        if step % s.report == 0 || step == s.steps {
            let n = losses.len() as f64;
            report(&trainer, step, Some(losses.iter().sum::<f64>() / n), Some(seconds / n))?;
            losses.clear();
            seconds = 0.0;
        }
    }
    Ok(())
}
