//! Scene to pixels: flat colours, shapes anti-aliased by their exact signed distance (a one-pixel
//! ramp), a box-filtered checkerboard. Pure arithmetic, so the same scene gives the same bytes.
use super::color::Color;
use super::scene::{Background, Scene, Shape, SQUARE_HALF_SIDE, STAR_INNER_RATIO, STAR_OUTER_RADIUS, TRIANGLE_CIRCUMRADIUS};
use super::track::{ObjectState, View};

/// Rendered frames, RGB8, laid out [frames, height, width, 3].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clip {
    pub width: usize,
    pub height: usize,
    pub frames: usize,
    pub fps: u32,
    pub pixels: Vec<u8>,
}

impl Clip {
    pub fn frame_len(&self) -> usize {
        self.width * self.height * 3
    }

    /// Frame `i` as [height, width, 3] bytes.
    pub fn frame(&self, i: usize) -> &[u8] {
        let n = self.frame_len();
        &self.pixels[i * n..(i + 1) * n]
    }

    pub fn pixel(&self, frame: usize, x: usize, y: usize) -> [u8; 3] {
        let at = (frame * self.height + y) * self.width * 3 + x * 3;
        [self.pixels[at], self.pixels[at + 1], self.pixels[at + 2]]
    }

    /// Pixels mapped to [-1, 1] as the VAE expects, still [frames, height, width, 3].
    pub fn to_f32(&self) -> Vec<f32> {
        self.pixels.iter().map(|&v| v as f32 / 127.5 - 1.0).collect()
    }
}

/// Renders every frame of `scene`.
pub fn render(scene: &Scene) -> Clip {
    let mut pixels = Vec::new();
    render_into(scene, &mut pixels);
    Clip { width: scene.width(), height: scene.height(), frames: scene.frames, fps: scene.fps, pixels }
}

/// Renders into `out` (resized to [frames, height, width, 3]), reusing its allocation.
pub fn render_into(scene: &Scene, out: &mut Vec<u8>) {
    let frame_len = scene.width() * scene.height() * 3;
    out.clear();
    out.resize(frame_len * scene.frames, 0);
    // Without a camera move the background is the same on every frame: draw it once.
    let still = if scene.camera.is_none() {
        let mut bg = vec![0u8; frame_len];
        draw_background(scene, scene.view(0), &mut bg);
        Some(bg)
    } else {
        None
    };
    for (f, frame) in out.chunks_exact_mut(frame_len).enumerate() {
        match &still {
            Some(bg) => frame.copy_from_slice(bg),
            None => draw_background(scene, scene.view(f), frame),
        }
        for (i, o) in scene.objects.iter().enumerate() {
            draw_shape(frame, scene.width(), scene.height(), o.shape, o.color, scene.object_state(i, f));
        }
    }
}

fn lerp_rgb(a: [f32; 3], b: [f32; 3], t: f32) -> [f32; 3] {
    [a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t, a[2] + (b[2] - a[2]) * t]
}

fn to_u8(c: [f32; 3]) -> [u8; 3] {
    c.map(|v| (v + 0.5).clamp(0.0, 255.0) as u8)
}

fn rgbf(c: Color) -> [f32; 3] {
    c.rgb().map(f32::from)
}

fn fill_row(row: &mut [u8], c: [u8; 3]) {
    for px in row.chunks_exact_mut(3) {
        px.copy_from_slice(&c);
    }
}

fn draw_background(scene: &Scene, view: View, frame: &mut [u8]) {
    let (w, h) = (scene.width(), scene.height());
    let (cx, cy) = (w as f32 / 2.0, h as f32 / 2.0);
    // Screen row/column edges back to world coordinates (inverse of the camera transform).
    let world_y = |sy: f32| cy + (sy - cy) / view.zoom;
    let world_x = |sx: f32| cx + (sx - cx) / view.zoom + view.offset_x;
    match scene.background {
        Background::Plain { color } => fill_row(frame, color.rgb()),
        Background::SkyGround { sky, ground, horizon } => {
            let line = horizon * h as f32;
            for (y, row) in frame.chunks_exact_mut(w * 3).enumerate() {
                let (y0, y1) = (world_y(y as f32), world_y(y as f32 + 1.0));
                let ground_share = ((y1 - line.max(y0)) / (y1 - y0)).clamp(0.0, 1.0);
                fill_row(row, to_u8(lerp_rgb(rgbf(sky), rgbf(ground), ground_share)));
            }
        }
        Background::Gradient { top, bottom } => {
            for (y, row) in frame.chunks_exact_mut(w * 3).enumerate() {
                let t = (world_y(y as f32 + 0.5) / h as f32).clamp(0.0, 1.0);
                fill_row(row, to_u8(lerp_rgb(rgbf(top), rgbf(bottom), t)));
            }
        }
        Background::Checkerboard { a, b, cell } => {
            let size = cell * scene.short_side();
            // Average of the +1/-1 square wave over a pixel's footprint; the 2-D box filter of
            // the checkerboard is the product of the two 1-D averages.
            let avg = |w0: f32, w1: f32, origin: f32| (tri((w1 - origin) / size) - tri((w0 - origin) / size)) * size / (w1 - w0);
            let sx: Vec<f32> = (0..w).map(|x| avg(world_x(x as f32), world_x(x as f32 + 1.0), cx)).collect();
            let (ca, cb) = (rgbf(a), rgbf(b));
            for (y, row) in frame.chunks_exact_mut(w * 3).enumerate() {
                let sy = avg(world_y(y as f32), world_y(y as f32 + 1.0), cy);
                for (px, &sxv) in row.chunks_exact_mut(3).zip(&sx) {
                    let share_b = 0.5 - 0.5 * sxv * sy;
                    px.copy_from_slice(&to_u8(lerp_rgb(ca, cb, share_b)));
                }
            }
        }
    }
}

/// Integral of the square wave that is +1 on [0,1) and -1 on [1,2), period 2.
fn tri(u: f32) -> f32 {
    let m = u.rem_euclid(2.0);
    if m < 1.0 {
        m
    } else {
        2.0 - m
    }
}

fn draw_shape(frame: &mut [u8], w: usize, h: usize, shape: Shape, color: Color, s: ObjectState) {
    let reach = s.bound + 1.0;
    let x0 = (s.center[0] - reach).floor().max(0.0) as usize;
    let y0 = (s.center[1] - reach).floor().max(0.0) as usize;
    let x1 = ((s.center[0] + reach).ceil().max(0.0) as usize).min(w);
    let y1 = ((s.center[1] + reach).ceil().max(0.0) as usize).min(h);
    let (sin, cos) = s.angle.sin_cos();
    let col = rgbf(color);
    let r = s.half_extent;
    for y in y0..y1 {
        let row = &mut frame[y * w * 3..(y + 1) * w * 3];
        let dy = y as f32 + 0.5 - s.center[1];
        for x in x0..x1 {
            let dx = x as f32 + 0.5 - s.center[0];
            // Undo the clockwise screen rotation, then flip y so shapes point up in their own frame.
            let lx = cos * dx + sin * dy;
            let ly = -(-sin * dx + cos * dy);
            let d = match shape {
                Shape::Circle => (lx * lx + ly * ly).sqrt() - r,
                Shape::Square => sd_box(lx, ly, r * SQUARE_HALF_SIDE),
                Shape::Triangle => sd_triangle(lx, ly, r * TRIANGLE_CIRCUMRADIUS * 3f32.sqrt() / 2.0),
                Shape::Star => sd_star5(lx, ly, r * STAR_OUTER_RADIUS, STAR_INNER_RATIO),
            };
            let alpha = (0.5 - d).clamp(0.0, 1.0);
            if alpha <= 0.0 {
                continue;
            }
            let px = &mut row[x * 3..x * 3 + 3];
            let bg = [px[0] as f32, px[1] as f32, px[2] as f32];
            px.copy_from_slice(&to_u8(lerp_rgb(bg, col, alpha)));
        }
    }
}

fn sd_box(x: f32, y: f32, half: f32) -> f32 {
    let (qx, qy) = (x.abs() - half, y.abs() - half);
    let outside = (qx.max(0.0).powi(2) + qy.max(0.0).powi(2)).sqrt();
    outside + qx.max(qy).min(0.0)
}

/// Equilateral triangle with half side `r`, centroid at the origin, a vertex pointing up (y up).
fn sd_triangle(x: f32, y: f32, r: f32) -> f32 {
    let k = 3f32.sqrt();
    let mut px = x.abs() - r;
    let mut py = y + r / k;
    if px + k * py > 0.0 {
        (px, py) = ((px - k * py) / 2.0, (-k * px - py) / 2.0);
    }
    px -= px.clamp(-2.0 * r, 0.0);
    -(px * px + py * py).sqrt() * py.signum()
}

/// Five-pointed star with outer radius `r` and inner/outer ratio `rf`, a point up (y up).
fn sd_star5(x: f32, y: f32, r: f32, rf: f32) -> f32 {
    let k1 = [0.809_017, -0.587_785_24];
    let k2 = [-k1[0], k1[1]];
    let mut p = [x.abs(), y];
    let d1 = 2.0 * (k1[0] * p[0] + k1[1] * p[1]).max(0.0);
    p = [p[0] - d1 * k1[0], p[1] - d1 * k1[1]];
    let d2 = 2.0 * (k2[0] * p[0] + k2[1] * p[1]).max(0.0);
    p = [p[0] - d2 * k2[0], p[1] - d2 * k2[1]];
    p[0] = p[0].abs();
    p[1] -= r;
    let ba = [rf * -k1[1], rf * k1[0] - 1.0];
    let hh = ((p[0] * ba[0] + p[1] * ba[1]) / (ba[0] * ba[0] + ba[1] * ba[1])).clamp(0.0, r);
    let (qx, qy) = (p[0] - ba[0] * hh, p[1] - ba[1] * hh);
    (qx * qx + qy * qy).sqrt() * (p[1] * ba[0] - p[0] * ba[1]).signum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_distances_have_the_right_sign_and_scale() {
        assert!(sd_box(0.0, 0.0, 5.0) < 0.0 && (sd_box(8.0, 0.0, 5.0) - 3.0).abs() < 1e-5);
        assert!(sd_triangle(0.0, 0.0, 5.0) < 0.0 && sd_triangle(0.0, 10.0, 5.0) > 0.0);
        // The tip sits at the circumradius 2r/sqrt(3) above the centroid.
        assert!(sd_triangle(0.0, 2.0 * 5.0 / 3f32.sqrt() - 0.1, 5.0) < 0.0);
        assert!(sd_star5(0.0, 0.0, 10.0, 0.5) < 0.0);
        assert!((sd_star5(0.0, 12.0, 10.0, 0.5) - 2.0).abs() < 1e-4, "{}", sd_star5(0.0, 12.0, 10.0, 0.5));
        assert!(sd_star5(0.0, -9.0, 10.0, 0.5) > 0.0, "the notch below the centre is outside");
    }
}
