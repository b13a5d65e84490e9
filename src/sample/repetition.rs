//! Repetition metrics over generated token sequences (for `nanogpt repetition`).
//!
//! Definitions (n-grams are over token ids; pass words instead of ids for word-level numbers,
//! every function is generic over the item type):
//! - **rep-n** (Su et al. 2022, "A Contrastive Framework for Neural Text Generation"):
//!   `1 - sum_g unique_n(g) / sum_g total_n(g)`, where `unique_n(g)` counts the distinct n-grams
//!   *within* generation g and `total_n(g)` its n-grams (`len - n + 1`). Their evaluation script
//!   sums the per-generation counts over the set before dividing, as here. (It also skips each
//!   text's last n-gram, an off-by-one not reproduced here.)
//! - **diversity** (same paper): `(1 - rep-2) (1 - rep-3) (1 - rep-4)`.
//! - **distinct-n** (Li et al. 2016, the usual "distinct-n"): distinct n-grams across *all*
//!   generations / all n-grams. Low when samples repeat each other, not only themselves.
//! - **seq-rep-n** (Welleck et al. 2019, "Neural Text Generation with Unlikelihood Training"):
//!   per continuation `1 - unique_n / total_n`, averaged over continuations (a macro average,
//!   where rep-n is a micro average). The papers use n = 4.
//! - **ends in a loop** (after Holtzman et al. 2019's share of generations that end in a
//!   repetition loop): the generation ends with a phrase of at least `min_period` (3) tokens
//!   repeated back to back at least `min_copies` (2) times, up to the end. Precisely: for some
//!   period p in `min_period..=max_period`, the last L tokens satisfy `s[i] == s[i - p]` for every
//!   i in the last L - p positions, with L >= `min_copies * p` and L >= `min_tokens`. A final
//!   partial copy counts (generation is usually cut mid-phrase by `max_new_tokens`). Shorter
//!   cycles count once a 3+-token phrase made of them repeats: a token 6 times ("x x x" twice),
//!   a 2-token cycle 8 times ("a b a b" twice).
//! - **mean log-probability**: the mean over all generated tokens of the model's log-probability
//!   of the token given its context (from the raw logits, see [`super::Generation::logprobs`]).
//!
//! Generations shorter than n contribute no n-grams; a set without any n-gram gives 0 for rep-n,
//! seq-rep-n and distinct-n (there is nothing repeated, and nothing distinct).

use serde::Serialize;
use std::collections::HashSet;
use std::hash::Hash;

/// (distinct n-grams, n-grams) of one sequence.
pub fn ngram_counts<T: Hash + Eq>(seq: &[T], n: usize) -> (usize, usize) {
    if n == 0 || seq.len() < n {
        return (0, 0);
    }
    let set: HashSet<&[T]> = seq.windows(n).collect();
    (set.len(), seq.len() - n + 1)
}

/// Su et al.'s rep-n over a set of generations (see the module docs), in [0, 1].
pub fn rep_n<T: Hash + Eq>(gens: &[&[T]], n: usize) -> f64 {
    let (mut unique, mut total) = (0usize, 0usize);
    for g in gens {
        let (u, t) = ngram_counts(g, n);
        unique += u;
        total += t;
    }
    if total == 0 {
        0.0
    } else {
        1.0 - unique as f64 / total as f64
    }
}

/// Su et al.'s diversity: the product of (1 - rep-n) for n = 2, 3, 4.
pub fn diversity<T: Hash + Eq>(gens: &[&[T]]) -> f64 {
    (2..=4).map(|n| 1.0 - rep_n(gens, n)).product()
}

/// Li et al.'s distinct-n: distinct n-grams over all generations / all n-grams.
pub fn distinct_n<T: Hash + Eq>(gens: &[&[T]], n: usize) -> f64 {
    let mut set: HashSet<&[T]> = HashSet::new();
    let mut total = 0usize;
    for g in gens {
        if n == 0 || g.len() < n {
            continue;
        }
        set.extend(g.windows(n));
        total += g.len() - n + 1;
    }
    if total == 0 {
        0.0
    } else {
        set.len() as f64 / total as f64
    }
}

/// Welleck et al.'s seq-rep-n of one continuation: 1 - distinct n-grams / n-grams.
pub fn seq_rep_n_one<T: Hash + Eq>(seq: &[T], n: usize) -> f64 {
    let (u, t) = ngram_counts(seq, n);
    if t == 0 {
        0.0
    } else {
        1.0 - u as f64 / t as f64
    }
}

/// seq-rep-n averaged over continuations (those too short for one n-gram count as 0).
pub fn seq_rep_n<T: Hash + Eq>(gens: &[&[T]], n: usize) -> f64 {
    if gens.is_empty() {
        return 0.0;
    }
    gens.iter().map(|g| seq_rep_n_one(g, n)).sum::<f64>() / gens.len() as f64
}

/// What counts as ending in a loop (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct LoopRule {
    pub min_period: usize,
    /// Longest phrase considered; `usize::MAX` = up to half the sequence.
    pub max_period: usize,
    pub min_copies: usize,
    pub min_tokens: usize,
}

impl Default for LoopRule {
    fn default() -> Self {
        LoopRule {
            min_period: 3,
            max_period: usize::MAX,
            min_copies: 2,
            min_tokens: 0,
        }
    }
}

/// The loop a sequence ends in: `(period, tokens covered)` for the shortest period that
/// qualifies under `rule`, or `None`.
pub fn trailing_loop<T: PartialEq>(seq: &[T], rule: &LoopRule) -> Option<(usize, usize)> {
    let n = seq.len();
    let copies = rule.min_copies.max(1);
    let max_p = rule.max_period.min(n / copies);
    for p in rule.min_period.max(1)..=max_p {
        // Length of the periodic tail: p + the run of trailing positions with s[i] == s[i-p].
        let run = (p..n).rev().take_while(|&i| seq[i] == seq[i - p]).count();
        let covered = run + p;
        if covered >= copies * p && covered >= rule.min_tokens {
            return Some((p, covered));
        }
    }
    None
}

pub fn ends_in_loop<T: PartialEq>(seq: &[T], rule: &LoopRule) -> bool {
    trailing_loop(seq, rule).is_some()
}

/// The metrics of one set of generations (one decoding setting), as the report's table row.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RepetitionStats {
    pub samples: usize,
    pub tokens: usize,
    pub rep_2: f64,
    pub rep_3: f64,
    pub rep_4: f64,
    pub diversity: f64,
    pub distinct_1: f64,
    pub distinct_2: f64,
    pub distinct_3: f64,
    pub distinct_4: f64,
    pub seq_rep_4: f64,
    /// Share of generations that end in a loop.
    pub loop_share: f64,
    /// Mean log-probability per generated token (`None` without log-probs or tokens).
    pub mean_logprob: Option<f64>,
}

/// Mean of all log-probabilities given (all tokens of all generations pooled).
pub fn mean_logprob(logprobs: &[&[f32]]) -> Option<f64> {
    let n: usize = logprobs.iter().map(|l| l.len()).sum();
    if n == 0 {
        return None;
    }
    Some(
        logprobs
            .iter()
            .flat_map(|l| l.iter())
            .map(|&x| x as f64)
            .sum::<f64>()
            / n as f64,
    )
}

/// Every metric for `gens` (token ids), with the log-probs of the same tokens when known.
pub fn measure(gens: &[&[u32]], logprobs: &[&[f32]], rule: &LoopRule) -> RepetitionStats {
    let loops = gens.iter().filter(|g| ends_in_loop(g, rule)).count();
    RepetitionStats {
        samples: gens.len(),
        tokens: gens.iter().map(|g| g.len()).sum(),
        rep_2: rep_n(gens, 2),
        rep_3: rep_n(gens, 3),
        rep_4: rep_n(gens, 4),
        diversity: diversity(gens),
        distinct_1: distinct_n(gens, 1),
        distinct_2: distinct_n(gens, 2),
        distinct_3: distinct_n(gens, 3),
        distinct_4: distinct_n(gens, 4),
        seq_rep_4: seq_rep_n(gens, 4),
        loop_share: if gens.is_empty() {
            0.0
        } else {
            loops as f64 / gens.len() as f64
        },
        mean_logprob: mean_logprob(logprobs),
    }
}

/// [`measure`] on [`super::Generation`]s.
pub fn measure_generations(gens: &[super::Generation], rule: &LoopRule) -> RepetitionStats {
    let toks: Vec<&[u32]> = gens.iter().map(|g| g.tokens.as_slice()).collect();
    let lps: Vec<&[f32]> = gens.iter().map(|g| g.logprobs.as_slice()).collect();
    measure(&toks, &lps, rule)
}
