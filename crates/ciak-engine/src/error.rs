//! Typed errors of the engine. The CLI prints them as one line; the server maps them to HTTP codes.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum CiakError {
    /// A model name or folder that resolves to nothing; `searched` lists every place looked at.
    #[error("model `{spec}` not found; looked for {} (built-in models: {})", list_paths(.searched), .builtin.join(", "))]
    ModelNotFound { spec: String, searched: Vec<PathBuf>, builtin: Vec<String> },

    /// A file the checkpoint needs is absent (config.json, a shard named by an index, ...).
    #[error("missing {what}: expected {}", .path.display())]
    MissingFile { what: String, path: PathBuf },

    /// A folder with no weights in any of the accepted layouts.
    #[error("no weights in {}: looked for {}", .dir.display(), .looked_for.join(", "))]
    MissingWeights { dir: PathBuf, looked_for: Vec<String> },

    /// A safetensors file that cannot be parsed (truncated, corrupt header, wrong offsets).
    #[error("corrupt weights file {}: {message}", .path.display())]
    CorruptWeights { path: PathBuf, message: String },

    /// A config.json (or model_index.json, index.json) that does not parse or lacks fields.
    #[error("bad config {}: {message}", .path.display())]
    Config { path: PathBuf, message: String },

    /// A tokenizer.json that cannot be loaded or used.
    #[error("tokenizer {}: {message}", .path.display())]
    Tokenizer { path: PathBuf, message: String },

    /// Building a model from its weights failed (wrong shape, missing tensor); names the component.
    #[error("loading {component} from {}: {message}", .dir.display())]
    Weights { component: String, dir: PathBuf, message: String },

    /// A request the pipeline cannot run (size, frames, steps, ...); says what was expected.
    #[error("{0}")]
    InvalidRequest(String),

    /// The caller asked to stop (cancellation flag set); no output was produced.
    #[error("cancelled at {stage}")]
    Cancelled { stage: String },

    /// Writing or reading a video (bad frames, encoder, muxer, demuxer, decoder); names the file.
    #[error("video {}: {message}", .path.display())]
    Video { path: PathBuf, message: String },

    #[error("{}: {source}", .path.display())]
    Io { path: PathBuf, source: std::io::Error },

    /// A tensor operation failed at run time.
    #[error("tensor error: {0}")]
    Tensor(#[from] candle_core::Error),
}

pub type Result<T, E = CiakError> = std::result::Result<T, E>;

fn list_paths(paths: &[PathBuf]) -> String {
    paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}

impl CiakError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CiakError::Io { path: path.into(), source }
    }
}
