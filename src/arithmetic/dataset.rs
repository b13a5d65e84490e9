//! `nanogpt prepare arithmetic`: seeded problem sets, balanced by operand digit length (and by
//! carries for addition), with a held-out test set that can never appear in training.
//!
//! Files in the dataset directory: train.bin / val.bin (characters, uint16), meta.json (the fixed
//! vocabulary), test.txt (held-out problems, one line each, val.bin is these lines),
//! ood.txt (longer operands than training, never trained on), arithmetic.json (the options).

use super::problems::{digits, Format, Layout, Op, Problem, VOCAB};
use crate::atomic_file::write_pending;
use crate::data::dataset;
use crate::data::writer::write_tokens_pending;
use crate::data::TokenFormat;
use crate::rng::{mix64, Rng};
use crate::tokenizer::CharVocab;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::Path;

pub const OPTIONS_FILE: &str = "arithmetic.json";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ArithmeticOptions {
    pub ops: Vec<Op>,
    pub format: Format,
    /// Operand lengths in digits, from min_digits to max_digits (both operands).
    pub min_digits: usize,
    pub max_digits: usize,
    /// A divisor has at most this many digits.
    pub max_divisor_digits: usize,
    /// Training problems per operation.
    pub train_per_op: usize,
    /// Division, the hardest operation, gets this many times `train_per_op` training problems.
    #[serde(default = "one")]
    pub div_train_factor: usize,
    /// Multiplication, the next hardest, gets this many times `train_per_op`.
    #[serde(default = "one")]
    pub mul_train_factor: usize,
    /// Relative frequency of each dividend length (min_digits..=max_digits) among the training
    /// divisions; `None` weighs length n by n(n+1)/2 (1 : 3 : 6 for 1 to 3 digits). Held-out
    /// problems stay uniform over lengths, so each length is measured alike.
    #[serde(default)]
    pub dividend_weights: Option<Vec<f64>>,
    /// Held-out problems per operation (and as many out-of-distribution ones).
    pub test_per_op: usize,
    pub seed: u64,
}

impl Default for ArithmeticOptions {
    fn default() -> Self {
        ArithmeticOptions {
            ops: vec![Op::Add, Op::Sub],
            format: Format::Reversed,
            min_digits: 1,
            max_digits: 3,
            max_divisor_digits: 2,
            train_per_op: 300_000,
            div_train_factor: 3,
            mul_train_factor: 1,
            dividend_weights: None,
            test_per_op: 1000,
            seed: 1337,
        }
    }
}

/// Datasets written before a factor existed gave its operation `train_per_op` problems.
fn one() -> usize {
    1
}

impl ArithmeticOptions {
    /// How the dataset writes its problems: scratchpad division pads to the widest training
    /// operands.
    pub fn layout(&self) -> Layout {
        Layout {
            format: self.format,
            dividend_width: self.max_digits,
            divisor_width: self.max_divisor_digits.min(self.max_digits),
        }
    }

    /// How many training problems `op` gets.
    fn train_count(&self, op: Op) -> usize {
        self.train_per_op
            * match op {
                Op::Mul => self.mul_train_factor,
                Op::Div => self.div_train_factor,
                Op::Add | Op::Sub => 1,
            }
    }

    /// The dividend-length weights, one per length from min_digits to max_digits.
    fn dividend_weights(&self) -> Vec<f64> {
        match &self.dividend_weights {
            Some(w) => w.clone(),
            None => (self.min_digits..=self.max_digits)
                .map(|n| (n * (n + 1) / 2) as f64)
                .collect(),
        }
    }
}

/// Held out: about 1 problem in 20, chosen by a hash of the problem (not of the seed), so the
/// test set is disjoint from every training set made with any seed.
fn is_held_out(p: &Problem) -> bool {
    mix64(p.a.wrapping_mul(0x9E37_79B9) ^ (p.b << 32) ^ p.op as u64).is_multiple_of(20)
}

fn random_with_digits(rng: &mut Rng, n: usize) -> u64 {
    if n <= 1 {
        return rng.below(10);
    }
    let lo = 10u64.pow(n as u32 - 1);
    lo + rng.below(9 * lo)
}

fn carries(a: u64, b: u64) -> usize {
    let (mut a, mut b, mut carry, mut count) = (a, b, 0, 0);
    while a > 0 || b > 0 {
        carry = u64::from((a % 10 + b % 10 + carry) >= 10);
        count += carry as usize;
        a /= 10;
        b /= 10;
    }
    count
}

/// One problem: lengths uniform over the allowed range (the first operand's by
/// `first_length_weights` when given); for addition the number of carries is also drawn
/// uniformly (0..=longer length) and operands are redrawn until it matches (up to a bound, for
/// combinations that rarely carry that often, like 999+1).
fn draw(
    rng: &mut Rng,
    op: Op,
    opts: &ArithmeticOptions,
    max_digits: usize,
    first_length_weights: Option<&[f64]>,
) -> Problem {
    let span = |rng: &mut Rng, lo: usize, hi: usize| lo + rng.below((hi - lo + 1) as u64) as usize;
    let la = match first_length_weights {
        Some(w) => opts.min_digits + weighted_index(rng, w),
        None => span(rng, opts.min_digits, max_digits),
    };
    let lb_max = if op == Op::Div {
        max_digits.min(opts.max_divisor_digits)
    } else {
        max_digits
    };
    let lb = span(rng, opts.min_digits.min(lb_max), lb_max);
    let want_carries = (op == Op::Add).then(|| rng.below(la.max(lb) as u64 + 1) as usize);
    let mut p = Problem { a: 0, op, b: 0 };
    for _ in 0..64 {
        p.a = random_with_digits(rng, la);
        p.b = random_with_digits(rng, lb);
        if op == Op::Div && p.b == 0 {
            continue;
        }
        if want_carries.is_none_or(|k| carries(p.a, p.b) == k) {
            break;
        }
    }
    if op == Op::Div && p.b == 0 {
        p.b = 1;
    }
    p
}

/// An index drawn with probability proportional to its weight.
fn weighted_index(rng: &mut Rng, weights: &[f64]) -> usize {
    let total: f64 = weights.iter().sum();
    let mut x = rng.below(1 << 53) as f64 / (1u64 << 53) as f64 * total;
    for (i, &w) in weights.iter().enumerate() {
        if x < w {
            return i;
        }
        x -= w;
    }
    weights.len() - 1
}

/// Draws `n` problems of `op` on the held-out (or training) side of the split. Held-out problems
/// are distinct, so each counts once in a score; training problems may repeat, as the operand
/// space allows. Small problem spaces (1-digit operands) may hold fewer than `n` distinct ones;
/// sampling stops after enough tries.
fn sample(
    rng: &mut Rng,
    op: Op,
    opts: &ArithmeticOptions,
    max_digits: usize,
    n: usize,
    held_out: bool,
    first_length_weights: Option<&[f64]>,
) -> Vec<Problem> {
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(n);
    let mut tries = 0;
    while out.len() < n && tries < 50 * n + 1000 {
        tries += 1;
        let p = draw(rng, op, opts, max_digits, first_length_weights);
        if is_held_out(&p) != held_out || (held_out && !seen.insert(p)) {
            continue;
        }
        out.push(p);
    }
    out
}

pub struct ArithmeticSummary {
    pub train_problems: usize,
    pub test_problems: usize,
    pub ood_problems: usize,
    pub train_tokens: usize,
}

pub fn prepare_arithmetic(opts: &ArithmeticOptions, out_dir: &Path) -> Result<ArithmeticSummary> {
    if opts.ops.is_empty() {
        bail!("no operations chosen: use --ops with some of + - * /");
    }
    if let Some(op) = opts.ops.iter().enumerate().find_map(|(i, op)| {
        // A repeated operation would silently double its share of the problems.
        opts.ops[..i].contains(op).then_some(op)
    }) {
        bail!(
            "--ops names {} twice: give each operation once",
            op.symbol()
        );
    }
    if opts.train_per_op == 0 {
        bail!("train_per_op must be at least 1: a dataset with no training problems cannot train");
    }
    if opts.min_digits == 0 || opts.min_digits > opts.max_digits || opts.max_digits > 9 {
        bail!(
            "digits must satisfy 1 <= min_digits <= max_digits <= 9 (got {}..{})",
            opts.min_digits,
            opts.max_digits
        );
    }
    let weights = opts.dividend_weights();
    if weights.len() != opts.max_digits - opts.min_digits + 1
        || weights.iter().any(|w| !(w.is_finite() && *w >= 0.0))
        || weights.iter().sum::<f64>() <= 0.0
    {
        bail!(
            "dividend_weights: give {} non-negative weights, one per dividend length from {} to {} digits (got {:?})",
            opts.max_digits - opts.min_digits + 1,
            opts.min_digits,
            opts.max_digits,
            weights
        );
    }
    for (op, name) in [(Op::Mul, "mul_train_factor"), (Op::Div, "div_train_factor")] {
        if opts.ops.contains(&op) && opts.train_count(op) == 0 {
            bail!(
                "{name} must be at least 1: {} would have no training problems",
                op.symbol()
            );
        }
    }
    let layout = opts.layout();
    dataset::open_for_prepare(out_dir)?;
    let vocab = CharVocab::from_text(VOCAB);
    let mut rng = Rng::new(opts.seed);
    let (mut train, mut test, mut ood) = (String::new(), String::new(), String::new());
    let (mut n_train, mut n_test, mut n_ood) = (0, 0, 0);
    for &op in &opts.ops {
        let count = opts.train_count(op);
        let length_weights = (op == Op::Div).then_some(weights.as_slice());
        for p in sample(
            &mut rng,
            op,
            opts,
            opts.max_digits,
            count,
            false,
            length_weights,
        ) {
            train.push_str(&p.line(layout));
            n_train += 1;
        }
        for p in sample(
            &mut rng,
            op,
            opts,
            opts.max_digits,
            opts.test_per_op,
            true,
            None,
        ) {
            test.push_str(&p.line(layout));
            n_test += 1;
        }
        // Out of distribution: one digit longer than anything trained on.
        let longer = ArithmeticOptions {
            min_digits: opts.max_digits + 1,
            ..opts.clone()
        };
        for p in sample(
            &mut rng,
            op,
            &longer,
            opts.max_digits + 1,
            opts.test_per_op / 4,
            true,
            None,
        ) {
            debug_assert!(p.length() > opts.max_digits || digits(p.b) <= opts.max_divisor_digits);
            ood.push_str(&p.line(layout));
            n_ood += 1;
        }
    }
    // Shuffle training lines so operations interleave (Fisher-Yates on line starts).
    let mut lines: Vec<&str> = train.split_inclusive('\n').collect();
    for i in (1..lines.len()).rev() {
        lines.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let train_ids = vocab.encode(&lines.concat())?;
    // All files change together (a new train.bin beside an old test.txt could hold test
    // problems): temp names first, then one commit.
    let options = serde_json::to_string_pretty(opts)?;
    let files = vec![
        write_tokens_pending(&out_dir.join("train.bin"), &train_ids, TokenFormat::RawU16)?,
        write_tokens_pending(
            &out_dir.join("val.bin"),
            &vocab.encode(&test)?,
            TokenFormat::RawU16,
        )?,
        write_pending(&out_dir.join("meta.json"), vocab.to_meta_json().as_bytes())?,
        write_pending(&out_dir.join("test.txt"), test.as_bytes())?,
        write_pending(&out_dir.join("ood.txt"), ood.as_bytes())?,
        write_pending(&out_dir.join(OPTIONS_FILE), options.as_bytes())?,
    ];
    dataset::stage(out_dir, files)?.commit()?;
    Ok(ArithmeticSummary {
        train_problems: n_train,
        test_problems: n_test,
        ood_problems: n_ood,
        train_tokens: train_ids.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carries_are_counted() {
        assert_eq!(carries(999, 1), 3);
        assert_eq!(carries(123, 456), 0);
        assert_eq!(carries(15, 5), 1);
    }

    #[test]
    fn held_out_problems_never_appear_in_training_in_the_scratchpad_format() {
        let dir = std::env::temp_dir().join(format!("nanogpt-arith-held-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let opts = ArithmeticOptions {
            ops: Op::ALL.to_vec(),
            format: Format::Scratchpad,
            train_per_op: 20_000,
            mul_train_factor: 2,
            ..ArithmeticOptions::default()
        };
        prepare_arithmetic(&opts, &dir).unwrap();
        let vocab = CharVocab::load(&dir.join("meta.json")).unwrap();
        let bytes = std::fs::read(dir.join("train.bin")).unwrap();
        let ids: Vec<u32> = bytes
            .chunks_exact(2)
            .map(|c| u32::from(u16::from_le_bytes([c[0], c[1]])))
            .collect();
        let train = vocab.decode(&ids).unwrap();
        let read = |name: &str| -> HashSet<Problem> {
            let text = std::fs::read_to_string(dir.join(name)).unwrap();
            text.lines()
                .map(|l| Problem::parse_line(l).unwrap().0)
                .collect()
        };
        let (test, ood) = (read("test.txt"), read("ood.txt"));
        assert!(test.iter().chain(&ood).all(is_held_out));
        let (mut divisions, mut products) = (0, 0);
        for line in train.lines() {
            let (p, completion) = Problem::parse_line(line).unwrap();
            assert!(!is_held_out(&p), "{line}");
            assert_eq!(completion, p.completion(opts.layout()), "{line}");
            if p.op == Op::Div {
                divisions += 1;
                assert_eq!(line.len(), 52, "{line}");
            }
            products += usize::from(p.op == Op::Mul);
        }
        // Each operation's factor times train_per_op: 3 for division, 2 for multiplication, 1
        // for addition and subtraction.
        assert_eq!((divisions, products), (60_000, 40_000));
        assert_eq!(train.lines().count(), 140_000);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn dividend_lengths_follow_the_weights() {
        let opts = ArithmeticOptions::default();
        let weights = opts.dividend_weights();
        assert_eq!(weights, [1.0, 3.0, 6.0]);
        let mut rng = Rng::new(2);
        let ps = sample(&mut rng, Op::Div, &opts, 3, 20_000, false, Some(&weights));
        for (len, want) in [(1, 0.1), (2, 0.3), (3, 0.6)] {
            let share = ps.iter().filter(|p| digits(p.a) == len).count() as f64 / ps.len() as f64;
            assert!((share - want).abs() < 0.015, "length {len}: {share}");
        }
    }

    #[test]
    fn addition_is_balanced_by_length_and_carries() {
        let opts = ArithmeticOptions::default();
        let mut rng = Rng::new(1);
        let ps = sample(&mut rng, Op::Add, &opts, 3, 6000, false, None);
        for len in 1..=3 {
            let share = ps.iter().filter(|p| digits(p.a) == len).count() as f64 / ps.len() as f64;
            assert!((share - 1.0 / 3.0).abs() < 0.03, "length {len}: {share}");
        }
        // Among 3-digit + 3-digit problems, 0, 1, 2 and 3 carries are equally likely.
        let both3: Vec<_> = ps
            .iter()
            .filter(|p| digits(p.a) == 3 && digits(p.b) == 3)
            .collect();
        for k in 0..=3 {
            let share =
                both3.iter().filter(|p| carries(p.a, p.b) == k).count() as f64 / both3.len() as f64;
            assert!(
                (share - 0.25).abs() < 0.06,
                "{k} carries: {share} of {}",
                both3.len()
            );
        }
    }
}
