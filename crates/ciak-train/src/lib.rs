//! ciak-train: the toy world ciak's built-in model is trained on. Seeded scenes of simple shapes
//! moving over simple backgrounds (`world`), rendered to RGB frames, captioned from a grammar with
//! synonyms and a held-out split (`caption`, `split`), plus the word-level `tokenizer.json` the
//! built-in text encoder reads and PNG previews for people to look at.
pub mod caption;
pub mod caption_words;
pub mod dataset;
pub mod eval;
pub mod preview;
pub mod rng;
pub mod split;
pub mod tokenizer;
pub mod train;
pub mod world;

pub use caption::{canonical_caption, caption, caption_for, vocabulary};
pub use dataset::{sample, Sample};
pub use rng::Rng;
pub use split::Split;
pub use world::{render, sample_scene, Clip, SamplerConfig, Scene};
