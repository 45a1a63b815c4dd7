//! Finding and opening checkpoints: diffusers component folders, sharded safetensors with their
//! index, memory-mapped, converted to the requested dtype on load. Every failure names the file.
use crate::error::{CiakError, Result};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use memmap2::Mmap;
use safetensors::tensor::{SafeTensors, TensorInfo};
use serde::de::DeserializeOwned;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// Reads `config.json` from a component folder; a missing field or a bad value names the file.
pub fn read_config<T: DeserializeOwned>(component_dir: &Path) -> Result<T> {
    read_json(&component_dir.join("config.json"), "config.json")
}

/// Reads and parses any JSON file, reporting a missing file or a parse error with its path.
pub fn read_json<T: DeserializeOwned>(path: &Path, what: &str) -> Result<T> {
    if !path.is_file() {
        return Err(CiakError::MissingFile { what: what.to_string(), path: path.to_path_buf() });
    }
    let text = std::fs::read_to_string(path).map_err(|e| CiakError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| CiakError::Config { path: path.to_path_buf(), message: e.to_string() })
}

#[derive(serde::Deserialize)]
struct ShardIndex {
    weight_map: HashMap<String, String>,
}

/// The safetensors files of a component folder: the shards named by `*.safetensors.index.json`
/// when there is one, else every `*.safetensors` file in the folder.
pub fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Err(CiakError::MissingFile { what: "component folder".into(), path: dir.to_path_buf() });
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| CiakError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    let name_of = |p: &PathBuf| p.file_name().and_then(|n| n.to_str()).unwrap_or("").to_string();
    if let Some(index) = entries.iter().find(|p| name_of(p).ends_with(".safetensors.index.json")) {
        let parsed: ShardIndex = read_json(index, "shard index")?;
        let shards: BTreeSet<&String> = parsed.weight_map.values().collect();
        let mut files = Vec::with_capacity(shards.len());
        for shard in shards {
            let path = dir.join(shard);
            if !path.is_file() {
                return Err(CiakError::MissingFile {
                    what: format!("shard `{shard}` listed in {}", index.display()),
                    path,
                });
            }
            files.push(path);
        }
        return Ok(files);
    }
    let files: Vec<PathBuf> = entries.into_iter().filter(|p| name_of(p).ends_with(".safetensors")).collect();
    if files.is_empty() {
        return Err(CiakError::MissingWeights {
            dir: dir.to_path_buf(),
            looked_for: vec!["*.safetensors.index.json".into(), "*.safetensors".into()],
        });
    }
    Ok(files)
}

struct Entry {
    shard: usize,
    info: TensorInfo,
    data_start: usize,
}

/// Memory-mapped safetensors shards with a name index, serving tensors to a `VarBuilder`.
/// `alias` maps the names a model asks for to the names stored (for original-format checkpoints).
pub struct Checkpoint {
    dir: PathBuf,
    shards: Vec<(PathBuf, Mmap)>,
    entries: HashMap<String, Entry>,
    alias: HashMap<String, String>,
}

impl Checkpoint {
    /// Opens and validates every shard (header, offsets, dtypes) before any tensor is read.
    pub fn open(dir: &Path) -> Result<Self> {
        let files = safetensors_files(dir)?;
        let mut shards = Vec::with_capacity(files.len());
        let mut entries = HashMap::new();
        for (i, path) in files.into_iter().enumerate() {
            let file = std::fs::File::open(&path).map_err(|e| CiakError::io(&path, e))?;
            // SAFETY: the file is opened read-only; ciak never writes checkpoints while reading them.
            let mmap = unsafe { Mmap::map(&file) }.map_err(|e| CiakError::io(&path, e))?;
            let corrupt = |message: String| CiakError::CorruptWeights { path: path.clone(), message };
            SafeTensors::deserialize(&mmap).map_err(|e| corrupt(e.to_string()))?;
            let (header_len, metadata) = SafeTensors::read_metadata(&mmap).map_err(|e| corrupt(e.to_string()))?;
            for (name, info) in metadata.tensors() {
                DType::try_from(info.dtype).map_err(|e| corrupt(format!("tensor `{name}`: {e}")))?;
                let entry = Entry { shard: i, info: info.clone(), data_start: 8 + header_len };
                if entries.insert(name.clone(), entry).is_some() {
                    return Err(corrupt(format!("tensor `{name}` is stored in more than one shard")));
                }
            }
            shards.push((path, mmap));
        }
        Ok(Self { dir: dir.to_path_buf(), shards, entries, alias: HashMap::new() })
    }

    /// Lets models ask for `rename(stored)` instead of each stored name (one table per format).
    pub fn with_renames(mut self, rename: impl Fn(&str) -> String) -> Self {
        self.alias = self.entries.keys().map(|k| (rename(k), k.clone())).filter(|(a, k)| a != k).collect();
        self
    }

    /// Stored tensor names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.entries.keys().cloned().collect();
        names.sort();
        names
    }

    pub fn files(&self) -> Vec<&Path> {
        self.shards.iter().map(|(p, _)| p.as_path()).collect()
    }

    fn entry<'a>(&'a self, name: &'a str) -> Option<(&'a str, &'a Entry)> {
        let stored = self.alias.get(name).map(String::as_str).unwrap_or(name);
        self.entries.get_key_value(stored).map(|(k, e)| (k.as_str(), e))
    }

    fn read(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let Some((stored, e)) = self.entry(name) else {
            candle_core::bail!("tensor `{name}` not found in {} ({} tensors)", self.dir.display(), self.entries.len())
        };
        let (path, mmap) = &self.shards[e.shard];
        let (a, b) = e.info.data_offsets;
        let bytes = &mmap[e.data_start + a..e.data_start + b];
        let stored_dtype = DType::try_from(e.info.dtype)?;
        Tensor::from_raw_buffer(bytes, stored_dtype, &e.info.shape, &Device::Cpu)
            .map_err(|err| candle_core::Error::Msg(format!("tensor `{stored}` in {}: {err}", path.display())))?
            .to_dtype(dtype)?
            .to_device(dev)
    }
}

impl SimpleBackend for Checkpoint {
    fn get(&self, s: Shape, name: &str, _: candle_nn::Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        if let Some((_, e)) = self.entry(name) {
            if e.info.shape.as_slice() != s.dims() {
                candle_core::bail!(
                    "tensor `{name}` has shape {:?} in {}, expected {:?}",
                    e.info.shape,
                    self.shards[e.shard].0.display(),
                    s.dims()
                )
            }
        }
        self.read(name, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.read(name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.entry(name).is_some()
    }
}

/// A `VarBuilder` over a component folder's weights, converted to `dtype` on `device` as read.
pub fn load_varbuilder(component_dir: &Path, dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
    Ok(varbuilder(Checkpoint::open(component_dir)?, dtype, device))
}

pub fn varbuilder(checkpoint: Checkpoint, dtype: DType, device: &Device) -> VarBuilder<'static> {
    VarBuilder::from_backend(Box::new(checkpoint), dtype, device.clone())
}

/// Maps a model-construction error to one that names the component and its folder.
pub fn weights_error(component: &str, dir: &Path) -> impl FnOnce(candle_core::Error) -> CiakError {
    let (component, dir) = (component.to_string(), dir.to_path_buf());
    move |e| CiakError::Weights { component, dir, message: e.to_string() }
}

/// True when stored keys use the original Wan (non-diffusers) names, e.g. `blocks.0.self_attn.q`.
pub fn is_original_wan_transformer(names: &[String]) -> bool {
    names.iter().any(|n| {
        let n = n.strip_prefix("model.diffusion_model.").unwrap_or(n);
        n.contains(".self_attn.") || n.starts_with("head.") || n.starts_with("time_embedding.")
    })
}

/// The transformer's weights: diffusers names as stored, or original Wan names renamed through
/// the one table in `rename` so models only ever see diffusers names.
pub fn load_transformer_varbuilder(dir: &Path, dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
    let checkpoint = Checkpoint::open(dir)?;
    let checkpoint = if is_original_wan_transformer(&checkpoint.names()) {
        checkpoint.with_renames(crate::rename::original_to_diffusers_transformer)
    } else {
        checkpoint
    };
    Ok(varbuilder(checkpoint, dtype, device))
}
