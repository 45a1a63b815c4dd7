//! The analyzer against ground truth: world-rendered clips of the eval prompts (and of random
//! scenes) read right, raw, after an H.264 round trip and after blur plus noise; wrong clips
//! (other colour, reversed motion, other shape or background, no object) read wrong; the flicker
//! measure sees alternating frames and ignores steady change.
use ciak_train::eval::analyze::{analyze, BackgroundKind};
use ciak_train::eval::prompts::{EvalPrompt, EvalSet, Expected};
use ciak_train::eval::score::{score, single_breakdown, summarize, Accuracy, ObjectScore, PromptScore, BAR_FLICKER};
use ciak_train::eval::{h264_roundtrip, Flicker};
use ciak_train::world::{render, sample_scene, Background, Clip, Color, Motion, SamplerConfig, Scene, Shape};
use ciak_train::{Rng, Split};

/// What the analyzer must reach on perfect clips.
const CEILING: f64 = 0.97;

fn check(what: &str, a: &Accuracy, min: f64) {
    println!(
        "{what}: n {} colour {:.3} shape {:.3} motion {:.3} background {:.3} all {:.3}",
        a.count, a.color, a.shape, a.motion, a.background, a.all
    );
    for (name, v) in [("colour", a.color), ("shape", a.shape), ("motion", a.motion), ("background", a.background)] {
        assert!(v >= min, "{what}: {name} accuracy {v:.3} < {min}");
    }
}

fn run(prompts: &[EvalPrompt], mut clip_of: impl FnMut(&EvalPrompt) -> Clip) -> Vec<(usize, PromptScore, Flicker)> {
    prompts
        .iter()
        .map(|p| {
            let clip = clip_of(p);
            let a = analyze(&clip, p.object_count());
            let s = score(&p.expected, &a, clip.frames);
            if !s.all() {
                println!("{} {}: {s:?}", p.id, p.prompt);
            }
            (p.object_count(), s, a.flicker)
        })
        .collect()
}

#[test]
fn eval_prompts_rendered_read_right() {
    let set = EvalSet::builtin();
    let rows = run(&set.prompts, |p| render(&p.scene));
    let s = summarize(&rows);
    check("single", &s.single, CEILING);
    check("pair object 1", &s.pair[0], CEILING);
    check("pair object 2", &s.pair[1], CEILING);
    println!("flicker mean {} worst {}", s.flicker_mean, s.flicker_peak);
    // Without a camera the background of a render does not change at all.
    assert!(s.flicker_peak < 1e-3, "flicker {} on static renders", s.flicker_peak);
    assert!(s.passes, "{:?}", s.failures);
}

#[test]
fn eval_prompts_after_h264_read_right() {
    let set = EvalSet::builtin();
    let scratch = tempfile::tempdir().unwrap();
    let rows = run(&set.prompts, |p| h264_roundtrip(&render(&p.scene), scratch.path(), 0).unwrap());
    let s = summarize(&rows);
    check("h264 single", &s.single, CEILING);
    check("h264 pair object 1", &s.pair[0], CEILING);
    check("h264 pair object 2", &s.pair[1], CEILING);
    println!("h264 flicker mean {:.4} worst clip {:.4} worst frame {:.4}", s.flicker_mean, s.flicker_worst_clip, s.flicker_peak);
    assert!(s.flicker_mean < 0.5, "codec noise alone reads as flicker {}", s.flicker_mean);
    assert!(s.passes, "{:?}", s.failures);
}

/// Scenes as the trainer draws them (no camera, one or two objects), as prompts that name everything.
fn random_prompts(seed: u64, n: usize) -> Vec<EvalPrompt> {
    let cfg = SamplerConfig { camera_probability: 0.0, object_count_weights: [0.5, 0.5, 0.0], ..SamplerConfig::default() };
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|i| {
            let scene = sample_scene(&mut rng, &cfg, if i % 2 == 0 { Split::Train } else { Split::Eval });
            prompt_for(format!("r{i}"), scene)
        })
        .collect()
}

fn prompt_for(id: String, scene: Scene) -> EvalPrompt {
    let caption = ciak_train::canonical_caption(&scene);
    EvalPrompt {
        id,
        expected: Expected::of_caption(&scene, &caption),
        prompt: caption,
        template: "canonical".into(),
        aspect: scene.aspect,
        frames: scene.frames,
        fps: scene.fps,
        scene,
        item: 0,
    }
}

#[test]
fn random_scenes_read_right() {
    let prompts = random_prompts(2024, 240);
    let motions: std::collections::BTreeSet<Motion> =
        prompts.iter().flat_map(|p| p.expected.objects.iter().map(|o| o.motion)).collect();
    assert_eq!(motions.len(), Motion::ALL.len(), "every motion is exercised: {motions:?}");
    let s = summarize(&run(&prompts, |p| render(&p.scene)));
    check("random single", &s.single, CEILING);
    check("random pair object 1", &s.pair[0], CEILING);
    check("random pair object 2", &s.pair[1], CEILING);
}

/// Gaussian blur of `sigma` pixels plus uniform noise of +-`noise` levels, like a soft decoder.
fn degrade(clip: &Clip, sigma: f32, noise: f32, seed: u64) -> Clip {
    let r = (3.0 * sigma).ceil() as isize;
    let k: Vec<f32> = (-r..=r).map(|i| (-((i * i) as f32) / (2.0 * sigma * sigma)).exp()).collect();
    let total: f32 = k.iter().sum();
    let (w, h) = (clip.width as isize, clip.height as isize);
    let mut out = clip.clone();
    let mut rng = Rng::new(seed);
    for f in 0..clip.frames {
        let src: Vec<f32> = clip.frame(f).iter().map(|&v| v as f32).collect();
        let at = |x: isize, y: isize, c: usize| ((y * w + x) as usize) * 3 + c;
        let mut tmp = vec![0f32; src.len()];
        for y in 0..h {
            for x in 0..w {
                for c in 0..3 {
                    tmp[at(x, y, c)] = (-r..=r).map(|i| k[(i + r) as usize] * src[at((x + i).clamp(0, w - 1), y, c)]).sum::<f32>() / total;
                }
            }
        }
        let base = f * clip.frame_len();
        for y in 0..h {
            for x in 0..w {
                for c in 0..3 {
                    let v = (-r..=r).map(|i| k[(i + r) as usize] * tmp[at(x, (y + i).clamp(0, h - 1), c)]).sum::<f32>() / total;
                    out.pixels[base + at(x, y, c)] = (v + (rng.f32() * 2.0 - 1.0) * noise).round().clamp(0.0, 255.0) as u8;
                }
            }
        }
    }
    out
}

#[test]
fn blurred_noisy_clips_read_right() {
    let prompts = random_prompts(77, 90);
    let s = summarize(&run(&prompts, |p| degrade(&render(&p.scene), 1.5, 6.0, p.scene.objects.len() as u64)));
    check("blurred single", &s.single, 0.95);
    check("blurred pair object 1", &s.pair[0], 0.95);
    check("blurred pair object 2", &s.pair[1], 0.95);
}

fn singles() -> Vec<EvalPrompt> {
    EvalSet::builtin().prompts.into_iter().filter(|p| p.object_count() == 1).collect()
}

#[test]
fn another_colour_reads_as_wrong_colour() {
    let mut checked = 0;
    for p in singles() {
        let mut scene = p.scene.clone();
        let old = scene.objects[0].color;
        // The palette colour farthest from the old one that still stands out from the background.
        let Some(new) = Color::ALL
            .into_iter()
            .filter(|&c| c != old)
            .filter(|&c| {
                let mut s = scene.clone();
                s.objects[0].color = c;
                s.validate().is_ok()
            })
            .max_by(|&a, &b| a.contrast(old).total_cmp(&b.contrast(old)))
        else {
            continue;
        };
        scene.objects[0].color = new;
        let a = analyze(&render(&scene), 1);
        let s = score(&p.expected, &a, scene.frames);
        assert!(!s.objects[0].color, "{}: {old:?} drawn as {new:?} read as right", p.id);
        assert!(s.objects[0].shape && s.objects[0].motion && s.background, "{}: other attributes still right: {s:?}", p.id);
        checked += 1;
    }
    assert!(checked >= 50, "only {checked} prompts could be recoloured");
}

#[test]
fn reversed_clip_reads_as_wrong_motion() {
    let mut checked = 0;
    for p in singles() {
        let reversible = p.expected.objects[0].motion.direction().is_some()
            || matches!(p.expected.objects[0].motion, Motion::Grow | Motion::Shrink);
        let clip = render(&p.scene);
        let mut rev = clip.clone();
        for f in 0..clip.frames {
            let n = clip.frame_len();
            rev.pixels[f * n..(f + 1) * n].copy_from_slice(clip.frame(clip.frames - 1 - f));
        }
        let s = score(&p.expected, &analyze(&rev, 1), clip.frames);
        // Played backwards, left is right and growing is shrinking; bouncing, spinning and
        // staying still are still what they were.
        assert_eq!(s.objects[0].motion, !reversible, "{}: {:?} reversed: {s:?}", p.id, p.expected.objects[0].motion);
        assert!(s.objects[0].color && s.objects[0].shape, "{}", p.id);
        checked += reversible as usize;
    }
    assert!(checked >= 30, "only {checked} reversible motions");
}

#[test]
fn frozen_clip_reads_as_still() {
    for p in singles() {
        let clip = render(&p.scene);
        let mut frozen = clip.clone();
        let mid = clip.frame(clip.frames / 2).to_vec();
        for f in 0..clip.frames {
            let n = clip.frame_len();
            frozen.pixels[f * n..(f + 1) * n].copy_from_slice(&mid);
        }
        let a = analyze(&frozen, 1);
        assert_eq!(a.objects[0].motion, Motion::Still, "{}", p.id);
    }
}

#[test]
fn another_shape_reads_as_wrong_shape() {
    let mut checked = 0;
    for p in singles() {
        let old = p.expected.objects[0].shape;
        for new in Shape::ALL.into_iter().filter(|&s| s != old) {
            let mut scene = p.scene.clone();
            scene.objects[0].shape = new;
            if scene.validate().is_err() {
                continue;
            }
            let s = score(&p.expected, &analyze(&render(&scene), 1), scene.frames);
            assert!(!s.objects[0].shape, "{}: {old:?} drawn as {new:?} read as right", p.id);
            checked += 1;
        }
    }
    assert!(checked >= 100, "only {checked} reshaped clips");
}

#[test]
fn another_background_reads_as_wrong_background() {
    let mut checked = 0;
    for p in singles() {
        let mut scene = p.scene.clone();
        let obj = scene.objects[0].color;
        // Same kind, other colours; then another kind.
        let others: Vec<Background> = match scene.background {
            Background::Plain { color } => Color::ALL.into_iter().filter(|&c| c != color).map(|c| Background::Plain { color: c }).collect(),
            Background::SkyGround { sky, ground, horizon } => vec![
                Background::SkyGround { sky: ground, ground: sky, horizon },
                Background::Gradient { top: sky, bottom: ground },
            ],
            Background::Gradient { top, bottom } => {
                vec![Background::Gradient { top: bottom, bottom: top }, Background::SkyGround { sky: top, ground: bottom, horizon: 0.6 }]
            }
            Background::Checkerboard { a, b, .. } => vec![Background::Plain { color: a }, Background::Gradient { top: a, bottom: b }],
        };
        for bg in others {
            scene.background = bg;
            if scene.validate().is_err() || bg.colors().contains(&obj) {
                continue;
            }
            let s = score(&p.expected, &analyze(&render(&scene), 1), scene.frames);
            assert!(!s.background, "{}: {:?} drawn as {bg:?} read as right", p.id, p.expected.background);
            assert!(s.objects[0].all(), "{}: the object is still right on {bg:?}: {s:?}", p.id);
            checked += 1;
            break;
        }
    }
    assert!(checked >= 50, "only {checked} clips with another background");
}

#[test]
fn background_only_finds_no_object() {
    for p in EvalSet::builtin().prompts.iter().take(20) {
        let mut scene = p.scene.clone();
        scene.objects.clear();
        let a = analyze(&render(&scene), p.object_count());
        let s = score(&p.expected, &a, scene.frames);
        assert!(s.objects.iter().all(|o| !o.found && !o.color && !o.shape && !o.motion), "{}: {s:?}", p.id);
        assert_eq!(a.background.kind, BackgroundKind::of(&p.scene.background), "{}", p.id);
    }
}

#[test]
fn flicker_sees_jumping_frames_not_steady_change() {
    let p = &singles()[0];
    let clip = render(&p.scene);
    let shifted = |offset: &dyn Fn(usize) -> f32| {
        let mut c = clip.clone();
        let n = clip.frame_len();
        for f in 0..clip.frames {
            for v in &mut c.pixels[f * n..(f + 1) * n] {
                *v = (*v as f32 + offset(f)).round().clamp(0.0, 255.0) as u8;
            }
        }
        c
    };
    // Every other frame 4 levels brighter: each frame is 4 away from its neighbours' mean.
    let jumping = analyze(&shifted(&|f| if f % 2 == 0 { 4.0 } else { 0.0 }), 1).flicker;
    println!("alternating +4: {jumping:?}");
    assert!(jumping.mean > BAR_FLICKER as f32 && (jumping.mean - 4.0).abs() < 0.6, "{jumping:?}");
    // A steady fade (one level per frame) changes every frame but never jumps.
    let fading = analyze(&shifted(&|f| f as f32), 1).flicker;
    println!("steady fade: {fading:?}");
    assert!(fading.mean < 0.3, "{fading:?}");
    // One frame off by 10 levels shows as the worst frame.
    let one = analyze(&shifted(&|f| if f == 12 { 10.0 } else { 0.0 }), 1).flicker;
    assert!(one.peak > 9.0 && one.mean < one.peak / 5.0, "{one:?}");
}

/// The report's split of single-object prompts: every group counts its own prompts, and a model
/// that loses the colour of travelling objects only shows it in those rows.
#[test]
fn single_breakdown_splits_by_case() {
    let set = EvalSet::builtin();
    let travels = |e: &Expected| !e.objects[0].motion.in_place();
    let scores: Vec<PromptScore> = set
        .prompts
        .iter()
        .map(|p| PromptScore {
            background: true,
            background_kind: true,
            objects: p
                .expected
                .objects
                .iter()
                .map(|_| ObjectScore { found: true, color: p.object_count() != 1 || !travels(&p.expected), shape: true, motion: true })
                .collect(),
        })
        .collect();
    let rows = single_breakdown(set.prompts.iter().zip(&scores).map(|(p, s)| (&p.expected, s)));
    let get = |name: &str| rows.iter().find(|(n, _)| n.starts_with(name)).map(|(_, a)| *a).unwrap_or_else(|| panic!("no row {name}: {rows:?}"));
    let singles = set.prompts.iter().filter(|p| p.object_count() == 1).count();
    let by_kind: usize = ["background plain", "background sky_ground", "background checkerboard", "background gradient"].iter().map(|k| get(k).count).sum();
    assert_eq!(by_kind, singles);
    let (moving, still) = (get("travelling"), get("in place"));
    assert_eq!(moving.count + still.count, singles);
    assert!(moving.count > 0 && still.count > 0);
    assert_eq!((moving.color, still.color), (0.0, 1.0));
    assert_eq!((moving.shape, still.shape), (1.0, 1.0));
    let by_shape: usize = ["shape circle", "shape square", "shape triangle", "shape star"].iter().map(|k| get(k).count).sum();
    assert_eq!(by_shape, singles);
}
