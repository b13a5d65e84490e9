//! Distributions over one row of logits: softmax, log-softmax, argmax and seeded draws.
//! Sums run in f64 so that long rows (50,257 tokens) lose nothing to rounding.

use crate::rng::Rng;

/// Index of the largest value, the first one on ties (as `torch.argmax`). `None` if the row is
/// empty or every value is -inf/NaN.
pub fn argmax(x: &[f32]) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (i, &v) in x.iter().enumerate() {
        if v.is_nan() || v == f32::NEG_INFINITY {
            continue;
        }
        match best {
            Some(b) if v <= x[b] => {}
            _ => best = Some(i),
        }
    }
    best
}

/// The largest finite-or-+inf value, or -inf if there is none.
pub fn max_value(x: &[f32]) -> f32 {
    x.iter()
        .copied()
        .filter(|v| !v.is_nan())
        .fold(f32::NEG_INFINITY, f32::max)
}

/// log(sum(exp(x))), in f64; -inf if every value is -inf.
pub fn logsumexp(x: &[f32]) -> f64 {
    let m = max_value(x);
    if m == f32::NEG_INFINITY {
        return f64::NEG_INFINITY;
    }
    let m = m as f64;
    let s: f64 = x.iter().map(|&v| (v as f64 - m).exp()).sum();
    m + s.ln()
}

/// Probabilities (f64) of a row of logits; -inf logits get probability 0.
pub fn softmax(x: &[f32]) -> Vec<f64> {
    let m = max_value(x) as f64;
    let mut p: Vec<f64> = x.iter().map(|&v| (v as f64 - m).exp()).collect();
    let s: f64 = p.iter().sum();
    for v in &mut p {
        *v /= s;
    }
    p
}

/// log_softmax in place, f32 out (as `torch.log_softmax` on an f32 row).
pub fn log_softmax_inplace(x: &mut [f32]) {
    let lse = logsumexp(x);
    let m = max_value(x) as f64;
    // (x - max) - (lse - max): the same split torch uses, so large logits keep their precision.
    let shift = (lse - m) as f32;
    let m = m as f32;
    for v in x.iter_mut() {
        *v = (*v - m) - shift;
    }
}

/// Draws an index with probability proportional to exp(x[i]) (-inf = never). `None` if no value
/// is finite.
pub fn sample_logits(x: &[f32], rng: &mut Rng) -> Option<usize> {
    let m = max_value(x);
    if m == f32::NEG_INFINITY || m.is_nan() {
        return None;
    }
    let w: Vec<f64> = x
        .iter()
        .map(|&v| {
            if v.is_nan() {
                0.0
            } else {
                (v as f64 - m as f64).exp()
            }
        })
        .collect();
    sample_weights(&w, rng)
}

/// Draws an index with probability proportional to `w[i]` (non-negative). `None` if all are 0.
pub fn sample_weights(w: &[f64], rng: &mut Rng) -> Option<usize> {
    let total: f64 = w.iter().sum();
    if total.is_nan() || total <= 0.0 || !total.is_finite() {
        return None;
    }
    let target = rng.next_f64() * total;
    let mut cum = 0.0;
    let mut last = None;
    for (i, &wi) in w.iter().enumerate() {
        if wi > 0.0 {
            cum += wi;
            last = Some(i);
            if cum > target {
                return Some(i);
            }
        }
    }
    // Rounding left `target` just above the sum: the last possible index.
    last
}
