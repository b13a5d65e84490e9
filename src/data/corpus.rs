//! Reading a user's corpus as a stream of documents: the input files (files or folders walked
//! in sorted order), and a reader that hands out batches of document pieces with bounded memory.
//!
//! - A `.txt` file (or any explicitly named file that is not JSON lines) is one document. It is
//!   read as UTF-8 with universal newlines (`\r\n` and lone `\r` become `\n`, as Python's
//!   `open(path).read()` and `prepare shakespeare`).
//! - Each non-blank line of a `.jsonl` / `.json-lines` file is one document: a JSON object whose
//!   text field (default `"text"`) is a string. Blank lines are skipped and are not documents.
//! - Each row of a `.parquet` file (Hugging Face's dataset format) is one document: the string
//!   in its text column. A null is a row without text: skipped and counted, not a document.
//! - Folders are walked recursively, entries in sorted (byte-wise) name order, taking `*.txt`,
//!   `*.jsonl`, `*.json-lines` and `*.parquet` (any case); other files, and symbolic links to
//!   folders, are skipped and counted.
//!
//! Documents longer than `piece_bytes` are cut into pieces, so that a huge file is neither held
//! whole nor tokenized on one thread. A cut is made only just after a `\n` that has a printable
//! ASCII character on each side (`a\nb`): GPT-2's pre-tokenizer always ends a piece at such a
//! `\n` and has no look-behind, so tokenizing the pieces separately and concatenating gives
//! exactly the tokens of the whole document (the tests check this on real text). A document
//! with no such place is kept whole. (Sentencepiece, whose normalizer looks at the start of the
//! text, encodes the pieces after the first as continuations: see [`super::text`].)

use super::parquet::ParquetTextColumn;
use super::pipeline::Batch;
use anyhow::{anyhow, bail, Result};
use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputKind {
    /// The whole file is one document.
    Text,
    /// One document per non-blank line.
    JsonLines,
    /// One document per row (see [`super::parquet`]).
    Parquet,
}

#[derive(Clone, Debug)]
pub struct InputFile {
    pub path: PathBuf,
    pub kind: InputKind,
    pub bytes: u64,
}

/// The input files, in order: each input as given; a folder's files recursively in sorted name
/// order. Returns the files and the paths skipped in folders (other extensions, links to
/// folders). A missing input is an error.
pub fn collect_inputs(inputs: &[PathBuf]) -> Result<(Vec<InputFile>, Vec<PathBuf>)> {
    let mut files = Vec::new();
    let mut skipped = Vec::new();
    for input in inputs {
        let meta = match std::fs::metadata(input) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                "{} does not exist: give text files (.txt), JSON-lines files (.jsonl) or folders of them",
                input.display()
            ),
            Err(e) => bail!("cannot read {}: {e}", input.display()),
        };
        if meta.is_dir() {
            walk(input, &mut files, &mut skipped)?;
        } else {
            // Named explicitly: JSON lines or parquet by extension, anything else is text.
            let kind = kind_of(input).unwrap_or(InputKind::Text);
            files.push(InputFile {
                path: input.clone(),
                kind,
                bytes: meta.len(),
            });
        }
    }
    Ok((files, skipped))
}

/// The kind a file's extension says, if it names one.
pub fn kind_of(path: &Path) -> Option<InputKind> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    match ext.as_str() {
        "txt" => Some(InputKind::Text),
        "jsonl" | "json-lines" => Some(InputKind::JsonLines),
        "parquet" => Some(InputKind::Parquet),
        _ => None,
    }
}

fn walk(dir: &Path, files: &mut Vec<InputFile>, skipped: &mut Vec<PathBuf>) -> Result<()> {
    let read = std::fs::read_dir(dir).map_err(|e| anyhow!("cannot list {}: {e}", dir.display()))?;
    let mut entries = read
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<Vec<PathBuf>>>()
        .map_err(|e| anyhow!("cannot list {}: {e}", dir.display()))?;
    entries.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    for path in entries {
        let link = std::fs::symlink_metadata(&path)
            .map_err(|e| anyhow!("cannot read {}: {e}", path.display()))?;
        // Follow links to files; a link to a folder could loop, so it is skipped.
        let meta = if link.file_type().is_symlink() {
            match std::fs::metadata(&path) {
                Ok(m) if m.is_file() => m,
                _ => {
                    skipped.push(path);
                    continue;
                }
            }
        } else {
            link
        };
        if meta.is_dir() {
            walk(&path, files, skipped)?;
        } else if let (true, Some(kind)) = (meta.is_file(), kind_of(&path)) {
            files.push(InputFile {
                path,
                kind,
                bytes: meta.len(),
            });
        } else {
            skipped.push(path);
        }
    }
    Ok(())
}

/// A piece of a document: the whole document, or part of one (see the module docs).
#[derive(Clone, Debug)]
pub struct Piece {
    /// Index of the document in the corpus, from 0, in input order.
    pub doc: u64,
    pub text: String,
    /// The document's first piece (a start-of-document token goes before it, if any).
    pub first: bool,
    /// The document's last piece (its end-of-document token follows).
    pub last: bool,
}

/// Where `b` (a document's bytes, or the start of them) may be cut: the position just after
/// a `\n` with printable ASCII on both sides. Prefers the last such place at or before
/// `target`, then the first after it; only positions from `from` on are considered. The
/// tokens of `b[..i]` and `b[i..]` then concatenate to those of `b` (module docs).
pub fn find_cut(b: &[u8], target: usize, from: usize) -> Option<usize> {
    let ok = |i: usize| b[i - 1] == b'\n' && b[i - 2].is_ascii_graphic() && b[i].is_ascii_graphic();
    let lo = from.max(2);
    let len = b.len();
    if len < 3 {
        return None;
    }
    let hi = target.min(len - 1);
    if hi >= lo {
        if let Some(i) = (lo..=hi).rev().find(|&i| ok(i)) {
            return Some(i);
        }
    }
    ((hi + 1).max(lo)..len).find(|&i| ok(i))
}

/// Cuts an in-memory document into pieces of about `piece_bytes` (see [`find_cut`]).
pub fn split_document(text: String, piece_bytes: usize) -> Vec<String> {
    if text.len() <= piece_bytes {
        return vec![text];
    }
    let b = text.as_bytes();
    let mut pieces = Vec::new();
    let mut start = 0;
    while b.len() - start > piece_bytes {
        match find_cut(&b[start..], piece_bytes, 0) {
            Some(cut) => {
                // Cuts fall between ASCII bytes, so they are character boundaries.
                pieces.push(text[start..start + cut].to_string());
                start += cut;
            }
            None => break,
        }
    }
    if start == 0 {
        return vec![text];
    }
    pieces.push(text[start..].to_string());
    pieces
}

/// What the reader needs to know.
#[derive(Clone, Debug)]
pub struct ReaderOptions {
    /// The JSON-lines field / parquet column that holds a document's text.
    pub text_field: String,
    /// Documents longer than this are cut into pieces (at least 1).
    pub piece_bytes: usize,
    /// A batch closes once its text reaches this many bytes.
    pub batch_bytes: usize,
    /// The index of the first document read (when these files continue a larger corpus).
    pub first_doc: u64,
    /// Stop before document `end_doc` (for "only the first N documents").
    pub end_doc: Option<u64>,
}

/// Reads the corpus as batches of [`Piece`]s, in order. An iterator of `Result<Batch<Piece>>`;
/// after an error it ends.
pub struct CorpusReader {
    files: Vec<InputFile>,
    next_file: usize,
    open: Option<OpenFile>,
    queued: VecDeque<Piece>,
    doc: u64,
    opts: ReaderOptions,
    bytes_read: u64,
    bytes_reported: u64,
    text_bytes: u64,
    null_rows: u64,
    lone_surrogates: u64,
    done: bool,
}

enum OpenFile {
    Text(TextFile),
    JsonLines(JsonLinesFile),
    // Boxed: the parquet reader is large, and there is one open file at a time.
    Parquet(Box<ParquetFile>),
}

struct ParquetFile {
    column: ParquetTextColumn,
    rows: std::vec::IntoIter<Option<String>>,
    buffer: Vec<Option<String>>,
    /// The file's size and row count, to turn rows read into bytes for progress.
    file_bytes: u64,
    num_rows: u64,
    rows_read: u64,
}

/// Rows read from a parquet file at a time.
const PARQUET_ROWS_PER_READ: usize = 256;

struct TextFile {
    path: PathBuf,
    file: File,
    pending: Vec<u8>,
    /// File offset of `pending[0]`.
    offset: u64,
    /// Cut positions below this in `pending` were already ruled out.
    no_cut_below: usize,
    eof: bool,
}

struct JsonLinesFile {
    path: PathBuf,
    reader: BufReader<File>,
    line_no: u64,
    line: Vec<u8>,
}

impl CorpusReader {
    pub fn new(files: Vec<InputFile>, opts: ReaderOptions) -> CorpusReader {
        let opts = ReaderOptions {
            piece_bytes: opts.piece_bytes.max(1),
            batch_bytes: opts.batch_bytes.max(1),
            ..opts
        };
        CorpusReader {
            files,
            next_file: 0,
            open: None,
            queued: VecDeque::new(),
            doc: opts.first_doc,
            opts,
            bytes_read: 0,
            bytes_reported: 0,
            text_bytes: 0,
            null_rows: 0,
            lone_surrogates: 0,
            done: false,
        }
    }

    /// The index the next document gets (so, after the last batch, the first document index
    /// plus the documents read).
    pub fn next_doc(&self) -> u64 {
        self.doc
    }

    /// Bytes of (UTF-8) text in the documents handed out so far.
    pub fn text_bytes(&self) -> u64 {
        self.text_bytes
    }

    /// Parquet rows without text (null), skipped.
    pub fn null_rows(&self) -> u64 {
        self.null_rows
    }

    /// Lone UTF-16 surrogates in JSON escapes, read as U+FFFD (see [`replace_lone_surrogates`]).
    pub fn lone_surrogates(&self) -> u64 {
        self.lone_surrogates
    }

    fn next_batch(&mut self) -> Result<Option<Batch<Piece>>> {
        let mut items = Vec::new();
        let mut text_bytes = 0;
        while text_bytes < self.opts.batch_bytes {
            match self.next_piece()? {
                Some(p) => {
                    text_bytes += p.text.len();
                    self.text_bytes += p.text.len() as u64;
                    items.push(p);
                }
                None => break,
            }
        }
        if items.is_empty() && self.bytes_read == self.bytes_reported {
            return Ok(None);
        }
        let bytes = self.bytes_read - self.bytes_reported;
        self.bytes_reported = self.bytes_read;
        Ok(Some(Batch { items, bytes }))
    }

    fn next_piece(&mut self) -> Result<Option<Piece>> {
        loop {
            if let Some(p) = self.queued.pop_front() {
                return Ok(Some(p));
            }
            if self.opts.end_doc.is_some_and(|end| self.doc >= end) {
                return Ok(None);
            }
            let Some(open) = self.open.as_mut() else {
                let Some(f) = self.files.get(self.next_file) else {
                    return Ok(None);
                };
                self.next_file += 1;
                let file = File::open(&f.path)
                    .map_err(|e| anyhow!("cannot read {}: {e}", f.path.display()))?;
                self.open = Some(match f.kind {
                    InputKind::Text => OpenFile::Text(TextFile {
                        path: f.path.clone(),
                        file,
                        pending: Vec::new(),
                        offset: 0,
                        no_cut_below: 0,
                        eof: false,
                    }),
                    InputKind::JsonLines => OpenFile::JsonLines(JsonLinesFile {
                        path: f.path.clone(),
                        reader: BufReader::with_capacity(1 << 20, file),
                        line_no: 0,
                        line: Vec::new(),
                    }),
                    InputKind::Parquet => {
                        let column = ParquetTextColumn::open(&f.path, &self.opts.text_field)?;
                        OpenFile::Parquet(Box::new(ParquetFile {
                            num_rows: column.num_rows(),
                            column,
                            rows: Vec::new().into_iter(),
                            buffer: Vec::new(),
                            file_bytes: f.bytes,
                            rows_read: 0,
                        }))
                    }
                });
                continue;
            };
            match open {
                OpenFile::Text(t) => {
                    let first = t.offset == 0;
                    let (text, raw_bytes, last) = t.next_piece(self.opts.piece_bytes)?;
                    self.bytes_read += raw_bytes;
                    let piece = Piece {
                        doc: self.doc,
                        text,
                        first,
                        last,
                    };
                    if last {
                        self.doc += 1;
                        self.open = None;
                    }
                    return Ok(Some(piece));
                }
                OpenFile::JsonLines(j) => {
                    let field = &self.opts.text_field;
                    match j.next_document(field, &mut self.bytes_read, &mut self.lone_surrogates)? {
                        None => self.open = None,
                        Some(text) => self.queue_document(text),
                    }
                }
                OpenFile::Parquet(pq) => match pq.next_row(&mut self.bytes_read)? {
                    None => self.open = None,
                    Some(None) => self.null_rows += 1,
                    Some(Some(text)) => self.queue_document(text),
                },
            }
        }
    }
}

impl CorpusReader {
    /// Queues a whole document, cut into pieces when long.
    fn queue_document(&mut self, text: String) {
        let pieces = split_document(text, self.opts.piece_bytes);
        let n = pieces.len();
        let doc = self.doc;
        self.queued
            .extend(pieces.into_iter().enumerate().map(|(i, text)| Piece {
                doc,
                text,
                first: i == 0,
                last: i + 1 == n,
            }));
        self.doc += 1;
    }
}

impl ParquetFile {
    /// The next row's text (`Some(None)` for a null), or `None` at the end of the file.
    fn next_row(&mut self, bytes_read: &mut u64) -> Result<Option<Option<String>>> {
        if self.rows.len() == 0 {
            self.column.read(PARQUET_ROWS_PER_READ, &mut self.buffer)?;
            self.rows = std::mem::take(&mut self.buffer).into_iter();
        }
        let Some(row) = self.rows.next() else {
            // All of the file has been read, whatever the footer's row count said.
            *bytes_read += self.file_bytes - self.bytes_at(self.rows_read);
            return Ok(None);
        };
        *bytes_read += self.bytes_at(self.rows_read + 1) - self.bytes_at(self.rows_read);
        self.rows_read += 1;
        Ok(Some(row))
    }

    /// The share of the file's bytes that `rows` rows stand for.
    fn bytes_at(&self, rows: u64) -> u64 {
        let rows = rows.min(self.num_rows);
        (self.file_bytes as u128 * rows as u128 / self.num_rows.max(1) as u128) as u64
    }
}

impl Iterator for CorpusReader {
    type Item = Result<Batch<Piece>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.next_batch() {
            Ok(Some(b)) => Some(Ok(b)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

impl TextFile {
    /// The next piece of this file's document, its raw byte length, and whether it is the last.
    fn next_piece(&mut self, piece_bytes: usize) -> Result<(String, u64, bool)> {
        loop {
            if self.pending.len() > piece_bytes {
                if let Some(cut) = find_cut(&self.pending, piece_bytes, self.no_cut_below) {
                    let rest = self.pending.split_off(cut);
                    let head = std::mem::replace(&mut self.pending, rest);
                    let offset = self.offset;
                    self.offset += cut as u64;
                    self.no_cut_below = 0;
                    return Ok((self.decode(head, offset)?, cut as u64, false));
                }
                // Every position up to the end has been ruled out.
                self.no_cut_below = self.pending.len();
            }
            if self.eof {
                let head = std::mem::take(&mut self.pending);
                let n = head.len() as u64;
                return Ok((self.decode(head, self.offset)?, n, true));
            }
            // Read until there is more than a piece, or another piece's worth.
            let want = if self.pending.len() > piece_bytes {
                piece_bytes
            } else {
                piece_bytes + 1 - self.pending.len()
            };
            let got = (&mut self.file)
                .take(want as u64)
                .read_to_end(&mut self.pending)
                .map_err(|e| anyhow!("cannot read {}: {e}", self.path.display()))?;
            if got < want {
                self.eof = true;
            }
        }
    }

    /// UTF-8 with universal newlines; `offset` places errors in the file.
    fn decode(&self, bytes: Vec<u8>, offset: u64) -> Result<String> {
        let text = String::from_utf8(bytes).map_err(|e| {
            anyhow!(
                "{} is not UTF-8 text (invalid byte at offset {}); convert it to UTF-8",
                self.path.display(),
                offset + e.utf8_error().valid_up_to() as u64
            )
        })?;
        if text.contains('\r') {
            return Ok(text.replace("\r\n", "\n").replace('\r', "\n"));
        }
        Ok(text)
    }
}

impl JsonLinesFile {
    /// The text of the next non-blank line, or `None` at the end of the file. Lone surrogates
    /// replaced are added to `lone_surrogates`.
    fn next_document(
        &mut self,
        field: &str,
        bytes_read: &mut u64,
        lone_surrogates: &mut u64,
    ) -> Result<Option<String>> {
        let p = self.path.display();
        loop {
            self.line.clear();
            let n = self
                .reader
                .read_until(b'\n', &mut self.line)
                .map_err(|e| anyhow!("cannot read {p}: {e}"))?;
            if n == 0 {
                return Ok(None);
            }
            *bytes_read += n as u64;
            self.line_no += 1;
            let line_no = self.line_no;
            if self.line.iter().all(|b| b.is_ascii_whitespace()) {
                continue;
            }
            // A UTF-8 byte-order mark may start the file.
            let line = match (line_no, self.line.strip_prefix(b"\xEF\xBB\xBF")) {
                (1, Some(rest)) => rest,
                _ => &self.line[..],
            };
            let invalid = |e: serde_json::Error| {
                anyhow!(
                    "{p}:{line_no}: invalid JSON ({e}); each line of a JSON-lines file must be one JSON object"
                )
            };
            let value: serde_json::Value = match serde_json::from_slice(line) {
                Ok(v) => v,
                Err(e) => match replace_lone_surrogates(line) {
                    Some((fixed, n)) => {
                        let v = serde_json::from_slice(&fixed).map_err(invalid)?;
                        *lone_surrogates += n;
                        v
                    }
                    None => return Err(invalid(e)),
                },
            };
            let serde_json::Value::Object(mut object) = value else {
                bail!(
                    "{p}:{line_no}: not a JSON object; each line of a JSON-lines file must be an object with a \"{field}\" string"
                );
            };
            return match object.remove(field) {
                Some(serde_json::Value::String(text)) => Ok(Some(text)),
                Some(other) => bail!(
                    "{p}:{line_no}: field \"{field}\" is {}, not a string",
                    json_kind(&other)
                ),
                None => {
                    let keys: Vec<String> =
                        object.keys().take(8).map(|k| format!("\"{k}\"")).collect();
                    bail!(
                        "{p}:{line_no}: no field \"{field}\" (this line has {}); set the text field to the one that holds the text",
                        if keys.is_empty() { "no fields".to_string() } else { keys.join(", ") }
                    )
                }
            };
        }
    }
}

/// Python's `json.dumps` escapes a lone UTF-16 surrogate (`"\ud800"`), which is not Unicode and
/// which serde_json refuses; Hugging Face `datasets` reads it as U+FFFD. Returns `line` with each
/// lone surrogate escape replaced by `\ufffd`, and how many there were; `None` when there are
/// none. (Backslashes occur only inside strings in valid JSON, so escapes are found without
/// tracking strings.)
fn replace_lone_surrogates(line: &[u8]) -> Option<(Vec<u8>, u64)> {
    // The code unit of a `\uXXXX` escape at `at`.
    let unit = |at: usize| -> Option<u16> {
        if line.get(at..at + 2)? != b"\\u" {
            return None;
        }
        let hex = line.get(at + 2..at + 6)?;
        if !hex.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        u16::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
    };
    let mut out = Vec::with_capacity(line.len());
    let mut count = 0;
    let mut i = 0;
    while i < line.len() {
        if line[i] != b'\\' {
            out.push(line[i]);
            i += 1;
            continue;
        }
        let n = match unit(i) {
            Some(0xD800..=0xDBFF) if matches!(unit(i + 6), Some(0xDC00..=0xDFFF)) => 12,
            Some(0xD800..=0xDFFF) => {
                out.extend_from_slice(b"\\ufffd");
                count += 1;
                i += 6;
                continue;
            }
            // Any other escape: the backslash and the character it escapes.
            _ => 2.min(line.len() - i),
        };
        out.extend_from_slice(&line[i..i + n]);
        i += n;
    }
    (count > 0).then_some((out, count))
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}
