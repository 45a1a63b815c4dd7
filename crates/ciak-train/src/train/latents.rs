//! The latent cache the DiT trains on: training scenes encoded once by the trained VAE, stored as
//! safetensors shards beside the scenes that made them, and read back as a [`LatentSource`].
//!
//! Latents are the VAE's posterior means normalised with its `latents_mean`/`latents_std`
//! (`(mu - mean) / std`), the exact inverse of what the pipeline does before decoding, so the DiT
//! learns the distribution it samples. Scenes are kept rather than captions: every epoch draws a
//! fresh caption of each scene from the training templates (wording augmentation).
//!
//! Layout of a cache folder:
//!
//! ```text
//! cache.json                          manifest: config, VAE statistics and hash, shard list
//! latents-<W>x<H>-<k>.safetensors     `latents` [n, C, F', H/8, W/8] (f16 or f32), one aspect
//! latents-<W>x<H>-<k>.json            the n scenes in row order, with their item numbers
//! ```
//!
//! Shards are written atomically and hold a fixed set of items, so an interrupted build resumes
//! by skipping the shards already written with the same VAE.

use super::flow::TrainRng;
use super::vae::clip_tensor;
use super::foreground::foreground_mask;
use super::{LatentBatch, LatentSource, Result, TrainError};
use crate::caption::caption_for;
use crate::dataset::sample;
use crate::rng::Rng;
use crate::split::Split;
use crate::world::{render, Aspect, SamplerConfig, Scene};
use candle_core::{DType, Device, IndexOp, Tensor};
use ciak_engine::loader::{load_varbuilder, read_config, safetensors_files};
use ciak_models::wan::vae::{AutoencoderKLWan, AutoencoderKLWanConfig};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

const MANIFEST: &str = "cache.json";
const FORMAT: u32 = 1;
/// Gives the per-epoch captions a stream apart from the scenes' own.
const CAPTION_SALT: u64 = 0xCA97_1011_0000_0005;

/// How latents are stored on disk and in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheDType {
    /// Half the size; normalised latents are O(1), so f16's 3 significant digits are plenty.
    F16,
    F32,
}

impl CacheDType {
    fn dtype(self) -> DType {
        match self {
            CacheDType::F16 => DType::F16,
            CacheDType::F32 => DType::F32,
        }
    }
}

fn default_shard_clips() -> usize {
    64
}

fn default_dtype() -> CacheDType {
    CacheDType::F16
}

/// Which clips a cache holds: training items `0..clips` of `seed` (`dataset::sample`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatentCacheConfig {
    pub seed: u64,
    pub clips: usize,
    /// The scene distribution (aspect ratios, frames, ...); the default draws all three aspects.
    #[serde(default)]
    pub sampler: SamplerConfig,
    /// Clips per shard file.
    #[serde(default = "default_shard_clips")]
    pub shard_clips: usize,
    #[serde(default = "default_dtype")]
    pub dtype: CacheDType,
}

/// The VAE a cache was made with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheVae {
    /// FNV-1a 64 of the VAE's `config.json` and weight files, hex.
    pub hash: String,
    pub latents_mean: Vec<f64>,
    pub latents_std: Vec<f64>,
}

/// One shard: clips of one aspect ratio.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardInfo {
    pub aspect: Aspect,
    /// File names inside the cache folder.
    pub latents: String,
    pub scenes: String,
    pub clips: usize,
    /// `[C, F', H', W']` of each clip.
    pub latent_shape: [usize; 4],
}

/// `cache.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheManifest {
    pub format: u32,
    pub config: LatentCacheConfig,
    pub vae: CacheVae,
    pub shards: Vec<ShardInfo>,
}

/// A shard's scenes file.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ShardScenes {
    vae_hash: String,
    items: Vec<ShardItem>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ShardItem {
    index: u64,
    scene: Scene,
}

/// What [`build_latent_cache`] did.
#[derive(Debug, Clone)]
pub struct LatentCacheSummary {
    pub clips: usize,
    /// Clips encoded by this call (the rest were in shards already written).
    pub encoded: usize,
    pub shards: usize,
    /// Encoding time of this call (render + encode + write).
    pub seconds: f64,
}

impl LatentCacheSummary {
    pub fn clips_per_sec(&self) -> f64 {
        self.encoded as f64 / self.seconds.max(1e-9)
    }
}

fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Identifies a VAE folder by the bytes of its config and weights.
pub fn vae_hash(vae_dir: &Path) -> Result<String> {
    let mut files = vec![vae_dir.join("config.json")];
    files.extend(safetensors_files(vae_dir)?);
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for f in files {
        let bytes = std::fs::read(&f).map_err(|e| TrainError::io(&f, e))?;
        h = fnv1a(h, &bytes);
    }
    Ok(format!("{h:016x}"))
}

/// Loads a diffusers `vae/` folder through the engine's loader, f32.
pub fn load_vae(vae_dir: &Path, device: &Device) -> Result<AutoencoderKLWan> {
    let cfg: AutoencoderKLWanConfig = read_config(vae_dir)?;
    let vb = load_varbuilder(vae_dir, DType::F32, device)?;
    AutoencoderKLWan::new(&cfg, vb)
        .map_err(|e| TrainError::Engine(ciak_engine::loader::weights_error("vae", vae_dir)(e)))
}

/// Normalised posterior mean of one scene's clip.
///
/// Shapes: -> [C, F', H/8, W/8] f32.
pub fn encode_scene(vae: &AutoencoderKLWan, scene: &Scene) -> Result<Tensor> {
    let x = clip_tensor(&render(scene), vae.device())?;
    let (mean, _) = vae.encode(&x)?;
    Ok(vae.normalize_latents(&mean.to_dtype(DType::F32)?)?.squeeze(0)?)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| TrainError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| TrainError::io(path, e))
}

fn json_bytes<T: Serialize>(value: &T, path: &Path) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(value)
        .map_err(|e| TrainError::Config { path: path.to_path_buf(), message: e.to_string() })
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| TrainError::Config { path: path.to_path_buf(), message: e.to_string() })
}

/// Whether a shard is on disk complete and made by the VAE `hash`.
fn shard_done(dir: &Path, info: &ShardInfo, hash: &str, items: &[ShardItem]) -> bool {
    let (lat, sc) = (dir.join(&info.latents), dir.join(&info.scenes));
    if !lat.is_file() {
        return false;
    }
    match read_json::<ShardScenes>(&sc) {
        Ok(s) => s.vae_hash == hash && s.items.iter().map(|i| i.index).eq(items.iter().map(|i| i.index)),
        Err(_) => false,
    }
}

/// Encodes training items `0..cfg.clips` with the VAE in `vae_dir` into the cache folder `out`
/// (created if missing), skipping shards already written by the same VAE. `progress` gets
/// (clips done, clips in total) after every clip.
pub fn build_latent_cache(
    vae_dir: &Path,
    out: &Path,
    cfg: &LatentCacheConfig,
    device: &Device,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<LatentCacheSummary> {
    if cfg.clips == 0 || cfg.shard_clips == 0 || cfg.sampler.aspects.is_empty() {
        return Err(TrainError::Config {
            path: out.join(MANIFEST),
            message: format!(
                "expected clips, shard_clips and sampler.aspects to be non-empty, got {}, {}, {:?}",
                cfg.clips, cfg.shard_clips, cfg.sampler.aspects
            ),
        });
    }
    std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
    let vae = load_vae(vae_dir, device)?;
    let vcfg = vae.config().clone();
    let hash = vae_hash(vae_dir)?;
    let (sr, tr) = (vcfg.spatial_ratio(), vcfg.temporal_ratio());
    let frames = cfg.sampler.frames;
    if frames == 0 || (frames - 1) % tr != 0 {
        return Err(TrainError::Config {
            path: out.join(MANIFEST),
            message: format!("expected sampler.frames = 1+{tr}k, got {frames}"),
        });
    }

    // Shards are fixed by the scenes alone: group items by aspect, in item order.
    let mut by_aspect: Vec<(Aspect, Vec<ShardItem>)> = Aspect::ALL.iter().map(|&a| (a, Vec::new())).collect();
    for index in 0..cfg.clips as u64 {
        let scene = sample(cfg.seed, index, &cfg.sampler, Split::Train).scene;
        let slot = by_aspect.iter_mut().find(|(a, _)| *a == scene.aspect).expect("every aspect has a slot");
        slot.1.push(ShardItem { index, scene });
    }
    let mut plan: Vec<(ShardInfo, Vec<ShardItem>)> = Vec::new();
    for (aspect, items) in by_aspect {
        let (w, h) = aspect.size();
        let shape = [vcfg.z_dim, 1 + (frames - 1) / tr, h / sr, w / sr];
        for (k, chunk) in items.chunks(cfg.shard_clips).enumerate() {
            let stem = format!("latents-{w}x{h}-{k:04}");
            let info = ShardInfo {
                aspect,
                latents: format!("{stem}.safetensors"),
                scenes: format!("{stem}.json"),
                clips: chunk.len(),
                latent_shape: shape,
            };
            plan.push((info, chunk.to_vec()));
        }
    }

    let started = Instant::now();
    let (mut done, mut encoded) = (0usize, 0usize);
    for (info, items) in &plan {
        if shard_done(out, info, &hash, items) {
            done += items.len();
            progress(done, cfg.clips);
            continue;
        }
        let mut rows = Vec::with_capacity(items.len());
        for item in items {
            let z = encode_scene(&vae, &item.scene)?;
            if z.dims() != info.latent_shape {
                return Err(TrainError::Data(format!(
                    "item {}: expected latents {:?}, got {:?}",
                    item.index,
                    info.latent_shape,
                    z.dims()
                )));
            }
            rows.push(z.to_dtype(cfg.dtype.dtype())?);
            done += 1;
            encoded += 1;
            progress(done, cfg.clips);
        }
        let mut tensors = HashMap::new();
        tensors.insert("latents".to_string(), Tensor::stack(&rows, 0)?);
        let lat = out.join(&info.latents);
        let tmp = lat.with_extension("tmp");
        candle_core::safetensors::save(&tensors, &tmp)?;
        std::fs::rename(&tmp, &lat).map_err(|e| TrainError::io(&lat, e))?;
        let sc = out.join(&info.scenes);
        let scenes = ShardScenes { vae_hash: hash.clone(), items: items.clone() };
        write_atomic(&sc, &json_bytes(&scenes, &sc)?)?;
    }
    let manifest = CacheManifest {
        format: FORMAT,
        config: cfg.clone(),
        vae: CacheVae { hash, latents_mean: vcfg.latents_mean.clone(), latents_std: vcfg.latents_std.clone() },
        shards: plan.iter().map(|(info, _)| info.clone()).collect(),
    };
    let path = out.join(MANIFEST);
    write_atomic(&path, &json_bytes(&manifest, &path)?)?;
    Ok(LatentCacheSummary { clips: cfg.clips, encoded, shards: plan.len(), seconds: started.elapsed().as_secs_f64() })
}

/// Clips of one aspect ratio, across shards.
struct AspectGroup {
    aspect: Aspect,
    /// Per shard, [n, C, F', H', W'] in the cache dtype.
    shards: Vec<Tensor>,
    /// (shard, row, item number, scene) per clip.
    clips: Vec<(usize, usize, u64, Scene)>,
}

/// A [`LatentSource`] over a latent cache: epochs of shuffled single-aspect batches, every clip
/// once per epoch (clips left over after cutting an aspect into full batches wait for a later
/// epoch's shuffle), each with a caption drawn afresh for that epoch.
pub struct CachedLatents {
    manifest: CacheManifest,
    groups: Vec<AspectGroup>,
    seed: u64,
    device: Device,
    epoch: u64,
    pos: usize,
    /// Batches of the current epoch: (group, clip indices), for batch size `plan_n`.
    plan: Vec<(usize, Vec<usize>)>,
    plan_n: usize,
}

impl CachedLatents {
    /// Opens the cache in `dir`; `seed` drives the shuffles and the captions. Latents come out
    /// as f32 on `device`.
    pub fn open(dir: &Path, seed: u64, device: &Device) -> Result<Self> {
        let path = dir.join(MANIFEST);
        let manifest: CacheManifest = read_json(&path)?;
        if manifest.format != FORMAT {
            return Err(TrainError::Config {
                path,
                message: format!("expected cache format {FORMAT}, got {}", manifest.format),
            });
        }
        let mut groups: Vec<AspectGroup> = Vec::new();
        for info in &manifest.shards {
            let file = dir.join(&info.latents);
            let tensors = candle_core::safetensors::load(&file, &Device::Cpu)?;
            let latents = tensors
                .get("latents")
                .ok_or_else(|| TrainError::Data(format!("{}: expected a `latents` tensor", file.display())))?
                .clone();
            let mut want = vec![info.clips];
            want.extend(info.latent_shape);
            if latents.dims() != want.as_slice() {
                return Err(TrainError::Data(format!(
                    "{}: expected latents {want:?}, got {:?}",
                    file.display(),
                    latents.dims()
                )));
            }
            let scenes: ShardScenes = read_json(&dir.join(&info.scenes))?;
            if scenes.vae_hash != manifest.vae.hash || scenes.items.len() != info.clips {
                return Err(TrainError::Data(format!(
                    "{}: expected {} scenes made by VAE {}, got {} made by {}",
                    info.scenes,
                    info.clips,
                    manifest.vae.hash,
                    scenes.items.len(),
                    scenes.vae_hash
                )));
            }
            let gi = match groups.iter().position(|g| g.aspect == info.aspect) {
                Some(i) => i,
                None => {
                    groups.push(AspectGroup { aspect: info.aspect, shards: Vec::new(), clips: Vec::new() });
                    groups.len() - 1
                }
            };
            let g = &mut groups[gi];
            let shard = g.shards.len();
            g.shards.push(latents);
            g.clips.extend(scenes.items.into_iter().enumerate().map(|(row, it)| (shard, row, it.index, it.scene)));
        }
        if groups.is_empty() {
            return Err(TrainError::Data(format!("{}: the cache holds no clips", path.display())));
        }
        Ok(Self { manifest, groups, seed, device: device.clone(), epoch: 0, pos: 0, plan: Vec::new(), plan_n: 0 })
    }

    pub fn manifest(&self) -> &CacheManifest {
        &self.manifest
    }

    /// Clips in the cache.
    pub fn len(&self) -> usize {
        self.groups.iter().map(|g| g.clips.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Clips per aspect ratio.
    pub fn counts(&self) -> Vec<(Aspect, usize)> {
        self.groups.iter().map(|g| (g.aspect, g.clips.len())).collect()
    }

    /// Epochs started so far (0-based index of the current one).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    fn shuffle<T>(items: &mut [T], rng: &mut TrainRng) {
        for i in (1..items.len()).rev() {
            let j = (rng.next_u64() % (i as u64 + 1)) as usize;
            items.swap(i, j);
        }
    }

    fn make_plan(&mut self, n: usize) -> Result<()> {
        let mut rng = TrainRng::new(self.seed ^ self.epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x51AF);
        let mut plan = Vec::new();
        for (gi, g) in self.groups.iter().enumerate() {
            let mut order: Vec<usize> = (0..g.clips.len()).collect();
            Self::shuffle(&mut order, &mut rng);
            plan.extend(order.chunks_exact(n).map(|c| (gi, c.to_vec())));
        }
        if plan.is_empty() {
            let counts: Vec<String> = self.counts().iter().map(|(a, c)| format!("{a}: {c}")).collect();
            return Err(TrainError::Data(format!(
                "expected at least {n} clips of one aspect ratio for a batch of {n}, the cache has {}",
                counts.join(", ")
            )));
        }
        Self::shuffle(&mut plan, &mut rng);
        self.plan = plan;
        self.plan_n = n;
        Ok(())
    }

    /// The caption of clip `item` (a training item number) in `epoch`.
    pub fn caption(&self, scene: &Scene, item: u64, epoch: u64) -> String {
        let mut rng = Rng::for_item(self.seed ^ CAPTION_SALT ^ epoch.wrapping_mul(0xD1B5_4A32_D192_ED03), item);
        caption_for(scene, &mut rng, Split::Train)
    }
}

impl LatentSource for CachedLatents {
    fn batch(&mut self, n: usize) -> Result<LatentBatch> {
        if n == 0 {
            return Err(TrainError::Data("expected a batch of at least 1 clip, got 0".into()));
        }
        if self.plan_n != n {
            // a new batch size restarts the epoch's plan from its beginning
            if self.plan_n != 0 {
                self.pos = 0;
            }
            self.make_plan(n)?;
        }
        if self.pos >= self.plan.len() {
            self.epoch += 1;
            self.pos = 0;
            self.make_plan(n)?;
        }
        let (gi, clips) = self.plan[self.pos].clone();
        self.pos += 1;
        let g = &self.groups[gi];
        let mut latents = Vec::with_capacity(n);
        let mut captions = Vec::with_capacity(n);
        let mut masks = Vec::new();
        for &c in &clips {
            let (shard, row, item, scene) = &g.clips[c];
            let clip = g.shards[*shard].i(*row)?;
            let &[_, f, h, w] = clip.dims() else {
                return Err(TrainError::Data(format!("expected cached latents [C, F, H, W], got {:?}", clip.dims())));
            };
            masks.extend(foreground_mask(scene, f, h, w).map_err(TrainError::Data)?);
            latents.push(clip);
            captions.push(self.caption(scene, *item, self.epoch));
        }
        let latents = Tensor::stack(&latents, 0)?.to_dtype(DType::F32)?.to_device(&self.device)?;
        let (b, _, f, h, w) = latents.dims5()?;
        let foreground = Tensor::from_vec(masks, (b, 1, f, h, w), &self.device)?;
        Ok(LatentBatch { latents, captions, foreground: Some(foreground) })
    }

    fn state(&self) -> serde_json::Value {
        serde_json::json!({ "epoch": self.epoch, "pos": self.pos, "batch": self.plan_n })
    }

    fn restore(&mut self, state: &serde_json::Value) -> Result<()> {
        let get = |k: &str| state.get(k).and_then(|v| v.as_u64());
        let (Some(epoch), Some(pos), Some(batch)) = (get("epoch"), get("pos"), get("batch")) else {
            return Err(TrainError::Data(format!(
                "CachedLatents: expected {{\"epoch\", \"pos\", \"batch\"}}, got {state}"
            )));
        };
        self.epoch = epoch;
        self.pos = pos as usize;
        self.plan.clear();
        self.plan_n = 0;
        if batch > 0 {
            self.make_plan(batch as usize)?;
        }
        Ok(())
    }
}
