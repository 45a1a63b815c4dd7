//! UMT5 text encoding against diffusers/transformers: token ids, raw encoder output and the
//! pipeline's `prompt_embeds` (tests/fixtures/io/umt5.safetensors, made by make_fixtures.py).
mod common;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use ciak_engine::loader::load_varbuilder;
use ciak_engine::text::{prompt_clean, PromptTokenizer, TextEncoder, MAX_SEQUENCE_LENGTH};
use ciak_models::wan::umt5::{Umt5Config, Umt5EncoderModel};
use common::{assert_close, fixture, get, io_metadata, load_io, max_error};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

fn tokenizer_json() -> PathBuf {
    fixture("tiny-wan/tokenizer/tokenizer.json")
}

fn text_encoder_dir() -> PathBuf {
    fixture("tiny-wan/text_encoder")
}

fn prompts() -> Vec<String> {
    let path = fixture("io/umt5_prompts.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn as_i64_rows(t: &Tensor) -> Vec<Vec<i64>> {
    t.to_dtype(DType::I64).unwrap().to_vec2::<i64>().unwrap()
}

#[test]
fn prompt_clean_matches_diffusers_on_fixture_prompts() {
    let meta = io_metadata("umt5");
    let cleaned: Vec<String> = serde_json::from_str(
        meta.get("cleaned_prompts").expect("umt5.safetensors metadata has no cleaned_prompts"),
    )
    .unwrap();
    let prompts = prompts();
    assert_eq!(prompts.len(), cleaned.len());
    for (p, want) in prompts.iter().zip(&cleaned) {
        assert_eq!(&prompt_clean(p), want, "prompt {p:?}");
    }
}

#[test]
fn tokens_match_fixture_exactly() {
    let io = load_io("umt5");
    let prompts = prompts();
    let tok = PromptTokenizer::from_file(&tokenizer_json(), MAX_SEQUENCE_LENGTH).unwrap();
    let got = tok.tokenize(&prompts, &Device::Cpu).unwrap();
    let want_ids = as_i64_rows(get(&io, "input_ids"));
    let want_mask = as_i64_rows(get(&io, "attention_mask"));
    let got_ids = as_i64_rows(&got.input_ids);
    let got_mask = as_i64_rows(&got.attention_mask);
    assert_eq!(got_ids.len(), prompts.len());
    for (i, p) in prompts.iter().enumerate() {
        assert_eq!(got_ids[i], want_ids[i], "input_ids of prompt {i} {p:?}");
        assert_eq!(got_mask[i], want_mask[i], "attention_mask of prompt {i} {p:?}");
        let want_len = want_mask[i].iter().sum::<i64>() as usize;
        let info = got.prompts[i];
        assert_eq!(info.seq_len, want_len, "seq_len of prompt {i}");
        assert_eq!(info.truncated, info.full_len > MAX_SEQUENCE_LENGTH);
        if !info.truncated {
            assert_eq!(info.full_len, info.seq_len, "prompt {i} fits, so nothing was cut");
        }
    }
    // The fixture has an empty prompt (just </s>) and one prompt cut to 512 with </s> kept last.
    let empty = prompts.iter().position(|p| p.is_empty()).expect("fixture has an empty prompt");
    assert_eq!(got.prompts[empty].seq_len, 1);
    assert_eq!(got_ids[empty][0], 1, "the empty prompt is just </s>");
    let long = got.prompts.iter().position(|p| p.truncated).expect("fixture has a truncated prompt");
    assert_eq!(got.prompts[long].seq_len, MAX_SEQUENCE_LENGTH);
    assert!(got.prompts[long].full_len > MAX_SEQUENCE_LENGTH);
    assert_eq!(got_ids[long][MAX_SEQUENCE_LENGTH - 1], 1, "truncation keeps </s> last");
    assert_eq!(got.prompts.iter().filter(|p| p.truncated).count(), 1);
}

/// Raw encoder on the fixture's own ids and mask, so tokenizer and encoder are checked apart.
#[test]
fn encoder_matches_last_hidden_state_f32() {
    let io = load_io("umt5");
    let dir = text_encoder_dir();
    let cfg: Umt5Config = ciak_engine::loader::read_config(&dir).unwrap();
    let vb = load_varbuilder(&dir, DType::F32, &Device::Cpu).unwrap();
    let model = Umt5EncoderModel::new(&cfg, vb).unwrap();
    let ids = get(&io, "input_ids").to_dtype(DType::U32).unwrap();
    let mask = get(&io, "attention_mask");
    let got = model.forward(&ids, mask).unwrap();
    // Measured 1.1e-6 relative (f32 summation order only).
    assert_close("umt5 last_hidden_state f32", &got, get(&io, "last_hidden_state"), 1e-5);
}

fn check_prompt_embeds(dtype: DType, rel_tol: f64) {
    let io = load_io("umt5");
    let want = get(&io, "prompt_embeds");
    let enc = TextEncoder::load(&tokenizer_json(), &text_encoder_dir(), dtype, &Device::Cpu).unwrap();
    let out = enc.encode(&prompts()).unwrap();
    assert_eq!(out.prompt_embeds.dtype(), dtype);
    let got = out.prompt_embeds.to_dtype(DType::F32).unwrap();
    assert_close(&format!("umt5 prompt_embeds {dtype:?}"), &got, want, rel_tol);
    // Rows past each prompt's length are exact zeros, and the kept rows are not.
    let (_, max_len, _) = got.dims3().unwrap();
    for (b, p) in out.prompts.iter().enumerate() {
        let row_abs = got.get(b).unwrap().abs().unwrap().max(1).unwrap().to_vec1::<f32>().unwrap();
        assert!(row_abs[..p.seq_len].iter().all(|&v| v > 0.0), "prompt {b}: a kept row is zero");
        assert!(row_abs[p.seq_len..max_len].iter().all(|&v| v == 0.0), "prompt {b}: padding row not zeroed");
    }
}

#[test]
fn prompt_embeds_match_f32() {
    // Measured 1.1e-6 relative.
    check_prompt_embeds(DType::F32, 1e-5);
}

#[test]
fn prompt_embeds_match_bf16() {
    // bf16 weights vs the f32 reference: measured 9.1e-3 relative to max |prompt_embeds| (transformers
    // 5.24 itself in bf16 reads 1.2e-2 on the same fixture); tolerance 2e-2.
    check_prompt_embeds(DType::BF16, 2e-2);
}

#[test]
fn prompt_embeds_match_f16() {
    // f16 weights with `wo` kept f32 (transformers' rule for f16): measured 1.2e-3 relative.
    check_prompt_embeds(DType::F16, 3e-3);
}

#[test]
fn bf16_error_is_bf16_sized_not_zero() {
    // Guard that the bf16 path really runs in bf16 (a silent f32 fallback would read ~1e-6).
    let io = load_io("umt5");
    let enc = TextEncoder::load(&tokenizer_json(), &text_encoder_dir(), DType::BF16, &Device::Cpu).unwrap();
    let got = enc.encode(&prompts()).unwrap().prompt_embeds.to_dtype(DType::F32).unwrap();
    let (err, scale) = max_error(&got, get(&io, "prompt_embeds"));
    eprintln!("bf16 prompt_embeds: max abs error {err:.3e}, scale {scale:.3e}");
    assert!(err / scale > 1e-4, "bf16 run is as exact as f32 ({:.3e}); is it really bf16?", err / scale);
}

#[test]
fn encode_rejects_an_empty_batch() {
    let enc = TextEncoder::load(&tokenizer_json(), &text_encoder_dir(), DType::F32, &Device::Cpu).unwrap();
    let err = enc.encode(&[]).unwrap_err().to_string();
    assert!(err.contains("at least one prompt"), "{err}");
}

#[test]
fn missing_tokenizer_is_a_clear_error() {
    let missing = common::fixtures_dir().join("no-such-dir/tokenizer.json");
    let err = PromptTokenizer::from_file(&missing, MAX_SEQUENCE_LENGTH).err().expect("must fail");
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
}

/// Hands out stride-0 zeros of the requested shape and records each request; fails on a name or
/// shape the real checkpoint does not have. Lets the real UMT5-XXL be "built" without 22 GB.
struct KeyListBackend {
    tensors: BTreeMap<String, Vec<usize>>,
    requested: Arc<Mutex<BTreeSet<String>>>,
}

impl SimpleBackend for KeyListBackend {
    fn get(&self, s: Shape, name: &str, _: Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let Some(want) = self.tensors.get(name) else {
            candle_core::bail!("model asked for `{name}`, which the real checkpoint does not have")
        };
        if want.as_slice() != s.dims() {
            candle_core::bail!("`{name}`: model wants {:?}, checkpoint has {want:?}", s.dims());
        }
        self.requested.lock().unwrap().insert(name.to_string());
        Tensor::zeros(1, dtype, dev)?.broadcast_as(s)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("unexpected unchecked get of `{name}`")
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

#[derive(serde::Deserialize)]
struct KeyList {
    config: serde_json::Value,
    tensors: BTreeMap<String, Vec<usize>>,
}

#[test]
fn real_umt5_xxl_keys_and_config() {
    let path = fixture("keys/umt5_xxl_encoder.json");
    let keys: KeyList = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let cfg: Umt5Config = serde_json::from_value(keys.config.clone()).unwrap();
    assert_eq!(cfg, Umt5Config::umt5_xxl(), "preset differs from the real config.json");
    let requested = Arc::new(Mutex::new(BTreeSet::new()));
    let backend = KeyListBackend { tensors: keys.tensors.clone(), requested: requested.clone() };
    let vb = VarBuilder::from_backend(Box::new(backend), DType::BF16, Device::Cpu);
    Umt5EncoderModel::new(&cfg, vb).unwrap();
    let requested = requested.lock().unwrap().clone();
    let unused: Vec<_> = keys.tensors.keys().filter(|k| !requested.contains(*k)).collect();
    assert!(unused.is_empty(), "checkpoint tensors the model never reads: {unused:?}");
    assert_eq!(requested.len(), 1 + 24 * 10 + 1, "embedding + 10 per block + final norm");
}
