//! DRY, "don't repeat yourself" (p-e-w's sampler, as in text-generation-webui and llama.cpp).
//!
//! Semantics implemented (on token ids):
//! - The window `w` is the last `penalty_last_n` tokens of the sequence (prompt + generated), or
//!   all of it when `penalty_last_n` is `None`.
//! - For every earlier position `i` (`i < len(w) - 1`), the match length is the length of the
//!   longest common suffix of `w[..=i]` and `w`: how many of the last tokens repeat what came just
//!   before `w[i + 1]`. A repeat never contains a sequence-breaker token (a breaker on either side
//!   ends it), and `w[i + 1]` is not penalised when it is itself a breaker.
//! - Token `t` gets the longest match over all positions where `w[i + 1] == t`; if that length
//!   `n >= allowed_length`, its logit drops by `multiplier * base^(n - allowed_length)`.
//!   The exponent is capped so the penalty stays finite (at most ~1e30).
//!
//! So with allowed_length 2, after "... a b c ... a b" the token "c" is penalised by
//! `multiplier` (match "a b", length 2), and by `multiplier * base` if "x a b c" / "x a b"
//! repeat with the "x" too.
//!
//! Sequence breakers are token ids. llama.cpp takes strings and also matches breakers that span
//! several tokens; here [`breaker_ids`] marks every token whose text contains a breaker string
//! (so "\n\n" and ":\n" break too), which covers the usual single-character breakers.
//!
//! The matches come from one Z-function over the reversed window (O(len) per step), with every
//! breaker occurrence replaced by a value that matches nothing.

use super::config::DryConfig;
use anyhow::Result;

/// Largest penalty DRY subtracts (keeps logits finite even for very long repeats).
const MAX_PENALTY: f64 = 1e30;

/// Z-function: z[k] = length of the longest common prefix of `s` and `s[k..]` (z[0] = len).
pub fn z_function<T: PartialEq>(s: &[T]) -> Vec<usize> {
    let n = s.len();
    let mut z = vec![0usize; n];
    if n == 0 {
        return z;
    }
    z[0] = n;
    let (mut l, mut r) = (0usize, 0usize); // s[l..r] == s[..r-l], the rightmost such box
    for k in 1..n {
        let mut m = if k < r { z[k - l].min(r - k) } else { 0 };
        while k + m < n && s[m] == s[k + m] {
            m += 1;
        }
        z[k] = m;
        if k + m > r {
            l = k;
            r = k + m;
        }
    }
    z
}

/// For each candidate token, the longest repeat it would extend (see the module docs); pairs
/// (token, match length), in no particular order.
pub fn match_lengths(seq: &[u32], is_breaker: &dyn Fn(u32) -> bool) -> Vec<(u32, usize)> {
    let n = seq.len();
    if n < 2 || is_breaker(seq[n - 1]) {
        return Vec::new();
    }
    // Reversed window; breakers become unique values (above any u32 id) so no match spans them.
    let rev: Vec<u64> = seq
        .iter()
        .rev()
        .enumerate()
        .map(|(k, &t)| {
            if is_breaker(t) {
                (1u64 << 32) + k as u64
            } else {
                t as u64
            }
        })
        .collect();
    let z = z_function(&rev);
    let mut best: std::collections::HashMap<u32, usize> = std::collections::HashMap::new();
    // Position i in seq is index k = n - 1 - i in rev; i ranges over 0..n-1.
    for i in 0..n - 1 {
        let m = z[n - 1 - i];
        if m == 0 {
            continue;
        }
        let next = seq[i + 1];
        if is_breaker(next) {
            continue;
        }
        let e = best.entry(next).or_insert(0);
        *e = (*e).max(m);
    }
    best.into_iter().collect()
}

/// The DRY penalty for a repeat of length `n`, or 0 below `allowed_length`.
pub fn penalty(cfg: &DryConfig, n: usize) -> f32 {
    if n < cfg.allowed_length || cfg.multiplier == 0.0 {
        return 0.0;
    }
    let exp = (n - cfg.allowed_length) as f64;
    let p = cfg.multiplier as f64 * (cfg.base as f64).powf(exp);
    p.min(MAX_PENALTY) as f32
}

/// Subtracts the DRY penalties from `logits`. `breakers[id]` marks breaker tokens (ids beyond its
/// length are not breakers).
pub fn apply(logits: &mut [f32], seq: &[u32], cfg: &DryConfig, breakers: &[bool]) {
    if cfg.multiplier == 0.0 || cfg.penalty_last_n == Some(0) {
        return;
    }
    let window = match cfg.penalty_last_n {
        Some(n) => &seq[seq.len().saturating_sub(n)..],
        None => seq,
    };
    let is_breaker = |t: u32| breakers.get(t as usize).copied().unwrap_or(false);
    for (t, n) in match_lengths(window, &is_breaker) {
        let p = penalty(cfg, n);
        if p > 0.0 {
            if let Some(v) = logits.get_mut(t as usize) {
                *v -= p;
            }
        }
    }
}

/// The ids of every token whose text contains one of `breakers` (e.g.
/// [`super::config::DRY_DEFAULT_BREAKERS`]). `token_bytes` gives a token's bytes.
pub fn breaker_ids(
    vocab_size: usize,
    breakers: &[String],
    token_bytes: &dyn Fn(u32) -> Result<Vec<u8>>,
) -> Result<Vec<u32>> {
    let pats: Vec<&[u8]> = breakers
        .iter()
        .map(|s| s.as_bytes())
        .filter(|s| !s.is_empty())
        .collect();
    let mut ids = Vec::new();
    for id in 0..vocab_size as u32 {
        let bytes = token_bytes(id)?;
        if pats.iter().any(|p| bytes.windows(p.len()).any(|w| w == *p)) {
            ids.push(id);
        }
    }
    Ok(ids)
}
