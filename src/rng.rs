//! Small, seeded random numbers: SplitMix64 for streams (init, batches) and a stateless hash for
//! dropout masks, so a mask can be recomputed in the backward pass instead of being stored.

/// SplitMix64: tiny, fast, and passes BigCrush; plenty for init and batch sampling.
#[derive(Clone, Debug)]
pub struct Rng {
    state: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng { state: seed }
    }

    pub fn state(&self) -> u64 {
        self.state
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.state)
    }

    /// Uniform in [0, 1) with 53 bits of precision.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform integer in [0, n) (Lemire's multiply-shift; bias is below 2^-32 for our n).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// Standard normal by Box-Muller (one value per call; simplicity beats the spare value here).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.next_f64(); // (0, 1], so ln is finite
        let u2 = self.next_f64();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// The SplitMix64 finaliser: a bijective avalanche of 64 bits.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A dropout mask that needs no storage: element `index` of the mask identified by `key` is kept
/// with probability 1 - p. The same (key, index) always gives the same answer.
#[inline(always)]
pub fn keep(key: u64, index: u64, p_drop: f32) -> bool {
    let bits = mix64(key ^ index.wrapping_mul(0xD6E8_FEB8_6659_FD93));
    ((bits >> 40) as f32) * (1.0 / (1u64 << 24) as f32) >= p_drop
}

/// The key of the stochastic rounding that makes the bf16 weight copy (CUDA bf16 training) after
/// AdamW step `step` (0: before the first) of the run seeded `seed`. It depends on nothing a
/// rank or a resume changes, so every rank rounds alike and a resumed run goes on with the bits
/// it stopped at.
pub fn rounding_key(seed: u64, step: u64) -> u64 {
    // "rounding" in ASCII: a stream apart from the seed's other uses.
    mix64(mix64(seed ^ 0x726f_756e_6469_6e67) ^ step)
}

/// Derives the key of one dropout site from the step's seed, the layer and the site number.
pub fn dropout_key(step_seed: u64, layer: usize, site: u64) -> u64 {
    mix64(step_seed ^ mix64((layer as u64) << 8 | site))
}
