//! Captions from a small grammar: synonyms, several word orders, short and detailed forms.
//! `caption` draws a random phrasing for training, `caption_for` draws from either side of the
//! held-out split, `canonical_caption` is one fixed phrasing, `vocabulary` lists every word.
use crate::caption_words::*;
use crate::rng::Rng;
use crate::split::Split;
use crate::world::{Background, CameraKind, Color, Motion, Object, Scene, Shape, Size};
use std::collections::BTreeSet;

/// How a template reads, which decides capitals, final period and camera clause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// "a red ball moves right on a blue background"
    Short,
    /// "On a plain blue backdrop, a small red disc drifts toward the right edge."
    Sentence,
    /// "red square sliding left, green background"
    Fragment,
}

/// Which object counts a template fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    Any,
    One,
    Many,
}

/// One word order. Slots: `{b}` background as a prepositional phrase, `{bn}` as a noun phrase,
/// `{bs}` as a short form; `{ov}` objects with finite verbs ("a red ball moves right and ..."),
/// `{og}` with gerunds, `{ot}` with "that" clauses, `{cg}` bare fragments ("red ball moving
/// right, ..."); `{o}`/`{v}` the object and its verb (one object); `{n}` a count ("two shapes").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Template {
    pub id: &'static str,
    pub text: &'static str,
    pub style: Style,
    pub count: Count,
    pub split: Split,
}

const fn t(id: &'static str, text: &'static str, style: Style, count: Count, split: Split) -> Template {
    Template { id, text, style, count, split }
}

use Count::{Any, Many, One};
use Split::{Eval, Train};
use Style::{Fragment, Sentence, Short};

/// Every template. The `Eval` ones are the held-out phrasings: training never emits them, but
/// every word in them also occurs in training templates (a test checks), so evaluation measures
/// new word orders, not unknown words.
pub const TEMPLATES: &[Template] = &[
    t("short", "{ov} {b}", Short, Any, Train),
    t("short_sentence", "{ov} {b}", Sentence, Any, Train),
    t("background_first", "{b}, {ov}", Sentence, Any, Train),
    t("fragment", "{cg}, {bs}", Fragment, Any, Train),
    t("fragment_background_first", "{bs}, {cg}", Fragment, Any, Train),
    t("gerund", "{og} {b}", Short, Any, Train),
    t("object_background_verb", "{o} {b} {v}", Short, One, Train),
    t("video_of", "a video of {ot} {b}", Sentence, Any, Train),
    t("clip_showing", "a clip showing {og} {b}", Sentence, Any, Train),
    t("animation_of", "an animation of {og} {b}", Sentence, Any, Train),
    t("fills_the_frame", "{bn} fills the frame. {ov}", Sentence, Any, Train),
    t("there_is", "there is {og} {b}", Short, Any, Train),
    t("count", "{n} {b}: {og}", Sentence, Many, Train),
    t("eval_there_is_after_background", "{b}, there is {og}", Sentence, Any, Eval),
    t("eval_background_with", "{bs} with {og}", Fragment, Any, Eval),
    t("eval_clip_of", "a clip of {og} {b}", Sentence, Any, Eval),
];

/// A random training caption for `scene`.
pub fn caption(scene: &Scene, rng: &mut Rng) -> String {
    caption_for(scene, rng, Split::Train)
}

/// A random caption from the templates of `split`.
pub fn caption_for(scene: &Scene, rng: &mut Rng, split: Split) -> String {
    caption_with_template(scene, rng, split).0
}

/// A random caption from the templates of `split`, with the template it used.
pub fn caption_with_template(scene: &Scene, rng: &mut Rng, split: Split) -> (String, &'static Template) {
    let n = scene.objects.len();
    let fits = |tpl: &&Template| {
        tpl.split == split
            && match tpl.count {
                Any => true,
                One => n == 1,
                Many => n > 1,
            }
    };
    let choices: Vec<&'static Template> = TEMPLATES.iter().filter(fits).collect();
    let tpl = rng.pick(&choices);
    (render_template(scene, rng, tpl), tpl)
}

fn render_template(scene: &Scene, rng: &mut Rng, tpl: &Template) -> String {
    let style = tpl.style;
    let mut text = fill(tpl.text, |slot| match slot {
        "b" => background_phrase(&scene.background, 0, rng),
        "bn" => background_phrase(&scene.background, 1, rng),
        "bs" => background_phrase(&scene.background, 2, rng),
        "ov" => {
            let parts: Vec<String> =
                scene.objects.iter().map(|o| format!("{} {}", object_np(o, style, rng), finite(o, style, rng))).collect();
            join_clauses(&parts, rng)
        }
        "og" => {
            let parts: Vec<String> =
                scene.objects.iter().map(|o| format!("{} {}", object_np(o, style, rng), gerund(o, style, rng))).collect();
            join_list(&parts, rng)
        }
        "ot" => {
            let parts: Vec<String> = scene
                .objects
                .iter()
                .map(|o| format!("{} that {}", object_np(o, style, rng), finite(o, style, rng)))
                .collect();
            join_list(&parts, rng)
        }
        "cg" => {
            let parts: Vec<String> =
                scene.objects.iter().map(|o| format!("{} {}", object_bare(o, style, rng), gerund(o, style, rng))).collect();
            parts.join(", ")
        }
        "o" => object_np(&scene.objects[0], style, rng),
        "v" => finite(&scene.objects[0], style, rng),
        "n" => {
            let counts: Vec<&str> = COUNTS.iter().copied().filter(|c| c.starts_with(number_word(scene.objects.len()))).collect();
            rng.pick(&counts).to_string()
        }
        other => unreachable!("unknown caption slot {{{other}}}"),
    });
    if let Some(cam) = scene.camera {
        let (finite, gerund) = camera_phrases(cam.kind);
        let joins = match style {
            Sentence => CAMERA_SENTENCE,
            Short => CAMERA_SHORT,
            Fragment => CAMERA_FRAGMENT,
        };
        let join = rng.pick(joins);
        let (cv, cg) = (rng.pick(finite), rng.pick(gerund));
        text.push_str(&fill(join, |slot| if slot == "cv" { cv.to_string() } else { cg.to_string() }));
    }
    let text = fix_articles(&text);
    match style {
        Sentence => sentence_case(&text) + ".",
        Short if rng.chance(0.25) => text + ".",
        _ => text,
    }
}

/// "a orange sky" -> "an orange sky", wherever the tables put "a" before a vowel.
fn fix_articles(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 4);
    let mut words = text.split(' ').peekable();
    while let Some(w) = words.next() {
        out.push_str(w);
        if w == "a" && words.peek().is_some_and(|next| next.starts_with(['a', 'e', 'i', 'o', 'u'])) {
            out.push('n');
        }
        if words.peek().is_some() {
            out.push(' ');
        }
    }
    out
}

fn number_word(n: usize) -> &'static str {
    match n {
        2 => "two",
        _ => "three",
    }
}

/// One fixed phrasing: sizes always named, canonical shape words, "moves <direction>".
pub fn canonical_caption(scene: &Scene) -> String {
    let parts: Vec<String> = scene
        .objects
        .iter()
        .map(|o| {
            let size = match o.size {
                Size::Small => "small",
                Size::Medium => "medium",
                Size::Large => "large",
            };
            let shape = match o.shape {
                Shape::Circle => "ball",
                Shape::Square => "square",
                Shape::Triangle => "triangle",
                Shape::Star => "star",
            };
            let motion = match o.motion {
                Motion::Left => "moves left",
                Motion::Right => "moves right",
                Motion::Up => "moves up",
                Motion::Down => "moves down",
                Motion::UpLeft => "moves up and to the left",
                Motion::UpRight => "moves up and to the right",
                Motion::DownLeft => "moves down and to the left",
                Motion::DownRight => "moves down and to the right",
                Motion::Bounce => "bounces",
                Motion::Still => "stays still",
                Motion::Grow => "grows",
                Motion::Shrink => "shrinks",
                Motion::Spin => "spins",
            };
            format!("a {size} {} {shape} {motion}", o.color.name())
        })
        .collect();
    let mut text = match parts.len() {
        1 => parts[0].clone(),
        n => format!("{} and {}", parts[..n - 1].join(", "), parts[n - 1]),
    };
    text.push(' ');
    text.push_str(&match scene.background {
        Background::Plain { color } => format!("on a {} background", color.name()),
        Background::SkyGround { sky, ground, .. } => format!("under a {} sky over {} ground", sky.name(), ground.name()),
        Background::Checkerboard { a, b, .. } => format!("on a {} and {} checkerboard floor", a.name(), b.name()),
        Background::Gradient { top, bottom } => format!("on a {} to {} gradient background", top.name(), bottom.name()),
    });
    if let Some(cam) = scene.camera {
        text.push_str(match cam.kind {
            CameraKind::PanLeft => " as the camera pans left",
            CameraKind::PanRight => " as the camera pans right",
            CameraKind::ZoomIn => " as the camera zooms in",
            CameraKind::ZoomOut => " as the camera zooms out",
        });
    }
    fix_articles(&text)
}

/// Chance of naming the size: detailed captions name it more often.
fn size_chance(style: Style) -> f32 {
    match style {
        Short => 0.5,
        Sentence => 0.8,
        Fragment => 0.4,
    }
}

/// "small red ball" (no article).
fn object_bare(o: &Object, style: Style, rng: &mut Rng) -> String {
    let shape = rng.pick(shape_words(o.shape, o.size));
    if rng.chance(size_chance(style)) {
        format!("{} {} {shape}", rng.pick(size_words(o.size)), o.color.name())
    } else {
        format!("{} {shape}", o.color.name())
    }
}

/// "a small red ball", "an orange star", "the blue box".
fn object_np(o: &Object, style: Style, rng: &mut Rng) -> String {
    let bare = object_bare(o, style, rng);
    // "a" becomes "an" before a vowel in `fix_articles`.
    let article = if rng.chance(0.1) { "the" } else { "a" };
    format!("{article} {bare}")
}

fn finite(o: &Object, style: Style, rng: &mut Rng) -> String {
    motion_phrase(o, style, rng, true)
}

fn gerund(o: &Object, style: Style, rng: &mut Rng) -> String {
    motion_phrase(o, style, rng, false)
}

fn motion_phrase(o: &Object, style: Style, rng: &mut Rng, finite: bool) -> String {
    let pick_form = |pair: &(&'static str, &'static str)| if finite { pair.0 } else { pair.1 };
    let (place_finite, place_gerund) = in_place_phrases(o.motion);
    if !place_finite.is_empty() {
        return rng.pick(if finite { place_finite } else { place_gerund }).to_string();
    }
    // Verbs that carry their own direction (rises, falls) skip the direction phrase.
    let mut verbs: Vec<(&str, bool)> = TRAVEL_VERBS.iter().map(|v| (pick_form(v), false)).collect();
    match o.motion {
        Motion::Left | Motion::Right if o.shape == Shape::Circle => verbs.push((pick_form(&ROLL_VERB), false)),
        Motion::Up => verbs.extend(RISE_VERBS.iter().map(|v| (pick_form(v), true))),
        Motion::Down => verbs.extend(FALL_VERBS.iter().map(|v| (pick_form(v), true))),
        _ => {}
    }
    let (verb, directed) = rng.pick(&verbs);
    let mut out = verb.to_string();
    if style == Sentence && rng.chance(0.2) {
        out.push(' ');
        out.push_str(rng.pick(ADVERBS));
    }
    if !directed {
        out.push(' ');
        out.push_str(&direction_phrase(o.motion, rng));
    }
    out
}

fn direction_phrase(motion: Motion, rng: &mut Rng) -> String {
    if !motion.is_diagonal() {
        return rng.pick(direction_words(motion)).to_string();
    }
    let up = matches!(motion, Motion::UpLeft | Motion::UpRight);
    let left = matches!(motion, Motion::UpLeft | Motion::DownLeft);
    let template = rng.pick(DIAGONAL_WORDS);
    fill(template, |slot| {
        match slot {
            "v" => if up { "up" } else { "down" },
            "vv" => if up { "top" } else { "bottom" },
            "uu" => if up { "upper" } else { "lower" },
            _ => if left { "left" } else { "right" },
        }
        .to_string()
    })
}

/// `form` 0: prepositional phrase, 1: noun phrase, 2: short form.
fn background_phrase(bg: &Background, form: usize, rng: &mut Rng) -> String {
    match *bg {
        Background::Plain { color } => fill(rng.pick(PLAIN[form]), |_| color.name().to_string()),
        Background::SkyGround { sky, ground, .. } => {
            let ground_phrase = fill(rng.pick(ground_words(ground)), |_| ground.name().to_string());
            fill(rng.pick(SKY_GROUND[form]), |slot| if slot == "s" { sky.name().to_string() } else { ground_phrase.clone() })
        }
        Background::Checkerboard { a, b, .. } => {
            let (x, y) = if rng.chance(0.5) { (a, b) } else { (b, a) };
            fill(rng.pick(CHECKERBOARD[form]), |_| format!("{} and {}", x.name(), y.name()))
        }
        Background::Gradient { top, bottom } => {
            fill(rng.pick(GRADIENT[form]), |slot| if slot == "t" { top.name().to_string() } else { bottom.name().to_string() })
        }
    }
}

/// Clauses with their own verbs: "A and B", "A while B", "A, B and C".
fn join_clauses(parts: &[String], rng: &mut Rng) -> String {
    match parts.len() {
        2 => {
            let joiner = rng.pick(&[" and ", ", while ", " while ", ", and "]);
            format!("{}{joiner}{}", parts[0], parts[1])
        }
        _ => join_list(parts, rng),
    }
}

/// Noun phrases: "A", "A and B", "A, B and C" or "A, B, and C".
fn join_list(parts: &[String], rng: &mut Rng) -> String {
    match parts.len() {
        0 => String::new(),
        1 => parts[0].clone(),
        n => {
            let last = if n > 2 && rng.chance(0.5) { ", and " } else { " and " };
            format!("{}{last}{}", parts[..n - 1].join(", "), parts[n - 1])
        }
    }
}

/// Replaces each `{slot}` in `template` with `value(slot)`.
fn fill(template: &str, mut value: impl FnMut(&str) -> String) -> String {
    let mut out = String::with_capacity(template.len() + 32);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..].find('}').expect("unclosed slot in caption template") + open;
        out.push_str(&value(&rest[open + 1..close]));
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

/// Capital letter at the start and after each ". ".
fn sentence_case(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut upper = true;
    let mut prev = ' ';
    for c in text.chars() {
        if upper && c.is_alphabetic() {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
        if c == ' ' && prev == '.' {
            upper = true;
        }
        prev = c;
    }
    out
}

/// How the tokenizer splits caption text into words: lowercase, whitespace, each punctuation mark
/// on its own (the `WhitespaceSplit` + `Punctuation` pre-tokenizers; captions are ASCII).
pub fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for chunk in text.to_lowercase().split_whitespace() {
        let mut word = String::new();
        for c in chunk.chars() {
            if c.is_ascii_punctuation() {
                if !word.is_empty() {
                    out.push(std::mem::take(&mut word));
                }
                out.push(c.to_string());
            } else {
                word.push(c);
            }
        }
        if !word.is_empty() {
            out.push(word);
        }
    }
    out
}

/// Every word (and punctuation mark) any caption can contain, lowercased, sorted.
pub fn vocabulary() -> Vec<String> {
    let mut set = BTreeSet::new();
    collect_vocabulary(&mut set, None);
    set.into_iter().collect()
}

/// Words the captions of one split can contain.
pub fn vocabulary_for(split: Split) -> Vec<String> {
    let mut set = BTreeSet::new();
    collect_vocabulary(&mut set, Some(split));
    set.into_iter().collect()
}

fn collect_vocabulary(set: &mut BTreeSet<String>, split: Option<Split>) {
    let mut add = |text: &str| {
        // Slot names are not words: drop `{...}` before splitting.
        let plain = fill(text, |_| " ".to_string());
        set.extend(words(&plain));
    };
    for tpl in TEMPLATES.iter().filter(|t| split.is_none_or(|s| t.split == s)) {
        add(tpl.text);
    }
    let tables: [&[&str]; 16] = [
        ARTICLES,
        ALL_SHAPE_WORDS,
        DIAGONAL_WORDS,
        ADVERBS,
        PLAIN[0],
        PLAIN[1],
        PLAIN[2],
        SKY_GROUND[0],
        SKY_GROUND[1],
        SKY_GROUND[2],
        ALL_GROUND_WORDS,
        CHECKERBOARD[0],
        CHECKERBOARD[1],
        CHECKERBOARD[2],
        CAMERA_SENTENCE,
        COUNTS,
    ];
    for table in tables.iter().chain([&CAMERA_SHORT, &CAMERA_FRAGMENT, &GRADIENT[0], &GRADIENT[1], &GRADIENT[2]]) {
        table.iter().for_each(|s| add(s));
    }
    for size in Size::ALL {
        size_words(size).iter().for_each(|s| add(s));
    }
    for motion in Motion::ALL {
        direction_words(motion).iter().for_each(|s| add(s));
        let (f, g) = in_place_phrases(motion);
        f.iter().chain(g).for_each(|s| add(s));
    }
    for (f, g) in TRAVEL_VERBS.iter().chain(RISE_VERBS).chain(FALL_VERBS).chain([&ROLL_VERB]) {
        add(f);
        add(g);
    }
    for kind in CameraKind::ALL {
        let (f, g) = camera_phrases(kind);
        f.iter().chain(g).for_each(|s| add(s));
    }
    for c in Color::ALL {
        add(c.name());
    }
    // Words the builder itself inserts: diagonal fillers, list joiners, "that", canonical forms.
    add("up down top bottom upper lower left right and while , that . moves stays still as the camera");
    add("on under over checkerboard floor gradient background ground sky ball square triangle star medium");
}
