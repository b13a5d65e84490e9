//! The learning-rate schedule; the knobs themselves are [`crate::config::train`].

pub use crate::config::train::{TrainConfig, KEYS};

/// nanoGPT's `get_lr`: linear warmup for warmup_iters, cosine decay to min_lr at lr_decay_iters,
/// min_lr after; the constant learning_rate when decay_lr is off.
pub fn learning_rate_at(cfg: &TrainConfig, it: usize) -> f32 {
    if !cfg.decay_lr {
        return cfg.learning_rate;
    }
    if it < cfg.warmup_iters {
        return cfg.learning_rate * (it + 1) as f32 / (cfg.warmup_iters + 1) as f32;
    }
    if it > cfg.lr_decay_iters {
        return cfg.min_lr;
    }
    let ratio =
        (it - cfg.warmup_iters) as f64 / (cfg.lr_decay_iters - cfg.warmup_iters).max(1) as f64;
    let coeff = 0.5 * (1.0 + (std::f64::consts::PI * ratio).cos());
    (cfg.min_lr as f64 + coeff * (cfg.learning_rate - cfg.min_lr) as f64) as f32
}
