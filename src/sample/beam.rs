//! Beam search with Hugging Face `transformers` semantics (`generate(num_beams=...)`), the beams
//! kept as rows of one KV-cache batch (rows reordered each step).
//!
//! Each step, for each running beam (of each group, in diverse beam search): log_softmax of its logits, the penalties of
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
//! **Diverse beam search** (`num_beam_groups > 1`, Vijayakumar et al. 2016, as transformers'
//! group beam search): the beams form `num_beam_groups` groups of `num_beams / num_beam_groups`,
//! each a beam search of its own (its first beam starts at 0, its own finished hypotheses, its
//! own stop), and each step the groups choose in turn: before the penalties, a group's log-prob
//! of a token drops by `diversity_penalty` for every beam of an earlier group that took the token
//! at this step (Hamming diversity). The hypotheses of all groups are returned together, best
//! first. A group that is done stops (transformers keeps feeding it padding, whose token then
//! counts in the later groups' penalty).
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

/// One group of beams (all the beams, without diverse beam search), with its own finished
/// hypotheses.
struct Group {
    beams: Vec<Beam>,
    finished: Vec<Finished>,
    /// Running beams may still beat the worst finished hypothesis.
    improvable: bool,
}

/// What one step needs besides the group.
struct Step<'a> {
    cfg: &'a SamplingConfig,
    procs: &'a Processors<'a>,
    vocab: &'a dyn Vocab,
    start: &'a [u32],
    eot: Option<u32>,
    step: usize,
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
    let procs = Processors::new(cfg, model.config().vocab_size, vocab.eot());
    let mut rng = sample_rng(cfg.seed, 0);
    let size = nb / cfg.num_beam_groups;
    let mut ctx = Context::start(model, &start, nb, cfg.max_new_tokens)?.with_mode(cfg.context);
    // Each group's first beam starts at 0, the others at -1e9: the first step expands one copy
    // of the prompt per group.
    let mut groups: Vec<Group> = (0..cfg.num_beam_groups)
        .map(|_| Group {
            beams: (0..size)
                .map(|i| Beam {
                    tokens: Vec::new(),
                    logprobs: Vec::new(),
                    score: if i == 0 { 0.0 } else { -1e9 },
                    scan: StopScan::default(),
                })
                .collect(),
            finished: Vec::new(),
            improvable: true,
        })
        .collect();
    let mut st = Step {
        cfg,
        procs: &procs,
        vocab,
        start: &start,
        eot: if cfg.stop_at_eot { vocab.eot() } else { None },
        step: 0,
    };
    for step in 0..cfg.max_new_tokens {
        st.step = step;
        // The groups choose in turn; a group's beams are the cache rows after the earlier
        // groups' ones. `chosen` holds the tokens the earlier groups' beams took at this step.
        let mut chosen: Vec<u32> = Vec::new();
        let mut rows: Vec<usize> = Vec::with_capacity(nb);
        let mut first_row = 0;
        for group in groups.iter_mut() {
            let n_rows = group.beams.len();
            let src = step_group(group, &st, &ctx, first_row, &mut chosen, &mut rng)?;
            rows.extend(src.iter().map(|&b| first_row + b));
            first_row += n_rows;
        }
        if rows.is_empty() || step + 1 == cfg.max_new_tokens {
            break;
        }
        // Feed the new tokens: the cache rows follow their beams.
        ctx.reorder(&rows)?;
        let seqs: Vec<Vec<u32>> = groups
            .iter()
            .flat_map(|g| &g.beams)
            .map(|b| [&start[..], &b.tokens].concat())
            .collect();
        let refs: Vec<&[u32]> = seqs.iter().map(|s| s.as_slice()).collect();
        ctx.advance(&refs)?;
    }
    // Every group's hypotheses, best first; a stable sort keeps earlier groups first on ties.
    let mut finished: Vec<Finished> = groups.into_iter().flat_map(|g| g.finished).collect();
    finished.sort_by(|a, b| b.score.total_cmp(&a.score));
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

/// One step of one group, whose beams are the cache rows from `first_row` on: chooses the
/// group's next beams (replacing `group.beams`; none once the group is done) and returns, for
/// each, the index of the beam it extends. `chosen` holds the tokens earlier groups took at this
/// step (diverse beam search); this group's are appended.
fn step_group(
    group: &mut Group,
    st: &Step,
    ctx: &Context,
    first_row: usize,
    chosen: &mut Vec<u32>,
    rng: &mut crate::rng::Rng,
) -> Result<Vec<usize>> {
    let (cfg, step) = (st.cfg, st.step);
    let size = cfg.num_beams / cfg.num_beam_groups;
    if group.beams.is_empty() {
        return Ok(Vec::new());
    }
    let sampling = cfg.sampling();
    let n_prompt = st.start.len();
    // At least one candidate per beam that does not end with the end-of-text token.
    let keep = 2 * size;
    let lp = cfg.length_penalty as f64;
    let norm = |score: f32, len: usize| (score as f64 / (len as f64).powf(lp)) as f32;
    let beams = &group.beams;

    // a. Scores of every continuation of every beam; keep each beam's best `keep`.
    let mut raw_logp: Vec<Vec<f32>> = Vec::with_capacity(beams.len());
    let mut cands: Vec<Candidate> = Vec::new();
    let mut all_scores: Vec<f32> = Vec::new(); // beam sampling: every accumulated score
    let mut seq: Vec<u32> = Vec::new();
    for (b, beam) in beams.iter().enumerate() {
        let mut row = ctx.logits(first_row + b).to_vec();
        log_softmax_inplace(&mut row);
        raw_logp.push(row.clone());
        // Hamming diversity first: transformers runs it right after sequence_bias, and both
        // only add to the scores.
        for &t in chosen.iter() {
            if let Some(v) = row.get_mut(t as usize) {
                *v -= cfg.diversity_penalty;
            }
        }
        seq.clear();
        seq.extend_from_slice(st.start);
        seq.extend_from_slice(&beam.tokens);
        st.procs.penalize(&mut row, &seq, n_prompt);
        if sampling {
            st.procs.warp(&mut row, 2);
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
        let vocab_size = all_scores.len() / beams.len();
        cands = draw_candidates(&all_scores, vocab_size, keep, rng);
    }
    // b. The best `keep` over the group's beams, best first (ties: lower beam, then lower token).
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
        let mut end = if st.eot == Some(c.token) {
            Some(FinishReason::Eot)
        } else {
            None
        };
        if end.is_none() && !cfg.stop.is_empty() {
            let mut s = beams[c.beam].scan.clone();
            if let Some((index, at_byte)) = s.push(&st.vocab.token_bytes(c.token)?, &cfg.stop) {
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

    // d. Finished hypotheses: only those ranked among the first `size`.
    let finished = &mut group.finished;
    let full = finished.len() == size && cfg.early_stopping == EarlyStopping::True;
    if group.improvable && !full {
        for (rank, c) in cands.iter().enumerate().take(size) {
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
        finished.truncate(size);
    }

    // e. The next running beams: the first `size` candidates that do not end. The tokens the
    // later groups must differ from are theirs, and at the last step those of the candidates
    // that end only by length (transformers picks the next beams before it finalises them).
    let mut next: Vec<Beam> = Vec::with_capacity(size);
    let mut rows: Vec<usize> = Vec::with_capacity(size);
    let earlier = chosen.len();
    for (rank, c) in cands.iter().enumerate() {
        if next.len() == size || chosen.len() - earlier == size {
            break;
        }
        if last_step && ends[rank] == Some(FinishReason::Length) {
            chosen.push(c.token);
        }
        if ends[rank].is_some() {
            continue;
        }
        chosen.push(c.token);
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

    // f. The group is done when no running beam can improve its finished hypotheses.
    if finished.len() == size && !next.is_empty() && !last_step {
        let len = match cfg.early_stopping {
            EarlyStopping::Never if lp > 0.0 => cfg.max_new_tokens,
            _ => step + 1,
        };
        let best_running = norm(next[0].score, len);
        let worst = finished
            .iter()
            .map(|f| f.score)
            .fold(f32::INFINITY, f32::min);
        group.improvable &= best_running > worst;
        if !group.improvable || cfg.early_stopping == EarlyStopping::True {
            next.clear();
            rows.clear();
        }
    }
    group.beams = next;
    Ok(rows)
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
