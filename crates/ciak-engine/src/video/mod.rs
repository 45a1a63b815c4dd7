//! Video output and inspection: frames tensor -> RGB8 -> H.264 (openh264) -> fast-start MP4 (muxide),
//! PNG sequences, and a pure-Rust reader (mp4 demux + openh264 decode) to check what was written.
//!
//! Colour: our own BT.709 limited-range RGB -> YCbCr 4:2:0 conversion (rounded, 2x2 chroma average),
//! tagged bt709 in the H.264 VUI, so players and `decode_mp4` invert the same matrix.
//! Every writer goes through a temporary name in the destination folder and a rename, so a failed
//! write never leaves a partial file at the requested path.
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::error::{CiakError, Result};

mod color;
mod h264;
mod mp4;
mod png;

pub use self::mp4::{decode_mp4, read_mp4_info, write_mp4};
pub use self::png::{frame_strip, strip_picks, write_png_sequence, write_strip};

/// One 8-bit RGB picture: `height` rows of `width` pixels, 3 bytes (R, G, B) each, top row first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbFrame {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

/// A clip ready to be written: one or more RGB8 frames of the same size.
#[derive(Debug, Clone)]
pub struct VideoFrames {
    width: usize,
    height: usize,
    frames: Vec<RgbFrame>,
}

impl VideoFrames {
    /// Checks that there is at least one frame, that all have the same size and `data` of
    /// `width * height * 3` bytes.
    pub fn new(frames: Vec<RgbFrame>) -> Result<Self> {
        let Some(first) = frames.first() else {
            return Err(CiakError::InvalidRequest("expected at least one frame, got 0".into()));
        };
        let (width, height) = (first.width, first.height);
        if width == 0 || height == 0 {
            return Err(CiakError::InvalidRequest(format!("expected a non-empty frame size, got {width}x{height}")));
        }
        for (i, f) in frames.iter().enumerate() {
            if (f.width, f.height) != (width, height) {
                return Err(CiakError::InvalidRequest(format!(
                    "expected every frame to be {width}x{height}, frame {i} is {}x{}",
                    f.width, f.height
                )));
            }
            if f.data.len() != width * height * 3 {
                return Err(CiakError::InvalidRequest(format!(
                    "expected {} bytes (RGB8 {width}x{height}) in frame {i}, got {}",
                    width * height * 3,
                    f.data.len()
                )));
            }
        }
        Ok(Self { width, height, frames })
    }

    /// From the pipeline's output (`Generated.frames`): a float tensor [F, H, W, 3] with values in
    /// [0, 1] on any device. Values are scaled by 255 and rounded to nearest; values outside [0, 1]
    /// are clamped, NaN or infinite values are an error (they mean the model diverged).
    pub fn from_tensor(frames: &Tensor) -> Result<Self> {
        let dims = frames.dims();
        let &[f, h, w, c] = dims else {
            return Err(CiakError::InvalidRequest(format!("expected frames [F, H, W, 3], got shape {dims:?}")));
        };
        if c != 3 || f == 0 || h == 0 || w == 0 {
            return Err(CiakError::InvalidRequest(format!("expected frames [F, H, W, 3] with F, H, W > 0, got {dims:?}")));
        }
        if !frames.dtype().is_float() {
            return Err(CiakError::InvalidRequest(format!("expected float frames in [0, 1], got dtype {:?}", frames.dtype())));
        }
        let values = frames.to_device(&Device::Cpu)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        if let Some(bad) = values.iter().position(|v| !v.is_finite()) {
            let px = bad / 3;
            return Err(CiakError::InvalidRequest(format!(
                "frames contain a non-finite value ({}) at frame {}, row {}, column {}",
                values[bad],
                px / (h * w),
                px / w % h,
                px % w
            )));
        }
        let per_frame = h * w * 3;
        let frames = values
            .chunks_exact(per_frame)
            .map(|chunk| RgbFrame { width: w, height: h, data: chunk.iter().map(|&v| unit_to_u8(v)).collect() })
            .collect();
        Self::new(frames)
    }

    pub fn width(&self) -> usize {
        self.width
    }

    pub fn height(&self) -> usize {
        self.height
    }

    /// Number of frames (never 0).
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Always false: a `VideoFrames` holds at least one frame.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    pub fn frames(&self) -> &[RgbFrame] {
        &self.frames
    }
}

/// [0, 1] -> 0..=255, rounded to nearest (truncation would darken every pixel by half a step).
fn unit_to_u8(v: f32) -> u8 {
    (v * 255.0).round().clamp(0.0, 255.0) as u8
}

/// What an MP4 file holds, as read back from its boxes (see [`read_mp4_info`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Mp4Info {
    pub width: u32,
    pub height: u32,
    /// Number of video samples (frames).
    pub frames: usize,
    /// frames / duration.
    pub fps: f64,
    /// Media duration of the video track: the sum of the sample durations, in seconds.
    pub duration_secs: f64,
    /// 0-based indices of the sync samples (IDR frames), ascending.
    pub keyframes: Vec<usize>,
    /// True when `moov` comes before `mdat` (playback can start before the whole file arrived).
    pub fast_start: bool,
    /// The description tag (`moov/udta/meta/ilst/desc`): ciak stores the JSON recipe there.
    pub metadata: Option<String>,
    /// RFC 6381 codec string from the avcC box, e.g. `avc1.42c01e` (Constrained Baseline 3.0).
    pub codec: String,
    /// Colour description from the SPS VUI.
    pub color: ColorTags,
    /// File size in bytes.
    pub bytes: u64,
}

/// H.264 VUI colour description (ITU-T H.264 Tables E-3..E-5 codes; 2 = unspecified).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColorTags {
    pub primaries: u8,
    pub transfer: u8,
    pub matrix: u8,
    pub full_range: bool,
}

impl ColorTags {
    /// What a stream without colour description means: everything unspecified, limited range.
    pub const UNSPECIFIED: ColorTags = ColorTags { primaries: 2, transfer: 2, matrix: 2, full_range: false };
    /// BT.709 limited range: what [`write_mp4`] writes.
    pub const BT709: ColorTags = ColorTags { primaries: 1, transfer: 1, matrix: 1, full_range: false };
}

fn video_err(path: &Path, message: impl Into<String>) -> CiakError {
    CiakError::Video { path: path.to_path_buf(), message: message.into() }
}

/// A fresh hidden name next to `target` (`.name.<pid>.<n>.part`), created with `create` which must
/// fail with `AlreadyExists` when the name is taken. Removed on drop unless [`TempPath::keep`].
struct TempPath {
    path: PathBuf,
    is_dir: bool,
    armed: bool,
}

impl TempPath {
    fn create(target: &Path, is_dir: bool) -> Result<Self> {
        let name = target
            .file_name()
            .ok_or_else(|| video_err(target, "expected a path that ends in a file or folder name"))?;
        let parent = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !parent.is_dir() {
            return Err(video_err(target, format!("output folder {} does not exist", parent.display())));
        }
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        loop {
            let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let tmp = parent.join(format!(".{}.{}.{n}.part", name.to_string_lossy(), std::process::id()));
            let made = if is_dir {
                std::fs::create_dir(&tmp)
            } else {
                std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp).map(drop)
            };
            match made {
                Ok(()) => return Ok(Self { path: tmp, is_dir, armed: true }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(CiakError::io(&parent, e)),
            }
        }
    }

    /// Renames the temporary onto `target` (atomic on one file system) and disarms the cleanup.
    fn persist(mut self, target: &Path) -> Result<()> {
        std::fs::rename(&self.path, target).map_err(|e| CiakError::io(target, e))?;
        self.armed = false;
        Ok(())
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if self.armed {
            // Best effort: the error being returned matters more than a failed cleanup.
            let _ = if self.is_dir { std::fs::remove_dir_all(&self.path) } else { std::fs::remove_file(&self.path) };
        }
    }
}
