//! What a clip shows: frame size and length, background, up to three moving objects and an
//! optional camera move. A `Scene` is plain data (serde) and fully determines the rendered pixels.
use super::color::Color;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Frame shape. Sizes are multiples of 16 so a 8x VAE and a 2x2 patch divide them evenly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Aspect {
    /// 224x128.
    #[serde(rename = "16:9")]
    Wide,
    /// 128x224.
    #[serde(rename = "9:16")]
    Tall,
    /// 160x160.
    #[serde(rename = "1:1")]
    Square,
}

impl Aspect {
    pub const ALL: [Aspect; 3] = [Aspect::Wide, Aspect::Tall, Aspect::Square];

    /// (width, height) in pixels.
    pub fn size(self) -> (usize, usize) {
        match self {
            Aspect::Wide => (224, 128),
            Aspect::Tall => (128, 224),
            Aspect::Square => (160, 160),
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Aspect::Wide => "16:9",
            Aspect::Tall => "9:16",
            Aspect::Square => "1:1",
        }
    }
}

impl fmt::Display for Aspect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

impl FromStr for Aspect {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Aspect::ALL
            .into_iter()
            .find(|a| a.label() == s)
            .ok_or_else(|| format!("expected an aspect ratio of 16:9, 9:16 or 1:1, got {s:?}"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Shape {
    Circle,
    Square,
    Triangle,
    Star,
}

impl Shape {
    pub const ALL: [Shape; 4] = [Shape::Circle, Shape::Square, Shape::Triangle, Shape::Star];

    /// Radius of the circle that holds the shape at any rotation, in units of its half extent.
    /// Non-circles are drawn a bit larger than their half extent so all four look about as heavy.
    pub fn bound_factor(self) -> f32 {
        match self {
            Shape::Circle => 1.0,
            Shape::Square => SQUARE_HALF_SIDE * std::f32::consts::SQRT_2,
            Shape::Triangle => TRIANGLE_CIRCUMRADIUS,
            Shape::Star => STAR_OUTER_RADIUS,
        }
    }

    /// A spinning circle looks exactly like a still one, so only the others may spin.
    pub fn can_spin(self) -> bool {
        self != Shape::Circle
    }
}

/// Half the side of a square, in units of the object's half extent.
pub const SQUARE_HALF_SIDE: f32 = 0.88;
/// Circumradius of the equilateral triangle, in units of the object's half extent.
pub const TRIANGLE_CIRCUMRADIUS: f32 = 1.3;
/// Outer radius of the five-pointed star, in units of the object's half extent.
pub const STAR_OUTER_RADIUS: f32 = 1.35;
/// Inner/outer radius ratio of the star: fat points survive the VAE's 8x downsampling.
pub const STAR_INNER_RATIO: f32 = 0.5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Size {
    Small,
    Medium,
    Large,
}

impl Size {
    pub const ALL: [Size; 3] = [Size::Small, Size::Medium, Size::Large];

    /// Half extent as a fraction of the frame's shorter side (a small circle on a 128-pixel-high
    /// frame is about 23 pixels across, a large one about 46: three to six latent cells).
    pub fn fraction(self) -> f32 {
        match self {
            Size::Small => 0.09,
            Size::Medium => 0.13,
            Size::Large => 0.18,
        }
    }
}

/// How an object moves over the clip, in world coordinates (a camera move adds to it on screen).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Motion {
    Left,
    Right,
    Up,
    Down,
    UpLeft,
    UpRight,
    DownLeft,
    DownRight,
    /// Hops up from its start position and lands back, twice.
    Bounce,
    Still,
    Grow,
    Shrink,
    /// Clockwise rotation about its centre.
    Spin,
}

impl Motion {
    pub const ALL: [Motion; 13] = [
        Motion::Left,
        Motion::Right,
        Motion::Up,
        Motion::Down,
        Motion::UpLeft,
        Motion::UpRight,
        Motion::DownLeft,
        Motion::DownRight,
        Motion::Bounce,
        Motion::Still,
        Motion::Grow,
        Motion::Shrink,
        Motion::Spin,
    ];

    /// Unit direction (x right, y down) of a straight-line motion, `None` for the others.
    pub fn direction(self) -> Option<[f32; 2]> {
        Some(match self {
            Motion::Left => [-1.0, 0.0],
            Motion::Right => [1.0, 0.0],
            Motion::Up => [0.0, -1.0],
            Motion::Down => [0.0, 1.0],
            Motion::UpLeft => [-1.0, -1.0],
            Motion::UpRight => [1.0, -1.0],
            Motion::DownLeft => [-1.0, 1.0],
            Motion::DownRight => [1.0, 1.0],
            _ => return None,
        })
    }

    pub fn is_diagonal(self) -> bool {
        matches!(self, Motion::UpLeft | Motion::UpRight | Motion::DownLeft | Motion::DownRight)
    }

    /// Whether the object keeps its place (still, grow, shrink, spin) rather than travelling.
    pub fn in_place(self) -> bool {
        matches!(self, Motion::Still | Motion::Grow | Motion::Shrink | Motion::Spin)
    }
}

/// One shape in the scene.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Object {
    pub shape: Shape,
    pub color: Color,
    pub size: Size,
    /// Centre at the first frame, as fractions of the frame width and height (world coordinates).
    pub start: [f32; 2],
    pub motion: Motion,
    /// Strength of the motion. Straight lines: distance travelled along each moving axis, as a
    /// fraction of the frame width (x) or height (y). Bounce: hop height as a fraction of the
    /// frame height. Grow/shrink: ratio of the largest to the smallest scale. Spin: total angle
    /// in radians. Still: unused (0).
    pub amount: f32,
}

/// What is behind the objects.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Background {
    Plain { color: Color },
    /// Sky above a horizon line, ground below it.
    SkyGround {
        sky: Color,
        ground: Color,
        /// Height of the horizon as a fraction of the frame height from the top.
        horizon: f32,
    },
    /// A flat checkerboard floor seen from above, fixed in world coordinates (so camera moves show).
    Checkerboard {
        a: Color,
        b: Color,
        /// Side of one cell as a fraction of the frame's shorter side.
        cell: f32,
    },
    /// A vertical gradient from `top` to `bottom`.
    Gradient { top: Color, bottom: Color },
}

impl Background {
    /// Every colour visible in the background (objects must contrast with all of them).
    pub fn colors(&self) -> Vec<Color> {
        match *self {
            Background::Plain { color } => vec![color],
            Background::SkyGround { sky, ground, .. } => vec![sky, ground],
            Background::Checkerboard { a, b, .. } => vec![a, b],
            Background::Gradient { top, bottom } => vec![top, bottom],
        }
    }

    /// Colours an object must stand out from: the named ones, plus the midpoints of a gradient.
    pub fn contrast_samples(&self) -> Vec<[f32; 3]> {
        let mut out: Vec<[f32; 3]> = self.colors().into_iter().map(|c| c.rgb().map(f32::from)).collect();
        if let Background::Gradient { top, bottom } = *self {
            let (t, b) = (top.rgb().map(f32::from), bottom.rgb().map(f32::from));
            for k in 1..8 {
                let w = k as f32 / 8.0;
                out.push([0, 1, 2].map(|i| t[i] + (b[i] - t[i]) * w));
            }
        }
        out
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CameraKind {
    /// The camera turns left: the whole world slides right on screen.
    PanLeft,
    PanRight,
    /// The view magnifies about the frame centre.
    ZoomIn,
    ZoomOut,
}

impl CameraKind {
    pub const ALL: [CameraKind; 4] = [CameraKind::PanLeft, CameraKind::PanRight, CameraKind::ZoomIn, CameraKind::ZoomOut];
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CameraMove {
    pub kind: CameraKind,
    /// Pan: distance as a fraction of the frame width. Zoom: magnification at the tight end (> 1).
    pub amount: f32,
}

fn default_frames() -> usize {
    25
}

fn default_fps() -> u32 {
    12
}

/// A whole clip's description.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scene {
    pub aspect: Aspect,
    #[serde(default = "default_frames")]
    pub frames: usize,
    #[serde(default = "default_fps")]
    pub fps: u32,
    pub background: Background,
    /// One to three objects, drawn in this order.
    pub objects: Vec<Object>,
    #[serde(default)]
    pub camera: Option<CameraMove>,
    /// Every object's size times this (1: the sizes of [`Size::fraction`]). A world for a small
    /// model can draw all three sizes larger, keeping them apart (see `SamplerConfig`); scenes
    /// written before it existed, and those at 1, leave it out of their JSON.
    #[serde(default = "default_object_scale", skip_serializing_if = "is_default_object_scale")]
    pub object_scale: f32,
}

/// The object scales a scene may have (`Scene::object_scale`, `SamplerConfig::object_scale`).
pub const OBJECT_SCALE: std::ops::RangeInclusive<f32> = 0.25..=3.0;

fn default_object_scale() -> f32 {
    1.0
}

fn is_default_object_scale(scale: &f32) -> bool {
    *scale == 1.0
}

pub const DEFAULT_FRAMES: usize = 25;
pub const DEFAULT_FPS: u32 = 12;

impl Scene {
    pub fn width(&self) -> usize {
        self.aspect.size().0
    }

    pub fn height(&self) -> usize {
        self.aspect.size().1
    }

    /// The frame's shorter side in pixels (object sizes scale with it).
    pub fn short_side(&self) -> f32 {
        self.width().min(self.height()) as f32
    }

    /// Half extent in pixels of an object of `size` before any growth or zoom.
    pub fn half_extent(&self, size: Size) -> f32 {
        size.fraction() * self.object_scale * self.short_side()
    }
}
