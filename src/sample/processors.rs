//! Logits processors with Hugging Face `transformers` semantics, each on one row of logits (the
//! real vocabulary; padded columns never reach here). Filtered tokens become -inf.
//!
//! [`Processors::apply`] runs them in the order `generate` does:
//! 1. penalties (always, also for greedy and beam search): `sequence_bias`, `repetition_penalty`,
//!    `no_repeat_ngram_size`, `bad_words_ids`, `exponential_decay_length_penalty`, then the two
//!    that transformers does not have, placed with the penalties as llama.cpp does (before
//!    temperature): OpenAI's `frequency_penalty` / `presence_penalty`, then DRY;
//! 2. warpers (only when sampling): temperature, top_k, top_p, min_p, typical_p,
//!    epsilon_cutoff, eta_cutoff, then llama.cpp's top-n-sigma (its cut scales with the logits,
//!    so its place after temperature changes nothing).
//!
//! "Keep at least `min_keep`" is transformers' `min_tokens_to_keep`: 1 when sampling, 2 in beam
//! sampling.

use super::config::{LengthDecay, SamplingConfig};
use super::dist::softmax;
use super::dry;
use std::collections::HashMap;

/// logits /= temperature (`TemperatureLogitsWarper`).
pub fn temperature(logits: &mut [f32], t: f32) {
    for v in logits.iter_mut() {
        *v /= t;
    }
}

/// Removes every token whose logit is below the k-th largest (`TopKLogitsWarper`): ties with the
/// k-th value are kept, so more than k tokens may survive.
pub fn top_k(logits: &mut [f32], k: usize, min_keep: usize) {
    let k = k.max(min_keep).min(logits.len());
    if k == 0 || k == logits.len() {
        return;
    }
    let kth = kth_largest(logits, k);
    for v in logits.iter_mut() {
        if *v < kth {
            *v = f32::NEG_INFINITY;
        }
    }
}

/// The k-th largest value of a non-empty row (1 <= k <= len).
fn kth_largest(x: &[f32], k: usize) -> f32 {
    let mut vals: Vec<f32> = x.to_vec();
    // Descending: the k-th largest ends at index k-1. NaN sorts last.
    let (_, kth, _) = vals.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
    *kth
}

/// Removes tokens with probability below `cut`, except those whose logit is at least the
/// `min_keep`-th largest (transformers' rule in the epsilon and eta warpers).
fn cut_below(logits: &mut [f32], probs: &[f64], cut: f64, min_keep: usize) {
    if logits.is_empty() {
        return;
    }
    let keep_from = kth_largest(logits, min_keep.clamp(1, logits.len()));
    for (v, &p) in logits.iter_mut().zip(probs) {
        if p < cut && *v < keep_from {
            *v = f32::NEG_INFINITY;
        }
    }
}

/// Epsilon sampling (`EpsilonLogitsWarper`, Hewitt et al. 2022): removes tokens whose
/// probability is below `epsilon`; the `min_keep` most likely always stay.
pub fn epsilon_cutoff(logits: &mut [f32], epsilon: f32, min_keep: usize) {
    let probs = softmax(logits);
    cut_below(logits, &probs, epsilon as f64, min_keep);
}

/// Eta sampling (`EtaLogitsWarper`, Hewitt et al. 2022): as [`epsilon_cutoff`] with the cut
/// min(eta, sqrt(eta) * exp(-H)), H the entropy of the row: a flat distribution keeps more tokens.
pub fn eta_cutoff(logits: &mut [f32], eta: f32, min_keep: usize) {
    let probs = softmax(logits);
    let entropy: f64 = -probs
        .iter()
        .filter(|&&p| p > 0.0)
        .map(|&p| p * p.ln())
        .sum::<f64>();
    let eta = eta as f64;
    cut_below(
        logits,
        &probs,
        eta.min(eta.sqrt() * (-entropy).exp()),
        min_keep,
    );
}

/// Indices of the tokens still in play (logit > -inf) sorted by logit, ascending; ties in
/// index order (a stable sort, as torch's). Filtered tokens would sort first with probability
/// 0, so leaving them out changes nothing and spares sorting the whole vocabulary after top_k.
fn ascending_order(logits: &[f32]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..logits.len())
        .filter(|&i| logits[i] > f32::NEG_INFINITY)
        .collect();
    idx.sort_by(|&a, &b| logits[a].total_cmp(&logits[b]));
    idx
}

/// Nucleus filtering (`TopPLogitsWarper`): sort ascending, accumulate probabilities, and remove
/// the tokens whose cumulative probability is <= 1 - p; the `min_keep` most likely always stay.
///
/// The ascending cumulative sum at a token is 1 minus the mass of the tokens ranked above it, so
/// this walks down from the most likely token instead, over a partial sort that grows until the
/// cut is found (usually a few hundred tokens, not the whole vocabulary).
pub fn top_p(logits: &mut [f32], p: f32, min_keep: usize) {
    if p >= 1.0 {
        return;
    }
    let probs = softmax(logits);
    let total: f64 = probs.iter().sum();
    let threshold = 1.0 - p as f64;
    let mut live: Vec<usize> = (0..logits.len())
        .filter(|&i| logits[i] > f32::NEG_INFINITY)
        .collect();
    // Descending by logit; among ties the higher index first (the reverse of a stable
    // ascending sort, which removes the lower index first).
    let desc = |a: &usize, b: &usize| logits[*b].total_cmp(&logits[*a]).then(b.cmp(a));
    let mut m = 256.min(live.len());
    let kept = loop {
        if m < live.len() {
            live.select_nth_unstable_by(m - 1, desc);
        }
        live[..m].sort_by(desc);
        let mut above = 0.0f64;
        let mut cut = None;
        for (rank, &i) in live[..m].iter().enumerate() {
            if rank >= min_keep && total - above <= threshold {
                cut = Some(rank);
                break;
            }
            above += probs[i];
        }
        match cut {
            Some(c) => break c,
            None if m == live.len() => break m,
            None => m = (2 * m).min(live.len()),
        }
    };
    for &i in &live[kept..] {
        logits[i] = f32::NEG_INFINITY;
    }
}

/// Min-p filtering (`MinPLogitsWarper`): remove tokens whose probability is below
/// `min_p` x the top probability; the `min_keep` most likely always stay.
pub fn min_p(logits: &mut [f32], min_p: f32, min_keep: usize) {
    let probs = softmax(logits);
    let top = probs.iter().copied().fold(0.0f64, f64::max);
    let cut = min_p as f64 * top;
    let mut protect = vec![false; logits.len()];
    if min_keep > 1 {
        let order = ascending_order(logits);
        for &i in order.iter().rev().take(min_keep) {
            protect[i] = true;
        }
    } else if let Some(i) = super::dist::argmax(logits) {
        protect[i] = true;
    }
    for (i, v) in logits.iter_mut().enumerate() {
        if probs[i] < cut && !protect[i] {
            *v = f32::NEG_INFINITY;
        }
    }
}

/// Locally typical filtering (`TypicalLogitsWarper`, Meister et al. 2022): rank tokens by
/// |-log p - H| (H the entropy), and keep them in that order until their probability mass reaches
/// `mass` (the token that crosses it included, and every token as typical as it); the `min_keep`
/// most typical always stay.
pub fn typical_p(logits: &mut [f32], mass: f32, min_keep: usize) {
    if mass >= 1.0 {
        return;
    }
    let probs = softmax(logits);
    let logp: Vec<f64> = probs.iter().map(|&p| p.ln()).collect();
    let entropy: f64 = -probs
        .iter()
        .zip(&logp)
        .filter(|(&p, _)| p > 0.0)
        .map(|(&p, &lp)| p * lp)
        .sum::<f64>();
    let shifted: Vec<f64> = logp.iter().map(|&lp| (-lp - entropy).abs()).collect();
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| shifted[a].total_cmp(&shifted[b]));
    // last_ind = number of tokens (in typicality order) whose cumulative mass is below `mass`.
    let mut cum = 0.0f64;
    let mut last_ind = 0usize;
    for &i in &order {
        cum += probs[i];
        if cum < mass as f64 {
            last_ind += 1;
        } else {
            break;
        }
    }
    let last_ind = last_ind.min(order.len().saturating_sub(1));
    let limit = shifted[order[last_ind]];
    for (rank, &i) in order.iter().enumerate() {
        if rank >= min_keep && shifted[i] > limit {
            logits[i] = f32::NEG_INFINITY;
        }
    }
}

/// CTRL's repetition penalty (`RepetitionPenaltyLogitsProcessor`): for every distinct token of
/// `seq` (prompt included), a positive logit is divided by `penalty`, a negative one multiplied.
pub fn repetition_penalty(logits: &mut [f32], seq: &[u32], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    let mut ids: Vec<u32> = seq.to_vec();
    ids.sort_unstable();
    ids.dedup();
    for id in ids {
        if let Some(v) = logits.get_mut(id as usize) {
            *v = if *v < 0.0 { *v * penalty } else { *v / penalty };
        }
    }
}

/// The tokens that would complete an n-gram already in `seq` (`NoRepeatNGramLogitsProcessor`):
/// every token that followed an earlier occurrence of the last n-1 tokens. n = 1 bans every token
/// seen.
pub fn banned_ngram_tokens(seq: &[u32], n: usize) -> Vec<u32> {
    if n == 0 || seq.len() + 1 < n {
        return Vec::new();
    }
    let len = seq.len();
    let prefix = &seq[len + 1 - n..];
    let mut banned: Vec<u32> = (0..=len.saturating_sub(n))
        .filter(|&i| i + n <= len && &seq[i..i + n - 1] == prefix)
        .map(|i| seq[i + n - 1])
        .collect();
    banned.sort_unstable();
    banned.dedup();
    banned
}

/// Sets the logits of [`banned_ngram_tokens`] to -inf.
pub fn no_repeat_ngram(logits: &mut [f32], seq: &[u32], n: usize) {
    for id in banned_ngram_tokens(seq, n) {
        if let Some(v) = logits.get_mut(id as usize) {
            *v = f32::NEG_INFINITY;
        }
    }
}

/// OpenAI's penalties: logit[j] -= c[j] * frequency + (c[j] > 0) * presence, where c[j] counts
/// token j in `generated`. OpenAI describes c[j] as how often the token was sampled so far, so the
/// prompt is not counted (llama.cpp counts its whole penalty window, prompt included).
pub fn frequency_presence(logits: &mut [f32], generated: &[u32], frequency: f32, presence: f32) {
    if frequency == 0.0 && presence == 0.0 {
        return;
    }
    let mut counts: HashMap<u32, u32> = HashMap::new();
    for &t in generated {
        *counts.entry(t).or_insert(0) += 1;
    }
    for (t, c) in counts {
        if let Some(v) = logits.get_mut(t as usize) {
            *v -= c as f32 * frequency + presence;
        }
    }
}

/// Adds each bias to its sequence's last token when `seq` ends with the rest of the sequence (a
/// one-token sequence: always): `SequenceBiasLogitsProcessor`, and with a bias of -inf,
/// `NoBadWordsLogitsProcessor`.
pub fn sequence_bias(logits: &mut [f32], seq: &[u32], biases: &[(Vec<u32>, f32)]) {
    for (ids, bias) in biases {
        let Some((&last, prefix)) = ids.split_last() else {
            continue;
        };
        if seq.ends_with(prefix) {
            if let Some(v) = logits.get_mut(last as usize) {
                *v += bias;
            }
        }
    }
}

/// `ExponentialDecayLengthPenalty`: once more than `decay.start` tokens are generated, the
/// end-of-text logit x gains |x| * (factor^(generated - start) - 1), so a negative log-prob
/// moves towards 0 as well as a positive logit grows.
pub fn exponential_decay_length_penalty(
    logits: &mut [f32],
    generated: usize,
    decay: LengthDecay,
    eot: u32,
) {
    if generated <= decay.start {
        return;
    }
    let Some(v) = logits.get_mut(eot as usize) else {
        return;
    };
    if v.is_finite() {
        let steps = i32::try_from(generated - decay.start).unwrap_or(i32::MAX);
        *v += v.abs() * ((decay.factor as f64).powi(steps) - 1.0) as f32;
    }
}

/// Equal sequences keep the last bias given (transformers keeps them in a dict).
fn dedup_sequences(biases: impl Iterator<Item = (Vec<u32>, f32)>) -> Vec<(Vec<u32>, f32)> {
    let mut out: Vec<(Vec<u32>, f32)> = Vec::new();
    for (ids, bias) in biases {
        match out.iter_mut().find(|(seen, _)| *seen == ids) {
            Some(entry) => entry.1 = bias,
            None => out.push((ids, bias)),
        }
    }
    out
}

/// The processors a [`SamplingConfig`] switches on, ready to run on rows.
pub struct Processors<'a> {
    cfg: &'a SamplingConfig,
    breakers: Vec<bool>,
    eot: Option<u32>,
    biases: Vec<(Vec<u32>, f32)>,
    bad_words: Vec<(Vec<u32>, f32)>,
}

impl<'a> Processors<'a> {
    /// `eot` is the vocabulary's end-of-text token (transformers' EOS): what
    /// `exponential_decay_length_penalty` favours and `bad_words_ids` may not ban alone.
    pub fn new(cfg: &'a SamplingConfig, vocab_size: usize, eot: Option<u32>) -> Self {
        let mut breakers = vec![false; if cfg.dry_enabled() { vocab_size } else { 0 }];
        if cfg.dry_enabled() {
            for &b in &cfg.dry.breakers {
                if let Some(x) = breakers.get_mut(b as usize) {
                    *x = true;
                }
            }
        }
        let biases = dedup_sequences(cfg.sequence_bias.iter().cloned());
        let bad_words = dedup_sequences(
            cfg.bad_words_ids
                .iter()
                .filter(|w| eot.is_none_or(|e| w[..] != [e]))
                .map(|w| (w.clone(), f32::NEG_INFINITY)),
        );
        Processors {
            cfg,
            breakers,
            eot,
            biases,
            bad_words,
        }
    }

    /// Step 1: the penalties. `seq` is the whole sequence so far (prompt + generated), the last
    /// `seq.len() - n_prompt` tokens of it generated.
    pub fn penalize(&self, logits: &mut [f32], seq: &[u32], n_prompt: usize) {
        let c = self.cfg;
        sequence_bias(logits, seq, &self.biases);
        repetition_penalty(logits, seq, c.repetition_penalty);
        if c.no_repeat_ngram_size > 0 {
            no_repeat_ngram(logits, seq, c.no_repeat_ngram_size);
        }
        sequence_bias(logits, seq, &self.bad_words);
        let generated = &seq[n_prompt.min(seq.len())..];
        if let (Some(decay), Some(eot)) = (c.exponential_decay_length_penalty, self.eot) {
            exponential_decay_length_penalty(logits, generated.len(), decay, eot);
        }
        frequency_presence(logits, generated, c.frequency_penalty, c.presence_penalty);
        if c.dry_enabled() {
            dry::apply(logits, seq, &c.dry, &self.breakers);
        }
    }

    /// Step 2: the warpers (temperature and the filters).
    pub fn warp(&self, logits: &mut [f32], min_keep: usize) {
        let c = self.cfg;
        let ordered = !c.samplers.0.is_empty();
        if ordered {
            super::llama_samplers::warp_in_order(c, logits, min_keep);
        } else {
            if c.temperature != 1.0 && c.temperature > 0.0 {
                temperature(logits, c.temperature);
            }
            if let Some(k) = c.top_k.filter(|&k| k > 0) {
                top_k(logits, k, min_keep);
            }
            if let Some(p) = c.top_p.filter(|&p| p < 1.0) {
                top_p(logits, p, min_keep);
            }
            if let Some(p) = c.min_p {
                min_p(logits, p, min_keep);
            }
            if let Some(p) = c.typical_p.filter(|&p| p < 1.0) {
                typical_p(logits, p, min_keep);
            }
        }
        // Hugging Face's own cutoffs, which llama.cpp's sampler order has no names for: after
        // the ordered filters when `samplers` is given.
        if let Some(e) = c.epsilon_cutoff {
            epsilon_cutoff(logits, e, min_keep);
        }
        if let Some(e) = c.eta_cutoff {
            eta_cutoff(logits, e, min_keep);
        }
        if let (false, Some(n)) = (ordered, c.top_n_sigma) {
            super::llama_samplers::top_n_sigma(logits, n);
        }
    }

    /// Both steps, the warpers only when the config samples (as `generate`).
    pub fn apply(&self, logits: &mut [f32], seq: &[u32], n_prompt: usize, min_keep: usize) {
        self.penalize(logits, seq, n_prompt);
        if self.cfg.sampling() {
            self.warp(logits, min_keep);
        }
    }
}
