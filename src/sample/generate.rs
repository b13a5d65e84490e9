//! Greedy decoding and sampling: several samples decoded as one batch over a KV cache.

use super::beam::beam_search;
use super::config::SamplingConfig;
use super::context::Context;
use super::contrastive::contrastive_search;
use super::dist::{argmax, logsumexp, sample_logits};
use super::llama_samplers::{xtc, Mirostat};
use super::loop_guard::{LoopAction, LoopGuardMode, RowGuard};
use super::processors::temperature;
use super::processors::Processors;
use super::sequence::{sample_rng, start_tokens, FinishReason, Generation};
use super::stop::{StopScan, Vocab};
use crate::engine::Engine;
use crate::rng::Rng;
use anyhow::{anyhow, Result};

/// Generates from `prompt` with `cfg`: `cfg.num_samples` samples (greedy when not sampling),
/// contrastive search when `cfg.penalty_alpha > 0`, or beam search when `cfg.num_beams > 1`. `on_token(sample, token)` sees every token as it is
/// appended to `Generation::tokens`, in order (beam search calls it once the search is over, for
/// each returned sequence, since beams change until the end).
pub fn generate(
    model: &dyn Engine,
    prompt: &[u32],
    cfg: &SamplingConfig,
    vocab: &dyn Vocab,
    on_token: &mut dyn FnMut(usize, u32),
) -> Result<Vec<Generation>> {
    let mut out = Vec::with_capacity(cfg.num_samples.min(cfg.batch_size.max(1)));
    generate_each(model, prompt, cfg, vocab, on_token, &mut |_, g| {
        out.push(g);
        Ok(())
    })?;
    Ok(out)
}

/// [`generate`], handing each generation to `on_done(sample, generation)`, in order, as soon as
/// its batch ends: memory stays at one batch (`cfg.batch_size`) however many samples are asked
/// for.
pub fn generate_each(
    model: &dyn Engine,
    prompt: &[u32],
    cfg: &SamplingConfig,
    vocab: &dyn Vocab,
    on_token: &mut dyn FnMut(usize, u32),
    on_done: &mut dyn FnMut(usize, Generation) -> Result<()>,
) -> Result<()> {
    cfg.validate()?;
    if !cfg.stop.is_empty() {
        // Fail early (not mid-generation) when stop strings cannot be checked.
        vocab.token_bytes(0)?;
    }
    if cfg.penalty_alpha > 0.0 {
        let gens = contrastive_search(model, prompt, cfg, vocab, on_token)?;
        return gens
            .into_iter()
            .enumerate()
            .try_for_each(|(i, g)| on_done(i, g));
    }
    if cfg.num_beams > 1 {
        let gens = beam_search(model, prompt, cfg, vocab, on_token)?;
        return gens
            .into_iter()
            .enumerate()
            .try_for_each(|(i, g)| on_done(i, g));
    }
    let start = start_tokens(model, prompt, vocab)?;
    let n = cfg.num_samples;
    let group = if cfg.batch_size == 0 {
        n
    } else {
        cfg.batch_size.min(n)
    };
    let mut first = 0;
    while first < n {
        let g = group.min(n - first);
        for (i, gen) in sample_group(model, &start, cfg, vocab, first, g, on_token)?
            .into_iter()
            .enumerate()
        {
            on_done(first + i, gen)?;
        }
        first += g;
    }
    Ok(())
}

/// Samples `first..first+g`, decoded together. Rows may fall out of step: the loop guard's
/// backtrack takes tokens back from single rows.
fn sample_group(
    model: &dyn Engine,
    start: &[u32],
    cfg: &SamplingConfig,
    vocab: &dyn Vocab,
    first: usize,
    g: usize,
    on_token: &mut dyn FnMut(usize, u32),
) -> Result<Vec<Generation>> {
    let mut gens: Vec<Generation> = (0..g).map(|_| Generation::new()).collect();
    if cfg.max_new_tokens == 0 {
        return Ok(gens);
    }
    let procs = Processors::new(cfg, model.config().vocab_size, vocab.eot());
    let eot = if cfg.stop_at_eot { vocab.eot() } else { None };
    let sampling = cfg.sampling();
    // A backtrack deletes tokens, so with it on tokens reach `on_token` once their batch is done
    // (in sample order, which is what the streaming printer expects), never to be taken back.
    let hold_back = cfg.loop_guard.mode == LoopGuardMode::Backtrack;
    let n_prompt = start.len();
    let mut seqs: Vec<Vec<u32>> = vec![start.to_vec(); g];
    let mut rngs: Vec<Rng> = (0..g).map(|i| sample_rng(cfg.seed, first + i)).collect();
    let mut scans: Vec<StopScan> = vec![StopScan::default(); g];
    let mut guards: Vec<RowGuard> = vec![RowGuard::default(); g];
    let mut mirostats: Vec<Option<Mirostat>> = (0..g)
        .map(|_| {
            (cfg.mirostat > 0)
                .then(|| Mirostat::new(cfg.mirostat, cfg.mirostat_tau, cfg.mirostat_eta))
        })
        .collect();
    let mut ctx = Context::start(model, start, g, cfg.max_new_tokens)?.with_mode(cfg.context);
    // Row r of the cache holds sample active[r].
    let mut active: Vec<usize> = (0..g).collect();
    let mut row_logits = Vec::new();
    loop {
        let mut done = vec![false; active.len()];
        for (r, &s) in active.iter().enumerate() {
            let pos = gens[s].tokens.len();
            let raw = ctx.logits(r);
            row_logits.clear();
            row_logits.extend_from_slice(raw);
            procs.penalize(&mut row_logits, &seqs[s], n_prompt);
            guards[s].apply_bans(&mut row_logits, &gens[s].tokens);
            let pick = match (sampling, mirostats[s].as_mut()) {
                (false, _) => argmax(&row_logits),
                // Mirostat draws after temperature alone, as llama.cpp chains it.
                (true, Some(m)) => {
                    temperature(&mut row_logits, cfg.temperature);
                    m.sample(&mut row_logits, &mut rngs[s])
                }
                (true, None) => {
                    procs.warp(&mut row_logits, 1);
                    xtc(
                        &mut row_logits,
                        cfg.xtc_probability,
                        cfg.xtc_threshold,
                        1,
                        &mut rngs[s],
                    );
                    sample_logits(&row_logits, &mut rngs[s])
                }
            };
            let tok = pick.ok_or_else(|| {
                anyhow!("every token was filtered out at generated position {pos} (all logits -inf): loosen the filters or penalties")
            })?;
            if eot == Some(tok as u32) {
                gens[s].finished_by = FinishReason::Eot;
                done[r] = true;
                continue;
            }
            let tok = tok as u32;
            let logprob = (raw[tok as usize] as f64 - logsumexp(raw)) as f32;
            seqs[s].push(tok);
            gens[s].tokens.push(tok);
            gens[s].logprobs.push(logprob);
            if !hold_back {
                on_token(first + s, tok);
            }
            if !cfg.stop.is_empty() {
                let bytes = vocab.token_bytes(tok)?;
                if let Some((index, at_byte)) = scans[s].push(&bytes, &cfg.stop) {
                    gens[s].finished_by = FinishReason::Stop { index, at_byte };
                    done[r] = true;
                    continue;
                }
            }
            if let Some(event) = guards[s].check(&cfg.loop_guard, &gens[s].tokens) {
                gens[s].loop_events.push(event);
                if event.action == LoopAction::Stop {
                    gens[s].finished_by = FinishReason::Loop;
                    done[r] = true;
                    continue;
                }
                let keep = event.position;
                gens[s].tokens.truncate(keep);
                gens[s].logprobs.truncate(keep);
                seqs[s].truncate(n_prompt + keep);
                ctx.rewind(r, seqs[s].len());
                if !cfg.stop.is_empty() {
                    scans[s] = StopScan::default();
                    for &t in &gens[s].tokens {
                        // No stop string was found in these bytes before, nor is now.
                        scans[s].push(&vocab.token_bytes(t)?, &cfg.stop);
                    }
                }
            }
            done[r] |= gens[s].tokens.len() == cfg.max_new_tokens;
        }
        let keep: Vec<usize> = (0..active.len()).filter(|&r| !done[r]).collect();
        if keep.is_empty() {
            break;
        }
        if keep.len() < active.len() {
            active = keep.iter().map(|&r| active[r]).collect();
            ctx.reorder(&keep)?;
        }
        let rows: Vec<&[u32]> = active.iter().map(|&s| seqs[s].as_slice()).collect();
        ctx.advance(&rows)?;
    }
    if hold_back {
        for (s, gen) in gens.iter().enumerate() {
            for &t in &gen.tokens {
                on_token(first + s, t);
            }
        }
    }
    Ok(gens)
}
