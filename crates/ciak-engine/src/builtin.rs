//! The built-in model: a diffusers folder embedded in the binary at build time (models/builtin/),
//! written once to a cache folder and loaded from there by the same loader as any checkpoint.
use crate::error::{CiakError, Result};
use std::path::{Path, PathBuf};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/builtin_files.rs"));
}

/// Names `--model` accepts for the built-in model.
pub const NAMES: [&str; 2] = ["builtin", "ciak-toy"];

pub fn is_builtin_name(spec: &str) -> bool {
    NAMES.contains(&spec)
}

/// True when this binary carries the built-in model.
pub fn available() -> bool {
    embedded::FILES.iter().any(|(name, _)| *name == "model_index.json")
}

/// sha256 over the embedded files' names and bytes.
pub fn sha256() -> &'static str {
    embedded::SHA256
}

/// Where the built-in model is written: `$CIAK_CACHE`, else `$XDG_CACHE_HOME/ciak`, else
/// `~/.cache/ciak`, else the system temp folder.
pub fn cache_root() -> PathBuf {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    env("CIAK_CACHE")
        .or_else(|| env("XDG_CACHE_HOME").map(|p| p.join("ciak")))
        .or_else(|| env("HOME").map(|p| p.join(".cache").join("ciak")))
        .unwrap_or_else(|| std::env::temp_dir().join("ciak"))
}

/// The folder holding the built-in model, written on first use (to a temporary folder, then
/// renamed, so a crash never leaves half a model). Files found changed are written again.
pub fn materialize() -> Result<PathBuf> {
    if !available() {
        return Err(CiakError::MissingFile {
            what: "built-in model (this ciak was built without models/builtin)".into(),
            path: PathBuf::from("models/builtin/model_index.json"),
        });
    }
    let root = cache_root();
    let dir = root.join(format!("builtin-{}", &sha256()[..16]));
    if intact(&dir) {
        return Ok(dir);
    }
    std::fs::create_dir_all(&root).map_err(|e| CiakError::io(&root, e))?;
    let tmp = root.join(format!(".builtin-{}-{}", &sha256()[..16], std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    for (name, bytes) in embedded::FILES {
        let path = tmp.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| CiakError::io(parent, e))?;
        }
        std::fs::write(&path, bytes).map_err(|e| CiakError::io(&path, e))?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = std::fs::rename(&tmp, &dir) {
        // Another process may have finished the same extraction first.
        let _ = std::fs::remove_dir_all(&tmp);
        if !intact(&dir) {
            return Err(CiakError::io(&dir, e));
        }
    }
    Ok(dir)
}

/// Every embedded file is present with its embedded size (cheap; a corrupt file of the right
/// size is caught by the loader's checks).
fn intact(dir: &Path) -> bool {
    embedded::FILES
        .iter()
        .all(|(name, bytes)| std::fs::metadata(dir.join(name)).map(|m| m.len() == bytes.len() as u64).unwrap_or(false))
}
