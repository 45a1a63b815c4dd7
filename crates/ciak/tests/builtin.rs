//! The built-in model as a user meets it: `ciak generate "PROMPT"` with no other flag, the other
//! aspect ratios, unknown words, and a damaged copy in the cache. Each test extracts the model
//! into its own cache folder (`CIAK_CACHE`).
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn ciak(dir: &Path, cache: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ciak")).current_dir(dir).env("CIAK_CACHE", cache).args(args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn ok(o: Output) -> String {
    assert!(o.status.success(), "{}", stderr(&o));
    stderr(&o)
}

/// The extracted model folder in `cache` (one `builtin-<hash>` folder).
fn extracted(cache: &Path) -> PathBuf {
    let found: Vec<PathBuf> = std::fs::read_dir(cache)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("builtin-"))
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    found[0].clone()
}

#[test]
fn the_repo_ships_the_builtin_model_within_40_mb() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/builtin");
    let mut total = 0u64;
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())).flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                total += entry.metadata().unwrap().len();
            }
        }
    }
    for part in ["model_index.json", "ciak.json", "transformer/config.json", "text_encoder/config.json", "tokenizer/tokenizer.json", "vae/config.json", "scheduler/scheduler_config.json"] {
        assert!(root.join(part).is_file(), "models/builtin/{part} is missing");
    }
    assert!(total <= 40 << 20, "models/builtin holds {total} bytes, more than 40 MB");
}

#[test]
fn generate_with_no_flag_renders_the_default_clip() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let prompt = "a red ball moves to the right on a blue background";
    let err = ok(ciak(dir.path(), &cache, &["generate", prompt]));
    // the name carries a random seed: find the one clip written
    let written: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "mp4"))
        .collect();
    assert_eq!(written.len(), 1, "{written:?} ({err})");
    let info = ciak_engine::video::read_mp4_info(&written[0]).unwrap();
    assert_eq!((info.width, info.height, info.frames), (224, 128, 25), "{info:?}");
    assert!((info.fps - 12.0).abs() < 1e-6 && info.duration_secs >= 2.0, "{info:?}");
    let recipe: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(written[0].with_extension("json")).unwrap()).unwrap();
    assert_eq!((recipe["model"].as_str(), recipe["steps"].as_u64()), (Some("builtin"), Some(12)), "{recipe}");
    // frames are not blank: the decoded clip has colour
    let frames = ciak_engine::video::decode_mp4(&written[0]).unwrap();
    let f = &frames[12].data;
    let mean = f.iter().map(|&v| v as f64).sum::<f64>() / f.len() as f64;
    let var = f.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / f.len() as f64;
    assert!(var > 1.0, "frame 12 is flat: mean {mean}, variance {var}");
}

#[test]
fn other_aspects_use_the_trained_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    for (aspect, size) in [("9:16", (128, 224)), ("1:1", (160, 160))] {
        let out = format!("{}.mp4", aspect.replace(':', "x"));
        ok(ciak(dir.path(), &cache, &["generate", "a blue square moves up", "--aspect", aspect, "--steps", "2", "-o", &out]));
        let info = ciak_engine::video::read_mp4_info(&dir.path().join(&out)).unwrap();
        assert_eq!((info.width, info.height, info.frames), (size.0, size.1, 25), "{aspect}: {info:?}");
    }
}

#[test]
fn unknown_words_still_generate_and_verbose_names_them() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let err = ok(ciak(
        dir.path(),
        &cache,
        &["generate", "a red ball moves to the right beside a xylophone", "--steps", "2", "--verbose", "-o", "x.mp4"],
    ));
    assert!(err.contains("words the model does not know (ignored): beside, xylophone"), "{err}");
    assert!(dir.path().join("x.mp4").is_file());
}

#[test]
fn a_damaged_cache_copy_is_a_clear_error_and_a_missing_file_is_restored() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let args = ["generate", "a green star spins", "--steps", "1", "--frames", "5", "-o", "c.mp4", "--force"];
    ok(ciak(dir.path(), &cache, &args));
    let model = extracted(&cache);
    let weights = model.join("transformer/diffusion_pytorch_model.safetensors");

    // same size, garbage header: the loader names the file; nothing is written
    std::fs::remove_file(dir.path().join("c.mp4")).unwrap();
    let mut bytes = std::fs::read(&weights).unwrap();
    bytes[..16].copy_from_slice(b"not a safetensor");
    std::fs::write(&weights, &bytes).unwrap();
    let out = ciak(dir.path(), &cache, &args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("diffusion_pytorch_model.safetensors"), "{err}");
    // progress lines come first (the model was being loaded); the error is one line, the last
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "not one error line: {err}");
    assert!(err.trim_end().lines().last().unwrap().starts_with("error: corrupt weights file"), "{err}");
    assert!(!err.contains("panicked") && !dir.path().join("c.mp4").exists(), "{err}");

    // a missing file is written again from the binary
    std::fs::remove_file(&weights).unwrap();
    ok(ciak(dir.path(), &cache, &args));
    assert!(weights.is_file() && dir.path().join("c.mp4").is_file());
}

#[test]
fn eval_scores_the_builtin_model_and_refuses_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let out = ciak(dir.path(), &cache, &["eval", "--limit", "3", "--steps", "2", "--out", "ev"]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let table = String::from_utf8_lossy(&out.stdout).to_string() + &err;
    for word in ["colour", "shape", "motion", "background", "flicker"] {
        assert!(table.to_lowercase().contains(word), "no {word} in the summary: {table}");
    }
    for file in ["report.md", "results.json", "contact_sheet.png"] {
        assert!(dir.path().join("ev").join(file).is_file(), "missing {file}");
    }
    let report = std::fs::read_to_string(dir.path().join("ev/report.md")).unwrap();
    assert!(report.contains("model builtin: 2 steps, guidance 3"), "the report names its settings: {report}");

    // ground truth meets the bar, so --check passes on it
    ok(ciak(dir.path(), &cache, &["eval", "--reference", "--limit", "6", "--check", "--out", "ref"]));

    // a prompt file whose scene the world cannot draw is refused before anything is scored
    let set = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../eval/prompts-single-plain.json")).unwrap();
    let bad = set.replacen("\"camera\": null", "\"camera\": null, \"object_scale\": 0", 1);
    assert_ne!(bad, set);
    std::fs::write(dir.path().join("bad-scale.json"), bad).unwrap();
    for (args, want) in [
        (vec!["eval", "--reference", "--prompts", "bad-scale.json", "--out", "bad"], "prompt s00's scene: expected `object_scale` in [0.25, 3], got 0"),
        (vec!["eval", "--limit", "0"], "expected --limit of at least 1, got 0"),
        (vec!["eval", "--steps", "0"], "expected --steps of at least 1, got 0"),
        (vec!["eval", "--jobs", "0"], "expected --jobs of at least 1, got 0"),
        (vec!["eval", "--jobs", "2", "--device", "cuda"], "expected --jobs 1 with --device cuda (a GPU makes one clip at a time), got 2"),
        (vec!["eval", "--guidance=-1"], "expected --guidance >= 0, got -1"),
        (vec!["eval", "--guidance-below", "0"], "expected --guidance-below in (0, 1], got 0"),
        (vec!["eval", "--model", "no/such-model", "--limit", "1"], "model `no/such-model` not found"),
    ] {
        let out = ciak(dir.path(), &cache, &args);
        let err = stderr(&out);
        assert!(matches!(out.status.code(), Some(1) | Some(2)), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: got `{err}`, wanted `{want}`");
        assert!(!err.contains("panicked"), "{err}");
    }
    assert!(!dir.path().join("bad").exists(), "a refused prompt file writes nothing");
}
