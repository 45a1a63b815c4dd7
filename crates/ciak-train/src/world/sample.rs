//! Random scenes: every attribute value reachable, objects planned to stay inside the frame and
//! apart, colours resampled until they contrast with the background.
use super::color::Color;
use super::scene::{
    Aspect, Background, CameraKind, CameraMove, Motion, Object, Scene, Shape, Size, DEFAULT_FPS, DEFAULT_FRAMES,
    OBJECT_SCALE,
};
use super::track::{SceneError, MARGIN_PX};
use crate::rng::Rng;
use crate::split::{is_held_out, is_held_out_combo, Split, HELD_OUT_COMBOS};
use serde::{Deserialize, Serialize};
use std::f32::consts::PI;

/// Knobs of the scene distribution (serde, so a training run can record it; a JSON object with
/// some of the fields takes the defaults for the rest, so a training config can narrow the world
/// for a curriculum stage, e.g. `{"object_count_weights": [1, 0, 0]}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplerConfig {
    /// Aspect ratios drawn uniformly.
    pub aspects: Vec<Aspect>,
    pub frames: usize,
    pub fps: u32,
    /// Relative weights of one, two and three objects.
    pub object_count_weights: [f32; 3],
    /// Relative weights of plain, sky over ground, checkerboard and gradient backgrounds.
    pub background_weights: [f32; 4],
    /// Chance of a camera move on a checkerboard (the only background where a move is visible).
    pub camera_probability: f32,
    /// Fraction of the room an object's start position is drawn from, centred in that room
    /// (the positions that keep its whole track inside the frame). 1: anywhere it fits; 0.25: a
    /// ball that moves right always crosses near the middle. A small model learns a clip's layout
    /// from noise much sooner when the caption pins it down; objects that do not fit a narrow
    /// spot (the second of two) fall back to the whole room after half of their tries.
    pub placement_spread: f32,
    /// Fraction of each motion's range of strength (travel, growth, turn) drawn from, centred. 1:
    /// the whole range; 0: every ball that moves right travels the same share of the frame. With
    /// both spreads at 0 a caption that names the size pins the clip down: the clip the model
    /// has to draw from pure noise is the caption's mean clip, not a blur over places and speeds.
    pub amount_spread: f32,
    /// Fraction of the range of a scene's free layout drawn from, centred: the horizon of a sky
    /// over ground (0.55-0.7 of the height down) and the cell of a checkerboard (0.25-0.33 of the
    /// short side). 1: the whole range; 0: every sky meets its ground at the same line and every
    /// checkerboard has the same cells. A caption names neither, so at 0 the background the model
    /// must draw from pure noise is the caption's own, not a blur over lines and cell sizes (what
    /// the spreads above do for objects).
    pub background_spread: f32,
    /// Where in its room each object's start is drawn from, by the object's place in the scene
    /// (first, second, third): `[x, y]`, each a fraction of the room along that axis, 0 the
    /// lowest start that keeps the track inside (touching the left or top margin), 1 the highest,
    /// 0.5 the middle. The `placement_spread` window sits at the anchor (centred at 0.5, flush
    /// with the room's end at 0 or 1); at spread 1 the anchors change nothing. A Wan DiT has no
    /// absolute position signal but RoPE's offsets, and learns where the edges are long before it
    /// learns the middle (`examples/position_probe`), so a layout the caption pins down is learnt
    /// much sooner against an edge.
    pub placement_anchors: [[f32; 2]; 3],
    /// Every object drawn this many times its size's [`Size::fraction`] (1: as defined; the three
    /// sizes keep their ratios). With 16-pixel tokens (4x VAE, 1x4x4 patches) a small object is
    /// 1.4 tokens across at 1 and 2.3 at 1.6: a world for a small DiT can make its objects a
    /// larger share of the loss and of each token (docs/training.md, "larger objects"). Large
    /// objects that cannot make a move in a frame's short side are redrawn as another size or
    /// motion, as at 1.
    pub object_scale: f32,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self {
            aspects: Aspect::ALL.to_vec(),
            frames: DEFAULT_FRAMES,
            fps: DEFAULT_FPS,
            object_count_weights: [0.6, 0.3, 0.1],
            background_weights: [0.45, 0.2, 0.2, 0.15],
            camera_probability: 0.5,
            placement_spread: 1.0,
            amount_spread: 1.0,
            background_spread: 1.0,
            placement_anchors: [[0.5; 2]; 3],
            object_scale: 1.0,
        }
    }
}

impl SamplerConfig {
    /// Reads a JSON object of some of the fields (the rest default) and validates it; an error
    /// names the field it is about.
    pub fn from_json(value: &serde_json::Value) -> Result<Self, String> {
        let fields = value.as_object().ok_or_else(|| format!("expected a JSON object of SamplerConfig fields, got {value}"))?;
        // one field at a time, so that an error names its field (serde's own messages for a
        // wrong array length or type do not)
        for (key, v) in fields {
            let one = serde_json::Value::Object([(key.clone(), v.clone())].into_iter().collect());
            serde_json::from_value::<Self>(one).map_err(|e| match e.to_string() {
                m if m.starts_with("unknown field") => m,
                m => format!("`{key}`: {m}, got {v}"),
            })?;
        }
        let cfg: Self = serde_json::from_value(value.clone()).map_err(|e| e.to_string())?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks that scenes can be drawn: at least one aspect, weights that are finite, not
    /// negative and not all zero, a probability, spreads and anchors in [0, 1], an object scale
    /// in [0.25, 3], at least 2 frames.
    pub fn validate(&self) -> Result<(), String> {
        if self.aspects.is_empty() {
            return Err("expected at least one aspect in `aspects`, got none".into());
        }
        let weights = |name: &str, w: &[f32]| {
            if w.iter().any(|x| !x.is_finite() || *x < 0.0) || w.iter().sum::<f32>() <= 0.0 {
                Err(format!("expected `{name}` of weights >= 0 with a positive sum, got {w:?}"))
            } else {
                Ok(())
            }
        };
        weights("object_count_weights", &self.object_count_weights)?;
        weights("background_weights", &self.background_weights)?;
        for (name, v) in [
            ("camera_probability", self.camera_probability),
            ("placement_spread", self.placement_spread),
            ("amount_spread", self.amount_spread),
            ("background_spread", self.background_spread),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("expected `{name}` in [0, 1], got {v}"));
            }
        }
        if let Some(bad) = self.placement_anchors.iter().flatten().find(|a| !(0.0..=1.0).contains(*a)) {
            return Err(format!("expected `placement_anchors` in [0, 1], got {bad} in {:?}", self.placement_anchors));
        }
        if !OBJECT_SCALE.contains(&self.object_scale) {
            return Err(SceneError::ObjectScale(self.object_scale).to_string());
        }
        if self.frames < 2 || self.fps == 0 {
            return Err(format!("expected at least 2 `frames` and a positive `fps`, got {} and {}", self.frames, self.fps));
        }
        Ok(())
    }
}

/// Sky colours that read as a sky (day, clear, sunset, dusk, night).
const SKIES: [Color; 6] = [Color::Blue, Color::Cyan, Color::Orange, Color::Purple, Color::Pink, Color::Black];
const GROUNDS: [Color; 6] = [Color::Green, Color::Yellow, Color::White, Color::Orange, Color::Black, Color::Red];
/// Checkerboards pair a light colour with a dark one.
const CHECKER_LIGHT: [Color; 5] = [Color::White, Color::Yellow, Color::Cyan, Color::Pink, Color::Orange];
const CHECKER_DARK: [Color; 5] = [Color::Black, Color::Blue, Color::Purple, Color::Red, Color::Green];

/// Draws one scene; the result always passes [`Scene::validate`].
pub fn sample_scene(rng: &mut Rng, cfg: &SamplerConfig, split: Split) -> Scene {
    assert!(!cfg.aspects.is_empty(), "SamplerConfig.aspects is empty");
    // Drawn once: retrying a crowded scene with a new count would skew the counts toward one.
    let n = rng.weighted(&cfg.object_count_weights) + 1;
    loop {
        let aspect = rng.pick(&cfg.aspects);
        let background = sample_background(rng, cfg);
        let camera = match background {
            Background::Checkerboard { .. } if rng.chance(cfg.camera_probability) => Some(sample_camera(rng)),
            _ => None,
        };
        let mut scene = Scene {
            aspect,
            frames: cfg.frames.max(2),
            fps: cfg.fps,
            background,
            objects: Vec::new(),
            camera,
            object_scale: cfg.object_scale,
        };
        for k in 0..n {
            let forced = (split == Split::Eval && k == 0).then(|| rng.pick(&HELD_OUT_COMBOS));
            if !place_object(rng, &mut scene, split, forced, cfg) {
                break;
            }
        }
        if scene.objects.len() == n {
            debug_assert_eq!(scene.validate(), Ok(()));
            return scene;
        }
    }
}

fn sample_background(rng: &mut Rng, cfg: &SamplerConfig) -> Background {
    match rng.weighted(&cfg.background_weights) {
        0 => Background::Plain { color: rng.pick(&Color::ALL) },
        1 => loop {
            let (sky, ground) = (rng.pick(&SKIES), rng.pick(&GROUNDS));
            if sky.contrasts_with(ground) {
                break Background::SkyGround { sky, ground, horizon: centred(rng, 0.55, 0.7, cfg.background_spread) };
            }
        },
        2 => loop {
            let (a, b) = (rng.pick(&CHECKER_LIGHT), rng.pick(&CHECKER_DARK));
            if a.contrasts_with(b) {
                break Background::Checkerboard { a, b, cell: centred(rng, 0.25, 0.33, cfg.background_spread) };
            }
        },
        _ => loop {
            let (top, bottom) = (rng.pick(&Color::ALL), rng.pick(&Color::ALL));
            if top.contrasts_with(bottom) {
                break Background::Gradient { top, bottom };
            }
        },
    }
}

fn sample_camera(rng: &mut Rng) -> CameraMove {
    let kind = rng.pick(&CameraKind::ALL);
    let amount = match kind {
        CameraKind::PanLeft | CameraKind::PanRight => rng.range(0.25, 0.4),
        CameraKind::ZoomIn | CameraKind::ZoomOut => rng.range(1.4, 1.7),
    };
    CameraMove { kind, amount }
}

/// Motions that stay readable under the scene's camera move, with their weights.
fn motion_choices(scene: &Scene, shape: Shape) -> Vec<(Motion, f32)> {
    Motion::ALL
        .into_iter()
        .filter(|&m| m != Motion::Spin || shape.can_spin())
        .filter(|&m| match scene.camera.map(|c| c.kind) {
            None => true,
            // Sideways object motion under a pan would read as a faster or slower pan.
            Some(CameraKind::PanLeft | CameraKind::PanRight) => {
                matches!(m, Motion::Still | Motion::Up | Motion::Down | Motion::Bounce | Motion::Grow | Motion::Shrink | Motion::Spin)
            }
            Some(CameraKind::ZoomIn | CameraKind::ZoomOut) => matches!(m, Motion::Still | Motion::Spin),
        })
        // Four diagonals would otherwise take a third of all clips.
        .map(|m| (m, if m.is_diagonal() { 0.5 } else { 1.0 }))
        .collect()
}

/// Adds one object that fits; false after too many failed tries (the caller starts over).
fn place_object(
    rng: &mut Rng,
    scene: &mut Scene,
    split: Split,
    forced: Option<(Color, Shape, Motion)>,
    cfg: &SamplerConfig,
) -> bool {
    let samples = scene.background.contrast_samples();
    for attempt in 0..40 {
        let (color, shape, motion) = match forced {
            Some(combo) => combo,
            None => {
                let shape = rng.pick(&Shape::ALL);
                let choices = motion_choices(scene, shape);
                let weights: Vec<f32> = choices.iter().map(|c| c.1).collect();
                let motion = choices[rng.weighted(&weights)].0;
                let colors: Vec<Color> = Color::ALL
                    .into_iter()
                    .filter(|&c| scene.objects.iter().all(|o| o.color != c))
                    .filter(|&c| split == Split::Eval || !is_held_out_combo(c, shape, motion))
                    .collect();
                if colors.is_empty() {
                    continue;
                }
                (rng.pick(&colors), shape, motion)
            }
        };
        let rgb = color.rgb().map(f32::from);
        if samples.iter().any(|s| super::color::delta_e(rgb, *s) < super::color::MIN_CONTRAST)
            || !motion_choices(scene, shape).iter().any(|c| c.0 == motion)
        {
            if forced.is_some() {
                return false;
            }
            continue;
        }
        let size = rng.pick(&Size::ALL);
        let Some(amount) = sample_amount(rng, scene, shape, size, motion, cfg.amount_spread) else { continue };
        let mut object = Object { shape, color, size, start: [0.5, 0.5], motion, amount };
        let spread = if attempt < 20 { cfg.placement_spread } else { 1.0 };
        let anchor = cfg.placement_anchors[scene.objects.len().min(2)];
        let Some(start) = sample_start(rng, scene, object, spread, anchor) else { continue };
        object.start = start;
        debug_assert!(split == Split::Eval || !is_held_out(&object));
        scene.objects.push(object);
        if scene.validate().is_ok() {
            return true;
        }
        scene.objects.pop();
    }
    false
}

/// The motion's strength, shortened to what the frame allows; `None` if even a short move would
/// not fit (a large shape moving along a short side).
fn sample_amount(rng: &mut Rng, scene: &Scene, shape: Shape, size: Size, motion: Motion, spread: f32) -> Option<f32> {
    let (w, h) = (scene.width() as f32, scene.height() as f32);
    let bound = scene.half_extent(size) * shape.bound_factor() + MARGIN_PX;
    // Largest travel along each axis that keeps the shape inside, as a fraction of that axis.
    let room_x = 1.0 - 2.0 * bound / w;
    let room_y = 1.0 - 2.0 * bound / h;
    let fit = |want: f32, room: f32, least: f32| (room >= least).then(|| want.min(room));
    match motion {
        Motion::Left | Motion::Right => fit(centred(rng, 0.4, 0.6, spread), room_x, 0.35),
        Motion::Up | Motion::Down => fit(centred(rng, 0.4, 0.6, spread), room_y, 0.35),
        Motion::UpLeft | Motion::UpRight | Motion::DownLeft | Motion::DownRight => {
            fit(centred(rng, 0.35, 0.5, spread), room_x.min(room_y), 0.3)
        }
        Motion::Bounce => fit(centred(rng, 0.3, 0.45, spread), room_y, 0.25),
        Motion::Grow | Motion::Shrink => Some(centred(rng, 2.2, 2.8, spread)),
        Motion::Spin => Some(centred(rng, 0.9 * PI, 1.4 * PI, spread)),
        Motion::Still => Some(0.0),
    }
}

/// A start position that keeps the whole track inside the frame (exact without zoom; with zoom the
/// caller's validation rejects the rare misses), drawn from the `spread` window at `anchor`.
fn sample_start(rng: &mut Rng, scene: &Scene, object: Object, spread: f32, anchor: [f32; 2]) -> Option<[f32; 2]> {
    let mut probe = scene.clone();
    probe.objects = vec![object];
    let (w, h) = (scene.width() as f32, scene.height() as f32);
    let (mut lo_x, mut hi_x, mut lo_y, mut hi_y) = (f32::MIN, f32::MAX, f32::MIN, f32::MAX);
    for f in 0..scene.frames {
        let s = probe.object_state(0, f);
        let b = s.bound + MARGIN_PX;
        lo_x = lo_x.max(b - s.center[0]);
        hi_x = hi_x.min(w - b - s.center[0]);
        lo_y = lo_y.max(b - s.center[1]);
        hi_y = hi_y.min(h - b - s.center[1]);
    }
    if lo_x > hi_x || lo_y > hi_y {
        return None;
    }
    let zoom = probe.view(0).zoom;
    let x = anchored(rng, lo_x, hi_x, spread, anchor[0]);
    let y = anchored(rng, lo_y, hi_y, spread, anchor[1]);
    Some([0.5 + x / zoom / w, 0.5 + y / zoom / h])
}

/// A draw from the centred `spread` fraction of `lo..hi`: the plain draw at 1 and above (so the
/// default distribution is unchanged number for number), the midpoint at 0.
fn centred(rng: &mut Rng, lo: f32, hi: f32, spread: f32) -> f32 {
    anchored(rng, lo, hi, spread, 0.5)
}

/// A draw from the `spread` fraction of `lo..hi` placed at `anchor` (0: flush with `lo`, 0.5:
/// centred, 1: flush with `hi`): the plain draw at spread 1 and above, the anchor point itself
/// at 0.
fn anchored(rng: &mut Rng, lo: f32, hi: f32, spread: f32, anchor: f32) -> f32 {
    if spread >= 1.0 {
        rng.range(lo, hi)
    } else {
        let width = (hi - lo) * spread.max(0.0);
        let from = lo + (hi - lo - width) * anchor;
        rng.range(from, from + width)
    }
}
