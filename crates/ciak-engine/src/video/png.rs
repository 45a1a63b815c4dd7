//! PNG sequences: one lossless RGB8 file per frame.
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use super::{video_err, TempPath, VideoFrames};
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
        let file_path = tmp.path.join(name);
        let file = File::create(&file_path).map_err(|e| CiakError::io(&file_path, e))?;
        let mut encoder = png::Encoder::new(BufWriter::new(file), frame.width as u32, frame.height as u32);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.set_source_srgb(png::SrgbRenderingIntent::Perceptual);
        let fail = |e: png::EncodingError| video_err(&file_path, format!("writing PNG: {e}"));
        let mut writer = encoder.write_header().map_err(fail)?;
        writer.write_image_data(&frame.data).map_err(fail)?;
        writer.finish().map_err(fail)?;
    }
    if existing_empty {
        // rename() onto an empty folder is not portable; the folder is empty, so this loses nothing.
        std::fs::remove_dir(dir).map_err(|e| CiakError::io(dir, e))?;
    }
    tmp.persist(dir)?;
    Ok(names.iter().map(|n| dir.join(n)).collect())
}
