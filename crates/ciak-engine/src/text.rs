//! Prompt to text embeddings, as diffusers' `WanPipeline.encode_prompt` does it: clean the prompt,
//! tokenize to exactly 512 tokens (truncate keeping `</s>`, pad with `<pad>`), run the UMT5 encoder,
//! zero the rows past each prompt's true length. A tokenizer folder may ask for fewer tokens
//! (`model_max_length` in `tokenizer_config.json`), as ciak's built-in model does.
use crate::error::{CiakError, Result};
use crate::loader::{load_varbuilder, read_config, weights_error};
use candle_core::{DType, Device, Tensor};
use ciak_models::wan::umt5::{Umt5Config, Umt5EncoderModel};
use std::path::{Path, PathBuf};
use tokenizers::{
    PaddingDirection, PaddingParams, PaddingStrategy, Tokenizer, TruncationDirection, TruncationParams,
    TruncationStrategy,
};

/// Token length every prompt is padded or truncated to (diffusers' `max_sequence_length` default).
pub const MAX_SEQUENCE_LENGTH: usize = 512;

/// The prompt length for the tokenizer folder holding `tokenizer_json`: the `model_max_length`
/// of its `tokenizer_config.json` when that is below [`MAX_SEQUENCE_LENGTH`] (small models trained
/// with short prompts), else 512 as in diffusers (no file, no key, or transformers' huge default).
pub fn max_sequence_length(tokenizer_json: &Path) -> Result<usize> {
    let path = tokenizer_json.with_file_name("tokenizer_config.json");
    if !path.is_file() {
        return Ok(MAX_SEQUENCE_LENGTH);
    }
    let config: serde_json::Value = crate::loader::read_json(&path, "tokenizer_config.json")?;
    match config.get("model_max_length") {
        None | Some(serde_json::Value::Null) => Ok(MAX_SEQUENCE_LENGTH),
        Some(v) => match v.as_f64() {
            Some(n) if n >= 1.0 => Ok(if n < MAX_SEQUENCE_LENGTH as f64 { n as usize } else { MAX_SEQUENCE_LENGTH }),
            _ => Err(CiakError::Config {
                path,
                message: format!("expected model_max_length to be a number >= 1, got {v}"),
            }),
        },
    }
}

/// What happened to one prompt on its way to tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PromptTokens {
    /// Tokens kept, `</s>` included (the attention mask sum, at most the max length).
    pub seq_len: usize,
    /// Tokens the cleaned prompt needs before truncation, `</s>` included.
    pub full_len: usize,
    /// True when `full_len` exceeded the max length and the prompt was cut.
    pub truncated: bool,
}

/// Token ids and masks for a batch of prompts.
#[derive(Debug, Clone)]
pub struct Tokenized {
    /// [B, max_len] u32.
    pub input_ids: Tensor,
    /// [B, max_len] u32, 1 for tokens and 0 for padding.
    pub attention_mask: Tensor,
    pub prompts: Vec<PromptTokens>,
}

/// Encoder output ready for the transformer.
#[derive(Debug, Clone)]
pub struct EncodedText {
    /// [B, max_len, d_model] in the encoder dtype; rows past each prompt's `seq_len` are zero.
    pub prompt_embeds: Tensor,
    pub prompts: Vec<PromptTokens>,
}

/// The Wan pipeline's tokenizer settings on top of a `tokenizer.json` (T5TokenizerFast).
#[derive(Clone)]
pub struct PromptTokenizer {
    /// Truncates to `max_len` (special tokens kept) and pads to exactly `max_len`.
    fixed: Tokenizer,
    /// Neither truncates nor pads: measures the full length.
    full: Tokenizer,
    path: PathBuf,
    max_len: usize,
}

impl PromptTokenizer {
    pub fn from_file(tokenizer_json: &Path, max_len: usize) -> Result<Self> {
        let err = |message: String| CiakError::Tokenizer { path: tokenizer_json.to_path_buf(), message };
        if !tokenizer_json.is_file() {
            return Err(CiakError::MissingFile { what: "tokenizer.json".into(), path: tokenizer_json.to_path_buf() });
        }
        let mut full = Tokenizer::from_file(tokenizer_json).map_err(|e| err(e.to_string()))?;
        full.with_truncation(None).map_err(|e| err(e.to_string()))?;
        full.with_padding(None);
        let mut fixed = full.clone();
        fixed
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length: max_len,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| err(e.to_string()))?;
        // T5's pad token is `<pad>` = 0; padded positions are masked, so only the mask matters.
        let pad_token = "<pad>".to_string();
        let pad_id = fixed.token_to_id(&pad_token).unwrap_or(0);
        fixed.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(max_len),
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            pad_id,
            pad_type_id: 0,
            pad_token,
        }));
        Ok(Self { fixed, full, path: tokenizer_json.to_path_buf(), max_len })
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// The words of `prompt` the vocabulary does not know (they become `<unk>` and carry no
    /// meaning for the model), in order, as they appear in the cleaned prompt.
    pub fn unknown_words(&self, prompt: &str) -> Result<Vec<String>> {
        let Some(unk) = self.full.token_to_id("<unk>") else { return Ok(Vec::new()) };
        let text = prompt_clean(prompt);
        let enc = self
            .full
            .encode(text.as_str(), false)
            .map_err(|e| CiakError::Tokenizer { path: self.path.clone(), message: e.to_string() })?;
        let words = enc
            .get_ids()
            .iter()
            .zip(enc.get_offsets())
            .filter(|(&id, _)| id == unk)
            .filter_map(|(_, &(a, b))| text.get(a..b).map(str::to_string))
            .collect();
        Ok(words)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Cleans each prompt with [`prompt_clean`] and tokenizes it as the Wan pipeline does.
    pub fn tokenize(&self, prompts: &[String], device: &Device) -> Result<Tokenized> {
        let err = |message: String| CiakError::Tokenizer { path: self.path.clone(), message };
        let mut ids = Vec::with_capacity(prompts.len() * self.max_len);
        let mut mask = Vec::with_capacity(prompts.len() * self.max_len);
        let mut infos = Vec::with_capacity(prompts.len());
        for prompt in prompts {
            let text = prompt_clean(prompt);
            let full_len = self.full.encode(text.as_str(), true).map_err(|e| err(e.to_string()))?.len();
            let enc = self.fixed.encode(text.as_str(), true).map_err(|e| err(e.to_string()))?;
            if enc.len() != self.max_len {
                return Err(err(format!("expected {} tokens after padding, got {}", self.max_len, enc.len())));
            }
            let seq_len: usize = enc.get_attention_mask().iter().map(|&m| m as usize).sum();
            ids.extend_from_slice(enc.get_ids());
            mask.extend_from_slice(enc.get_attention_mask());
            infos.push(PromptTokens { seq_len, full_len, truncated: full_len > self.max_len });
        }
        let shape = (prompts.len(), self.max_len);
        Ok(Tokenized {
            input_ids: Tensor::from_vec(ids, shape, device)?,
            attention_mask: Tensor::from_vec(mask, shape, device)?,
            prompts: infos,
        })
    }
}

/// Tokenizer plus UMT5 encoder: prompts in, `prompt_embeds` out.
pub struct TextEncoder {
    tokenizer: PromptTokenizer,
    model: Umt5EncoderModel,
}

impl TextEncoder {
    pub fn new(tokenizer: PromptTokenizer, model: Umt5EncoderModel) -> Self {
        Self { tokenizer, model }
    }

    /// Loads `tokenizer.json` and the encoder weights of a diffusers `text_encoder/` folder
    /// (`config.json` + safetensors, sharded or not), converting the weights to `dtype`. The
    /// prompt length is [`max_sequence_length`] of the tokenizer folder.
    pub fn load(tokenizer_json: &Path, text_encoder_dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let tokenizer = PromptTokenizer::from_file(tokenizer_json, max_sequence_length(tokenizer_json)?)?;
        let cfg: Umt5Config = read_config(text_encoder_dir)?;
        let vb = load_varbuilder(text_encoder_dir, dtype, device)?;
        let model = Umt5EncoderModel::new(&cfg, vb).map_err(weights_error("text_encoder", text_encoder_dir))?;
        Ok(Self::new(tokenizer, model))
    }

    pub fn tokenizer(&self) -> &PromptTokenizer {
        &self.tokenizer
    }

    pub fn model(&self) -> &Umt5EncoderModel {
        &self.model
    }

    pub fn tokenize(&self, prompts: &[String]) -> Result<Tokenized> {
        let tokens = self.tokenizer.tokenize(prompts, self.model.device())?;
        let vocab = self.model.config().vocab_size as u32;
        let max_id = tokens.input_ids.flatten_all()?.max(0)?.to_scalar::<u32>()?;
        if max_id >= vocab {
            return Err(CiakError::Tokenizer {
                path: self.tokenizer.path.clone(),
                message: format!("token id {max_id} is outside the text encoder's vocabulary of {vocab}"),
            });
        }
        Ok(tokens)
    }

    /// Shapes: prompts (B) -> prompt_embeds [B, max_len, d_model], rows past each prompt's length zeroed.
    pub fn encode(&self, prompts: &[String]) -> Result<EncodedText> {
        let _span = tracing::info_span!("text_encode", prompts = prompts.len()).entered();
        if prompts.is_empty() {
            return Err(CiakError::InvalidRequest("expected at least one prompt to encode, got none".into()));
        }
        let tokens = self.tokenize(prompts)?;
        let hidden = self.model.forward(&tokens.input_ids, &tokens.attention_mask)?;
        let (_, max_len, d_model) = hidden.dims3()?;
        // Keep each prompt's first seq_len rows and put exact zeros after them, as diffusers does.
        let rows = tokens
            .prompts
            .iter()
            .enumerate()
            .map(|(b, p)| {
                let kept = hidden.get(b)?.narrow(0, 0, p.seq_len)?;
                let zeros = Tensor::zeros((max_len - p.seq_len, d_model), hidden.dtype(), hidden.device())?;
                Tensor::cat(&[&kept, &zeros], 0)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(EncodedText { prompt_embeds: Tensor::stack(&rows, 0)?, prompts: tokens.prompts })
    }
}

/// diffusers' Wan `prompt_clean` without ftfy: HTML-unescape twice, strip, collapse whitespace.
pub fn prompt_clean(text: &str) -> String {
    let text = html_unescape(&html_unescape(text));
    // Python's `\s` and `str.strip()` also treat U+001C..U+001F as whitespace.
    let is_space = |c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c);
    let mut out = String::with_capacity(text.len());
    for word in text.split(is_space).filter(|w| !w.is_empty()) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// Python's `html.unescape` for numeric references and the HTML 4 named entities (plus `&apos;`
/// and the upper-case legacy names): same matching rules, including names without `;`.
pub fn html_unescape(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '&' {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        match replace_charref(&chars[i + 1..]) {
            Some((replacement, consumed)) => {
                out.push_str(&replacement);
                i += 1 + consumed;
            }
            None => {
                out.push('&');
                i += 1;
            }
        }
    }
    out
}

/// Replacement for the reference after an `&`, and how many chars it used; None if no match.
fn replace_charref(rest: &[char]) -> Option<(String, usize)> {
    if rest.first() == Some(&'#') {
        let hex = matches!(rest.get(1), Some('x' | 'X'));
        let start = if hex { 2 } else { 1 };
        let radix = if hex { 16 } else { 10 };
        let digits = rest[start..].iter().take_while(|c| c.is_ascii_digit() || (hex && c.is_ascii_hexdigit())).count();
        if digits == 0 {
            return None;
        }
        let mut num: u32 = 0;
        for c in &rest[start..start + digits] {
            // Saturate: anything past U+10FFFF is replaced the same way.
            num = num.saturating_mul(radix).saturating_add(c.to_digit(radix).unwrap_or(0)).min(0x11_0000);
        }
        let mut consumed = start + digits;
        if rest.get(consumed) == Some(&';') {
            consumed += 1;
        }
        return Some((numeric_charref(num), consumed));
    }
    let is_name_char = |c: &char| !matches!(c, '\t' | '\n' | '\u{c}' | ' ' | '<' | '&' | '#' | ';');
    let len = rest.iter().take(32).take_while(|c| is_name_char(c)).count();
    if len == 0 {
        return None;
    }
    let name: String = rest[..len].iter().collect();
    let semicolon = rest.get(len) == Some(&';');
    let consumed = len + usize::from(semicolon);
    if let Some((value, legacy)) = named_entity(&name) {
        if semicolon || legacy {
            return Some((value.to_string(), consumed));
        }
    }
    // Longest legacy name (at least 2 chars) that prefixes the match; the rest stays as text.
    for x in (2..consumed).rev() {
        let prefix: String = rest[..x].iter().collect();
        if let Some((value, true)) = named_entity(&prefix) {
            let tail: String = rest[x..consumed].iter().collect();
            return Some((format!("{value}{tail}"), consumed));
        }
    }
    let text: String = rest[..consumed].iter().collect();
    Some((format!("&{text}"), consumed))
}

fn numeric_charref(num: u32) -> String {
    if let Some(&(_, c)) = WINDOWS_1252_CHARREFS.iter().find(|(n, _)| *n == num) {
        return c.to_string();
    }
    if (0xD800..=0xDFFF).contains(&num) || num > 0x10FFFF {
        return '\u{FFFD}'.to_string();
    }
    let invalid = matches!(num, 0x1..=0x8 | 0xB | 0xE..=0x1F | 0x7F..=0x9F | 0xFDD0..=0xFDEF)
        || (num & 0xFFFE) == 0xFFFE;
    if invalid {
        return String::new();
    }
    char::from_u32(num).map(String::from).unwrap_or_default()
}

fn named_entity(name: &str) -> Option<(char, bool)> {
    NAMED_ENTITIES
        .binary_search_by(|(n, _, _)| n.as_bytes().cmp(name.as_bytes()))
        .ok()
        .map(|i| (NAMED_ENTITIES[i].1, NAMED_ENTITIES[i].2))
}

/// Python's `html._invalid_charrefs`: references the HTML 5 spec remaps.
const WINDOWS_1252_CHARREFS: &[(u32, char)] = &[
    (0x00, '\u{fffd}'), (0x0d, '\r'), (0x80, '\u{20ac}'), (0x81, '\u{81}'), (0x82, '\u{201a}'),
    (0x83, '\u{192}'), (0x84, '\u{201e}'), (0x85, '\u{2026}'), (0x86, '\u{2020}'), (0x87, '\u{2021}'),
    (0x88, '\u{2c6}'), (0x89, '\u{2030}'), (0x8a, '\u{160}'), (0x8b, '\u{2039}'), (0x8c, '\u{152}'),
    (0x8d, '\u{8d}'), (0x8e, '\u{17d}'), (0x8f, '\u{8f}'), (0x90, '\u{90}'), (0x91, '\u{2018}'),
    (0x92, '\u{2019}'), (0x93, '\u{201c}'), (0x94, '\u{201d}'), (0x95, '\u{2022}'), (0x96, '\u{2013}'),
    (0x97, '\u{2014}'), (0x98, '\u{2dc}'), (0x99, '\u{2122}'), (0x9a, '\u{161}'), (0x9b, '\u{203a}'),
    (0x9c, '\u{153}'), (0x9d, '\u{9d}'), (0x9e, '\u{17e}'), (0x9f, '\u{178}'),
];

/// (name, character, also valid without `;`), sorted by name bytes for binary search.
/// Generated from Python's `html.entities` (HTML 4 names, `apos`, upper-case legacy names).
const NAMED_ENTITIES: &[(&str, char, bool)] = &[
    ("AElig", '\u{c6}', true), ("AMP", '\u{26}', true), ("Aacute", '\u{c1}', true),
    ("Acirc", '\u{c2}', true), ("Agrave", '\u{c0}', true), ("Alpha", '\u{391}', false),
    ("Aring", '\u{c5}', true), ("Atilde", '\u{c3}', true), ("Auml", '\u{c4}', true),
    ("Beta", '\u{392}', false), ("COPY", '\u{a9}', true), ("Ccedil", '\u{c7}', true),
    ("Chi", '\u{3a7}', false), ("Dagger", '\u{2021}', false), ("Delta", '\u{394}', false),
    ("ETH", '\u{d0}', true), ("Eacute", '\u{c9}', true), ("Ecirc", '\u{ca}', true),
    ("Egrave", '\u{c8}', true), ("Epsilon", '\u{395}', false), ("Eta", '\u{397}', false),
    ("Euml", '\u{cb}', true), ("GT", '\u{3e}', true), ("Gamma", '\u{393}', false),
    ("Iacute", '\u{cd}', true), ("Icirc", '\u{ce}', true), ("Igrave", '\u{cc}', true),
    ("Iota", '\u{399}', false), ("Iuml", '\u{cf}', true), ("Kappa", '\u{39a}', false),
    ("LT", '\u{3c}', true), ("Lambda", '\u{39b}', false), ("Mu", '\u{39c}', false),
    ("Ntilde", '\u{d1}', true), ("Nu", '\u{39d}', false), ("OElig", '\u{152}', false),
    ("Oacute", '\u{d3}', true), ("Ocirc", '\u{d4}', true), ("Ograve", '\u{d2}', true),
    ("Omega", '\u{3a9}', false), ("Omicron", '\u{39f}', false), ("Oslash", '\u{d8}', true),
    ("Otilde", '\u{d5}', true), ("Ouml", '\u{d6}', true), ("Phi", '\u{3a6}', false),
    ("Pi", '\u{3a0}', false), ("Prime", '\u{2033}', false), ("Psi", '\u{3a8}', false),
    ("QUOT", '\u{22}', true), ("REG", '\u{ae}', true), ("Rho", '\u{3a1}', false),
    ("Scaron", '\u{160}', false), ("Sigma", '\u{3a3}', false), ("THORN", '\u{de}', true),
    ("Tau", '\u{3a4}', false), ("Theta", '\u{398}', false), ("Uacute", '\u{da}', true),
    ("Ucirc", '\u{db}', true), ("Ugrave", '\u{d9}', true), ("Upsilon", '\u{3a5}', false),
    ("Uuml", '\u{dc}', true), ("Xi", '\u{39e}', false), ("Yacute", '\u{dd}', true),
    ("Yuml", '\u{178}', false), ("Zeta", '\u{396}', false), ("aacute", '\u{e1}', true),
    ("acirc", '\u{e2}', true), ("acute", '\u{b4}', true), ("aelig", '\u{e6}', true),
    ("agrave", '\u{e0}', true), ("alefsym", '\u{2135}', false), ("alpha", '\u{3b1}', false),
    ("amp", '\u{26}', true), ("and", '\u{2227}', false), ("ang", '\u{2220}', false),
    ("apos", '\u{27}', false), ("aring", '\u{e5}', true), ("asymp", '\u{2248}', false),
    ("atilde", '\u{e3}', true), ("auml", '\u{e4}', true), ("bdquo", '\u{201e}', false),
    ("beta", '\u{3b2}', false), ("brvbar", '\u{a6}', true), ("bull", '\u{2022}', false),
    ("cap", '\u{2229}', false), ("ccedil", '\u{e7}', true), ("cedil", '\u{b8}', true),
    ("cent", '\u{a2}', true), ("chi", '\u{3c7}', false), ("circ", '\u{2c6}', false),
    ("clubs", '\u{2663}', false), ("cong", '\u{2245}', false), ("copy", '\u{a9}', true),
    ("crarr", '\u{21b5}', false), ("cup", '\u{222a}', false), ("curren", '\u{a4}', true),
    ("dArr", '\u{21d3}', false), ("dagger", '\u{2020}', false), ("darr", '\u{2193}', false),
    ("deg", '\u{b0}', true), ("delta", '\u{3b4}', false), ("diams", '\u{2666}', false),
    ("divide", '\u{f7}', true), ("eacute", '\u{e9}', true), ("ecirc", '\u{ea}', true),
    ("egrave", '\u{e8}', true), ("empty", '\u{2205}', false), ("emsp", '\u{2003}', false),
    ("ensp", '\u{2002}', false), ("epsilon", '\u{3b5}', false), ("equiv", '\u{2261}', false),
    ("eta", '\u{3b7}', false), ("eth", '\u{f0}', true), ("euml", '\u{eb}', true),
    ("euro", '\u{20ac}', false), ("exist", '\u{2203}', false), ("fnof", '\u{192}', false),
    ("forall", '\u{2200}', false), ("frac12", '\u{bd}', true), ("frac14", '\u{bc}', true),
    ("frac34", '\u{be}', true), ("frasl", '\u{2044}', false), ("gamma", '\u{3b3}', false),
    ("ge", '\u{2265}', false), ("gt", '\u{3e}', true), ("hArr", '\u{21d4}', false),
    ("harr", '\u{2194}', false), ("hearts", '\u{2665}', false), ("hellip", '\u{2026}', false),
    ("iacute", '\u{ed}', true), ("icirc", '\u{ee}', true), ("iexcl", '\u{a1}', true),
    ("igrave", '\u{ec}', true), ("image", '\u{2111}', false), ("infin", '\u{221e}', false),
    ("int", '\u{222b}', false), ("iota", '\u{3b9}', false), ("iquest", '\u{bf}', true),
    ("isin", '\u{2208}', false), ("iuml", '\u{ef}', true), ("kappa", '\u{3ba}', false),
    ("lArr", '\u{21d0}', false), ("lambda", '\u{3bb}', false), ("lang", '\u{27e8}', false),
    ("laquo", '\u{ab}', true), ("larr", '\u{2190}', false), ("lceil", '\u{2308}', false),
    ("ldquo", '\u{201c}', false), ("le", '\u{2264}', false), ("lfloor", '\u{230a}', false),
    ("lowast", '\u{2217}', false), ("loz", '\u{25ca}', false), ("lrm", '\u{200e}', false),
    ("lsaquo", '\u{2039}', false), ("lsquo", '\u{2018}', false), ("lt", '\u{3c}', true),
    ("macr", '\u{af}', true), ("mdash", '\u{2014}', false), ("micro", '\u{b5}', true),
    ("middot", '\u{b7}', true), ("minus", '\u{2212}', false), ("mu", '\u{3bc}', false),
    ("nabla", '\u{2207}', false), ("nbsp", '\u{a0}', true), ("ndash", '\u{2013}', false),
    ("ne", '\u{2260}', false), ("ni", '\u{220b}', false), ("not", '\u{ac}', true),
    ("notin", '\u{2209}', false), ("nsub", '\u{2284}', false), ("ntilde", '\u{f1}', true),
    ("nu", '\u{3bd}', false), ("oacute", '\u{f3}', true), ("ocirc", '\u{f4}', true),
    ("oelig", '\u{153}', false), ("ograve", '\u{f2}', true), ("oline", '\u{203e}', false),
    ("omega", '\u{3c9}', false), ("omicron", '\u{3bf}', false), ("oplus", '\u{2295}', false),
    ("or", '\u{2228}', false), ("ordf", '\u{aa}', true), ("ordm", '\u{ba}', true),
    ("oslash", '\u{f8}', true), ("otilde", '\u{f5}', true), ("otimes", '\u{2297}', false),
    ("ouml", '\u{f6}', true), ("para", '\u{b6}', true), ("part", '\u{2202}', false),
    ("permil", '\u{2030}', false), ("perp", '\u{22a5}', false), ("phi", '\u{3c6}', false),
    ("pi", '\u{3c0}', false), ("piv", '\u{3d6}', false), ("plusmn", '\u{b1}', true),
    ("pound", '\u{a3}', true), ("prime", '\u{2032}', false), ("prod", '\u{220f}', false),
    ("prop", '\u{221d}', false), ("psi", '\u{3c8}', false), ("quot", '\u{22}', true),
    ("rArr", '\u{21d2}', false), ("radic", '\u{221a}', false), ("rang", '\u{27e9}', false),
    ("raquo", '\u{bb}', true), ("rarr", '\u{2192}', false), ("rceil", '\u{2309}', false),
    ("rdquo", '\u{201d}', false), ("real", '\u{211c}', false), ("reg", '\u{ae}', true),
    ("rfloor", '\u{230b}', false), ("rho", '\u{3c1}', false), ("rlm", '\u{200f}', false),
    ("rsaquo", '\u{203a}', false), ("rsquo", '\u{2019}', false), ("sbquo", '\u{201a}', false),
    ("scaron", '\u{161}', false), ("sdot", '\u{22c5}', false), ("sect", '\u{a7}', true),
    ("shy", '\u{ad}', true), ("sigma", '\u{3c3}', false), ("sigmaf", '\u{3c2}', false),
    ("sim", '\u{223c}', false), ("spades", '\u{2660}', false), ("sub", '\u{2282}', false),
    ("sube", '\u{2286}', false), ("sum", '\u{2211}', false), ("sup", '\u{2283}', false),
    ("sup1", '\u{b9}', true), ("sup2", '\u{b2}', true), ("sup3", '\u{b3}', true),
    ("supe", '\u{2287}', false), ("szlig", '\u{df}', true), ("tau", '\u{3c4}', false),
    ("there4", '\u{2234}', false), ("theta", '\u{3b8}', false), ("thetasym", '\u{3d1}', false),
    ("thinsp", '\u{2009}', false), ("thorn", '\u{fe}', true), ("tilde", '\u{2dc}', false),
    ("times", '\u{d7}', true), ("trade", '\u{2122}', false), ("uArr", '\u{21d1}', false),
    ("uacute", '\u{fa}', true), ("uarr", '\u{2191}', false), ("ucirc", '\u{fb}', true),
    ("ugrave", '\u{f9}', true), ("uml", '\u{a8}', true), ("upsih", '\u{3d2}', false),
    ("upsilon", '\u{3c5}', false), ("uuml", '\u{fc}', true), ("weierp", '\u{2118}', false),
    ("xi", '\u{3be}', false), ("yacute", '\u{fd}', true), ("yen", '\u{a5}', true),
    ("yuml", '\u{ff}', true), ("zeta", '\u{3b6}', false), ("zwj", '\u{200d}', false),
    ("zwnj", '\u{200c}', false),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_clean_matches_python() {
        // Expected outputs from Python 3.11 `html.unescape` twice + strip + `re.sub(r"\s+", " ")`.
        let cases: &[(&str, &str)] = &[
            ("  A  cat\t\n sits  ", "A cat sits"),
            ("Tom &amp; Jerry", "Tom & Jerry"),
            ("&amp;lt;b&amp;gt;", "<b>"),
            ("caf&eacute; &#233; &#xE9; &#X00e9;", "caf\u{e9} \u{e9} \u{e9} \u{e9}"),
            ("a&nbsp;b", "a b"),
            ("&ampfoo &notit; &notin; &copy2024", "&foo \u{ac}it; \u{2209} \u{a9}2024"),
            (
                "[&#0;|&#128;|&#x110000;|&#xD800;|&#1;|&#13;|&#x9F;|&#99999999999999999999;]",
                "[\u{fffd}|\u{20ac}|\u{fffd}|\u{fffd}|| |\u{178}|\u{fffd}]",
            ),
            ("&unknown; & alone &#; &#x; &;", "&unknown; & alone &#; &#x; &;"),
            ("\u{3000}wide\u{2003}space\u{1c}", "wide space"),
            ("&hellip &hellip;", "&hellip \u{2026}"),
            ("&amp;amp;", "&"),
            ("&AMP;&LT", "&<"),
            ("&aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaamp;", "&aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaamp;"),
            ("&#12a &#x41g", "a Ag"),
            ("x&amp;&amp;y", "x&&y"),
            ("\u{200b}zero\u{200b}", "\u{200b}zero\u{200b}"),
            ("&lt&gt&quot", "<>\""),
            ("", ""),
            ("   ", ""),
        ];
        for (input, want) in cases {
            assert_eq!(prompt_clean(input), *want, "input {input:?}");
        }
    }

    #[test]
    fn max_sequence_length_reads_a_shorter_model_max_length_only() {
        let dir = std::env::temp_dir().join(format!("ciak-text-maxlen-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let json = dir.join("tokenizer.json");
        let config = dir.join("tokenizer_config.json");
        let _ = std::fs::remove_file(&config);
        assert_eq!(max_sequence_length(&json).unwrap(), 512, "no tokenizer_config.json");
        for (text, want) in [
            (r#"{"model_max_length": 64}"#, Some(64)),
            (r#"{"model_max_length": 512}"#, Some(512)),
            (r#"{"model_max_length": 1000000000000000019884624838656}"#, Some(512)),
            (r#"{"pad_token": "<pad>"}"#, Some(512)),
            (r#"{"model_max_length": 0}"#, None),
            (r#"{"model_max_length": "long"}"#, None),
        ] {
            std::fs::write(&config, text).unwrap();
            assert_eq!(max_sequence_length(&json).ok(), want, "{text}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn entity_table_is_sorted_for_binary_search() {
        for pair in NAMED_ENTITIES.windows(2) {
            assert!(pair[0].0.as_bytes() < pair[1].0.as_bytes(), "{} !< {}", pair[0].0, pair[1].0);
        }
        assert_eq!(named_entity("amp"), Some(('&', true)));
        assert_eq!(named_entity("hellip"), Some(('\u{2026}', false)));
        assert_eq!(named_entity("nope"), None);
    }
}
