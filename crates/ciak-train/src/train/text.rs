//! Pretraining the toy text encoder before the DiT, as Wan's UMT5 is pretrained and then frozen.
//!
//! Trained jointly with the DiT from scratch, the encoder learns what a caption says only through
//! the DiT's cross-attention, and that signal is weak: the caption decides the clip only near
//! sigma 1, where sampling starts (docs/training.md). Here the encoder first learns to read the
//! scene from the caption directly: learned slot queries (background, up to three objects,
//! camera) attend over its output tokens, and small heads name the background's kind and
//! colours, each object's presence, colour, shape, size and motion, and the camera move, with a
//! cross-entropy loss against the scene the caption was made from. The heads are thrown away;
//! the encoder is then frozen for the DiT run, so the DiT reads a fixed text representation in
//! which those facts are already resolved from the words and their order.
//!
//! The slot heads pool over all tokens, so they do not make a role's colour sit on the role's own
//! tokens: in the shipped encoder "sky" moves as much with the ground's colour as with its own,
//! and the DiT cannot tell which colour goes where. With `token_weight`, per-token heads ask each
//! colour word which role it fills (object, plain background, sky, ground, checkerboard, gradient
//! top or bottom) and each shape noun, "sky" and ground noun what colour its thing has
//! ([`TokenLabels`]); `examples/roles_probe.rs` measures the binding.
//!
//! Captions are drawn from the training templates and scenes; the report scores the heads on
//! held-out scenes and phrasings (`Split::Eval`), the same split `ciak eval` uses.
use super::dit::{init_var, DitModels, Init};
use super::flow::TrainRng;
use super::optim::{clip_factor, grad_norm, AdamW, AdamWConfig, LrSchedule, Param};
use super::{Result, TrainError};
use crate::caption::caption_for;
use crate::caption_words::{shape_words, ALL_GROUND_WORDS};
use crate::dataset::sample;
use crate::rng::Rng;
use crate::split::Split;
use crate::world::{Background, CameraKind, Color, Motion, SamplerConfig, Scene, Shape, Size};
use candle_core::{DType, Device, IndexOp, Tensor, D};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

/// Settings of the pretraining (the `text_pretrain` key of a DiT config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextPretrainConfig {
    pub steps: u64,
    /// Captions per step.
    pub batch_size: usize,
    /// Peak learning rate (AdamW, linear warm-up, cosine to a tenth).
    pub lr: f64,
    pub warmup_steps: u64,
    /// Held-out captions the report scores.
    #[serde(default = "default_eval_captions")]
    pub eval_captions: usize,
    /// Weight of the per-token heads' loss beside the slot heads' (0, the default: no token heads).
    /// They ask each colour word which role it fills and each shape noun, "sky" and "ground" what
    /// colour their thing has ([`TokenLabels`]), so a role's colour sits on the role's own tokens.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub token_weight: f64,
    /// With `init_from`: run this pretraining again on the folder's text encoder before the DiT
    /// steps (default false: the folder's encoder is taken as it is).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rerun_on_init: bool,
}

impl Default for TextPretrainConfig {
    /// The committed configs' settings, without token heads.
    fn default() -> Self {
        Self { steps: 3000, batch_size: 64, lr: 2e-3, warmup_steps: 50, eval_captions: default_eval_captions(), token_weight: 0.0, rerun_on_init: false }
    }
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

fn default_eval_captions() -> usize {
    256
}

impl TextPretrainConfig {
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.steps == 0 || self.batch_size == 0 || self.eval_captions == 0 {
            return Err(format!(
                "expected text_pretrain.steps, batch_size and eval_captions >= 1, got {}, {}, {}",
                self.steps, self.batch_size, self.eval_captions
            ));
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(format!("expected text_pretrain.lr > 0, got {}", self.lr));
        }
        if !(self.token_weight >= 0.0 && self.token_weight.is_finite()) {
            return Err(format!("expected text_pretrain.token_weight >= 0, got {}", self.token_weight));
        }
        Ok(())
    }
}

/// Slots the queries pool into: background, three objects, camera.
const SLOTS: usize = 5;
const MAX_OBJECTS: usize = 3;
const NO_COLOR: u32 = Color::ALL.len() as u32;

/// What the heads predict of one scene (class indices).
#[derive(Debug, Clone, PartialEq)]
pub struct SceneLabels {
    /// plain, sky over ground, checkerboard, gradient
    pub background_kind: u32,
    pub background_a: u32,
    /// `NO_COLOR` for a plain background.
    pub background_b: u32,
    /// Per object in caption order: colour, shape, size, motion.
    pub objects: Vec<[u32; 4]>,
    /// 0: none, then `CameraKind::ALL` order.
    pub camera: u32,
}

fn index_of<T: PartialEq>(all: &[T], x: &T) -> u32 {
    all.iter().position(|a| a == x).expect("a value of the enumeration") as u32
}

impl SceneLabels {
    pub fn of(scene: &Scene) -> Self {
        let c = |x: &Color| index_of(&Color::ALL, x);
        let (background_kind, background_a, background_b) = match &scene.background {
            Background::Plain { color } => (0, c(color), NO_COLOR),
            Background::SkyGround { sky, ground, .. } => (1, c(sky), c(ground)),
            // unordered in the captions' sense: the lower index first
            Background::Checkerboard { a, b, .. } => (2, c(a).min(c(b)), c(a).max(c(b))),
            Background::Gradient { top, bottom } => (3, c(top), c(bottom)),
        };
        let objects = scene
            .objects
            .iter()
            .take(MAX_OBJECTS)
            .map(|o| [c(&o.color), index_of(&Shape::ALL, &o.shape), index_of(&Size::ALL, &o.size), index_of(&Motion::ALL, &o.motion)])
            .collect();
        let camera = scene.camera.map_or(0, |m| 1 + index_of(&CameraKind::ALL, &m.kind));
        Self { background_kind, background_a, background_b, objects, camera }
    }
}

/// Per head: its name, the right answers and the answers scored.
type Hits = Vec<(String, usize, usize)>;

/// Roles a colour word can fill, the classes of the `token_role` head.
const ROLES: [&str; 7] = ["object", "plain", "sky", "ground", "checkerboard", "gradient_top", "gradient_bottom"];

/// The token ids the per-token labels are read from (the model's own tokenizer).
pub struct TokenWords {
    colours: Vec<(u32, Color)>,
    shapes: Vec<(u32, Shape)>,
    sky: Vec<u32>,
    ground: Vec<u32>,
}

impl TokenWords {
    /// Looks every colour name, shape noun and sky or ground noun up in `models`' tokenizer;
    /// words it does not know are left out.
    pub fn of(models: &DitModels) -> Result<Self> {
        let text = &models.text_encoder;
        let id = |word: &str| -> Result<Option<u32>> {
            if !text.tokenizer().unknown_words(word)?.is_empty() {
                return Ok(None);
            }
            Ok(Some(text.tokenize(&[word.to_string()])?.input_ids.get(0)?.get(0)?.to_scalar::<u32>()?))
        };
        let mut colours = Vec::new();
        for c in Color::ALL {
            colours.extend(id(c.name())?.map(|i| (i, c)));
        }
        let mut shapes = Vec::new();
        for shape in Shape::ALL {
            for size in Size::ALL {
                for w in shape_words(shape, size) {
                    if let Some(i) = id(w)?.filter(|i| !shapes.contains(&(*i, shape))) {
                        shapes.push((i, shape));
                    }
                }
            }
        }
        let sky = id("sky")?.into_iter().collect();
        let mut ground = Vec::new();
        for w in ALL_GROUND_WORDS {
            ground.extend(id(w.trim_start_matches("{c} "))?);
        }
        Ok(Self { colours, shapes, sky, ground })
    }
}

/// What the per-token heads are told about one caption: (token position, class) pairs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TokenLabels {
    /// At each colour word whose colour fills one role in the scene: that role ([`ROLES`]).
    pub roles: Vec<(usize, u32)>,
    /// At each shape noun whose objects all have one colour, and at "sky" and the ground nouns of
    /// a sky over ground: that colour.
    pub colours: Vec<(usize, u32)>,
}

impl TokenLabels {
    /// Labels of the caption tokenized as `ids` (its first `len` tokens) for `scene`. A token that
    /// could mean two things (a colour that fills two roles, a noun of two objects of different
    /// colours) gets no label.
    pub fn of(scene: &Scene, ids: &[u32], len: usize, words: &TokenWords) -> Self {
        let c = |x: &Color| index_of(&Color::ALL, x);
        let (sky, ground) = match &scene.background {
            Background::SkyGround { sky, ground, .. } => (Some(*sky), Some(*ground)),
            _ => (None, None),
        };
        let mut out = Self::default();
        for (p, id) in ids.iter().take(len).enumerate() {
            if let Some((_, colour)) = words.colours.iter().find(|(i, _)| i == id) {
                let mut roles: Vec<u32> = scene.objects.iter().filter(|o| o.color == *colour).map(|_| 0).collect();
                match &scene.background {
                    Background::Plain { color } => roles.extend((color == colour).then_some(1)),
                    Background::SkyGround { sky, ground, .. } => {
                        roles.extend((sky == colour).then_some(2));
                        roles.extend((ground == colour).then_some(3));
                    }
                    Background::Checkerboard { a, b, .. } => roles.extend((a == colour || b == colour).then_some(4)),
                    Background::Gradient { top, bottom } => {
                        roles.extend((top == colour).then_some(5));
                        roles.extend((bottom == colour).then_some(6));
                    }
                }
                roles.dedup();
                if let [role] = roles[..] {
                    out.roles.push((p, role));
                }
            } else if let Some((_, shape)) = words.shapes.iter().find(|(i, _)| i == id) {
                let mut colours: Vec<u32> = scene.objects.iter().filter(|o| o.shape == *shape).map(|o| c(&o.color)).collect();
                colours.dedup();
                if let [colour] = colours[..] {
                    out.colours.push((p, colour));
                }
            } else if let Some(colour) = sky.filter(|_| words.sky.contains(id)).or(ground.filter(|_| words.ground.contains(id))) {
                out.colours.push((p, c(&colour)));
            }
        }
        out
    }
}

/// The heads' names and class counts, in the order [`Heads::forward`] returns them.
const BACKGROUND_HEADS: [(&str, usize); 3] = [("background_kind", 4), ("background_a", 10), ("background_b", 11)];
const OBJECT_HEADS: [(&str, usize); 5] = [("present", 2), ("color", 10), ("shape", 4), ("size", 3), ("motion", 13)];
const CAMERA_HEAD: (&str, usize) = ("camera", 5);

/// Slot queries and per-slot heads on the encoder's output, and the per-token heads.
struct Heads {
    vars: VarMap,
    queries: Tensor,
    hidden: Vec<(Tensor, Tensor)>,
    /// Per slot: its heads as (weight [n, d], bias [n]).
    heads: Vec<Vec<(Tensor, Tensor)>>,
    /// With `token_weight`: a hidden layer, then the role and colour heads, on single tokens.
    token: Option<[(Tensor, Tensor); 3]>,
}

/// A hidden layer with a residual connection: h = x + gelu(x W^T + b).
fn residual_hidden(x: &Tensor, (w, b): &(Tensor, Tensor)) -> Result<Tensor> {
    Ok((x.broadcast_matmul(&w.t()?)?.broadcast_add(b)?.gelu()? + x)?)
}

/// Per-row cross-entropy [N] of logits [N, n] against one target class per row.
fn row_ce(logits: &Tensor, targets: &[u32], device: &Device) -> Result<Tensor> {
    let t = Tensor::new(targets, device)?.unsqueeze(1)?;
    Ok(candle_nn::ops::log_softmax(logits, 1)?.gather(&t, 1)?.squeeze(1)?.neg()?)
}

fn linear(x: &Tensor, (w, b): &(Tensor, Tensor)) -> Result<Tensor> {
    Ok(x.broadcast_matmul(&w.t()?)?.broadcast_add(b)?)
}

impl Heads {
    fn new(d: usize, seed: u64, token_heads: bool, device: &Device) -> Result<Self> {
        let vars = VarMap::new();
        let vb = VarBuilder::from_varmap(&vars, DType::F32, device);
        let mut rng = TrainRng::new(seed ^ 0x7E47_0000_0000_0001);
        let mut var = |name: String, shape: &[usize], init: Init| -> Result<Tensor> {
            let t = vb.get_with_hints(shape, &name, candle_nn::Init::Const(0.0))?;
            let data = vars.data().lock().expect("var map lock");
            init_var(&data[&name], init, &mut rng)?;
            Ok(t)
        };
        let queries = var("queries".into(), &[SLOTS, d], Init::Normal(1.0))?;
        let bound = |fan_in: usize| Init::Uniform(1.0 / (fan_in as f64).sqrt());
        let mut hidden = Vec::new();
        let mut heads = Vec::new();
        for s in 0..SLOTS {
            hidden.push((var(format!("slot{s}.hidden.weight"), &[d, d], bound(d))?, var(format!("slot{s}.hidden.bias"), &[d], Init::Zeros)?));
            let names: Vec<(&str, usize)> = match s {
                0 => BACKGROUND_HEADS.to_vec(),
                4 => vec![CAMERA_HEAD],
                _ => OBJECT_HEADS.to_vec(),
            };
            let mut slot = Vec::new();
            for (name, n) in names {
                slot.push((var(format!("slot{s}.{name}.weight"), &[n, d], bound(d))?, var(format!("slot{s}.{name}.bias"), &[n], Init::Zeros)?));
            }
            heads.push(slot);
        }
        let token = if token_heads {
            Some([
                (var("token.hidden.weight".into(), &[d, d], bound(d))?, var("token.hidden.bias".into(), &[d], Init::Zeros)?),
                (var("token.role.weight".into(), &[ROLES.len(), d], bound(d))?, var("token.role.bias".into(), &[ROLES.len()], Init::Zeros)?),
                (var("token.colour.weight".into(), &[Color::ALL.len(), d], bound(d))?, var("token.colour.bias".into(), &[Color::ALL.len()], Init::Zeros)?),
            ])
        } else {
            None
        };
        Ok(Self { vars, queries, hidden, heads, token })
    }

    /// The token heads' cross-entropy summed over the labelled tokens, their count, and the hits
    /// per head (`token_role`, `token_colour`); none without token heads.
    fn token_loss(&self, enc: &Tensor, labels: &[TokenLabels]) -> Result<Option<(Tensor, usize, Hits)>> {
        let Some([hidden, role, colour]) = &self.token else { return Ok(None) };
        let (b, l, d) = enc.dims3()?;
        let flat = enc.reshape((b * l, d))?;
        let mut sums = Vec::new();
        let mut count = 0;
        let mut hits = Vec::new();
        for (name, head, pick) in [
            ("token_role", role, (|t: &TokenLabels| &t.roles) as fn(&TokenLabels) -> &Vec<(usize, u32)>),
            ("token_colour", colour, |t: &TokenLabels| &t.colours),
        ] {
            let (rows, targets): (Vec<u32>, Vec<u32>) =
                labels.iter().enumerate().flat_map(|(r, t)| pick(t).iter().map(move |&(p, class)| ((r * l + p) as u32, class))).unzip();
            if rows.is_empty() {
                continue;
            }
            let x = flat.index_select(&Tensor::new(rows.as_slice(), enc.device())?, 0)?;
            let logits = linear(&residual_hidden(&x, hidden)?, head)?;
            let right = logits.argmax(D::Minus1)?.to_vec1::<u32>()?.iter().zip(&targets).filter(|(p, t)| p == t).count();
            hits.push((name.to_string(), right, targets.len()));
            sums.push(row_ce(&logits, &targets, enc.device())?.sum_all()?);
            count += targets.len();
        }
        if sums.is_empty() {
            return Ok(Some((Tensor::zeros((), DType::F32, enc.device())?, 0, hits)));
        }
        Ok(Some((Tensor::stack(&sums, 0)?.sum_all()?, count, hits)))
    }

    fn params(&self) -> Vec<Param> {
        let data = self.vars.data().lock().expect("var map lock");
        let mut v: Vec<Param> = data.iter().map(|(k, v)| Param::new(format!("heads.{k}"), v.clone())).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Encoder output [B, L, d] (zero rows past each caption) -> per slot, per head, logits [B, n].
    fn forward(&self, enc: &Tensor) -> Result<Vec<Vec<Tensor>>> {
        let (_, _, d) = enc.dims3()?;
        // padding rows are exactly zero: keep them out of the attention
        let real = enc.sqr()?.sum_keepdim(D::Minus1)?.gt(0.0)?.to_dtype(DType::F32)?; // [B, L, 1]
        let mask = ((real.transpose(1, 2)? - 1.0)? * 1e4)?; // [B, 1, L]: 0 or -1e4
        let logits = enc.broadcast_matmul(&self.queries.t()?)?.transpose(1, 2)?; // [B, S, L]
        let logits = ((logits / (d as f64).sqrt())?).broadcast_add(&mask)?;
        let attn = candle_nn::ops::softmax_last_dim(&logits)?;
        let pooled = attn.matmul(enc)?; // [B, S, d]
        let mut out = Vec::with_capacity(SLOTS);
        for (s, slot) in self.heads.iter().enumerate() {
            let h = residual_hidden(&pooled.i((.., s))?, &self.hidden[s])?;
            out.push(slot.iter().map(|head| linear(&h, head)).collect::<Result<Vec<_>>>()?);
        }
        Ok(out)
    }
}

/// The injective maps of `n` objects (n <= 3) into the three object slots: `slots[j]` is object
/// j's slot.
fn assignments(n: usize) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = vec![vec![]];
    for _ in 0..n {
        let mut next = Vec::new();
        for a in &out {
            for s in (0..MAX_OBJECTS).filter(|s| !a.contains(s)) {
                next.push([a.as_slice(), &[s]].concat());
            }
        }
        out = next;
    }
    out
}

/// Cross-entropy of the heads against the labels (mean over the terms that apply), and for each
/// head the number of right answers and of answers scored.
///
/// Objects are matched to slots per caption, as DETR matches boxes: among the ways to put the
/// scene's objects into the three object slots, the one with the lowest attribute loss counts,
/// and slots left empty learn "no object". So a slot need not know an object's place in the
/// caption's order (relative positions hardly can), only bind its words.
fn loss_and_hits(logits: &[Vec<Tensor>], labels: &[SceneLabels], device: &Device) -> Result<(Tensor, Hits)> {
    let b = labels.len();
    let mut sums: Vec<Tensor> = Vec::new();
    let mut terms = 0usize;
    let mut hits: Hits = Vec::new();
    let mut hit = |name: &str, right: bool| match hits.iter_mut().find(|h| h.0 == name) {
        Some(h) => (h.1, h.2) = (h.1 + usize::from(right), h.2 + 1),
        None => hits.push((name.to_string(), usize::from(right), 1)),
    };
    let row_ce = |l: &Tensor, targets: &[u32]| row_ce(l, targets, device);
    let argmax = |l: &Tensor| -> Result<Vec<u32>> { Ok(l.argmax(D::Minus1)?.to_vec1::<u32>()?) };

    let mut whole = |name: &str, l: &Tensor, targets: Vec<u32>, sums: &mut Vec<Tensor>| -> Result<()> {
        for (p, t) in argmax(l)?.iter().zip(&targets) {
            hit(name, p == t);
        }
        sums.push(row_ce(l, &targets)?.sum_all()?);
        Ok(())
    };
    for (h, (name, _)) in BACKGROUND_HEADS.iter().enumerate() {
        let t = labels.iter().map(|l| [l.background_kind, l.background_a, l.background_b][h]).collect();
        whole(name, &logits[0][h], t, &mut sums)?;
        terms += b;
    }
    whole(CAMERA_HEAD.0, &logits[4][0], labels.iter().map(|l| l.camera).collect(), &mut sums)?;
    terms += b;

    // attribute cost of object j in slot k, per row: [k][j] -> [B] (rows without object j: 0)
    let mut cost: Vec<Vec<Tensor>> = Vec::new();
    for k in 0..MAX_OBJECTS {
        let mut row = Vec::new();
        for j in 0..MAX_OBJECTS {
            let mut c: Option<Tensor> = None;
            for h in 1..OBJECT_HEADS.len() {
                let t: Vec<u32> = labels.iter().map(|l| l.objects.get(j).map_or(0, |o| o[h - 1])).collect();
                let ce = row_ce(&logits[1 + k][h], &t)?;
                c = Some(match c {
                    Some(c) => (c + ce)?,
                    None => ce,
                });
            }
            row.push(c.expect("object heads"));
        }
        cost.push(row);
    }
    let values: Vec<Vec<Vec<f32>>> =
        cost.iter().map(|r| r.iter().map(|c| c.to_vec1::<f32>()).collect::<candle_core::Result<_>>()).collect::<candle_core::Result<_>>()?;
    let mut chosen = vec![vec![vec![0f32; b]; MAX_OBJECTS]; MAX_OBJECTS]; // [k][j][row]
    let mut present = vec![vec![0u32; b]; MAX_OBJECTS]; // [k][row]
    let predictions: Vec<Vec<Vec<u32>>> =
        (0..MAX_OBJECTS).map(|k| (0..OBJECT_HEADS.len()).map(|h| argmax(&logits[1 + k][h])).collect()).collect::<Result<_>>()?;
    for (r, l) in labels.iter().enumerate() {
        let best = assignments(l.objects.len())
            .into_iter()
            .min_by(|a, c| {
                let total = |x: &Vec<usize>| x.iter().enumerate().map(|(j, &k)| values[k][j][r]).sum::<f32>();
                total(a).total_cmp(&total(c))
            })
            .expect("at least the empty assignment");
        for (j, &k) in best.iter().enumerate() {
            chosen[k][j][r] = 1.0;
            present[k][r] = 1;
            for (h, (name, _)) in OBJECT_HEADS.iter().enumerate().skip(1) {
                hit(&format!("object_{name}"), predictions[k][h][r] == l.objects[j][h - 1]);
            }
            terms += OBJECT_HEADS.len() - 1;
        }
    }
    for k in 0..MAX_OBJECTS {
        for j in 0..MAX_OBJECTS {
            let w = Tensor::new(chosen[k][j].as_slice(), device)?;
            sums.push((&cost[k][j] * w)?.sum_all()?);
        }
        for (p, t) in predictions[k][0].iter().zip(&present[k]) {
            hit("object_present", p == t);
        }
        sums.push(row_ce(&logits[1 + k][0], &present[k])?.sum_all()?);
        terms += b;
    }
    let total = Tensor::stack(&sums, 0)?.sum_all()?;
    Ok(((total / terms as f64)?, hits))
}

/// Salts of the pretraining's caption streams.
const SCENE_SALT: u64 = 0x7E47_5CE0_0000_0001;
const CAPTION_SALT: u64 = 0x7E47_CA90_0000_0002;

/// Item `index` of the stream: a scene and one of its captions.
fn caption_item(seed: u64, index: u64, split: Split) -> (String, Scene) {
    let scene = sample(seed ^ SCENE_SALT, index, &SamplerConfig::default(), split).scene;
    let caption = caption_for(&scene, &mut Rng::for_item(seed ^ CAPTION_SALT, index), split);
    (caption, scene)
}

/// The pretraining loss of items `indices` of the stream (`token_weight` times the token heads'
/// mean loss added to the slot heads'), and the hits per head.
fn batch_loss(
    models: &DitModels,
    heads: &Heads,
    words: &TokenWords,
    token_weight: f64,
    seed: u64,
    indices: impl Iterator<Item = u64>,
    split: Split,
) -> Result<(Tensor, Hits)> {
    let (captions, scenes): (Vec<String>, Vec<Scene>) = indices.map(|i| caption_item(seed, i, split)).unzip();
    let labels: Vec<SceneLabels> = scenes.iter().map(SceneLabels::of).collect();
    let enc = models.encode_text(&captions)?;
    let (mut loss, mut hits) = loss_and_hits(&heads.forward(&enc)?, &labels, enc.device())?;
    if heads.token.is_some() {
        let tokens = models.text_encoder.tokenize(&captions)?;
        let ids = tokens.input_ids.to_vec2::<u32>()?;
        let token_labels: Vec<TokenLabels> =
            scenes.iter().zip(&ids).zip(&tokens.prompts).map(|((scene, ids), p)| TokenLabels::of(scene, ids, p.seq_len, words)).collect();
        if let Some((sum, count, token_hits)) = heads.token_loss(&enc, &token_labels)? {
            if count > 0 {
                loss = (loss + (sum * (token_weight / count as f64))?)?;
            }
            hits.extend(token_hits);
        }
    }
    Ok((loss, hits))
}

/// Accuracy per head on held-out captions, and the run's last training loss.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TextPretrainReport {
    pub steps: u64,
    pub last_loss: f64,
    pub eval_captions: usize,
    /// (head, accuracy on the held-out captions it applies to)
    pub accuracy: Vec<(String, f64)>,
    pub seconds: f64,
}

impl TextPretrainReport {
    /// One line: the steps, the loss and the held-out accuracy of the main heads.
    pub fn summary(&self) -> String {
        let acc = |name: &str| self.accuracy.iter().find(|(n, _)| n == name).map_or(f64::NAN, |(_, a)| a * 100.0);
        format!(
            "{} steps in {:.0} s, loss {:.3}; held-out accuracy: background {:.0}% / {:.0}%, objects: colour {:.0}% shape {:.0}% size {:.0}% motion {:.0}%",
            self.steps,
            self.seconds,
            self.last_loss,
            acc("background_a"),
            acc("background_b"),
            acc("object_color"),
            acc("object_shape"),
            acc("object_size"),
            acc("object_motion")
        ) + &self
            .accuracy
            .iter()
            .filter(|(n, _)| n.starts_with("token_"))
            .map(|(n, a)| format!(", {} {:.0}%", n.replace('_', " "), a * 100.0))
            .collect::<String>()
    }
}

/// Trains `models`' text encoder with the slot heads (see the module docs); deterministic in
/// `seed`.
pub fn pretrain_text_encoder(models: &DitModels, cfg: &TextPretrainConfig, seed: u64, adamw: &AdamWConfig, device: &Device) -> Result<TextPretrainReport> {
    cfg.validate().map_err(|message| TrainError::Config { path: Default::default(), message })?;
    let start = std::time::Instant::now();
    let heads = Heads::new(models.text_cfg.d_model, seed, cfg.token_weight > 0.0, device)?;
    let words = TokenWords::of(models)?;
    let mut params: Vec<Param> = models.params().into_iter().filter(|p| p.name.starts_with("text_encoder.")).collect();
    params.extend(heads.params());
    let mut opt = AdamW::new(params.clone(), adamw.clone())?;
    let schedule = LrSchedule { peak: cfg.lr, warmup_steps: cfg.warmup_steps, total_steps: cfg.steps, min_ratio: 0.1 };
    let mut last_loss = f64::NAN;
    for step in 0..cfg.steps {
        let batch = step * cfg.batch_size as u64..(step + 1) * cfg.batch_size as u64;
        let (loss, _) = batch_loss(models, &heads, &words, cfg.token_weight, seed, batch, Split::Train)?;
        last_loss = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        if !last_loss.is_finite() {
            return Err(TrainError::Diverged { step: step + 1, what: format!("text pretraining loss is {last_loss}") });
        }
        let grads = loss.backward()?;
        let norm = grad_norm(&grads, &params)?;
        opt.step(&grads, schedule.at(step), clip_factor(norm, 1.0))?;
    }
    // held-out scenes and phrasings
    let mut totals: Vec<(String, usize, usize)> = Vec::new();
    for chunk in (0..cfg.eval_captions as u64).collect::<Vec<_>>().chunks(64) {
        let (_, hits) = batch_loss(models, &heads, &words, cfg.token_weight, seed, chunk.iter().copied(), Split::Eval)?;
        for (name, right, n) in hits {
            match totals.iter_mut().find(|t| t.0 == name) {
                Some(t) => (t.1, t.2) = (t.1 + right, t.2 + n),
                None => totals.push((name, right, n)),
            }
        }
    }
    let accuracy = totals.into_iter().map(|(name, right, n)| (name, right as f64 / n.max(1) as f64)).collect();
    Ok(TextPretrainReport { steps: cfg.steps, last_loss, eval_captions: cfg.eval_captions, accuracy, seconds: start.elapsed().as_secs_f64() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignments_are_every_injective_map_into_the_slots() {
        for (n, count) in [(0, 1), (1, 3), (2, 6), (3, 6)] {
            let all = assignments(n);
            assert_eq!(all.len(), count, "{n} objects");
            for a in &all {
                assert_eq!(a.len(), n);
                assert!(a.iter().all(|&s| s < MAX_OBJECTS));
                assert!((0..n).all(|i| !a[i + 1..].contains(&a[i])), "{a:?} reuses a slot");
            }
        }
    }
}
