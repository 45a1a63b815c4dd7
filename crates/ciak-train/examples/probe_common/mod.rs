//! What the probe examples share (`#[path]`-included; not an example itself).
use candle_core::Tensor;
use ciak_engine::pipeline::WanPipeline;
use ciak_train::train::vae::frames_rgb8;

/// Where sampling starts: the x0 prediction x0 = noise - v at sigma 1 from `noise`, with the
/// caption `ctx` alone and with guidance `guidance` against `uncond` (as the sampler's first
/// step); the first latent frame of each decoded to RGB8, in that order.
pub fn sigma1_first_frames(pipe: &WanPipeline, noise: &Tensor, ctx: &Tensor, uncond: &Tensor, guidance: f64) -> [Vec<u8>; 2] {
    let t = Tensor::new(&[1000f32], noise.device()).unwrap();
    let vc = pipe.transformer.forward(noise, &t, ctx, None).unwrap();
    let vu = pipe.transformer.forward(noise, &t, uncond, None).unwrap();
    let guided = (&vu + ((&vc - &vu).unwrap() * guidance).unwrap()).unwrap();
    [vc, guided].map(|v| {
        let x0 = (noise - v).unwrap().narrow(2, 0, 1).unwrap();
        frames_rgb8(&pipe.vae.decode(&pipe.vae.denormalize_latents(&x0).unwrap()).unwrap()).unwrap()
    })
}
