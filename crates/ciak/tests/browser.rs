//! A clip from `ciak generate` plays to its end in headless Chromium with no dropped frames
//! (in one of three plays: dropping a frame is also a matter of load).
//! Needs Debian's chromium and tests/browser's playwright-core: `scripts/test.sh` installs both.
use std::path::PathBuf;
use std::process::Command;

#[test]
fn generated_mp4_plays_to_the_end_in_chromium() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let player = root.join("tests/browser/play.mjs");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        root.join("tests/browser/node_modules/playwright-core").is_dir() && PathBuf::from(&chromium).exists(),
        "the browser test needs Debian chromium and tests/browser/node_modules: run scripts/test.sh"
    );
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("clip.mp4");
    let model = root.join("tests/fixtures/tiny-wan");
    let out = Command::new(env!("CARGO_BIN_EXE_ciak"))
        .args(["generate", "--model", model.to_str().unwrap(), "a red ball moves right", "--size", "64x48"])
        .args(["--frames", "33", "--fps", "16", "--steps", "2", "--seed", "1", "-o", clip.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Dropped frames are a real-time measure: a busy machine (CI's two cores shared with other
    // test binaries) can drop a frame of a well-formed file. A broken stream drops or fails every
    // time, so the clip gets three plays and one of them must be clean.
    let mut seen = serde_json::Value::Null;
    for attempt in 1..=3 {
        let played = Command::new("node").arg(&player).arg(&clip).output().expect("node is needed for the browser test");
        let stdout = String::from_utf8_lossy(&played.stdout);
        assert!(played.status.success(), "{stdout}{}", String::from_utf8_lossy(&played.stderr));
        seen = serde_json::from_str(stdout.trim()).unwrap();
        if seen["droppedVideoFrames"] == 0 {
            break;
        }
        eprintln!("chromium, play {attempt} of 3 dropped frames: {seen}");
    }
    eprintln!("chromium: {seen}");
    assert_eq!(seen["ended"], true, "{seen}");
    assert_eq!(seen["error"], serde_json::Value::Null, "{seen}");
    assert_eq!((seen["width"].as_u64(), seen["height"].as_u64()), (Some(64), Some(48)), "{seen}");
    assert_eq!(seen["totalVideoFrames"], 33, "{seen}");
    assert_eq!(seen["droppedVideoFrames"], 0, "{seen}");
    let duration = seen["duration"].as_f64().unwrap();
    assert!((duration - 33.0 / 16.0).abs() < 0.01, "duration {duration}");
}
