//! llama2.c's sampler (`run.c`), so that a seed gives run.c's tokens: its xorshift64* generator,
//! temperature, softmax, top-p (nucleus) and multinomial sampling, on a logits slice. The
//! arithmetic is f32 in run.c's order (sequential sums, `expf`).

/// run.c's random numbers: xorshift64* on a u64 state that starts as the seed (`-s`).
#[derive(Clone, Debug)]
pub struct XorShift {
    pub state: u64,
}

impl XorShift {
    pub fn new(seed: u64) -> XorShift {
        XorShift { state: seed }
    }

    pub fn random_u32(&mut self) -> u32 {
        let mut s = self.state;
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        self.state = s;
        (s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as u32
    }

    /// In [0, 1): the top 24 bits, so every value is exact in f32.
    pub fn random_f32(&mut self) -> f32 {
        (self.random_u32() >> 8) as f32 / 16_777_216.0
    }
}

/// run.c's `Sampler`: temperature 0 is greedy; otherwise one coin per sampled token, through
/// top-p when 0 < topp < 1 and plain multinomial sampling otherwise.
#[derive(Clone, Debug)]
pub struct Sampler {
    pub temperature: f32,
    pub topp: f32,
    pub rng: XorShift,
}

impl Sampler {
    pub fn new(temperature: f32, topp: f32, seed: u64) -> Sampler {
        Sampler {
            temperature,
            topp,
            rng: XorShift::new(seed),
        }
    }

    /// The next token from `logits` (overwritten with the probabilities when sampling).
    pub fn sample(&mut self, logits: &mut [f32]) -> usize {
        if self.temperature == 0.0 {
            return argmax(logits);
        }
        for x in logits.iter_mut() {
            *x /= self.temperature;
        }
        softmax(logits);
        let coin = self.rng.random_f32();
        if self.topp <= 0.0 || self.topp >= 1.0 {
            sample_mult(logits, coin)
        } else {
            sample_topp(logits, self.topp, coin)
        }
    }
}

/// The first index of the largest value.
pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

/// In place: exp(x - max) / sum, the sum taken in order.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0.0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in x.iter_mut() {
        *v /= sum;
    }
}

/// The first index (in id order) whose running sum of `probs` exceeds `coin`; the last index
/// if rounding leaves the total at or below it.
pub fn sample_mult(probs: &[f32], coin: f32) -> usize {
    let mut cdf = 0.0f32;
    for (i, &p) in probs.iter().enumerate() {
        cdf += p;
        if coin < cdf {
            return i;
        }
    }
    probs.len().saturating_sub(1)
}

/// Top-p as run.c: candidates with p >= (1 - topp) / (n - 1) (those below cannot be in the
/// nucleus, so they are dropped before sorting), sorted by descending probability, cut after
/// the first whose running sum exceeds `topp`; then `coin` scaled by that sum picks among them.
///
/// run.c sorts with `qsort`, which promises nothing about equal probabilities. The fixtures'
/// glibc (2.36) sorts this size by merge sort, which keeps them in id order; a stable sort does
/// the same. (glibc 2.37+ switched to introsort, under which run.c itself may order ties
/// differently.)
pub fn sample_topp(probs: &[f32], topp: f32, coin: f32) -> usize {
    let cutoff = (1.0 - topp) / probs.len().saturating_sub(1) as f32;
    let mut cands: Vec<(usize, f32)> = probs
        .iter()
        .copied()
        .enumerate()
        .filter(|&(_, p)| p >= cutoff)
        .collect();
    // With a small topp no probability may reach the cutoff, where run.c reads before its
    // array; the most probable token is the nucleus then.
    if cands.is_empty() {
        return argmax(probs);
    }
    cands.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut last = cands.len() - 1;
    let mut total = 0.0f32;
    for (i, &(_, p)) in cands.iter().enumerate() {
        total += p;
        if total > topp {
            last = i;
            break;
        }
    }
    let r = coin * total;
    let mut cdf = 0.0f32;
    for &(id, p) in &cands[..=last] {
        cdf += p;
        if r < cdf {
            return id;
        }
    }
    cands[last].0
}
