//! The whole text-to-video pipeline against diffusers' WanPipeline on the tiny checkpoint, plus
//! the pipeline's own contract: determinism, progress, cancellation, request validation.
mod common;
use candle_core::{DType, Device, Tensor};
use ciak_engine::error::CiakError;
use ciak_engine::model_dir::WanModelDir;
use ciak_engine::pipeline::{GenerateRequest, LoadOptions, Progress, WanPipeline};
use ciak_engine::scheduler::SchedulerKind;
use common::{assert_close, fixture, get, io_metadata, load_io};
use std::sync::atomic::AtomicBool;

fn pipeline(dtype: DType) -> WanPipeline {
    let dir = WanModelDir::open(&fixture("tiny-wan")).unwrap();
    WanPipeline::load(&dir, &LoadOptions { device: Device::Cpu, dtype, vae_dtype: DType::F32 }).unwrap()
}

fn fixture_request(name: &str) -> GenerateRequest {
    let meta = io_metadata(name);
    let field = |k: &str| meta.get(k).unwrap_or_else(|| panic!("fixture {name} has no metadata `{k}`: {meta:?}")).clone();
    GenerateRequest {
        negative_prompt: field("negative_prompt"),
        width: field("width").parse().unwrap(),
        height: field("height").parse().unwrap(),
        frames: field("num_frames").parse().unwrap(),
        steps: field("num_inference_steps").parse().unwrap(),
        guidance: field("guidance_scale").parse().unwrap(),
        ..GenerateRequest::new(field("prompt"))
    }
}

fn run_fixture(pipe: &WanPipeline, name: &str, scheduler: Option<SchedulerKind>) -> (Tensor, Tensor) {
    let io = load_io(name);
    let req = GenerateRequest { scheduler, ..fixture_request(name) };
    let out = pipe.generate_from_latents(&req, get(&io, "latents").clone(), &mut |_| {}, None).unwrap();
    (out.latents, out.frames.unsqueeze(0).unwrap())
}

#[test]
fn unipc_pipeline_matches_diffusers_f32() {
    let pipe = pipeline(DType::F32);
    let io = load_io("pipeline");
    let (latents, frames) = run_fixture(&pipe, "pipeline", None);
    assert_close("pipeline final latents", &latents, get(&io, "final_latents"), 1e-4);
    assert_close("pipeline frames", &frames, get(&io, "frames"), 1e-4);
}

#[test]
fn euler_pipeline_matches_diffusers_f32() {
    let pipe = pipeline(DType::F32);
    let io = load_io("pipeline_euler");
    let (latents, frames) = run_fixture(&pipe, "pipeline_euler", Some(SchedulerKind::Euler));
    assert_close("euler final latents", &latents, get(&io, "final_latents"), 1e-4);
    assert_close("euler frames", &frames, get(&io, "frames"), 1e-4);
}

#[test]
fn bf16_pipeline_stays_close_to_diffusers_f32() {
    // bf16 transformer and text encoder, f32 VAE (diffusers' recommended split). Tolerance from
    // the measured error on this fixture plus margin: bf16 keeps 8 mantissa bits.
    let pipe = pipeline(DType::BF16);
    let io = load_io("pipeline");
    let (_, frames) = run_fixture(&pipe, "pipeline", None);
    assert_close("bf16 pipeline frames", &frames, get(&io, "frames"), 5e-2);
}

fn small_request(seed: u64) -> GenerateRequest {
    GenerateRequest { width: 32, height: 32, frames: 5, steps: 3, seed, ..GenerateRequest::new("a red ball") }
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap().into_iter().map(f32::to_bits).collect()
}

#[test]
fn same_seed_same_bits_other_seed_other_clip() {
    let pipe = pipeline(DType::F32);
    let a = pipe.generate(&small_request(7), &mut |_| {}, None).unwrap();
    let b = pipe.generate(&small_request(7), &mut |_| {}, None).unwrap();
    let c = pipe.generate(&small_request(8), &mut |_| {}, None).unwrap();
    assert_eq!(a.frames.dims(), &[5, 32, 32, 3]);
    assert_eq!(bits(&a.frames), bits(&b.frames));
    assert_ne!(bits(&a.frames), bits(&c.frames));
}

#[test]
fn a_guidance_interval_guides_only_the_steps_below_it() {
    let pipe = pipeline(DType::F32);
    let req = GenerateRequest { guidance: 5.0, steps: 4, ..small_request(3) };
    let sigmas: Vec<f64> = pipe.scheduler.build(req.steps, None).unwrap().sigmas().to_vec();
    let run = |r: &GenerateRequest| bits(&pipe.generate(r, &mut |_| {}, None).unwrap().latents);
    let every_step = run(&req);
    // a bound under every step's sigma: no step is guided, which is guidance 1 (the prompt alone)
    let none = run(&GenerateRequest { guidance_below: Some(sigmas[3] / 2.0), ..req.clone() });
    assert_eq!(none, run(&GenerateRequest { guidance: 1.0, ..req.clone() }));
    // a bound between the first and the second step: the first is unguided, the rest guided
    let mid = run(&GenerateRequest { guidance_below: Some((sigmas[0] + sigmas[1]) / 2.0), ..req.clone() });
    assert_ne!(mid, every_step);
    assert_ne!(mid, none);
    // a bound over the first step's sigma changes nothing
    if sigmas[0] < 1.0 {
        assert_eq!(run(&GenerateRequest { guidance_below: Some(1.0), ..req.clone() }), every_step);
    }
}

/// Image first: the clip's first latent frame is exactly the one-frame clip drawn from the same
/// noise, held fixed while the rest is drawn; the rest differs from a one-pass clip, and progress
/// counts both passes.
#[test]
fn image_first_draws_the_first_frame_alone_then_holds_it() {
    let pipe = pipeline(DType::F32);
    let req = GenerateRequest { guidance: 5.0, ..small_request(4) };
    let noise = ciak_engine::noise::gaussian(4, pipe.latent_shape(&req), &Device::Cpu).unwrap();
    assert!(noise.dim(2).unwrap() > 1);
    let image_first = GenerateRequest { image_first: true, ..req.clone() };
    let mut steps = Vec::new();
    let out = pipe
        .generate_from_latents(
            &image_first,
            noise.clone(),
            &mut |p| {
                if let Progress::Denoising { step, total, .. } = p {
                    steps.push((*step, *total));
                }
            },
            None,
        )
        .unwrap();
    assert_eq!(steps, (1..=6).map(|k| (k, 6)).collect::<Vec<_>>());
    let image = GenerateRequest { frames: 1, ..req.clone() };
    let alone = pipe.generate_from_latents(&image, noise.narrow(2, 0, 1).unwrap(), &mut |_| {}, None).unwrap();
    assert_eq!(bits(&out.latents.narrow(2, 0, 1).unwrap()), bits(&alone.latents));
    let one_pass = pipe.generate_from_latents(&req, noise, &mut |_| {}, None).unwrap();
    let rest = |t: &Tensor| bits(&t.narrow(2, 1, t.dim(2).unwrap() - 1).unwrap());
    assert_ne!(rest(&out.latents), rest(&one_pass.latents));
    assert_eq!(out.frames.dims(), one_pass.frames.dims());
}

#[test]
fn progress_reports_every_step_and_cancel_stops_the_run() {
    let pipe = pipeline(DType::F32);
    let mut events = Vec::new();
    pipe.generate(&small_request(1), &mut |p| events.push(p.clone()), None).unwrap();
    let steps: Vec<(usize, usize)> = events
        .iter()
        .filter_map(|p| match p {
            Progress::Denoising { step, total, .. } => Some((*step, *total)),
            _ => None,
        })
        .collect();
    assert_eq!(steps, vec![(1, 3), (2, 3), (3, 3)]);
    assert_eq!(events.first(), Some(&Progress::EncodingText));
    assert_eq!(events.last(), Some(&Progress::Done));

    // Cancel from inside the callback after the first step: the run stops before step 2.
    let flag = AtomicBool::new(false);
    let mut seen = 0;
    let err = pipe
        .generate(
            &small_request(1),
            &mut |p| {
                if let Progress::Denoising { .. } = p {
                    seen += 1;
                    flag.store(true, std::sync::atomic::Ordering::Relaxed);
                }
            },
            Some(&flag),
        )
        .unwrap_err();
    assert!(matches!(err, CiakError::Cancelled { .. }), "{err:?}");
    assert_eq!(seen, 1);
}

#[test]
fn bad_requests_say_what_was_expected() {
    let pipe = pipeline(DType::F32);
    let cases: Vec<(GenerateRequest, &str)> = vec![
        (GenerateRequest { width: 40, ..small_request(0) }, "expected width a multiple of 16, got 40 (nearest valid: 32 or 48)"),
        (GenerateRequest { height: 0, ..small_request(0) }, "expected height a multiple of 16, got 0"),
        (GenerateRequest { frames: 6, ..small_request(0) }, "expected frames = 1+4k, got 6 (nearest valid: 5 or 9)"),
        (GenerateRequest { steps: 0, ..small_request(0) }, "expected steps >= 1, got 0"),
        (GenerateRequest { prompt: "  ".into(), ..small_request(0) }, "expected a prompt"),
        (GenerateRequest { shift: Some(0.0), ..small_request(0) }, "expected a shift > 0"),
        (GenerateRequest { guidance: f64::NAN, ..small_request(0) }, "expected a guidance scale"),
        (GenerateRequest { guidance_below: Some(0.0), ..small_request(0) }, "expected a guidance interval bound (sigma) in (0, 1], got 0"),
        (GenerateRequest { guidance_below: Some(1.5), ..small_request(0) }, "in (0, 1], got 1.5"),
        (GenerateRequest { guidance_below: Some(f64::NAN), ..small_request(0) }, "in (0, 1], got NaN"),
    ];
    for (req, want) in cases {
        let err = pipe.generate(&req, &mut |_| {}, None).unwrap_err().to_string();
        assert!(err.contains(want), "got `{err}`, wanted `{want}`");
    }
    let wrong = Tensor::zeros((1, 16, 3, 4, 4), DType::F32, &Device::Cpu).unwrap();
    let err = pipe.generate_from_latents(&small_request(0), wrong, &mut |_| {}, None).unwrap_err().to_string();
    assert!(err.contains("expected initial latents of shape (1, 16, 2, 4, 4), got [1, 16, 3, 4, 4]"), "{err}");
}
