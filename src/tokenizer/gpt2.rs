//! GPT-2's byte-pair encoding (tiktoken's `gpt2` / `r50k_base` ranks, embedded in tiktoken-rs).
//!
//! Encoding is our own, and gives tiktoken's tokens exactly (the tests compare them on every
//! code point and on random text): the text is cut into pieces by a hand-written scanner
//! ([`super::pretokenize`], no regex engine), a piece that is a token is that token, and any
//! other is byte-pair merged as tiktoken does (repeatedly join the adjacent pair whose joined
//! bytes have the lowest rank, the leftmost of equals). Each thread remembers the merges of
//! recent pieces (words repeat), so most pieces cost two hash lookups. Decoding, and the rare
//! piece longer than [`LONG_PIECE`] bytes, go to tiktoken-rs.

use super::pretokenize::for_each_piece;
use anyhow::{anyhow, Context, Result};
use rustc_hash::FxHashMap;
use std::cell::RefCell;
use std::sync::OnceLock;
use tiktoken_rs::CoreBPE;

/// `<|endoftext|>`: GPT-2's only special token, and the document separator in its training data.
pub const EOT: u32 = 50256;
/// The text of the end-of-text token.
pub const EOT_TEXT: &str = "<|endoftext|>";
/// GPT-2's vocabulary: 50,000 merges + 256 byte tokens + `<|endoftext|>`.
pub const VOCAB_SIZE: usize = 50257;

/// Pieces longer than this are merged by tiktoken-rs (its heap-based merge is faster on them
/// than our quadratic one, and they are rare).
const LONG_PIECE: usize = 256;
/// Merged pieces each thread remembers; the memory is cleared when full (tens of MB at most).
const CACHE_ENTRIES: usize = 1 << 18;

/// The GPT-2 tokenizer. Cheap to copy: the ranks are built once per process and shared.
#[derive(Clone, Copy)]
pub struct Gpt2Bpe {
    data: &'static Gpt2Data,
}

struct Gpt2Data {
    bpe: CoreBPE,
    /// Token bytes -> id, for all 50,256 ordinary tokens.
    ranks: FxHashMap<Vec<u8>, u32>,
}

/// One thread's merge memory and scratch space.
#[derive(Default)]
struct MergeState {
    cache: FxHashMap<Box<[u8]>, Box<[u32]>>,
    starts: Vec<usize>,
    pair_ranks: Vec<u32>,
}

thread_local! {
    static MERGES: RefCell<MergeState> = RefCell::new(MergeState::default());
}

impl std::fmt::Debug for Gpt2Bpe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Gpt2Bpe")
    }
}

impl Gpt2Bpe {
    /// Builds GPT-2's ranks on first use (a few hundred ms), then shares them.
    pub fn new() -> Result<Self> {
        static DATA: OnceLock<Gpt2Data> = OnceLock::new();
        if let Some(data) = DATA.get() {
            return Ok(Gpt2Bpe { data });
        }
        let bpe = tiktoken_rs::r50k_base()
            .map_err(|e| anyhow!("cannot build the GPT-2 tokenizer from tiktoken-rs: {e}"))?;
        let mut ranks = FxHashMap::default();
        for id in 0..EOT {
            let bytes = bpe
                .decode_bytes(&[id])
                .map_err(|e| anyhow!("tiktoken-rs has no GPT-2 token {id}: {e}"))?;
            ranks.insert(bytes, id);
        }
        // A racing thread may have set it first; either copy is identical.
        let _ = DATA.set(Gpt2Data { bpe, ranks });
        let data = DATA
            .get()
            .context("the GPT-2 tokenizer failed to initialise")?;
        Ok(Gpt2Bpe { data })
    }

    pub fn vocab_size(&self) -> usize {
        VOCAB_SIZE
    }

    /// Like tiktoken's `encode_ordinary`: `<|endoftext|>` in the text is plain text.
    /// This is what nanoGPT's `prepare.py` scripts use.
    pub fn encode_ordinary(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::with_capacity(text.len() / 4 + 1);
        self.encode_ordinary_into(text, &mut ids);
        ids
    }

    /// [`Gpt2Bpe::encode_ordinary`], appending to `ids`.
    pub fn encode_ordinary_into(&self, text: &str, ids: &mut Vec<u32>) {
        MERGES.with(|state| {
            let mut state = state.borrow_mut();
            for_each_piece(text, |piece| self.encode_piece(piece, &mut state, ids));
        })
    }

    fn encode_piece(&self, piece: &str, state: &mut MergeState, ids: &mut Vec<u32>) {
        let bytes = piece.as_bytes();
        if let Some(&id) = self.data.ranks.get(bytes) {
            ids.push(id);
        } else if bytes.len() > LONG_PIECE {
            ids.extend(self.data.bpe.encode_ordinary(piece));
        } else if let Some(known) = state.cache.get(bytes) {
            ids.extend_from_slice(known);
        } else {
            let start = ids.len();
            self.merge(bytes, state, ids);
            if state.cache.len() >= CACHE_ENTRIES {
                state.cache.clear();
            }
            state.cache.insert(bytes.into(), ids[start..].into());
        }
    }

    /// Byte-pair merges `piece` (at least 2 bytes, not itself a token) into `ids`: tokens are
    /// `piece[starts[k]..starts[k + 1]]`; `pair_ranks[k]` is the rank of tokens k and k+1
    /// joined (`u32::MAX`: not a token). Join the lowest (leftmost on ties) until none is left.
    fn merge(&self, piece: &[u8], state: &mut MergeState, ids: &mut Vec<u32>) {
        let ranks = &self.data.ranks;
        let rank = |bytes: &[u8]| ranks.get(bytes).copied().unwrap_or(u32::MAX);
        let MergeState {
            starts, pair_ranks, ..
        } = state;
        starts.clear();
        starts.extend(0..=piece.len());
        pair_ranks.clear();
        pair_ranks.extend((0..piece.len() - 1).map(|i| rank(&piece[i..i + 2])));
        loop {
            let mut best = (u32::MAX, 0);
            for (k, &r) in pair_ranks.iter().enumerate() {
                if r < best.0 {
                    best = (r, k);
                }
            }
            if best.0 == u32::MAX {
                break;
            }
            let k = best.1;
            starts.remove(k + 1);
            pair_ranks.remove(k);
            if k < pair_ranks.len() {
                pair_ranks[k] = rank(&piece[starts[k]..starts[k + 2]]);
            }
            if k > 0 {
                pair_ranks[k - 1] = rank(&piece[starts[k - 1]..starts[k + 1]]);
            }
        }
        // Every single byte is a token, so every part has a rank.
        ids.extend(starts.windows(2).map(|w| rank(&piece[w[0]..w[1]])));
    }

    /// Like tiktoken's `encode(text, allowed_special={"<|endoftext|>"})`: the literal
    /// `<|endoftext|>` becomes [`EOT`]. This is what nanoGPT's `sample.py` uses for prompts.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        // tiktoken encodes the text between allowed special tokens separately, exactly so.
        let mut ids = Vec::new();
        for (i, part) in text.split(EOT_TEXT).enumerate() {
            if i > 0 {
                ids.push(EOT);
            }
            self.encode_ordinary_into(part, &mut ids);
        }
        ids
    }

    /// The raw bytes of `ids` (a token may hold part of a UTF-8 character).
    pub fn decode_bytes(&self, ids: &[u32]) -> Result<Vec<u8>> {
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= VOCAB_SIZE) {
            return Err(anyhow!(
                "token id {bad} is not in GPT-2's vocabulary (ids are below {VOCAB_SIZE})"
            ));
        }
        self.data
            .bpe
            .decode_bytes(ids)
            .map_err(|e| anyhow!("cannot decode GPT-2 tokens: {e}"))
    }

    /// Text of `ids`; invalid UTF-8 (a character cut between tokens) becomes U+FFFD, as
    /// tiktoken's `decode` does with its default `errors="replace"`.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        Ok(String::from_utf8_lossy(&self.decode_bytes(ids)?).into_owned())
    }
}
