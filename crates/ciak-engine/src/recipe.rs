//! The recipe of a clip: everything needed to render it again, bit for bit on CPU. Written as a
//! JSON sidecar and inside the MP4; `ciak generate --recipe clip.json` reads it back.
use crate::error::{CiakError, Result};
use crate::loader::read_json;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recipe {
    /// What the user passed to --model (folder, Hugging Face id or built-in name).
    pub model: String,
    /// sha256 over the model's weight files (see [`weights_sha256`]).
    pub weights_sha256: String,
    pub scheduler: String,
    pub steps: usize,
    pub shift: f64,
    pub guidance: f64,
    /// Guidance only below this noise level; absent: at every step (and in older recipes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guidance_below: Option<f64>,
    /// The first latent frame drawn first (`GenerateRequest::image_first`); absent: one pass.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub image_first: bool,
    pub seed: u64,
    pub width: usize,
    pub height: usize,
    pub frames: usize,
    pub fps: f64,
    pub prompt: String,
    pub negative_prompt: String,
    pub dtype: String,
    pub ciak_version: String,
    /// Seconds per stage of the run that wrote this recipe; ignored when re-rendering.
    #[serde(default)]
    pub timings: Vec<StageTime>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageTime {
    pub stage: String,
    pub seconds: f64,
}

impl StageTime {
    pub fn new(stage: impl Into<String>, seconds: f64) -> Self {
        Self { stage: stage.into(), seconds }
    }
}

impl Recipe {
    pub fn read(path: &Path) -> Result<Self> {
        read_json(path, "recipe")
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a recipe always serializes")
    }
}

/// The weight files of a model folder (every `*.safetensors` below it), sorted by relative path.
pub fn weight_files(root: &Path) -> Result<Vec<PathBuf>> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        for entry in std::fs::read_dir(dir).map_err(|e| CiakError::io(dir, e))? {
            let path = entry.map_err(|e| CiakError::io(dir, e))?.path();
            if path.is_dir() {
                walk(&path, out)?;
            } else if path.extension().is_some_and(|e| e == "safetensors") {
                out.push(path);
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    walk(root, &mut files)?;
    files.sort();
    Ok(files)
}

/// [`weights_sha256`], remembered per (file, size, modification time) in the ciak cache folder,
/// so tens of gigabytes of real weights are hashed once, not on every run.
pub fn weights_sha256(root: &Path) -> Result<String> {
    let mut stamp = Sha256::new();
    for path in weight_files(root)? {
        let meta = std::fs::metadata(&path).map_err(|e| CiakError::io(&path, e))?;
        let mtime = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
        stamp.update(format!("{}\0{}\0{:?}\0", path.display(), meta.len(), mtime).as_bytes());
    }
    let key: String = stamp.finalize().iter().map(|b| format!("{b:02x}")).collect();
    let cache = crate::builtin::cache_root().join("weights-sha256").join(&key);
    if let Ok(hash) = std::fs::read_to_string(&cache) {
        if hash.len() == 64 {
            return Ok(hash);
        }
    }
    let hash = weights_sha256_uncached(root)?;
    // The cache is an optimisation: a read-only cache folder just means hashing again next time.
    if let Some(dir) = cache.parent() {
        let _ = std::fs::create_dir_all(dir).and_then(|_| std::fs::write(&cache, &hash));
    }
    Ok(hash)
}

/// sha256 over the model's weights: each file's relative path, a NUL, then its bytes, in path
/// order, so renaming or reordering shards changes the hash and nothing else does.
pub fn weights_sha256_uncached(root: &Path) -> Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    for path in weight_files(root)? {
        let rel = path.strip_prefix(root).unwrap_or(&path);
        hasher.update(rel.to_string_lossy().as_bytes());
        hasher.update([0u8]);
        let mut file = std::fs::File::open(&path).map_err(|e| CiakError::io(&path, e))?;
        loop {
            let n = file.read(&mut buf).map_err(|e| CiakError::io(&path, e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}
