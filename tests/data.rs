//! The data layer: nanoGPT-identical Shakespeare preparation (`../shared/fixtures/shakespeare_*.json`),
//! token files in both formats with their errors, and the batch sampler.

mod common;

use common::TempDir;
use nanogpt::data::batch::sample_batch;
use nanogpt::data::prepare::{read_text, split_chars};
use nanogpt::data::tokens::{SHARD_HEADER_BYTES, SHARD_MAGIC};
use nanogpt::data::{
    prepare_shakespeare_bpe, prepare_shakespeare_char, write_tokens, TokenFile, TokenFormat,
};
use nanogpt::rng::Rng;
use nanogpt::tokenizer::CharVocab;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

fn fixture_json(name: &str) -> serde_json::Value {
    let path = common::fixtures().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("fixture is JSON")
}

fn shakespeare() -> PathBuf {
    common::fixtures().join("../data/tinyshakespeare.txt")
}

fn sha256_file(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    format!("{:x}", Sha256::digest(&bytes))
}

/// No `*.tmp` left behind by the atomic writers.
fn assert_no_tmp(dir: &Path) {
    for entry in std::fs::read_dir(dir).expect("read_dir") {
        let name = entry.expect("entry").file_name();
        assert!(
            !name.to_string_lossy().ends_with(".tmp"),
            "{name:?} left in {}",
            dir.display()
        );
    }
}

fn err_of<T: std::fmt::Debug>(r: anyhow::Result<T>) -> String {
    let e = r.expect_err("expected an error").to_string();
    assert!(!e.contains('\n'), "one line: {e}");
    e
}

#[test]
fn prepare_char_matches_nanogpt() {
    let fx = fixture_json("shakespeare_char.json");
    let dir = TempDir::new("data", "char");
    let s = prepare_shakespeare_char(&shakespeare(), &dir).expect("prepare");
    assert_eq!(
        s.vocab_size as u64,
        fx["vocab_size"].as_u64().expect("vocab_size")
    );
    assert_eq!(
        s.train_tokens as u64,
        fx["train_tokens"].as_u64().expect("train")
    );
    assert_eq!(s.val_tokens as u64, fx["val_tokens"].as_u64().expect("val"));
    assert_eq!(s.train_path, dir.join("train.bin"));
    assert_eq!(
        sha256_file(&s.train_path),
        fx["train_bin_sha256"].as_str().expect("sha")
    );
    assert_eq!(
        sha256_file(&s.val_path),
        fx["val_bin_sha256"].as_str().expect("sha")
    );
    let meta = s.meta_path.as_deref().expect("meta.json");
    let vocab = CharVocab::load(meta).expect("meta.json loads");
    let want: Vec<char> = fx["vocab"].as_str().expect("vocab").chars().collect();
    assert_eq!(vocab.chars(), want.as_slice());
    // The written files open as token files of this vocabulary, and not of a smaller one.
    let train = TokenFile::open(&s.train_path, 65).expect("open train.bin");
    assert_eq!(
        (train.len(), train.format()),
        (s.train_tokens, TokenFormat::RawU16)
    );
    let e = err_of(TokenFile::open(&s.train_path, 60));
    assert!(
        e.contains("train.bin") && e.contains("vocab_size 60"),
        "{e}"
    );
    assert_no_tmp(&dir);
}

#[test]
fn prepare_bpe_matches_nanogpt() {
    let fx = fixture_json("shakespeare_bpe.json");
    let dir = TempDir::new("data", "bpe");
    let s = prepare_shakespeare_bpe(&shakespeare(), &dir.join("sub")).expect("prepare");
    assert_eq!(s.vocab_size, 50257);
    assert_eq!(
        s.train_tokens as u64,
        fx["train_tokens"].as_u64().expect("train")
    );
    assert_eq!(s.val_tokens as u64, fx["val_tokens"].as_u64().expect("val"));
    assert_eq!(
        sha256_file(&s.train_path),
        fx["train_bin_sha256"].as_str().expect("sha")
    );
    assert_eq!(
        sha256_file(&s.val_path),
        fx["val_bin_sha256"].as_str().expect("sha")
    );
    assert_eq!(s.meta_path, None);
    let val = TokenFile::open(&s.val_path, 50257).expect("open val.bin");
    assert_eq!(val.len(), s.val_tokens);
    assert_no_tmp(&dir.join("sub"));
}

#[test]
fn prepare_errors_name_the_file() {
    let dir = TempDir::new("data", "prep-err");
    let e = err_of(prepare_shakespeare_char(&dir.join("nope.txt"), &dir));
    assert!(e.contains("nope.txt"), "{e}");
    let bad = dir.join("latin1.txt");
    std::fs::write(&bad, b"caf\xe9").expect("write");
    let e = err_of(prepare_shakespeare_bpe(&bad, &dir));
    assert!(e.contains("latin1.txt") && e.contains("not UTF-8"), "{e}");
}

#[test]
fn text_reading_and_splitting_follow_python() {
    let dir = TempDir::new("data", "text");
    let path = dir.join("crlf.txt");
    std::fs::write(&path, "a\r\nb\rc\n").expect("write");
    assert_eq!(read_text(&path).expect("read"), "a\nb\nc\n");
    // Characters, not bytes: 10 code points -> 9 train, 1 val.
    assert_eq!(split_chars("ééééééééé😀", 0.9), ("ééééééééé", "😀"));
    // int(n * 0.9) truncates: 5 chars -> 4.
    assert_eq!(split_chars("abcde", 0.9), ("abcd", "e"));
    assert_eq!(split_chars("", 0.9), ("", ""));
}

#[test]
fn raw_and_shard_round_trip() {
    let dir = TempDir::new("data", "roundtrip");
    let tokens: Vec<u32> = (0..5000).map(|i| (i * 7919) % 50257).collect();
    let want: Vec<u16> = tokens.iter().map(|&t| t as u16).collect();

    let raw = dir.join("raw.bin");
    write_tokens(&raw, &tokens, TokenFormat::RawU16).expect("write raw");
    assert_eq!(std::fs::metadata(&raw).expect("meta").len(), 10_000);
    let f = TokenFile::open(&raw, 50257).expect("open raw");
    assert_eq!(f.format(), TokenFormat::RawU16);
    assert_eq!(f.tokens(), want.as_slice());
    assert_eq!(f.path(), raw.as_path());

    let shard = dir.join("shard.bin");
    write_tokens(&shard, &tokens, TokenFormat::Shard).expect("write shard");
    let bytes = std::fs::read(&shard).expect("read");
    assert_eq!(bytes.len(), SHARD_HEADER_BYTES + 10_000);
    let int = |i: usize| i32::from_le_bytes(bytes[4 * i..4 * i + 4].try_into().expect("4"));
    assert_eq!((int(0), int(1), int(2), int(3)), (SHARD_MAGIC, 1, 5000, 0));
    let f = TokenFile::open(&shard, 50257).expect("open shard");
    assert_eq!(f.format(), TokenFormat::Shard);
    assert_eq!(f.tokens(), want.as_slice());

    // Empty files are valid, but too short for any block.
    let empty = dir.join("empty.bin");
    write_tokens(&empty, &[], TokenFormat::RawU16).expect("write empty");
    let f = TokenFile::open(&empty, 10).expect("open empty");
    assert!(f.is_empty() && f.tokens().is_empty());
    assert_no_tmp(&dir);
}

#[test]
fn token_file_errors() {
    let dir = TempDir::new("data", "errors");
    let p = |name: &str| dir.join(name);

    let e = err_of(TokenFile::open(&p("missing.bin"), 65));
    assert!(
        e.contains("missing.bin") && e.contains("does not exist"),
        "{e}"
    );

    let e = err_of(TokenFile::open(&dir, 65));
    assert!(e.contains("is a directory"), "{e}");

    std::fs::write(p("odd.bin"), [1u8, 0, 2]).expect("write");
    let e = err_of(TokenFile::open(&p("odd.bin"), 65));
    assert!(e.contains("odd.bin") && e.contains("3 bytes"), "{e}");

    // A shard: header, then 100 tokens.
    let tokens: Vec<u32> = (0..100).collect();
    write_tokens(&p("good.bin"), &tokens, TokenFormat::Shard).expect("write");
    let good = std::fs::read(p("good.bin")).expect("read");

    std::fs::write(p("short.bin"), &good[..500]).expect("write");
    let e = err_of(TokenFile::open(&p("short.bin"), 65));
    assert!(e.contains("short.bin") && e.contains("header"), "{e}");

    let mut v2 = good.clone();
    v2[4..8].copy_from_slice(&2i32.to_le_bytes());
    std::fs::write(p("v2.bin"), &v2).expect("write");
    let e = err_of(TokenFile::open(&p("v2.bin"), 65));
    assert!(e.contains("v2.bin") && e.contains("version 2"), "{e}");

    std::fs::write(p("cut.bin"), &good[..good.len() - 2]).expect("write");
    let e = err_of(TokenFile::open(&p("cut.bin"), 65));
    assert!(
        e.contains("cut.bin") && e.contains("100 tokens") && e.contains("198 bytes"),
        "{e}"
    );

    let mut neg = good.clone();
    neg[8..12].copy_from_slice(&(-1i32).to_le_bytes());
    std::fs::write(p("neg.bin"), &neg).expect("write");
    let e = err_of(TokenFile::open(&p("neg.bin"), 65));
    assert!(e.contains("neg.bin") && e.contains("-1 tokens"), "{e}");

    // Token id out of range, in both formats, with its position.
    let e = err_of(TokenFile::open(&p("good.bin"), 99));
    assert!(
        e.contains("good.bin") && e.contains("token 99 at position 99"),
        "{e}"
    );
    assert!(TokenFile::open(&p("good.bin"), 100).is_ok());
    let mut big: Vec<u32> = vec![3; 3 << 20];
    big[(2 << 20) + 5] = 40000;
    write_tokens(&p("big.bin"), &big, TokenFormat::RawU16).expect("write");
    assert!(TokenFile::open(&p("big.bin"), 50257).is_ok());
    let e = err_of(TokenFile::open(&p("big.bin"), 256));
    assert!(
        e.contains(&format!("token 40000 at position {}", (2 << 20) + 5)),
        "{e}"
    );

    // Too few tokens for the block size.
    let f = TokenFile::open(&p("good.bin"), 100).expect("open");
    assert!(f.require_len(99).is_ok());
    let e = err_of(f.require_len(100));
    assert!(
        e.contains("good.bin") && e.contains("block_size 100") && e.contains("101"),
        "{e}"
    );
    let e = err_of(f.get_batch(&mut Rng::new(1), 2, 100));
    assert!(e.contains("good.bin"), "{e}");

    // Tokens that do not fit in 16 bits are refused, and nothing is left behind.
    let e = err_of(write_tokens(
        &p("wide.bin"),
        &[1, 70000],
        TokenFormat::RawU16,
    ));
    assert!(e.contains("wide.bin") && e.contains("70000"), "{e}");
    assert!(!p("wide.bin").exists());
    assert_no_tmp(&dir);
}

#[test]
fn batches_are_windows_of_the_data() {
    let data: Vec<u16> = (0..1000u16).collect();
    let mut rng = Rng::new(42);
    let (mut x, mut y) = (Vec::new(), Vec::new());
    let (b, t) = (8, 16);
    for _ in 0..50 {
        sample_batch(&data, &mut rng, b, t, &mut x, &mut y).expect("batch");
        assert_eq!((x.len(), y.len()), (b * t, b * t));
        for (xr, yr) in x.chunks(t).zip(y.chunks(t)) {
            let i = xr[0] as usize;
            assert!(i < data.len() - t, "offset {i} out of range");
            for j in 0..t {
                assert_eq!(xr[j], data[i + j] as u32);
                assert_eq!(yr[j], data[i + j + 1] as i32);
            }
        }
    }
}

#[test]
fn batch_offsets_cover_exactly_the_valid_range() {
    // len = T + 3: offsets 0, 1, 2 are valid (nanoGPT's randint(len - T)); 3 is not.
    let t = 5;
    let data: Vec<u16> = (0..(t as u16 + 3)).collect();
    let mut rng = Rng::new(7);
    let (mut x, mut y) = (Vec::new(), Vec::new());
    let mut seen = [0usize; 4];
    for _ in 0..200 {
        sample_batch(&data, &mut rng, 4, t, &mut x, &mut y).expect("batch");
        for row in x.chunks(t) {
            seen[row[0] as usize] += 1;
        }
    }
    assert!(seen[..3].iter().all(|&n| n > 150), "{seen:?}");
    assert_eq!(seen[3], 0);
    // The smallest file that works: exactly T + 1 tokens, offset 0 only.
    sample_batch(&data[..t + 1], &mut rng, 3, t, &mut x, &mut y).expect("batch");
    assert_eq!(&x[..t], &[0, 1, 2, 3, 4]);
    assert_eq!(&y[2 * t..], &[1, 2, 3, 4, 5]);
    assert!(sample_batch(&data[..t], &mut rng, 1, t, &mut x, &mut y).is_err());
    assert!(sample_batch(&data, &mut rng, 1, 0, &mut x, &mut y).is_err());
    assert!(sample_batch(&data, &mut rng, 0, 1, &mut x, &mut y).is_err());
}

#[test]
fn batches_are_deterministic_and_reuse_buffers() {
    let dir = TempDir::new("data", "batch");
    let tokens: Vec<u32> = (0..4096).map(|i| (i * 31 + 7) % 65).collect();
    let path = dir.join("train.bin");
    write_tokens(&path, &tokens, TokenFormat::RawU16).expect("write");
    let f = TokenFile::open(&path, 65).expect("open");

    let a = f.get_batch(&mut Rng::new(1337), 4, 64).expect("batch");
    let b = f.get_batch(&mut Rng::new(1337), 4, 64).expect("batch");
    let c = f.get_batch(&mut Rng::new(1338), 4, 64).expect("batch");
    assert_eq!(a, b, "same seed, same batch");
    assert_ne!(a, c, "another seed, another batch");

    // The same stream, whether drawn one batch at a time or into reused buffers.
    let mut rng1 = Rng::new(5);
    let mut rng2 = Rng::new(5);
    let (mut x, mut y) = (Vec::with_capacity(256), Vec::with_capacity(256));
    let (px, py) = (x.as_ptr(), y.as_ptr());
    for _ in 0..10 {
        f.get_batch_into(&mut rng1, 4, 64, &mut x, &mut y)
            .expect("into");
        let (ex, ey) = f.get_batch(&mut rng2, 4, 64).expect("batch");
        assert_eq!((&x, &y), (&ex, &ey));
    }
    assert_eq!(
        (x.as_ptr(), y.as_ptr()),
        (px, py),
        "buffers were not reallocated"
    );
    // Same as sampling the in-memory tokens.
    let mem: Vec<u16> = tokens.iter().map(|&t| t as u16).collect();
    let (mut mx, mut my) = (Vec::new(), Vec::new());
    sample_batch(&mem, &mut Rng::new(1337), 4, 64, &mut mx, &mut my).expect("batch");
    assert_eq!((mx, my), a);
}
