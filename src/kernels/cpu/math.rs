//! Scalar helpers shared by the kernels, written so the compiler can vectorise the loops that
//! call them (no branches, no libm calls).

/// exp(x) to about 2 ulp for x in [-87, 88] (inputs outside are clamped: exp(-87) ~ 1.6e-38).
/// Range reduction x = n*ln2 + r with |r| <= ln2/2, a degree-7 polynomial for e^r, then 2^n
/// assembled in the exponent bits.
#[inline(always)]
pub fn fast_exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    // Round to nearest by adding 1.5 * 2^23: the sum's low mantissa bits are then n itself, so
    // neither a libm call nor a float-to-int conversion is needed, and the loop vectorises.
    const ROUND: f32 = 12_582_912.0;
    let shifted = x * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let n_int = shifted.to_bits() as i32 - ROUND.to_bits() as i32;
    // ln2 split in two so n*ln2 is exact to f32 precision (Cody-Waite).
    let r = (-n).mul_add(1.428_606_8e-6, (-n).mul_add(0.693_145_75, x));
    // Horner with fused multiply-adds (one rounding each, and one instruction with FMA).
    let mut p: f32 = 1.0 / 5040.0;
    for coef in [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        p = p.mul_add(r, coef);
    }
    let scale = f32::from_bits(((n_int + 127) as u32) << 23);
    p * scale
}

/// tanh(x) = 1 - 2 / (e^{2x} + 1), exact at the saturated ends thanks to the clamp in fast_exp.
#[inline(always)]
pub fn fast_tanh(x: f32) -> f32 {
    1.0 - 2.0 / (fast_exp(2.0 * x) + 1.0)
}

/// sum_i exp(x_i - shift). Eight f32 lanes (so it vectorises) over blocks of 256, blocks summed
/// in f64: a plain running f32 sum over 50k vocab entries loses ~1e-5 relative, which shows up
/// amplified in the cross-entropy gradient.
#[inline]
pub fn sum_exp(x: &[f32], shift: f32) -> f64 {
    let mut total = 0.0f64;
    for block in x.chunks(256) {
        let mut acc = [0.0f32; 8];
        let mut lanes = block.chunks_exact(8);
        for c in &mut lanes {
            for j in 0..8 {
                acc[j] += fast_exp(c[j] - shift);
            }
        }
        let tail: f32 = lanes.remainder().iter().map(|&v| fast_exp(v - shift)).sum();
        total += (acc.iter().sum::<f32>() + tail) as f64;
    }
    total
}

/// sum_i f(x_i) with 8 independent partial sums, so the loop vectorises (a plain running sum
/// cannot be reordered by the compiler, and runs one add at a time).
#[inline(always)]
pub fn sum_map(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0.0f32; 8];
    let mut lanes = x.chunks_exact(8);
    for c in &mut lanes {
        for j in 0..8 {
            acc[j] += f(c[j]);
        }
    }
    let tail: f32 = lanes.remainder().iter().map(|&v| f(v)).sum();
    acc.iter().sum::<f32>() + tail
}

/// Dot product. 64 independent partial sums (four AVX-512 registers) hide the FMA latency on
/// long vectors (a lm_head row of 768 runs ~4x faster than with one register of sums); shorter
/// tails go 8 at a time. The partial sums are added in a fixed order, so the result depends
/// only on the inputs.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    const WIDE: usize = 64;
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; 8];
    // Short vectors (a small model's attention heads) skip the wide sums: they would all be
    // zero, so the result is the same, and setting them up costs more than the products.
    let (a, b) = if n < WIDE {
        (a, b)
    } else {
        let mut wide = [0.0f32; WIDE];
        let (mut ca, mut cb) = (a.chunks_exact(WIDE), b.chunks_exact(WIDE));
        for (x, y) in (&mut ca).zip(&mut cb) {
            for j in 0..WIDE {
                wide[j] = x[j].mul_add(y[j], wide[j]);
            }
        }
        for j in 0..WIDE / 8 {
            for i in 0..8 {
                acc[i] += wide[j * 8 + i];
            }
        }
        (ca.remainder(), cb.remainder())
    };
    lanes8(acc, a, b)
}

/// [`dot`] of vectors shorter than 64 values, to inline where it runs in a tight loop (a small
/// attention head's scores): the same sums in the same order, so the same bits.
#[inline(always)]
pub fn dot_short(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    lanes8([0.0; 8], &a[..n], &b[..n])
}

/// The last stage of [`dot`]: 8 lanes of products added to `acc`, then the lanes and the tail.
#[inline(always)]
fn lanes8(mut acc: [f32; 8], a: &[f32], b: &[f32]) -> f32 {
    let (mut ca, mut cb) = (a.chunks_exact(8), b.chunks_exact(8));
    for (x, y) in (&mut ca).zip(&mut cb) {
        for i in 0..8 {
            acc[i] = x[i].mul_add(y[i], acc[i]);
        }
    }
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    acc.iter().sum::<f32>() + tail
}

/// Rows per parallel task for row-wise kernels of `width` columns: about 4K elements a task, so
/// small models do not drown in task overhead (one row of 128 is far too little work).
#[inline]
pub fn min_rows_per_task(width: usize) -> usize {
    (4096 / width.max(1)).max(1)
}

/// Items per parallel task when each item costs `work` multiply-adds: about 64K a task, the
/// least that pays for handing work to another thread (waking it costs microseconds). A small
/// model's decoding step then runs its tiny products on one thread instead of waiting on two.
#[inline]
pub fn min_items_per_task(work: usize) -> usize {
    ((1 << 16) / work.max(1)).max(1)
}

/// A raw pointer that parallel tasks share to write disjoint parts of one buffer.
#[derive(Clone, Copy)]
pub struct SharedMut(pub *mut f32);
// SAFETY: every user writes disjoint index ranges from different tasks.
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// The pointer. A method (not `.0`) so closures capture the whole Send wrapper.
    #[inline(always)]
    pub fn get(self) -> *mut f32 {
        self.0
    }
}

/// Deterministic test inputs, uniform in [-amp, amp): the kernels' unit tests share them.
#[cfg(test)]
pub(crate) fn test_values(n: usize, seed: u64, amp: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 * amp - amp
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_matches_std() {
        let mut worst = 0.0f64;
        let mut x = -80.0f32;
        while x < 80.0 {
            let rel = ((fast_exp(x) as f64 - (x as f64).exp()) / (x as f64).exp()).abs();
            worst = worst.max(rel);
            x += 0.0137;
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
        assert!(fast_exp(-1000.0) < 1e-37);
    }

    #[test]
    fn fast_tanh_matches_std() {
        for i in -2000..2000 {
            let x = i as f32 * 0.01;
            assert!((fast_tanh(x) - x.tanh()).abs() < 2e-7, "x={x}");
        }
    }
}
