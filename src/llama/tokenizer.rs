//! Llama-2's tokenizer: sentencepiece BPE with byte fallback, read from llama2.c's
//! `tokenizer.bin` or sentencepiece's `tokenizer.model`, encoding and decoding two ways:
//! - run.c's: a dummy-prefix space before any non-empty text, spaces never collapsed, characters
//!   outside the vocabulary as byte pieces `<0xNN>` from the start, merges over every piece.
//! - sentencepiece's: the normalizer first (`remove_extra_whitespaces`: leading and trailing
//!   U+0020 dropped and runs of them collapsed; `add_dummy_prefix`), merges over normal pieces
//!   only, byte fallback for what is left outside the vocabulary.
//!
//! Both merge the same way: repeatedly the adjacent pair whose concatenation is the
//! highest-scoring piece, the leftmost on ties. Pieces are kept as `tokenizer.bin` has them:
//! sentencepiece's `▁` (U+2581) already turned into a space.

use anyhow::{bail, Context, Result};
use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::path::Path;

pub const BOS: u32 = 1;
pub const EOS: u32 = 2;
/// sentencepiece's default text for `<unk>` (` ⁇ `); a `tokenizer.model` may say otherwise.
const DEFAULT_UNK_SURFACE: &str = " \u{2047} ";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PieceKind {
    Normal,
    Unknown,
    /// `<s>`, `</s>`: decode to nothing, never produced by encoding.
    Control,
    /// `<0xNN>`: the byte NN, for text outside the vocabulary.
    Byte(u8),
}

#[derive(Clone, Debug)]
pub struct LlamaTokenizer {
    /// Each id's text, spaces as spaces (`tokenizer.bin`'s form).
    pub pieces: Vec<Vec<u8>>,
    pub scores: Vec<f32>,
    pub kinds: Vec<PieceKind>,
    /// sentencepiece's normalizer settings (both true unless a `tokenizer.model` says not).
    pub add_dummy_prefix: bool,
    pub remove_extra_whitespaces: bool,
    pub unk_surface: String,
    /// Every piece's id, for run.c's merges (the lowest id where a text repeats).
    all: HashMap<Vec<u8>, u32>,
    /// Normal pieces' ids, for sentencepiece's merges.
    normal: HashMap<Vec<u8>, u32>,
    /// The id of each byte's piece.
    byte_ids: [Option<u32>; 256],
    /// `<unk>`, for text that neither pieces nor byte pieces cover.
    unk: u32,
}

impl LlamaTokenizer {
    /// Builds the lookups; `pieces`, `scores` and `kinds` have one entry per id.
    fn new(
        pieces: Vec<Vec<u8>>,
        scores: Vec<f32>,
        kinds: Vec<PieceKind>,
        unk_surface: String,
    ) -> LlamaTokenizer {
        let (mut all, mut normal) = (HashMap::new(), HashMap::new());
        let mut byte_ids = [None; 256];
        for (id, (p, k)) in pieces.iter().zip(&kinds).enumerate().rev() {
            all.insert(p.clone(), id as u32);
            match k {
                PieceKind::Normal => {
                    normal.insert(p.clone(), id as u32);
                }
                PieceKind::Byte(b) => byte_ids[*b as usize] = Some(id as u32),
                _ => {}
            }
        }
        let unk = kinds
            .iter()
            .position(|k| *k == PieceKind::Unknown)
            .unwrap_or(0) as u32;
        LlamaTokenizer {
            unk,
            pieces,
            scores,
            kinds,
            add_dummy_prefix: true,
            remove_extra_whitespaces: true,
            unk_surface,
            all,
            normal,
            byte_ids,
        }
    }

    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    /// Reads llama2.c's `tokenizer.bin`: u32 max_token_length, then per id f32 score, i32
    /// length and the bytes. The file does not store how many tokens it holds (run.c takes the
    /// model's vocab_size), so neither a file cut at a token boundary nor one made for another
    /// model could be told without `vocab_size`: the file must hold exactly that many. Kinds follow sentencepiece's layout for Llama: id 0 `<unk>`, 1 and 2 control,
    /// `<0xNN>` at id NN + 3 a byte piece.
    pub fn read_bin(path: &Path, vocab_size: usize) -> Result<LlamaTokenizer> {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let p = path.display();
        if vocab_size == 0 {
            bail!("{p}: a vocabulary of 0 tokens was asked for; pass the model's vocab_size");
        }
        parse_bin(&bytes, Some(vocab_size), &p.to_string())
    }

    /// Reads llama2.c's `tokenizer.bin` as [`LlamaTokenizer::read_bin`] does, taking every
    /// token the file holds (its entries up to the end of the file) as the vocabulary: for a
    /// tokenizer given without a model (`prepare text --tokenizer`). As llama2.c's `export()`
    /// writes it, `max_token_length` must be the longest token's length, which a file that is
    /// not a `tokenizer.bin` (or is cut short) almost never satisfies.
    pub fn read_bin_all(path: &Path) -> Result<LlamaTokenizer> {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        LlamaTokenizer::parse_bin_all(&bytes, path)
    }

    /// [`LlamaTokenizer::read_bin_all`] of the file's bytes; `path` names it in errors.
    pub fn parse_bin_all(bytes: &[u8], path: &Path) -> Result<LlamaTokenizer> {
        parse_bin(bytes, None, &path.display().to_string())
    }

    /// Reads sentencepiece's `tokenizer.model` (a `ModelProto`): BPE with identity
    /// normalization, as Llama's. Pieces are stored as `tokenizer.bin` has them (llama2.c's
    /// `export()`: `▁` as a space, BOS as "\n<s>\n", EOS as "\n</s>\n"), so either file gives
    /// the same tokenizer; the normalizer's settings and `<unk>`'s text come from the file.
    pub fn read_model(path: &Path) -> Result<LlamaTokenizer> {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        LlamaTokenizer::parse_model(&bytes, path)
    }

    /// [`LlamaTokenizer::read_model`] of the file's bytes; `path` names it in errors.
    pub fn parse_model(bytes: &[u8], path: &Path) -> Result<LlamaTokenizer> {
        read_model_proto(bytes).with_context(|| {
            format!(
                "{}: not a sentencepiece model this tokenizer reads (truncated?)",
                path.display()
            )
        })
    }

    /// Ids of `text` as run.c's `encode(text, bos=0, eos=0)`.
    pub fn encode_runc(&self, text: &str) -> Vec<u32> {
        let mut symbols: Vec<Vec<u8>> = Vec::new();
        if !text.is_empty() && self.all.contains_key(&b" "[..]) {
            symbols.push(b" ".to_vec());
        }
        for c in text.chars() {
            let mut buf = [0u8; 4];
            let s = c.encode_utf8(&mut buf).as_bytes();
            if self.all.contains_key(s) {
                symbols.push(s.to_vec());
            } else {
                for b in s {
                    match self.byte_ids[*b as usize] {
                        Some(id) => symbols.push(self.pieces[id as usize].clone()),
                        None => symbols.push(self.pieces[self.unk as usize].clone()),
                    }
                }
            }
        }
        merge(symbols, &self.all, &self.scores)
            .iter()
            .map(|s| self.all.get(s).copied().unwrap_or(self.unk))
            .collect()
    }

    /// Ids of `text` as sentencepiece's `encode` (no BOS).
    pub fn encode_sentencepiece(&self, text: &str) -> Vec<u32> {
        self.encode_normalized(&self.normalize(text, true))
    }

    /// Whether no normal piece holds a `\n` before its last byte. Then no merge ever joins a
    /// `\n` to what follows it, so the merges of the text before a `\n` and of the text after
    /// it are independent (each side's candidate pairs, and so the order of its merges, are
    /// its own), and a text cut just after a `\n` can be encoded piece by piece; see
    /// [`LlamaTokenizer::encode_sentencepiece_continued`].
    pub fn newline_ends_merges(&self) -> bool {
        self.normal.keys().all(|p| {
            p.iter()
                .position(|&b| b == b'\n')
                .is_none_or(|i| i + 1 == p.len())
        })
    }

    /// Ids of `text`, the part after a cut of a longer text, as sentencepiece encodes that part
    /// of the whole: the cut must be just after a `\n`, `text` must start with neither a space
    /// nor `▁`, and [`LlamaTokenizer::newline_ends_merges`] must hold. The normalizer then
    /// treats each side alone as it does in the whole (its dummy prefix and leading trim
    /// belong to the first part, the trailing trim to the last; a run of spaces never spans
    /// the `\n`), so `encode_sentencepiece(a) + encode_sentencepiece_continued(b)` =
    /// `encode_sentencepiece(a + b)`.
    pub fn encode_sentencepiece_continued(&self, text: &str) -> Vec<u32> {
        self.encode_normalized(&self.normalize(text, false))
    }

    /// Merges and byte fallback over normalized text.
    fn encode_normalized(&self, normalized: &str) -> Vec<u32> {
        let mut symbols = Vec::new();
        let mut rest = normalized;
        while let Some(c) = rest.chars().next() {
            symbols.push(rest.as_bytes()[..c.len_utf8()].to_vec());
            rest = &rest[c.len_utf8()..];
        }
        let mut ids = Vec::new();
        for s in merge(symbols, &self.normal, &self.scores) {
            match self.normal.get(&s) {
                Some(&id) => ids.push(id),
                None => ids.extend(
                    s.iter()
                        .map(|&b| self.byte_ids[b as usize].unwrap_or(self.unk)),
                ),
            }
        }
        ids
    }

    /// sentencepiece's normalizer (identity rules) in space form: a literal `▁` is a space
    /// that is never collapsed, but is dropped at the end like one. `start`: `text` is the
    /// start of the text (the dummy prefix and the leading trim apply), else it continues one
    /// just after a `\n` (see [`LlamaTokenizer::encode_sentencepiece_continued`]).
    fn normalize(&self, text: &str, start: bool) -> String {
        if text.is_empty() {
            return String::new();
        }
        let mut text = text;
        if self.remove_extra_whitespaces && start {
            text = text.trim_start_matches(' ');
        }
        let mut out = String::with_capacity(text.len() + 1);
        if self.add_dummy_prefix && start {
            out.push(' ');
        }
        let mut prev_space = self.remove_extra_whitespaces && start;
        for c in text.chars() {
            if c == ' ' && prev_space {
                continue;
            }
            out.push(if c == '\u{2581}' { ' ' } else { c });
            prev_space = c == ' ' && self.remove_extra_whitespaces;
        }
        if self.remove_extra_whitespaces {
            out.truncate(out.trim_end_matches(' ').len());
        }
        out
    }

    fn check_id(&self, id: u32) -> Result<usize> {
        if (id as usize) < self.pieces.len() {
            Ok(id as usize)
        } else {
            bail!(
                "token id {id} is not in this {}-token vocabulary",
                self.pieces.len()
            )
        }
    }

    /// Text of `ids` as sentencepiece's `decode`: control ids give nothing, a run of byte
    /// pieces is UTF-8 with each invalid byte U+FFFD, spaces at the start are dropped (with
    /// `remove_extra_whitespaces`; else only the first piece's).
    pub fn decode_sentencepiece(&self, ids: &[u32]) -> Result<String> {
        let mut out = String::new();
        let mut at_start = self.add_dummy_prefix;
        let mut bytes = Vec::new();
        let emit = |out: &mut String, text: &str, at_start: &mut bool| {
            out.push_str(text);
            if !self.remove_extra_whitespaces || !out.is_empty() {
                *at_start = false;
            }
        };
        for &id in ids {
            let i = self.check_id(id)?;
            if let PieceKind::Byte(b) = self.kinds[i] {
                bytes.push(b);
                continue;
            }
            emit(&mut out, &lossy_per_byte(&bytes), &mut at_start);
            bytes.clear();
            let text = match self.kinds[i] {
                PieceKind::Control => continue,
                // Its text is not the piece, so keeps its spaces.
                PieceKind::Unknown => self.unk_surface.clone(),
                _ => String::from_utf8_lossy(&self.pieces[i]).into_owned(),
            };
            let text = match (
                at_start && self.kinds[i] == PieceKind::Normal,
                self.remove_extra_whitespaces,
            ) {
                (true, true) => text.trim_start_matches(' '),
                (true, false) => text.strip_prefix(' ').unwrap_or(&text),
                _ => &text,
            };
            emit(&mut out, text, &mut at_start);
        }
        emit(&mut out, &lossy_per_byte(&bytes), &mut at_start);
        Ok(out)
    }

    /// The bytes token `id` stands for in running text: a byte piece its byte, a control
    /// token nothing, `<unk>` its surface text, any other its piece (spaces kept).
    pub fn token_bytes(&self, id: u32) -> Result<Vec<u8>> {
        let i = self.check_id(id)?;
        Ok(match self.kinds[i] {
            PieceKind::Byte(b) => vec![b],
            PieceKind::Control => Vec::new(),
            PieceKind::Unknown => self.unk_surface.as_bytes().to_vec(),
            PieceKind::Normal => self.pieces[i].clone(),
        })
    }

    /// What run.c prints for token `id` after token `prev`: the piece, one leading space
    /// dropped after BOS, a byte piece as its byte, and nothing for a single byte that is
    /// neither printable nor whitespace (`safe_printf`).
    pub fn runc_printed(&self, prev: u32, id: u32) -> Result<Vec<u8>> {
        let i = self.check_id(id)?;
        let piece: &[u8] = match self.kinds[i] {
            PieceKind::Byte(b) => &[b],
            _ => &self.pieces[i],
        };
        let piece = match (prev, piece) {
            (BOS, [b' ', rest @ ..]) => rest,
            _ => piece,
        };
        if let [b] = piece {
            let printable = (0x20..0x7f).contains(b) || (0x09..=0x0d).contains(b);
            if !printable {
                return Ok(Vec::new());
            }
        }
        Ok(piece.to_vec())
    }
}

/// The tokens of a `tokenizer.bin` (see [`LlamaTokenizer::read_bin`]): exactly `vocab_size` of
/// them, or with `None` every entry up to the end of the file. `p` names the file in errors.
fn parse_bin(bytes: &[u8], vocab_size: Option<usize>, p: &str) -> Result<LlamaTokenizer> {
    let Some(max_len) = bytes.get(..4) else {
        bail!(
            "{p}: {} bytes, too short for a tokenizer.bin header",
            bytes.len()
        );
    };
    let max_len = u32::from_le_bytes([max_len[0], max_len[1], max_len[2], max_len[3]]) as usize;
    let (mut pieces, mut scores, mut kinds) = (Vec::new(), Vec::new(), Vec::new());
    let mut at = 4;
    let mut longest = 0;
    while vocab_size.map_or(at < bytes.len(), |v| pieces.len() < v) {
        let id = pieces.len();
        let Some(head) = bytes.get(at..at + 8) else {
            match vocab_size {
                Some(v) => {
                    bail!("{p}: truncated: it ends at token {id} of the model's {v} (byte {at})")
                }
                None => bail!(
                    "{p}: truncated: {} bytes after token {id}, too few for another (byte {at}); \
                     not a llama2.c tokenizer.bin, or cut short",
                    bytes.len() - at
                ),
            }
        };
        let score = f32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        let len = i32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if len < 0 || len as usize > max_len {
            bail!(
                "{p}: token {id} has length {len}, outside 0..={max_len} (max_token_length); \
                 not a llama2.c tokenizer.bin, or corrupt"
            );
        }
        let Some(piece) = bytes.get(at + 8..at + 8 + len as usize) else {
            bail!("{p}: truncated in the text of token {id} (byte {at})");
        };
        kinds.push(bin_kind(id, piece));
        pieces.push(piece.to_vec());
        scores.push(score);
        longest = longest.max(len as usize);
        at += 8 + len as usize;
    }
    match vocab_size {
        Some(v) if at != bytes.len() => bail!(
            "{p}: {} bytes left after the model's {v} tokens; is it the tokenizer \
             of another model?",
            bytes.len() - at
        ),
        // llama2.c's export() writes the longest token's length; a file of another kind
        // that happens to parse (all zeros, say) does not.
        None if pieces.len() < 3 || longest == 0 => bail!(
            "{p}: not a llama2.c tokenizer.bin ({} tokens, none longer than 0 bytes)",
            pieces.len()
        ),
        None if longest != max_len => bail!(
            "{p}: not a llama2.c tokenizer.bin (its longest token has {longest} bytes, \
             but its header says {max_len})"
        ),
        _ => {}
    }
    Ok(LlamaTokenizer::new(
        pieces,
        scores,
        kinds,
        DEFAULT_UNK_SURFACE.into(),
    ))
}

/// llama2.c's vocabularies follow sentencepiece's Llama layout (see [`LlamaTokenizer::read_bin`]).
fn bin_kind(id: usize, piece: &[u8]) -> PieceKind {
    match id {
        0 => PieceKind::Unknown,
        1 | 2 => PieceKind::Control,
        _ => match byte_piece(piece) {
            Some(b) if b as usize + 3 == id => PieceKind::Byte(b),
            _ => PieceKind::Normal,
        },
    }
}

/// NN of a piece `<0xNN>` (two upper-case hex digits).
fn byte_piece(piece: &[u8]) -> Option<u8> {
    let hex = piece.strip_prefix(b"<0x")?.strip_suffix(b">")?;
    let is_upper_hex = |c: &u8| c.is_ascii_digit() || (b'A'..=b'F').contains(c);
    if hex.len() != 2 || !hex.iter().all(is_upper_hex) {
        return None;
    }
    u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
}

/// `bytes` as UTF-8, each byte that starts no valid character replaced by U+FFFD on its own
/// (sentencepiece's rule; `String::from_utf8_lossy` replaces a whole broken sequence once).
fn lossy_per_byte(mut bytes: &[u8]) -> String {
    let mut out = String::new();
    loop {
        match std::str::from_utf8(bytes) {
            Ok(s) => {
                out.push_str(s);
                return out;
            }
            Err(e) => {
                let (good, bad) = bytes.split_at(e.valid_up_to());
                out.push_str(std::str::from_utf8(good).unwrap_or_default());
                out.push('\u{FFFD}');
                bytes = &bad[1..];
            }
        }
    }
}

/// A candidate merge of symbols `left` and its right neighbour, whose joined text (`len`
/// bytes) is a piece of this score.
struct Pair {
    score: f32,
    left: usize,
    len: usize,
}

impl PartialEq for Pair {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Pair {}
impl PartialOrd for Pair {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pair {
    /// The heap's top: the highest score, then the leftmost.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then(other.left.cmp(&self.left))
    }
}

/// BPE: repeatedly joins the adjacent pair whose text is the highest-scoring piece of
/// `lookup` (the leftmost on ties) until no pair is a piece. A heap of candidate pairs keeps
/// this O(n log n); a candidate is stale once either side has changed, which shows as a
/// different joined length, since symbols only grow.
fn merge(
    mut symbols: Vec<Vec<u8>>,
    lookup: &HashMap<Vec<u8>, u32>,
    scores: &[f32],
) -> Vec<Vec<u8>> {
    let n = symbols.len();
    let mut next: Vec<usize> = (1..=n).collect();
    let mut prev: Vec<Option<usize>> = (0..n).map(|i| i.checked_sub(1)).collect();
    let mut heap = BinaryHeap::new();
    let push = |heap: &mut BinaryHeap<Pair>, symbols: &[Vec<u8>], left: usize, right: usize| {
        let joined = [symbols[left].as_slice(), symbols[right].as_slice()].concat();
        if let Some(&id) = lookup.get(&joined) {
            heap.push(Pair {
                score: scores[id as usize],
                left,
                len: joined.len(),
            });
        }
    };
    for i in 1..n {
        push(&mut heap, &symbols, i - 1, i);
    }
    while let Some(Pair { left, len, .. }) = heap.pop() {
        let right = next[left];
        if right >= n
            || symbols[left].is_empty()
            || symbols[left].len() + symbols[right].len() != len
        {
            continue;
        }
        let taken = std::mem::take(&mut symbols[right]);
        symbols[left].extend(taken);
        next[left] = next[right];
        if next[left] < n {
            prev[next[left]] = Some(left);
        }
        if let Some(p) = prev[left] {
            push(&mut heap, &symbols, p, left);
        }
        if next[left] < n {
            push(&mut heap, &symbols, left, next[left]);
        }
    }
    symbols.into_iter().filter(|s| !s.is_empty()).collect()
}

/// One field of a protobuf message.
enum Field<'a> {
    Varint(u64),
    Fixed32([u8; 4]),
    Bytes(&'a [u8]),
}

/// The fields of one protobuf message, in order: the little of the wire format that
/// sentencepiece's model needs (varints, 32/64-bit values, length-delimited bytes).
fn proto_fields(mut b: &[u8]) -> Result<Vec<(u64, Field<'_>)>> {
    fn varint(b: &mut &[u8]) -> Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&x, rest) = b.split_first().context("a varint runs past the end")?;
            *b = rest;
            v |= u64::from(x & 0x7f) << shift;
            if x < 0x80 {
                return Ok(v);
            }
        }
        bail!("a varint longer than 10 bytes")
    }
    fn take<'a>(b: &mut &'a [u8], n: u64) -> Result<&'a [u8]> {
        let n = usize::try_from(n).ok().filter(|&n| n <= b.len());
        let n = n.context("a field runs past the end")?;
        let (now, rest) = b.split_at(n);
        *b = rest;
        Ok(now)
    }
    let mut out = Vec::new();
    while !b.is_empty() {
        let key = varint(&mut b)?;
        let value = match key & 7 {
            0 => Field::Varint(varint(&mut b)?),
            1 => {
                take(&mut b, 8)?;
                continue;
            }
            2 => {
                let n = varint(&mut b)?;
                Field::Bytes(take(&mut b, n)?)
            }
            5 => {
                let v = take(&mut b, 4)?;
                Field::Fixed32([v[0], v[1], v[2], v[3]])
            }
            w => bail!("wire type {w} (field {}) is not protobuf's", key >> 3),
        };
        out.push((key >> 3, value));
    }
    Ok(out)
}

fn proto_string(v: &Field, what: &str) -> Result<String> {
    match v {
        Field::Bytes(b) => {
            String::from_utf8(b.to_vec()).with_context(|| format!("{what} is not UTF-8"))
        }
        _ => bail!("{what} is not a string"),
    }
}

/// sentencepiece's `ModelProto` field numbers: pieces 1 (piece 1, score 2, type 3), trainer
/// spec 2 (model_type 3, treat_whitespace_as_suffix 24, bos_id 41, eos_id 42, unk_surface 44),
/// normalizer spec 3 (name 1, precompiled_charsmap 2, add_dummy_prefix 3,
/// remove_extra_whitespaces 4, escape_whitespaces 5).
fn read_model_proto(bytes: &[u8]) -> Result<LlamaTokenizer> {
    let (mut raw, mut bos, mut eos) = (Vec::new(), 1i64, 2i64);
    let mut unk_surface = DEFAULT_UNK_SURFACE.to_string();
    let (mut dummy, mut collapse, mut model_type) = (true, true, 1);
    for (field, value) in proto_fields(bytes)? {
        let Field::Bytes(msg) = value else { continue };
        match field {
            1 => raw.push(msg),
            2 => {
                for (f, v) in proto_fields(msg)? {
                    match (f, v) {
                        (3, Field::Varint(x)) => model_type = x,
                        (24, Field::Varint(1)) => {
                            bail!("treat_whitespace_as_suffix is not supported")
                        }
                        (41, Field::Varint(x)) => bos = x as i32 as i64,
                        (42, Field::Varint(x)) => eos = x as i32 as i64,
                        (44, v) => unk_surface = proto_string(&v, "unk_surface")?,
                        _ => {}
                    }
                }
            }
            3 => {
                let mut name = String::from("identity");
                for (f, v) in proto_fields(msg)? {
                    match (f, v) {
                        (1, v) => name = proto_string(&v, "the normalizer's name")?,
                        (2, Field::Bytes(map)) if !map.is_empty() => {
                            bail!("normalization rule \"{name}\" is not supported (only identity)")
                        }
                        (3, Field::Varint(x)) => dummy = x != 0,
                        (4, Field::Varint(x)) => collapse = x != 0,
                        (5, Field::Varint(0)) => bail!("escape_whitespaces false is not supported"),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if model_type != 2 {
        bail!("model_type {model_type} is not supported (only 2, BPE)");
    }
    let (mut pieces, mut scores, mut kinds) = (Vec::new(), Vec::new(), Vec::new());
    for (id, msg) in raw.into_iter().enumerate() {
        let (mut text, mut score, mut kind) = (String::new(), 0.0, 1);
        for (f, v) in proto_fields(msg)? {
            match (f, v) {
                (1, v) => text = proto_string(&v, "a piece")?,
                (2, Field::Fixed32(x)) => score = f32::from_le_bytes(x),
                (3, Field::Varint(x)) => kind = x,
                _ => {}
            }
        }
        kinds.push(match kind {
            1 => PieceKind::Normal,
            2 => PieceKind::Unknown,
            3 => PieceKind::Control,
            6 => PieceKind::Byte(
                byte_piece(text.as_bytes())
                    .with_context(|| format!("byte piece {id} is {text:?}, not <0xNN>"))?,
            ),
            k => bail!(
                "piece {id} {text:?} has type {k} (user-defined or unused), which is not supported"
            ),
        });
        let text = match id as i64 {
            i if i == bos => "\n<s>\n".to_string(),
            i if i == eos => "\n</s>\n".to_string(),
            _ => text.replace('\u{2581}', " "),
        };
        pieces.push(text.into_bytes());
        scores.push(score);
    }
    if pieces.is_empty() {
        bail!("no pieces");
    }
    let mut tok = LlamaTokenizer::new(pieces, scores, kinds, unk_surface);
    tok.add_dummy_prefix = dummy;
    tok.remove_extra_whitespaces = collapse;
    Ok(tok)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `<unk>`, `<s>`, `</s>`, then "a", "aa", " ".
    fn tiny() -> LlamaTokenizer {
        let pieces = ["<unk>", "\n<s>\n", "\n</s>\n", "a", "aa", " "];
        let kinds = [PieceKind::Unknown, PieceKind::Control, PieceKind::Control]
            .into_iter()
            .chain([PieceKind::Normal; 3])
            .collect();
        LlamaTokenizer::new(
            pieces.iter().map(|p| p.as_bytes().to_vec()).collect(),
            vec![0.0, 0.0, 0.0, -3.0, -1.0, -2.0],
            kinds,
            DEFAULT_UNK_SURFACE.into(),
        )
    }

    #[test]
    fn llama_tokenizer_merges_the_leftmost_of_equal_pairs() {
        let tok = tiny();
        // " aaa": "aa" at symbols 1 and 2 score the same; the left one goes first.
        assert_eq!(tok.encode_sentencepiece("aaa"), [5, 4, 3]);
        assert_eq!(tok.encode_runc("aaa"), [5, 4, 3]);
        // No byte pieces: text outside the vocabulary is <unk>.
        assert_eq!(tok.encode_sentencepiece("b"), [5, 0]);
        assert_eq!(tok.encode_runc("b"), [5, 0]);
    }
}
