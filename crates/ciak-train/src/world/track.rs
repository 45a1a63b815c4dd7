//! Where everything is at each frame (screen pixels), and the checks that keep a scene readable:
//! objects inside the frame, apart from each other, and in contrast with the background.
use super::color::{delta_e, MIN_CONTRAST};
use super::scene::{CameraKind, Motion, Scene, OBJECT_SCALE};
use thiserror::Error;

/// Gap in pixels an object's bounding circle keeps from the frame edges and from other objects.
pub const MARGIN_PX: f32 = 2.0;

/// One object on one frame, in screen pixels (x right, y down).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ObjectState {
    pub center: [f32; 2],
    /// Half extent after growth and camera zoom (the radius, for a circle).
    pub half_extent: f32,
    /// Radius of a circle that holds the shape at any rotation.
    pub bound: f32,
    /// Clockwise rotation in radians.
    pub angle: f32,
}

/// The camera on one frame: screen = centre + (world - offset - centre) * zoom, in pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct View {
    pub offset_x: f32,
    pub zoom: f32,
}

#[derive(Debug, Clone, PartialEq, Error)]
pub enum SceneError {
    #[error("expected 1 to 3 objects, got {0}")]
    ObjectCount(usize),
    #[error("expected at least 2 frames, got {0}")]
    FrameCount(usize),
    #[error("object {index} leaves the frame at frame {frame} (centre {center:?}, bound {bound:.1} px)")]
    OutOfFrame { index: usize, frame: usize, center: [f32; 2], bound: f32 },
    #[error("objects {a} and {b} overlap at frame {frame}")]
    Overlap { a: usize, b: usize, frame: usize },
    #[error("object {index} ({color}) is too close to a background colour (contrast {contrast:.0} < {MIN_CONTRAST})")]
    Contrast { index: usize, color: &'static str, contrast: f32 },
    #[error("objects {a} and {b} share the colour {color}")]
    SameColor { a: usize, b: usize, color: &'static str },
    #[error("a circle cannot visibly spin (object {0})")]
    SpinningCircle(usize),
    #[error("{0}")]
    Amount(String),
    #[error("expected `object_scale` in [{lo}, {hi}], got {0}", lo = OBJECT_SCALE.start(), hi = OBJECT_SCALE.end())]
    ObjectScale(f32),
}

impl Scene {
    /// Clip time of a frame in [0, 1].
    pub fn time(&self, frame: usize) -> f32 {
        if self.frames <= 1 {
            0.0
        } else {
            frame as f32 / (self.frames - 1) as f32
        }
    }

    pub fn view(&self, frame: usize) -> View {
        let t = self.time(frame);
        let Some(cam) = self.camera else { return View { offset_x: 0.0, zoom: 1.0 } };
        let w = self.width() as f32;
        match cam.kind {
            // Turning left brings what was on the left into view: the world slides right.
            CameraKind::PanLeft => View { offset_x: -cam.amount * w * t, zoom: 1.0 },
            CameraKind::PanRight => View { offset_x: cam.amount * w * t, zoom: 1.0 },
            CameraKind::ZoomIn => View { offset_x: 0.0, zoom: 1.0 + (cam.amount - 1.0) * t },
            CameraKind::ZoomOut => View { offset_x: 0.0, zoom: cam.amount + (1.0 - cam.amount) * t },
        }
    }

    /// Object `index` on frame `frame`, in screen pixels.
    pub fn object_state(&self, index: usize, frame: usize) -> ObjectState {
        let o = &self.objects[index];
        let t = self.time(frame);
        let (w, h) = (self.width() as f32, self.height() as f32);
        let [mut x, mut y] = o.start;
        let mut scale = 1.0;
        let mut angle = 0.0;
        match o.motion {
            Motion::Bounce => y -= o.amount * (2.0 * std::f32::consts::PI * t).sin().abs(),
            Motion::Grow | Motion::Shrink => {
                // Scale moves geometrically-centred around 1 so the size word names the middle.
                let (lo, hi) = (1.0 / o.amount.sqrt(), o.amount.sqrt());
                let s = if o.motion == Motion::Grow { t } else { 1.0 - t };
                scale = lo + (hi - lo) * s;
            }
            Motion::Spin => angle = o.amount * t,
            Motion::Still => {}
            m => {
                let d = m.direction().expect("straight-line motion");
                x += d[0] * o.amount * t;
                y += d[1] * o.amount * t;
            }
        }
        let view = self.view(frame);
        let (cx, cy) = (w / 2.0, h / 2.0);
        let half = self.half_extent(o.size) * scale * view.zoom;
        ObjectState {
            center: [cx + (x * w - view.offset_x - cx) * view.zoom, cy + (y * h - cy) * view.zoom],
            half_extent: half,
            bound: half * o.shape.bound_factor(),
            angle,
        }
    }

    /// Checks the invariants the sampler guarantees; hand-written scenes should pass them too.
    pub fn validate(&self) -> Result<(), SceneError> {
        let n = self.objects.len();
        if !(1..=3).contains(&n) {
            return Err(SceneError::ObjectCount(n));
        }
        if self.frames < 2 {
            return Err(SceneError::FrameCount(self.frames));
        }
        if !OBJECT_SCALE.contains(&self.object_scale) {
            return Err(SceneError::ObjectScale(self.object_scale));
        }
        let samples = self.background.contrast_samples();
        for (i, o) in self.objects.iter().enumerate() {
            if o.motion == Motion::Spin && !o.shape.can_spin() {
                return Err(SceneError::SpinningCircle(i));
            }
            let ok_amount = match o.motion {
                Motion::Still => true,
                Motion::Grow | Motion::Shrink => o.amount > 1.0,
                _ => o.amount > 0.0,
            };
            if !ok_amount || !o.amount.is_finite() {
                return Err(SceneError::Amount(format!("object {i}: amount {} does not fit {:?}", o.amount, o.motion)));
            }
            let rgb = o.color.rgb().map(f32::from);
            let worst = samples.iter().map(|s| delta_e(rgb, *s)).fold(f32::INFINITY, f32::min);
            if worst < MIN_CONTRAST {
                return Err(SceneError::Contrast { index: i, color: o.color.name(), contrast: worst });
            }
            for (j, p) in self.objects.iter().enumerate().skip(i + 1) {
                if p.color == o.color {
                    return Err(SceneError::SameColor { a: i, b: j, color: o.color.name() });
                }
            }
        }
        if let Some(cam) = self.camera {
            let zoom = matches!(cam.kind, CameraKind::ZoomIn | CameraKind::ZoomOut);
            if !cam.amount.is_finite() || cam.amount <= 0.0 || (zoom && cam.amount <= 1.0) {
                return Err(SceneError::Amount(format!("camera amount {} does not fit {:?}", cam.amount, cam.kind)));
            }
        }
        let (w, h) = (self.width() as f32, self.height() as f32);
        for frame in 0..self.frames {
            let states: Vec<ObjectState> = (0..n).map(|i| self.object_state(i, frame)).collect();
            for (i, s) in states.iter().enumerate() {
                let [x, y] = s.center;
                let b = s.bound + MARGIN_PX;
                if x - b < 0.0 || y - b < 0.0 || x + b > w || y + b > h {
                    return Err(SceneError::OutOfFrame { index: i, frame, center: s.center, bound: s.bound });
                }
                for (j, q) in states.iter().enumerate().skip(i + 1) {
                    let d = ((s.center[0] - q.center[0]).powi(2) + (s.center[1] - q.center[1]).powi(2)).sqrt();
                    if d < s.bound + q.bound + MARGIN_PX {
                        return Err(SceneError::Overlap { a: i, b: j, frame });
                    }
                }
            }
        }
        Ok(())
    }
}
