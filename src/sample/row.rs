//! One sample's decoding state and its step: from the model's logits for its next token to the
//! token chosen (penalties, loop-guard bans, the filters and the draw), then the checks that end
//! it (end-of-text, stop strings, the loop guard, length). [`super::generate`] steps a batch of
//! these over one KV cache; `nanogpt serve` steps one per slot of its continuous batch.

use super::config::SamplingConfig;
use super::dist::{argmax, logsumexp, sample_logits};
use super::llama_samplers::{xtc, Mirostat};
use super::loop_guard::{LoopAction, RowGuard};
use super::processors::{temperature, Processors};
use super::sequence::{sample_rng, FinishReason, Generation};
use super::stop::{StopScan, Vocab};
use crate::rng::Rng;
use anyhow::{anyhow, Result};

/// What one step did to the sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    /// The token appended to the sample (`None` when it ended at the end-of-text token).
    pub token: Option<u32>,
    /// The loop guard backtracked: the sample's generated tokens are now its first `keep`
    /// (the caller takes its cache row back to match).
    pub rewound_to: Option<usize>,
    /// The sample has ended; [`Generation::finished_by`] says why.
    pub done: bool,
}

/// One sample being decoded: its whole sequence (start tokens + generated), what it generated,
/// and its own random stream, stop-string scan, loop guard and mirostat state.
pub struct RowSampler {
    seq: Vec<u32>,
    n_prompt: usize,
    pub gen: Generation,
    rng: Rng,
    scan: StopScan,
    guard: RowGuard,
    mirostat: Option<Mirostat>,
    scratch: Vec<f32>,
}

impl RowSampler {
    /// Sample number `index` of `cfg.seed`'s samples, starting from `start` (not empty).
    pub fn new(cfg: &SamplingConfig, start: &[u32], index: usize) -> Self {
        RowSampler {
            seq: start.to_vec(),
            n_prompt: start.len(),
            gen: Generation::new(),
            rng: sample_rng(cfg.seed, index),
            scan: StopScan::default(),
            guard: RowGuard::default(),
            mirostat: (cfg.mirostat > 0)
                .then(|| Mirostat::new(cfg.mirostat, cfg.mirostat_tau, cfg.mirostat_eta)),
            scratch: Vec::new(),
        }
    }

    /// Start tokens + generated tokens: what the model has to have seen for the next step.
    pub fn sequence(&self) -> &[u32] {
        &self.seq
    }

    /// Chooses the next token from `raw`, the model's logits over the real vocabulary, and
    /// applies every end condition of `cfg`. `procs` is [`Processors::new`] of the same `cfg`.
    pub fn step(
        &mut self,
        raw: &[f32],
        procs: &Processors,
        cfg: &SamplingConfig,
        vocab: &dyn Vocab,
    ) -> Result<Step> {
        let pos = self.gen.tokens.len();
        let logits = &mut self.scratch;
        logits.clear();
        logits.extend_from_slice(raw);
        procs.penalize(logits, &self.seq, self.n_prompt);
        self.guard.apply_bans(logits, &self.gen.tokens);
        let pick = match (cfg.sampling(), self.mirostat.as_mut()) {
            (false, _) => argmax(logits),
            // Mirostat draws after temperature alone, as llama.cpp chains it.
            (true, Some(m)) => {
                temperature(logits, cfg.temperature);
                m.sample(logits, &mut self.rng)
            }
            (true, None) => {
                procs.warp(logits, 1);
                xtc(
                    logits,
                    cfg.xtc_probability,
                    cfg.xtc_threshold,
                    1,
                    &mut self.rng,
                );
                sample_logits(logits, &mut self.rng)
            }
        };
        let tok = pick.ok_or_else(|| {
            anyhow!("every token was filtered out at generated position {pos} (all logits -inf): loosen the filters or penalties")
        })? as u32;
        let mut step = Step {
            token: None,
            rewound_to: None,
            done: false,
        };
        if cfg.stop_at_eot && vocab.eot() == Some(tok) {
            self.gen.finished_by = FinishReason::Eot;
            step.done = true;
            return Ok(step);
        }
        step.token = Some(tok);
        let logprob = (raw[tok as usize] as f64 - logsumexp(raw)) as f32;
        self.seq.push(tok);
        self.gen.tokens.push(tok);
        self.gen.logprobs.push(logprob);
        if !cfg.stop.is_empty() {
            if let Some((index, at_byte)) = self.scan.push(&vocab.token_bytes(tok)?, &cfg.stop) {
                self.gen.finished_by = FinishReason::Stop { index, at_byte };
                step.done = true;
                return Ok(step);
            }
        }
        if let Some(event) = self.guard.check(&cfg.loop_guard, &self.gen.tokens) {
            self.gen.loop_events.push(event);
            if event.action == LoopAction::Stop {
                self.gen.finished_by = FinishReason::Loop;
                step.done = true;
                return Ok(step);
            }
            let keep = event.position;
            self.gen.tokens.truncate(keep);
            self.gen.logprobs.truncate(keep);
            self.seq.truncate(self.n_prompt + keep);
            step.rewound_to = Some(keep);
            if !cfg.stop.is_empty() {
                self.scan = StopScan::default();
                for &t in &self.gen.tokens {
                    // No stop string was found in these bytes before, nor is now.
                    self.scan.push(&vocab.token_bytes(t)?, &cfg.stop);
                }
            }
        }
        step.done = self.gen.tokens.len() == cfg.max_new_tokens;
        Ok(step)
    }
}
