//! The engine thread: continuous batching over `--parallel` slots. Each slot is one row of one
//! KV cache and decodes one choice of one request. Every step feeds all busy slots in one
//! forward pass: a slot admitted this step feeds its whole prompt (prefill) while the others
//! feed their newest token (decode). A slot whose client has gone (its event channel closed)
//! is freed before the next step, so a disconnect frees its slot within one decode step.
//!
//! The HTTP side never computes: it sends each request's [`SeqJob`]s here together (so a
//! request's choices enter the queue at once and, with free slots, start in one step) and reads
//! [`Event`]s back.

use super::metrics::Metrics;
use super::text::TextStream;
use crate::engine::{Engine, Feed, KvCache};
use crate::sample::dist::log_softmax_inplace;
use crate::sample::processors::Processors;
use crate::sample::row::RowSampler;
use crate::sample::{FinishReason, SamplingConfig, Vocab};
use crate::tokenizer::Tokenizer;
use rayon::prelude::*;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc::UnboundedSender;

/// One choice of one request.
pub struct SeqJob {
    /// The start tokens (not empty, at most `block_size`).
    pub prompt: Arc<Vec<u32>>,
    pub cfg: Arc<SamplingConfig>,
    /// The choice's index: its random stream is sample `choice` of `cfg.seed`.
    pub choice: usize,
    /// Alternatives to report per token with `logprobs` (None: no log-probabilities).
    pub top_logprobs: Option<usize>,
    pub events: UnboundedSender<Event>,
}

/// One generated token as the API reports it.
#[derive(Clone, Debug)]
pub struct TokenInfo {
    pub id: u32,
    pub bytes: Vec<u8>,
    /// Log-probability under the model (raw logits, before any processor).
    pub logprob: f32,
    /// The most likely tokens there: (bytes, log-probability), best first.
    pub top: Vec<(Vec<u8>, f32)>,
}

/// What the engine tells a request about one of its choices.
#[derive(Debug)]
pub enum Event {
    /// The choice has a slot (it left the queue).
    Started {
        choice: usize,
    },
    /// New text (possibly empty while held back) and the tokens generated since the last event.
    Text {
        choice: usize,
        text: String,
        tokens: Vec<TokenInfo>,
    },
    /// The choice ended: the rest of its text, and why (`"stop"` or `"length"`).
    Done {
        choice: usize,
        text: String,
        tokens: Vec<TokenInfo>,
        finish_reason: &'static str,
        completion_tokens: usize,
    },
    Failed {
        message: String,
    },
}

struct Slot {
    job: SeqJob,
    sampler: RowSampler,
    text: TextStream,
    /// Tokens generated but not yet reported (held back with their text).
    unsent: Vec<TokenInfo>,
}

/// Runs until every sender of `jobs` is gone. At most `prefill_chunk` prompt tokens go into
/// one step.
pub fn run(
    engine: &dyn Engine,
    tok: &Tokenizer,
    parallel: usize,
    prefill_chunk: usize,
    jobs: Receiver<Vec<SeqJob>>,
    metrics: &Metrics,
) {
    let cfg = engine.config();
    let (block, vocab, vp) = (cfg.block_size, cfg.vocab_size, cfg.padded_vocab_size());
    let mut cache = engine.kv_cache(parallel, block);
    let mut slots: Vec<Option<Slot>> = (0..parallel).map(|_| None).collect();
    let mut queue: VecDeque<SeqJob> = VecDeque::new();
    let mut logits: Vec<f32> = Vec::new();
    loop {
        if slots.iter().all(Option::is_none) && queue.is_empty() {
            // Idle: the gauges say so while the thread waits for work.
            metrics.busy_slots.store(0, Ordering::Relaxed);
            metrics.queued.store(0, Ordering::Relaxed);
            match jobs.recv() {
                Ok(choices) => queue.extend(choices),
                Err(_) => return,
            }
        }
        queue.extend(jobs.try_iter().flatten());
        for slot in slots.iter_mut() {
            if slot.as_ref().is_some_and(|s| s.job.events.is_closed()) {
                *slot = None;
            }
        }
        queue.retain(|j| !j.events.is_closed());
        for (row, slot) in slots.iter_mut().enumerate() {
            if slot.is_none() {
                let Some(job) = queue.pop_front() else { break };
                cache.free(row);
                let _ = job.events.send(Event::Started { choice: job.choice });
                *slot = Some(Slot {
                    sampler: RowSampler::new(&job.cfg, &job.prompt, job.choice),
                    job,
                    text: TextStream::default(),
                    unsent: Vec::new(),
                });
            }
        }
        let busy: Vec<usize> = (0..parallel).filter(|&r| slots[r].is_some()).collect();
        metrics.queued.store(queue.len() as u64, Ordering::Relaxed);
        metrics
            .busy_slots
            .store(busy.len() as u64, Ordering::Relaxed);
        if busy.is_empty() {
            continue;
        }
        let t0 = Instant::now();
        // Decoding rows feed their newest token; prompts share `prefill_chunk` tokens a step
        // (a long prompt takes several steps), so one long prompt does not stall the others.
        let mut budget = prefill_chunk;
        let mut fed = Vec::with_capacity(busy.len());
        let mut feeds = Vec::with_capacity(busy.len());
        for &row in &busy {
            let Some(slot) = slots[row].as_ref() else {
                continue;
            };
            let seq = slot.sampler.sequence();
            let held = cache.len(row);
            let mut end = seq.len();
            if end - held > 1 {
                end = held + (end - held).min(budget);
                budget -= end - held;
            }
            if end > held {
                fed.push(row);
                feeds.push(Feed {
                    row,
                    tokens: &seq[held..end],
                });
            }
        }
        logits.resize(feeds.len() * vp, 0.0);
        if let Err(e) = engine.forward_cached(&mut cache, &feeds, &mut logits) {
            fail_all(&mut slots, &mut cache, &format!("the model failed: {e:#}"));
            continue;
        }
        // The slots' steps are independent (each draws from its own stream): run them across
        // the thread pool, since a step's log-softmax over the vocabulary is not free.
        let mut feed_of = vec![None; parallel];
        for (i, &row) in fed.iter().enumerate() {
            feed_of[row] = Some(i);
        }
        let lens = cache.lens().to_vec();
        let outcomes: Vec<(usize, anyhow::Result<Option<Finished>>)> = slots
            .par_iter_mut()
            .enumerate()
            .filter_map(|(row, slot)| {
                let (i, slot) = (feed_of[row]?, slot.as_mut()?);
                if lens[row] < slot.sampler.sequence().len() {
                    return None; // the prompt's next chunk comes next step
                }
                Some((row, step(slot, &logits[i * vp..i * vp + vocab], tok, block)))
            })
            .collect();
        let mut generated = 0;
        for (row, outcome) in outcomes {
            let events = &slots[row]
                .as_ref()
                .expect("stepped rows hold a slot")
                .job
                .events;
            match outcome {
                Ok(None) => {
                    generated += 1;
                    continue;
                }
                Ok(Some(done)) => {
                    generated += done.token_count;
                    let _ = events.send(done.event);
                }
                Err(e) => {
                    let _ = events.send(Event::Failed {
                        message: format!("{e:#}"),
                    });
                }
            }
            slots[row] = None;
        }
        metrics.record_step(fed.len(), generated, t0.elapsed());
    }
}

struct Finished {
    event: Event,
    /// Tokens this step added (0 when it ended at the end-of-text token).
    token_count: usize,
}

/// One slot's step from its logits. `Some` when the choice ended.
fn step(
    slot: &mut Slot,
    raw: &[f32],
    tok: &Tokenizer,
    block: usize,
) -> anyhow::Result<Option<Finished>> {
    let cfg = &slot.job.cfg;
    let procs = Processors::new(cfg, raw.len(), tok.eot());
    let s = slot.sampler.step(raw, &procs, cfg, tok)?;
    let gen = &slot.sampler.gen;
    if let (Some(id), Some(&logprob)) = (s.token, gen.logprobs.last()) {
        slot.unsent
            .push(token_info(raw, id, logprob, slot.job.top_logprobs, tok)?);
    }
    // The context is full: the next token would have no position.
    let full = slot.sampler.sequence().len() >= block;
    if !s.done && !full {
        let bytes = &slot.unsent.last().expect("a token was added").bytes;
        let text = slot.text.push(bytes, &cfg.stop);
        if !text.is_empty() {
            let tokens = std::mem::take(&mut slot.unsent);
            let choice = slot.job.choice;
            let _ = slot.job.events.send(Event::Text {
                choice,
                text,
                tokens,
            });
        }
        return Ok(None);
    }
    if let Some(info) = s.token.and(slot.unsent.last()) {
        slot.text.append(&info.bytes);
    }
    let (cut, finish_reason) = match gen.finished_by {
        FinishReason::Stop { at_byte, .. } => (Some(at_byte), "stop"),
        FinishReason::Eot | FinishReason::Loop => (None, "stop"),
        FinishReason::Length => (None, "length"),
    };
    Ok(Some(Finished {
        event: Event::Done {
            choice: slot.job.choice,
            text: slot.text.finish(cut),
            tokens: std::mem::take(&mut slot.unsent),
            finish_reason,
            completion_tokens: gen.tokens.len(),
        },
        token_count: usize::from(s.token.is_some()),
    }))
}

/// The token's bytes and log-probability, and (when asked) the most likely alternatives.
fn token_info(
    raw: &[f32],
    id: u32,
    logprob: f32,
    top: Option<usize>,
    tok: &Tokenizer,
) -> anyhow::Result<TokenInfo> {
    let mut best = Vec::new();
    if let Some(k) = top.filter(|&k| k > 0) {
        let mut logp = raw.to_vec();
        log_softmax_inplace(&mut logp);
        let mut idx: Vec<u32> = (0..logp.len() as u32).collect();
        let k = k.min(idx.len());
        idx.select_nth_unstable_by(k - 1, |&a, &b| {
            logp[b as usize].total_cmp(&logp[a as usize])
        });
        idx.truncate(k);
        idx.sort_by(|&a, &b| logp[b as usize].total_cmp(&logp[a as usize]));
        for t in idx {
            best.push((tok.token_bytes(t)?, logp[t as usize]));
        }
    }
    Ok(TokenInfo {
        id,
        bytes: tok.token_bytes(id)?,
        logprob,
        top: best,
    })
}

fn fail_all(slots: &mut [Option<Slot>], cache: &mut KvCache, message: &str) {
    for (row, slot) in slots.iter_mut().enumerate() {
        if let Some(s) = slot.take() {
            let _ = s.job.events.send(Event::Failed {
                message: message.to_string(),
            });
        }
        cache.free(row);
    }
}
