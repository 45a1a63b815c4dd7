//! `AutoencoderKLWan` (Wan2.1 causal video VAE), following diffusers `autoencoder_kl_wan.py`.
//!
//! Encode runs pixel frames in chunks `[0:1], [1:5], [5:9], ...` and decode one latent frame at
//! a time, each through a per-conv feature cache, exactly as diffusers does; so 1+4k pixel
//! frames map to 1+k latent frames and memory stays bounded by one chunk.

pub mod im2col;
pub mod layers;

use candle_core::{DType, Device, IndexOp, Module, Result, Tensor};
use candle_nn::VarBuilder;
use layers::{AttentionBlock, CausalConv3d, FeatCache, Resample, ResampleMode, ResidualBlock, RmsNorm, SlotCounter};

/// diffusers `AutoencoderKLWan` config, read from `vae/config.json` as it is.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct AutoencoderKLWanConfig {
    pub base_dim: usize,
    #[serde(default)]
    pub decoder_base_dim: Option<usize>,
    pub z_dim: usize,
    pub dim_mult: Vec<usize>,
    pub num_res_blocks: usize,
    pub attn_scales: Vec<f64>,
    pub temperal_downsample: Vec<bool>,
    pub dropout: f64,
    pub latents_mean: Vec<f64>,
    pub latents_std: Vec<f64>,
    #[serde(default)]
    pub is_residual: bool,
    #[serde(default = "default_channels")]
    pub in_channels: usize,
    #[serde(default = "default_channels")]
    pub out_channels: usize,
    #[serde(default)]
    pub patch_size: Option<usize>,
    #[serde(default)]
    pub scale_factor_temporal: Option<usize>,
    #[serde(default)]
    pub scale_factor_spatial: Option<usize>,
}

fn default_channels() -> usize {
    3
}

impl AutoencoderKLWanConfig {
    /// Wan2.1 VAE, <https://huggingface.co/Wan-AI/Wan2.1-T2V-1.3B-Diffusers/blob/main/vae/config.json>.
    pub fn wan21() -> Self {
        Self {
            base_dim: 96,
            decoder_base_dim: None,
            z_dim: 16,
            dim_mult: vec![1, 2, 4, 4],
            num_res_blocks: 2,
            attn_scales: vec![],
            temperal_downsample: vec![false, true, true],
            dropout: 0.0,
            latents_mean: vec![
                -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134, -0.0715, 0.5517, -0.3632,
                -0.1922, -0.9497, 0.2503, -0.2921,
            ],
            latents_std: vec![
                2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526, 2.8652, 1.5579, 1.6382,
                1.1253, 2.8251, 1.9160,
            ],
            is_residual: false,
            in_channels: 3,
            out_channels: 3,
            patch_size: None,
            scale_factor_temporal: Some(4),
            scale_factor_spatial: Some(8),
        }
    }

    /// Checks that this is a Wan2.1-style VAE this code can build.
    pub fn validate(&self) -> Result<()> {
        if self.is_residual || self.patch_size.is_some_and(|p| p != 1) {
            candle_core::bail!("Wan2.2 VAE (is_residual) is not supported yet");
        }
        let n = self.dim_mult.len();
        if n == 0 || self.temperal_downsample.len() != n - 1 {
            candle_core::bail!(
                "expected temperal_downsample of length dim_mult.len() - 1 = {}, got {}",
                n.saturating_sub(1),
                self.temperal_downsample.len()
            );
        }
        if self.latents_mean.len() != self.z_dim || self.latents_std.len() != self.z_dim {
            candle_core::bail!(
                "expected latents_mean/std of length z_dim = {}, got {}/{}",
                self.z_dim,
                self.latents_mean.len(),
                self.latents_std.len()
            );
        }
        Ok(())
    }

    /// Pixels per latent pixel (diffusers `spatial_compression_ratio`).
    pub fn spatial_ratio(&self) -> usize {
        self.scale_factor_spatial.unwrap_or(1 << (self.dim_mult.len() - 1))
    }

    /// Pixel frames per latent frame after the first.
    pub fn temporal_ratio(&self) -> usize {
        self.scale_factor_temporal.unwrap_or(1 << self.temperal_downsample.iter().filter(|&&t| t).count())
    }
}

/// Spatial tiling of `decode_tiled`, in pixels (diffusers `enable_tiling` arguments).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TileConfig {
    pub tile_sample_min_height: usize,
    pub tile_sample_min_width: usize,
    pub tile_sample_stride_height: usize,
    pub tile_sample_stride_width: usize,
}

impl Default for TileConfig {
    /// diffusers defaults: 256 px tiles every 192 px (64 px linear blend).
    fn default() -> Self {
        Self {
            tile_sample_min_height: 256,
            tile_sample_min_width: 256,
            tile_sample_stride_height: 192,
            tile_sample_stride_width: 192,
        }
    }
}

#[derive(Debug, Clone)]
struct MidBlock {
    resnets: Vec<ResidualBlock>,
    attentions: Vec<AttentionBlock>,
}

impl MidBlock {
    fn new(dim: usize, slots: &mut SlotCounter, vb: VarBuilder) -> Result<Self> {
        let r = vb.pp("resnets");
        let resnets =
            vec![ResidualBlock::new(dim, dim, slots, r.pp(0))?, ResidualBlock::new(dim, dim, slots, r.pp(1))?];
        let attentions = vec![AttentionBlock::new(dim, vb.pp("attentions").pp(0))?];
        Ok(Self { resnets, attentions })
    }

    fn forward(&self, x: &Tensor, cache: &mut FeatCache) -> Result<Tensor> {
        let mut x = self.resnets[0].forward(x, cache)?;
        for (attn, resnet) in self.attentions.iter().zip(&self.resnets[1..]) {
            x = attn.forward(&x)?;
            x = resnet.forward(&x, cache)?;
        }
        Ok(x)
    }
}

#[derive(Debug, Clone)]
enum DownLayer {
    Res(ResidualBlock),
    Attn(AttentionBlock),
    Resample(Resample),
}

/// `WanEncoder3d` (Wan2.1 flat `down_blocks` list).
#[derive(Debug, Clone)]
pub struct Encoder3d {
    conv_in: CausalConv3d,
    down_blocks: Vec<DownLayer>,
    mid_block: MidBlock,
    norm_out: RmsNorm,
    conv_out: CausalConv3d,
    conv_in_slot: usize,
    conv_out_slot: usize,
    num_slots: usize,
}

impl Encoder3d {
    pub fn new(cfg: &AutoencoderKLWanConfig, vb: VarBuilder) -> Result<Self> {
        let mut slots = SlotCounter::default();
        let dim = cfg.base_dim;
        let dims: Vec<usize> = std::iter::once(1).chain(cfg.dim_mult.iter().copied()).map(|u| u * dim).collect();
        let conv_in = CausalConv3d::new(cfg.in_channels, dims[0], (3, 3), 1, (1, 1), vb.pp("conv_in"))?;
        let conv_in_slot = slots.take();
        let dvb = vb.pp("down_blocks");
        let mut down_blocks = Vec::new();
        let mut scale = 1.0;
        for i in 0..cfg.dim_mult.len() {
            let mut in_dim = dims[i];
            let out_dim = dims[i + 1];
            for _ in 0..cfg.num_res_blocks {
                let n = down_blocks.len();
                down_blocks.push(DownLayer::Res(ResidualBlock::new(in_dim, out_dim, &mut slots, dvb.pp(n))?));
                if cfg.attn_scales.contains(&scale) {
                    let n = down_blocks.len();
                    down_blocks.push(DownLayer::Attn(AttentionBlock::new(out_dim, dvb.pp(n))?));
                }
                in_dim = out_dim;
            }
            if i != cfg.dim_mult.len() - 1 {
                let mode =
                    if cfg.temperal_downsample[i] { ResampleMode::Downsample3d } else { ResampleMode::Downsample2d };
                let n = down_blocks.len();
                down_blocks.push(DownLayer::Resample(Resample::new(out_dim, mode, &mut slots, dvb.pp(n))?));
                scale /= 2.0;
            }
        }
        let out_dim = *dims.last().expect("dims is never empty");
        let mid_block = MidBlock::new(out_dim, &mut slots, vb.pp("mid_block"))?;
        let norm_out = RmsNorm::new(out_dim, false, vb.pp("norm_out"))?;
        let conv_out = CausalConv3d::new(out_dim, 2 * cfg.z_dim, (3, 3), 1, (1, 1), vb.pp("conv_out"))?;
        let conv_out_slot = slots.take();
        Ok(Self {
            conv_in,
            down_blocks,
            mid_block,
            norm_out,
            conv_out,
            conv_in_slot,
            conv_out_slot,
            num_slots: slots.count(),
        })
    }

    /// Shapes: x (T, C_in, H, W) one chunk, frame-major -> (T', 2*z_dim, H/8, W/8).
    pub fn forward(&self, x: &Tensor, cache: &mut FeatCache) -> Result<Tensor> {
        let mut x = self.conv_in.forward_cached(x, cache, self.conv_in_slot)?;
        for layer in &self.down_blocks {
            x = match layer {
                DownLayer::Res(r) => r.forward(&x, cache)?,
                DownLayer::Attn(a) => a.forward(&x)?,
                DownLayer::Resample(r) => r.forward(&x, cache)?,
            };
        }
        let x = self.mid_block.forward(&x, cache)?;
        let x = self.norm_out.forward(&x)?.silu()?;
        self.conv_out.forward_cached(&x, cache, self.conv_out_slot)
    }

    /// A fresh feature cache for one encode pass.
    pub fn new_cache(&self) -> FeatCache {
        FeatCache::new(self.num_slots)
    }
}

#[derive(Debug, Clone)]
struct UpBlock {
    resnets: Vec<ResidualBlock>,
    upsamplers: Option<Resample>,
}

/// `WanDecoder3d` (Wan2.1 `WanUpBlock`s).
#[derive(Debug, Clone)]
pub struct Decoder3d {
    conv_in: CausalConv3d,
    mid_block: MidBlock,
    up_blocks: Vec<UpBlock>,
    norm_out: RmsNorm,
    conv_out: CausalConv3d,
    conv_in_slot: usize,
    conv_out_slot: usize,
    num_slots: usize,
}

impl Decoder3d {
    pub fn new(cfg: &AutoencoderKLWanConfig, vb: VarBuilder) -> Result<Self> {
        let mut slots = SlotCounter::default();
        let dim = cfg.decoder_base_dim.unwrap_or(cfg.base_dim);
        let last = *cfg.dim_mult.last().expect("validated: dim_mult is not empty");
        let dims: Vec<usize> =
            std::iter::once(last).chain(cfg.dim_mult.iter().rev().copied()).map(|u| u * dim).collect();
        let temperal_upsample: Vec<bool> = cfg.temperal_downsample.iter().rev().copied().collect();
        let conv_in = CausalConv3d::new(cfg.z_dim, dims[0], (3, 3), 1, (1, 1), vb.pp("conv_in"))?;
        let conv_in_slot = slots.take();
        let mid_block = MidBlock::new(dims[0], &mut slots, vb.pp("mid_block"))?;
        let uvb = vb.pp("up_blocks");
        let mut up_blocks = Vec::new();
        for i in 0..cfg.dim_mult.len() {
            // Wan2.1: each upsampler halves the channels, so later blocks start at half width.
            let mut in_dim = if i > 0 { dims[i] / 2 } else { dims[i] };
            let out_dim = dims[i + 1];
            let bvb = uvb.pp(i);
            let mut resnets = Vec::new();
            for j in 0..=cfg.num_res_blocks {
                resnets.push(ResidualBlock::new(in_dim, out_dim, &mut slots, bvb.pp("resnets").pp(j))?);
                in_dim = out_dim;
            }
            let upsamplers = if i != cfg.dim_mult.len() - 1 {
                let mode = if temperal_upsample[i] { ResampleMode::Upsample3d } else { ResampleMode::Upsample2d };
                Some(Resample::new(out_dim, mode, &mut slots, bvb.pp("upsamplers").pp(0))?)
            } else {
                None
            };
            up_blocks.push(UpBlock { resnets, upsamplers });
        }
        let out_dim = *dims.last().expect("dims is never empty");
        let norm_out = RmsNorm::new(out_dim, false, vb.pp("norm_out"))?;
        let conv_out = CausalConv3d::new(out_dim, cfg.out_channels, (3, 3), 1, (1, 1), vb.pp("conv_out"))?;
        let conv_out_slot = slots.take();
        Ok(Self {
            conv_in,
            mid_block,
            up_blocks,
            norm_out,
            conv_out,
            conv_in_slot,
            conv_out_slot,
            num_slots: slots.count(),
        })
    }

    /// Shapes: x (T, z_dim, h, w) one chunk, frame-major -> (T', C_out, 8h, 8w); on the first
    /// chunk of a pass T' = T, afterwards T' = 4T.
    pub fn forward(&self, x: &Tensor, cache: &mut FeatCache) -> Result<Tensor> {
        let x = self.conv_in.forward_cached(x, cache, self.conv_in_slot)?;
        let mut x = self.mid_block.forward(&x, cache)?;
        for block in &self.up_blocks {
            for resnet in &block.resnets {
                x = resnet.forward(&x, cache)?;
            }
            if let Some(up) = &block.upsamplers {
                x = up.forward(&x, cache)?;
            }
        }
        let x = self.norm_out.forward(&x)?.silu()?;
        self.conv_out.forward_cached(&x, cache, self.conv_out_slot)
    }

    /// A fresh feature cache for one decode pass.
    pub fn new_cache(&self) -> FeatCache {
        FeatCache::new(self.num_slots)
    }
}

/// Wan2.1 causal video VAE.
#[derive(Debug, Clone)]
pub struct AutoencoderKLWan {
    encoder: Encoder3d,
    decoder: Decoder3d,
    quant_conv: CausalConv3d,
    post_quant_conv: CausalConv3d,
    /// Per-channel latent statistics as `(1, z_dim, 1, 1, 1)` f32.
    latents_mean: Tensor,
    latents_std: Tensor,
    cfg: AutoencoderKLWanConfig,
    dtype: DType,
    device: Device,
}

impl AutoencoderKLWan {
    /// Builds the VAE; every tensor is read from `vb` in its dtype (f32 recommended, bf16 works).
    pub fn new(cfg: &AutoencoderKLWanConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let z = cfg.z_dim;
        let encoder = Encoder3d::new(cfg, vb.pp("encoder"))?;
        let decoder = Decoder3d::new(cfg, vb.pp("decoder"))?;
        let quant_conv = CausalConv3d::new(2 * z, 2 * z, (1, 1), 1, (0, 0), vb.pp("quant_conv"))?;
        let post_quant_conv = CausalConv3d::new(z, z, (1, 1), 1, (0, 0), vb.pp("post_quant_conv"))?;
        let stat = |v: &[f64]| -> Result<Tensor> {
            let v: Vec<f32> = v.iter().map(|&x| x as f32).collect();
            Tensor::from_vec(v, (1, z, 1, 1, 1), vb.device())
        };
        Ok(Self {
            encoder,
            decoder,
            quant_conv,
            post_quant_conv,
            latents_mean: stat(&cfg.latents_mean)?,
            latents_std: stat(&cfg.latents_std)?,
            cfg: cfg.clone(),
            dtype: vb.dtype(),
            device: vb.device().clone(),
        })
    }

    pub fn config(&self) -> &AutoencoderKLWanConfig {
        &self.cfg
    }

    /// Compute and output dtype (that of the weights).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Posterior of a video: `mean` and `logvar` (clamped to [-30, 20] as diffusers does).
    ///
    /// Shapes: x [B, C_in, 1+4k, H, W] (values in [-1, 1]) -> (mean, logvar), each
    /// [B, z_dim, 1+k, H/8, W/8], in the VAE's dtype.
    pub fn encode(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, c, t, _, _) = x.dims5()?;
        if c != self.cfg.in_channels {
            candle_core::bail!("expected {} input channels, got {c}", self.cfg.in_channels);
        }
        let tr = self.cfg.temporal_ratio();
        if t == 0 || (t - 1) % tr != 0 {
            candle_core::bail!("expected frames = 1+{tr}k, got {t}");
        }
        let x = x.to_dtype(self.dtype)?;
        let mut samples = Vec::with_capacity(b);
        for bi in 0..b {
            let frames = x.i(bi)?.permute((1, 0, 2, 3))?.contiguous()?;
            let mut cache = self.encoder.new_cache();
            let mut outs = Vec::with_capacity(1 + (t - 1) / tr);
            outs.push(self.encoder.forward(&frames.narrow(0, 0, 1)?, &mut cache)?);
            for i in 0..(t - 1) / tr {
                outs.push(self.encoder.forward(&frames.narrow(0, 1 + tr * i, tr)?, &mut cache)?);
            }
            let enc = self.quant_conv.forward(&Tensor::cat(&outs, 0)?, None)?;
            samples.push(enc.permute((1, 0, 2, 3))?);
        }
        let enc = Tensor::stack(&samples, 0)?;
        let z = self.cfg.z_dim;
        let mean = enc.narrow(1, 0, z)?.contiguous()?;
        let logvar = enc.narrow(1, z, z)?.clamp(-30f32, 20f32)?;
        Ok((mean, logvar))
    }

    /// Decodes latents already un-normalised (see [`Self::denormalize_latents`]), clamped to [-1, 1].
    ///
    /// Shapes: z [B, z_dim, T, h, w] -> [B, C_out, 1+4(T-1), 8h, 8w], in the VAE's dtype.
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        self.decode_unclamped(z)?.clamp(-1f32, 1f32)
    }

    /// Streams the decode: calls `f` once per latent frame with that frame's pixels, clamped to
    /// [-1, 1]; only one chunk and the feature caches are alive at a time.
    ///
    /// Shapes: z [B, z_dim, T, h, w] -> chunks [B, C_out, t, 8h, 8w] with t = 1 for the first
    /// latent frame and 4 after.
    pub fn decode_chunks(&self, z: &Tensor, mut f: impl FnMut(Tensor) -> Result<()>) -> Result<()> {
        let (b, t) = self.check_latents(z)?;
        let z = z.to_dtype(self.dtype)?;
        let mut caches: Vec<FeatCache> = (0..b).map(|_| self.decoder.new_cache()).collect();
        for ti in 0..t {
            let mut chunk = Vec::with_capacity(b);
            for (bi, cache) in caches.iter_mut().enumerate() {
                let frames = self.decode_frame(&z, bi, ti, cache)?.clamp(-1f32, 1f32)?;
                chunk.push(frames.permute((1, 0, 2, 3))?);
            }
            f(Tensor::stack(&chunk, 0)?)?;
        }
        Ok(())
    }

    /// Decode with diffusers' spatial tiling (`enable_tiling` + `tiled_decode`): overlapping
    /// latent tiles decoded independently, linearly blended over the overlap, then clamped.
    /// Latents that fit in one tile take the plain [`Self::decode`] path, as in diffusers.
    ///
    /// Shapes: z [B, z_dim, T, h, w] -> [B, C_out, 1+4(T-1), 8h, 8w].
    pub fn decode_tiled(&self, z: &Tensor, tiles: &TileConfig) -> Result<Tensor> {
        let (_, _, _, h, w) = z.dims5()?;
        let ratio = self.cfg.spatial_ratio();
        let lat_min_h = tiles.tile_sample_min_height / ratio;
        let lat_min_w = tiles.tile_sample_min_width / ratio;
        let lat_stride_h = tiles.tile_sample_stride_height / ratio;
        let lat_stride_w = tiles.tile_sample_stride_width / ratio;
        if lat_stride_h == 0 || lat_stride_w == 0 {
            candle_core::bail!("expected tile strides of at least {ratio} pixels, got {tiles:?}");
        }
        if tiles.tile_sample_stride_height > tiles.tile_sample_min_height
            || tiles.tile_sample_stride_width > tiles.tile_sample_min_width
        {
            candle_core::bail!("expected tile strides no larger than the tile sizes, got {tiles:?}");
        }
        if w <= lat_min_w && h <= lat_min_h {
            return self.decode(z);
        }
        let (sample_h, sample_w) = (h * ratio, w * ratio);
        let stride_h = tiles.tile_sample_stride_height;
        let stride_w = tiles.tile_sample_stride_width;
        let blend_h = tiles.tile_sample_min_height.saturating_sub(stride_h);
        let blend_w = tiles.tile_sample_min_width.saturating_sub(stride_w);

        // Tiles are blended in place in diffusers: the tile above / to the left is already blended.
        let mut rows: Vec<Vec<Tensor>> = Vec::new();
        let mut result_rows = Vec::new();
        for (ri, i) in (0..h).step_by(lat_stride_h).enumerate() {
            let mut row: Vec<Tensor> = Vec::new();
            let mut result_row = Vec::new();
            for (ci, j) in (0..w).step_by(lat_stride_w).enumerate() {
                let tile = z.narrow(3, i, lat_min_h.min(h - i))?.narrow(4, j, lat_min_w.min(w - j))?;
                let mut tile = self.decode_unclamped(&tile)?;
                if ri > 0 {
                    tile = blend(&rows[ri - 1][ci], &tile, blend_h, 3)?;
                }
                if ci > 0 {
                    tile = blend(&row[ci - 1], &tile, blend_w, 4)?;
                }
                let th = tile.dim(3)?.min(stride_h);
                let tw = tile.dim(4)?.min(stride_w);
                result_row.push(tile.narrow(3, 0, th)?.narrow(4, 0, tw)?);
                row.push(tile);
            }
            result_rows.push(Tensor::cat(&result_row, 4)?);
            rows.push(row);
        }
        let dec = Tensor::cat(&result_rows, 3)?;
        let dec = dec.narrow(3, 0, sample_h.min(dec.dim(3)?))?.narrow(4, 0, sample_w.min(dec.dim(4)?))?;
        dec.clamp(-1f32, 1f32)
    }

    /// `(mu - latents_mean) / latents_std` per channel: posterior mean to diffusion latents.
    ///
    /// Shapes: mu [B, z_dim, T, h, w] -> same.
    pub fn normalize_latents(&self, mu: &Tensor) -> Result<Tensor> {
        let mean = self.latents_mean.to_dtype(mu.dtype())?;
        let std = self.latents_std.to_dtype(mu.dtype())?;
        mu.broadcast_sub(&mean)?.broadcast_div(&std)
    }

    /// `z * latents_std + latents_mean` per channel: diffusion latents to VAE decoder input.
    ///
    /// Shapes: z [B, z_dim, T, h, w] -> same.
    pub fn denormalize_latents(&self, z: &Tensor) -> Result<Tensor> {
        let mean = self.latents_mean.to_dtype(z.dtype())?;
        let std = self.latents_std.to_dtype(z.dtype())?;
        z.broadcast_mul(&std)?.broadcast_add(&mean)
    }

    fn check_latents(&self, z: &Tensor) -> Result<(usize, usize)> {
        let (b, c, t, _, _) = z.dims5()?;
        if c != self.cfg.z_dim {
            candle_core::bail!("expected {} latent channels, got {c}", self.cfg.z_dim);
        }
        if t == 0 {
            candle_core::bail!("expected at least one latent frame, got 0");
        }
        Ok((b, t))
    }

    /// Shapes: z [B, z_dim, T, h, w] -> [B, C_out, 1+4(T-1), 8h, 8w], not clamped.
    fn decode_unclamped(&self, z: &Tensor) -> Result<Tensor> {
        let (b, t) = self.check_latents(z)?;
        let z = z.to_dtype(self.dtype)?;
        let mut samples = Vec::with_capacity(b);
        for bi in 0..b {
            let mut cache = self.decoder.new_cache();
            let frames = (0..t).map(|ti| self.decode_frame(&z, bi, ti, &mut cache)).collect::<Result<Vec<_>>>()?;
            samples.push(Tensor::cat(&frames, 0)?.permute((1, 0, 2, 3))?);
        }
        Tensor::stack(&samples, 0)
    }

    /// One latent frame of one sample through post_quant_conv and the decoder.
    ///
    /// Shapes: -> (t, C_out, 8h, 8w) frame-major, t = 1 on the first frame of a pass, else 4.
    fn decode_frame(&self, z: &Tensor, b: usize, t: usize, cache: &mut FeatCache) -> Result<Tensor> {
        let x = z.i((b, .., t))?.unsqueeze(0)?.contiguous()?;
        let x = self.post_quant_conv.forward(&x, None)?;
        self.decoder.forward(&x, cache)
    }
}

/// diffusers `blend_v` (dim 3) / `blend_h` (dim 4): the first rows of `b` fade in from the last
/// rows of `a`, weight `y / extent` on `b`.
fn blend(a: &Tensor, b: &Tensor, extent: usize, dim: usize) -> Result<Tensor> {
    let (na, nb) = (a.dim(dim)?, b.dim(dim)?);
    let e = extent.min(na).min(nb);
    if e == 0 {
        return Ok(b.clone());
    }
    let mut shape = vec![1usize; 5];
    shape[dim] = e;
    let wb: Vec<f32> = (0..e).map(|y| (y as f64 / e as f64) as f32).collect();
    let wa: Vec<f32> = (0..e).map(|y| (1.0 - y as f64 / e as f64) as f32).collect();
    let wb = Tensor::from_vec(wb, shape.as_slice(), b.device())?.to_dtype(b.dtype())?;
    let wa = Tensor::from_vec(wa, shape.as_slice(), b.device())?.to_dtype(b.dtype())?;
    let mixed = (a.narrow(dim, na - e, e)?.broadcast_mul(&wa)? + b.narrow(dim, 0, e)?.broadcast_mul(&wb)?)?;
    if e == nb {
        return Ok(mixed);
    }
    Tensor::cat(&[mixed, b.narrow(dim, e, nb - e)?], dim)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_parses_wan21_and_rejects_wan22() {
        let wan21 = r#"{"_class_name":"AutoencoderKLWan","_diffusers_version":"0.33.0.dev0",
            "attn_scales":[],"base_dim":96,"dim_mult":[1,2,4,4],"dropout":0.0,
            "latents_mean":[-0.7571,-0.7089,-0.9113,0.1075,-0.1745,0.9653,-0.1517,1.5508,0.4134,-0.0715,0.5517,-0.3632,-0.1922,-0.9497,0.2503,-0.2921],
            "latents_std":[2.8184,1.4541,2.3275,2.6558,1.2196,1.7708,2.6052,2.0743,3.2687,2.1526,2.8652,1.5579,1.6382,1.1253,2.8251,1.916],
            "num_res_blocks":2,"temperal_downsample":[false,true,true],"z_dim":16}"#;
        let cfg: AutoencoderKLWanConfig = serde_json::from_str(wan21).unwrap();
        assert_eq!(cfg, AutoencoderKLWanConfig::wan21_without_optional());
        cfg.validate().unwrap();

        let wan22 = r#"{"_class_name":"AutoencoderKLWan","attn_scales":[],"base_dim":160,
            "decoder_base_dim":256,"dim_mult":[1,2,4,4],"dropout":0.0,"in_channels":12,
            "is_residual":true,"latents_mean":[0.0],"latents_std":[1.0],"num_res_blocks":2,
            "out_channels":12,"patch_size":2,"scale_factor_spatial":16,"scale_factor_temporal":4,
            "temperal_downsample":[false,true,true],"z_dim":48,"clip_output":false}"#;
        let cfg: AutoencoderKLWanConfig = serde_json::from_str(wan22).unwrap();
        assert_eq!((cfg.decoder_base_dim, cfg.patch_size, cfg.is_residual), (Some(256), Some(2), true));
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("Wan2.2 VAE (is_residual) is not supported yet"), "{err}");

        // base_dim is always in real configs, so a config without it is an error.
        assert!(serde_json::from_str::<AutoencoderKLWanConfig>(&wan21.replace("\"base_dim\":96,", "")).is_err());
    }

    impl AutoencoderKLWanConfig {
        fn wan21_without_optional() -> Self {
            Self { scale_factor_spatial: None, scale_factor_temporal: None, ..Self::wan21() }
        }
    }

    #[test]
    fn blend_matches_diffusers_loop() {
        let a = Tensor::arange(0f32, 40.0, &Device::Cpu).unwrap().reshape((1, 1, 1, 5, 8)).unwrap();
        let b = (Tensor::arange(0f32, 40.0, &Device::Cpu).unwrap().reshape((1, 1, 1, 5, 8)).unwrap() * -1.0).unwrap();
        let got = blend(&a, &b, 3, 4).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (av, bv) =
            (a.flatten_all().unwrap().to_vec1::<f32>().unwrap(), b.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        for r in 0..5 {
            for x in 0..8 {
                let want = if x < 3 {
                    av[r * 8 + 8 - 3 + x] * (1.0 - x as f32 / 3.0) + bv[r * 8 + x] * (x as f32 / 3.0)
                } else {
                    bv[r * 8 + x]
                };
                assert!((got[r * 8 + x] - want).abs() < 1e-5);
            }
        }
    }
}
