//! `prepare text`: a user's corpus (text files, JSON lines, folders) into token files. The
//! output must equal tokenizing each document directly (+ EOT), in input order, split by
//! document as documented; errors are one line and leave nothing half-written.

mod common;

use common::TempDir;
use nanogpt::data::corpus::{find_cut, split_document};
use nanogpt::data::dataset;
use nanogpt::data::prepare::read_text;
use nanogpt::data::text::is_val_document;
use nanogpt::data::tokens::{SHARD_HEADER_BYTES, SHARD_MAGIC, SHARD_VERSION};
use nanogpt::data::{prepare_text, TextPrepareOptions, TextPrepareSummary, TextTokenizer};
use nanogpt::data::{TokenFile, TokenFormat};
use nanogpt::rng::Rng;
use nanogpt::tokenizer::{Gpt2Bpe, Tokenizer, EOT};
use std::path::Path;

fn write(path: &Path, bytes: impl AsRef<[u8]>) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("mkdir");
    }
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

fn jsonl(field: &str, docs: &[String]) -> String {
    docs.iter()
        .map(|d| serde_json::json!({ field: d, "id": 1 }).to_string() + "\n")
        .collect()
}

fn opts(inputs: &[&Path], out: &Path) -> TextPrepareOptions {
    let mut o = TextPrepareOptions::new(inputs.iter().map(|p| p.to_path_buf()).collect(), out);
    o.docs.val_fraction = 0.0;
    o.docs.progress = false;
    o
}

fn run(o: &TextPrepareOptions) -> TextPrepareSummary {
    prepare_text(o).unwrap_or_else(|e| panic!("prepare_text: {e:#}"))
}

fn err_of(o: &TextPrepareOptions) -> String {
    let e = prepare_text(o).expect_err("expected an error").to_string();
    assert!(!e.contains('\n'), "one line: {e}");
    e
}

/// A raw uint16 file's tokens.
fn raw_tokens(path: &Path) -> Vec<u32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(bytes.len() % 2, 0);
    bytes
        .chunks_exact(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]) as u32)
        .collect()
}

/// Token lists equal; on failure, says where they first differ instead of printing them.
#[track_caller]
fn assert_tokens(got: &[u32], want: &[u32], what: &str) {
    if got == want {
        return;
    }
    let at = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    let lo = at.saturating_sub(3);
    panic!(
        "{what}: {} tokens vs {} expected, first difference at {at}: {:?} vs {:?}",
        got.len(),
        want.len(),
        &got[lo..(at + 4).min(got.len())],
        &want[lo..(at + 4).min(want.len())]
    );
}

fn gpt2_expected<'a>(docs: impl IntoIterator<Item = &'a String>) -> Vec<u32> {
    let bpe = Gpt2Bpe::new().expect("bpe");
    let mut out = Vec::new();
    for d in docs {
        out.extend(bpe.encode_ordinary(d));
        out.push(EOT);
    }
    out
}

/// Splits documents as documented: document i is validation iff is_val_document(seed, i, f).
fn split_docs(docs: &[String], seed: u64, f: f64) -> (Vec<String>, Vec<String>) {
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (i, d) in docs.iter().enumerate() {
        if is_val_document(seed, i as u64, f) {
            val.push(d.clone());
        } else {
            train.push(d.clone());
        }
    }
    (train, val)
}

/// No `*.tmp` (half-written files) in `dir`.
fn assert_no_tmp(dir: &Path) {
    if !dir.exists() {
        return;
    }
    for entry in std::fs::read_dir(dir).expect("read_dir") {
        let name = entry.expect("entry").file_name();
        assert!(
            !name.to_string_lossy().ends_with(".tmp"),
            "{name:?} left in {}",
            dir.display()
        );
    }
}

fn assert_no_output(dir: &Path) {
    assert_no_tmp(dir);
    for name in ["train.bin", "val.bin", "train_000000.bin", "meta.json"] {
        assert!(!dir.join(name).exists(), "{name} written by a failed run");
    }
}

fn numbered_docs(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                "Document number {i}.\nIt has {} words, more or less.",
                i % 17
            )
        })
        .collect()
}

#[test]
fn gpt2_output_is_each_document_tokenized_in_input_order() {
    let dir = TempDir::new("prepare-text", "order");
    let corpus = dir.join("corpus");
    write(
        &corpus.join("b.txt"),
        "Second file.\r\nWith CRLF\r\nline ends.\r\n",
    );
    write(
        &corpus.join("a.txt"),
        "First file, with a literal <|endoftext|> inside.\n",
    );
    write(&corpus.join("Z.TXT"), "upper case extension");
    write(&corpus.join("empty.txt"), "");
    write(&corpus.join("notes.md"), "# not taken from a folder");
    write(
        &corpus.join("sub/c.jsonl"),
        "{\"body\": \"jsonl one\", \"id\": 1}\n\n   \n{\"id\": 2, \"body\": \"jsonl two \\u00fc\\n\"}\r\n",
    );
    write(
        &corpus.join("sub/d.json-lines"),
        "\u{feff}{\"body\": \"d\"}",
    );
    // Named explicitly: read as text whatever its extension.
    let extra = dir.join("extra.text");
    write(&extra, "Named explicitly.");
    let out = dir.join("out");
    let mut o = opts(&[&corpus, &extra], &out);
    o.docs.text_field = "body".to_string();
    let s = run(&o);

    let docs: Vec<String> = [
        "upper case extension",
        "First file, with a literal <|endoftext|> inside.\n",
        "Second file.\nWith CRLF\nline ends.\n",
        "",
        "jsonl one",
        "jsonl two \u{fc}\n",
        "d",
        "Named explicitly.",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let expected = gpt2_expected(&docs);
    assert_tokens(&raw_tokens(&out.join("train.bin")), &expected, "train.bin");
    assert_eq!(
        std::fs::read(out.join("val.bin")).expect("val.bin").len(),
        0
    );
    let tf = TokenFile::open(&out.join("train.bin"), 50257).expect("open");
    assert_eq!(tf.format(), TokenFormat::RawU16);
    assert_eq!(tf.len(), expected.len());

    assert_eq!(s.documents, 8);
    assert_eq!((s.train_documents, s.val_documents), (8, 0));
    assert_eq!(s.files, 7);
    assert_eq!(s.skipped_files, vec![corpus.join("notes.md")]);
    let bytes: u64 = walk_sizes(&corpus) + std::fs::metadata(&extra).expect("meta").len()
        - std::fs::metadata(corpus.join("notes.md"))
            .expect("meta")
            .len();
    assert_eq!(s.bytes, bytes);
    assert_eq!(s.train_tokens, expected.len() as u64);
    assert_eq!(s.val_tokens, 0);
    assert_eq!(s.vocab_size, 50257);
    assert_eq!(s.train_files, vec![out.join("train.bin")]);
    assert_eq!(s.val_files, vec![out.join("val.bin")]);
    assert!(s.meta_path.is_none());
    assert!(s.elapsed_s > 0.0 && s.mb_per_s > 0.0);
    assert!(s.threads >= 1);
    let w = s.warnings();
    assert!(
        w.iter().any(|w| w.contains("no validation documents")),
        "{w:?}"
    );
    assert!(w.iter().any(|w| w.contains("notes.md")), "{w:?}");
    assert_no_tmp(&out);
}

fn walk_sizes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| {
            let p = e.expect("entry").path();
            if p.is_dir() {
                walk_sizes(&p)
            } else {
                std::fs::metadata(&p).expect("meta").len()
            }
        })
        .sum()
}

#[test]
fn split_is_by_document_stable_and_seeded() {
    let dir = TempDir::new("prepare-text", "split");
    let docs = numbered_docs(400);
    let input = dir.join("docs.jsonl");
    write(&input, jsonl("text", &docs));
    let prep = |name: &str, seed: u64| {
        let out = dir.join(name);
        let mut o = opts(&[&input], &out);
        o.docs.val_fraction = 0.2;
        o.docs.seed = seed;
        let s = run(&o);
        (s, out)
    };
    let (s, out) = prep("a", 7);
    let (train, val) = split_docs(&docs, 7, 0.2);
    assert!(
        (40..=120).contains(&val.len()),
        "{} val documents",
        val.len()
    );
    assert_tokens(
        &raw_tokens(&out.join("train.bin")),
        &gpt2_expected(&train),
        "train.bin",
    );
    assert_tokens(
        &raw_tokens(&out.join("val.bin")),
        &gpt2_expected(&val),
        "val.bin",
    );
    assert_eq!(s.val_documents, val.len() as u64);
    assert_eq!(s.train_documents, train.len() as u64);
    assert!(s.warnings().is_empty(), "{:?}", s.warnings());

    // Same seed: the same bytes. Another seed: another split of the same documents.
    let (_, again) = prep("b", 7);
    for name in ["train.bin", "val.bin"] {
        assert_eq!(
            std::fs::read(out.join(name)).expect("read"),
            std::fs::read(again.join(name)).expect("read"),
            "{name}"
        );
    }
    let (_, other) = prep("c", 8);
    let (train8, val8) = split_docs(&docs, 8, 0.2);
    assert_ne!(val8, val);
    assert_tokens(
        &raw_tokens(&other.join("val.bin")),
        &gpt2_expected(&val8),
        "val.bin",
    );
    assert_tokens(
        &raw_tokens(&other.join("train.bin")),
        &gpt2_expected(&train8),
        "train.bin",
    );
    assert_ne!(
        std::fs::read(out.join("val.bin")).expect("read"),
        std::fs::read(other.join("val.bin")).expect("read")
    );

    // The documented default (nanoGPT's openwebtext): 0.0005 of the documents.
    let d = TextPrepareOptions::default();
    assert_eq!((d.docs.val_fraction, d.docs.seed), (0.0005, 2357));
    let n = (0..200_000u64)
        .filter(|&i| is_val_document(d.docs.seed, i, d.docs.val_fraction))
        .count();
    assert!((60..=140).contains(&n), "{n} of 200000");
}

#[test]
fn output_does_not_depend_on_threads_batches_or_pieces() {
    let dir = TempDir::new("prepare-text", "threads");
    let docs = numbered_docs(300);
    let input = dir.join("docs.jsonl");
    write(&input, jsonl("text", &docs));
    let big = dir.join("big.txt");
    write(&big, docs.join("\n").repeat(20));
    let mut reference: Option<(Vec<u8>, Vec<u8>)> = None;
    for (threads, batch_bytes, piece_bytes) in [
        (2, 16 << 20, 256 << 10),
        (1, 16 << 20, 256 << 10),
        (2, 100, 16),
        (3, 1, 1),
    ] {
        let out = dir.join(format!("out-{threads}-{batch_bytes}-{piece_bytes}"));
        let mut o = opts(&[&input, &big], &out);
        o.docs.val_fraction = 0.1;
        o.docs.num_proc = Some(threads);
        o.docs.batch_bytes = batch_bytes;
        o.docs.piece_bytes = piece_bytes;
        let s = run(&o);
        assert_eq!(s.threads, threads);
        assert_eq!(s.documents, 301);
        let got = (
            std::fs::read(out.join("train.bin")).expect("train"),
            std::fs::read(out.join("val.bin")).expect("val"),
        );
        match &reference {
            None => {
                let mut all = docs.clone();
                all.push(read_text(&big).expect("big"));
                let (train, val) = split_docs(&all, o.docs.seed, 0.1);
                assert_tokens(
                    &raw_tokens(&out.join("train.bin")),
                    &gpt2_expected(&train),
                    "train.bin",
                );
                assert_tokens(
                    &raw_tokens(&out.join("val.bin")),
                    &gpt2_expected(&val),
                    "val.bin",
                );
                reference = Some(got);
            }
            Some(r) => assert!(
                r == &got,
                "threads {threads}, batch {batch_bytes}, piece {piece_bytes}"
            ),
        }
    }
}

#[test]
fn long_documents_cut_into_pieces_tokenize_the_same() {
    let dir = TempDir::new("prepare-text", "pieces");
    let shakespeare = common::fixtures().join("../data/tinyshakespeare.txt");
    let text = read_text(&shakespeare).expect("tiny shakespeare");
    let pieces = split_document(text.clone(), 4096);
    assert!(pieces.len() > 200, "{} pieces", pieces.len());
    assert_eq!(pieces.concat(), text);

    let doc_json = dir.join("one.jsonl");
    write(&doc_json, jsonl("text", std::slice::from_ref(&text)));
    let out = dir.join("out");
    let mut o = opts(&[&shakespeare, &doc_json], &out);
    o.docs.piece_bytes = 4096;
    o.docs.batch_bytes = 64 << 10;
    let s = run(&o);
    assert_eq!(s.documents, 2);
    let expected = gpt2_expected([&text, &text]);
    assert_tokens(&raw_tokens(&out.join("train.bin")), &expected, "train.bin");

    // Adversarial text: whitespace runs, contractions, digits, CRLF, non-ASCII, cut every ~40 bytes.
    let parts = [
        "a", "bc", " ", "\n", "\n\n", "  ", "'s", "'ll", "1", "23", "!", "?!", "\u{e9}",
        "\u{4e2d}", " \n", "\t", "\r\n", "x\ny", "\n'", "'\n", ".\n.", " \n ", "\u{a0}",
    ];
    let mut rng = Rng::new(5);
    let mut tricky = String::new();
    while tricky.len() < 200_000 {
        tricky.push_str(parts[rng.below(parts.len() as u64) as usize]);
    }
    let tricky_path = dir.join("tricky.txt");
    write(&tricky_path, &tricky);
    let tricky = read_text(&tricky_path).expect("tricky");
    let out = dir.join("out-tricky");
    let mut o = opts(&[&tricky_path], &out);
    o.docs.piece_bytes = 40;
    o.docs.batch_bytes = 1000;
    run(&o);
    assert!(split_document(tricky.clone(), 40).len() > 100);
    assert_tokens(
        &raw_tokens(&out.join("train.bin")),
        &gpt2_expected([&tricky]),
        "train.bin",
    );
}

#[test]
fn cuts_fall_only_between_printable_ascii_around_a_newline() {
    assert_eq!(find_cut(b"ab\ncd\nef", 8, 0), Some(6));
    assert_eq!(find_cut(b"ab\ncd\nef", 5, 0), Some(3));
    assert_eq!(find_cut(b"ab\ncd\nef", 1, 0), Some(3)); // none before: the first after
    assert_eq!(find_cut(b"ab\ncd\nef", 8, 4), Some(6));
    assert_eq!(find_cut(b"ab\n cd \n\nef\n", 12, 0), None);
    assert_eq!(find_cut(b"\n", 1, 0), None);
    assert_eq!(
        split_document("no cut here at all".into(), 3),
        vec!["no cut here at all"]
    );
}

#[test]
fn char_mode_round_trips_through_meta_json() {
    let dir = TempDir::new("prepare-text", "char");
    let docs: Vec<String> = vec![
        "Hello, world!\n".into(),
        "\u{fc}ber caf\u{e9} \u{4e2d}\u{6587}".into(),
        "".into(),
        "last one".into(),
    ];
    let input = dir.join("docs.jsonl");
    write(&input, jsonl("text", &docs));
    let out = dir.join("out");
    let mut o = opts(&[&input], &out);
    o.tokenizer = TextTokenizer::Char;
    o.docs.piece_bytes = 3;
    let s = run(&o);
    let meta = s.meta_path.clone().expect("meta.json");
    assert_eq!(meta, out.join("meta.json"));
    let tok = Tokenizer::from_meta(&meta).expect("meta.json loads");
    let mut chars: Vec<char> = docs.concat().chars().chain("\n\n".chars()).collect();
    chars.sort_unstable();
    chars.dedup();
    assert_eq!(s.vocab_size, chars.len());
    assert_eq!(tok.vocab_size(), chars.len());
    assert_eq!(
        dataset::tokenizer(&out).expect("dir").vocab_size(),
        chars.len()
    );
    let ids = raw_tokens(&out.join("train.bin"));
    let text: String = docs.iter().map(|d| format!("{d}\n\n")).collect();
    assert_eq!(tok.decode(&ids).expect("decode"), text);
    assert_eq!(s.train_tokens as usize, text.chars().count());
    TokenFile::open(&out.join("train.bin"), s.vocab_size).expect("ids within the vocabulary");

    // No separator, and a split: the two files hold the documents of each split.
    let many = numbered_docs(200);
    let input = dir.join("many.jsonl");
    write(&input, jsonl("text", &many));
    let out = dir.join("out-split");
    let mut o = opts(&[&input], &out);
    o.tokenizer = TextTokenizer::Char;
    o.char_separator = String::new();
    o.docs.val_fraction = 0.25;
    let s = run(&o);
    let tok = Tokenizer::from_meta(&out.join("meta.json")).expect("meta");
    let (train, val) = split_docs(&many, o.docs.seed, 0.25);
    let decode = |name: &str| tok.decode(&raw_tokens(&out.join(name))).expect("decode");
    assert_eq!(decode("train.bin"), train.concat());
    assert_eq!(decode("val.bin"), val.concat());
    assert_eq!(s.val_documents, val.len() as u64);

    // GPT-2 into the same folder: the stale meta.json goes, or the data would look char-level.
    let mut o = opts(&[&input], &out);
    o.docs.val_fraction = 0.25;
    let s = run(&o);
    assert_eq!(s.removed_stale, vec![out.join("meta.json")]);
    assert!(!out.join("meta.json").exists());
    assert_eq!(dataset::tokenizer(&out).expect("dir").vocab_size(), 50257);
}

/// An llm.c shard's header count and tokens.
fn shard_tokens(path: &Path) -> (i32, Vec<u32>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let int = |i: usize| i32::from_le_bytes(bytes[4 * i..4 * i + 4].try_into().expect("4"));
    assert_eq!(int(0), SHARD_MAGIC, "{}", path.display());
    assert_eq!(int(1), SHARD_VERSION);
    assert!((3..256).all(|i| int(i) == 0));
    let tokens = bytes[SHARD_HEADER_BYTES..]
        .chunks_exact(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]) as u32)
        .collect::<Vec<_>>();
    assert_eq!(int(2) as usize, tokens.len(), "{}", path.display());
    (int(2), tokens)
}

#[test]
fn shards_have_llmc_headers_and_hold_the_same_tokens() {
    let dir = TempDir::new("prepare-text", "shards");
    let docs = numbered_docs(300);
    let input = dir.join("docs.jsonl");
    write(&input, jsonl("text", &docs));
    let out = dir.join("out");
    // A raw run first: switching to shards removes its train.bin/val.bin.
    let mut o = opts(&[&input], &out);
    o.docs.val_fraction = 0.1;
    run(&o);
    o.docs.shard_tokens = Some(500);
    let s = run(&o);
    let (train, val) = split_docs(&docs, o.docs.seed, 0.1);
    for (files, docs, name) in [
        (&s.train_files, &train, "train"),
        (&s.val_files, &val, "val"),
    ] {
        let expected = gpt2_expected(docs.iter());
        assert_eq!(files.len(), expected.len().div_ceil(500), "{name}");
        let mut all = Vec::new();
        for (i, f) in files.iter().enumerate() {
            assert_eq!(f, &out.join(format!("{name}_{i:06}.bin")));
            let (count, tokens) = shard_tokens(f);
            if i + 1 < files.len() {
                assert_eq!(count, 500);
            } else {
                assert!(count > 0 && count <= 500);
            }
            let tf = TokenFile::open(f, 50257).expect("shard opens");
            assert_eq!(tf.format(), TokenFormat::Shard);
            assert_eq!(tf.len(), tokens.len());
            all.extend(tokens);
        }
        assert_tokens(&all, &expected, name);
    }
    assert!(!out.join("train.bin").exists() && !out.join("val.bin").exists());
    assert!(s.removed_stale.contains(&out.join("train.bin")));

    // Bigger shards: fewer files, and the surplus ones of the last run are gone.
    let before = s.train_files.len();
    o.docs.shard_tokens = Some(2000);
    let s = run(&o);
    assert!(s.train_files.len() < before);
    assert!(!out
        .join(format!("train_{:06}.bin", s.train_files.len()))
        .exists());
    // Back to raw: every shard goes.
    o.docs.shard_tokens = None;
    run(&o);
    assert!(!out.join("train_000000.bin").exists() && !out.join("val_000000.bin").exists());
    assert!(out.join("train.bin").exists());

    // An empty split is still one (empty) shard.
    let mut o = opts(&[&input], &dir.join("out-empty-val"));
    o.docs.shard_tokens = Some(1000);
    let s = run(&o);
    assert_eq!(s.val_files.len(), 1);
    assert_eq!(shard_tokens(&s.val_files[0]).0, 0);
    o.docs.shard_tokens = Some(0);
    assert!(err_of(&o).contains("shard_tokens"));
}

#[test]
fn bad_inputs_are_one_line_errors_and_write_nothing() {
    let dir = TempDir::new("prepare-text", "errors");
    let out = dir.join("out");

    let missing = dir.join("nope.txt");
    let e = err_of(&opts(&[&missing], &out));
    assert!(
        e.contains("nope.txt") && e.contains("does not exist"),
        "{e}"
    );

    let bad = dir.join("bad.jsonl");
    write(
        &bad,
        "{\"text\": \"ok\"}\n{\"text\": \"ok\"}\n{\"text\": oops}\n",
    );
    let e = err_of(&opts(&[&bad], &out));
    assert!(
        e.contains("bad.jsonl:3") && e.contains("invalid JSON"),
        "{e}"
    );
    assert_no_output(&out);

    let field = dir.join("field.jsonl");
    write(&field, "{\"text\": \"ok\"}\n\n{\"content\": \"no text\"}\n");
    let e = err_of(&opts(&[&field], &out));
    assert!(
        e.contains("field.jsonl:3") && e.contains("\"text\"") && e.contains("\"content\""),
        "{e}"
    );
    let mut o = opts(&[&field], &out);
    o.docs.text_field = "content".into();
    let e = err_of(&o);
    assert!(
        e.contains("field.jsonl:1") && e.contains("\"content\""),
        "{e}"
    );
    assert_no_output(&out);

    let not_string = dir.join("num.jsonl");
    write(&not_string, "{\"text\": 5}\n");
    let e = err_of(&opts(&[&not_string], &out));
    assert!(
        e.contains("num.jsonl:1") && e.contains("not a string"),
        "{e}"
    );
    let array = dir.join("array.jsonl");
    write(&array, "[\"text\"]\n");
    let e = err_of(&opts(&[&array], &out));
    assert!(
        e.contains("array.jsonl:1") && e.contains("not a JSON object"),
        "{e}"
    );

    let latin1 = dir.join("latin1.txt");
    write(&latin1, b"caf\xe9 au lait");
    let e = err_of(&opts(&[&latin1], &out));
    assert!(
        e.contains("latin1.txt") && e.contains("UTF-8") && e.contains("offset 3"),
        "{e}"
    );
    // Also deep in a file read in pieces.
    let mut late = "line one\n".repeat(1000).into_bytes();
    late.extend(b"\xff");
    let late_path = dir.join("late.txt");
    write(&late_path, &late);
    let mut o = opts(&[&late_path], &out);
    o.docs.piece_bytes = 100;
    let e = err_of(&o);
    assert!(e.contains("late.txt") && e.contains("offset 9000"), "{e}");
    assert_no_output(&out);

    // Empty input: an empty folder, a folder of other files, files with no documents.
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).expect("mkdir");
    let e = err_of(&opts(&[&empty], &out));
    assert!(e.contains("no input files") && e.contains("empty"), "{e}");
    write(&empty.join("readme.md"), "hi");
    let e = err_of(&opts(&[&empty], &out));
    assert!(
        e.contains("no input files") && e.contains("1 other files skipped"),
        "{e}"
    );
    let blank = dir.join("blank.jsonl");
    write(&blank, "\n\n  \n");
    let e = err_of(&opts(&[&blank], &out));
    assert!(e.contains("no documents"), "{e}");
    let e = err_of(&opts(&[], &out));
    assert!(e.contains("no inputs"), "{e}");
    let mut o = opts(&[&bad], &out);
    o.docs.val_fraction = 1.0;
    assert!(err_of(&o).contains("val_fraction"));
    assert_no_output(&out);
}

#[test]
fn a_failed_run_leaves_the_previous_output_as_it_was() {
    let dir = TempDir::new("prepare-text", "atomic");
    let docs = numbered_docs(2000);
    let good = dir.join("good.jsonl");
    write(&good, jsonl("text", &docs));
    let out = dir.join("out");
    let mut o = opts(&[&good], &out);
    o.docs.val_fraction = 0.1;
    o.docs.shard_tokens = None;
    run(&o);
    let before: Vec<Vec<u8>> = ["train.bin", "val.bin"]
        .iter()
        .map(|n| std::fs::read(out.join(n)).expect("read"))
        .collect();

    // Many good documents (written out batch by batch), then a bad line.
    let mut text = jsonl("text", &numbered_docs(3000));
    text.push_str("{\"text\": \"unterminated}\n");
    let bad = dir.join("bad.jsonl");
    write(&bad, text);
    let mut o = opts(&[&bad], &out);
    o.docs.val_fraction = 0.1;
    o.docs.batch_bytes = 1000;
    let e = err_of(&o);
    assert!(e.contains("bad.jsonl:3001"), "{e}");
    for (n, b) in ["train.bin", "val.bin"].iter().zip(&before) {
        assert!(
            &std::fs::read(out.join(n)).expect("read") == b,
            "{n} changed"
        );
    }
    assert_no_tmp(&out);

    // The same with shards: no shard appears.
    o.docs.shard_tokens = Some(100);
    err_of(&o);
    assert!(!out.join("train_000000.bin").exists());
    assert_no_tmp(&out);
}
