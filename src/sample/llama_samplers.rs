//! Samplers from llama.cpp: mirostat v1 and v2 (Basu et al. 2021), XTC ("exclude top
//! choices") and top-n-sigma (Tang et al. 2024), each on one row of logits, after the
//! penalties and temperature. Filtered tokens become -inf.
//!
//! - **top-n-sigma**: keep the tokens whose logit is at least `max - n * sigma`, sigma the
//!   standard deviation of the finite logits (population, as llama.cpp); `n <= 0` is off.
//! - **XTC**: with probability `xtc_probability`, when at least two tokens have probability
//!   `>= xtc_threshold`, remove all of them but the least likely one (unless fewer than
//!   `min_keep` tokens would be left). A threshold above 0.5 can never hold two tokens: off.
//! - **mirostat v2**: keep the tokens whose surprise `-log2 p` is at most `mu` (at least the
//!   most likely one), renormalise, draw; then `mu -= eta * (-log2 p(drawn) - tau)`, p of the
//!   renormalised distribution. `mu` starts at `2 tau`.
//! - **mirostat v1**: estimate the Zipf exponent `s` from the `m = 100` most likely tokens
//!   (least squares of `log(p_i / p_{i+1})` on `log((i + 2) / (i + 1))`), then keep the top
//!   `k = ((s - 1) 2^mu / (1 - N^(1 - s)))^(1 / s)` tokens (at least 1; N the vocabulary size),
//!   draw, and update `mu` as v2 does.
//!
//! Mirostat picks the token itself, so the other filters (top_k, top_p, ...) do not apply with
//! it, as in llama.cpp. `--samplers` orders the filters (temperature, top_k, top_p, min_p,
//! typical_p, top_n_sigma) as llama.cpp's option does; XTC always comes after them.

use super::config::SamplingConfig;
use super::dist::{sample_logits, softmax};
use super::processors;
use crate::config::knobs::Knob;
use crate::rng::Rng;

/// The tokens ranked by logit, most likely first (finite ones only).
fn descending(logits: &[f32]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..logits.len())
        .filter(|&i| logits[i] > f32::NEG_INFINITY)
        .collect();
    idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    idx
}

/// top-n-sigma (see the module docs).
pub fn top_n_sigma(logits: &mut [f32], n: f32) {
    if n <= 0.0 {
        return;
    }
    let finite: Vec<f64> = logits
        .iter()
        .filter(|v| v.is_finite())
        .map(|&v| v as f64)
        .collect();
    if finite.is_empty() {
        return;
    }
    let max = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mean = finite.iter().sum::<f64>() / finite.len() as f64;
    let var = finite.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / finite.len() as f64;
    let cut = max - n as f64 * var.sqrt();
    for v in logits.iter_mut() {
        if (*v as f64) < cut {
            *v = f32::NEG_INFINITY;
        }
    }
}

/// XTC (see the module docs); draws from `rng` only when `probability > 0`.
pub fn xtc(logits: &mut [f32], probability: f32, threshold: f32, min_keep: usize, rng: &mut Rng) {
    if probability <= 0.0 || threshold > 0.5 {
        return;
    }
    if rng.next_f64() >= probability as f64 {
        return;
    }
    let probs = softmax(logits);
    let order = descending(logits);
    let above = order
        .iter()
        .take_while(|&&i| probs[i] >= threshold as f64)
        .count();
    if above >= 2 && order.len() - (above - 1) >= min_keep {
        for &i in &order[..above - 1] {
            logits[i] = f32::NEG_INFINITY;
        }
    }
}

/// Mirostat's state for one sample: the surprise bound `mu`.
#[derive(Clone, Copy, Debug)]
pub struct Mirostat {
    pub version: usize,
    pub tau: f32,
    pub eta: f32,
    pub mu: f32,
}

/// Tokens mirostat v1 estimates the Zipf exponent from (llama.cpp's `m`).
const MIROSTAT_M: usize = 100;

impl Mirostat {
    pub fn new(version: usize, tau: f32, eta: f32) -> Self {
        Mirostat {
            version,
            tau,
            eta,
            mu: 2.0 * tau,
        }
    }

    /// Truncates `logits` as this version does (the kept tokens stay, the rest become -inf).
    pub fn truncate(&self, logits: &mut [f32]) {
        let probs = softmax(logits);
        let order = descending(logits);
        let keep = if self.version == 1 {
            let (mut ti_bi, mut ti_sq) = (0.0f64, 0.0f64);
            for i in 0..(MIROSTAT_M - 1).min(order.len().saturating_sub(1)) {
                let t = ((i + 2) as f64 / (i + 1) as f64).ln();
                let b = (probs[order[i]] / probs[order[i + 1]]).ln();
                ti_bi += t * b;
                ti_sq += t * t;
            }
            let s = ti_bi / ti_sq;
            let eps = s - 1.0;
            let n = logits.len() as f64;
            let k = (eps * 2f64.powf(self.mu as f64) / (1.0 - n.powf(-eps))).powf(1.0 / s);
            // A NaN k (a flat distribution) keeps one token, as llama.cpp's int cast does.
            if k.is_finite() && k >= 1.0 {
                k as usize
            } else {
                1
            }
        } else {
            order
                .iter()
                .take_while(|&&i| -probs[i].log2() <= self.mu as f64)
                .count()
                .max(1)
        };
        for &i in order.iter().skip(keep) {
            logits[i] = f32::NEG_INFINITY;
        }
    }

    /// Truncates, draws a token and updates `mu`. `None` when no logit is finite.
    pub fn sample(&mut self, logits: &mut [f32], rng: &mut Rng) -> Option<usize> {
        self.truncate(logits);
        let tok = sample_logits(logits, rng)?;
        let p = softmax(logits)[tok];
        self.mu -= self.eta * (-p.log2() as f32 - self.tau);
        Some(tok)
    }
}

/// A filter whose place in the chain `--samplers` sets, by llama.cpp's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    Temperature,
    TopK,
    TopP,
    MinP,
    TypicalP,
    TopNSigma,
}

/// The names `--samplers` takes (llama.cpp's; `typical_p` also as `typ_p`).
const FILTER_NAMES: [(&str, Filter); 7] = [
    ("temperature", Filter::Temperature),
    ("top_k", Filter::TopK),
    ("top_p", Filter::TopP),
    ("min_p", Filter::MinP),
    ("typ_p", Filter::TypicalP),
    ("typical_p", Filter::TypicalP),
    ("top_n_sigma", Filter::TopNSigma),
];

/// The order of the filters (`--samplers=top_k;top_p;min_p;temperature`, as llama.cpp's
/// `--samplers`); empty = Hugging Face's order. A filter left out of the list is not applied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FilterOrder(pub Vec<Filter>);

impl Knob for FilterOrder {
    fn set_text(&mut self, text: &str) -> Result<(), String> {
        let names: Vec<&str> = FILTER_NAMES.iter().map(|(n, _)| *n).collect();
        self.0 = text
            .split([';', ','])
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(|n| {
                FILTER_NAMES
                    .iter()
                    .find(|(name, _)| *name == n)
                    .map(|&(_, f)| f)
                    .ok_or_else(|| format!("unknown sampler '{n}': use {}", names.join(", ")))
            })
            .collect::<Result<_, _>>()?;
        Ok(())
    }
    fn show(&self) -> String {
        self.0
            .iter()
            .filter_map(|f| FILTER_NAMES.iter().find(|(_, g)| g == f).map(|(n, _)| *n))
            .collect::<Vec<_>>()
            .join(";")
    }
}

/// The warpers of `cfg` in the order of `cfg.samplers` (each only if its knob is on).
pub fn warp_in_order(cfg: &SamplingConfig, logits: &mut [f32], min_keep: usize) {
    for f in &cfg.samplers.0 {
        match f {
            Filter::Temperature if cfg.temperature != 1.0 && cfg.temperature > 0.0 => {
                processors::temperature(logits, cfg.temperature)
            }
            Filter::TopK => {
                if let Some(k) = cfg.top_k.filter(|&k| k > 0) {
                    processors::top_k(logits, k, min_keep)
                }
            }
            Filter::TopP => {
                if let Some(p) = cfg.top_p.filter(|&p| p < 1.0) {
                    processors::top_p(logits, p, min_keep)
                }
            }
            Filter::MinP => {
                if let Some(p) = cfg.min_p {
                    processors::min_p(logits, p, min_keep)
                }
            }
            Filter::TypicalP => {
                if let Some(p) = cfg.typical_p.filter(|&p| p < 1.0) {
                    processors::typical_p(logits, p, min_keep)
                }
            }
            Filter::TopNSigma => {
                if let Some(n) = cfg.top_n_sigma {
                    top_n_sigma(logits, n)
                }
            }
            Filter::Temperature => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEG: f32 = f32::NEG_INFINITY;

    fn ln(ps: &[f64]) -> Vec<f32> {
        ps.iter().map(|p| p.ln() as f32).collect()
    }

    #[test]
    fn samplers_order_the_filters() {
        // min_p 0.3 before temperature 0.5 keeps two tokens, after it one.
        let cfg = |order: &str| {
            let mut samplers = FilterOrder::default();
            samplers.set_text(order).unwrap();
            SamplingConfig {
                temperature: 0.5,
                top_k: None,
                min_p: Some(0.3),
                samplers,
                ..SamplingConfig::default()
            }
        };
        let kept = |order: &str| {
            let mut l = vec![0.0f32, -1.0, -2.0];
            processors::Processors::new(&cfg(order), 3, None).warp(&mut l, 1);
            l.iter().filter(|v| v.is_finite()).count()
        };
        assert_eq!(kept("min_p;temperature"), 2);
        assert_eq!(kept("temperature;min_p"), 1);
        assert_eq!(kept(""), 1, "Hugging Face's order: temperature first");
        assert_eq!(kept("temperature"), 3, "left out = not applied");
        assert_eq!(cfg("top_k;typ_p").samplers.show(), "top_k;typ_p");
        let mut o = FilterOrder::default();
        assert!(o
            .set_text("top_k;nucleus")
            .unwrap_err()
            .contains("unknown sampler 'nucleus'"));
    }

    #[test]
    fn top_n_sigma_keeps_logits_within_n_deviations_of_the_max() {
        // mean 2, population sigma sqrt(2): n = 1 keeps logits >= 4 - 1.414.
        let mut l = vec![0.0, 1.0, 2.0, 3.0, 4.0, NEG];
        top_n_sigma(&mut l, 1.0);
        assert_eq!(l, [NEG, NEG, NEG, 3.0, 4.0, NEG]);
        let mut l = vec![0.0, 1.0, 2.0, 3.0, 4.0];
        top_n_sigma(&mut l, 2.0);
        assert_eq!(l, [NEG, NEG, 2.0, 3.0, 4.0]);
        let mut l = vec![0.0, 1.0, 2.0, 3.0, 4.0];
        top_n_sigma(&mut l, 3.0);
        assert_eq!(l, [0.0, 1.0, 2.0, 3.0, 4.0]);
        let mut l = vec![0.0, 1.0];
        top_n_sigma(&mut l, 0.0);
        assert_eq!(l, [0.0, 1.0]);
    }

    #[test]
    fn xtc_removes_all_top_choices_but_the_least_likely() {
        let mut rng = Rng::new(1);
        let probs = [0.4, 0.3, 0.2, 0.1];
        let mut l = ln(&probs);
        xtc(&mut l, 1.0, 0.15, 1, &mut rng);
        // 0.4, 0.3, 0.2 are >= 0.15: the two above 0.2 go.
        assert_eq!(&l[..2], [NEG, NEG]);
        assert!(l[2].is_finite() && l[3].is_finite());
        // One token above the threshold: nothing changes; probability 0: never.
        let mut l = ln(&probs);
        xtc(&mut l, 1.0, 0.35, 1, &mut rng);
        assert!(l.iter().all(|v| v.is_finite()));
        let mut l = ln(&probs);
        xtc(&mut l, 0.0, 0.1, 1, &mut rng);
        assert!(l.iter().all(|v| v.is_finite()));
        // min_keep: removing 3 of 4 would leave 1 < 2.
        let mut l = ln(&probs);
        xtc(&mut l, 1.0, 0.05, 2, &mut rng);
        assert!(l.iter().all(|v| v.is_finite()));
        // Probability 0.5 fires about half the time.
        let fired = (0..2000)
            .filter(|_| {
                let mut l = ln(&probs);
                xtc(&mut l, 0.5, 0.15, 1, &mut rng);
                l[0] == NEG
            })
            .count();
        assert!((900..1100).contains(&fired), "{fired}");
    }

    #[test]
    fn mirostat_v2_truncates_by_surprise_and_steers_mu() {
        // Surprises -log2 p: 1, 2, 3, 3; mu starts at 2 tau = 2.5.
        let probs = [0.5, 0.25, 0.125, 0.125];
        let mut m = Mirostat::new(2, 1.25, 0.5);
        assert_eq!(m.mu, 2.5);
        let mut l = ln(&probs);
        m.truncate(&mut l);
        assert_eq!(&l[2..], [NEG, NEG]);
        // Kept {0.5, 0.25} renormalise to {2/3, 1/3}; mu moves by eta * (surprise - tau).
        let mut rng = Rng::new(3);
        let mut l = ln(&probs);
        let tok = m.sample(&mut l, &mut rng).unwrap();
        let p: f64 = if tok == 0 { 2.0 / 3.0 } else { 1.0 / 3.0 };
        let want = 2.5 - 0.5 * (-p.log2() - 1.25);
        assert!((m.mu as f64 - want).abs() < 1e-5, "{} vs {want}", m.mu);
        // mu below the top token's surprise still keeps it.
        let m = Mirostat { mu: 0.1, ..m };
        let mut l = ln(&probs);
        m.truncate(&mut l);
        assert_eq!(l.iter().filter(|v| v.is_finite()).count(), 1);
    }

    #[test]
    fn mirostat_v1_keeps_the_zipf_top_k() {
        // Exact Zipf p_i ~ 1 / (i + 1)^s over N tokens: the estimate is s, and k follows.
        let (n, s) = (1000usize, 1.2f64);
        let w: Vec<f64> = (0..n).map(|i| 1.0 / ((i + 1) as f64).powf(s)).collect();
        let total: f64 = w.iter().sum();
        let probs: Vec<f64> = w.iter().map(|x| x / total).collect();
        for mu in [3.0f32, 6.0, 9.0] {
            let m = Mirostat {
                mu,
                ..Mirostat::new(1, 5.0, 0.1)
            };
            let mut l = ln(&probs);
            m.truncate(&mut l);
            let eps = s - 1.0;
            let k = (eps * 2f64.powf(mu as f64) / (1.0 - (n as f64).powf(-eps))).powf(1.0 / s);
            let kept = l.iter().filter(|v| v.is_finite()).count();
            assert_eq!(kept, (k as usize).max(1), "mu {mu}");
            // The kept tokens are the most likely ones.
            assert!(l[..kept].iter().all(|v| v.is_finite()));
        }
    }
}
