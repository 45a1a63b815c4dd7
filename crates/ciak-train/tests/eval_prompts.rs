//! The committed evaluation prompts (eval/prompts.json): held out from training, balanced, and
//! consistent with the scenes they were drawn with.
use ciak_train::caption::TEMPLATES;
use ciak_train::eval::analyze::BackgroundKind;
use ciak_train::eval::prompts::{build_eval_set, EvalSet, Expected, EVAL_SEED, PAIR_PROMPTS, SINGLE_PROMPTS};
use ciak_train::split::{is_held_out, HELD_OUT_COMBOS};
use ciak_train::world::{sample_scene, Aspect, SamplerConfig};
use ciak_train::{sample, Rng, Split};
use std::collections::{BTreeMap, BTreeSet};

/// Rewrites eval/prompts.json from the world's held-out split (only after a deliberate change to
/// the set; results before and after are then not comparable):
/// `cargo test -p ciak-train --test eval_prompts -- --ignored write_eval_prompts`.
#[test]
#[ignore]
fn write_eval_prompts() {
    let set = build_eval_set(EVAL_SEED, SINGLE_PROMPTS, PAIR_PROMPTS);
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../eval/prompts.json");
    std::fs::write(&path, set.to_json()).unwrap();
    assert_eq!(EvalSet::from_json(&std::fs::read_to_string(&path).unwrap()).unwrap(), set);
    std::fs::write(path.with_file_name("prompts-single-plain.json"), set.single_plain().to_json()).unwrap();
}

/// eval/prompts-single-plain.json is the committed set's single objects on plain backgrounds,
/// byte for byte as `write_eval_prompts` writes it.
#[test]
fn single_plain_subset_matches_the_committed_set() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../eval/prompts-single-plain.json");
    let subset = EvalSet::builtin().single_plain();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), subset.to_json());
    assert_eq!(subset.prompts.len(), 15);
    assert!(subset.prompts.iter().all(|p| p.object_count() == 1 && p.expected.background.kind == BackgroundKind::Plain));
}

#[test]
fn committed_set_has_the_promised_shape() {
    let set = EvalSet::builtin();
    assert_eq!(set.split, Split::Eval);
    let singles = set.prompts.iter().filter(|p| p.object_count() == 1).count();
    let pairs = set.prompts.iter().filter(|p| p.object_count() == 2).count();
    assert_eq!((singles, pairs), (SINGLE_PROMPTS, PAIR_PROMPTS));
    let ids: BTreeSet<&str> = set.prompts.iter().map(|p| p.id.as_str()).collect();
    let texts: BTreeSet<&str> = set.prompts.iter().map(|p| p.prompt.as_str()).collect();
    assert_eq!(ids.len(), set.prompts.len(), "ids are unique");
    assert_eq!(texts.len(), set.prompts.len(), "prompts are unique");
    // Balanced: every held-out combination, background kind and aspect ratio, evenly.
    let mut combos = BTreeMap::new();
    let mut kinds = BTreeMap::new();
    let mut aspects = BTreeMap::new();
    for p in &set.prompts {
        let o = &p.scene.objects[0];
        *combos.entry(format!("{:?}", (o.color, o.shape, o.motion))).or_insert(0) += 1;
        *kinds.entry(p.expected.background.kind.name()).or_insert(0) += 1;
        *aspects.entry(p.aspect.label()).or_insert(0) += 1;
    }
    assert_eq!(combos.len(), HELD_OUT_COMBOS.len());
    assert!(combos.values().all(|&n| n == 9), "{combos:?}");
    assert_eq!(kinds.len(), BackgroundKind::ALL.len());
    assert!(kinds.values().all(|&n| (22..=23).contains(&n)), "{kinds:?}");
    assert_eq!(aspects.len(), Aspect::ALL.len());
    assert!(aspects.values().all(|&n| n == 30), "{aspects:?}");
}

#[test]
fn every_prompt_matches_its_scene() {
    for p in EvalSet::builtin().prompts {
        p.scene.validate().unwrap_or_else(|e| panic!("{}: {e}", p.id));
        assert!(p.scene.camera.is_none(), "{}: camera moves are left out of the eval", p.id);
        assert_eq!(p.aspect, p.scene.aspect, "{}", p.id);
        assert_eq!((p.frames, p.fps), (p.scene.frames, p.scene.fps), "{}", p.id);
        assert_eq!(p.expected, Expected::of_caption(&p.scene, &p.prompt), "{}", p.id);
        // Every expected attribute is named in the prompt: colours literally.
        let text = p.prompt.to_lowercase();
        for o in &p.expected.objects {
            assert!(text.contains(o.color.name()), "{}: {:?} not in {:?}", p.id, o.color, p.prompt);
        }
        for c in &p.expected.background.colors {
            assert!(text.contains(c.name()), "{}: {c:?} not in {:?}", p.id, p.prompt);
        }
    }
}

#[test]
fn prompts_never_appear_in_the_train_split() {
    let set = EvalSet::builtin();
    let eval_templates: BTreeSet<&str> = TEMPLATES.iter().filter(|t| t.split == Split::Eval).map(|t| t.id).collect();
    for p in &set.prompts {
        // Held-out combination first: the training sampler never draws it.
        assert!(is_held_out(&p.scene.objects[0]), "{}: first object is not a held-out combination", p.id);
        assert!(eval_templates.contains(p.template.as_str()), "{}: template {} is not held out", p.id, p.template);
    }
    // And indeed: many training items, none with a held-out combination or an eval prompt.
    let prompts: BTreeSet<&str> = set.prompts.iter().map(|p| p.prompt.as_str()).collect();
    let cfg = SamplerConfig::default();
    for index in 0..20_000u64 {
        let s = sample(0, index, &cfg, Split::Train);
        assert!(!s.scene.objects.iter().any(is_held_out), "train item {index} has a held-out combination");
        assert!(!prompts.contains(s.caption.as_str()), "train item {index} is an eval prompt: {}", s.caption);
    }
    let mut rng = Rng::new(5);
    for _ in 0..5_000 {
        let scene = sample_scene(&mut rng, &cfg, Split::Train);
        assert!(!scene.objects.iter().any(is_held_out));
    }
}

#[test]
fn the_set_is_reproducible_from_its_seed() {
    // Drawing is deterministic, so a rewritten set differs only if the world changed.
    let a = build_eval_set(EVAL_SEED, 6, 3);
    let b = build_eval_set(EVAL_SEED, 6, 3);
    assert_eq!(a, b);
    assert_eq!(a.prompts.len(), 9);
    assert!(a.prompts.iter().all(|p| p.scene.validate().is_ok() && is_held_out(&p.scene.objects[0])));
}
