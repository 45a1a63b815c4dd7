//! `run_eval` end to end: reference clips score at the ceiling and the report files are written
//! and read back; a model (the tiny diffusers fixture) goes through `WanPipeline` like `ciak
//! generate`, and the VAE round trip runs through a real `AutoencoderKLWan`.
use candle_core::{DType, Device};
use ciak_engine::model_dir::WanModelDir;
use ciak_engine::pipeline::{LoadOptions, WanPipeline};
use ciak_train::eval::report::{markdown, write_report};
use ciak_train::eval::{run_eval, EvalReport, EvalSet, ModelSource, ReferenceSource, Roundtrip};
use std::path::PathBuf;

fn tiny_wan() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-wan");
    assert!(dir.join("model_index.json").is_file(), "missing fixture {} (run tests/fixtures/make_fixtures.py)", dir.display());
    dir
}

#[test]
fn reference_run_writes_a_passing_report() {
    let set = EvalSet::builtin();
    let source = ReferenceSource { roundtrip: Roundtrip::None };
    let mut seen = Vec::new();
    let report = run_eval(&set, &source, Some(9), 2, &mut |k, n, r, clip| {
        assert_eq!((clip.width, clip.height), r.expected_size());
        seen.push((k, n, r.id.clone()));
    })
    .unwrap();
    // Two single-object prompts, then one two-object prompt.
    let ids: Vec<&str> = seen.iter().map(|s| s.2.as_str()).collect();
    assert_eq!(ids, ["s00", "s01", "p00", "s02", "s03", "p01", "s04", "s05", "p02"]);
    assert!(seen.iter().all(|s| s.1 == 9));
    assert_eq!((report.summary.single.count, report.summary.pair[0].count), (6, 3));
    assert!(report.summary.passes, "{:?}", report.summary.failures);
    assert_eq!(report.summary.single.all, 1.0);

    let out = tempfile::tempdir().unwrap();
    let files = write_report(out.path(), &report, "ciak eval --reference --limit 9").unwrap();
    assert_eq!(files.len(), 3);
    let md = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    assert!(md.contains("| single object | 6 | 100.0% | 100.0% | 100.0% | 100.0% | 100.0% |"), "{md}");
    assert!(md.contains("bar: met") && md.contains("ciak eval --reference --limit 9") && md.contains("| s00 |"));
    let back: EvalReport = serde_json::from_str(&std::fs::read_to_string(out.path().join("results.json")).unwrap()).unwrap();
    assert_eq!(back.results.len(), 9);
    assert_eq!(back.results[2].analysis.objects.len(), 2);
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(out.path().join("contact_sheet.png")).unwrap()));
    let info = decoder.read_info().unwrap().info().clone();
    // Three prompts a row, each a bar plus three 224-pixel cells; three rows.
    assert_eq!((info.width, info.height), (3 * (8 + 3 * 228) + 4, 3 * 228 + 4));
}

#[test]
fn a_wrong_clip_source_fails_the_bar() {
    // Clips of the *next* prompt's scene: right kind of data, wrong content.
    struct Shifted(EvalSet);
    impl ciak_train::eval::ClipSource for Shifted {
        fn describe(&self) -> String {
            "shifted".into()
        }
        fn clip(&self, index: usize, _: &ciak_train::eval::EvalPrompt) -> ciak_train::eval::Result<ciak_train::eval::SourcedClip> {
            let n = self.0.prompts.len();
            let other = &self.0.prompts[(index + 1) % n];
            Ok(ciak_train::eval::SourcedClip { clip: ciak_train::world::render(&other.scene), timings: Vec::new() })
        }
    }
    let set = EvalSet::builtin();
    let source = Shifted(set.clone());
    let report = run_eval(&set, &source, Some(12), 1, &mut |_, _, _, _| {}).unwrap();
    assert!(!report.summary.passes);
    assert!(report.summary.single.color < 0.5 && report.summary.single.motion < 0.5, "{:?}", report.summary.single);
    let md = markdown(&report, "test");
    assert!(md.contains("bar: NOT met"), "{md}");
}

#[test]
fn model_source_runs_the_pipeline_and_vae_roundtrip() {
    let dir = WanModelDir::open(&tiny_wan()).unwrap();
    let pipe = WanPipeline::load(&dir, &LoadOptions { device: Device::Cpu, dtype: DType::F32, vae_dtype: DType::F32 }).unwrap();
    let set = EvalSet::builtin();
    let source = ModelSource {
        pipe: &pipe,
        model: "tiny-wan".into(),
        steps: 2,
        guidance: 5.0,
        guidance_below: None,
        image_first: false,
        seed: 7,
        negative_prompt: String::new(),
    };
    let mut frames = Vec::new();
    let report = run_eval(&set, &source, Some(3), 1, &mut |_, _, r, clip| {
        frames.push(clip.pixels.clone());
        assert_eq!((clip.width, clip.height, clip.frames), (r.expected_size().0, r.expected_size().1, 25));
    })
    .unwrap();
    assert_eq!(report.results.len(), 3);
    let stages: Vec<&str> = report.results[0].timings.iter().map(|t| t.0.as_str()).collect();
    assert_eq!(stages, ["text", "denoise", "decode"]);
    assert!(report.source.contains("tiny-wan") && report.source.contains("2 steps"), "{}", report.source);
    // Same seed, same clip: the eval is reproducible, also with the prompts made side by side
    // (and handed over in the set's order).
    let mut k = 0;
    let again = run_eval(&set, &source, Some(3), 3, &mut |_, _, _, clip| {
        assert!(clip.pixels == frames[k], "prompt {k} differs when made beside others");
        k += 1;
    })
    .unwrap();
    assert_eq!(k, 3);
    for (a, b) in again.results.iter().zip(&report.results) {
        assert_eq!((&a.id, &a.analysis), (&b.id, &b.analysis));
    }

    let vae = ReferenceSource { roundtrip: Roundtrip::Vae(&pipe.vae) };
    let report = run_eval(&set, &vae, Some(1), 1, &mut |_, _, r, clip| {
        assert_eq!((clip.width, clip.height, clip.frames), (r.expected_size().0, r.expected_size().1, 25));
    })
    .unwrap();
    assert_eq!(report.results[0].timings.iter().map(|t| t.0.as_str()).collect::<Vec<_>>(), ["render", "vae"]);
}

trait Size {
    fn expected_size(&self) -> (usize, usize);
}

impl Size for ciak_train::eval::PromptResult {
    fn expected_size(&self) -> (usize, usize) {
        self.aspect.parse::<ciak_train::world::Aspect>().unwrap().size()
    }
}
