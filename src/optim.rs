//! AdamW's settings and state as they cross the engine seam: the hyperparameters, and the
//! moments in the parameter layout (what a checkpoint stores). The update itself runs in the
//! backend (`engine::cpu`'s `adamw` kernel on the CPU). And float16 training's loss scaler.

/// AdamW as PyTorch defines it, with nanoGPT's two parameter groups (decay on 2+-dimensional
/// tensors).
#[derive(Clone, Copy, Debug)]
pub struct AdamW {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

/// AdamW's moments, laid out as the parameters, and the steps taken (PyTorch's
/// `state['step']`).
#[derive(Clone, Debug, Default)]
pub struct OptimizerState {
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    pub step: u64,
}

impl OptimizerState {
    /// Fresh moments for `n` parameters.
    pub fn new(n: usize) -> OptimizerState {
        OptimizerState {
            m: vec![0.0; n],
            v: vec![0.0; n],
            step: 0,
        }
    }
}

/// Dynamic loss scaling for float16 training, with PyTorch's `GradScaler` defaults: the loss's
/// gradient is multiplied by `scale` so that small gradients stay within f16's range (down to
/// 2^-24) in the products; a step whose gradients overflowed (their norm, still scaled, is inf or
/// NaN) is skipped and the scale halved; after 2000 steps in a row without overflow it doubles.
/// The scale is a power of two, so scaling and unscaling change no bits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossScaler {
    scale: f32,
    good_steps: u32,
}

impl Default for LossScaler {
    fn default() -> LossScaler {
        LossScaler {
            scale: 65536.0,
            good_steps: 0,
        }
    }
}

impl LossScaler {
    /// Steps without overflow before the scale doubles.
    pub const GROWTH_INTERVAL: u32 = 2000;

    pub fn scale(&self) -> f32 {
        self.scale
    }

    /// After a step's gradients are summed, at `scale`: whether to apply them (their scaled norm
    /// is finite). Halves the scale on overflow, doubles it after GROWTH_INTERVAL good steps.
    pub fn step(&mut self, scaled_norm: f32) -> bool {
        if !scaled_norm.is_finite() {
            // Kept a normal f32, so that unscaling (times 1/scale) stays finite.
            self.scale = (self.scale * 0.5).max(f32::MIN_POSITIVE);
            self.good_steps = 0;
            return false;
        }
        self.good_steps += 1;
        if self.good_steps == Self::GROWTH_INTERVAL {
            // f32's largest power of two caps it (a doubling past it would be infinite).
            self.scale = (self.scale * 2.0).min(2f32.powi(127));
            self.good_steps = 0;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::LossScaler;

    #[test]
    fn overflow_halves_the_scale_and_skips_the_step_and_good_steps_double_it() {
        let mut s = LossScaler::default();
        assert_eq!(s.scale(), 65536.0);
        assert!(!s.step(f32::INFINITY));
        assert!(!s.step(f32::NAN));
        assert_eq!(s.scale(), 16384.0);
        for _ in 0..LossScaler::GROWTH_INTERVAL - 1 {
            assert!(s.step(3.0));
        }
        assert_eq!(s.scale(), 16384.0);
        assert!(s.step(3.0));
        assert_eq!(s.scale(), 32768.0);
        // An overflow restarts the count.
        for _ in 0..LossScaler::GROWTH_INTERVAL - 1 {
            s.step(3.0);
        }
        s.step(f32::INFINITY);
        for _ in 0..LossScaler::GROWTH_INTERVAL - 1 {
            s.step(3.0);
        }
        assert_eq!(s.scale(), 16384.0);
    }
}
