//! ciak's engine: loading checkpoints, schedulers, the text-to-video pipeline, typed errors.
pub mod bench;
pub mod builtin;
pub mod cuda_pool;
pub mod error;
pub mod loader;
pub mod model_dir;
pub mod scheduler;
pub mod text;
pub mod noise;
pub mod rename;
pub mod pipeline;
pub mod recipe;
pub mod video;
