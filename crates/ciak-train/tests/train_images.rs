//! Joint image training (`image_steps`): an image step trains on the first latent frame of cached
//! clips, exactly as a clip step would on one-frame clips; steps of several aspect ratios train
//! together; which steps are image steps is fixed by the step number, so resumes stay exact.
#[path = "train_support.rs"]
mod support;

use candle_core::{Device, Tensor};
use ciak_train::train::dit::{DitTrainer, ImageSteps, SyntheticLatents};
use ciak_train::train::{DitTrainConfig, LatentBatch, LatentSource, Result};

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()).collect()
}

fn assert_same_weights(a: &DitTrainer, b: &DitTrainer) {
    let (wa, wb) = (a.weights(), b.weights());
    for (name, t) in &wa {
        assert!(bits(t) == bits(&wb[name]), "`{name}` differs");
    }
}

/// Hands out the first `frames` latent frames of another source's clips.
struct FirstFrames<S>(S, usize);

impl<S: LatentSource> LatentSource for FirstFrames<S> {
    fn batch(&mut self, n: usize) -> Result<LatentBatch> {
        self.0.batch(n)?.first_frames(self.1)
    }
    fn state(&self) -> serde_json::Value {
        self.0.state()
    }
    fn restore(&mut self, state: &serde_json::Value) -> Result<()> {
        self.0.restore(state)
    }
}

/// Batches of two latent sizes in turn (two aspect ratios), counting the batches drawn.
struct TwoAspects {
    wide: SyntheticLatents,
    tall: SyntheticLatents,
    drawn: u64,
}

impl TwoAspects {
    fn new(dev: &Device) -> Self {
        let caps = support::captions(3);
        Self {
            wide: SyntheticLatents::new(5, [16, 3, 4, 6], caps.clone(), dev).unwrap(),
            tall: SyntheticLatents::new(6, [16, 3, 6, 4], caps, dev).unwrap(),
            drawn: 0,
        }
    }
}

impl LatentSource for TwoAspects {
    fn batch(&mut self, n: usize) -> Result<LatentBatch> {
        self.drawn += 1;
        if self.drawn % 2 == 1 { self.wide.batch(n) } else { self.tall.batch(n) }
    }
    fn state(&self) -> serde_json::Value {
        serde_json::json!({ "wide": self.wide.state(), "tall": self.tall.state(), "drawn": self.drawn })
    }
    fn restore(&mut self, state: &serde_json::Value) -> Result<()> {
        self.wide.restore(&state["wide"])?;
        self.tall.restore(&state["tall"])?;
        self.drawn = state["drawn"].as_u64().unwrap();
        Ok(())
    }
}

fn with_images(cfg: &DitTrainConfig, share: f64, batches: usize) -> DitTrainConfig {
    DitTrainConfig { image_steps: Some(ImageSteps { share, batches }), ..cfg.clone() }
}

#[test]
fn an_image_step_is_a_clip_step_on_the_first_latent_frames() {
    let tmp = tempfile::tempdir().unwrap();
    let base = support::tiny_config(support::write_tokenizer(tmp.path()));
    let dev = Device::Cpu;
    let synthetic = || SyntheticLatents::new(5, [16, 3, 4, 6], support::captions(3), &dev).unwrap();

    let mut images = DitTrainer::new(&with_images(&base, 1.0, 1), &dev).unwrap();
    let mut clips_of_one_frame = DitTrainer::new(&base, &dev).unwrap();
    let (mut a, mut b) = (synthetic(), FirstFrames(synthetic(), 1));
    for _ in 0..3 {
        let sa = images.train_step(&mut a).unwrap();
        let sb = clips_of_one_frame.train_step(&mut b).unwrap();
        assert!(sa.images && !sb.images);
        assert_eq!((sa.samples, sb.samples), (2, 2));
        assert_eq!(sa.loss.to_bits(), sb.loss.to_bits());
    }
    assert_same_weights(&images, &clips_of_one_frame);
}

#[test]
fn image_steps_follow_the_share_and_draw_their_batches() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = with_images(&support::tiny_config(support::write_tokenizer(tmp.path())), 0.5, 3);
    let dev = Device::Cpu;
    let mut trainer = DitTrainer::new(&cfg, &dev).unwrap();
    let mut src = TwoAspects::new(&dev);
    let mut seen = Vec::new();
    for _ in 0..4 {
        let s = trainer.train_step(&mut src).unwrap();
        assert!(s.loss.is_finite() && s.loss > 0.0);
        seen.push((s.images, s.samples, src.drawn));
    }
    // clip step: 1 batch of 2; image step: 3 batches of 2 in two aspect ratios, one step
    assert_eq!(seen, vec![(false, 2, 1), (true, 6, 4), (false, 2, 5), (true, 6, 8)]);

    let spec = |share| ImageSteps { share, batches: 1 };
    let count = |share, n: u64| (0..n).filter(|&s| spec(share).is_image_step(s)).count();
    assert_eq!(count(0.25, 1000), 250);
    assert_eq!(count(0.3, 1000), 300);
    assert_eq!(count(1.0, 10), 10);
    assert_eq!((0..8).filter(|&s| spec(0.25).is_image_step(s)).collect::<Vec<_>>(), vec![3, 7]);
}

#[test]
fn a_resume_across_image_steps_is_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = with_images(&support::tiny_config(support::write_tokenizer(tmp.path())), 0.5, 2);
    let dev = Device::Cpu;
    let mut straight = DitTrainer::new(&cfg, &dev).unwrap();
    let mut src = TwoAspects::new(&dev);
    let losses: Vec<u64> = (0..5).map(|_| straight.train_step(&mut src).unwrap().loss.to_bits()).collect();

    let mut first = DitTrainer::new(&cfg, &dev).unwrap();
    let mut src1 = TwoAspects::new(&dev);
    let mut resumed: Vec<u64> = (0..2).map(|_| first.train_step(&mut src1).unwrap().loss.to_bits()).collect();
    let ckpt = tmp.path().join("ckpt");
    first.save(&ckpt, &src1).unwrap();
    let mut src2 = TwoAspects::new(&dev);
    let mut second = DitTrainer::resume(&cfg, &ckpt, &mut src2, &dev).unwrap();
    resumed.extend((2..5).map(|_| second.train_step(&mut src2).unwrap().loss.to_bits()));
    assert_eq!(losses, resumed);
    assert_same_weights(&straight, &second);
}

#[test]
fn bad_image_steps_are_refused_with_what_was_expected() {
    let tmp = tempfile::tempdir().unwrap();
    let base = support::tiny_config(support::write_tokenizer(tmp.path()));
    for (cfg, want) in [
        (with_images(&base, 0.0, 2), "expected image_steps.share in (0, 1], got 0"),
        (with_images(&base, 1.5, 2), "expected image_steps.share in (0, 1], got 1.5"),
        (with_images(&base, 0.5, 0), "expected image_steps.batches >= 1, got 0"),
    ] {
        assert_eq!(cfg.validate().unwrap_err(), want);
    }
    let mut temporal = with_images(&base, 0.5, 1);
    temporal.transformer.patch_size = [2, 2, 2];
    assert!(temporal.validate().unwrap_err().contains("patch_size[0] = 1"));
    let path = tmp.path().join("bad.json");
    let mut json = serde_json::to_value(with_images(&base, 0.5, 1)).unwrap();
    json["image_steps"]["batch"] = serde_json::json!(3);
    std::fs::write(&path, json.to_string()).unwrap();
    let err = DitTrainConfig::from_file(&path).unwrap_err().to_string();
    assert!(err.contains("unknown field `batch`"), "{err}");
}

#[test]
fn first_frames_and_grouping_keep_captions_and_masks_in_order() {
    let dev = Device::Cpu;
    let batch = |tag: f32, h: usize, w: usize, caps: &[&str]| LatentBatch {
        latents: Tensor::arange(0f32, (caps.len() * 2 * 3 * h * w) as f32, &dev).unwrap().affine(1.0, tag as f64).unwrap().reshape((caps.len(), 2, 3, h, w)).unwrap(),
        captions: caps.iter().map(|c| c.to_string()).collect(),
        foreground: Some(Tensor::ones((caps.len(), 1, 3, h, w), candle_core::DType::F32, &dev).unwrap()),
    };
    let b = batch(0.0, 2, 3, &["a", "b"]);
    let one = b.first_frames(1).unwrap();
    assert_eq!(one.latents.dims(), &[2, 2, 1, 2, 3]);
    assert_eq!(one.foreground.as_ref().unwrap().dims(), &[2, 1, 1, 2, 3]);
    assert_eq!(bits(&one.latents), bits(&b.latents.narrow(2, 0, 1).unwrap()));
    assert!(b.first_frames(0).is_err() && b.first_frames(4).is_err());

    let groups = LatentBatch::group_by_shape(vec![
        batch(0.0, 2, 3, &["a", "b"]),
        batch(100.0, 3, 2, &["c"]),
        batch(200.0, 2, 3, &["d"]),
    ])
    .unwrap();
    assert_eq!(groups.len(), 2);
    assert_eq!(groups[0].captions, vec!["a", "b", "d"]);
    assert_eq!(groups[0].latents.dims(), &[3, 2, 3, 2, 3]);
    assert_eq!(groups[0].foreground.as_ref().unwrap().dims(), &[3, 1, 3, 2, 3]);
    assert_eq!(groups[1].captions, vec!["c"]);
    let d = groups[0].latents.get(2).unwrap();
    assert_eq!(bits(&d), bits(&batch(200.0, 2, 3, &["d"]).latents.get(0).unwrap()));
}
