//! Tokenizers: GPT-2 BPE token-for-token against `../shared/fixtures/tokenizer_gpt2.json`, and
//! character vocabularies (meta.json round trip, nanoGPT's meta.pkl, clear errors).

mod common;

use common::{json_ids, TempDir};

use nanogpt::data::dataset;
use nanogpt::tokenizer::{CharVocab, Gpt2Bpe, Tokenizer, EOT};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

fn fixture_json(name: &str) -> serde_json::Value {
    let path = common::fixtures().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("fixture is JSON")
}

fn tinyshakespeare() -> String {
    let path = common::fixtures().join("../data/tinyshakespeare.txt");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn test_data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

#[test]
fn gpt2_matches_tiktoken_cases() {
    let fx = fixture_json("tokenizer_gpt2.json");
    let bpe = Gpt2Bpe::new().expect("tokenizer");
    let cases = fx["cases"].as_array().expect("cases");
    assert!(cases.len() >= 30);
    for case in cases {
        let text = case["text"].as_str().expect("text");
        let want = json_ids(&case["ids"]);
        assert_eq!(bpe.encode_ordinary(text), want, "encode_ordinary({text:?})");
        // With no special token in the text, encode equals encode_ordinary.
        assert_eq!(bpe.encode(text), want, "encode({text:?})");
        assert_eq!(
            bpe.decode(&want).expect("decode"),
            text,
            "decode of {text:?}"
        );
    }
}

#[test]
fn gpt2_special_token() {
    let fx = fixture_json("tokenizer_gpt2.json");
    let sp = &fx["special"];
    let text = sp["text"].as_str().expect("text");
    let bpe = Gpt2Bpe::new().expect("tokenizer");
    assert_eq!(bpe.encode(text), json_ids(&sp["ids_allowing_special"]));
    assert_eq!(bpe.encode_ordinary(text), json_ids(&sp["ids_ordinary"]));
    assert_eq!(EOT, 50256);
    assert_eq!(bpe.decode(&[EOT]).expect("decode"), "<|endoftext|>");
    assert_eq!(bpe.encode("<|endoftext|>"), vec![EOT]);
    assert_eq!(
        bpe.encode("a<|endoftext|><|endoftext|>"),
        vec![64, EOT, EOT]
    );
}

#[test]
fn gpt2_shakespeare_first_10k_chars() {
    let fx = fixture_json("tokenizer_gpt2.json");
    let want = &fx["shakespeare_first_10k_chars"];
    let text: String = tinyshakespeare().chars().take(10_000).collect();
    let ids = Gpt2Bpe::new().expect("tokenizer").encode_ordinary(&text);
    assert_eq!(
        ids.len() as u64,
        want["n_tokens"].as_u64().expect("n_tokens")
    );
    let bytes: Vec<u8> = ids.iter().flat_map(|&t| (t as u16).to_le_bytes()).collect();
    let sha = format!("{:x}", Sha256::digest(&bytes));
    assert_eq!(sha, want["sha256_u16le"].as_str().expect("sha"));
}

#[test]
fn gpt2_decode_errors_and_partial_utf8() {
    let bpe = Gpt2Bpe::new().expect("tokenizer");
    let err = bpe.decode(&[50257]).expect_err("out of vocab").to_string();
    assert!(err.contains("50257"), "{err}");
    // "😀" is several byte tokens; decoding only the first gives U+FFFD, like tiktoken.
    let ids = bpe.encode_ordinary("😀");
    assert!(ids.len() > 1);
    assert_eq!(bpe.decode(&ids[..1]).expect("decode"), "\u{FFFD}");
    assert_eq!(bpe.decode_bytes(&ids).expect("bytes"), "😀".as_bytes());
}

#[test]
fn tokenizer_enum() {
    let t = Tokenizer::gpt2().expect("gpt2");
    assert_eq!(t.vocab_size(), 50257);
    assert_eq!(t.eot(), Some(EOT));
    assert_eq!(
        t.encode("You are my sunshine.").expect("encode"),
        vec![1639, 389, 616, 34488, 13]
    );
    assert_eq!(t.encode("x<|endoftext|>").expect("encode"), vec![87, EOT]);
    assert_eq!(t.encode_ordinary("<|endoftext|>").expect("encode").len(), 7);

    let c = Tokenizer::Char(CharVocab::from_text("hello"));
    assert_eq!(c.vocab_size(), 4);
    assert_eq!(c.eot(), None);
    assert_eq!(c.encode("hole").expect("encode"), vec![1, 3, 2, 0]);
    assert_eq!(c.decode(&[1, 0, 2, 2, 3]).expect("decode"), "hello");
}

#[test]
fn char_vocab_basics() {
    let v = CharVocab::from_text("ba\nc a😀é");
    assert_eq!(v.chars(), &['\n', ' ', 'a', 'b', 'c', 'é', '😀']);
    let ids = v.encode("😀 abc").expect("encode");
    assert_eq!(ids, vec![6, 1, 2, 3, 4]);
    assert_eq!(v.decode(&ids).expect("decode"), "😀 abc");
    let err = v.encode("abz").expect_err("unknown char").to_string();
    assert!(
        err.contains("'z'") && err.contains("U+007A") && err.contains("position 2"),
        "{err}"
    );
    let err = v.decode(&[7]).expect_err("bad id").to_string();
    assert!(err.contains("token id 7"), "{err}");
    assert!(CharVocab::from_itos(vec!['a', 'b', 'a']).is_err());
}

#[test]
fn char_vocab_shakespeare_and_meta_json_round_trip() {
    let fx = fixture_json("shakespeare_char.json");
    let v = CharVocab::from_text(&tinyshakespeare());
    assert_eq!(v.vocab_size(), 65);
    let want: Vec<char> = fx["vocab"].as_str().expect("vocab").chars().collect();
    assert_eq!(v.chars(), want.as_slice());

    let json = v.to_meta_json();
    let parsed: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(parsed["vocab_size"], 65);
    assert_eq!(parsed["itos"][0], "\n");
    assert_eq!(parsed["stoi"]["a"], v.id_of('a').expect("a") as u64);
    let back = CharVocab::from_meta_json(&json, Path::new("meta.json")).expect("parse");
    assert_eq!(back, v);

    let dir = TempDir::new("tok", "meta-json");
    let path = dir.join("meta.json");
    std::fs::write(&path, &json).expect("write");
    assert_eq!(CharVocab::load(&path).expect("load"), v);
    let t = dataset::tokenizer(&dir).expect("dataset::tokenizer");
    assert!(matches!(t, Tokenizer::Char(ref c) if *c == v));
}

#[test]
fn data_dir_without_meta_is_gpt2() {
    let dir = TempDir::new("tok", "no-meta");
    let t = dataset::tokenizer(&dir).expect("dataset::tokenizer");
    assert!(matches!(t, Tokenizer::Gpt2(_)));
}

#[test]
fn meta_json_errors() {
    let p = Path::new("data/x/meta.json");
    let err = |text: &str| {
        CharVocab::from_meta_json(text, p)
            .expect_err(text)
            .to_string()
    };
    for (text, needle) in [
        ("not json", "not valid JSON"),
        (r#"{"vocab_size": 2}"#, "missing \"itos\""),
        (r#"{"itos": ["a", "bc"]}"#, "itos[1]"),
        (r#"{"itos": ["a", 3]}"#, "itos[1]"),
        (r#"{"itos": ["a", "a"]}"#, "twice"),
        (
            r#"{"itos": ["a", "b"], "vocab_size": 3}"#,
            "vocab_size is 3",
        ),
        (
            r#"{"itos": ["a", "b"], "stoi": {"a": 1, "b": 0}}"#,
            "does not match",
        ),
        (r#"{"itos": ["a", "b"], "stoi": {"a": 0}}"#, "stoi has 1"),
    ] {
        let e = err(text);
        assert!(
            e.contains("data/x/meta.json") && e.contains(needle),
            "{text}: {e}"
        );
        assert!(!e.contains('\n'), "one line: {e}");
    }
    let ok = CharVocab::from_meta_json(r#"{"itos": ["b", "a"]}"#, p).expect("itos alone");
    assert_eq!(ok.chars(), &['b', 'a']);

    let missing = Path::new("/nonexistent/dir/meta.json");
    let e = CharVocab::load(missing).expect_err("missing").to_string();
    assert!(e.contains("/nonexistent/dir/meta.json"), "{e}");
}

#[test]
fn meta_pkl_from_nanogpt() {
    // Pickled by Python 3.11 exactly as nanoGPT's shakespeare_char/prepare.py does (protocol 4).
    let v = CharVocab::load(&test_data("shakespeare_char_meta.pkl")).expect("meta.pkl");
    assert_eq!(v, CharVocab::from_text(&tinyshakespeare()));
    // Protocol 2 (BINUNICODE, BINPUT/BINGET), with non-ASCII characters.
    let v = CharVocab::load(&test_data("unicode_meta_p2.pkl")).expect("p2 pickle");
    assert_eq!(v, CharVocab::from_text("héllo wörld ✓ 😀\n"));
    // And through the Tokenizer, from a data directory that only has meta.pkl.
    let dir = TempDir::new("tok", "meta-pkl");
    std::fs::copy(test_data("shakespeare_char_meta.pkl"), dir.join("meta.pkl")).expect("copy");
    let t = dataset::tokenizer(&dir).expect("dataset::tokenizer");
    assert_eq!(t.vocab_size(), 65);
    assert_eq!(
        t.decode(&t.encode("ROMEO:").expect("enc")).expect("dec"),
        "ROMEO:"
    );
}

#[test]
fn meta_pkl_errors() {
    let good = std::fs::read(test_data("shakespeare_char_meta.pkl")).expect("read");
    let p = Path::new("d/meta.pkl");
    let cut = CharVocab::from_meta_pkl(&good[..good.len() / 2], p).expect_err("truncated");
    let e = cut.to_string();
    assert!(e.contains("d/meta.pkl") && e.contains("truncated"), "{e}");
    // A pickled list is not a vocabulary dict: \x80\x04 ] .
    let e = CharVocab::from_meta_pkl(b"\x80\x04].", p)
        .expect_err("list")
        .to_string();
    assert!(e.contains("not a dict"), "{e}");
    // A global (GLOBAL opcode 'c', here `os.system`) is refused, not executed.
    let e = CharVocab::from_meta_pkl(b"\x80\x02cos\nsystem\n.", p)
        .expect_err("global")
        .to_string();
    assert!(
        e.contains("d/meta.pkl") && e.contains("refused, not run"),
        "{e}"
    );
    assert!(!e.contains('\n'), "one line: {e}");
    // A call (REDUCE) of `os.system("touch <file>")`: refused, and the file never appears.
    let dir = TempDir::new("tok", "evil-pkl");
    let witness = dir.join("ran");
    let cmd = format!("touch {}", witness.display());
    let mut evil = b"\x80\x02cos\nsystem\nX".to_vec();
    evil.extend_from_slice(&(cmd.len() as u32).to_le_bytes());
    evil.extend_from_slice(cmd.as_bytes());
    evil.extend_from_slice(b"\x85R.");
    let e = CharVocab::from_meta_pkl(&evil, p)
        .expect_err("reduce")
        .to_string();
    assert!(
        e.contains("d/meta.pkl") && e.contains("refused, not run"),
        "{e}"
    );
    assert!(!witness.exists(), "the pickle's call ran");
    // Shared (memoised) objects are read through BINGET: the 'a' of itos is stoi's key.
    let small = b"\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x00}\x94(\x8c\x04itos\x94}\x94K\x00\x8c\x01a\x94s\x8c\x04stoi\x94}\x94h\x03K\x00su.";
    let v = CharVocab::from_meta_pkl(small, p).expect("small pickle");
    assert_eq!(v.chars(), &['a']);
}

/// Our GPT-2 encoder against tiktoken-rs's (regex-based) one, the oracle, on `text`.
fn assert_same_as_tiktoken(oracle: &tiktoken_rs::CoreBPE, ours: &Gpt2Bpe, text: &str, what: &str) {
    let want = oracle.encode_ordinary(text);
    let got = ours.encode_ordinary(text);
    if got != want {
        let first = got
            .iter()
            .zip(&want)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(want.len()));
        panic!(
            "{what}: tokens differ from tiktoken-rs at token {first}: ours {:?}, tiktoken {:?}; text {text:?}",
            &got[first..(first + 5).min(got.len())],
            &want[first..(first + 5).min(want.len())]
        );
    }
}

/// Every Unicode scalar value, alone and in the places where the pre-tokenizer's classes
/// matter (after a letter, a space, a digit, an apostrophe, whitespace), 256 code points per
/// text: the classes agree with the regex engine's everywhere.
#[test]
fn gpt2_encoder_equals_tiktoken_on_every_code_point() {
    let oracle = tiktoken_rs::r50k_base().unwrap();
    let ours = Gpt2Bpe::new().unwrap();
    for block in (0..=0x10FFFFu32).step_by(256) {
        let mut text = String::new();
        for c in (block..block + 256).filter_map(char::from_u32) {
            for form in [
                "{}",
                "a{}",
                " {}1",
                "'{}",
                " {}{}",
                "\n{}  ",
                "{}\u{3000}x",
                "1{}",
            ] {
                text.push_str(&form.replace("{}", &c.to_string()));
            }
        }
        assert_same_as_tiktoken(&oracle, &ours, &text, &format!("code points {block:#x}.."));
    }
}

/// Random strings over the characters where the pattern's alternatives meet: spaces and other
/// whitespace, apostrophes and contraction letters, digits of several kinds, combining marks,
/// CJK, emoji, punctuation; and random code points anywhere.
#[test]
fn gpt2_encoder_equals_tiktoken_on_random_text() {
    let oracle = tiktoken_rs::r50k_base().unwrap();
    let ours = Gpt2Bpe::new().unwrap();
    let alphabet: Vec<char> = " \n\t\r\u{a0}\u{3000}\u{85}\u{2028}\u{200b}\u{feff}'sdmtlvreSLa Zz019\u{663}\u{216b}\u{bd}\u{e9}\u{301}\u{4e1c}\u{1f680}-._,!?\"()ß"
        .chars()
        .collect();
    let mut rng = nanogpt::rng::Rng::new(2024);
    for case in 0..20_000 {
        let len = rng.below(40) as usize;
        let text: String = (0..len)
            .map(|_| {
                if rng.below(10) == 0 {
                    char::from_u32(rng.below(0x110000) as u32).unwrap_or('?')
                } else {
                    alphabet[rng.below(alphabet.len() as u64) as usize]
                }
            })
            .collect();
        assert_same_as_tiktoken(&oracle, &ours, &text, &format!("case {case}"));
    }
    // Long runs take the long-piece path, and the merge memory is reused.
    for text in [
        "a".repeat(5000),
        format!(" {}", "ab1".repeat(400)),
        "!@".repeat(300),
        " ".repeat(1000) + "x",
    ] {
        assert_same_as_tiktoken(&oracle, &ours, &text, "long run");
        assert_same_as_tiktoken(&oracle, &ours, &text, "long run, again");
    }
}

#[test]
fn gpt2_encoder_equals_tiktoken_on_shakespeare() {
    let oracle = tiktoken_rs::r50k_base().unwrap();
    let ours = Gpt2Bpe::new().unwrap();
    let text = tinyshakespeare();
    assert_same_as_tiktoken(&oracle, &ours, &text, "tiny Shakespeare");
    for (i, paragraph) in text.split("\n\n").take(2000).enumerate() {
        assert_same_as_tiktoken(&oracle, &ours, paragraph, &format!("paragraph {i}"));
    }
}
