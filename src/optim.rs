//! The optimizer step over the whole model: global-norm clipping, then AdamW with nanoGPT's two
//! parameter groups (decay on 2+-dimensional tensors). Moments share the parameters' layout.

use crate::kernels::cpu::adamw::{adamw_update, clip_grads, global_norm, norm_partials_len, AdamW};
use crate::model::Gpt;

pub struct Optimizer {
    pub hyper: AdamW,
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    /// Steps taken so far (PyTorch's `state['step']`).
    pub step: u64,
    partials: Vec<f64>,
    /// (first index, decays?) of each parameter tensor, in buffer order.
    groups: Vec<(usize, bool)>,
}

impl Optimizer {
    pub fn new(model: &Gpt, hyper: AdamW) -> Optimizer {
        let n = model.params.len();
        Optimizer {
            hyper,
            m: vec![0.0; n],
            v: vec![0.0; n],
            step: 0,
            partials: vec![0.0; norm_partials_len(n)],
            groups: model
                .table
                .entries
                .iter()
                .map(|e| (e.offset, e.decay))
                .collect(),
        }
    }

    /// Clips the gradients to `grad_clip` (0 = off) and applies one AdamW update with learning
    /// rate `lr`. Returns the gradient norm before clipping.
    pub fn step(&mut self, model: &mut Gpt, lr: f32, grad_clip: f32) -> f32 {
        let norm = global_norm(&model.grads, &mut self.partials);
        if grad_clip > 0.0 {
            clip_grads(&mut model.grads, norm, grad_clip);
        }
        self.step += 1;
        let hyper = AdamW { lr, ..self.hyper };
        adamw_update(
            &mut model.params,
            &model.grads,
            &mut self.m,
            &mut self.v,
            &hyper,
            self.step,
            &self.groups,
        );
        norm
    }
}
