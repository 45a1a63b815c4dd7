//! `ciak train` as a user types it, at toy size: VAE -> latent cache -> DiT -> exported folder
//! that `ciak generate --model DIR` renders, `train all` with resume, and bad input.
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn ciak(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ciak")).current_dir(dir).args(args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!("stdout:\n{}\nstderr:\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn ok(o: Output) -> String {
    assert!(o.status.success(), "{}", text(&o));
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// A failure is one line on stderr naming the problem, a nonzero exit, no panic.
fn fails(o: Output, needle: &str) {
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success(), "expected a failure: {}", text(&o));
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "expected one line: {err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
}

fn write(path: &Path, v: &Value) {
    std::fs::write(path, serde_json::to_string_pretty(v).unwrap()).unwrap();
}

/// A VAE of base_dim 4 on 16x16 crops of 5 frames, 2 steps.
fn tiny_vae() -> Value {
    json!({
        "seed": 3,
        "vae": { "base_dim": 4, "num_res_blocks": 1, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "temperal_downsample": [false, true, true] },
        "batch_size": 1, "clip_frames": 5, "crop": [16, 16], "steps": 2, "lr": 0.003, "warmup_steps": 1,
        "loss": { "l1": 1.0, "l2": 1.0, "edge": 0.5, "kl": 1e-5 },
        "checkpoint_every": 1, "eval_clips": 1, "stats_clips": 2
    })
}

/// A 2-layer DiT of width 48 and a 2-layer text encoder of width 32, 3 steps, 3 cached clips.
fn tiny_dit() -> Value {
    json!({
        "seed": 5,
        "transformer": { "num_attention_heads": 2, "attention_head_dim": 24, "ffn_dim": 96, "num_layers": 2, "freq_dim": 64 },
        "text_encoder": { "d_model": 32, "d_kv": 8, "num_heads": 4, "num_layers": 2, "d_ff": 64 },
        "tokenizer": "builtin",
        "text_len": 16, "batch_size": 1, "steps": 3, "lr": 0.001, "warmup_steps": 1, "ema_decay": 0.5,
        "checkpoint_every": 2, "foreground_weight": 2.0,
        "latents": { "clips": 3, "seed": 2, "placement_spread": 0.5, "amount_spread": 0.0, "object_count_weights": [0, 1, 0] },
        "generation": { "width": 64, "height": 48, "frames": 5, "fps": 8.0, "steps": 2, "guidance": 4.0, "negative_prompt": "",
                        "sizes": [[64, 48], [48, 64]] }
    })
}

fn setup() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("vae.json"), &tiny_vae());
    write(&dir.path().join("dit.json"), &tiny_dit());
    let root = dir.path().to_path_buf();
    (dir, root)
}

/// The exported folder renders with its own ciak.json defaults (size, frames, fps, steps).
fn generates(dir: &Path, model: &Path) {
    let m = model.to_str().unwrap();
    ok(ciak(dir, &["generate", "--model", m, "a red ball moves left", "--seed", "1", "-o", "clip.mp4"]));
    let info = ciak_engine::video::read_mp4_info(&dir.join("clip.mp4")).unwrap();
    assert_eq!((info.width, info.height, info.frames), (64, 48, 5), "{info:?}");
    assert!((info.fps - 8.0).abs() < 1e-6, "{info:?}");
    let recipe: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("clip.json")).unwrap()).unwrap();
    assert_eq!(recipe["steps"], 2, "{recipe}");
    // --aspect picks the trained size of that shape from ciak.json's sizes
    ok(ciak(dir, &["generate", "--model", m, "a red ball moves left", "--aspect", "3:4", "--steps", "1", "-o", "tall.mp4"]));
    let info = ciak_engine::video::read_mp4_info(&dir.join("tall.mp4")).unwrap();
    assert_eq!((info.width, info.height), (48, 64), "{info:?}");
}

#[test]
fn vae_latents_dit_stages_pause_resume_export_and_generate() {
    let started = std::time::Instant::now();
    let (_tmp, d) = setup();
    let out = ok(ciak(&d, &["train", "vae", "--config", "vae.json", "--out", "run/vae", "--log-every", "1"]));
    assert!(out.contains("vae: step 2/2") && out.contains("clips/s") && out.contains("ETA"), "{out}");
    assert!(d.join("run/vae/vae/config.json").is_file() && d.join("run/vae/loss.png").is_file(), "{out}");

    let out = ok(ciak(&d, &["train", "latents", "--vae", "run/vae/vae", "--count", "3", "--seed", "2", "--out", "run/lat"]));
    assert!(out.contains("latents: done, 3 clips"), "{out}");
    // a resumed build finds every shard written and encodes nothing
    let out = ok(ciak(&d, &["train", "latents", "--vae", "run/vae/vae", "--count", "3", "--seed", "2", "--out", "run/lat", "--resume"]));
    assert!(out.contains("(0 encoded now"), "{out}");

    let dit = ["train", "dit", "--config", "dit.json", "--latents", "run/lat", "--vae", "run/vae/vae", "--out", "run/dit"];
    let out = ok(ciak(&d, &[&dit[..], &["--max-seconds", "0", "--log-every", "1"]].concat()));
    assert!(out.contains("dit: step 1/3") && out.contains("paused at step 1/3"), "{out}");
    assert!(!d.join("run/dit/model").exists(), "{out}");
    // the paused checkpoint without its optimizer part (as it comes back from the GPU machine)
    // goes on with --fresh-optimizer
    std::fs::create_dir_all(d.join("run/moved/checkpoint")).unwrap();
    for f in ["model.safetensors", "ema.safetensors", "state.json"] {
        std::fs::copy(d.join("run/dit/checkpoint").join(f), d.join("run/moved/checkpoint").join(f)).unwrap();
    }
    let moved = ["train", "dit", "--config", "dit.json", "--latents", "run/lat", "--vae", "run/vae/vae", "--out", "run/moved", "--resume"];
    fails(ciak(&d, &moved), "missing part `optim`");
    let out = ok(ciak(&d, &[&moved[..], &["--fresh-optimizer", "--log-every", "1"]].concat()));
    assert!(out.contains("resuming after step 1") && out.contains("dit: step 3/3"), "{out}");
    let out = ok(ciak(&d, &[&dit[..], &["--resume", "--log-every", "1"]].concat()));
    assert!(out.contains("resuming after step 1") && out.contains("dit: step 3/3") && !out.contains("step 1/3"), "{out}");
    let model = d.join("run/dit/model");
    let defaults: Value = serde_json::from_str(&std::fs::read_to_string(model.join("ciak.json")).unwrap()).unwrap();
    assert_eq!(defaults["width"], 64);
    for part in ["model_index.json", "transformer/config.json", "text_encoder/config.json", "tokenizer/tokenizer.json", "vae/config.json"] {
        assert!(model.join(part).is_file(), "missing {part}");
    }
    generates(&d, &model);

    // a config in another folder that goes on from the exported model (its `init_from` taken
    // from the config's folder), with the motion term on
    let mut init = tiny_dit();
    init["init_from"] = "../run/dit/model".into();
    init["temporal_weight"] = 1.0.into();
    std::fs::create_dir_all(d.join("cfg")).unwrap();
    write(&d.join("cfg/init.json"), &init);
    let out = ok(ciak(&d, &["train", "dit", "--config", "cfg/init.json", "--latents", "run/lat", "--vae", "run/vae/vae", "--out", "run/init", "--stop-at", "1", "--log-every", "1", "--micro-batches", "3"]));
    assert!(out.contains("dit: step 1/3"), "{out}");

    // joint image training: image steps say so in the progress line
    let mut img = tiny_dit();
    img["image_steps"] = json!({"share": 1.0, "batches": 2});
    write(&d.join("img.json"), &img);
    let out = ok(ciak(&d, &["train", "dit", "--config", "img.json", "--latents", "run/lat", "--vae", "run/vae/vae", "--out", "run/img", "--stop-at", "1", "--log-every", "1"]));
    assert!(out.contains("dit: step 1/3") && out.contains("images/s") && !out.contains("clips/s"), "{out}");

    // a decoder fine-tune of the trained VAE keeps its latent statistics
    let mut dec: Value = serde_json::from_str(&std::fs::read_to_string(d.join("vae.json")).unwrap()).unwrap();
    dec["train"] = "decoder".into();
    write(&d.join("vaedec.json"), &dec);
    let out = ok(ciak(&d, &["train", "vae", "--config", "vaedec.json", "--init-from", "run/vae/vae", "--out", "run/vdec"]));
    assert!(out.contains("vae: done"), "{out}");
    let stats = |p: &str| {
        let v: Value = serde_json::from_str(&std::fs::read_to_string(d.join(p)).unwrap()).unwrap();
        (v["latents_mean"].clone(), v["latents_std"].clone())
    };
    assert_eq!(stats("run/vae/vae/config.json"), stats("run/vdec/vae/config.json"));
    eprintln!("stages end to end in {:.1} s", started.elapsed().as_secs_f64());
}

#[test]
fn train_all_runs_the_stages_and_resume_skips_finished_ones() {
    let (_tmp, d) = setup();
    let all = ["train", "all", "--out", "run", "--vae-config", "vae.json", "--dit-config", "dit.json"];
    let out = ok(ciak(&d, &all));
    assert!(out.contains("all: the model is in"), "{out}");
    generates(&d, &d.join("run/dit/model"));
    // the cache was laid out as the config's `latents` says
    let cache: Value = serde_json::from_str(&std::fs::read_to_string(d.join("run/latents/cache.json")).unwrap()).unwrap();
    assert_eq!(cache["config"]["sampler"]["placement_spread"], 0.5);
    assert_eq!(cache["config"]["sampler"]["amount_spread"], 0.0);
    // ... and the world it names: two objects in every clip, the other settings the world's defaults
    assert_eq!(cache["config"]["sampler"]["object_count_weights"], json!([0.0, 1.0, 0.0]));
    assert_eq!(cache["config"]["sampler"]["frames"], 25);
    let mut clips = 0;
    for entry in std::fs::read_dir(d.join("run/latents")).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("latents-") && name.ends_with(".json") {
            let shard: Value = serde_json::from_str(&std::fs::read_to_string(entry.path()).unwrap()).unwrap();
            for item in shard["items"].as_array().unwrap() {
                assert_eq!(item["scene"]["objects"].as_array().unwrap().len(), 2, "{item}");
                clips += 1;
            }
        }
    }
    assert_eq!(clips, 3);
    // everything done: a resume only checks the cache and says so
    let out = ok(ciak(&d, &[&all[..], &["--resume"]].concat()));
    assert!(out.contains("vae: already trained") && out.contains("dit: already trained"), "{out}");
    assert!(!out.contains("step "), "{out}");
    // a fresh run must not overwrite it
    fails(ciak(&d, &all), "already holds a run");
}

#[test]
fn bad_input_is_one_clear_line() {
    let (_tmp, d) = setup();
    std::fs::write(d.join("broken.json"), "{ \"seed\": 1,").unwrap();
    let mut no_gen = tiny_dit();
    no_gen["generation"].as_object_mut().unwrap().remove("fps");
    write(&d.join("nogen.json"), &no_gen);

    fails(ciak(&d, &["train", "vae", "--config", "missing.json", "--out", "a"]), "missing.json");
    fails(ciak(&d, &["train", "vae", "--config", "broken.json", "--out", "a"]), "bad config");
    fails(ciak(&d, &["train", "dit", "--config", "broken.json", "--latents", "x", "--vae", "y", "--out", "a"]), "bad JSON");
    fails(ciak(&d, &["train", "dit", "--config", "nogen.json", "--latents", "x", "--vae", "y", "--out", "a"]), "generation.fps");
    let mut bad_sizes = tiny_dit();
    bad_sizes["generation"]["sizes"] = json!([[50, 48]]);
    write(&d.join("badsizes.json"), &bad_sizes);
    fails(ciak(&d, &["train", "dit", "--config", "badsizes.json", "--latents", "x", "--vae", "y", "--out", "a"]), "expected generation.sizes as nonzero multiples of 16, got 50x48");
    fails(ciak(&d, &["train", "vae", "--config", "vae.json", "--out", "a", "--stop-at", "0"]), "expected --stop-at of at least 1, got 0");
    fails(
        ciak(&d, &["train", "dit", "--config", "dit.json", "--latents", "x", "--vae", "y", "--out", "a", "--micro-batches", "0"]),
        "expected --micro-batches of at least 1, got 0",
    );
    fails(ciak(&d, &["train", "vae", "--config", "vae.json", "--out", "a", "--resume"]), "nothing to resume");
    fails(ciak(&d, &["train", "vae", "--config", "vae.json", "--out", "a", "--init-from", "nowhere"]), "expected --init-from to be a trained VAE folder");
    let mut dec: Value = serde_json::from_str(&std::fs::read_to_string(d.join("vae.json")).unwrap()).unwrap();
    dec["train"] = "decoder".into();
    write(&d.join("vaedec.json"), &dec);
    fails(ciak(&d, &["train", "vae", "--config", "vaedec.json", "--out", "a"]), "expected init_from");
    fails(ciak(&d, &["train", "dit", "--config", "nogen.json", "--latents", "x", "--vae", "y", "--out", "a", "--fresh-optimizer"]), "--resume");
    fails(ciak(&d, &["train", "latents", "--vae", "nowhere", "--count", "2", "--out", "a"]), "expected a trained VAE");
    fails(ciak(&d, &["train", "latents", "--vae", ".", "--count", "0", "--out", "a"]), "--count");
    fails(
        ciak(&d, &["train", "latents", "--vae", ".", "--count", "2", "--placement-spread", "1.5", "--out", "a"]),
        "bad world settings: expected `placement_spread` in [0, 1], got 1.5",
    );
    fails(
        ciak(&d, &["train", "latents", "--vae", ".", "--count", "2", "--amount-spread", "1.5", "--out", "a"]),
        "bad world settings: expected `amount_spread` in [0, 1], got 1.5",
    );
    // --world: a file of SamplerConfig fields, checked like the DiT config's `latents`
    std::fs::write(d.join("noobjects.json"), r#"{"object_count_weights": [0, 0, 0]}"#).unwrap();
    std::fs::write(d.join("typo.json"), r#"{"object_counts": [1, 0, 0]}"#).unwrap();
    fails(
        ciak(&d, &["train", "latents", "--vae", ".", "--count", "2", "--world", "noobjects.json", "--out", "a"]),
        "expected `object_count_weights` of weights >= 0 with a positive sum, got [0.0, 0.0, 0.0]",
    );
    fails(ciak(&d, &["train", "latents", "--vae", ".", "--count", "2", "--world", "typo.json", "--out", "a"]), "unknown field `object_counts`");
    fails(ciak(&d, &["train", "latents", "--vae", ".", "--count", "2", "--world", "nowhere.json", "--out", "a"]), "reading the world settings nowhere.json");
    // DiT configs with one bad key: the error names the key and what it expected
    let latents = |extra: Value| {
        let mut l = json!({"clips": 4, "seed": 1});
        l.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        l
    };
    for (name, key, value, want) in [
        ("badworld", "latents", latents(json!({"background_weights": [1, 0, 0]})), "background_weights"),
        ("noseed", "latents", json!({"clips": 4}), "expected `latents` as"),
        ("badamount", "latents", latents(json!({"amount_spread": 2})), "amount_spread"),
        ("badspread", "latents", latents(json!({"placement_spread": -1})), "placement_spread"),
        ("badlayout", "latents", latents(json!({"background_spread": 3})), "background_spread"),
        ("badimages", "image_steps", json!({"share": 2, "batches": 6}), "expected image_steps.share in (0, 1], got 2"),
        ("badown", "own_start", json!({"share": 0.5, "min_sigma": 1}), "expected own_start.min_sigma in (0, 1), got 1"),
    ] {
        let mut cfg = tiny_dit();
        cfg[key] = value;
        let file = format!("{name}.json");
        write(&d.join(&file), &cfg);
        fails(ciak(&d, &["train", "dit", "--config", &file, "--latents", "x", "--vae", "y", "--out", "a"]), want);
    }
    fails(ciak(&d, &["train", "all", "--out", "a", "--vae-config", "missing.json"]), "missing.json");
    // --device: an unknown name, and CUDA in a build without it
    fails(ciak(&d, &["train", "vae", "--config", "vae.json", "--out", "a", "--device", "gpu"]), "expected --device cpu or cuda, got `gpu`");
    fails(
        ciak(&d, &["train", "dit", "--config", "nogen.json", "--latents", "x", "--vae", "y", "--out", "a", "--device", "cuda:x"]),
        "expected --device cuda:N, got `cuda:x`",
    );
    if !cfg!(feature = "cuda") {
        fails(ciak(&d, &["train", "latents", "--vae", ".", "--count", "2", "--out", "a", "--device", "cuda"]), "built without CUDA");
    }

    // every committed DiT setting parses; the run then stops at the missing latent cache
    let committed = |prefix: &str| -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(repo_root().join("train"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "json") && p.file_name().unwrap().to_str().unwrap().starts_with(prefix))
            .collect();
        files.sort();
        files
    };
    let dits = committed("dit");
    assert!(dits.len() >= 12, "{dits:?}");
    for path in &dits {
        let c = path.to_str().unwrap();
        fails(ciak(&d, &["train", "dit", "--config", c, "--latents", "nowhere", "--vae", "y", "--out", "b"]), "expected a latent cache");
        assert!(d.join("b/tokenizer.json").is_file(), "{c}");
    }
    // and every committed world file (`train latents --world`), through the preview that takes it
    let worlds = committed("world");
    assert!(worlds.len() >= 2, "{worlds:?}");
    for path in &worlds {
        ok(ciak(&d, &["train", "preview", "--count", "1", "--world", path.to_str().unwrap(), "--out", "world-preview"]));
    }

    // reduce-vae: a folder that is not a VAE, a channel count it cannot make, its own folder as --out
    let fixture = repo_root().join("tests/fixtures/tiny-wan/vae");
    let fixture = fixture.to_str().unwrap();
    fails(ciak(&d, &["train", "reduce-vae", "--vae", "nowhere", "--z-dim", "4", "--out", "r"]), "nowhere");
    fails(ciak(&d, &["train", "reduce-vae", "--vae", fixture, "--z-dim", "16", "--out", "r"]), "expected a z_dim from 1 to 15 (fewer channels than the VAE's 16), got 16");
    fails(ciak(&d, &["train", "reduce-vae", "--vae", fixture, "--z-dim", "4", "--out", fixture]), "expected the reduced VAE to go to another folder");
    assert!(!d.join("r").exists());
    let said = ok(ciak(&d, &["train", "reduce-vae", "--vae", fixture, "--z-dim", "4", "--clips", "1", "--out", "r"]));
    assert!(said.contains("wrote r with z_dim 4"), "{said}");
    let cfg: Value = serde_json::from_str(&std::fs::read_to_string(d.join("r/config.json")).unwrap()).unwrap();
    assert_eq!(cfg["z_dim"], 4);

    // a fresh run into a folder holding a checkpoint, and resuming a cache that is not there
    std::fs::create_dir_all(d.join("c/checkpoint")).unwrap();
    std::fs::write(d.join("c/checkpoint/state.json"), "{}").unwrap();
    fails(ciak(&d, &["train", "vae", "--config", "vae.json", "--out", "c"]), "already holds a checkpoint");
    std::fs::write(d.join("config.json"), "{}").unwrap();
    fails(ciak(&d, &["train", "latents", "--vae", ".", "--count", "2", "--out", "e", "--resume"]), "nothing to resume");
    std::fs::create_dir_all(d.join("f")).unwrap();
    std::fs::write(d.join("f/cache.json"), "{}").unwrap();
    fails(ciak(&d, &["train", "latents", "--vae", ".", "--count", "2", "--out", "f"]), "already holds a latent cache");
}

#[test]
fn preview_writes_strips_with_captions_and_previews_a_narrowed_world() {
    let dir = tempfile::tempdir().unwrap();
    let read = |sub: &str| -> (Vec<Value>, Vec<String>) {
        let scenes: Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join(sub).join("scenes.json")).unwrap()).unwrap();
        let captions = std::fs::read_to_string(dir.path().join(sub).join("captions.txt")).unwrap();
        (scenes.as_array().unwrap().clone(), captions.lines().map(str::to_string).collect())
    };
    let out = ok(ciak(dir.path(), &["train", "preview", "--count", "3", "--out", "all"]));
    assert!(out.contains("wrote 3 clips to all"), "{out}");
    let (scenes, captions) = read("all");
    assert_eq!((scenes.len(), captions.len()), (3, 3));
    for (i, (scene, caption)) in scenes.iter().zip(&captions).enumerate() {
        let file = format!("clip_{i:04}.png");
        assert!(std::fs::read(dir.path().join("all").join(&file)).unwrap().starts_with(b"\x89PNG"));
        assert_eq!(caption, &format!("{file}\t{}", scene["caption"].as_str().unwrap()));
    }
    // the world file of `train latents --world`: three objects, every one flush with its room's edge
    write(
        &dir.path().join("world.json"),
        &json!({ "object_count_weights": [0, 0, 1], "placement_spread": 0, "placement_anchors": [[0, 0.5], [1, 0.5], [0.5, 0]] }),
    );
    ok(ciak(dir.path(), &["train", "preview", "--count", "4", "--world", "world.json", "--aspect", "1:1", "--out", "three"]));
    let (scenes, _) = read("three");
    assert_eq!(scenes.len(), 4);
    for s in &scenes {
        assert_eq!(s["scene"]["objects"].as_array().unwrap().len(), 3, "{s}");
        assert_eq!(s["scene"]["aspect"], "1:1", "{s}");
    }
    // bad input: one line, nothing written
    write(&dir.path().join("bad.json"), &json!({ "placement_anchors": [[2, 0.5], [0.5, 0.5], [0.5, 0.5]] }));
    fails(ciak(dir.path(), &["train", "preview", "--world", "bad.json", "--out", "bad"]), "bad world settings bad.json");
    fails(ciak(dir.path(), &["train", "preview", "--world", "missing.json", "--out", "bad"]), "missing.json");
    fails(ciak(dir.path(), &["train", "preview", "--count", "0", "--out", "bad"]), "expected --count of at least 1, got 0");
    assert!(!dir.path().join("bad").exists());
}
