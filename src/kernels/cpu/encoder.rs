//! Token + position embedding: out[b,t,:] = wte[x[b,t],:] + wpe[pos0 + t,:]. A model without
//! learned positions (Llama: rotary, applied inside attention) passes no `wpe`.

use super::math::{min_rows_per_task, SharedMut};
use rayon::prelude::*;

/// `tokens` holds rows of `t` tokens whose first position is `pos0` (0 in training; the cache
/// length when generating).
pub fn encoder_forward(
    out: &mut [f32],
    tokens: &[u32],
    wte: &[f32],
    wpe: Option<&[f32]>,
    t: usize,
    pos0: usize,
    c: usize,
) {
    out.par_chunks_mut(c)
        .zip(tokens.par_iter())
        .enumerate()
        .with_min_len(min_rows_per_task(c))
        .for_each(|(row, (o, &tok))| {
            let pos = pos0 + row % t;
            let e = &wte[tok as usize * c..(tok as usize + 1) * c];
            match wpe {
                Some(wpe) => {
                    let p = &wpe[pos * c..(pos + 1) * c];
                    for i in 0..c {
                        o[i] = e[i] + p[i];
                    }
                }
                None => o.copy_from_slice(e),
            }
        });
}

/// dwte[x[b,t]] += dout[b,t]; dwpe[t] += dout[b,t]. Tokens repeat, so rows cannot be split among
/// tasks; columns are: each task owns a block of columns and walks all rows in order, which keeps
/// the sums deterministic.
pub fn encoder_backward(
    dwte: &mut [f32],
    dwpe: Option<&mut [f32]>,
    dout: &[f32],
    tokens: &[u32],
    t: usize,
    c: usize,
) {
    const BLOCK: usize = 32;
    let wte_ptr = SharedMut(dwte.as_mut_ptr());
    let wpe_ptr = dwpe.map(|d| SharedMut(d.as_mut_ptr()));
    (0..c.div_ceil(BLOCK)).into_par_iter().for_each(|blk| {
        let (c0, c1) = (blk * BLOCK, ((blk + 1) * BLOCK).min(c));
        for (row, &tok) in tokens.iter().enumerate() {
            let pos = row % t;
            let d = &dout[row * c + c0..row * c + c1];
            // SAFETY: this task alone writes columns [c0, c1) of every row.
            unsafe {
                let e = wte_ptr.get().add(tok as usize * c + c0);
                for (i, &g) in d.iter().enumerate() {
                    *e.add(i) += g;
                }
                if let Some(wpe_ptr) = wpe_ptr {
                    let p = wpe_ptr.get().add(pos * c + c0);
                    for (i, &g) in d.iter().enumerate() {
                        *p.add(i) += g;
                    }
                }
            }
        }
    });
}
