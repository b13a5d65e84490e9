//! `prepare text`: a user's own corpus (text files, JSON-lines files, folders of them) into
//! token files, streamed with bounded memory and tokenized in parallel.
//!
//! - **Documents**: each `.txt` file is one document, each non-blank JSON-lines line is one
//!   (see [`super::corpus`] for the walk order and reading rules). Documents are numbered from 0
//!   in input order.
//! - **GPT-2 BPE**: each document is `encode_ordinary`'d (a literal `<|endoftext|>` in the text
//!   is plain text) and followed by the end-of-text token 50256, as nanoGPT's
//!   `data/openwebtext/prepare.py` does.
//! - **Characters**: a first pass over the inputs collects the vocabulary (the sorted distinct
//!   characters of all documents and of the separator), written to `meta.json`; each document
//!   is followed by [`TextPrepareOptions::char_separator`] (default `"\n\n"`; empty for
//!   none). There is no end-of-text token.
//! - **Sentencepiece** (`--tokenizer=FILE`: sentencepiece's `tokenizer.model`, llama2.c's
//!   `tokenizer.bin`, or a folder holding either): each document is `[BOS] + sp.encode(doc)`
//!   (BOS = 1, no EOS), as llama2.c's pretokenizer writes Llama training data. A `tokenizer.bin`
//!   does not store its size, so every entry in the file counts; nor its normalizer settings,
//!   so sentencepiece's defaults (`add_dummy_prefix`, `remove_extra_whitespaces`, as llama2.c's
//!   own trained tokenizers have) are assumed: for Meta's Llama-2 tokenizer give its
//!   `tokenizer.model`. The file is copied into the dataset folder as `tokenizer.model` /
//!   `tokenizer.bin` (committed with the tokens), where `train` and `sample` find it
//!   ([`super::dataset::tokenizer`]). Ids must fit uint16: at most 65536 tokens.
//! - **Split, by document**: document `i` goes to validation when
//!   [`is_val_document`]`(seed, i, val_fraction)`: a hash of the seed and the index, so the
//!   split does not depend on thread count, batch size or file sizes, and the same corpus with
//!   the same seed always splits the same way. About `val_fraction` of the documents (default
//!   0.0005, nanoGPT's openwebtext; seed 2357, its `train_test_split` seed) go to validation;
//!   with few documents that may be none, see [`TextPrepareSummary::warnings`].
//! - **Output** in `out_dir`: `train.bin` / `val.bin` (nanoGPT's raw uint16), or with
//!   `shard_tokens` llm.c shards `train_000000.bin`, ... / `val_000000.bin`, ... Everything is
//!   written to `*.tmp` files and committed as one dataset only after the whole corpus
//!   succeeded ([`super::dataset`]), so an error or a crash never leaves a half-written token
//!   file, nor new token files beside an old vocabulary (a failed run leaves the previous
//!   output as it was). Outputs of the other format left by an earlier run (`train.bin` vs
//!   shards, surplus shards) are removed by the commit, and so is every vocabulary file the new
//!   state does not have (`meta.json` / `meta.pkl`, `tokenizer.model` / `tokenizer.bin`), which
//!   would otherwise pair the tokens with the wrong vocabulary.
//! - **Memory**: the reader keeps about three batches of text (`batch_bytes`, default 16 MiB)
//!   plus the tokens of one; documents longer than `piece_bytes` are cut where the tokens do
//!   not change, see [`super::corpus`].
//! - **Long documents with sentencepiece** are cut at the same places (just after a `\n` with
//!   printable ASCII on both sides), and stay exact: sentencepiece's normalizer only acts at
//!   the start (dummy-prefix space, leading spaces trimmed) and end (trailing spaces trimmed)
//!   of the text and on runs of spaces, none of which crosses such a `\n`, so the pieces after
//!   the first are encoded as continuations, without the dummy prefix
//!   ([`LlamaTokenizer::encode_sentencepiece_continued`]); and when no piece of the vocabulary
//!   holds a `\n` before its end ([`LlamaTokenizer::newline_ends_merges`], true of llama2.c's
//!   and Meta's vocabularies as far as we know, and checked at every run), no merge joins
//!   the two sides of the cut. A vocabulary that fails that check gets no cuts: each document
//!   is encoded whole, on one thread, as llama2.c does. The tests check the cut stream
//!   against the uncut one and against sentencepiece's own.

use super::corpus::{collect_inputs, CorpusReader, InputFile, Piece, ReaderOptions};
use super::dataset;
use super::documents::DocumentOptions;
use super::pipeline::{tokenize_ordered, with_pool, Batch};
use super::writer::SplitWriter;
use crate::atomic_file::{write_pending, PendingFile};
use crate::llama::tokenizer::{LlamaTokenizer, BOS};
use crate::rng::mix64;
use crate::tokenizer::{CharVocab, Gpt2Bpe, EOT};
use anyhow::{anyhow, bail, Result};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Which tokenizer `prepare text` uses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum TextTokenizer {
    /// GPT-2's BPE, an end-of-text token after every document.
    Gpt2,
    /// A character vocabulary built from the corpus, written to `meta.json`.
    Char,
    /// A sentencepiece tokenizer: a `tokenizer.model`, llama2.c's `tokenizer.bin`, or a folder
    /// holding one; BOS before every document (see the module docs).
    Llama(PathBuf),
}

impl std::str::FromStr for TextTokenizer {
    type Err = anyhow::Error;
    /// `gpt2`, `char`, or else the path of a sentencepiece tokenizer (checked when it is read).
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "gpt2" => Ok(TextTokenizer::Gpt2),
            "char" => Ok(TextTokenizer::Char),
            "" => bail!("empty tokenizer: use gpt2, char, or a sentencepiece tokenizer file"),
            path => Ok(TextTokenizer::Llama(PathBuf::from(path))),
        }
    }
}

/// A sentencepiece tokenizer read for `prepare text`, with the bytes to copy into the dataset.
pub(crate) struct LlamaFile {
    pub tok: LlamaTokenizer,
    pub bytes: Vec<u8>,
    /// `tokenizer.model` or `tokenizer.bin`: its name in the dataset folder.
    pub name: &'static str,
}

/// Reads the tokenizer `--tokenizer=path` names: a `.model` is sentencepiece's, a `.bin`
/// llama2.c's (all of its entries), a folder's `tokenizer.model` (else `tokenizer.bin`); a file
/// named otherwise is tried as either. Each failure is one line naming the file.
pub(crate) fn read_llama_file(path: &Path) -> Result<LlamaFile> {
    let p = path.display();
    let usage = "give gpt2, char, or a sentencepiece tokenizer (tokenizer.model, llama2.c's tokenizer.bin, or a folder holding one)";
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("--tokenizer: {p} does not exist: {usage}")
        }
        Err(e) => bail!("--tokenizer: cannot read {p}: {e}"),
    };
    let file = if meta.is_dir() {
        super::dataset::LLAMA_TOKENIZER_FILES
            .iter()
            .map(|f| path.join(f))
            .find(|f| f.is_file())
            .ok_or_else(|| {
                anyhow!("--tokenizer: the folder {p} has no tokenizer.model or tokenizer.bin")
            })?
    } else {
        path.to_path_buf()
    };
    let bytes = std::fs::read(&file)
        .map_err(|e| anyhow!("--tokenizer: cannot read {}: {e}", file.display()))?;
    let ext = file.extension().and_then(|e| e.to_str()).unwrap_or("");
    let (tok, name) = match ext {
        "model" => (LlamaTokenizer::parse_model(&bytes, &file)?, "tokenizer.model"),
        "bin" => (LlamaTokenizer::parse_bin_all(&bytes, &file)?, "tokenizer.bin"),
        _ => match LlamaTokenizer::parse_model(&bytes, &file) {
            Ok(tok) => (tok, "tokenizer.model"),
            Err(_) => match LlamaTokenizer::parse_bin_all(&bytes, &file) {
                Ok(tok) => (tok, "tokenizer.bin"),
                Err(_) => bail!(
                    "--tokenizer: {} is neither a sentencepiece tokenizer.model nor a llama2.c tokenizer.bin; {usage}",
                    file.display()
                ),
            },
        },
    };
    if tok.vocab_size() > 1 << 16 {
        bail!(
            "{}: {} tokens, more than uint16 token files can number (65536)",
            file.display(),
            tok.vocab_size()
        );
    }
    Ok(LlamaFile { tok, bytes, name })
}

#[derive(Clone, Debug)]
pub struct TextPrepareOptions {
    /// Files and folders, in order (see [`super::corpus`]).
    pub inputs: Vec<PathBuf>,
    /// Created if missing.
    pub out_dir: PathBuf,
    pub tokenizer: TextTokenizer,
    /// Character mode: text appended after every document.
    pub char_separator: String,
    pub docs: DocumentOptions,
}

impl TextPrepareOptions {
    pub fn new(inputs: Vec<PathBuf>, out_dir: impl Into<PathBuf>) -> Self {
        TextPrepareOptions {
            inputs,
            out_dir: out_dir.into(),
            ..Self::default()
        }
    }
}

impl Default for TextPrepareOptions {
    fn default() -> Self {
        TextPrepareOptions {
            inputs: Vec::new(),
            out_dir: PathBuf::from("data/text"),
            tokenizer: TextTokenizer::Gpt2,
            char_separator: "\n\n".to_string(),
            docs: DocumentOptions::default(),
        }
    }
}

/// What `prepare_text` did. MB are 10^6 bytes.
#[derive(Clone, Debug, Serialize)]
pub struct TextPrepareSummary {
    pub tokenizer: TextTokenizer,
    pub vocab_size: usize,
    /// Input files read, and files skipped in folders (other extensions).
    pub files: usize,
    pub skipped_files: Vec<PathBuf>,
    pub documents: u64,
    pub train_documents: u64,
    pub val_documents: u64,
    /// Lone UTF-16 surrogates in JSON escapes, read as U+FFFD.
    pub lone_surrogates: u64,
    /// Input bytes read (file sizes; both passes read them in character mode, counted once).
    pub bytes: u64,
    pub train_tokens: u64,
    pub val_tokens: u64,
    /// The token files written: one each, or the shards in order.
    pub train_files: Vec<PathBuf>,
    pub val_files: Vec<PathBuf>,
    /// Character mode: the vocabulary written (`meta.json`).
    pub meta_path: Option<PathBuf>,
    /// Sentencepiece mode: the tokenizer's copy in the dataset folder (`tokenizer.model` /
    /// `tokenizer.bin`).
    pub tokenizer_path: Option<PathBuf>,
    /// Earlier outputs removed (see the module docs).
    pub removed_stale: Vec<PathBuf>,
    pub threads: usize,
    pub elapsed_s: f64,
    /// Input bytes per second over the whole run, in MB/s.
    pub mb_per_s: f64,
}

impl TextPrepareSummary {
    /// Things a user should hear about: an empty split, skipped files.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.val_documents == 0 {
            w.push(format!(
                "no validation documents ({} documents in all): raise val_fraction, or split the text into more documents (files or JSON lines)",
                self.documents
            ));
        }
        if self.train_documents == 0 {
            w.push("no training documents: lower val_fraction or add documents".to_string());
        }
        if let Some(w2) = lone_surrogates_warning(self.lone_surrogates) {
            w.push(w2);
        }
        if !self.skipped_files.is_empty() {
            w.push(format!(
                "skipped {} files in folders that are not .txt, .jsonl or .json-lines (first: {})",
                self.skipped_files.len(),
                self.skipped_files[0].display()
            ));
        }
        w
    }
}

/// The warning for JSON lines that held lone surrogates, if any did.
pub(crate) fn lone_surrogates_warning(count: u64) -> Option<String> {
    (count > 0).then(|| format!(
        "replaced {count} lone UTF-16 surrogates in JSON escapes (\\ud800-\\udfff without their pair, which Python's json.dumps writes) with U+FFFD, as Hugging Face datasets reads them"
    ))
}

/// Whether document `index` belongs to the validation split: the top 53 bits of
/// `mix64(mix64(seed) ^ index)` (SplitMix64's finaliser, [`crate::rng::mix64`]) as a fraction in
/// [0, 1) fall below `val_fraction`.
pub fn is_val_document(seed: u64, index: u64, val_fraction: f64) -> bool {
    let h = mix64(mix64(seed) ^ index);
    ((h >> 11) as f64 * (1.0 / (1u64 << 53) as f64)) < val_fraction
}

/// Prepares `opts.inputs` into token files in `opts.out_dir` (see the module docs).
pub fn prepare_text(opts: &TextPrepareOptions) -> Result<TextPrepareSummary> {
    let start = Instant::now();
    if opts.inputs.is_empty() {
        bail!("no inputs: give text files (.txt), JSON-lines files (.jsonl) or folders of them");
    }
    opts.docs.validate()?;
    let (files, skipped) = collect_inputs(&opts.inputs)?;
    if files.is_empty() {
        bail!(
            "no input files in {}: folders are searched for *.txt, *.jsonl and *.json-lines ({} other files skipped)",
            list_paths(&opts.inputs),
            skipped.len()
        );
    }
    let llama = match &opts.tokenizer {
        TextTokenizer::Llama(path) => Some(read_llama_file(path)?),
        _ => None,
    };
    let out = &opts.out_dir;
    dataset::open_for_prepare(out)?;
    let total_bytes: u64 = files.iter().map(|f| f.bytes).sum();
    let bar = progress_bar(opts.docs.progress, total_bytes);

    let result = with_pool(opts.docs.num_proc, || {
        tokenize_corpus(opts, &files, llama.as_ref().map(|l| &l.tok), &bar)
    });
    bar.finish_and_clear(); // before any error message
    let (done, threads) = result?;
    let done = done?;
    if done.documents == 0 {
        bail!(
            "no documents in {}: the files are empty or hold only blank lines",
            list_paths(&opts.inputs)
        );
    }

    // Everything is complete at its temp name: commit it all as one dataset.
    let train_files: Vec<PathBuf> = done.train.iter().map(|p| p.path().to_path_buf()).collect();
    let val_files: Vec<PathBuf> = done.val.iter().map(|p| p.path().to_path_buf()).collect();
    let mut outputs = done.train;
    outputs.extend(done.val);
    let meta_path = match &done.vocab {
        Some(vocab) => {
            let path = out.join("meta.json");
            outputs.push(write_pending(&path, vocab.to_meta_json().as_bytes())?);
            Some(path)
        }
        None => None,
    };
    let tokenizer_path = match &llama {
        Some(l) => {
            let path = out.join(l.name);
            outputs.push(write_pending(&path, &l.bytes)?);
            Some(path)
        }
        None => None,
    };
    let removed_stale = dataset::stage(out, outputs)?.commit()?;

    let elapsed_s = start.elapsed().as_secs_f64();
    Ok(TextPrepareSummary {
        tokenizer: opts.tokenizer.clone(),
        vocab_size: done.vocab_size,
        files: files.len(),
        skipped_files: skipped,
        documents: done.documents,
        train_documents: done.documents - done.val_documents,
        val_documents: done.val_documents,
        lone_surrogates: done.lone_surrogates,
        bytes: total_bytes,
        train_tokens: done.train_tokens,
        val_tokens: done.val_tokens,
        train_files,
        val_files,
        meta_path,
        tokenizer_path,
        removed_stale,
        threads,
        elapsed_s,
        mb_per_s: total_bytes as f64 / 1e6 / elapsed_s.max(1e-9),
    })
}

/// The result of tokenizing, before anything is renamed into place.
struct Tokenized {
    train: Vec<PendingFile>,
    val: Vec<PendingFile>,
    train_tokens: u64,
    val_tokens: u64,
    documents: u64,
    val_documents: u64,
    lone_surrogates: u64,
    vocab: Option<CharVocab>,
    vocab_size: usize,
}

enum Encoder<'a> {
    Gpt2(Gpt2Bpe),
    /// Code point -> id, `u32::MAX` where absent.
    Char(Vec<u32>),
    /// BOS before each document's first piece; the later pieces of a cut document are
    /// continuations (see the module docs).
    Llama(&'a LlamaTokenizer),
}

impl Encoder<'_> {
    fn encode(&self, piece: &Piece) -> Result<Vec<u32>> {
        match self {
            Encoder::Gpt2(bpe) => Ok(bpe.encode_ordinary(&piece.text)),
            Encoder::Llama(tok) if piece.first => Ok([BOS]
                .into_iter()
                .chain(tok.encode_sentencepiece(&piece.text))
                .collect()),
            Encoder::Llama(tok) => Ok(tok.encode_sentencepiece_continued(&piece.text)),
            Encoder::Char(table) => piece
                .text
                .chars()
                .map(|c| match table.get(c as usize) {
                    Some(&id) if id != u32::MAX => Ok(id),
                    _ => Err(anyhow!(
                        "document {}: character {c:?} was not there in the first pass over the inputs; did an input file change while it was being prepared?",
                        piece.doc
                    )),
                })
                .collect(),
        }
    }
}

fn tokenize_corpus(
    opts: &TextPrepareOptions,
    files: &[InputFile],
    llama: Option<&LlamaTokenizer>,
    bar: &ProgressBar,
) -> Result<Tokenized> {
    // A vocabulary whose merges may cross a cut gets none (see the module docs).
    let piece_bytes = match llama {
        Some(tok) if !tok.newline_ends_merges() => usize::MAX,
        _ => opts.docs.piece_bytes,
    };
    let reader = || {
        CorpusReader::new(
            files.to_vec(),
            ReaderOptions {
                text_field: opts.docs.text_field.clone(),
                piece_bytes,
                batch_bytes: opts.docs.batch_bytes,
                first_doc: 0,
                end_doc: None,
            },
        )
    };
    let (encoder, end_of_doc, vocab) = match (&opts.tokenizer, llama) {
        (TextTokenizer::Llama(path), None) => bail!(
            "the sentencepiece tokenizer {} was not read before tokenizing",
            path.display()
        ),
        (TextTokenizer::Llama(_), Some(tok)) => (Encoder::Llama(tok), Vec::new(), None),
        (TextTokenizer::Gpt2, _) => (Encoder::Gpt2(Gpt2Bpe::new()?), vec![EOT], None),
        (TextTokenizer::Char, _) => {
            bar.set_message("pass 1/2: characters");
            let vocab = char_vocab(reader(), &opts.char_separator, bar)?;
            bar.set_message("pass 2/2: tokens");
            bar.set_position(0);
            let mut table = vec![u32::MAX; vocab.chars().last().map_or(0, |&c| c as usize + 1)];
            for (i, &c) in vocab.chars().iter().enumerate() {
                table[c as usize] = i as u32;
            }
            let sep = vocab.encode(&opts.char_separator)?;
            (Encoder::Char(table), sep, Some(vocab))
        }
    };
    let vocab_size = match (&vocab, llama) {
        (Some(v), _) => v.vocab_size(),
        (None, Some(tok)) => tok.vocab_size(),
        (None, None) => crate::tokenizer::GPT2_VOCAB_SIZE,
    };

    let out = &opts.out_dir;
    let mut sink = SplitSink {
        train: SplitWriter::create(out, "train", opts.docs.shard_tokens)?,
        val: SplitWriter::create(out, "val", opts.docs.shard_tokens)?,
        seed: opts.docs.seed,
        val_fraction: opts.docs.val_fraction,
        end_of_doc,
        documents: 0,
        val_documents: 0,
    };
    let mut pieces = reader();
    tokenize_ordered(
        &mut pieces,
        |p: &Piece| encoder.encode(p),
        |batch: Batch<Piece>, tokens| {
            sink.add(&batch.items, &tokens)?;
            bar.inc(batch.bytes);
            Ok(())
        },
        1,
    )?;
    let (train_tokens, val_tokens) = (sink.train.len(), sink.val.len());
    Ok(Tokenized {
        train: sink.train.finish()?,
        val: sink.val.finish()?,
        train_tokens,
        val_tokens,
        documents: sink.documents,
        val_documents: sink.val_documents,
        lone_surrogates: pieces.lone_surrogates(),
        vocab,
        vocab_size,
    })
}

/// Where tokenized documents go: each to the split [`is_val_document`] picks for it, followed
/// by the end-of-document tokens.
pub(crate) struct SplitSink {
    pub train: SplitWriter,
    pub val: SplitWriter,
    pub seed: u64,
    pub val_fraction: f64,
    pub end_of_doc: Vec<u32>,
    /// Documents completed so far, and how many of them went to val.
    pub documents: u64,
    pub val_documents: u64,
}

impl SplitSink {
    /// Appends `tokens[i]`, the tokens of `pieces[i]`, in order.
    pub fn add(&mut self, pieces: &[Piece], tokens: &[Vec<u32>]) -> Result<()> {
        for (piece, ids) in pieces.iter().zip(tokens) {
            let is_val = is_val_document(self.seed, piece.doc, self.val_fraction);
            let w = if is_val {
                &mut self.val
            } else {
                &mut self.train
            };
            w.append(ids)?;
            if piece.last {
                w.append(&self.end_of_doc)?;
                self.documents += 1;
                self.val_documents += is_val as u64;
            }
        }
        Ok(())
    }
}

/// The first pass of character mode: the sorted distinct characters of every document and of
/// the separator.
fn char_vocab(reader: CorpusReader, separator: &str, bar: &ProgressBar) -> Result<CharVocab> {
    let mut seen = vec![false; char::MAX as usize + 1];
    for c in separator.chars() {
        seen[c as usize] = true;
    }
    tokenize_ordered(
        reader,
        |p: &Piece| Ok(distinct_chars(&p.text)),
        |batch, sets| {
            for set in sets {
                for c in set {
                    seen[c as usize] = true;
                }
            }
            bar.inc(batch.bytes);
            Ok(())
        },
        1,
    )?;
    let chars: Vec<char> = seen
        .par_iter()
        .enumerate()
        .filter(|&(_, &s)| s)
        .filter_map(|(i, _)| char::from_u32(i as u32))
        .collect();
    if chars.len() > 1 << 16 {
        bail!(
            "the inputs hold {} distinct characters, more than uint16 token files can number (65536); use the GPT-2 tokenizer",
            chars.len()
        );
    }
    CharVocab::from_itos(chars)
}

/// The distinct code points of `text`, sorted.
fn distinct_chars(text: &str) -> Vec<u32> {
    let mut ascii = [false; 128];
    let mut other = Vec::new();
    for c in text.chars() {
        if c.is_ascii() {
            ascii[c as usize] = true;
        } else {
            other.push(c as u32);
        }
    }
    other.sort_unstable();
    other.dedup();
    let mut out: Vec<u32> = (0..128u32).filter(|&c| ascii[c as usize]).collect();
    out.extend(other);
    out
}

pub(crate) fn progress_bar(show: bool, total: u64) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message("tokens");
    bar
}

fn list_paths(paths: &[PathBuf]) -> String {
    let mut names: Vec<String> = paths
        .iter()
        .take(3)
        .map(|p| p.display().to_string())
        .collect();
    if paths.len() > 3 {
        names.push(format!("and {} more", paths.len() - 3));
    }
    names.join(", ")
}
