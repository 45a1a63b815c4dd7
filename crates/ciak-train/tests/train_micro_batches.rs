//! A batch split into micro-batches (`micro_batches`: parts whose forward and backward passes run
//! side by side on the CPU's threads) makes the whole batch's step: the parts' losses are divided
//! by the whole batch's weights, so their gradients add up to the batch's. Checked with every term
//! that has weights of its own (foreground weights that differ per clip, the motion term, clean
//! first frames) and with image steps of two aspect ratios.
#[path = "train_support.rs"]
mod support;

use candle_core::{Device, Tensor};
use ciak_train::train::dit::{DitTrainer, ImageSteps, SyntheticLatents};
use ciak_train::train::{DitTrainConfig, LatentBatch, LatentSource, Result};

/// Another source's clips with a foreground mask that covers a different number of cells in each
/// clip (clip i of a batch: i + 1 cells of every latent frame, moving one cell a frame), so the
/// parts of a split batch carry different shares of the batch's weight.
struct UnevenForeground(SyntheticLatents);

impl LatentSource for UnevenForeground {
    fn batch(&mut self, n: usize) -> Result<LatentBatch> {
        let mut batch = self.0.batch(n)?;
        let dims = batch.latents.dims().to_vec();
        let (f, cells) = (dims[2], dims[3] * dims[4]);
        let mut mask = vec![0f32; n * f * cells];
        for clip in 0..n {
            for frame in 0..f {
                for k in 0..=clip {
                    mask[(clip * f + frame) * cells + (frame + k) % cells] = 1.0;
                }
            }
        }
        batch.foreground = Some(Tensor::from_vec(mask, (n, 1, f, dims[3], dims[4]), batch.latents.device())?);
        Ok(batch)
    }
    fn state(&self) -> serde_json::Value {
        self.0.state()
    }
    fn restore(&mut self, state: &serde_json::Value) -> Result<()> {
        self.0.restore(state)
    }
}

fn source(shape: [usize; 4]) -> UnevenForeground {
    UnevenForeground(SyntheticLatents::new(5, shape, support::captions(3), &Device::Cpu).unwrap())
}

/// Steps of the same run with the batch whole and split into `parts`: (loss, gradient norm) per step.
fn steps(cfg: &DitTrainConfig, parts: usize, n: usize, source: &mut dyn LatentSource) -> Vec<(f64, f64)> {
    let mut trainer = DitTrainer::new(cfg, &Device::Cpu).unwrap();
    trainer.set_micro_batches(parts);
    (0..n).map(|_| trainer.train_step(source).map(|s| (s.loss, s.grad_norm)).unwrap()).collect()
}

fn assert_same_steps(whole: &[(f64, f64)], split: &[(f64, f64)], what: &str) {
    for (i, (a, b)) in whole.iter().zip(split).enumerate() {
        let rel = |x: f64, y: f64| (x - y).abs() / x.abs().max(1e-12);
        assert!(rel(a.0, b.0) < 1e-5, "{what}, step {}: loss {} whole, {} split", i + 1, a.0, b.0);
        assert!(rel(a.1, b.1) < 1e-4, "{what}, step {}: gradient norm {} whole, {} split", i + 1, a.1, b.1);
    }
}

#[test]
fn a_split_batch_makes_the_whole_batchs_step() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = DitTrainConfig {
        batch_size: 5,
        foreground_weight: 3.0,
        temporal_weight: 1.0,
        first_frame_share: 0.5,
        ..support::tiny_config(support::write_tokenizer(tmp.path()))
    };
    let whole = steps(&cfg, 1, 3, &mut source([16, 3, 4, 6]));
    // 5 clips as 2 + 2 + 1, and as one clip per part
    for parts in [3, 5] {
        assert_same_steps(&whole, &steps(&cfg, parts, 3, &mut source([16, 3, 4, 6])), &format!("{parts} parts"));
    }
    // more parts than clips: one clip each
    assert_same_steps(&whole, &steps(&cfg, 8, 3, &mut source([16, 3, 4, 6])), "8 parts");
}

#[test]
fn image_steps_of_two_aspects_split_the_same_way() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = DitTrainConfig {
        batch_size: 3,
        foreground_weight: 2.0,
        image_steps: Some(ImageSteps { share: 0.5, batches: 2 }),
        ..support::tiny_config(support::write_tokenizer(tmp.path()))
    };
    /// Batches of two latent sizes in turn.
    struct TwoAspects(UnevenForeground, UnevenForeground, u64);
    impl LatentSource for TwoAspects {
        fn batch(&mut self, n: usize) -> Result<LatentBatch> {
            self.2 += 1;
            if self.2 % 2 == 1 { self.0.batch(n) } else { self.1.batch(n) }
        }
        fn state(&self) -> serde_json::Value {
            serde_json::json!([self.0.state(), self.1.state(), self.2])
        }
        fn restore(&mut self, state: &serde_json::Value) -> Result<()> {
            self.0.restore(&state[0])?;
            self.1.restore(&state[1])?;
            self.2 = state[2].as_u64().unwrap();
            Ok(())
        }
    }
    let two = || TwoAspects(source([16, 3, 4, 6]), source([16, 3, 6, 4]), 0);
    let whole = steps(&cfg, 1, 4, &mut two());
    assert_same_steps(&whole, &steps(&cfg, 2, 4, &mut two()), "2 parts");
}

#[test]
fn zero_micro_batches_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = DitTrainConfig { micro_batches: Some(0), ..support::tiny_config(support::write_tokenizer(tmp.path())) };
    let err = DitTrainer::new(&cfg, &Device::Cpu).err().expect("micro_batches 0 must be refused").to_string();
    assert!(err.contains("expected micro_batches >= 1, got 0"), "{err}");
}
