//! The written tokenizer.json loads in HF `tokenizers`, keeps T5's special ids, round-trips every
//! caption word for word, and maps words outside the world to `<unk>`.
use ciak_train::caption::{canonical_caption, words};
use ciak_train::tokenizer::{tokens, write_tokenizer_json, EOS_ID, PAD_ID, UNK_ID};
use ciak_train::world::SamplerConfig;
use ciak_train::{sample, Split};
use tokenizers::Tokenizer;

fn load() -> (tempfile::TempDir, Tokenizer) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    write_tokenizer_json(&path).unwrap();
    let tok = Tokenizer::from_file(&path).unwrap_or_else(|e| panic!("tokenizers cannot load our file: {e}"));
    (dir, tok)
}

#[test]
fn special_ids_match_t5() {
    let (_dir, tok) = load();
    assert_eq!(tok.token_to_id("<pad>"), Some(PAD_ID));
    assert_eq!(tok.token_to_id("</s>"), Some(EOS_ID));
    assert_eq!(tok.token_to_id("<unk>"), Some(UNK_ID));
    assert_eq!(tok.get_vocab_size(true), tokens().len());
    println!("vocabulary: {} tokens", tokens().len());
}

#[test]
fn every_caption_round_trips_without_unk() {
    let (_dir, tok) = load();
    let cfg = SamplerConfig::default();
    for split in [Split::Train, Split::Eval] {
        for i in 0..3000 {
            let s = sample(21, i, &cfg, split);
            for text in [s.caption.clone(), canonical_caption(&s.scene)] {
                let enc = tok.encode(text.as_str(), true).unwrap();
                let ids = enc.get_ids();
                assert_eq!(ids.last(), Some(&EOS_ID), "{text}");
                assert!(!ids.contains(&UNK_ID), "<unk> in {text:?}: {:?}", enc.get_tokens());
                let want = words(&text);
                assert_eq!(&enc.get_tokens()[..ids.len() - 1], want.as_slice(), "{text}");
                let back = tok.decode(ids, true).unwrap();
                assert_eq!(back, want.join(" "), "{text}");
            }
        }
    }
}

#[test]
fn unknown_words_become_unk_and_text_is_normalised() {
    let (_dir, tok) = load();
    let enc = tok.encode("A RED zeppelin moves right", true).unwrap();
    let red = tok.token_to_id("red").unwrap();
    assert_eq!(enc.get_ids(), &[tok.token_to_id("a").unwrap(), red, UNK_ID, tok.token_to_id("moves").unwrap(), tok.token_to_id("right").unwrap(), EOS_ID]);
    // Where the <unk> came from, so the CLI can name the ignored word.
    let at = enc.get_ids().iter().position(|&id| id == UNK_ID).unwrap();
    let (s, e) = enc.get_offsets()[at];
    assert_eq!(&"A RED zeppelin moves right"[s..e], "zeppelin");
    // NFKC folds full-width letters; punctuation is split off; whitespace runs collapse.
    let wide = tok.encode("ｒｅｄ  Ball,  moving\tleft!", true).unwrap();
    assert_eq!(wide.get_tokens()[..4], ["red", "ball", ",", "moving"]);
    assert_eq!(wide.get_ids()[5], UNK_ID, "'!' is not a caption token: {:?}", wide.get_tokens());
}
