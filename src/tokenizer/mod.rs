//! Tokenizers: GPT-2's BPE (tiktoken-rs), nanoGPT's character-level vocabularies, and Llama's
//! sentencepiece (`crate::llama::tokenizer`).

mod char_vocab;
mod gpt2;
mod pretokenize;

pub use char_vocab::CharVocab;
pub use gpt2::{Gpt2Bpe, EOT, EOT_TEXT, VOCAB_SIZE as GPT2_VOCAB_SIZE};

use crate::llama::tokenizer::{LlamaTokenizer, BOS, EOS};
use anyhow::Result;
use std::path::Path;
use std::sync::Arc;

/// Either kind of tokenizer, behind one interface.
#[derive(Clone, Debug)]
pub enum Tokenizer {
    Gpt2(Gpt2Bpe),
    Char(CharVocab),
    /// Encodes as sentencepiece does; a prompt starts with BOS, as llama2.c's and transformers'.
    Llama(Arc<LlamaTokenizer>),
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
            Tokenizer::Llama(t) => t.vocab_size(),
        }
    }

    /// The end-of-text token, for vocabularies that have one (Llama: EOS).
    pub fn eot(&self) -> Option<u32> {
        match self {
            Tokenizer::Gpt2(_) => Some(EOT),
            Tokenizer::Char(_) => None,
            Tokenizer::Llama(_) => Some(EOS),
        }
    }

    /// Encodes a prompt. GPT-2: a literal `<|endoftext|>` becomes [`EOT`] (as `sample.py`).
    /// Characters: a character outside the vocabulary is an error. Llama: BOS, then
    /// sentencepiece's ids (an empty prompt is BOS alone).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match self {
            Tokenizer::Gpt2(t) => Ok(t.encode(text)),
            Tokenizer::Char(v) => v.encode(text),
            Tokenizer::Llama(t) => Ok([BOS]
                .into_iter()
                .chain(t.encode_sentencepiece(text))
                .collect()),
        }
    }

    /// Encodes training text: special tokens are plain text (as the `prepare.py` scripts).
    pub fn encode_ordinary(&self, text: &str) -> Result<Vec<u32>> {
        match self {
            Tokenizer::Gpt2(t) => Ok(t.encode_ordinary(text)),
            Tokenizer::Char(v) => v.encode(text),
            Tokenizer::Llama(t) => Ok(t.encode_sentencepiece(text)),
        }
    }

    /// Text of `ids`; an id outside the vocabulary is an error.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        match self {
            Tokenizer::Gpt2(t) => t.decode(ids),
            Tokenizer::Char(v) => v.decode(ids),
            Tokenizer::Llama(t) => t.decode_sentencepiece(ids),
        }
    }
}
