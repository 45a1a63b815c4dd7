//! The phrase tables captions are assembled from. Every word a caption can contain comes from
//! here or from a template in `caption.rs`, which is how `vocabulary()` can list them all.
//! `{x}` marks a slot filled by the caption builder.
use crate::world::{CameraKind, Color, Motion, Shape, Size};

pub const ARTICLES: &[&str] = &["a", "an", "the"];

pub fn size_words(size: Size) -> &'static [&'static str] {
    match size {
        Size::Small => &["small", "little", "tiny"],
        Size::Medium => &["medium", "medium-sized", "mid-sized"],
        Size::Large => &["large", "big", "huge"],
    }
}

/// Shape nouns; "dot" only for shapes that are not large (a huge dot is not a dot).
pub fn shape_words(shape: Shape, size: Size) -> &'static [&'static str] {
    match (shape, size) {
        (Shape::Circle, Size::Large) => &["ball", "circle", "disc", "disk"],
        (Shape::Circle, _) => &["ball", "circle", "disc", "disk", "dot"],
        (Shape::Square, _) => &["square", "box", "block", "cube"],
        (Shape::Triangle, _) => &["triangle"],
        (Shape::Star, _) => &["star"],
    }
}

pub const ALL_SHAPE_WORDS: &[&str] = &["ball", "circle", "disc", "disk", "dot", "square", "box", "block", "cube", "triangle", "star"];

/// Ways to say a horizontal or vertical direction after a motion verb.
pub fn direction_words(motion: Motion) -> &'static [&'static str] {
    match motion {
        Motion::Right => &[
            "right",
            "to the right",
            "rightward",
            "rightwards",
            "toward the right",
            "towards the right",
            "toward the right edge",
            "across the frame to the right",
        ],
        Motion::Left => &[
            "left",
            "to the left",
            "leftward",
            "leftwards",
            "toward the left",
            "towards the left",
            "toward the left edge",
            "across the frame to the left",
        ],
        Motion::Up => &["up", "upward", "upwards", "toward the top", "toward the top edge", "up the frame"],
        Motion::Down => &["down", "downward", "downwards", "toward the bottom", "toward the bottom edge", "down the frame"],
        _ => &[],
    }
}

/// Diagonal direction templates: {v} up/down, {vv} top/bottom, {uu} upper/lower, {h} left/right.
pub const DIAGONAL_WORDS: &[&str] = &[
    "diagonally {v} and to the {h}",
    "{v} and to the {h}",
    "diagonally {v}-{h}",
    "toward the {vv} {h} corner",
    "diagonally toward the {vv} {h}",
    "to the {uu} {h}",
];

/// (finite, gerund) verbs that take a direction after them.
pub const TRAVEL_VERBS: &[(&str, &str)] =
    &[("moves", "moving"), ("slides", "sliding"), ("drifts", "drifting"), ("glides", "gliding"), ("travels", "traveling")];
/// Only round things roll.
pub const ROLL_VERB: (&str, &str) = ("rolls", "rolling");
/// Verbs that already say the direction.
pub const RISE_VERBS: &[(&str, &str)] = &[("rises", "rising"), ("floats up", "floating up"), ("climbs", "climbing")];
pub const FALL_VERBS: &[(&str, &str)] =
    &[("falls", "falling"), ("sinks", "sinking"), ("drops", "dropping"), ("descends", "descending")];
pub const ADVERBS: &[&str] = &["steadily", "smoothly"];

/// (finite, gerund) phrases of motions that have no direction.
pub fn in_place_phrases(motion: Motion) -> (&'static [&'static str], &'static [&'static str]) {
    match motion {
        Motion::Bounce => (
            &["bounces", "bounces up and down", "hops", "hops up and down", "bounces in place", "keeps bouncing"],
            &["bouncing", "bouncing up and down", "hopping", "hopping up and down", "bouncing in place"],
        ),
        Motion::Still => (
            &[
                "stays still",
                "sits still",
                "stays in place",
                "does not move",
                "remains still",
                "rests in place",
                "stays put",
                "stands still",
                "sits motionless",
            ],
            &["sitting still", "staying still", "staying in place", "resting", "not moving", "standing still", "sitting motionless"],
        ),
        Motion::Grow => (
            &["grows", "grows bigger", "grows larger", "gets bigger", "gets larger", "expands", "swells", "grows in size"],
            &["growing", "growing bigger", "growing larger", "getting bigger", "getting larger", "expanding", "swelling"],
        ),
        Motion::Shrink => (
            &["shrinks", "shrinks down", "gets smaller", "becomes smaller", "shrinks in size"],
            &["shrinking", "shrinking down", "getting smaller", "becoming smaller"],
        ),
        Motion::Spin => (
            &[
                "spins",
                "rotates",
                "spins around",
                "spins clockwise",
                "rotates clockwise",
                "turns clockwise",
                "spins in place",
                "rotates in place",
                "twirls",
            ],
            &[
                "spinning",
                "rotating",
                "spinning around",
                "spinning clockwise",
                "rotating clockwise",
                "turning clockwise",
                "spinning in place",
                "twirling",
            ],
        ),
        _ => (&[], &[]),
    }
}

/// Plain backgrounds: (prepositional phrases, noun phrases, short forms), `{c}` the colour.
pub const PLAIN: [&[&str]; 3] = [
    &[
        "on a {c} background",
        "on a plain {c} background",
        "on a solid {c} background",
        "on a {c} backdrop",
        "against a {c} background",
        "against a plain {c} backdrop",
        "against a {c} backdrop",
        "over a {c} field",
        "in front of a {c} wall",
        "with a {c} background",
    ],
    &["a {c} background", "a plain {c} background", "a solid {c} backdrop", "a {c} backdrop", "a plain {c} field"],
    &["{c} background", "plain {c} background", "{c} backdrop", "solid {c} background"],
];

/// Sky over ground: `{s}` the sky colour, `{g}` a ground phrase from [`ground_words`].
pub const SKY_GROUND: [&[&str]; 3] = [
    &[
        "under a {s} sky over {g}",
        "on {g} under a {s} sky",
        "in a landscape with a {s} sky and {g}",
        "above {g} under a {s} sky",
        "with a {s} sky above {g}",
        "against a {s} sky above {g}",
    ],
    &["a {s} sky over {g}", "a landscape of {s} sky and {g}", "{g} under a {s} sky"],
    &["{s} sky, {g}", "{s} sky over {g}", "{s} sky and {g}"],
];

/// Ground phrases for a ground colour `{c}`: green reads as grass, yellow as sand, white as snow.
pub fn ground_words(color: Color) -> &'static [&'static str] {
    match color {
        Color::Green => &["{c} ground", "{c} grass"],
        Color::Yellow => &["{c} ground", "{c} sand"],
        Color::White => &["{c} ground", "{c} snow"],
        _ => &["{c} ground"],
    }
}

pub const ALL_GROUND_WORDS: &[&str] = &["{c} ground", "{c} grass", "{c} sand", "{c} snow"];

/// Checkerboards: `{ab}` is "<colour> and <colour>".
pub const CHECKERBOARD: [&[&str]; 3] = [
    &[
        "on a checkerboard floor",
        "on a {ab} checkerboard floor",
        "over a checkered floor",
        "over a {ab} checkered floor",
        "on a {ab} checkerboard",
        "against a checkerboard pattern",
        "against a {ab} checkerboard pattern",
        "on a floor of {ab} tiles",
        "on a chessboard floor",
    ],
    &["a checkerboard floor", "a {ab} checkerboard floor", "a checkered floor", "a {ab} checkerboard pattern", "a floor of {ab} tiles"],
    &["checkerboard floor", "{ab} checkerboard", "checkered floor", "{ab} checkerboard floor"],
];

/// Vertical gradients: `{t}` the top colour, `{bt}` the bottom colour.
pub const GRADIENT: [&[&str]; 3] = [
    &[
        "on a {t} to {bt} gradient background",
        "on a {t} to {bt} gradient",
        "against a gradient from {t} to {bt}",
        "over a vertical gradient from {t} at the top to {bt} at the bottom",
        "on a background fading from {t} to {bt}",
        "against a vertical {t}-to-{bt} gradient",
    ],
    &[
        "a {t} to {bt} gradient",
        "a vertical gradient from {t} to {bt}",
        "a background fading from {t} at the top to {bt} at the bottom",
        "a {t}-to-{bt} gradient background",
    ],
    &["{t} to {bt} gradient", "{t}-to-{bt} gradient background", "gradient from {t} to {bt}"],
];

/// (finite, gerund) camera phrases.
pub fn camera_phrases(kind: CameraKind) -> (&'static [&'static str], &'static [&'static str]) {
    match kind {
        CameraKind::PanLeft => (
            &["pans left", "pans to the left", "pans slowly to the left"],
            &["panning left", "panning to the left", "panning slowly to the left"],
        ),
        CameraKind::PanRight => (
            &["pans right", "pans to the right", "pans slowly to the right"],
            &["panning right", "panning to the right", "panning slowly to the right"],
        ),
        CameraKind::ZoomIn => (&["zooms in", "zooms in slowly", "pushes in", "moves closer"], &["zooming in", "pushing in", "moving closer"]),
        CameraKind::ZoomOut => (&["zooms out", "zooms out slowly", "pulls back", "moves away"], &["zooming out", "pulling back", "moving away"]),
    }
}

/// How a camera clause joins the rest, per caption style: `{cv}` finite, `{cg}` gerund.
pub const CAMERA_SENTENCE: &[&str] =
    &[", as the camera {cv}", ", while the camera {cv}", ". the camera {cv}", ", and the camera {cv}"];
pub const CAMERA_SHORT: &[&str] = &[" as the camera {cv}", " while the camera {cv}", ", camera {cv}", " and the camera {cv}"];
pub const CAMERA_FRAGMENT: &[&str] = &[", camera {cg}", ", the camera {cg}"];

/// Counting words for scenes with several objects.
pub const COUNTS: &[&str] = &["two shapes", "two objects", "three shapes", "three objects"];
