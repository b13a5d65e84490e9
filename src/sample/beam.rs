//! Beam search with Hugging Face `transformers` semantics (`generate(num_beams=...)`), the beams
//! kept as rows of one KV-cache batch (rows reordered each step).
//!
//! Each step, for each running beam: log_softmax of its logits, the penalties of
//! [`Processors::penalize`] applied to those log-probs (and, in beam *sampling*, the warpers with
//! at least 2 tokens kept), plus the beam's running score. Over all beams the best
//! `2 * num_beams` candidates are taken (beam sampling: drawn without replacement from the softmax
//! of the scores, then sorted). Candidates that end (end-of-text, a stop string, or
//! `max_new_tokens` reached) are finished hypotheses only if they rank among the first
//! `num_beams`; their score is `sum_logprobs / generated_len^length_penalty` (generated_len counts
//! the new tokens, the final end-of-text included), and the best `num_beams` finished hypotheses
//! are kept. The first `num_beams` candidates that do not end become the next running beams.
//! Search stops when every candidate ended (max length), when `early_stopping` is `True` and
//! `num_beams` hypotheses are finished, or (`False`/`Never`) when no running beam can beat the
//! worst finished one. The first beam starts at score 0 and the others at -1e9, so the first step
//! expands one copy of the prompt. Returned: the best `num_return_sequences` hypotheses, best
//! first.
//!
//! Without an end-of-text token (as in the conformance fixture) nothing finishes before
//! `max_new_tokens`, where the `num_beams` best candidates are finalised.
//!
//! Where stop strings end many candidates at once, fewer than `num_beams` beams may continue
//! (transformers would keep some finished ones running at a score of -1e9).

use super::config::{EarlyStopping, SamplingConfig};
use super::context::Context;
use super::dist::{log_softmax_inplace, sample_weights};
use super::processors::Processors;
use super::sequence::{sample_rng, start_tokens, FinishReason, Generation};
use super::stop::{StopScan, Vocab};
use crate::engine::Engine;
use anyhow::{bail, Result};

#[derive(Clone)]
struct Beam {
    tokens: Vec<u32>,
    logprobs: Vec<f32>,
    score: f32,
    scan: StopScan,
}

/// One continuation: beam `beam` extended by `token`, with accumulated score `score`.
#[derive(Clone, Copy, Debug)]
struct Candidate {
    beam: usize,
    token: u32,
    score: f32,
}

struct Finished {
    score: f32,
    generation: Generation,
}

/// The `k` best (score, token) of a row, best first (ties: lower token id first).
fn top_of_row(row: &[f32], k: usize) -> Vec<(f32, u32)> {
    let mut idx: Vec<u32> = (0..row.len() as u32)
        .filter(|&i| row[i as usize] > f32::NEG_INFINITY)
        .collect();
    let cmp = |a: &u32, b: &u32| row[*b as usize].total_cmp(&row[*a as usize]).then(a.cmp(b));
    if idx.len() > k {
        idx.select_nth_unstable_by(k - 1, cmp);
        idx.truncate(k);
    }
    idx.sort_by(cmp);
    idx.into_iter().map(|i| (row[i as usize], i)).collect()
}

/// Beam search from `prompt` (see the module docs). `on_token` gets each returned sequence's
/// tokens after the search.
pub fn beam_search(
    model: &dyn Engine,
    prompt: &[u32],
    cfg: &SamplingConfig,
    vocab: &dyn Vocab,
    on_token: &mut dyn FnMut(usize, u32),
) -> Result<Vec<Generation>> {
    cfg.validate()?;
    let start = start_tokens(model, prompt, vocab)?;
    let nb = cfg.num_beams;
    if cfg.max_new_tokens == 0 {
        let out: Vec<Generation> = (0..cfg.num_return_sequences)
            .map(|_| Generation {
                tokens: Vec::new(),
                logprobs: Vec::new(),
                finished_by: FinishReason::Length,
                score: Some(0.0),
                loop_events: Vec::new(),
            })
            .collect();
        return Ok(out);
    }
    let vocab_size = model.config().vocab_size;
    let procs = Processors::new(cfg, vocab_size);
    let eot = if cfg.stop_at_eot { vocab.eot() } else { None };
    let sampling = cfg.sampling();
    let mut rng = sample_rng(cfg.seed, 0);
    let n_prompt = start.len();
    // At least one candidate per beam that does not end with the end-of-text token.
    let keep = 2 * nb;
    let lp = cfg.length_penalty as f64;
    let norm = |score: f32, len: usize| (score as f64 / (len as f64).powf(lp)) as f32;

    let mut ctx = Context::start(model, &start, nb, cfg.max_new_tokens)?.with_mode(cfg.context);
    let mut beams: Vec<Beam> = (0..nb)
        .map(|i| Beam {
            tokens: Vec::new(),
            logprobs: Vec::new(),
            score: if i == 0 { 0.0 } else { -1e9 },
            scan: StopScan::default(),
        })
        .collect();
    let mut finished: Vec<Finished> = Vec::new();
    let mut improvable = true;
    let mut seq: Vec<u32> = Vec::new();
    let mut row = Vec::new();
    for step in 0..cfg.max_new_tokens {
        // a. Scores of every continuation of every beam; keep each beam's best `keep`.
        let mut raw_logp: Vec<Vec<f32>> = Vec::with_capacity(beams.len());
        let mut cands: Vec<Candidate> = Vec::new();
        let mut all_scores: Vec<f32> = Vec::new(); // beam sampling: every accumulated score
        for (b, beam) in beams.iter().enumerate() {
            row.clear();
            row.extend_from_slice(ctx.logits(b));
            log_softmax_inplace(&mut row);
            raw_logp.push(row.clone());
            seq.clear();
            seq.extend_from_slice(&start);
            seq.extend_from_slice(&beam.tokens);
            procs.penalize(&mut row, &seq, n_prompt);
            if sampling {
                procs.warp(&mut row, 2);
            }
            for v in row.iter_mut() {
                *v += beam.score;
            }
            if sampling {
                all_scores.extend_from_slice(&row);
            } else {
                cands.extend(
                    top_of_row(&row, keep)
                        .into_iter()
                        .map(|(score, token)| Candidate {
                            beam: b,
                            token,
                            score,
                        }),
                );
            }
        }
        if sampling {
            cands = draw_candidates(&all_scores, vocab_size, keep, &mut rng);
        }
        // b. The best `keep` over all beams, best first (ties: lower beam, then lower token).
        cands.sort_by(|a, b| {
            b.score
                .total_cmp(&a.score)
                .then(a.beam.cmp(&b.beam))
                .then(a.token.cmp(&b.token))
        });
        cands.truncate(keep);
        if cands.is_empty() {
            bail!("beam search: every continuation was filtered out at step {step}: loosen the penalties or filters");
        }

        // c. Which candidates end here.
        let last_step = step + 1 == cfg.max_new_tokens;
        let mut ends: Vec<Option<FinishReason>> = Vec::with_capacity(cands.len());
        let mut scans: Vec<Option<StopScan>> = Vec::with_capacity(cands.len());
        for c in &cands {
            let mut scan = None;
            let mut end = if eot == Some(c.token) {
                Some(FinishReason::Eot)
            } else {
                None
            };
            if end.is_none() && !cfg.stop.is_empty() {
                let mut s = beams[c.beam].scan.clone();
                if let Some((index, at_byte)) = s.push(&vocab.token_bytes(c.token)?, &cfg.stop) {
                    end = Some(FinishReason::Stop { index, at_byte });
                }
                scan = Some(s);
            }
            if end.is_none() && last_step {
                end = Some(FinishReason::Length);
            }
            ends.push(end);
            scans.push(scan);
        }

        // d. Finished hypotheses: only those ranked among the first `num_beams`.
        let full = finished.len() == nb && cfg.early_stopping == EarlyStopping::True;
        if improvable && !full {
            for (rank, c) in cands.iter().enumerate().take(nb) {
                let Some(reason) = ends[rank].clone() else {
                    continue;
                };
                let beam = &beams[c.beam];
                let mut tokens = beam.tokens.clone();
                let mut logprobs = beam.logprobs.clone();
                if reason != FinishReason::Eot {
                    tokens.push(c.token);
                    logprobs.push(raw_logp[c.beam][c.token as usize]);
                }
                let score = norm(c.score, step + 1);
                finished.push(Finished {
                    score,
                    generation: Generation {
                        tokens,
                        logprobs,
                        finished_by: reason,
                        score: Some(score),
                        loop_events: Vec::new(),
                    },
                });
            }
            // Best first; a stable sort keeps earlier hypotheses first among equal scores.
            finished.sort_by(|a, b| b.score.total_cmp(&a.score));
            finished.truncate(nb);
        }

        // e. The next running beams: the first `num_beams` candidates that do not end.
        let mut next: Vec<Beam> = Vec::with_capacity(nb);
        let mut rows: Vec<usize> = Vec::with_capacity(nb);
        for (rank, c) in cands.iter().enumerate() {
            if next.len() == nb {
                break;
            }
            if ends[rank].is_some() {
                continue;
            }
            let src = &beams[c.beam];
            let mut tokens = src.tokens.clone();
            tokens.push(c.token);
            let mut logprobs = src.logprobs.clone();
            logprobs.push(raw_logp[c.beam][c.token as usize]);
            next.push(Beam {
                tokens,
                logprobs,
                score: c.score,
                scan: scans[rank].take().unwrap_or_default(),
            });
            rows.push(c.beam);
        }
        beams = next;
        if beams.is_empty() || last_step {
            break;
        }

        // f. Stop when no running beam can improve the finished ones.
        let all_finished = finished.len() == nb;
        if all_finished {
            let len = match cfg.early_stopping {
                EarlyStopping::Never if lp > 0.0 => cfg.max_new_tokens,
                _ => step + 1,
            };
            let best_running = norm(beams[0].score, len);
            let worst = finished
                .iter()
                .map(|f| f.score)
                .fold(f32::INFINITY, f32::min);
            improvable &= best_running > worst;
            if !improvable || cfg.early_stopping == EarlyStopping::True {
                break;
            }
        }

        // g. Feed the new tokens: the cache rows follow their beams.
        ctx.reorder(&rows)?;
        let seqs: Vec<Vec<u32>> = beams
            .iter()
            .map(|b| {
                let mut s = start.clone();
                s.extend_from_slice(&b.tokens);
                s
            })
            .collect();
        let refs: Vec<&[u32]> = seqs.iter().map(|s| s.as_slice()).collect();
        ctx.advance(&refs)?;
    }
    if finished.is_empty() {
        bail!("beam search finished no hypothesis: loosen the penalties or raise max_new_tokens");
    }
    let out: Vec<Generation> = finished
        .into_iter()
        .take(cfg.num_return_sequences)
        .map(|f| f.generation)
        .collect();
    for (i, g) in out.iter().enumerate() {
        for &t in &g.tokens {
            on_token(i, t);
        }
    }
    Ok(out)
}

/// Beam sampling: `k` distinct candidates drawn without replacement from softmax(scores) over
/// all beams (flattened beam-major, `vocab` per beam).
fn draw_candidates(
    scores: &[f32],
    vocab: usize,
    k: usize,
    rng: &mut crate::rng::Rng,
) -> Vec<Candidate> {
    let m = super::dist::max_value(scores);
    if m == f32::NEG_INFINITY {
        return Vec::new();
    }
    let mut w: Vec<f64> = scores
        .iter()
        .map(|&s| (s as f64 - m as f64).exp())
        .collect();
    let mut out = Vec::with_capacity(k);
    while out.len() < k {
        let Some(i) = sample_weights(&w, rng) else {
            break;
        };
        w[i] = 0.0;
        out.push(Candidate {
            beam: i / vocab,
            token: (i % vocab) as u32,
            score: scores[i],
        });
    }
    out
}
