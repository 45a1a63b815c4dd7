//! `ciak bench` as a user types it: the real Wan2.1-T2V-1.3B architecture with random weights at
//! a tiny size on the CPU, a model folder with its own weights, and the parity mode that a GPU
//! machine runs (f32 tight, bf16 at its stated tolerances, and a failing run when over).
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixtures() -> PathBuf {
    let p = repo().join("tests/fixtures");
    assert!(p.join("tiny-wan").is_dir(), "missing fixture {} (see tests/fixtures/README.md)", p.display());
    p
}

fn ciak(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ciak")).current_dir(dir).args(args).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).to_string()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

/// Parameter count diffusers reports for a real model (tests/fixtures/keys).
fn diffusers_params(keys: &str) -> u64 {
    read_json(&fixtures().join("keys").join(keys))["num_parameters"].as_u64().unwrap()
}

fn seconds(v: &Value, what: &str) -> f64 {
    let s = v.as_f64().unwrap_or_else(|| panic!("{what}: expected seconds, got {v}"));
    assert!(s > 0.0 && s.is_finite(), "{what}: {s}");
    s
}

/// The fields every bench report has, with stage times that add up.
fn check_stages(r: &Value, steps: usize) {
    let st = &r["stages"];
    let fwd = &st["transformer_forward"];
    let median = seconds(&fwd["seconds"], "forward");
    assert!(seconds(&fwd["min_s"], "min") <= median && median <= seconds(&fwd["max_s"], "max"));
    let sampling = &st["sampling"];
    let per_step: Vec<f64> = sampling["step_seconds"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!(per_step.len(), steps);
    let sampling_s = seconds(&sampling["seconds"], "sampling");
    assert!(per_step.iter().sum::<f64>() <= sampling_s * 1.001, "steps {per_step:?} within sampling {sampling_s}");
    let decode = seconds(&st["vae_decode"]["seconds"], "decode");
    let text = st["text_encoder"]["seconds"].as_f64().unwrap_or(0.0);
    let total = seconds(&st["total"]["seconds"], "total");
    assert!((total - (text + sampling_s + decode)).abs() < 1e-6, "total {total} = text + sampling + decode");
    assert!(seconds(&r["wall_s"], "wall") >= total);
    // CPU time (Linux): a second opinion on a shared machine, where wall time includes waiting.
    assert!(st["total"]["cpu_s"].as_f64().is_some_and(|c| c >= 0.0), "{}", st["total"]);
}

#[test]
fn wan21_1_3b_architecture_runs_on_cpu_at_a_tiny_size() {
    // f32 weights: 5.7 GB, but on this CPU faster to build and run than bf16 (see docs/performance.md).
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "bench", "--model", "wan2.1-1.3b", "--size", "64x64", "--frames", "5", "--steps", "1", "--text-encoder", "tiny",
        "--warmup", "0", "--reps", "1", "--json", "out.json",
    ];
    let out = ciak(dir.path(), &args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let r = read_json(&dir.path().join("out.json"));
    assert_eq!(r["model"], "wan2.1-1.3b");
    assert_eq!((r["device"].as_str(), r["dtype"].as_str(), r["vae_dtype"].as_str()), (Some("cpu"), Some("f32"), Some("f32")));
    assert_eq!(r["latent_shape"], serde_json::json!([1, 16, 2, 8, 8]));
    assert_eq!(r["tokens"], 32);
    assert_eq!((r["cfg"].as_bool(), r["scheduler"].as_str()), (Some(true), Some("unipc")));
    let b = &r["build"];
    assert_eq!(b["weights"], "random");
    assert_eq!(b["text_encoder_kind"], "umt5-tiny");
    // Exactly the tensors of the real model: diffusers' own parameter counts.
    let transformer = diffusers_params("wan21_t2v_1_3b_transformer.json");
    assert_eq!(b["transformer"]["params"].as_u64(), Some(transformer));
    assert_eq!(b["vae"]["params"].as_u64(), Some(diffusers_params("wan21_vae.json")));
    assert!(b["text_encoder"]["params"].as_u64().unwrap() > 0);
    check_stages(&r, 1);
    assert_eq!(r["stages"]["sampling"]["batch"], 2);
    assert!(r["stages"]["text_encoder"]["seconds"].as_f64().unwrap() > 0.0);
    // The f32 weights are resident: the peak is at least their size.
    let peak = r["peak_memory"]["host_rss_bytes"].as_u64().expect("VmHWM on Linux");
    assert!(peak >= transformer * 4, "peak {peak} below the transformer's {} bytes", transformer * 4);
    assert_eq!(r["peak_memory"]["device_bytes"].as_u64(), Some(peak));
    let table = text(&out.stdout);
    for row in ["build transformer", "text encoder (umt5-tiny)", "transformer forward (batch 1)", "sampling (1 steps)", "VAE decode", "total", "peak memory (host RSS)"] {
        assert!(table.contains(row), "table lacks `{row}`:\n{table}");
    }
    assert!(table.contains("1.419 B params"), "{table}");
}

#[test]
fn a_model_folder_runs_with_its_own_weights() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = fixtures().join("tiny-wan");
    // the tiny parity checkpoint and the built-in model (embedded from models/builtin)
    let models = [tiny.to_str().unwrap().to_string(), "builtin".to_string()];
    for model in &models {
        for text_encoder in ["auto", "skip"] {
            let args = [
                "bench", "--model", model, "--size", "32x32", "--frames", "5", "--steps", "2", "--text-encoder", text_encoder,
                "--json", "folder.json",
            ];
            let out = ciak(dir.path(), &args);
            assert!(out.status.success(), "{model}: {}", text(&out.stderr));
            let r = read_json(&dir.path().join("folder.json"));
            assert_eq!(r["model"].as_str(), Some(model.as_str()));
            assert_eq!(r["build"]["weights"], "files");
            assert!(r["build"]["transformer"]["params"].is_null());
            assert_eq!(r["stages"]["transformer_forward"]["runs"].as_array().unwrap().len(), 3);
            check_stages(&r, 2);
            if text_encoder == "skip" {
                assert!(r["stages"]["text_encoder"].is_null() && r["build"]["text_encoder"].is_null());
                assert!(text(&out.stdout).contains("skipped"));
            } else {
                assert!(r["stages"]["text_encoder"]["seconds"].as_f64().unwrap() > 0.0);
                assert_eq!(r["build"]["text_encoder_kind"], "folder");
            }
        }
    }
}

#[test]
fn forward_only_times_the_transformer_alone_with_any_attention_block() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = fixtures().join("tiny-wan");
    // 32x32x5 is 8 tokens and the tiny model has 2 heads: 8 score elements are blocks of 4 query rows
    for scores in [None, Some("8")] {
        let mut args = vec![
            "bench", "--model", tiny.to_str().unwrap(), "--size", "32x32", "--frames", "5", "--text-encoder", "skip",
            "--forward-only", "--reps", "2", "--json", "fwd.json",
        ];
        if let Some(n) = scores {
            args.extend_from_slice(&["--attention-scores", n]);
        }
        let out = ciak(dir.path(), &args);
        assert!(out.status.success(), "{scores:?}: {}", text(&out.stderr));
        let r = read_json(&dir.path().join("fwd.json"));
        let st = &r["stages"];
        assert_eq!(st["transformer_forward"]["runs"].as_array().unwrap().len(), 2);
        seconds(&st["transformer_forward"]["seconds"], "forward");
        for skipped in ["sampling", "vae_decode", "total", "text_encoder"] {
            assert!(st[skipped].is_null(), "{skipped}: {}", st[skipped]);
        }
        assert_eq!(r["attention_score_budget"].as_u64(), Some(scores.map_or(1 << 26, |n| n.parse().unwrap())));
        let table = text(&out.stdout);
        assert!(table.contains("--forward-only") && table.contains("attention: blocks of"), "{table}");
    }
}

#[test]
fn decode_only_times_the_vae_alone() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = fixtures().join("tiny-wan");
    let args = [
        "bench", "--model", tiny.to_str().unwrap(), "--size", "32x32", "--frames", "5", "--text-encoder", "skip",
        "--decode-only", "--warmup", "0", "--reps", "3", "--json", "dec.json",
    ];
    let out = ciak(dir.path(), &args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let r = read_json(&dir.path().join("dec.json"));
    let st = &r["stages"];
    let decode = &st["vae_decode_only"];
    assert_eq!(decode["runs"].as_array().unwrap().len(), 3);
    let median = seconds(&decode["seconds"], "decode");
    assert!(seconds(&decode["min_s"], "min") <= median && median <= seconds(&decode["max_s"], "max"));
    for skipped in ["transformer_forward", "sampling", "vae_decode", "total", "text_encoder"] {
        assert!(st[skipped].is_null(), "{skipped}: {}", st[skipped]);
    }
    let table = text(&out.stdout);
    assert!(table.contains("VAE decode") && table.contains("--decode-only"), "{table}");
    // one stage alone: the two are exclusive
    let both = ciak(dir.path(), &["bench", "--forward-only", "--decode-only"]);
    assert_eq!(both.status.code(), Some(2), "{}", text(&both.stderr));
}

fn parity(dir: &Path, extra: &[&str]) -> (Output, Value) {
    let fixtures = fixtures();
    let mut args = vec!["bench", "--parity", fixtures.to_str().unwrap(), "--json", "parity.json"];
    args.extend_from_slice(extra);
    let out = ciak(dir, &args);
    (out, read_json(&dir.join("parity.json")))
}

#[test]
fn parity_mode_passes_in_f32_and_bf16_on_cpu() {
    let dir = tempfile::tempdir().unwrap();
    for (dtype, max_tol) in [("f32", 1e-4), ("bf16", 8e-2)] {
        let (out, r) = parity(dir.path(), &["--dtype", dtype]);
        assert!(out.status.success(), "{dtype}: {}{}", text(&out.stdout), text(&out.stderr));
        assert_eq!((r["device"].as_str(), r["dtype"].as_str(), r["passed"].as_bool()), (Some("cpu"), Some(dtype), Some(true)));
        let checks = r["checks"].as_array().unwrap();
        let names: Vec<&str> = checks.iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(
            names,
            [
                "umt5.prompt_embeds",
                "transformer_t2v.output",
                "vae.decode.output",
                "pipeline.final_latents",
                "pipeline.frames",
                "pipeline_euler.final_latents",
                "pipeline_euler.frames"
            ]
        );
        for c in checks {
            let (rel, tol) = (c["relative_error"].as_f64().unwrap(), c["tolerance"].as_f64().unwrap());
            assert!(rel <= tol && tol <= max_tol && c["scale"].as_f64().unwrap() > 0.0, "{dtype}: {c}");
            if dtype == "bf16" && !c["name"].as_str().unwrap().starts_with("vae") {
                // bf16 weights must show bf16-sized errors: a run that silently stayed in f32 fails.
                assert!(rel > 1e-4, "{dtype}: {c}");
            }
        }
        assert!(text(&out.stdout).contains("all within tolerance"));
    }
}

#[test]
fn parity_mode_fails_when_a_check_is_over_tolerance() {
    let dir = tempfile::tempdir().unwrap();
    let (out, r) = parity(dir.path(), &["--dtype", "bf16", "--tolerance", "1e-3"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert_eq!(r["passed"], false);
    let err = text(&out.stderr);
    assert!(err.starts_with("error: parity failed on cpu bf16: umt5.prompt_embeds, transformer_t2v.output"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(text(&out.stdout).contains("FAILED"));
}

#[test]
fn bad_options_are_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&[&str], &str); 8] = [
        (&["--size", "40x64"], "expected width a multiple of 16, got 40"),
        (&["--attention-scores", "0"], "expected --attention-scores >= 1 (score elements per attention block), got 0"),
        (&["--frames", "6"], "expected frames = 1+4k, got 6"),
        (&["--size", "big"], "expected --size WIDTHxHEIGHT"),
        (&["--device", "tpu"], "expected --device cpu or cuda, got `tpu`"),
        (&["--text-encoder", "huge"], "expected text encoder auto, tiny, xxl or skip, got `huge`"),
        (&["--model", "/no/such/model"], "model `/no/such/model` not found"),
        (&["--parity", "/no/such/fixtures"], "/no/such/fixtures/tiny-wan"),
    ];
    for (extra, want) in cases {
        let mut args = vec!["bench", "--steps", "1"];
        args.extend_from_slice(extra);
        let out = ciak(dir.path(), &args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{extra:?}: {err}");
        assert!(err.starts_with("error: ") && err.contains(want), "{extra:?}: got `{err}`, wanted `{want}`");
        assert_eq!(err.lines().count(), 1, "{extra:?}: {err}");
    }
    let out = ciak(dir.path(), &["bench", "--tolerance", "1e-3"]);
    assert_eq!(out.status.code(), Some(2), "--tolerance needs --parity");
}
