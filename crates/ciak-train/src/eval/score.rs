//! Scoring an analysis against what the prompt asked for, and the accuracy table with its bar.
use super::analyze::{Analysis, BackgroundKind, Flicker};
use super::prompts::Expected;
use crate::world::Shape;
use serde::{Deserialize, Serialize};

/// The bar of issue 5: every attribute of single-object prompts at least this accurate.
pub const BAR_SINGLE: f64 = 0.9;
/// Every attribute of each object of two-object prompts at least this accurate.
pub const BAR_PAIR: f64 = 0.75;
/// Mean background flicker (8-bit levels of `|I(f) - (I(f-1) + I(f+1)) / 2|`) at most this.
pub const BAR_FLICKER: f64 = 2.0;
/// An object seen on fewer than this share of frames counts as missing.
pub const MIN_FRAMES_SEEN: f64 = 0.5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectScore {
    pub found: bool,
    pub color: bool,
    pub shape: bool,
    pub motion: bool,
}

impl ObjectScore {
    pub fn all(&self) -> bool {
        self.found && self.color && self.shape && self.motion
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptScore {
    /// Kind and colours both right.
    pub background: bool,
    pub background_kind: bool,
    /// In the prompt's object order.
    pub objects: Vec<ObjectScore>,
}

impl PromptScore {
    pub fn all(&self) -> bool {
        self.background && self.objects.iter().all(ObjectScore::all)
    }
}

/// Matches the analyzer's objects to the expected ones by colour (the assignment with the least
/// total CIELAB distance) and compares every attribute.
pub fn score(expected: &Expected, analysis: &Analysis, frames: usize) -> PromptScore {
    let bg = &analysis.background;
    let background_kind = bg.kind == expected.background.kind;
    let colors_ok = {
        let (mut want, mut got) = (expected.background.colors.clone(), bg.colors.clone());
        if bg.kind == super::analyze::BackgroundKind::Checkerboard {
            want.sort();
            got.sort();
        }
        // A checkerboard whose colours the prompt leaves open may have any.
        want == got || (want.is_empty() && background_kind)
    };
    let n = expected.objects.len();
    let detected = &analysis.objects;
    let de = |e: usize, d: usize| {
        let want = super::analyze::lab_f32(expected.objects[e].color.rgb().map(f32::from));
        let got = super::analyze::lab_f32(detected[d].rgb);
        ((want[0] - got[0]).powi(2) + (want[1] - got[1]).powi(2) + (want[2] - got[2]).powi(2)).sqrt()
    };
    // A missing object costs more than any real colour distance.
    let assignment = super::analyze::best_assignment(n, detected.len(), &de, 1000.0);
    let objects = (0..n)
        .map(|e| match assignment[e] {
            Some(d) if detected[d].frames_found as f64 >= MIN_FRAMES_SEEN * frames as f64 => {
                let (want, got) = (&expected.objects[e], &detected[d]);
                ObjectScore { found: true, color: got.color == want.color, shape: got.shape == want.shape, motion: got.motion == want.motion }
            }
            _ => ObjectScore { found: false, color: false, shape: false, motion: false },
        })
        .collect();
    PromptScore { background: background_kind && colors_ok, background_kind, objects }
}

/// Accuracy of each attribute over a group of objects.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Accuracy {
    /// Objects (or prompts, for `background`) counted.
    pub count: usize,
    pub color: f64,
    pub shape: f64,
    pub motion: f64,
    pub background: f64,
    /// Share with every attribute right.
    pub all: f64,
}

impl Accuracy {
    /// The lowest of colour, shape, motion and background.
    pub fn worst(&self) -> f64 {
        self.color.min(self.shape).min(self.motion).min(self.background)
    }
}

fn accuracy<'a>(items: impl Iterator<Item = (&'a ObjectScore, bool)>) -> Accuracy {
    let mut a = Accuracy::default();
    for (o, bg) in items {
        a.count += 1;
        a.color += o.color as u8 as f64;
        a.shape += o.shape as u8 as f64;
        a.motion += o.motion as u8 as f64;
        a.background += bg as u8 as f64;
        a.all += (o.all() && bg) as u8 as f64;
    }
    if a.count > 0 {
        let n = a.count as f64;
        (a.color, a.shape, a.motion, a.background, a.all) = (a.color / n, a.shape / n, a.motion / n, a.background / n, a.all / n);
    }
    a
}

/// The table `ciak eval` prints, and whether it meets the bar.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub single: Accuracy,
    /// Two-object prompts, per object slot (first object = the held-out combination).
    pub pair: [Accuracy; 2],
    /// Mean and worst of the per-clip flicker means, and the largest per-frame peak.
    pub flicker_mean: f64,
    pub flicker_worst_clip: f64,
    pub flicker_peak: f64,
    pub passes: bool,
    /// Why not, one entry per failed criterion.
    pub failures: Vec<String>,
}

/// Aggregates per-prompt scores (`(object count, score, flicker)`).
pub fn summarize(results: &[(usize, PromptScore, Flicker)]) -> Summary {
    let single = accuracy(results.iter().filter(|r| r.0 == 1).map(|r| (&r.1.objects[0], r.1.background)));
    let pair = [0, 1].map(|slot| accuracy(results.iter().filter(|r| r.0 == 2).map(|r| (&r.1.objects[slot], r.1.background))));
    let n = results.len().max(1) as f64;
    let flicker_mean = results.iter().map(|r| r.2.mean as f64).sum::<f64>() / n;
    let flicker_worst_clip = results.iter().map(|r| r.2.mean as f64).fold(0.0, f64::max);
    let flicker_peak = results.iter().map(|r| r.2.peak as f64).fold(0.0, f64::max);
    let mut failures = Vec::new();
    let mut check = |what: &str, value: f64, bar: f64, count: usize| {
        if count > 0 && value < bar {
            failures.push(format!("{what} {value:.3} < {bar}"));
        }
    };
    for (name, v) in [("colour", single.color), ("shape", single.shape), ("motion", single.motion), ("background", single.background)] {
        check(&format!("single-object {name}"), v, BAR_SINGLE, single.count);
    }
    for (slot, a) in pair.iter().enumerate() {
        for (name, v) in [("colour", a.color), ("shape", a.shape), ("motion", a.motion), ("background", a.background)] {
            check(&format!("two-object object {} {name}", slot + 1), v, BAR_PAIR, a.count);
        }
    }
    if flicker_mean > BAR_FLICKER {
        failures.push(format!("flicker {flicker_mean:.2} > {BAR_FLICKER}"));
    }
    if results.is_empty() {
        failures.push("no prompts were scored".into());
    }
    Summary { single, pair, flicker_mean, flicker_worst_clip, flicker_peak, passes: failures.is_empty(), failures }
}

/// Single-object accuracy split by what the prompt asked, to show where a model (or a VAE round
/// trip) loses its points: per background kind, objects that travel against objects that stay in
/// place (still, grow, shrink, spin), and per shape. Groups no prompt falls in are left out.
pub fn single_breakdown<'a>(results: impl Iterator<Item = (&'a Expected, &'a PromptScore)> + Clone) -> Vec<(String, Accuracy)> {
    let singles = results.filter(|(e, s)| e.objects.len() == 1 && s.objects.len() == 1);
    let group = |name: String, keep: &dyn Fn(&Expected) -> bool| {
        (name, accuracy(singles.clone().filter(|(e, _)| keep(e)).map(|(_, s)| (&s.objects[0], s.background))))
    };
    let mut rows = Vec::new();
    for kind in BackgroundKind::ALL {
        rows.push(group(format!("background {}", kind.name()), &|e| e.background.kind == kind));
    }
    rows.push(group("travelling (left ... bounce)".into(), &|e| !e.objects[0].motion.in_place()));
    rows.push(group("in place (still, grow, shrink, spin)".into(), &|e| e.objects[0].motion.in_place()));
    for shape in Shape::ALL {
        rows.push(group(format!("shape {}", serde_name(&shape)), &|e| e.objects[0].shape == shape));
    }
    rows.retain(|(_, a)| a.count > 0);
    rows
}

/// The serde name of an attribute value ("down_right", "sky_ground"), as results.json spells it.
pub fn serde_name<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => "?".into(),
    }
}
