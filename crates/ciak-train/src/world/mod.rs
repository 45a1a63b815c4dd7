//! The procedurally rendered world: scene descriptions, how they move, how they are drawn and
//! how random ones are drawn.
pub mod color;
pub mod render;
pub mod sample;
pub mod scene;
pub mod track;

pub use color::Color;
pub use render::{render, render_into, Clip};
pub use sample::{sample_scene, SamplerConfig};
pub use scene::{Aspect, Background, CameraKind, CameraMove, Motion, Object, Scene, Shape, Size};
pub use track::{ObjectState, SceneError, View};
