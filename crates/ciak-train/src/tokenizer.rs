//! The word-level `tokenizer.json` of the built-in model: one id per caption word, T5's special
//! ids (pad 0, eos 1, unk 2) and T5's trailing `</s>`, loadable by HF `tokenizers`.
use crate::caption::vocabulary;
use serde_json::{json, Map, Value};
use std::io;
use std::path::Path;

pub const PAD: &str = "<pad>";
pub const EOS: &str = "</s>";
pub const UNK: &str = "<unk>";
pub const PAD_ID: u32 = 0;
pub const EOS_ID: u32 = 1;
pub const UNK_ID: u32 = 2;

/// The token list in id order: the three specials, then [`vocabulary`].
pub fn tokens() -> Vec<String> {
    [PAD, EOS, UNK].iter().map(|s| s.to_string()).chain(vocabulary()).collect()
}

/// The tokenizer as HF `tokenizers` JSON: NFKC + lowercase normalizer, whitespace then
/// punctuation pre-tokenizers, a WordLevel model with `<unk>`, and a template appending `</s>`.
pub fn tokenizer_json() -> Value {
    let vocab: Map<String, Value> = tokens().into_iter().enumerate().map(|(id, w)| (w, json!(id))).collect();
    let special = |id: u32, content: &str| {
        json!({
            "id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
            "normalized": false, "special": true
        })
    };
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special(PAD_ID, PAD), special(EOS_ID, EOS), special(UNK_ID, UNK)],
        "normalizer": {"type": "Sequence", "normalizers": [{"type": "NFKC"}, {"type": "Lowercase"}]},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "WhitespaceSplit"},
            {"type": "Punctuation", "behavior": "Isolated"}
        ]},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": EOS, "type_id": 0}}],
            "pair": [
                {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": EOS, "type_id": 0}},
                {"Sequence": {"id": "B", "type_id": 0}}, {"SpecialToken": {"id": EOS, "type_id": 0}}
            ],
            "special_tokens": {EOS: {"id": EOS, "ids": [EOS_ID], "tokens": [EOS]}}
        },
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": UNK}
    })
}

/// Writes [`tokenizer_json`] to `path` (through a temporary file, so a reader never sees half).
pub fn write_tokenizer_json(path: &Path) -> io::Result<()> {
    let text = serde_json::to_string_pretty(&tokenizer_json()).map_err(io::Error::other)?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}
