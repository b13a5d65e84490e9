//! GPT-2's byte-pair encoding (tiktoken's `gpt2` / `r50k_base` ranks, embedded in tiktoken-rs).

use anyhow::{anyhow, Context, Result};
use std::sync::OnceLock;
use tiktoken_rs::CoreBPE;

/// `<|endoftext|>`: GPT-2's only special token, and the document separator in its training data.
pub const EOT: u32 = 50256;
/// The text of the end-of-text token.
pub const EOT_TEXT: &str = "<|endoftext|>";
/// GPT-2's vocabulary: 50,000 merges + 256 byte tokens + `<|endoftext|>`.
pub const VOCAB_SIZE: usize = 50257;

/// The GPT-2 tokenizer. Cheap to copy: the ranks are built once per process and shared.
#[derive(Clone, Copy)]
pub struct Gpt2Bpe {
    bpe: &'static CoreBPE,
}

impl std::fmt::Debug for Gpt2Bpe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Gpt2Bpe")
    }
}

impl Gpt2Bpe {
    /// Builds GPT-2's ranks on first use (a few hundred ms), then shares them.
    pub fn new() -> Result<Self> {
        static BPE: OnceLock<CoreBPE> = OnceLock::new();
        if let Some(bpe) = BPE.get() {
            return Ok(Gpt2Bpe { bpe });
        }
        let built = tiktoken_rs::r50k_base()
            .map_err(|e| anyhow!("cannot build the GPT-2 tokenizer from tiktoken-rs: {e}"))?;
        // A racing thread may have set it first; either copy is identical.
        let _ = BPE.set(built);
        let bpe = BPE
            .get()
            .context("the GPT-2 tokenizer failed to initialise")?;
        Ok(Gpt2Bpe { bpe })
    }

    pub fn vocab_size(&self) -> usize {
        VOCAB_SIZE
    }

    /// Like tiktoken's `encode_ordinary`: `<|endoftext|>` in the text is plain text.
    /// This is what nanoGPT's `prepare.py` scripts use.
    pub fn encode_ordinary(&self, text: &str) -> Vec<u32> {
        self.bpe.encode_ordinary(text)
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
            ids.extend(self.bpe.encode_ordinary(part));
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
        self.bpe
            .decode_bytes(ids)
            .map_err(|e| anyhow!("cannot decode GPT-2 tokens: {e}"))
    }

    /// Text of `ids`; invalid UTF-8 (a character cut between tokens) becomes U+FFFD, as
    /// tiktoken's `decode` does with its default `errors="replace"`.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        Ok(String::from_utf8_lossy(&self.decode_bytes(ids)?).into_owned())
    }
}
