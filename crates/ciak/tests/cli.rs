//! `ciak generate` as a user types it, on the tiny parity checkpoint (random weights: the clip is
//! noise, but every byte of the path from prompt to MP4 is the real one).
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn tiny_model() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-wan");
    assert!(p.is_dir(), "missing fixture {} (see tests/fixtures/README.md)", p.display());
    p
}

fn ciak(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ciak")).current_dir(dir).args(args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// (width, height, RGB8 bytes) of a PNG.
fn image_rgb(path: &Path) -> (usize, usize, Vec<u8>) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb, "{}", path.display());
    buf.truncate(info.buffer_size());
    (info.width as usize, info.height as usize, buf)
}

fn tiny_args<'a>(model: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["generate", "--model", model, "--size", "32x32", "--frames", "5", "--steps", "2"];
    args.extend_from_slice(extra);
    args
}

#[test]
fn generate_writes_a_decodable_mp4_and_a_recipe_that_rerenders_it() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model();
    let model = model.to_str().unwrap();
    let out = ciak(dir.path(), &tiny_args(model, &["a red ball", "--seed", "7", "-o", "clip.mp4", "--frames-dir", "a", "--strip", "strip.png", "--strip-frames", "3"]));
    assert!(out.status.success(), "{}", stderr(&out));
    let info = ciak_engine::video::read_mp4_info(&dir.path().join("clip.mp4")).unwrap();
    assert_eq!((info.width, info.height, info.frames), (32, 32, 5));
    // the strip holds frames 0, 2 and 4 side by side (2-pixel gaps), byte for byte the PNG frames
    let strip = image_rgb(&dir.path().join("strip.png"));
    assert_eq!((strip.0, strip.1), (3 * 32 + 2 * 2, 32));
    for (k, f) in [0usize, 2, 4].into_iter().enumerate() {
        let frame = image_rgb(&dir.path().join("a").join(format!("frame_{f:05}.png")));
        for y in 0..32 {
            let s = &strip.2[(y * strip.0 + k * 34) * 3..(y * strip.0 + k * 34 + 32) * 3];
            assert_eq!(s, &frame.2[y * 32 * 3..(y + 1) * 32 * 3], "strip frame {k}, row {y}");
        }
    }
    assert!((info.fps - 16.0).abs() < 1e-6, "{info:?}");

    let recipe: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("clip.json")).unwrap()).unwrap();
    assert_eq!(recipe["seed"], 7);
    assert_eq!(recipe["prompt"], "a red ball");
    assert_eq!(recipe["weights_sha256"].as_str().unwrap().len(), 64);
    assert!(recipe.get("guidance_below").is_none(), "no interval asked, none recorded: {recipe}");

    // Same recipe, same frames, bit for bit.
    let again = ciak(dir.path(), &["generate", "--recipe", "clip.json", "-o", "again.mp4", "--frames-dir", "b"]);
    assert!(again.status.success(), "{}", stderr(&again));
    for i in 0..5 {
        let name = format!("frame_{i:05}.png");
        let a = std::fs::read(dir.path().join("a").join(&name)).unwrap();
        let b = std::fs::read(dir.path().join("b").join(&name)).unwrap();
        assert_eq!(a, b, "frame {i} differs after re-rendering from the recipe");
    }
}

#[test]
fn a_guidance_interval_is_recorded_in_the_recipe_and_rerendered() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model();
    let model = model.to_str().unwrap();
    let run = |extra: &[&str], dir_name: &str| {
        let mut args = vec!["a red ball", "--seed", "7", "--frames-dir", dir_name];
        args.extend_from_slice(extra);
        let out = ciak(dir.path(), &tiny_args(model, &args));
        assert!(out.status.success(), "{}", stderr(&out));
        std::fs::read(dir.path().join(dir_name).join("frame_00004.png")).unwrap()
    };
    let every_step = run(&["-o", "a.mp4"], "a");
    let interval = run(&["-o", "b.mp4", "--guidance-below", "0.5"], "b");
    assert_ne!(every_step, interval, "guiding only below sigma 0.5 changes the clip");
    let recipe: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("b.json")).unwrap()).unwrap();
    assert_eq!(recipe["guidance_below"], 0.5);
    assert!(recipe.get("image_first").is_none(), "one pass, none recorded: {recipe}");
    let again = ciak(dir.path(), &["generate", "--recipe", "b.json", "-o", "c.mp4", "--frames-dir", "c"]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(std::fs::read(dir.path().join("c/frame_00004.png")).unwrap(), interval);
    // image first: another clip, recorded, and the recipe renders it again
    let image_first = run(&["-o", "d.mp4", "--image-first", "true"], "d");
    assert_ne!(image_first, every_step, "drawing the first latent frame first changes the clip");
    let recipe: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("d.json")).unwrap()).unwrap();
    assert_eq!(recipe["image_first"], true);
    let again = ciak(dir.path(), &["generate", "--recipe", "d.json", "-o", "e.mp4", "--frames-dir", "e"]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(std::fs::read(dir.path().join("e/frame_00004.png")).unwrap(), image_first);
    let bad = ciak(dir.path(), &tiny_args(model, &["a red ball", "--image-first", "maybe", "-o", "f.mp4"]));
    assert!(!bad.status.success() && stderr(&bad).contains("maybe"), "{}", stderr(&bad));
    assert!(!dir.path().join("f.mp4").exists());
}

#[test]
fn without_output_the_name_comes_from_prompt_and_seed_and_nothing_is_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model();
    let model = model.to_str().unwrap();
    let first = ciak(dir.path(), &tiny_args(model, &["A red ball!", "--seed", "3", "--variations", "2"]));
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(dir.path().join("a-red-ball-s3.mp4").is_file() && dir.path().join("a-red-ball-s4.mp4").is_file());
    let second = ciak(dir.path(), &tiny_args(model, &["A red ball!", "--seed", "3"]));
    assert!(!second.status.success());
    assert!(stderr(&second).contains("already exists (pass --force"), "{}", stderr(&second));
    let forced = ciak(dir.path(), &tiny_args(model, &["A red ball!", "--seed", "3", "--force"]));
    assert!(forced.status.success(), "{}", stderr(&forced));
}

#[test]
fn bad_input_is_one_line_nonzero_and_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model();
    let model = model.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["generate", "--model", model, "--size", "40x32", "--frames", "5", "x", "-o", "o.mp4"], "expected width a multiple of 16, got 40 (nearest valid: 32 or 48)"),
        (vec!["generate", "--model", model, "--size", "32x32", "--frames", "6", "x", "-o", "o.mp4"], "expected frames = 1+4k, got 6 (nearest valid: 5 or 9)"),
        (vec!["generate", "--model", model, "--size", "32x32", "--frames", "5", "--steps", "0", "x", "-o", "o.mp4"], "expected steps >= 1, got 0"),
        (tiny_args(model, &["x", "--fps", "many", "-o", "o.mp4"]), "invalid value 'many' for '--fps <FPS>'"),
        (tiny_args(model, &["", "-o", "o.mp4"]), "expected a prompt, got an empty one"),
        (tiny_args("no/such-model", &["x", "-o", "o.mp4"]), "model `no/such-model` not found; looked for"),
        (tiny_args(model, &["x", "-o", "missing/dir/o.mp4"]), "does not exist"),
        (vec!["generate", "--model", model, "--size", "big", "--frames", "5", "x", "-o", "o.mp4"], "expected --size WIDTHxHEIGHT"),
        (tiny_args(model, &["x", "--dtype", "f64", "-o", "o.mp4"]), "expected --dtype f32, bf16 or f16, got `f64`"),
        (tiny_args(model, &["x", "--scheduler", "ddim", "-o", "o.mp4"]), "expected scheduler unipc or euler, got `ddim`"),
        (tiny_args(model, &["x", "--guidance-below", "1.5", "-o", "o.mp4"]), "expected a guidance interval bound (sigma) in (0, 1], got 1.5"),
        (tiny_args(model, &["x", "-o", "o.mp4", "--strip", "missing/s.png"]), "folder missing does not exist"),
        (tiny_args(model, &["x", "-o", "o.mp4", "--strip", "s.png", "--strip-frames", "0"]), "invalid value '0' for '--strip-frames <STRIP_FRAMES>'"),
    ];
    for (args, want) in cases {
        let out = ciak(dir.path(), &args);
        let err = stderr(&out);
        assert!(matches!(out.status.code(), Some(1) | Some(2)), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: got `{err}`, wanted `{want}`");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: not one line: {err}");
        assert!(!err.contains("panicked"), "{err}");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(left.is_empty(), "{args:?} left files behind: {left:?}");
    }
}

#[test]
fn a_prompt_longer_than_the_encoder_reads_is_cut_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model();
    let long = "a red ball moves right ".repeat(200);
    let out = ciak(dir.path(), &tiny_args(model.to_str().unwrap(), &[&long, "-o", "long.mp4"]));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("so it was cut"), "{}", stderr(&out));
}

#[test]
fn json_progress_and_chrome_trace() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model();
    let out = ciak(dir.path(), &tiny_args(model.to_str().unwrap(), &["x", "--json", "--trace", "t.json", "-o", "o.mp4"]));
    assert!(out.status.success(), "{}", stderr(&out));
    let events: Vec<serde_json::Value> = stderr(&out)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let steps: Vec<u64> = events.iter().filter_map(|e| e["step"].as_u64()).collect();
    assert_eq!(steps, vec![1, 2]);
    assert!(events.iter().any(|e| e["stage"] == "decoding"));
    let done: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(done["event"], "done");
    let trace: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("t.json")).unwrap()).unwrap();
    let names: Vec<&str> = trace.as_array().unwrap().iter().filter_map(|e| e["name"].as_str()).collect();
    for span in ["text_encode", "step", "vae_decode", "write"] {
        assert!(names.contains(&span), "trace lacks `{span}`: {names:?}");
    }
}

#[test]
fn doctor_prints_what_ciak_sees() {
    let out = Command::new(env!("CARGO_BIN_EXE_ciak")).arg("doctor").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("cpu:") && text.contains("cuda:") && text.contains("built-in model:"), "{text}");
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // ciak pins glibc's thresholds unless the user set them (src/malloc.rs)
        let own = Command::new(env!("CARGO_BIN_EXE_ciak"))
            .arg("doctor")
            .env_remove("MALLOC_TRIM_THRESHOLD_")
            .env_remove("MALLOC_MMAP_THRESHOLD_")
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&own.stdout).contains("allocator: mmap threshold 32 MiB"), "{text}");
        let user = Command::new(env!("CARGO_BIN_EXE_ciak"))
            .arg("doctor")
            .env("MALLOC_MMAP_THRESHOLD_", "65536")
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&user.stdout).contains("allocator: as set by MALLOC_MMAP_THRESHOLD_"));
    }
}
