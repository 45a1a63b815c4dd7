//! Where a model lives: a diffusers folder given by path, or a Hugging Face id resolved offline in
//! the local Hugging Face cache (`models--org--name/snapshots/<rev>/`).
use crate::error::{CiakError, Result};
use crate::loader::read_json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The folders of a diffusers Wan pipeline, as named by its `model_index.json`.
#[derive(Debug, Clone)]
pub struct WanModelDir {
    pub root: PathBuf,
    pub transformer: PathBuf,
    pub vae: PathBuf,
    pub text_encoder: PathBuf,
    pub tokenizer: PathBuf,
    pub scheduler: PathBuf,
}

/// (library, class) per component, e.g. `"vae": ["diffusers", "AutoencoderKLWan"]`.
#[derive(Debug, serde::Deserialize)]
pub struct ModelIndex {
    #[serde(rename = "_class_name")]
    pub class_name: String,
    #[serde(flatten)]
    pub components: BTreeMap<String, serde_json::Value>,
}

impl ModelIndex {
    fn class_of(&self, component: &str) -> Option<&str> {
        self.components.get(component)?.as_array()?.get(1)?.as_str()
    }
}

const COMPONENTS: [(&str, &[&str]); 5] = [
    ("transformer", &["WanTransformer3DModel"]),
    ("vae", &["AutoencoderKLWan"]),
    ("text_encoder", &["UMT5EncoderModel", "T5EncoderModel"]),
    ("tokenizer", &["T5TokenizerFast", "T5Tokenizer", "AutoTokenizer"]),
    ("scheduler", &["UniPCMultistepScheduler", "FlowMatchEulerDiscreteScheduler"]),
];

impl WanModelDir {
    /// Opens a diffusers pipeline folder: checks `model_index.json` names a Wan pipeline with
    /// supported component classes, and that each component folder holds what it needs.
    pub fn open(root: &Path) -> Result<Self> {
        let index_path = root.join("model_index.json");
        let index: ModelIndex = read_json(&index_path, "model_index.json of a diffusers pipeline")?;
        if !index.class_name.starts_with("Wan") {
            return Err(CiakError::Config {
                path: index_path,
                message: format!("expected a Wan pipeline (WanPipeline), found `{}`", index.class_name),
            });
        }
        for (component, accepted) in COMPONENTS {
            match index.class_of(component) {
                Some(class) if accepted.contains(&class) => {}
                found => {
                    return Err(CiakError::Config {
                        path: index_path.clone(),
                        message: format!(
                            "component `{component}`: expected one of {accepted:?}, found {}",
                            found.map(|c| format!("`{c}`")).unwrap_or_else(|| "nothing".into())
                        ),
                    })
                }
            }
        }
        let dir = Self {
            root: root.to_path_buf(),
            transformer: root.join("transformer"),
            vae: root.join("vae"),
            text_encoder: root.join("text_encoder"),
            tokenizer: root.join("tokenizer"),
            scheduler: root.join("scheduler"),
        };
        let needed = [
            ("transformer config", dir.transformer.join("config.json")),
            ("vae config", dir.vae.join("config.json")),
            ("text encoder config", dir.text_encoder.join("config.json")),
            ("tokenizer", dir.tokenizer.join("tokenizer.json")),
            ("scheduler config", dir.scheduler.join("scheduler_config.json")),
        ];
        if let Some((what, path)) = needed.into_iter().find(|(_, p)| !p.is_file()) {
            return Err(CiakError::MissingFile { what: what.into(), path });
        }
        Ok(dir)
    }

    pub fn tokenizer_json(&self) -> PathBuf {
        self.tokenizer.join("tokenizer.json")
    }

    /// The model's own generation defaults (`ciak.json` beside `model_index.json`), else Wan2.1's.
    pub fn defaults(&self) -> Result<GenerationDefaults> {
        let path = self.root.join("ciak.json");
        if path.is_file() {
            read_json(&path, "ciak.json")
        } else {
            Ok(GenerationDefaults::default())
        }
    }
}

/// What a clip looks like when the user gives no flags. Wan2.1's published settings unless the
/// model folder says otherwise in `ciak.json` (the built-in model does: it is trained at 224x128).
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default)]
pub struct GenerationDefaults {
    pub width: usize,
    pub height: usize,
    pub frames: usize,
    pub fps: f64,
    pub steps: usize,
    pub guidance: f64,
    /// Guidance only below this noise level (sigma); see `GenerateRequest::guidance_below`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guidance_below: Option<f64>,
    /// Draw the first latent frame first, then the clip from it; see
    /// `GenerateRequest::image_first`. Only for models trained for it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub image_first: bool,
    pub negative_prompt: String,
    /// Sizes (width, height) the model was trained at, one per aspect ratio; `--aspect` picks the
    /// one whose ratio matches. Empty: sizes of the default's area are derived.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sizes: Vec<(usize, usize)>,
}

impl Default for GenerationDefaults {
    /// diffusers' WanPipeline defaults; 16 fps is Wan2.1's `sample_fps`.
    fn default() -> Self {
        Self {
            width: 832,
            height: 480,
            frames: 81,
            fps: 16.0,
            steps: 50,
            guidance: 5.0,
            guidance_below: None,
            image_first: false,
            negative_prompt: String::new(),
            sizes: Vec::new(),
        }
    }
}

/// The Hugging Face hub cache folders, in the order huggingface_hub itself consults them.
pub fn hf_cache_dirs() -> Vec<PathBuf> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = env("HF_HUB_CACHE").or_else(|| env("HUGGINGFACE_HUB_CACHE")) {
        return vec![dir];
    }
    if let Some(home) = env("HF_HOME") {
        return vec![home.join("hub")];
    }
    let cache = env("XDG_CACHE_HOME").or_else(|| env("HOME").map(|h| h.join(".cache")));
    cache.map(|c| vec![c.join("huggingface").join("hub")]).unwrap_or_default()
}

/// The snapshot folder of `org/name` in a hub cache: the revision `refs/main` points at, else
/// the most recently modified snapshot.
pub fn hf_snapshot(cache: &Path, repo_id: &str) -> Option<PathBuf> {
    let repo = cache.join(format!("models--{}", repo_id.replace('/', "--")));
    let snapshots = repo.join("snapshots");
    if let Ok(rev) = std::fs::read_to_string(repo.join("refs").join("main")) {
        let dir = snapshots.join(rev.trim());
        if dir.is_dir() {
            return Some(dir);
        }
    }
    std::fs::read_dir(&snapshots)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .map(|e| e.path())
}

/// A built-in model name, a folder path as given, or a Hugging Face id (`org/name`) found in the
/// local cache. Nothing is downloaded; the error lists every name and place that was tried.
pub fn resolve_model_path(spec: &str) -> Result<PathBuf> {
    if crate::builtin::is_builtin_name(spec) {
        return crate::builtin::materialize();
    }
    let as_path = PathBuf::from(spec);
    if as_path.is_dir() {
        return Ok(as_path);
    }
    let mut searched = vec![as_path];
    let is_repo_id = spec.split('/').count() == 2 && !spec.starts_with('.') && !spec.starts_with('/');
    if is_repo_id {
        for cache in hf_cache_dirs() {
            if let Some(dir) = hf_snapshot(&cache, spec) {
                return Ok(dir);
            }
            searched.push(cache.join(format!("models--{}", spec.replace('/', "--"))));
        }
    }
    Err(CiakError::ModelNotFound {
        spec: spec.to_string(),
        searched,
        builtin: crate::builtin::NAMES.iter().map(|n| n.to_string()).collect(),
    })
}
