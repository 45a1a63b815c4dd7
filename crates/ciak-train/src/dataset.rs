//! Numbered training items: item `i` of a seed is always the same scene and caption, and can be
//! drawn without drawing the items before it.
use crate::caption::caption_for;
use crate::rng::Rng;
use crate::split::Split;
use crate::world::{sample_scene, SamplerConfig, Scene};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub index: u64,
    pub caption: String,
    pub scene: Scene,
}

/// Item `index` of the dataset seeded with `seed`: a scene and one caption from `split`.
pub fn sample(seed: u64, index: u64, cfg: &SamplerConfig, split: Split) -> Sample {
    let mut rng = Rng::for_item(seed, index);
    let scene = sample_scene(&mut rng, cfg, split);
    let caption = caption_for(&scene, &mut rng, split);
    Sample { index, caption, scene }
}
