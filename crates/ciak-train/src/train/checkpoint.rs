//! Training checkpoints: named groups of tensors as safetensors files plus a JSON state, in one
//! folder that is replaced atomically (written beside it, then renamed), so a run killed at any
//! moment leaves either the previous checkpoint or the new one.
//!
//! Layout: `<dir>/<part>.safetensors` for each part (model, ema, optim, ...) and `<dir>/state.json`.

use super::{Result, TrainError};
use candle_core::{Device, Tensor};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const STATE_FILE: &str = "state.json";

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(suffix);
    dir.with_file_name(name)
}

/// Writes the parts and the state into `dir`, replacing what was there.
pub fn save_checkpoint<S: Serialize>(dir: &Path, parts: &[(&str, &HashMap<String, Tensor>)], state: &S) -> Result<()> {
    let tmp = sibling(dir, ".tmp");
    let old = sibling(dir, ".old");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    for (name, tensors) in parts {
        let path = tmp.join(format!("{name}.safetensors"));
        candle_core::safetensors::save(tensors, &path)?;
    }
    let json = serde_json::to_string_pretty(state)
        .map_err(|e| TrainError::Config { path: tmp.join(STATE_FILE), message: e.to_string() })?;
    let state_path = tmp.join(STATE_FILE);
    std::fs::write(&state_path, json).map_err(|e| TrainError::io(&state_path, e))?;
    // dir -> dir.old, tmp -> dir, drop dir.old: a crash in between leaves dir.old to resume from
    if dir.exists() {
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(|e| TrainError::io(&old, e))?;
        }
        std::fs::rename(dir, &old).map_err(|e| TrainError::io(dir, e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| TrainError::io(&tmp, e))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| TrainError::io(&old, e))?;
    }
    Ok(())
}

/// The folder a resume reads: `dir`, or `dir.old` when a save was interrupted mid-swap.
pub fn find_checkpoint(dir: &Path) -> Option<PathBuf> {
    let old = sibling(dir, ".old");
    [dir.to_path_buf(), old].into_iter().find(|d| d.join(STATE_FILE).is_file())
}

/// A checkpoint read back: its tensor parts by name and its state.
#[derive(Debug)]
pub struct LoadedCheckpoint<S> {
    pub path: PathBuf,
    pub parts: HashMap<String, HashMap<String, Tensor>>,
    pub state: S,
}

impl<S> LoadedCheckpoint<S> {
    /// A part by name, or an error naming the file that should hold it.
    pub fn part(&self, name: &str) -> Result<&HashMap<String, Tensor>> {
        self.parts.get(name).ok_or_else(|| TrainError::Resume {
            path: self.path.join(format!("{name}.safetensors")),
            message: format!("the checkpoint has no `{name}` part"),
        })
    }
}

/// Reads the named parts and the state of the checkpoint at `dir` (see [`find_checkpoint`]).
pub fn load_checkpoint<S: DeserializeOwned>(dir: &Path, part_names: &[&str], device: &Device) -> Result<LoadedCheckpoint<S>> {
    let path = find_checkpoint(dir).ok_or_else(|| TrainError::Resume {
        path: dir.to_path_buf(),
        message: format!("no {STATE_FILE} found (looked in {} and its .old sibling)", dir.display()),
    })?;
    let state_path = path.join(STATE_FILE);
    let text = std::fs::read_to_string(&state_path).map_err(|e| TrainError::io(&state_path, e))?;
    let state: S = serde_json::from_str(&text)
        .map_err(|e| TrainError::Resume { path: state_path.clone(), message: e.to_string() })?;
    let mut parts = HashMap::new();
    for name in part_names {
        let file = path.join(format!("{name}.safetensors"));
        if !file.is_file() {
            return Err(TrainError::Resume { path: file, message: format!("missing part `{name}`") });
        }
        let tensors = candle_core::safetensors::load(&file, device)
            .map_err(|e| TrainError::Resume { path: file.clone(), message: e.to_string() })?;
        parts.insert(name.to_string(), tensors);
    }
    Ok(LoadedCheckpoint { path, parts, state })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, serde::Deserialize)]
    struct St {
        step: u64,
        rng: u64,
    }

    #[test]
    fn round_trip_keeps_bits_and_replaces_atomically() -> Result<()> {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("checkpoint");
        let dev = Device::Cpu;
        let t = Tensor::new(&[1.0f32, f32::MIN_POSITIVE, -0.0, 1.0e-40], &dev)?;
        let mut a = HashMap::new();
        a.insert("w".to_string(), t.clone());
        save_checkpoint(&dir, &[("model", &a)], &St { step: 3, rng: u64::MAX })?;
        let back: LoadedCheckpoint<St> = load_checkpoint(&dir, &["model"], &dev)?;
        assert_eq!(back.state, St { step: 3, rng: u64::MAX });
        let bits = |t: &Tensor| t.to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&back.part("model")?["w"]), bits(&t));
        assert!(back.part("ema").is_err());

        // a second save replaces the first and leaves no temporary folders behind
        save_checkpoint(&dir, &[("model", &a)], &St { step: 4, rng: 1 })?;
        let back: LoadedCheckpoint<St> = load_checkpoint(&dir, &["model"], &dev)?;
        assert_eq!(back.state.step, 4);
        let names: Vec<_> = std::fs::read_dir(root.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("checkpoint")]);

        // interrupted between the renames: the .old folder is still found
        std::fs::rename(&dir, sibling(&dir, ".old")).unwrap();
        let back: LoadedCheckpoint<St> = load_checkpoint(&dir, &["model"], &dev)?;
        assert_eq!(back.state.step, 4);
        let err = load_checkpoint::<St>(&root.path().join("nothing"), &["model"], &dev).unwrap_err();
        assert!(err.to_string().contains("no state.json"), "{err}");
        Ok(())
    }
}
