//! The fixed evaluation prompts: drawn once from the world's held-out split (`Split::Eval`: the
//! first object is a held-out colour x shape x motion combination, the caption a held-out
//! phrasing), balanced over the ten held-out combinations, the four background kinds and the
//! three aspect ratios, without camera moves. The set is committed as `eval/prompts.json` and
//! read from there, so later changes to the world's sampler do not change what is measured.
use super::analyze::BackgroundKind;
use crate::caption::caption_with_template;
use crate::rng::Rng;
use crate::split::{Split, HELD_OUT_COMBOS};
use crate::world::{sample_scene, Aspect, Background, Color, Motion, SamplerConfig, Scene, Shape};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// The committed set (repository path `eval/prompts.json`).
pub const EVAL_PROMPTS_JSON: &str = include_str!("../../../../eval/prompts.json");
/// Seed the committed set was drawn with.
pub const EVAL_SEED: u64 = 0x0E7A_15E7;
pub const SINGLE_PROMPTS: usize = 60;
pub const PAIR_PROMPTS: usize = 30;

/// What a clip for a prompt must show.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Expected {
    pub background: ExpectedBackground,
    pub objects: Vec<ExpectedObject>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExpectedBackground {
    pub kind: BackgroundKind,
    /// Plain: [colour]; sky over ground: [sky, ground]; gradient: [top, bottom]; checkerboard:
    /// its two colours in either order, or none when the prompt does not name them ("on a
    /// checkered floor"), so any colours are right.
    pub colors: Vec<Color>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ExpectedObject {
    pub color: Color,
    pub shape: Shape,
    pub motion: Motion,
}

impl Expected {
    /// The attributes `caption` (a caption of `scene`) names.
    pub fn of_caption(scene: &Scene, caption: &str) -> Self {
        let colors = match scene.background {
            Background::Plain { color } => vec![color],
            Background::SkyGround { sky, ground, .. } => vec![sky, ground],
            Background::Checkerboard { a, b, .. } => {
                // Captions name a checkerboard's colours as "<a> and <b>" or not at all.
                let text = caption.to_lowercase();
                let named = [(a, b), (b, a)].iter().any(|(x, y)| text.contains(&format!("{} and {}", x.name(), y.name())));
                if named {
                    vec![a, b]
                } else {
                    Vec::new()
                }
            }
            Background::Gradient { top, bottom } => vec![top, bottom],
        };
        Self {
            background: ExpectedBackground { kind: BackgroundKind::of(&scene.background), colors },
            objects: scene.objects.iter().map(|o| ExpectedObject { color: o.color, shape: o.shape, motion: o.motion }).collect(),
        }
    }
}

/// One evaluation prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalPrompt {
    /// `s00`..`s59` single object, `p00`..`p29` two objects.
    pub id: String,
    pub prompt: String,
    /// The held-out caption template it was phrased with.
    pub template: String,
    pub aspect: Aspect,
    pub frames: usize,
    pub fps: u32,
    pub expected: Expected,
    /// One scene the prompt describes: `--reference` renders it as the analyzer's ceiling.
    pub scene: Scene,
    /// Dataset item it was drawn as (`Rng::for_item(seed, item)`).
    pub item: u64,
}

impl EvalPrompt {
    pub fn object_count(&self) -> usize {
        self.expected.objects.len()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalSet {
    pub seed: u64,
    pub split: Split,
    pub prompts: Vec<EvalPrompt>,
}

impl EvalSet {
    /// The committed set.
    pub fn builtin() -> Self {
        Self::from_json(EVAL_PROMPTS_JSON).expect("eval/prompts.json is checked by the eval_prompts test")
    }

    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("plain data serialises") + "\n"
    }

    /// The prompts with one object on a plain background (`eval/prompts-single-plain.json`: the
    /// part of the set a model trained on a narrowed world, `train/world-single.json`, can be
    /// scored on; `ciak eval --prompts eval/prompts-single-plain.json`).
    pub fn single_plain(&self) -> Self {
        let keep = |p: &EvalPrompt| p.object_count() == 1 && matches!(p.scene.background, Background::Plain { .. });
        Self { prompts: self.prompts.iter().filter(|p| keep(p)).cloned().collect(), ..self.clone() }
    }
}

/// Draws the set: single-object prompt `k` uses held-out combination `k % 10`, background kind
/// `k % 4` and aspect `k % 3` (two-object prompts likewise), each the first dataset item of
/// `Split::Eval` from `seed` that fits and is not a duplicate caption.
pub fn build_eval_set(seed: u64, singles: usize, pairs: usize) -> EvalSet {
    build_eval_set_in(seed, singles, pairs, &SamplerConfig::default())
}

/// [`build_eval_set`] drawn from `world`'s scenes (its placement, strengths and object scale;
/// aspect, object count, background kind and camera are set per prompt as there): held-out
/// prompts of the same kinds for a narrowed or rescaled world, so `ciak eval --reference
/// --prompts` measures the analyzer on the clips such a world renders
/// (`examples/world_eval_set`).
pub fn build_eval_set_in(seed: u64, singles: usize, pairs: usize, world: &SamplerConfig) -> EvalSet {
    let mut prompts = Vec::with_capacity(singles + pairs);
    let mut seen = BTreeSet::new();
    let mut item = 0u64;
    for (count, total, prefix) in [(1usize, singles, "s"), (2, pairs, "p")] {
        for k in 0..total {
            let combo = HELD_OUT_COMBOS[k % HELD_OUT_COMBOS.len()];
            let kind = BackgroundKind::ALL[k % 4];
            let aspect = Aspect::ALL[k % 3];
            let mut cfg = SamplerConfig {
                aspects: vec![aspect],
                camera_probability: 0.0,
                object_count_weights: [0.0; 3],
                background_weights: [0.0; 4],
                ..world.clone()
            };
            cfg.object_count_weights[count - 1] = 1.0;
            cfg.background_weights[BackgroundKind::ALL.iter().position(|&b| b == kind).expect("kind listed")] = 1.0;
            loop {
                let i = item;
                item += 1;
                let mut rng = Rng::for_item(seed, i);
                let scene = sample_scene(&mut rng, &cfg, Split::Eval);
                let first = &scene.objects[0];
                if (first.color, first.shape, first.motion) != combo {
                    continue;
                }
                let (prompt, template) = caption_with_template(&scene, &mut rng, Split::Eval);
                if !seen.insert(prompt.clone()) {
                    continue;
                }
                let expected = Expected::of_caption(&scene, &prompt);
                prompts.push(EvalPrompt {
                    id: format!("{prefix}{k:02}"),
                    prompt,
                    template: template.id.to_string(),
                    aspect,
                    frames: scene.frames,
                    fps: scene.fps,
                    expected,
                    scene,
                    item: i,
                });
                break;
            }
        }
    }
    EvalSet { seed, split: Split::Eval, prompts }
}
