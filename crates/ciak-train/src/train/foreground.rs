//! Where the objects are in latent space, for a loss that weights them above the background.
//!
//! Objects cover a few percent of a toy clip, so a plain mean squared error spends almost all
//! of its gradient on backgrounds: a small model learns the backdrop colour long before it
//! learns to draw the object the caption names. The DiT trainer can weight latent cells that an
//! object touches by `1 + foreground_weight`; this module computes those cells from the scene
//! itself (exact positions from the world's tracks, no rendering).
use crate::world::Scene;

/// Video frames that latent frame `j` holds, for a causal VAE that keeps frame 0 alone and
/// packs `ratio` frames into every later latent frame (Wan: ratio 4, 25 frames -> 7).
fn frames_of(j: usize, ratio: usize, frames: usize) -> std::ops::Range<usize> {
    if j == 0 {
        0..1.min(frames)
    } else {
        let start = (j - 1) * ratio + 1;
        start.min(frames)..(j * ratio + 1).min(frames)
    }
}

/// 1 where some object's bounding circle touches the latent cell on one of the cell's frames,
/// else 0; row-major `[frames, height, width]` of the latent grid.
///
/// The latent grid must tile the clip: `scene.width() / width == scene.height() / height`, and
/// `scene.frames == 1 + (frames - 1) * ratio` for an integer temporal ratio.
pub fn foreground_mask(
    scene: &Scene,
    frames: usize,
    height: usize,
    width: usize,
) -> Result<Vec<f32>, String> {
    let (w, h) = (scene.width(), scene.height());
    if frames == 0
        || height == 0
        || width == 0
        || w % width != 0
        || h % height != 0
        || w / width != h / height
    {
        return Err(format!(
            "expected a latent grid that tiles the {w}x{h} clip with square cells, got {width}x{height}x{frames}"
        ));
    }
    let cell = (w / width) as f32;
    let ratio = if frames == 1 {
        1
    } else {
        (scene.frames - 1) / (frames - 1)
    };
    if frames > 1 && (ratio == 0 || 1 + (frames - 1) * ratio != scene.frames) {
        return Err(format!(
            "expected {frames} latent frames to cover {} video frames as 1 + k x ratio, they do not",
            scene.frames
        ));
    }
    let mut mask = vec![0f32; frames * height * width];
    for j in 0..frames {
        let plane = &mut mask[j * height * width..(j + 1) * height * width];
        for f in frames_of(j, ratio, scene.frames) {
            for i in 0..scene.objects.len() {
                let s = scene.object_state(i, f);
                mark_circle(plane, width, height, cell, s.center, s.bound);
            }
        }
    }
    Ok(mask)
}

/// 1 on the pixels of video frame `f` that some object's bounding circle covers on any frame
/// within `reach` of `f`, else 0; row-major `[frames, height, width]` at the clip's own size.
///
/// For a VAE loss that weights objects: with `reach` the frames a latent frame packs, the weight
/// also covers where a moving object was and will be, which is where a decoder draws its ghosts.
pub fn pixel_mask(scene: &Scene, reach: usize) -> Vec<f32> {
    let (w, h, n) = (scene.width(), scene.height(), scene.frames);
    let mut mask = vec![0f32; n * h * w];
    for f in 0..n {
        let plane = &mut mask[f * h * w..(f + 1) * h * w];
        for g in f.saturating_sub(reach)..(f + reach + 1).min(n) {
            for i in 0..scene.objects.len() {
                let s = scene.object_state(i, g);
                mark_circle(plane, w, h, 1.0, s.center, s.bound);
            }
        }
    }
    mask
}

/// Sets the cells of a `width x height` grid of `cell`-pixel squares that a circle touches.
fn mark_circle(
    plane: &mut [f32],
    width: usize,
    height: usize,
    cell: f32,
    center: [f32; 2],
    radius: f32,
) {
    let lo = |c: f32| ((c - radius) / cell).floor().max(0.0) as usize;
    let hi = |c: f32, n: usize| (((c + radius) / cell).floor().max(0.0) as usize).min(n - 1);
    for y in lo(center[1])..=hi(center[1], height) {
        for x in lo(center[0])..=hi(center[0], width) {
            // distance from the centre to the nearest point of the cell
            let dx = (center[0] - center[0].clamp(x as f32 * cell, (x + 1) as f32 * cell)).abs();
            let dy = (center[1] - center[1].clamp(y as f32 * cell, (y + 1) as f32 * cell)).abs();
            if dx * dx + dy * dy < radius * radius {
                plane[y * width + x] = 1.0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::{Aspect, Background, Color, Motion, Object, Shape, Size};

    fn scene(motion: Motion) -> Scene {
        Scene {
            aspect: Aspect::Wide,
            frames: 25,
            fps: 12,
            background: Background::Plain { color: Color::Blue },
            objects: vec![Object {
                shape: Shape::Circle,
                color: Color::Red,
                size: Size::Small,
                start: [0.25, 0.5],
                motion,
                amount: 0.5,
            }],
            camera: None,
            object_scale: 1.0,
        }
    }

    #[test]
    fn a_still_ball_marks_the_same_few_cells_on_every_latent_frame() {
        let s = scene(Motion::Still);
        let (lw, lh) = (s.width() / 8, s.height() / 8);
        let m = foreground_mask(&s, 7, lh, lw).unwrap();
        let plane = lw * lh;
        let first: Vec<f32> = m[..plane].to_vec();
        let on = first.iter().filter(|&&v| v == 1.0).count();
        // a small ball: radius 0.09 x 128 = 11.5 px, so about (23 / 8 + 1)^2 cells
        assert!((4..=20).contains(&on), "{on} cells marked");
        for j in 1..7 {
            assert_eq!(
                &m[j * plane..(j + 1) * plane],
                first.as_slice(),
                "latent frame {j}"
            );
        }
        // the ball is left of centre: nothing on the right half
        for y in 0..lh {
            for x in lw / 2..lw {
                assert_eq!(first[y * lw + x], 0.0);
            }
        }
    }

    #[test]
    fn a_ball_moving_right_moves_its_cells_right_and_later_frames_cover_more() {
        let s = scene(Motion::Right);
        let (lw, lh) = (s.width() / 8, s.height() / 8);
        let m = foreground_mask(&s, 7, lh, lw).unwrap();
        let plane = lw * lh;
        let mean_x = |j: usize| {
            let cells: Vec<usize> = (0..plane)
                .filter(|&i| m[j * plane + i] == 1.0)
                .map(|i| i % lw)
                .collect();
            (
                cells.iter().sum::<usize>() as f32 / cells.len() as f32,
                cells.len(),
            )
        };
        let (x0, n0) = mean_x(0);
        let (x6, n6) = mean_x(6);
        assert!(
            x6 > x0 + 5.0,
            "centre of marked cells moved from {x0} to {x6}"
        );
        // latent frames after the first hold 4 video frames of a moving ball: a longer smear
        assert!(mean_x(3).1 > n0, "{} vs {n0}", mean_x(3).1);
        assert!(n6 >= n0);
    }

    #[test]
    fn pixel_masks_cover_the_ball_and_its_reach_in_time() {
        let s = scene(Motion::Right);
        let (w, h) = (s.width(), s.height());
        let still = pixel_mask(&s, 0);
        let spread = pixel_mask(&s, 3);
        assert_eq!(still.len(), s.frames * w * h);
        let on = |m: &[f32], f: usize| m[f * w * h..(f + 1) * w * h].iter().filter(|&&v| v == 1.0).count();
        // radius 0.09 x 128 = 11.5 px; a pixel counts when the circle touches it, so between the
        // disc and the disc one pixel wider
        let r = s.object_state(0, 12).bound;
        let disc = |r: f32| std::f32::consts::PI * r * r;
        let n = on(&still, 12) as f32;
        assert!(disc(r) < n && n < disc(r + 1.0), "{n} vs {} .. {}", disc(r), disc(r + 1.0));
        // the centre pixel is marked, a pixel two radii to the side is not
        let [cx, cy] = s.object_state(0, 12).center;
        let at = |m: &[f32], x: f32| m[12 * w * h + cy as usize * w + x as usize];
        assert_eq!(at(&still, cx), 1.0);
        assert_eq!(at(&still, cx + 2.0 * r), 0.0);
        // reach 3 adds where the ball was 3 frames before and will be 3 frames after
        assert!(on(&spread, 12) > on(&still, 12));
        let [ahead, _] = s.object_state(0, 15).center;
        assert_eq!(at(&spread, ahead + 0.9 * r), 1.0);
        assert_eq!(at(&still, ahead + 0.9 * r), 0.0);
    }

    #[test]
    fn a_grid_that_does_not_tile_the_clip_is_an_error() {
        let s = scene(Motion::Still);
        assert!(foreground_mask(&s, 7, 15, 28)
            .unwrap_err()
            .contains("tiles"));
        assert!(foreground_mask(&s, 6, 16, 28)
            .unwrap_err()
            .contains("latent frames"));
    }
}
