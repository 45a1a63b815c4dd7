//! The held-out split. Evaluation must measure generalisation, so some attribute combinations
//! (here) and some caption templates (see `caption::TEMPLATES`) are never emitted for training.
use crate::world::{Color, Motion, Object, Shape};
use serde::{Deserialize, Serialize};

/// Which part of the world a sampler draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// Never contains a held-out combination or a held-out caption template.
    Train,
    /// Every scene's first object is a held-out combination, and captions use only the held-out
    /// templates; every word of them still occurs in training captions.
    Eval,
}

/// (colour, shape, motion) triples no training scene contains, one per motion family so each
/// attribute value still appears in training with other partners.
pub const HELD_OUT_COMBOS: [(Color, Shape, Motion); 10] = [
    (Color::Red, Shape::Star, Motion::Up),
    (Color::Green, Shape::Circle, Motion::Left),
    (Color::Blue, Shape::Triangle, Motion::Right),
    (Color::Yellow, Shape::Square, Motion::Down),
    (Color::White, Shape::Star, Motion::DownRight),
    (Color::Purple, Shape::Circle, Motion::Bounce),
    (Color::Orange, Shape::Star, Motion::Spin),
    (Color::Pink, Shape::Square, Motion::Grow),
    (Color::Cyan, Shape::Triangle, Motion::Shrink),
    (Color::Black, Shape::Circle, Motion::Still),
];

pub fn is_held_out_combo(color: Color, shape: Shape, motion: Motion) -> bool {
    HELD_OUT_COMBOS.contains(&(color, shape, motion))
}

pub fn is_held_out(object: &Object) -> bool {
    is_held_out_combo(object.color, object.shape, object.motion)
}
