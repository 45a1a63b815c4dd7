//! Reads a clip the way a person would, from its RGB frames alone: what the background is, where
//! each object is on every frame, and from that each object's colour, shape and motion.
//!
//! The only prior is the number of objects to look for. Steps:
//! 1. Background: the per-pixel temporal median removes moving objects; rows that are uniform
//!    mean a row model (plain, sky over ground, vertical gradient, told apart by which of a
//!    constant, a step or a line fits the row colours best), otherwise a checkerboard (two
//!    colours, and a rank-1 fit `share = (1 - u(x) v(y)) / 2` of where each colour is).
//!    Pixels that differ from the fit are left out and the fit is redone once, so still objects
//!    do not bend it.
//!    The reference each frame is compared with is the temporal median itself (so codec or VAE
//!    seams of a static background cancel), and the fitted model only under still objects.
//! 2. Foreground: CIELAB distance from that reference above a threshold, opened by a 3x3
//!    square so thin seams do not join blobs; 8-connected components.
//! 3. Tracks: the `n` largest components of the fullest frame, followed frame to frame by colour
//!    and position (the cheapest one-to-one assignment).
//! 4. Per object: colour = nearest palette colour of the median interior pixel; shape from the
//!    rotation-invariant harmonics `|sum w r^2 e^(ik theta)| / sum w r^2` (k = 3, 4, 5) of the
//!    anti-aliased mask, since a triangle, square and star only have harmonics that are multiples
//!    of 3, 4 and 5 and a circle has none (nor one dominant harmonic); motion from the centroid's straight-line displacement,
//!    the bounce left after removing it, the area trend and the turn of the shape's k-fold
//!    orientation `arg(Z_k) / k`.
//! 5. Flicker: the temporal second difference `|I(f) - (I(f-1) + I(f+1)) / 2|` over background
//!    pixels, in 8-bit levels.
use crate::world::{Background, Clip, Color, Motion, Shape};
use serde::{Deserialize, Serialize};
use std::f32::consts::PI;

/// Background layout, as the world draws them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackgroundKind {
    Plain,
    SkyGround,
    Checkerboard,
    Gradient,
}

impl BackgroundKind {
    pub const ALL: [BackgroundKind; 4] =
        [BackgroundKind::Plain, BackgroundKind::SkyGround, BackgroundKind::Checkerboard, BackgroundKind::Gradient];

    pub fn of(bg: &Background) -> Self {
        match bg {
            Background::Plain { .. } => BackgroundKind::Plain,
            Background::SkyGround { .. } => BackgroundKind::SkyGround,
            Background::Checkerboard { .. } => BackgroundKind::Checkerboard,
            Background::Gradient { .. } => BackgroundKind::Gradient,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            BackgroundKind::Plain => "plain",
            BackgroundKind::SkyGround => "sky_ground",
            BackgroundKind::Checkerboard => "checkerboard",
            BackgroundKind::Gradient => "gradient",
        }
    }
}

/// Thresholds of the analyzer, in one place so the docs can quote them.
pub mod limits {
    /// CIELAB distance from the background above which a pixel is foreground (palette colours
    /// are at least 50 apart from every background colour they are drawn on).
    pub const FOREGROUND_DE: f32 = 22.0;
    /// Smallest blob, in pixels, that can be an object (a small star at its smallest is ~120).
    pub const MIN_AREA: usize = 12;
    /// Mean RGB distance of the row colours from one colour below which a background is plain.
    pub const PLAIN_RESIDUAL: f32 = 10.0;
    /// Median share of a row's pixels near the row's colour above which the background is made
    /// of rows (plain, sky, gradient) rather than a checkerboard.
    pub const ROW_UNIFORMITY: f32 = 0.75;
    /// Largest k = 3, 4, 5 harmonic of a circle; a square has ~0.29, a triangle ~0.55.
    pub const CIRCLE_HARMONIC: f32 = 0.1;
    /// A triangle, square or star has one dominant harmonic: at least this many times the next
    /// (measured >= 2.4 after H.264, ~1.1 for a circle's noise).
    pub const DOMINANCE: f32 = 1.6;
    /// Area ratio (last frames / first frames) beyond which an object grows (or below 1/x shrinks).
    pub const GROW_RATIO: f32 = 1.8;
    /// Straight-line displacement, in frame widths and heights, that counts as travel.
    pub const TRAVEL: f32 = 0.12;
    /// Up-and-down excursion left after the straight line, in frame heights, that is a bounce.
    pub const BOUNCE: f32 = 0.08;
    /// Total turn, in radians, that is a spin.
    pub const SPIN: f32 = 0.6;
}

/// What the analyzer saw behind the objects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackgroundReading {
    pub kind: BackgroundKind,
    /// Plain: [colour]; sky over ground: [sky, ground]; gradient: [top, bottom]; checkerboard:
    /// its two colours (unordered).
    pub colors: Vec<Color>,
    /// The measured RGB values behind `colors`.
    pub rgb: Vec<[f32; 3]>,
    /// Median share of row pixels near their row colour (low for a checkerboard).
    pub row_uniformity: f32,
    /// Mean RGB distance of the row colours from a constant, a step and a line (none for a
    /// checkerboard, which is not made of rows).
    pub residuals: Option<[f32; 3]>,
}

/// One object's trajectory sample.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TrackPoint {
    pub frame: usize,
    /// Centroid in pixels (x right, y down).
    pub x: f32,
    pub y: f32,
    /// Anti-aliased area in pixels.
    pub area: f32,
}

/// What the analyzer read about one object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObjectReading {
    pub color: Color,
    /// Median interior colour.
    pub rgb: [f32; 3],
    pub shape: Shape,
    pub motion: Motion,
    /// Frames the object was found in.
    pub frames_found: usize,
    /// Mean normalised harmonics k = 3, 4, 5 of the mask (triangle, square, star).
    pub harmonics: [f32; 3],
    /// Straight-line displacement over the clip, in frame widths (x) and heights (y).
    pub displacement: [f32; 2],
    /// Vertical excursion around the straight line, in frame heights.
    pub bounce: f32,
    /// Area of the last frames over the first frames.
    pub area_ratio: f32,
    /// Total turn in radians (0 for a circle).
    pub rotation: f32,
    pub track: Vec<TrackPoint>,
}

/// Temporal flicker of the background, in 8-bit levels.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Flicker {
    /// Mean over inner frames of the mean `|I(f) - (I(f-1) + I(f+1)) / 2|` over background pixels.
    pub mean: f32,
    /// The largest per-frame value.
    pub peak: f32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Analysis {
    pub background: BackgroundReading,
    /// Up to the number of objects asked for; fewer when fewer were found.
    pub objects: Vec<ObjectReading>,
    pub flicker: Flicker,
}

/// Reads `clip`, looking for `objects` objects (1 to 3).
pub fn analyze(clip: &Clip, objects: usize) -> Analysis {
    let (w, h, nf) = (clip.width, clip.height, clip.frames);
    assert!(w > 0 && h > 0 && nf > 0 && clip.pixels.len() == w * h * nf * 3, "clip size does not match its pixels");
    let npx = w * h;
    let lab: Vec<[f32; 3]> = clip.pixels.chunks_exact(3).map(|p| lab_u8([p[0], p[1], p[2]])).collect();
    let median = temporal_median(clip);
    let median_lab: Vec<[f32; 3]> = median.iter().map(|&c| lab_f32(c)).collect();

    // Background: fit, leave out what differs from it, fit again.
    let mut excluded = vec![false; npx];
    let mut fit = fit_background(&median, w, h, &excluded);
    for _ in 0..2 {
        let bg_lab: Vec<[f32; 3]> = fit.1.iter().map(|&c| lab_f32(c)).collect();
        let diff: Vec<bool> = median_lab.iter().zip(&bg_lab).map(|(m, b)| dist(*m, *b) > limits::FOREGROUND_DE).collect();
        // Only thick blobs (still objects): thin seams along edges are background the fit must see.
        excluded = dilate(&erode(&diff, w, h), w, h, 3);
        fit = fit_background(&median, w, h, &excluded);
    }
    let (background, model) = fit;
    // The static background as it really is (codec and VAE seams included) is the temporal
    // median, except under still objects: thick blobs where the median leaves the fitted model.
    let model_lab: Vec<[f32; 3]> = model.iter().map(|&c| lab_f32(c)).collect();
    let off: Vec<bool> = median_lab.iter().zip(&model_lab).map(|(m, b)| dist(*m, *b) > limits::FOREGROUND_DE).collect();
    let still = dilate(&erode(&off, w, h), w, h, 3);
    let bg_rgb: Vec<[f32; 3]> = (0..npx).map(|p| if still[p] { model[p] } else { median[p] }).collect();
    let bg_lab: Vec<[f32; 3]> = (0..npx).map(|p| if still[p] { model_lab[p] } else { median_lab[p] }).collect();

    // Foreground masks and blobs per frame.
    let t2 = limits::FOREGROUND_DE * limits::FOREGROUND_DE;
    let mut fg_masks = Vec::with_capacity(nf);
    let mut blobs: Vec<Vec<Blob>> = Vec::with_capacity(nf);
    for f in 0..nf {
        let fl = &lab[f * npx..(f + 1) * npx];
        let mask: Vec<bool> = fl.iter().zip(&bg_lab).map(|(a, b)| dist2(*a, *b) > t2).collect();
        let core = erode(&mask, w, h);
        let opened = dilate(&core, w, h, 1);
        let frame = clip.frame(f);
        blobs.push(
            components(&opened, w, h)
                .into_iter()
                .filter(|c| c.len() >= limits::MIN_AREA)
                .map(|px| Blob::new(px, &core, frame, fl, &bg_lab, w))
                .collect(),
        );
        fg_masks.push(mask);
    }

    let tracks = track_blobs(&blobs, objects.clamp(1, 3), w.min(h) as f32);
    let objects = tracks.iter().map(|t| read_object(clip, &blobs, t, &bg_rgb)).collect();
    let flicker = flicker(clip, &fg_masks);
    Analysis { background, objects, flicker }
}


fn srgb_to_linear(c: f32) -> f32 {
    let c = (c / 255.0).clamp(0.0, 1.0);
    if c <= 0.04045 {
        c / 12.92
    } else {
        ((c + 0.055) / 1.055).powf(2.4)
    }
}

fn lab_from_linear([r, g, b]: [f32; 3]) -> [f32; 3] {
    let x = (0.4124 * r + 0.3576 * g + 0.1805 * b) / 0.95047;
    let y = 0.2126 * r + 0.7152 * g + 0.0722 * b;
    let z = (0.0193 * r + 0.1192 * g + 0.9505 * b) / 1.08883;
    let f = |t: f32| if t > 0.008856 { t.cbrt() } else { 7.787 * t + 16.0 / 116.0 };
    [116.0 * f(y) - 16.0, 500.0 * (f(x) - f(y)), 200.0 * (f(y) - f(z))]
}

/// CIELAB (D65) of an sRGB colour given as 0..255 floats (the same formula as `world::color`).
pub fn lab_f32(rgb: [f32; 3]) -> [f32; 3] {
    lab_from_linear(rgb.map(srgb_to_linear))
}

fn lab_u8(rgb: [u8; 3]) -> [f32; 3] {
    static LUT: std::sync::OnceLock<[f32; 256]> = std::sync::OnceLock::new();
    let lut = LUT.get_or_init(|| std::array::from_fn(|i| srgb_to_linear(i as f32)));
    lab_from_linear(rgb.map(|v| lut[v as usize]))
}

fn dist2(a: [f32; 3], b: [f32; 3]) -> f32 {
    (a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)
}

fn dist(a: [f32; 3], b: [f32; 3]) -> f32 {
    dist2(a, b).sqrt()
}

fn median_of(v: &mut [f32]) -> f32 {
    if v.is_empty() {
        return 0.0;
    }
    let mid = v.len() / 2;
    *v.select_nth_unstable_by(mid, f32::total_cmp).1
}

fn median_rgb(colors: impl Iterator<Item = [f32; 3]>) -> [f32; 3] {
    let mut ch: [Vec<f32>; 3] = Default::default();
    for c in colors {
        for k in 0..3 {
            ch[k].push(c[k]);
        }
    }
    ch.map(|mut v| median_of(&mut v))
}


fn temporal_median(clip: &Clip) -> Vec<[f32; 3]> {
    let npx = clip.width * clip.height;
    let mut buf = vec![0u8; clip.frames];
    (0..npx)
        .map(|p| {
            std::array::from_fn(|c| {
                for (f, v) in buf.iter_mut().enumerate() {
                    *v = clip.pixels[(f * npx + p) * 3 + c];
                }
                let mid = buf.len() / 2;
                *buf.select_nth_unstable(mid).1 as f32
            })
        })
        .collect()
}

/// Fits the background to `median` ignoring `excluded` pixels; returns the reading and the model
/// colour of every pixel.
fn fit_background(median: &[[f32; 3]], w: usize, h: usize, excluded: &[bool]) -> (BackgroundReading, Vec<[f32; 3]>) {
    // Row colours and how uniform each row is.
    let mut rows = Vec::with_capacity(h);
    let mut uniformity = Vec::with_capacity(h);
    for y in 0..h {
        let row = &median[y * w..(y + 1) * w];
        let ex = &excluded[y * w..(y + 1) * w];
        let kept: Vec<[f32; 3]> = row.iter().zip(ex).filter(|(_, &e)| !e).map(|(c, _)| *c).collect();
        let use_all = kept.len() < w / 4;
        let pixels: &[[f32; 3]] = if use_all { row } else { &kept };
        let c = median_rgb(pixels.iter().copied());
        uniformity.push(pixels.iter().filter(|p| dist(**p, c) < 20.0).count() as f32 / pixels.len() as f32);
        rows.push(c);
    }
    let row_uniformity = median_of(&mut uniformity.clone());
    if row_uniformity < limits::ROW_UNIFORMITY {
        return fit_checkerboard(median, w, h, excluded, row_uniformity);
    }

    let hf = h as f32;
    // Constant.
    let c = median_rgb(rows.iter().copied());
    let res_plain = rows.iter().map(|r| dist(*r, c)).sum::<f32>() / hf;
    // Step: the best split into two means.
    let mut prefix = vec![[0f32; 3]; h + 1];
    for y in 0..h {
        prefix[y + 1] = std::array::from_fn(|k| prefix[y][k] + rows[y][k]);
    }
    let mean_of = |a: usize, b: usize| -> [f32; 3] { std::array::from_fn(|k| (prefix[b][k] - prefix[a][k]) / (b - a) as f32) };
    let mut best_step = (f32::INFINITY, 1, c, c);
    for s in 1..h {
        let (top, bottom) = (mean_of(0, s), mean_of(s, h));
        let res = (rows[..s].iter().map(|r| dist(*r, top)).sum::<f32>() + rows[s..].iter().map(|r| dist(*r, bottom)).sum::<f32>()) / hf;
        if res < best_step.0 {
            best_step = (res, s, top, bottom);
        }
    }
    // Line in the row position (least squares per channel).
    let ts: Vec<f32> = (0..h).map(|y| (y as f32 + 0.5) / hf).collect();
    let tm = ts.iter().sum::<f32>() / hf;
    let var = ts.iter().map(|t| (t - tm).powi(2)).sum::<f32>();
    let mut line = [[0f32; 2]; 3];
    for (k, l) in line.iter_mut().enumerate() {
        let ym = rows.iter().map(|r| r[k]).sum::<f32>() / hf;
        let cov = ts.iter().zip(&rows).map(|(t, r)| (t - tm) * (r[k] - ym)).sum::<f32>();
        let slope = cov / var.max(1e-6);
        *l = [ym - slope * tm, slope];
    }
    let at = |t: f32| -> [f32; 3] { std::array::from_fn(|k| line[k][0] + line[k][1] * t) };
    let res_line = ts.iter().zip(&rows).map(|(t, r)| dist(*r, at(*t))).sum::<f32>() / hf;

    let residuals = Some([res_plain, best_step.0, res_line]);
    let (kind, rgb) = if res_plain < limits::PLAIN_RESIDUAL {
        (BackgroundKind::Plain, vec![c])
    } else if best_step.0 <= res_line {
        // Sky and ground colours from rows away from the horizon, where blur and blending end.
        let s = best_step.1;
        let margin = (h / 32).max(2);
        let top = median_rgb(rows[..s.saturating_sub(margin).max(1)].iter().copied());
        let bottom = median_rgb(rows[(s + margin).min(h - 1)..].iter().copied());
        (BackgroundKind::SkyGround, vec![top, bottom])
    } else {
        (BackgroundKind::Gradient, vec![at(ts[0]), at(ts[h - 1])])
    };
    let colors = rgb.iter().map(|&c| Color::nearest(c)).collect();
    let model: Vec<[f32; 3]> = (0..h).flat_map(|y| std::iter::repeat_n(rows[y], w)).collect();
    (BackgroundReading { kind, colors, rgb, row_uniformity, residuals }, model)
}

fn fit_checkerboard(
    median: &[[f32; 3]],
    w: usize,
    h: usize,
    excluded: &[bool],
    row_uniformity: f32,
) -> (BackgroundReading, Vec<[f32; 3]>) {
    // The two most common colours at least 60 RGB apart (coarse histogram, then refined means).
    let mut hist = std::collections::HashMap::<[u8; 3], usize>::new();
    let quant = |c: [f32; 3]| c.map(|v| (v / 32.0) as u8);
    let kept: Vec<[f32; 3]> = median.iter().zip(excluded).filter(|(_, &e)| !e).map(|(c, _)| *c).collect();
    let samples: &[[f32; 3]] = if kept.len() < median.len() / 4 { median } else { &kept };
    for &c in samples {
        *hist.entry(quant(c)).or_default() += 1;
    }
    let mut bins: Vec<([u8; 3], usize)> = hist.into_iter().collect();
    bins.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let centre = |q: [u8; 3]| q.map(|v| v as f32 * 32.0 + 16.0);
    let a0 = centre(bins[0].0);
    let b0 = bins.iter().map(|b| centre(b.0)).find(|&c| dist(c, a0) > 60.0).unwrap_or([255.0 - a0[0], 255.0 - a0[1], 255.0 - a0[2]]);
    let refine = |c: [f32; 3], other: [f32; 3]| {
        let near: Vec<[f32; 3]> = samples.iter().copied().filter(|&p| dist(p, c) < 40.0 && dist(p, c) < dist(p, other)).collect();
        if near.is_empty() {
            c
        } else {
            median_rgb(near.into_iter())
        }
    };
    let (a, b) = (refine(a0, b0), refine(b0, a0));
    let (a, b) = (refine(a, b), refine(b, a));

    // q = 1 - 2 * share_of_b should factor as u(x) * v(y) with u, v in [-1, 1].
    let ab = [b[0] - a[0], b[1] - a[1], b[2] - a[2]];
    let ab2 = dist2(a, b).max(1.0);
    let mut q = vec![0f32; w * h];
    let mut valid = vec![false; w * h];
    for i in 0..w * h {
        let p = median[i];
        let d = [p[0] - a[0], p[1] - a[1], p[2] - a[2]];
        let s = (d[0] * ab[0] + d[1] * ab[1] + d[2] * ab[2]) / ab2;
        let off = [d[0] - s * ab[0], d[1] - s * ab[1], d[2] - s * ab[2]];
        q[i] = 1.0 - 2.0 * s.clamp(0.0, 1.0);
        valid[i] = !excluded[i] && (off[0].powi(2) + off[1].powi(2) + off[2].powi(2)).sqrt() < 40.0;
    }
    // Start from the row that is most decisively inside cells.
    let y0 = (0..h)
        .max_by(|&i, &j| {
            let score = |y: usize| (0..w).filter(|&x| valid[y * w + x]).map(|x| q[y * w + x].abs()).sum::<f32>();
            score(i).total_cmp(&score(j))
        })
        .unwrap_or(0);
    let mut u: Vec<f32> = (0..w).map(|x| q[y0 * w + x]).collect();
    let mut v = vec![0f32; h];
    // Robust ratio of q to the other factor, from valid pixels where that factor is decisive
    // (all pixels if no valid one is left).
    let ratio = |pairs: &mut dyn Iterator<Item = (usize, f32)>, keep: f32| -> f32 {
        let (mut good, mut all) = (Vec::new(), Vec::new());
        for (i, other) in pairs {
            if other.abs() > 0.6 {
                all.push(q[i] / other);
                if valid[i] {
                    good.push(q[i] / other);
                }
            }
        }
        let pick = if good.is_empty() { &mut all } else { &mut good };
        if pick.is_empty() {
            keep
        } else {
            median_of(pick).clamp(-1.0, 1.0)
        }
    };
    for _ in 0..3 {
        for (y, vy) in v.iter_mut().enumerate() {
            *vy = ratio(&mut (0..w).map(|x| (y * w + x, u[x])), *vy);
        }
        for (x, ux) in u.iter_mut().enumerate() {
            *ux = ratio(&mut (0..h).map(|y| (y * w + x, v[y])), *ux);
        }
    }
    let model: Vec<[f32; 3]> = (0..h)
        .flat_map(|y| {
            let u = &u;
            let vy = v[y];
            (0..w).map(move |x| {
                let share = 0.5 - 0.5 * u[x] * vy;
                [a[0] + ab[0] * share, a[1] + ab[1] * share, a[2] + ab[2] * share]
            })
        })
        .collect();
    let reading = BackgroundReading {
        kind: BackgroundKind::Checkerboard,
        colors: vec![Color::nearest(a), Color::nearest(b)],
        rgb: vec![a, b],
        row_uniformity,
        residuals: None,
    };
    (reading, model)
}


/// Square dilation of radius `r`.
fn dilate(mask: &[bool], w: usize, h: usize, r: usize) -> Vec<bool> {
    let mut tmp = vec![false; w * h];
    for y in 0..h {
        for x in 0..w {
            if mask[y * w + x] {
                for xx in x.saturating_sub(r)..(x + r + 1).min(w) {
                    tmp[y * w + xx] = true;
                }
            }
        }
    }
    let mut out = vec![false; w * h];
    for y in 0..h {
        for x in 0..w {
            if tmp[y * w + x] {
                for yy in y.saturating_sub(r)..(y + r + 1).min(h) {
                    out[yy * w + x] = true;
                }
            }
        }
    }
    out
}

/// 3x3 erosion (pixels outside the frame count as set, so objects at the edge survive).
fn erode(mask: &[bool], w: usize, h: usize) -> Vec<bool> {
    let mut out = vec![false; w * h];
    for y in 0..h {
        for x in 0..w {
            out[y * w + x] = (y.saturating_sub(1)..(y + 2).min(h))
                .all(|yy| (x.saturating_sub(1)..(x + 2).min(w)).all(|xx| mask[yy * w + xx]));
        }
    }
    out
}

/// 8-connected components, each a list of pixel indices.
fn components(mask: &[bool], w: usize, h: usize) -> Vec<Vec<usize>> {
    let mut seen = vec![false; w * h];
    let mut out = Vec::new();
    let mut stack = Vec::new();
    for start in 0..w * h {
        if !mask[start] || seen[start] {
            continue;
        }
        seen[start] = true;
        stack.push(start);
        let mut comp = Vec::new();
        while let Some(p) = stack.pop() {
            comp.push(p);
            let (x, y) = (p % w, p / w);
            for yy in y.saturating_sub(1)..(y + 2).min(h) {
                for xx in x.saturating_sub(1)..(x + 2).min(w) {
                    let q = yy * w + xx;
                    if mask[q] && !seen[q] {
                        seen[q] = true;
                        stack.push(q);
                    }
                }
            }
        }
        out.push(comp);
    }
    out
}

/// A foreground component on one frame.
struct Blob {
    pixels: Vec<usize>,
    centroid: [f32; 2],
    /// Median colour of its interior (eroded) pixels, or, for a blob too small or soft to have
    /// enough of them, of its third most distant from the background.
    rgb: [f32; 3],
    lab: [f32; 3],
}

impl Blob {
    fn new(pixels: Vec<usize>, core: &[bool], frame: &[u8], lab: &[[f32; 3]], bg_lab: &[[f32; 3]], w: usize) -> Self {
        let n = pixels.len() as f32;
        let centroid = [
            pixels.iter().map(|&p| (p % w) as f32 + 0.5).sum::<f32>() / n,
            pixels.iter().map(|&p| (p / w) as f32 + 0.5).sum::<f32>() / n,
        ];
        let px = |p: usize| [frame[p * 3] as f32, frame[p * 3 + 1] as f32, frame[p * 3 + 2] as f32];
        let mut src: Vec<usize> = pixels.iter().copied().filter(|&p| core[p]).collect();
        if src.len() < 16 {
            src = pixels.clone();
            src.sort_by(|&a, &b| dist2(lab[b], bg_lab[b]).total_cmp(&dist2(lab[a], bg_lab[a])));
            src.truncate(pixels.len().div_ceil(3));
        }
        let rgb = median_rgb(src.iter().map(|&p| px(p)));
        Self { pixels, centroid, rgb, lab: lab_f32(rgb) }
    }
}

/// For each of `n` objects, the index of its blob on every frame (`None` where it was not found).
fn track_blobs(blobs: &[Vec<Blob>], n: usize, short_side: f32) -> Vec<Vec<Option<usize>>> {
    let nf = blobs.len();
    let top = |f: usize| -> Vec<usize> {
        let mut idx: Vec<usize> = (0..blobs[f].len()).collect();
        idx.sort_by(|&a, &b| blobs[f][b].pixels.len().cmp(&blobs[f][a].pixels.len()).then(a.cmp(&b)));
        idx.truncate(n + 2);
        idx
    };
    // Seed on the frame whose n largest blobs cover the most pixels.
    let cover = |f: usize| top(f).iter().take(n).map(|&i| blobs[f][i].pixels.len()).sum::<usize>();
    let Some(seed) = (0..nf).max_by_key(|&f| (cover(f), std::cmp::Reverse(f))) else { return Vec::new() };
    let seeds: Vec<usize> = top(seed).into_iter().take(n).collect();
    let mut tracks: Vec<Vec<Option<usize>>> = seeds.iter().map(|_| vec![None; nf]).collect();
    for (t, &b) in seeds.iter().enumerate() {
        tracks[t][seed] = Some(b);
    }
    let mut last: Vec<(usize, usize)> = seeds.iter().map(|&b| (seed, b)).collect();
    let step = |tracks: &mut Vec<Vec<Option<usize>>>, last: &mut Vec<(usize, usize)>, f: usize| {
        let cands = top(f);
        let cost = |t: usize, c: usize| {
            let (lf, lb) = last[t];
            let prev = &blobs[lf][lb];
            let cur = &blobs[f][c];
            let gap = lf.abs_diff(f) as f32;
            let moved = ((prev.centroid[0] - cur.centroid[0]).powi(2) + (prev.centroid[1] - cur.centroid[1]).powi(2)).sqrt();
            dist(prev.lab, cur.lab) / 30.0 + moved / (0.2 * short_side * gap)
        };
        let assignment = best_assignment(last.len(), cands.len(), &|t, c| cost(t, cands[c]).min(3.0), 3.0);
        let accepted: Vec<(usize, usize)> = assignment
            .into_iter()
            .enumerate()
            .filter_map(|(t, c)| c.map(|c| (t, cands[c])))
            .filter(|&(t, b)| cost(t, b) < 3.0)
            .collect();
        for (t, b) in accepted {
            tracks[t][f] = Some(b);
            last[t] = (f, b);
        }
    };
    for f in seed + 1..nf {
        step(&mut tracks, &mut last, f);
    }
    let mut last: Vec<(usize, usize)> = seeds.iter().map(|&b| (seed, b)).collect();
    for f in (0..seed).rev() {
        step(&mut tracks, &mut last, f);
    }
    tracks
}

/// The one-to-one assignment of `n` items to `m` candidates with the least total cost, where
/// leaving an item unassigned costs `miss`; brute force over all partial injections (n <= 3).
pub(crate) fn best_assignment(n: usize, m: usize, cost: &dyn Fn(usize, usize) -> f32, miss: f32) -> Vec<Option<usize>> {
    let mut best = (f32::INFINITY, vec![None; n]);
    // Odometer over choices 0..=m per item, m meaning "unassigned".
    let mut pick = vec![0usize; n];
    loop {
        let taken: Vec<usize> = pick.iter().copied().filter(|&c| c < m).collect();
        let distinct = taken.iter().enumerate().all(|(i, c)| !taken[..i].contains(c));
        if distinct {
            let total: f32 = pick.iter().enumerate().map(|(i, &c)| if c < m { cost(i, c) } else { miss }).sum();
            if total < best.0 {
                best = (total, pick.iter().map(|&c| (c < m).then_some(c)).collect());
            }
        }
        let Some(i) = (0..n).find(|&i| pick[i] < m) else { break };
        pick[i] += 1;
        pick[..i].iter_mut().for_each(|p| *p = 0);
    }
    best.1
}

/// Centroid, area and harmonics of one object on one frame, from its anti-aliased mask.
struct Moments {
    centroid: [f32; 2],
    area: f32,
    /// |Z_k| / Z_0 for k = 1..=5 (index k - 1).
    harmonics: [f32; 5],
    /// arg(Z_k) for k = 1..=5.
    phases: [f32; 5],
}

fn moments(clip: &Clip, f: usize, blob: &Blob, color: [f32; 3], bg: &[[f32; 3]]) -> Moments {
    let (w, h) = (clip.width, clip.height);
    let frame = clip.frame(f);
    // Support: the blob grown by 3 pixels, so anti-aliased edges and thin star tips count.
    let r = 3usize;
    let (mut x0, mut y0, mut x1, mut y1) = (w, h, 0, 0);
    for &p in &blob.pixels {
        let (x, y) = (p % w, p / w);
        (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
    }
    let (x0, y0, x1, y1) = (x0.saturating_sub(r), y0.saturating_sub(r), (x1 + r + 1).min(w), (y1 + r + 1).min(h));
    let (lw, lh) = (x1 - x0, y1 - y0);
    let mut local = vec![false; lw * lh];
    for &p in &blob.pixels {
        local[(p / w - y0) * lw + (p % w - x0)] = true;
    }
    let support = dilate(&local, lw, lh, r);
    let mut weights = Vec::new();
    for ly in 0..lh {
        for lx in 0..lw {
            if !support[ly * lw + lx] {
                continue;
            }
            let p = (y0 + ly) * w + x0 + lx;
            let px = [frame[p * 3] as f32, frame[p * 3 + 1] as f32, frame[p * 3 + 2] as f32];
            let b = bg[p];
            let ob = [color[0] - b[0], color[1] - b[1], color[2] - b[2]];
            let pb = [px[0] - b[0], px[1] - b[1], px[2] - b[2]];
            let alpha = ((pb[0] * ob[0] + pb[1] * ob[1] + pb[2] * ob[2]) / dist2(color, b).max(1.0)).clamp(0.0, 1.0);
            // Below this the pixel is background noise, not coverage.
            if alpha > 0.15 {
                weights.push(((x0 + lx) as f32 + 0.5, (y0 + ly) as f32 + 0.5, alpha));
            }
        }
    }
    let area: f32 = weights.iter().map(|w| w.2).sum();
    if area <= 0.0 {
        return Moments { centroid: blob.centroid, area: 0.0, harmonics: [0.0; 5], phases: [0.0; 5] };
    }
    let cx = weights.iter().map(|w| w.0 * w.2).sum::<f32>() / area;
    let cy = weights.iter().map(|w| w.1 * w.2).sum::<f32>() / area;
    let mut z = [[0f32; 2]; 5];
    let mut z0 = 0f32;
    for &(x, y, a) in &weights {
        let (dx, dy) = (x - cx, y - cy);
        let r2 = dx * dx + dy * dy;
        let theta = dy.atan2(dx);
        z0 += a * r2;
        for (k, zk) in z.iter_mut().enumerate() {
            let (s, c) = ((k + 1) as f32 * theta).sin_cos();
            zk[0] += a * r2 * c;
            zk[1] += a * r2 * s;
        }
    }
    let z0 = z0.max(1e-6);
    Moments {
        centroid: [cx, cy],
        area,
        harmonics: z.map(|zk| (zk[0] * zk[0] + zk[1] * zk[1]).sqrt() / z0),
        phases: z.map(|zk| zk[1].atan2(zk[0])),
    }
}

fn read_object(clip: &Clip, blobs: &[Vec<Blob>], track: &[Option<usize>], bg: &[[f32; 3]]) -> ObjectReading {
    let (w, h) = (clip.width as f32, clip.height as f32);
    let found: Vec<(usize, &Blob)> = track.iter().enumerate().filter_map(|(f, b)| b.map(|b| (f, &blobs[f][b]))).collect();
    let rgb = median_rgb(found.iter().map(|(_, b)| b.rgb));
    let color = Color::nearest(rgb);
    let m: Vec<(usize, Moments)> = found.iter().map(|&(f, b)| (f, moments(clip, f, b, rgb, bg))).collect();
    let track_points: Vec<TrackPoint> =
        m.iter().map(|(f, m)| TrackPoint { frame: *f, x: m.centroid[0], y: m.centroid[1], area: m.area }).collect();

    // Shape: mean harmonics over frames where the object is big enough to resolve corners.
    let big: Vec<&Moments> = m.iter().map(|(_, m)| m).filter(|m| m.area >= 40.0).collect();
    let pool: Vec<&Moments> = if big.is_empty() { m.iter().map(|(_, m)| m).collect() } else { big };
    let mut harmonics = [0f32; 3];
    for mm in &pool {
        for (k, hk) in harmonics.iter_mut().enumerate() {
            *hk += mm.harmonics[k + 2] / pool.len() as f32;
        }
    }
    let (kmax, hmax) = harmonics.iter().enumerate().fold((0, 0f32), |acc, (k, &v)| if v > acc.1 { (k, v) } else { acc });
    let runner_up = harmonics.iter().enumerate().filter(|&(k, _)| k != kmax).map(|(_, &v)| v).fold(0f32, f32::max);
    let shape = if hmax < limits::CIRCLE_HARMONIC || hmax < limits::DOMINANCE * runner_up {
        Shape::Circle
    } else {
        [Shape::Triangle, Shape::Square, Shape::Star][kmax]
    };

    // Motion.
    let nf = clip.frames.max(2);
    let ts: Vec<f32> = m.iter().map(|(f, _)| *f as f32 / (nf - 1) as f32).collect();
    let xs: Vec<f32> = m.iter().map(|(_, m)| m.centroid[0] / w).collect();
    let ys: Vec<f32> = m.iter().map(|(_, m)| m.centroid[1] / h).collect();
    let (fit_x, fit_y) = (line_fit(&ts, &xs), line_fit(&ts, &ys));
    let displacement = [fit_x.1, fit_y.1];
    let resid: Vec<f32> = ts.iter().zip(&ys).map(|(t, y)| y - (fit_y.0 + fit_y.1 * t)).collect();
    let bounce = resid.iter().copied().fold(f32::MIN, f32::max) - resid.iter().copied().fold(f32::MAX, f32::min);
    let bounce = if resid.is_empty() { 0.0 } else { bounce };
    let areas: Vec<f32> = m.iter().map(|(_, m)| m.area).collect();
    let ends = (areas.len() / 6).max(1);
    let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len().max(1) as f32;
    let area_ratio = if areas.is_empty() { 1.0 } else { mean(&areas[areas.len() - ends..]) / mean(&areas[..ends]).max(1e-3) };
    let rotation = match shape {
        Shape::Circle => 0.0,
        _ => {
            let k = kmax + 3;
            let period = 2.0 * PI / k as f32;
            let mut total = 0f32;
            for pair in m.windows(2) {
                let a = pair[0].1.phases[k - 1] / k as f32;
                let b = pair[1].1.phases[k - 1] / k as f32;
                total += (b - a + period / 2.0).rem_euclid(period) - period / 2.0;
            }
            total.abs()
        }
    };
    let travel = (displacement[0].powi(2) + displacement[1].powi(2)).sqrt();
    let motion = if area_ratio > limits::GROW_RATIO {
        Motion::Grow
    } else if area_ratio < 1.0 / limits::GROW_RATIO {
        Motion::Shrink
    } else if travel > limits::TRAVEL {
        direction(displacement)
    } else if bounce > limits::BOUNCE {
        Motion::Bounce
    } else if rotation > limits::SPIN {
        Motion::Spin
    } else {
        Motion::Still
    };
    ObjectReading {
        color,
        rgb,
        shape,
        motion,
        frames_found: found.len(),
        harmonics,
        displacement,
        bounce,
        area_ratio,
        rotation,
        track: track_points,
    }
}

/// Least-squares line `y = a + b t`; (a, b).
fn line_fit(t: &[f32], y: &[f32]) -> (f32, f32) {
    let n = t.len() as f32;
    if t.len() < 2 {
        return (y.first().copied().unwrap_or(0.0), 0.0);
    }
    let (tm, ym) = (t.iter().sum::<f32>() / n, y.iter().sum::<f32>() / n);
    let var = t.iter().map(|v| (v - tm).powi(2)).sum::<f32>();
    let cov = t.iter().zip(y).map(|(a, b)| (a - tm) * (b - ym)).sum::<f32>();
    let b = if var > 0.0 { cov / var } else { 0.0 };
    (ym - b * tm, b)
}

/// The nearest of the eight directions to a displacement (x right, y down), in 45 degree sectors.
fn direction(d: [f32; 2]) -> Motion {
    let angle = (-d[1]).atan2(d[0]); // counter-clockwise from +x with y up
    let sector = ((angle / (PI / 4.0)).round() as i32).rem_euclid(8);
    [Motion::Right, Motion::UpRight, Motion::Up, Motion::UpLeft, Motion::Left, Motion::DownLeft, Motion::Down, Motion::DownRight]
        [sector as usize]
}

/// The flicker measure in words, for reports.
pub fn flicker_definition() -> &'static str {
    "For every inner frame f, the mean over background pixels and RGB channels of \
     |I(f) - (I(f-1) + I(f+1)) / 2| in 8-bit levels (0..255): the temporal second difference, which \
     is 0 for a still or steadily changing background and large when a frame jumps away from its \
     neighbours. Background pixels are those no object covers on frames f-1, f, f+1 (foreground \
     mask grown by 2 pixels); a frame with less than a tenth of background is measured everywhere. A clip's flicker is the mean over its frames; the report gives the \
     mean over clips, the worst clip, and the worst single frame."
}

fn flicker(clip: &Clip, fg: &[Vec<bool>]) -> Flicker {
    let (w, h, nf) = (clip.width, clip.height, clip.frames);
    if nf < 3 {
        return Flicker { mean: 0.0, peak: 0.0 };
    }
    let grown: Vec<Vec<bool>> = fg.iter().map(|m| dilate(m, w, h, 2)).collect();
    let mut per_frame = Vec::with_capacity(nf - 2);
    for f in 1..nf - 1 {
        let (a, b, c) = (clip.frame(f - 1), clip.frame(f), clip.frame(f + 1));
        let background: Vec<bool> = (0..w * h).map(|p| !(grown[f - 1][p] || grown[f][p] || grown[f + 1][p])).collect();
        // A frame that is nearly all foreground (a broken clip) is measured everywhere.
        let everywhere = background.iter().filter(|&&b| b).count() < w * h / 10;
        let (mut sum, mut count) = (0f64, 0usize);
        for (p, &bg) in background.iter().enumerate() {
            if !bg && !everywhere {
                continue;
            }
            for k in 0..3 {
                let i = p * 3 + k;
                sum += (b[i] as f64 - (a[i] as f64 + c[i] as f64) / 2.0).abs();
            }
            count += 3;
        }
        per_frame.push(if count == 0 { 0.0 } else { (sum / count as f64) as f32 });
    }
    Flicker {
        mean: per_frame.iter().sum::<f32>() / per_frame.len() as f32,
        peak: per_frame.iter().copied().fold(0.0, f32::max),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directions_cover_the_compass() {
        assert_eq!(direction([1.0, 0.0]), Motion::Right);
        assert_eq!(direction([0.0, -1.0]), Motion::Up);
        assert_eq!(direction([-0.4, 0.4]), Motion::DownLeft);
        assert_eq!(direction([0.4, -0.35]), Motion::UpRight);
        assert_eq!(direction([0.0, 0.5]), Motion::Down);
    }

    #[test]
    fn assignment_prefers_cheap_pairs_and_leaves_tracks_empty_when_short() {
        let cost = |t: usize, c: usize| if t == c { 0.1 } else { 1.0 };
        assert_eq!(best_assignment(2, 2, &cost, 3.0), vec![Some(0), Some(1)]);
        assert_eq!(best_assignment(3, 3, &|t, c| if c == 2 - t { 0.0 } else { 1.0 }, 3.0), vec![Some(2), Some(1), Some(0)]);
        let one = best_assignment(2, 1, &|t, _| if t == 1 { 0.1 } else { 2.0 }, 3.0);
        assert_eq!(one, vec![None, Some(0)]);
        assert_eq!(best_assignment(2, 0, &|_, _| 0.0, 3.0), vec![None, None]);
    }

    #[test]
    fn lab_matches_the_world_palette_distances() {
        for a in Color::ALL {
            for b in Color::ALL {
                let want = crate::world::color::delta_e(a.rgb().map(f32::from), b.rgb().map(f32::from));
                let got = dist(lab_u8(a.rgb()), lab_u8(b.rgb()));
                assert!((want - got).abs() < 1e-3, "{a:?} {b:?}: {want} vs {got}");
            }
        }
    }
}
