//! PNG contact strips of sampled clips, for people to check what the model will learn from.
use crate::caption::canonical_caption;
use crate::dataset::{sample, Sample};
use crate::split::Split;
use crate::world::{render, Aspect, Clip, SamplerConfig};
use serde::Serialize;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

/// Grey gap between frames of a strip, in pixels.
const GAP: usize = 2;
const GAP_RGB: [u8; 3] = [64, 64, 64];

/// Frames 0, `every`, 2*`every`, ... (and the last frame) side by side, as RGB8 rows.
/// Returns (width, height, pixels).
pub fn strip(clip: &Clip, every: usize) -> (usize, usize, Vec<u8>) {
    let every = every.max(1);
    let mut picks: Vec<usize> = (0..clip.frames).step_by(every).collect();
    if picks.last() != Some(&(clip.frames - 1)) {
        picks.push(clip.frames - 1);
    }
    let width = picks.len() * clip.width + (picks.len() - 1) * GAP;
    let mut out = Vec::with_capacity(width * clip.height * 3);
    for y in 0..clip.height {
        for (k, &f) in picks.iter().enumerate() {
            if k > 0 {
                (0..GAP).for_each(|_| out.extend_from_slice(&GAP_RGB));
            }
            let row = (f * clip.height + y) * clip.width * 3;
            out.extend_from_slice(&clip.pixels[row..row + clip.width * 3]);
        }
    }
    (width, clip.height, out)
}

/// Writes an RGB8 image as PNG.
pub fn write_png(path: &Path, width: usize, height: usize, rgb: &[u8]) -> io::Result<()> {
    let file = BufWriter::new(File::create(path)?);
    let mut encoder = png::Encoder::new(file, width as u32, height as u32);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(io::Error::other)?;
    writer.write_image_data(rgb).map_err(io::Error::other)?;
    writer.finish().map_err(io::Error::other)
}

#[derive(Debug, Clone)]
pub struct PreviewOptions {
    pub count: usize,
    pub seed: u64,
    /// Only this aspect ratio; all three when `None`.
    pub aspect: Option<Aspect>,
    pub split: Split,
    /// Every how many frames the strip shows.
    pub every: usize,
    /// The scene distribution (`SamplerConfig::default()` is the training world); `aspect`, when
    /// set, replaces its aspect ratios.
    pub world: SamplerConfig,
}

/// One written clip, as listed in `scenes.json`.
#[derive(Debug, Clone, Serialize)]
pub struct PreviewEntry {
    pub file: String,
    pub seed: u64,
    pub split: Split,
    pub canonical_caption: String,
    #[serde(flatten)]
    pub sample: Sample,
}

/// Writes `clip_NNNN.png` strips, `captions.txt` (file, tab, caption per line) and `scenes.json`
/// into `dir` (created if missing). Returns what it wrote.
pub fn write_preview(dir: &Path, opts: &PreviewOptions) -> io::Result<Vec<PreviewEntry>> {
    std::fs::create_dir_all(dir)?;
    let mut cfg = opts.world.clone();
    if let Some(aspect) = opts.aspect {
        cfg.aspects = vec![aspect];
    }
    let mut entries = Vec::with_capacity(opts.count);
    for i in 0..opts.count {
        let s = sample(opts.seed, i as u64, &cfg, opts.split);
        let clip = render(&s.scene);
        let (w, h, rgb) = strip(&clip, opts.every);
        let file = format!("clip_{i:04}.png");
        write_png(&dir.join(&file), w, h, &rgb)?;
        entries.push(PreviewEntry {
            file,
            seed: opts.seed,
            split: opts.split,
            canonical_caption: canonical_caption(&s.scene),
            sample: s,
        });
    }
    let mut captions = BufWriter::new(File::create(dir.join("captions.txt"))?);
    for e in &entries {
        writeln!(captions, "{}\t{}", e.file, e.sample.caption)?;
    }
    captions.flush()?;
    let json = serde_json::to_string_pretty(&entries).map_err(io::Error::other)?;
    std::fs::write(dir.join("scenes.json"), json)?;
    Ok(entries)
}

/// The paths `write_preview` creates for `count` clips, for callers that report them.
pub fn preview_files(dir: &Path, count: usize) -> Vec<PathBuf> {
    (0..count).map(|i| dir.join(format!("clip_{i:04}.png"))).chain([dir.join("captions.txt"), dir.join("scenes.json")]).collect()
}
