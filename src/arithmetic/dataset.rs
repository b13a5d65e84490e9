//! `nanogpt prepare arithmetic`: seeded problem sets, balanced by operand digit length (and by
//! carries for addition), with a held-out test set that can never appear in training.
//!
//! Files in the dataset directory: train.bin / val.bin (characters, uint16), meta.json (the fixed
//! vocabulary), test.txt (held-out problems, one line each, val.bin is these lines),
//! ood.txt (longer operands than training, never trained on), arithmetic.json (the options).

use super::problems::{digits, Format, Op, Problem, VOCAB};
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
            train_per_op: 100_000,
            test_per_op: 1000,
            seed: 1337,
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

/// One problem: lengths uniform over the allowed range; for addition the number of carries is
/// also drawn uniformly (0..=longer length) and operands are redrawn until it matches (up to a
/// bound, for combinations that rarely carry that often, like 999+1).
fn draw(rng: &mut Rng, op: Op, opts: &ArithmeticOptions, max_digits: usize) -> Problem {
    let span = |rng: &mut Rng, lo: usize, hi: usize| lo + rng.below((hi - lo + 1) as u64) as usize;
    let la = span(rng, opts.min_digits, max_digits);
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

/// Draws `n` distinct problems of `op` on the held-out (or training) side of the split. Small
/// problem spaces (1-digit operands) may hold fewer than `n`; sampling stops after enough tries.
fn sample(
    rng: &mut Rng,
    op: Op,
    opts: &ArithmeticOptions,
    max_digits: usize,
    n: usize,
    held_out: bool,
    distinct: bool,
) -> Vec<Problem> {
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(n);
    let mut tries = 0;
    while out.len() < n && tries < 50 * n + 1000 {
        tries += 1;
        let p = draw(rng, op, opts, max_digits);
        if is_held_out(&p) != held_out || (distinct && !seen.insert(p)) {
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
    dataset::open_for_prepare(out_dir)?;
    let vocab = CharVocab::from_text(VOCAB);
    let mut rng = Rng::new(opts.seed);
    let (mut train, mut test, mut ood) = (String::new(), String::new(), String::new());
    let (mut n_train, mut n_test, mut n_ood) = (0, 0, 0);
    for &op in &opts.ops {
        for p in sample(
            &mut rng,
            op,
            opts,
            opts.max_digits,
            opts.train_per_op,
            false,
            false,
        ) {
            train.push_str(&p.line(opts.format));
            n_train += 1;
        }
        for p in sample(
            &mut rng,
            op,
            opts,
            opts.max_digits,
            opts.test_per_op,
            true,
            true,
        ) {
            test.push_str(&p.line(opts.format));
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
            true,
        ) {
            debug_assert!(p.length() > opts.max_digits || digits(p.b) <= opts.max_divisor_digits);
            ood.push_str(&p.line(opts.format));
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
    fn addition_is_balanced_by_length_and_carries() {
        let opts = ArithmeticOptions::default();
        let mut rng = Rng::new(1);
        let ps = sample(&mut rng, Op::Add, &opts, 3, 6000, false, false);
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
