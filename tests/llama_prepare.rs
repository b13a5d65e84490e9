//! `prepare text --tokenizer=FILE` with a sentencepiece tokenizer, against the training stream
//! of `fixtures/llama` (its README, "Training stream"): `[BOS] + sp.encode(doc)` per document.

mod common;

use common::llama_fixtures;

use common::{fixtures, nanogpt, TempDir};
use nanogpt::data::{dataset, prepare_text, TextPrepareOptions, TextTokenizer};
use nanogpt::llama::tokenizer::{LlamaTokenizer, BOS};
use nanogpt::tokenizer::Tokenizer;
use sha2::{Digest, Sha256};
use std::path::Path;

fn cases() -> serde_json::Value {
    let text =
        std::fs::read_to_string(llama_fixtures().join("tokenizer_cases.json")).expect("cases");
    serde_json::from_str(&text).expect("cases parse")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn shakespeare() -> String {
    std::fs::read_to_string(fixtures().join("../data/tinyshakespeare.txt")).expect("text")
}

/// The fixture's documents: speeches (blocks between blank lines, stripped), grouped in order
/// until the group's speeches, each counted with the blank line after it (+2), reach 2,000
/// characters; the last, shorter group is a document too. (The README's words; the exact
/// counting is the one that reproduces `training_stream`'s 498 documents and sha256, among
/// the readings tried: joined length, plain sum, unstripped blocks.)
fn training_documents() -> Vec<String> {
    let text = shakespeare();
    let mut docs = Vec::new();
    let (mut cur, mut n) = (Vec::new(), 0);
    for speech in text.split("\n\n").map(str::trim).filter(|s| !s.is_empty()) {
        cur.push(speech);
        n += speech.len() + 2;
        if n >= 2000 {
            docs.push(cur.join("\n\n"));
            (cur, n) = (Vec::new(), 0);
        }
    }
    if !cur.is_empty() {
        docs.push(cur.join("\n\n"));
    }
    docs
}

fn write_jsonl(path: &Path, docs: &[String]) {
    let lines: String = docs
        .iter()
        .map(|d| serde_json::json!({ "text": d }).to_string() + "\n")
        .collect();
    std::fs::write(path, lines).expect("write jsonl");
}

/// Runs `nanogpt prepare text ARGS`; (success, stdout, stderr).
fn prepare(args: &[&str]) -> (bool, String, String) {
    let out = nanogpt()
        .args(["prepare", "text", "--progress=false"])
        .args(args)
        .output()
        .expect("run nanogpt");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn path_arg(flag: &str, p: &Path) -> String {
    format!("--{flag}={}", p.display())
}

fn u16_ids(path: &Path) -> Vec<u32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    bytes
        .chunks_exact(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]) as u32)
        .collect()
}

#[test]
fn llama_prepare_reproduces_the_fixture_training_stream_from_model_and_bin() {
    let want = &cases()["training_stream"];
    let docs = training_documents();
    assert_eq!(docs.len() as u64, want["documents"].as_u64().expect("n"));
    let dir = TempDir::new("llama-prepare", "stream");
    let input = dir.join("docs.jsonl");
    write_jsonl(&input, &docs);
    // Both files, whole documents and documents cut into ~100-byte pieces (encoded as
    // continuations): the same stream.
    for (file, piece_bytes) in [
        ("tok512.model", 1 << 18),
        ("tok512.bin", 1 << 18),
        ("tok512.model", 100),
        ("tok512.bin", 1),
    ] {
        let name = format!("{file}-{piece_bytes}");
        let (ok, stdout, stderr) = prepare(&[
            &path_arg("input", &input),
            &path_arg("tokenizer", &llama_fixtures().join(file)),
            "--val_fraction=0",
            &path_arg("data_dir", &dir),
            &format!("--name={name}"),
            &format!("--piece_bytes={piece_bytes}"),
            "--json",
        ]);
        assert!(ok, "{name}: {stderr}");
        let summary: serde_json::Value = serde_json::from_str(&stdout).expect("summary json");
        assert_eq!(summary["vocab_size"], 512, "{name}");
        assert_eq!(summary["documents"], 498, "{name}");
        assert_eq!(summary["train_tokens"], want["tokens"], "{name}");
        assert_eq!(
            summary["tokenizer"]["Llama"],
            llama_fixtures().join(file).display().to_string()
        );
        let out = dir.join(&name);
        let bytes = std::fs::read(out.join("train.bin")).expect("train.bin");
        assert_eq!(
            bytes.len() as u64 / 2,
            want["tokens"].as_u64().expect("tokens")
        );
        assert_eq!(
            hex(&Sha256::digest(&bytes)),
            want["sha256_u16le"].as_str().expect("sha"),
            "{name}"
        );
        // The tokenizer is copied, byte for byte, under its dataset name.
        let copy = if file.ends_with(".model") {
            "tokenizer.model"
        } else {
            "tokenizer.bin"
        };
        assert_eq!(
            std::fs::read(out.join(copy)).expect("copy"),
            std::fs::read(llama_fixtures().join(file)).expect("fixture")
        );
        assert_eq!(
            summary["tokenizer_path"],
            out.join(copy).display().to_string()
        );
    }
}

#[test]
fn llama_prepare_first_10k_chars_and_a_cut_text_file_equal_whole_encoding() {
    let tok = LlamaTokenizer::read_model(&llama_fixtures().join("tok512.model")).expect("model");
    let text = shakespeare();
    let first: String = text.chars().take(10_000).collect();
    let want = &cases()["shakespeare_first_10k_chars"];
    let ids = tok.encode_sentencepiece(&first);
    let bytes: Vec<u8> = ids.iter().flat_map(|&i| (i as u16).to_le_bytes()).collect();
    assert_eq!(ids.len() as u64, want["n_tokens"].as_u64().expect("n"));
    assert_eq!(hex(&Sha256::digest(&bytes)), want["sha256_u16le"]);

    // The whole text as one .txt document, read and encoded in 4 KiB pieces: the tokens of
    // the whole, with one BOS.
    assert!(tok.newline_ends_merges());
    let dir = TempDir::new("llama-prepare", "txt");
    let input = dir.join("input.txt");
    // Leading and repeated spaces: the normalizer's work at the start and inside pieces.
    let text = format!("   {}  \n", text.replace("\nAll:", "\n  All:  the  people"));
    std::fs::write(&input, &text).expect("write");
    let mut o = TextPrepareOptions::new(vec![input], dir.join("out"));
    o.tokenizer = TextTokenizer::Llama(llama_fixtures().join("tok512.bin"));
    o.docs.val_fraction = 0.0;
    o.docs.piece_bytes = 4096;
    o.docs.progress = false;
    let s = prepare_text(&o).expect("prepare");
    let mut whole = vec![BOS];
    whole.extend(tok.encode_sentencepiece(&text));
    assert_eq!(s.train_tokens as usize, whole.len());
    assert_eq!(u16_ids(&dir.join("out/train.bin")), whole);
}

#[test]
fn llama_dataset_remembers_its_tokenizer_and_other_modes_replace_it() {
    let dir = TempDir::new("llama-prepare", "folder");
    let input = dir.join("docs.jsonl");
    write_jsonl(
        &input,
        &["First Citizen:\nBefore we proceed".into(), "ROMEO:".into()],
    );
    let out = dir.join("out");
    let base = |tokenizer: TextTokenizer| {
        let mut o = TextPrepareOptions::new(vec![input.clone()], &out);
        o.tokenizer = tokenizer;
        o.docs.val_fraction = 0.0;
        o.docs.progress = false;
        o
    };
    // A folder holding tokenizer.model names it.
    let s = prepare_text(&base(TextTokenizer::Llama(
        llama_fixtures().join("tiny-llama"),
    )))
    .expect_err("tiny-llama has no tokenizer");
    assert!(format!("{s:#}").contains("tiny-llama"), "{s:#}");
    let tokdir = dir.join("tok");
    std::fs::create_dir_all(&tokdir).expect("mkdir");
    std::fs::copy(
        llama_fixtures().join("tok512.model"),
        tokdir.join("tokenizer.model"),
    )
    .expect("copy");
    let s = prepare_text(&base(TextTokenizer::Llama(tokdir))).expect("prepare llama");
    assert_eq!(s.vocab_size, 512);
    assert_eq!(s.tokenizer_path, Some(out.join("tokenizer.model")));
    assert!(out.join("tokenizer.model").is_file());
    let Tokenizer::Llama(tok) = dataset::tokenizer(&out).expect("tokenizer") else {
        panic!("not the Llama tokenizer");
    };
    assert_eq!(tok.vocab_size(), 512);
    assert_eq!(dataset::vocab_size(&out).expect("vocab"), Some(512));
    assert!(dataset::vocabulary(&out).expect("vocabulary").is_none());
    let mut want = vec![BOS];
    want.extend(tok.encode_sentencepiece("First Citizen:\nBefore we proceed"));
    want.push(BOS);
    want.extend(tok.encode_sentencepiece("ROMEO:"));
    assert_eq!(u16_ids(&out.join("train.bin")), want);

    // Characters: tokenizer.model goes, meta.json comes.
    let s = prepare_text(&base(TextTokenizer::Char)).expect("prepare char");
    assert_eq!(s.removed_stale, vec![out.join("tokenizer.model")]);
    assert!(!out.join("tokenizer.model").exists());
    assert!(out.join("meta.json").is_file());
    assert!(matches!(
        dataset::tokenizer(&out).expect("tokenizer"),
        Tokenizer::Char(_)
    ));
    assert_eq!(
        dataset::vocab_size(&out).expect("vocab"),
        Some(s.vocab_size)
    );

    // And back, with the .bin: meta.json goes.
    let s = prepare_text(&base(TextTokenizer::Llama(
        llama_fixtures().join("tok512.bin"),
    )))
    .expect("prepare bin");
    assert_eq!(s.removed_stale, vec![out.join("meta.json")]);
    assert!(out.join("tokenizer.bin").is_file());
    assert_eq!(dataset::vocab_size(&out).expect("vocab"), Some(512));
    assert!(matches!(
        dataset::tokenizer(&out).expect("tokenizer"),
        Tokenizer::Llama(_)
    ));
    assert_eq!(u16_ids(&out.join("train.bin")), want);

    // .bin then .model: the other tokenizer file goes.
    let s = prepare_text(&base(TextTokenizer::Llama(
        llama_fixtures().join("tok512.model"),
    )))
    .expect("prepare model");
    assert_eq!(s.removed_stale, vec![out.join("tokenizer.bin")]);

    // GPT-2: no vocabulary file at all.
    let s = prepare_text(&base(TextTokenizer::Gpt2)).expect("prepare gpt2");
    assert_eq!(s.removed_stale, vec![out.join("tokenizer.model")]);
    assert_eq!(dataset::vocab_size(&out).expect("vocab"), None);
    assert!(matches!(
        dataset::tokenizer(&out).expect("tokenizer"),
        Tokenizer::Gpt2(_)
    ));
}

#[test]
fn llama_prepare_bad_tokenizers_are_one_line_errors_naming_the_file() {
    let dir = TempDir::new("llama-prepare", "errors");
    let input = dir.join("docs.jsonl");
    write_jsonl(&input, &["hello".into()]);
    let garbage = dir.join("garbage.model");
    std::fs::write(&garbage, "this is not a tokenizer\n").expect("write");
    let garbage_bin = dir.join("garbage.bin");
    std::fs::write(&garbage_bin, vec![0u8; 4 + 8 * 600]).expect("write");
    let cut = dir.join("cut.bin");
    let bin = std::fs::read(llama_fixtures().join("tok512.bin")).expect("bin");
    std::fs::write(&cut, &bin[..bin.len() - 3]).expect("write");
    let noext = dir.join("tokenizer");
    std::fs::write(&noext, "neither\n").expect("write");
    let missing = dir.join("missing.model");
    for file in [
        &missing,
        &garbage,
        &garbage_bin,
        &cut,
        &noext,
        &dir.to_path_buf(),
    ] {
        let (ok, _, stderr) = prepare(&[
            &path_arg("input", &input),
            &path_arg("tokenizer", file),
            &path_arg("data_dir", &dir),
        ]);
        assert!(!ok, "{}", file.display());
        let err = stderr.trim_end();
        assert!(!err.contains('\n'), "{err}");
        assert!(err.starts_with("error: "), "{err}");
        assert!(err.contains(&file.display().to_string()), "{err}");
    }
    // Nothing was prepared.
    assert!(!dir.join("text/train.bin").exists());
}

#[test]
fn llama_read_bin_all_takes_every_entry() {
    let bin = llama_fixtures().join("tok512.bin");
    let all = LlamaTokenizer::read_bin_all(&bin).expect("read_bin_all");
    let sized = LlamaTokenizer::read_bin(&bin, 512).expect("read_bin");
    assert_eq!(all.vocab_size(), 512);
    assert_eq!(all.pieces, sized.pieces);
    assert_eq!(all.scores, sized.scores);
    assert_eq!(all.kinds, sized.kinds);
}
