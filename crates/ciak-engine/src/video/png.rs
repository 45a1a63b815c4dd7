//! PNG sequences: one lossless RGB8 file per frame.
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use super::{video_err, RgbFrame, TempPath, VideoFrames};
use crate::error::{CiakError, Result};

/// Writes `frame_00000.png`, `frame_00001.png`, ... (8-bit RGB, tagged sRGB) into the folder `dir`
/// and returns their paths in frame order.
///
/// The frames go into a temporary folder next to `dir` that is renamed to `dir` at the end, so
/// `dir` never holds a partial sequence. `dir` may be missing or an empty folder; a non-empty
/// folder or a file at `dir` is refused (never overwritten). Its parent folder must exist.
pub fn write_png_sequence(frames: &VideoFrames, dir: &Path) -> Result<Vec<PathBuf>> {
    let _span = tracing::info_span!("write_png_sequence", frames = frames.len()).entered();
    let existing_empty = match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(video_err(dir, "folder is not empty; refusing to overwrite it"));
            }
            true
        }
        Err(_) if dir.exists() => return Err(video_err(dir, "exists and is not a folder")),
        Err(_) => false,
    };
    let tmp = TempPath::create(dir, true)?;
    let names: Vec<String> = (0..frames.len()).map(|i| format!("frame_{i:05}.png")).collect();
    for (frame, name) in frames.frames().iter().zip(&names) {
        encode_png(frame, &tmp.path.join(name))?;
    }
    if existing_empty {
        // rename() onto an empty folder is not portable; the folder is empty, so this loses nothing.
        std::fs::remove_dir(dir).map_err(|e| CiakError::io(dir, e))?;
    }
    tmp.persist(dir)?;
    Ok(names.iter().map(|n| dir.join(n)).collect())
}

/// Grey gap between the frames of a strip, in pixels.
const STRIP_GAP: usize = 2;
const STRIP_GAP_RGB: [u8; 3] = [64, 64, 64];

/// Indices of `count` frames spread evenly over `len` frames, first and last included
/// (all of them when `count >= len`).
pub fn strip_picks(len: usize, count: usize) -> Vec<usize> {
    let count = count.clamp(1, len.max(1));
    if count == 1 {
        return vec![0];
    }
    (0..count).map(|k| (k * (len - 1) + (count - 1) / 2) / (count - 1)).collect()
}

/// `count` frames of the clip (see [`strip_picks`]) side by side with a 2-pixel grey gap, as one
/// RGB8 picture: a still preview of a clip for a page or a README.
pub fn frame_strip(frames: &VideoFrames, count: usize) -> RgbFrame {
    let (w, h) = (frames.width(), frames.height());
    let picks = strip_picks(frames.len(), count);
    let width = picks.len() * w + (picks.len() - 1) * STRIP_GAP;
    let mut data = Vec::with_capacity(width * h * 3);
    for y in 0..h {
        for (k, &f) in picks.iter().enumerate() {
            if k > 0 {
                (0..STRIP_GAP).for_each(|_| data.extend_from_slice(&STRIP_GAP_RGB));
            }
            data.extend_from_slice(&frames.frames()[f].data[y * w * 3..(y + 1) * w * 3]);
        }
    }
    RgbFrame { width, height: h, data }
}

/// Writes [`frame_strip`] as a PNG at `path`, through a temporary file and a rename (never a
/// partial file); an existing file is replaced.
pub fn write_strip(frames: &VideoFrames, count: usize, path: &Path) -> Result<()> {
    if count == 0 {
        return Err(CiakError::InvalidRequest("expected at least 1 frame in a strip, got 0".into()));
    }
    let tmp = TempPath::create(path, false)?;
    encode_png(&frame_strip(frames, count), &tmp.path)?;
    tmp.persist(path)
}

/// One 8-bit RGB PNG, tagged sRGB.
fn encode_png(frame: &RgbFrame, path: &Path) -> Result<()> {
    let file = File::create(path).map_err(|e| CiakError::io(path, e))?;
    let mut encoder = png::Encoder::new(BufWriter::new(file), frame.width as u32, frame.height as u32);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_source_srgb(png::SrgbRenderingIntent::Perceptual);
    let fail = |e: png::EncodingError| video_err(path, format!("writing PNG: {e}"));
    let mut writer = encoder.write_header().map_err(fail)?;
    writer.write_image_data(&frame.data).map_err(fail)?;
    writer.finish().map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clip(frames: usize, w: usize, h: usize) -> VideoFrames {
        // frame i is filled with the value i, so a strip shows which frames it picked
        let frames = (0..frames).map(|i| RgbFrame { width: w, height: h, data: vec![i as u8; w * h * 3] }).collect();
        VideoFrames::new(frames).unwrap()
    }

    #[test]
    fn picks_spread_evenly_with_both_ends() {
        assert_eq!(strip_picks(25, 5), vec![0, 6, 12, 18, 24]);
        assert_eq!(strip_picks(25, 2), vec![0, 24]);
        assert_eq!(strip_picks(9, 4), vec![0, 3, 5, 8]);
        assert_eq!(strip_picks(3, 10), vec![0, 1, 2]);
        assert_eq!(strip_picks(7, 1), vec![0]);
    }

    #[test]
    fn strip_lays_frames_side_by_side() {
        let s = frame_strip(&clip(9, 4, 3), 3);
        assert_eq!((s.width, s.height), (3 * 4 + 2 * STRIP_GAP, 3));
        let row: Vec<u8> = s.data[..s.width * 3].chunks(3).map(|p| p[0]).collect();
        let gap = STRIP_GAP_RGB[0];
        assert_eq!(row, vec![0, 0, 0, 0, gap, gap, 4, 4, 4, 4, gap, gap, 8, 8, 8, 8]);
    }

    #[test]
    fn strip_png_reads_back_and_bad_input_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("strip.png");
        write_strip(&clip(5, 6, 4), 5, &path).unwrap();
        let decoder = png::Decoder::new(std::io::BufReader::new(File::open(&path).unwrap()));
        let reader = decoder.read_info().unwrap();
        assert_eq!((reader.info().width, reader.info().height), (5 * 6 + 4 * STRIP_GAP as u32, 4));
        let err = write_strip(&clip(5, 6, 4), 0, &dir.path().join("none.png")).unwrap_err().to_string();
        assert!(err.contains("expected at least 1 frame"), "{err}");
        let err = write_strip(&clip(5, 6, 4), 2, &dir.path().join("missing/strip.png")).unwrap_err().to_string();
        assert!(err.contains("does not exist"), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "only strip.png");
    }
}
