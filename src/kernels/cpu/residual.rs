//! The residual connection: out = a + b. Its backward is the identity on both inputs, so the
//! model simply lets the residual-stream gradient flow through (no kernel needed).

use rayon::prelude::*;

const CHUNK: usize = 4096;

/// out = a + b, elementwise (the residual connection).
pub fn residual_forward(out: &mut [f32], a: &[f32], b: &[f32]) {
    out.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
        .for_each(|(o, (a, b))| {
            for ((o, a), b) in o.iter_mut().zip(a).zip(b) {
                *o = a + b;
            }
        });
}
