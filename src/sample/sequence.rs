//! What generation produces and starts from, shared by sampling ([`super::generate`]) and beam
//! search ([`super::beam`]): the generated sequence, why it ended, the start tokens, and each
//! sample's random stream.

use super::loop_guard::LoopEvent;
use super::stop::Vocab;
use crate::engine::Engine;
use crate::rng::{mix64, Rng};
use anyhow::{bail, Result};

/// Why a generated sequence ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// `max_new_tokens` reached.
    Length,
    /// The end-of-text token was generated (it is not part of `tokens`).
    Eot,
    /// Stop string number `index` occurs in the generated text, starting at byte `at_byte` of the
    /// bytes `tokens` decode to (the token that completed it is the last of `tokens`; cut the
    /// text at `at_byte` to drop the stop string).
    Stop { index: usize, at_byte: usize },
    /// The loop guard found a loop (`--loop_guard=stop`, or backtracks used up); the last of
    /// [`Generation::loop_events`] says where it began.
    Loop,
}

/// One generated sequence.
#[derive(Clone, Debug, PartialEq)]
pub struct Generation {
    /// The generated ids (prompt not included; a final end-of-text token not included).
    pub tokens: Vec<u32>,
    /// The model's log-probability of each token of `tokens` given everything before it, from the
    /// raw logits (before temperature, filters or penalties).
    pub logprobs: Vec<f32>,
    pub finished_by: FinishReason,
    /// Beam search only: the hypothesis' score, sum of processed log-probs / len^length_penalty.
    pub score: Option<f32>,
    /// Every time the loop guard fired, in order.
    pub loop_events: Vec<LoopEvent>,
}

impl Generation {
    pub(crate) fn new() -> Self {
        Generation {
            tokens: Vec::new(),
            logprobs: Vec::new(),
            finished_by: FinishReason::Length,
            score: None,
            loop_events: Vec::new(),
        }
    }
}

/// The token sequence generation starts from. An empty prompt starts from the end-of-text token
/// when the vocabulary has one (as transformers starts GPT-2 from its BOS = `<|endoftext|>`);
/// otherwise it is an error, since the model needs at least one token to predict the next.
pub fn start_tokens(model: &dyn Engine, prompt: &[u32], vocab: &dyn Vocab) -> Result<Vec<u32>> {
    let v = model.config().vocab_size;
    if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= v) {
        bail!("prompt token {bad} is outside the model's vocabulary (vocab_size {v}): encode the prompt with the model's tokenizer");
    }
    if !prompt.is_empty() {
        return Ok(prompt.to_vec());
    }
    match vocab.eot() {
        Some(eot) if (eot as usize) < v => Ok(vec![eot]),
        _ => bail!("the prompt is empty and this vocabulary has no end-of-text token to start from: give a start text of at least one character"),
    }
}

/// The random stream of sample `i`: independent of how samples are batched.
pub(crate) fn sample_rng(seed: u64, i: usize) -> Rng {
    Rng::new(mix64(seed ^ mix64(i as u64 + 1)))
}
