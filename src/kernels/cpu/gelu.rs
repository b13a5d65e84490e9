//! GELU, GPT-2's tanh form (`gelu_new`): y = x/2 * (1 + tanh(k*(x + 0.044715 x^3))), k = sqrt(2/pi).
//! dy/dx = (1 + t)/2 + x/2 * (1 - t^2) * k * (1 + 3*0.044715 x^2).

use super::math::fast_tanh;
use rayon::prelude::*;

const K: f32 = 0.797_884_6; // sqrt(2/pi)
const A: f32 = 0.044_715;
const CHUNK: usize = 4096;

pub fn gelu_forward(out: &mut [f32], inp: &[f32]) {
    out.par_chunks_mut(CHUNK)
        .zip(inp.par_chunks(CHUNK))
        .for_each(|(y, x)| {
            for (y, &x) in y.iter_mut().zip(x) {
                *y = 0.5 * x * (1.0 + fast_tanh(K * (x + A * x * x * x)));
            }
        });
}

/// In place: `grad` holds dL/dy on entry and dL/dx on return.
pub fn gelu_backward_inplace(grad: &mut [f32], inp: &[f32]) {
    grad.par_chunks_mut(CHUNK)
        .zip(inp.par_chunks(CHUNK))
        .for_each(|(g, x)| {
            for (g, &x) in g.iter_mut().zip(x) {
                let t = fast_tanh(K * (x + A * x * x * x));
                let d = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * K * (1.0 + 3.0 * A * x * x);
                *g *= d;
            }
        });
}
