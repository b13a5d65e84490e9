//! Contrastive search (Su et al. 2022, "A Contrastive Framework for Neural Text Generation"), as
//! transformers ran it (`penalty_alpha > 0` with `top_k`; transformers 5.x moved it to the hub
//! as `transformers-community/contrastive-search`).
//!
//! Each step the penalties of [`Processors::penalize`] are applied to the next token's logits,
//! and the `top_k` most likely tokens (after softmax) are candidates. Each candidate is fed to the
//! model (the cache row copied once per candidate), which gives its last hidden state h (after
//! the final layer norm) and the logits after it. A candidate scores
//! `(1 - alpha) * p - alpha * max_j cos(h, h_j)`, h_j the hidden states of every earlier token
//! (prompt included): the model's confidence minus how much the candidate would repeat what is
//! already there. The best candidate (the more likely one on ties) is appended, and its cache
//! row, logits and hidden state are kept for the next step.
//!
//! Contrastive search is deterministic: every sample is the same sequence, computed once. Past
//! the model's context the cache is recomputed from the last `block_size - 1` tokens (nanoGPT's
//! cropping); the hidden states of the earlier tokens stay as they were computed.

use super::config::SamplingConfig;
use super::dist::{logsumexp, softmax};
use super::processors::Processors;
use super::sequence::{start_tokens, FinishReason, Generation};
use super::stop::{StopScan, Vocab};
use crate::engine::{Engine, Feed, KvCache};
use anyhow::{anyhow, Result};

/// The model after the last appended token: its cache (one row) and the next token's logits.
struct State {
    cache: KvCache,
    logits: Vec<f32>,
}

/// Feeds `window` into a fresh one-row cache of `capacity` positions; appends the window's
/// hidden states to `hidden` (a recomputed window's are not wanted: pass a scratch vector).
fn prefill(
    model: &dyn Engine,
    window: &[u32],
    capacity: usize,
    hidden: &mut Vec<f32>,
) -> Result<State> {
    let cfg = model.config();
    let mut cache = model.kv_cache(1, capacity);
    let mut logits = vec![0.0; cfg.padded_vocab_size()];
    let mut h = vec![0.0; window.len() * cfg.n_embd];
    let feed = [Feed {
        row: 0,
        tokens: window,
    }];
    model.forward_cached_hidden(&mut cache, &feed, &mut logits, &mut h)?;
    hidden.extend_from_slice(&h);
    Ok(State { cache, logits })
}

/// cos(a, b), in f64.
fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x as f64, y as f64);
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    ab / (aa.sqrt() * bb.sqrt())
}

/// Contrastive search from `prompt` (see the module docs): `cfg.num_samples` copies of the one
/// sequence; `on_token(sample, token)` sees each sample's tokens in turn.
pub fn contrastive_search(
    model: &dyn Engine,
    prompt: &[u32],
    cfg: &SamplingConfig,
    vocab: &dyn Vocab,
    on_token: &mut dyn FnMut(usize, u32),
) -> Result<Vec<Generation>> {
    cfg.validate()?;
    let start = start_tokens(model, prompt, vocab)?;
    let mc = model.config();
    let (c, v, vp, block) = (
        mc.n_embd,
        mc.vocab_size,
        mc.padded_vocab_size(),
        mc.block_size,
    );
    let alpha = cfg.penalty_alpha as f64;
    let k = cfg.top_k.unwrap_or(1).max(1);
    let procs = Processors::new(cfg, v, vocab.eot());
    let eot = if cfg.stop_at_eot { vocab.eot() } else { None };
    let mut gen = Generation::new();
    let mut scan = StopScan::default();
    let mut seq = start.clone();
    let mut hidden: Vec<f32> = Vec::new();
    let window = &start[start.len().saturating_sub(block)..];
    let capacity = (window.len() + cfg.max_new_tokens).min(block);
    let mut state = prefill(model, window, capacity, &mut hidden)?;
    let mut cand_logits = vec![0.0f32; k * vp];
    let mut cand_hidden = vec![0.0f32; k * c];
    for step in 0..cfg.max_new_tokens {
        if state.cache.len(0) == state.cache.capacity() {
            // No room for a candidate: crop the context as nanoGPT does (the next token's
            // logits then come from the cropped context too).
            let window = &seq[seq.len().saturating_sub(block - 1)..];
            state = prefill(model, window, block, &mut Vec::new())?;
        }
        let raw = &state.logits[..v];
        let mut row = raw.to_vec();
        procs.penalize(&mut row, &seq, start.len());
        let probs = softmax(&row);
        // The k most likely, best first (ties: the lower id first).
        let mut top: Vec<usize> = (0..v).filter(|&i| row[i] > f32::NEG_INFINITY).collect();
        let desc = |a: &usize, b: &usize| probs[*b].total_cmp(&probs[*a]).then(a.cmp(b));
        if top.len() > k {
            top.select_nth_unstable_by(k - 1, desc);
            top.truncate(k);
        }
        top.sort_by(desc);
        if top.is_empty() {
            return Err(anyhow!("every token was filtered out at step {step} (all logits -inf): loosen the penalties"));
        }
        let n = top.len();
        model.reorder_cache(&mut state.cache, &vec![0; n])?;
        let cands: Vec<[u32; 1]> = top.iter().map(|&t| [t as u32]).collect();
        let feeds: Vec<Feed> = cands
            .iter()
            .enumerate()
            .map(|(row, tokens)| Feed { row, tokens })
            .collect();
        model.forward_cached_hidden(
            &mut state.cache,
            &feeds,
            &mut cand_logits[..n * vp],
            &mut cand_hidden[..n * c],
        )?;
        // Score: confidence minus the degeneration penalty; the first best on ties.
        let mut best = (0, f64::NEG_INFINITY);
        for (i, &t) in top.iter().enumerate() {
            let h = &cand_hidden[i * c..(i + 1) * c];
            let max_cos = hidden
                .chunks(c)
                .map(|prev| cosine(h, prev))
                .fold(f64::NEG_INFINITY, f64::max);
            let score = (1.0 - alpha) * probs[t] - alpha * max_cos;
            if score > best.1 {
                best = (i, score);
            }
        }
        let (j, tok) = (best.0, top[best.0] as u32);
        if eot == Some(tok) {
            gen.finished_by = FinishReason::Eot;
            break;
        }
        gen.logprobs
            .push((raw[tok as usize] as f64 - logsumexp(raw)) as f32);
        gen.tokens.push(tok);
        seq.push(tok);
        hidden.extend_from_slice(&cand_hidden[j * c..(j + 1) * c]);
        model.reorder_cache(&mut state.cache, &[j])?;
        state
            .logits
            .copy_from_slice(&cand_logits[j * vp..(j + 1) * vp]);
        if !cfg.stop.is_empty() {
            if let Some((index, at_byte)) = scan.push(&vocab.token_bytes(tok)?, &cfg.stop) {
                gen.finished_by = FinishReason::Stop { index, at_byte };
                break;
            }
        }
    }
    let out = vec![gen; cfg.num_samples];
    for (i, g) in out.iter().enumerate() {
        for &t in &g.tokens {
            on_token(i, t);
        }
    }
    Ok(out)
}
