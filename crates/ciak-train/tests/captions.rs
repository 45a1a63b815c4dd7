//! Captions name what is on screen, never leak the held-out split into training, and use only
//! words from the exported vocabulary.
use ciak_train::caption::{caption_with_template, canonical_caption, vocabulary, vocabulary_for, words, TEMPLATES};
use ciak_train::caption_words::{shape_words, size_words};
use ciak_train::split::{is_held_out, HELD_OUT_COMBOS};
use ciak_train::world::{sample_scene, Background, Motion, SamplerConfig, Scene, Size};
use ciak_train::{caption, Rng, Split};
use std::collections::{BTreeSet, HashSet};

fn captioned(seed: u64, n: usize, split: Split, cfg: &SamplerConfig) -> Vec<(Scene, String, &'static str)> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| {
            let s = sample_scene(&mut rng, cfg, split);
            let (c, t) = caption_with_template(&s, &mut rng, split);
            (s, c, t.id)
        })
        .collect()
}

fn has_word(text: &str, any: &[&str]) -> bool {
    let ws = words(text);
    any.iter().any(|a| {
        let phrase = words(a);
        ws.windows(phrase.len()).any(|w| w == phrase.as_slice())
    })
}

/// Words that show a motion, whatever synonym the grammar picked.
fn motion_words(m: Motion) -> (&'static [&'static str], &'static [&'static str]) {
    const UP: &[&str] = &["up", "upward", "upwards", "top", "upper", "rises", "rising", "climbs", "climbing"];
    const DOWN: &[&str] = &["down", "downward", "downwards", "bottom", "lower", "falls", "falling", "sinks", "sinking", "drops", "dropping", "descends", "descending"];
    match m {
        Motion::Right => (&["right", "rightward", "rightwards"], &[]),
        Motion::Left => (&["left", "leftward", "leftwards"], &[]),
        Motion::Up => (UP, &[]),
        Motion::Down => (DOWN, &[]),
        Motion::UpLeft => (UP, &["left"]),
        Motion::UpRight => (UP, &["right"]),
        Motion::DownLeft => (DOWN, &["left"]),
        Motion::DownRight => (DOWN, &["right"]),
        Motion::Bounce => (&["bounces", "bouncing", "hops", "hopping"], &[]),
        Motion::Still => (&["still", "in place", "does not move", "not moving", "stays put", "resting", "motionless"], &[]),
        Motion::Grow => (&["grows", "growing", "bigger", "larger", "expands", "expanding", "swells", "swelling"], &[]),
        Motion::Shrink => (&["shrinks", "shrinking", "smaller"], &[]),
        Motion::Spin => (&["spins", "spinning", "rotates", "rotating", "clockwise", "twirls", "twirling"], &[]),
    }
}

fn background_ok(bg: &Background, text: &str) -> bool {
    match *bg {
        Background::Plain { color } => {
            has_word(text, &[color.name()]) && has_word(text, &["background", "backdrop", "field", "wall"])
        }
        Background::SkyGround { sky, ground, .. } => {
            has_word(text, &[&format!("{} sky", sky.name())])
                && has_word(text, &["ground", "grass", "sand", "snow"].map(|g| format!("{} {g}", ground.name())).each_ref().map(|s| s.as_str()))
        }
        Background::Checkerboard { .. } => has_word(text, &["checkerboard", "checkered", "chessboard", "tiles"]),
        Background::Gradient { top, bottom } => {
            has_word(text, &["gradient", "fading"]) && has_word(text, &[top.name()]) && has_word(text, &[bottom.name()])
        }
    }
}

#[test]
fn single_object_captions_name_colour_shape_motion_and_background() {
    let cfg = SamplerConfig { object_count_weights: [1.0, 0.0, 0.0], ..Default::default() };
    for split in [Split::Train, Split::Eval] {
        for (s, c, _) in captioned(11, 4000, split, &cfg) {
            let o = s.objects[0];
            assert!(has_word(&c, &[o.color.name()]), "colour: {c}");
            assert!(has_word(&c, shape_words(o.shape, Size::Medium)), "shape: {c}");
            let (need, also) = motion_words(o.motion);
            assert!(has_word(&c, need) && (also.is_empty() || has_word(&c, also)), "motion {:?}: {c}", o.motion);
            if s.camera.is_none() {
                // Without a pan, a sideways word in the caption can only be the object's direction.
                let opposite = match o.motion {
                    Motion::Right | Motion::UpRight | Motion::DownRight => Some("left"),
                    Motion::Left | Motion::UpLeft | Motion::DownLeft => Some("right"),
                    _ => None,
                };
                assert!(opposite.is_none_or(|w| !has_word(&c, &[w])), "contradiction: {c}");
            }
            assert!(background_ok(&s.background, &c), "background {:?}: {c}", s.background);
            if let Some(cam) = s.camera {
                assert!(has_word(&c, &["camera"]), "camera {:?}: {c}", cam.kind);
            }
        }
    }
}

#[test]
fn every_object_of_every_scene_is_named() {
    for (s, c, _) in captioned(12, 3000, Split::Train, &SamplerConfig::default()) {
        for o in &s.objects {
            assert!(has_word(&c, &[o.color.name()]), "{c}");
            let (need, _) = motion_words(o.motion);
            assert!(has_word(&c, need), "{:?}: {c}", o.motion);
        }
    }
}

#[test]
fn captions_are_clean_text() {
    for (_, c, _) in captioned(13, 5000, Split::Train, &SamplerConfig::default()) {
        assert!(c.is_ascii() && !c.contains("  ") && !c.contains(" ,") && !c.contains(" .") && !c.contains(",,"), "{c:?}");
        assert!(!c.starts_with(' ') && !c.ends_with(' ') && !c.contains('{'), "{c:?}");
        assert!(!has_word(&c, &["a orange"]) && !c.contains("A orange"), "{c:?}");
    }
}

#[test]
fn captions_vary_for_one_scene() {
    let mut rng = Rng::new(14);
    let scene = sample_scene(&mut rng, &SamplerConfig::default(), Split::Train);
    let distinct: HashSet<String> = (0..300).map(|_| caption(&scene, &mut rng)).collect();
    assert!(distinct.len() > 150, "only {} distinct captions", distinct.len());
}

#[test]
fn held_out_combos_never_reach_training() {
    let train = captioned(15, 50_000, Split::Train, &SamplerConfig::default());
    for (s, _, _) in &train {
        assert!(s.objects.iter().all(|o| !is_held_out(o)), "{s:?}");
    }
    let eval = captioned(16, 2000, Split::Eval, &SamplerConfig::default());
    let mut seen = BTreeSet::new();
    for (s, _, _) in &eval {
        assert!(is_held_out(&s.objects[0]), "{s:?}");
        seen.insert((s.objects[0].color, s.objects[0].shape, s.objects[0].motion));
    }
    assert_eq!(seen.len(), HELD_OUT_COMBOS.len(), "every held-out combo is evaluated");
    // Each part of a held-out triple still appears in training, with other partners.
    for (color, shape, motion) in HELD_OUT_COMBOS {
        assert!(train.iter().any(|(s, _, _)| s.objects.iter().any(|o| o.color == color && o.shape == shape)));
        assert!(train.iter().any(|(s, _, _)| s.objects.iter().any(|o| o.color == color && o.motion == motion)));
        assert!(train.iter().any(|(s, _, _)| s.objects.iter().any(|o| o.shape == shape && o.motion == motion)));
    }
}

#[test]
fn held_out_templates_never_reach_training() {
    let train = captioned(17, 20_000, Split::Train, &SamplerConfig::default());
    let eval = captioned(18, 5000, Split::Eval, &SamplerConfig::default());
    let template = |id: &str| TEMPLATES.iter().find(|t| t.id == id).unwrap();
    let train_ids: BTreeSet<&str> = train.iter().map(|x| x.2).collect();
    let eval_ids: BTreeSet<&str> = eval.iter().map(|x| x.2).collect();
    assert!(train_ids.iter().all(|id| template(id).split == Split::Train));
    assert!(eval_ids.iter().all(|id| template(id).split == Split::Eval));
    assert_eq!(train_ids.len() + eval_ids.len(), TEMPLATES.len(), "every template is used");
    // The held-out word orders, checked on the text too.
    for (_, c, _) in &train {
        let lower = c.to_lowercase();
        assert!(!lower.contains(", there is") && !lower.contains("a clip of"), "{c}");
    }
    // Held-out phrasings reuse trained words only: evaluation tests word order, not new words.
    let train_vocab: BTreeSet<String> = vocabulary_for(Split::Train).into_iter().collect();
    for (_, c, _) in &eval {
        for w in words(c) {
            assert!(train_vocab.contains(&w), "eval word {w:?} never trained: {c}");
        }
    }
}

#[test]
fn every_caption_word_is_in_the_vocabulary() {
    let vocab: BTreeSet<String> = vocabulary().into_iter().collect();
    let mut used = BTreeSet::new();
    for split in [Split::Train, Split::Eval] {
        for (s, c, _) in captioned(19, 30_000, split, &SamplerConfig::default()) {
            for w in words(&c).into_iter().chain(words(&canonical_caption(&s))) {
                assert!(vocab.contains(&w), "{w:?} missing from the vocabulary: {c}");
                used.insert(w);
            }
        }
    }
    // And the vocabulary holds no dead words a model would never see.
    let unused: Vec<_> = vocab.difference(&used).collect();
    assert!(unused.is_empty(), "never produced: {unused:?}");
    assert!(vocab.iter().all(|w| w == &w.to_lowercase() && !w.contains(' ')));
}

#[test]
fn canonical_caption_is_fixed_and_complete() {
    for (s, _, _) in captioned(20, 500, Split::Train, &SamplerConfig::default()) {
        let c = canonical_caption(&s);
        assert_eq!(c, canonical_caption(&s));
        for o in &s.objects {
            assert!(has_word(&c, &[o.color.name()]) && has_word(&c, size_words(o.size)), "{c}");
        }
        assert!(background_ok(&s.background, &c), "{c}");
    }
    let scene: Scene = serde_json::from_str(
        r#"{"aspect":"16:9","background":{"kind":"plain","color":"blue"},
        "objects":[{"shape":"circle","color":"red","size":"small","start":[0.2,0.5],"motion":"right","amount":0.5}]}"#,
    )
    .unwrap();
    assert_eq!(canonical_caption(&scene), "a small red ball moves right on a blue background");
}
