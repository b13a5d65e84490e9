//! AdamW's settings and state as they cross the engine seam: the hyperparameters, and the
//! moments in the parameter layout (what a checkpoint stores). The update itself runs in the
//! backend (`engine::cpu`'s `adamw` kernel on the CPU).

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
