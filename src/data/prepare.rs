//! Dataset preparation, byte-identical to nanoGPT's `data/shakespeare_char/prepare.py` and
//! `data/shakespeare/prepare.py`: the first 90% of the text's characters (Unicode code points)
//! are the training split, the rest validation; each split is tokenized and written as raw
//! uint16 `train.bin` / `val.bin`. They work for any UTF-8 text file, not just Shakespeare.
//! With a Llama's sentencepiece tokenizer, each split is BOS then its sentencepiece ids (as
//! llama2.c's pretokenizer encodes a document), and the tokenizer file joins the dataset.
//! The files are committed together as one dataset ([`super::dataset`]).

use super::dataset;
use super::text::read_llama_file;
use super::tokens::TokenFormat;
use super::writer::write_tokens_pending;
use crate::atomic_file::write_pending;
use crate::llama::tokenizer::BOS;
use crate::tokenizer::{CharVocab, Gpt2Bpe};
use anyhow::{anyhow, bail, Result};
use std::path::{Path, PathBuf};

/// What a `prepare_*` function wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrepareSummary {
    pub vocab_size: usize,
    pub train_tokens: usize,
    pub val_tokens: usize,
    pub train_path: PathBuf,
    pub val_path: PathBuf,
    /// `meta.json` for a character vocabulary, `tokenizer.model`/`.bin` for a Llama's.
    pub meta_path: Option<PathBuf>,
}

/// Reads a UTF-8 text file as Python's `open(path).read()` does: `\r\n` and lone `\r` become
/// `\n` (universal newlines).
pub fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| {
        anyhow!(
            "cannot read {}: {e} (give the path of a UTF-8 text file, e.g. tiny Shakespeare's input.txt)",
            path.display()
        )
    })?;
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => bail!(
            "{} is not UTF-8 text (invalid byte at offset {}); convert it to UTF-8",
            path.display(),
            e.utf8_error().valid_up_to()
        ),
    };
    if text.contains('\r') {
        return Ok(text.replace("\r\n", "\n").replace('\r', "\n"));
    }
    Ok(text)
}

/// Splits `text` after `int(n * fraction)` of its `n` characters, as Python's
/// `data[:int(n*0.9)]`, `data[int(n*0.9):]`.
pub fn split_chars(text: &str, fraction: f64) -> (&str, &str) {
    let n = text.chars().count();
    let cut = (n as f64 * fraction) as usize;
    let at = text.char_indices().nth(cut).map_or(text.len(), |(i, _)| i);
    text.split_at(at)
}

/// nanoGPT's `shakespeare_char`: vocabulary = sorted unique characters of the whole text;
/// writes `train.bin`, `val.bin` and `meta.json` into `out_dir` (created if missing).
pub fn prepare_shakespeare_char(input: &Path, out_dir: &Path) -> Result<PrepareSummary> {
    let text = read_text(input)?;
    let vocab = CharVocab::from_text(&text);
    if vocab.vocab_size() > 1 << 16 {
        bail!(
            "{}: {} distinct characters do not fit in uint16 token files (at most 65536)",
            input.display(),
            vocab.vocab_size()
        );
    }
    let (train, val) = split_chars(&text, 0.9);
    let train_ids = vocab.encode(train)?;
    let val_ids = vocab.encode(val)?;
    let meta = vocab.to_meta_json();
    write_splits(
        out_dir,
        &train_ids,
        &val_ids,
        vocab.vocab_size(),
        Some(("meta.json", meta.as_bytes())),
    )
}

/// `shakespeare` with a Llama's sentencepiece tokenizer (`tokenizer.model`, llama2.c's
/// `tokenizer.bin`, or a folder with one): each split is `[BOS] + encode(split)`; writes
/// `train.bin`, `val.bin` and the tokenizer (as `tokenizer.model` or `tokenizer.bin`).
pub fn prepare_shakespeare_llama(
    input: &Path,
    out_dir: &Path,
    tokenizer: &Path,
) -> Result<PrepareSummary> {
    let text = read_text(input)?;
    let file = read_llama_file(tokenizer)?;
    let (train, val) = split_chars(&text, 0.9);
    let encode = |s: &str| -> Vec<u32> {
        [BOS]
            .into_iter()
            .chain(file.tok.encode_sentencepiece(s))
            .collect()
    };
    let (train_ids, val_ids) = rayon::join(|| encode(train), || encode(val));
    write_splits(
        out_dir,
        &train_ids,
        &val_ids,
        file.tok.vocab_size(),
        Some((file.name, &file.bytes)),
    )
}

/// nanoGPT's `shakespeare`: each split encoded separately with GPT-2's `encode_ordinary`;
/// writes `train.bin` and `val.bin` into `out_dir` (created if missing).
pub fn prepare_shakespeare_bpe(input: &Path, out_dir: &Path) -> Result<PrepareSummary> {
    let text = read_text(input)?;
    let bpe = Gpt2Bpe::new()?;
    let (train, val) = split_chars(&text, 0.9);
    let (train_ids, val_ids) =
        rayon::join(|| bpe.encode_ordinary(train), || bpe.encode_ordinary(val));
    write_splits(out_dir, &train_ids, &val_ids, bpe.vocab_size(), None)
}

/// Writes `train.bin`, `val.bin` and the vocabulary file (`meta.json`, or a Llama's tokenizer:
/// name and bytes) to temp names, then commits them
/// as the dataset in `out_dir` (see [`super::dataset`]).
fn write_splits(
    out_dir: &Path,
    train: &[u32],
    val: &[u32],
    vocab_size: usize,
    vocabulary: Option<(&str, &[u8])>,
) -> Result<PrepareSummary> {
    dataset::open_for_prepare(out_dir)?;
    let train_path = out_dir.join("train.bin");
    let val_path = out_dir.join("val.bin");
    let meta_path = vocabulary.map(|(name, _)| out_dir.join(name));
    let mut files = vec![
        write_tokens_pending(&train_path, train, TokenFormat::RawU16)?,
        write_tokens_pending(&val_path, val, TokenFormat::RawU16)?,
    ];
    if let (Some(path), Some((_, bytes))) = (&meta_path, vocabulary) {
        files.push(write_pending(path, bytes)?);
    }
    dataset::stage(out_dir, files)?.commit()?;
    Ok(PrepareSummary {
        vocab_size,
        train_tokens: train.len(),
        val_tokens: val.len(),
        train_path,
        val_path,
        meta_path,
    })
}
