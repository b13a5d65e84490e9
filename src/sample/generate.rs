//! Greedy decoding and sampling: several samples decoded as one batch over a KV cache.

use super::beam::beam_search;
use super::config::SamplingConfig;
use super::context::Context;
use super::contrastive::contrastive_search;
use super::loop_guard::LoopGuardMode;
use super::processors::Processors;
use super::row::RowSampler;
use super::sequence::{start_tokens, Generation};
use super::stop::Vocab;
use crate::engine::Engine;
use anyhow::Result;

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
    if cfg.max_new_tokens == 0 {
        return Ok((0..g).map(|_| Generation::new()).collect());
    }
    let procs = Processors::new(cfg, model.config().vocab_size, vocab.eot());
    // A backtrack deletes tokens, so with it on tokens reach `on_token` once their batch is done
    // (in sample order, which is what the streaming printer expects), never to be taken back.
    let hold_back = cfg.loop_guard.mode == LoopGuardMode::Backtrack;
    let mut rows: Vec<RowSampler> = (0..g)
        .map(|i| RowSampler::new(cfg, start, first + i))
        .collect();
    let mut ctx = Context::start(model, start, g, cfg.max_new_tokens)?.with_mode(cfg.context);
    // Row r of the cache holds sample active[r].
    let mut active: Vec<usize> = (0..g).collect();
    loop {
        let mut done = vec![false; active.len()];
        for (r, &s) in active.iter().enumerate() {
            let step = rows[s].step(ctx.logits(r), &procs, cfg, vocab)?;
            if let (Some(tok), false) = (step.token, hold_back) {
                on_token(first + s, tok);
            }
            if step.rewound_to.is_some() {
                ctx.rewind(r, rows[s].sequence().len());
            }
            done[r] = step.done;
        }
        let keep: Vec<usize> = (0..active.len()).filter(|&r| !done[r]).collect();
        if keep.is_empty() {
            break;
        }
        if keep.len() < active.len() {
            active = keep.iter().map(|&r| active[r]).collect();
            ctx.reorder(&keep)?;
        }
        let seqs: Vec<&[u32]> = active.iter().map(|&s| rows[s].sequence()).collect();
        ctx.advance(&seqs)?;
    }
    let gens: Vec<Generation> = rows.into_iter().map(|r| r.gen).collect();
    if hold_back {
        for (s, gen) in gens.iter().enumerate() {
            for &t in &gen.tokens {
                on_token(first + s, t);
            }
        }
    }
    Ok(gens)
}
