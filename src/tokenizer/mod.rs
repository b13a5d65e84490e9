//! Tokenizers: GPT-2's BPE (tiktoken-rs) and nanoGPT's character-level vocabularies.

mod char_vocab;
mod gpt2;
mod pretokenize;

pub use char_vocab::CharVocab;
pub use gpt2::{Gpt2Bpe, EOT, EOT_TEXT, VOCAB_SIZE as GPT2_VOCAB_SIZE};

use anyhow::Result;
use std::path::Path;

/// Either kind of tokenizer, behind one interface.
#[derive(Clone, Debug)]
pub enum Tokenizer {
    Gpt2(Gpt2Bpe),
    Char(CharVocab),
}

impl Tokenizer {
    pub fn gpt2() -> Result<Tokenizer> {
        Ok(Tokenizer::Gpt2(Gpt2Bpe::new()?))
    }

    /// A character vocabulary from `meta.json` or nanoGPT's `meta.pkl`.
    pub fn from_meta(path: &Path) -> Result<Tokenizer> {
        Ok(Tokenizer::Char(CharVocab::load(path)?))
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            Tokenizer::Gpt2(t) => t.vocab_size(),
            Tokenizer::Char(v) => v.vocab_size(),
        }
    }

    /// The end-of-text token, for vocabularies that have one.
    pub fn eot(&self) -> Option<u32> {
        match self {
            Tokenizer::Gpt2(_) => Some(EOT),
            Tokenizer::Char(_) => None,
        }
    }

    /// Encodes a prompt. GPT-2: a literal `<|endoftext|>` becomes [`EOT`] (as `sample.py`).
    /// Characters: a character outside the vocabulary is an error.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match self {
            Tokenizer::Gpt2(t) => Ok(t.encode(text)),
            Tokenizer::Char(v) => v.encode(text),
        }
    }

    /// Encodes training text: special tokens are plain text (as the `prepare.py` scripts).
    pub fn encode_ordinary(&self, text: &str) -> Result<Vec<u32>> {
        match self {
            Tokenizer::Gpt2(t) => Ok(t.encode_ordinary(text)),
            Tokenizer::Char(v) => v.encode(text),
        }
    }

    /// Text of `ids`; an id outside the vocabulary is an error.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        match self {
            Tokenizer::Gpt2(t) => t.decode(ids),
            Tokenizer::Char(v) => v.decode(ids),
        }
    }
}
