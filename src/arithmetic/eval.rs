//! `nanogpt eval arithmetic`: greedy answers to the held-out problems, scored by exact match of
//! the value stated after the last `=`, per operation and per operand length.

use super::dataset::{ArithmeticOptions, OPTIONS_FILE};
use super::problems::{parse_answer, Format, Layout, Op, Problem};
use crate::data::dataset;
use crate::engine::Engine;
use crate::sample::dist::argmax;
use crate::tokenizer::CharVocab;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

/// Sequences decoded together.
const BATCH: usize = 64;

#[derive(Clone, Debug, Serialize)]
pub struct Example {
    pub prompt: String,
    /// The completion in the dataset's format, as the model should write it.
    pub expected: String,
    /// What the model wrote.
    pub got: String,
    /// The value the model's answer states (None if it does not parse), for people to read.
    pub got_value: Option<String>,
    pub expected_value: String,
    pub correct: bool,
}

/// Exact-match accuracy: `accuracy[op][length]`, `overall[op]` and `overall["all"]`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Scores {
    pub accuracy: BTreeMap<String, BTreeMap<usize, f64>>,
    pub overall: BTreeMap<String, f64>,
    pub count: BTreeMap<String, usize>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ArithmeticReport {
    pub format: Format,
    /// The held-out test set (same lengths as training).
    pub test: Scores,
    /// Operands one digit longer than any trained on.
    pub ood: Scores,
    /// A few right and wrong answers per operation.
    pub examples: Vec<Example>,
}

/// A model's greedy completion of each problem (`\n` + prompt), cut at the first newline.
pub fn complete(
    model: &dyn Engine,
    vocab: &CharVocab,
    problems: &[Problem],
    layout: Layout,
) -> Result<Vec<String>> {
    let newline = vocab.id_of('\n').context("the vocabulary has no newline")?;
    let mut out = vec![String::new(); problems.len()];
    // Batch problems whose prompts have the same length, so one KV cache serves the batch.
    let mut by_len: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, p) in problems.iter().enumerate() {
        by_len
            .entry(p.prompt(layout).len() + 1)
            .or_default()
            .push(i);
    }
    let vp = model.config().padded_vocab_size();
    for (plen, idx) in by_len {
        for chunk in idx.chunks(BATCH) {
            let b = chunk.len();
            // Room for the expected answer plus slack: a longer answer is wrong anyway.
            let max_new = chunk
                .iter()
                .map(|&i| problems[i].completion(layout).len() + 3)
                .max()
                .unwrap_or(1);
            let max_t = (plen + max_new).min(model.config().block_size);
            if plen >= max_t {
                bail!(
                    "prompts of {plen} characters do not fit the model's block_size {}",
                    model.config().block_size
                );
            }
            let mut tokens = Vec::with_capacity(b * plen);
            for &i in chunk {
                tokens.extend(vocab.encode(&format!("\n{}", problems[i].prompt(layout)))?);
            }
            let mut cache = model.kv_cache(b, max_t);
            let mut logits = vec![0.0f32; b * vp];
            model.forward_cached_all(&mut cache, &tokens, plen, &mut logits)?;
            let mut done = vec![false; b];
            let mut generated: Vec<Vec<u32>> = vec![Vec::new(); b];
            loop {
                let next: Vec<u32> = (0..b)
                    .map(|r| {
                        argmax(&logits[r * vp..r * vp + model.config().vocab_size]).unwrap_or(0)
                            as u32
                    })
                    .collect();
                for r in 0..b {
                    if !done[r] {
                        if next[r] == newline {
                            done[r] = true;
                        } else {
                            generated[r].push(next[r]);
                        }
                    }
                }
                if done.iter().all(|&d| d)
                    || cache.len(0) >= max_t
                    || generated.iter().any(|g| g.len() >= max_new)
                {
                    break;
                }
                model.forward_cached_all(&mut cache, &next, 1, &mut logits)?;
            }
            for (r, &i) in chunk.iter().enumerate() {
                out[i] = vocab.decode(&generated[r])?;
            }
        }
    }
    Ok(out)
}

/// Scores completions against the problems' true answers.
pub fn score(
    problems: &[Problem],
    completions: &[String],
    layout: Layout,
) -> (Scores, Vec<Example>) {
    let mut tally: BTreeMap<(char, usize), (usize, usize)> = BTreeMap::new();
    let mut examples = Vec::new();
    let mut shown: BTreeMap<(char, bool), usize> = BTreeMap::new();
    for (p, got) in problems.iter().zip(completions) {
        let stated = parse_answer(got, p.op, layout);
        let correct = stated == Some(p.answer());
        let t = tally.entry((p.op.symbol(), p.length())).or_default();
        t.0 += usize::from(correct);
        t.1 += 1;
        let n = shown.entry((p.op.symbol(), correct)).or_default();
        if *n < 2 {
            *n += 1;
            examples.push(Example {
                prompt: p.prompt(layout),
                expected: p.completion(layout),
                got: got.clone(),
                got_value: stated.map(|a| a.to_string()),
                expected_value: p.answer().to_string(),
                correct,
            });
        }
    }
    let mut scores = Scores::default();
    let (mut all_right, mut all_n) = (0, 0);
    for op in Op::ALL {
        let key = op.symbol().to_string();
        let (mut right, mut n) = (0, 0);
        for (&(sym, len), &(r, t)) in &tally {
            if sym == op.symbol() {
                scores
                    .accuracy
                    .entry(key.clone())
                    .or_default()
                    .insert(len, r as f64 / t as f64);
                right += r;
                n += t;
            }
        }
        if n > 0 {
            scores.overall.insert(key.clone(), right as f64 / n as f64);
            scores.count.insert(key, n);
        }
        all_right += right;
        all_n += n;
    }
    if all_n > 0 {
        scores
            .overall
            .insert("all".into(), all_right as f64 / all_n as f64);
        scores.count.insert("all".into(), all_n);
    }
    (scores, examples)
}

/// Reads `test.txt` / `ood.txt` (one problem per line) from a prepared dataset.
pub fn read_problems(path: &Path) -> Result<Vec<Problem>> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read {}: run `nanogpt prepare arithmetic` first",
            path.display()
        )
    })?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.is_empty())
        .map(|(i, l)| {
            Problem::parse_line(l)
                .map(|(p, _)| p)
                .with_context(|| format!("{}:{}: not a problem: {l:?}", path.display(), i + 1))
        })
        .collect()
}

/// Evaluates `model` on the dataset in `data_dir` (made by `prepare arithmetic`).
pub fn evaluate(model: &dyn Engine, data_dir: &Path) -> Result<ArithmeticReport> {
    // First: it verifies the folder, whose other files change in the same commit.
    let vocab = dataset::vocabulary(data_dir)?;
    let opts_path = data_dir.join(OPTIONS_FILE);
    let text = std::fs::read_to_string(&opts_path).with_context(|| {
        format!(
            "cannot read {}: run `nanogpt prepare arithmetic` first",
            opts_path.display()
        )
    })?;
    let opts: ArithmeticOptions = serde_json::from_str(&text)
        .with_context(|| format!("{} is damaged", opts_path.display()))?;
    let Some(vocab) = vocab else {
        bail!(
            "{} has no meta.json: run `nanogpt prepare arithmetic` again",
            data_dir.display()
        );
    };
    if vocab.vocab_size() != model.config().vocab_size {
        bail!(
            "the model's vocabulary ({}) is not the dataset's ({}): was it trained on {}?",
            model.config().vocab_size,
            vocab.vocab_size(),
            data_dir.display()
        );
    }
    let test = read_problems(&data_dir.join("test.txt"))?;
    let ood = read_problems(&data_dir.join("ood.txt"))?;
    let layout = opts.layout();
    let (test_scores, mut examples) =
        score(&test, &complete(model, &vocab, &test, layout)?, layout);
    let (ood_scores, _) = score(&ood, &complete(model, &vocab, &ood, layout)?, layout);
    examples.sort_by_key(|e| (e.prompt.contains('+'), !e.correct));
    Ok(ArithmeticReport {
        format: opts.format,
        test: test_scores,
        ood: ood_scores,
        examples,
    })
}

/// The accuracy table as Markdown: one row per operation, one column per operand length.
pub fn markdown_table(scores: &Scores) -> String {
    let lengths: std::collections::BTreeSet<usize> = scores
        .accuracy
        .values()
        .flat_map(|m| m.keys().copied())
        .collect();
    let mut s = String::from("| op |");
    for l in &lengths {
        s += &format!(" {l} digits |");
    }
    s += " all |\n|---|";
    s += &"---:|".repeat(lengths.len() + 1);
    s.push('\n');
    for (op, by_len) in &scores.accuracy {
        s += &format!("| {op} |");
        for l in &lengths {
            s += &by_len
                .get(l)
                .map_or(" - |".to_string(), |a| format!(" {:.1}% |", a * 100.0));
        }
        s += &format!(
            " {:.1}% |\n",
            scores.overall.get(op).copied().unwrap_or(0.0) * 100.0
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scoring_counts_right_and_wrong_answers() {
        let reversed = Layout::unpadded(Format::Reversed);
        let problems = [
            Problem {
                a: 12,
                op: Op::Add,
                b: 30,
            },
            Problem {
                a: 123,
                op: Op::Add,
                b: 45,
            },
            Problem {
                a: 17,
                op: Op::Div,
                b: 5,
            },
        ];
        let right: Vec<String> = problems.iter().map(|p| p.completion(reversed)).collect();
        let (s, _) = score(&problems, &right, reversed);
        assert_eq!(s.overall["all"], 1.0);
        let wrong = vec!["24".to_string(), "861".to_string(), "3r3".to_string()];
        let (s, examples) = score(&problems, &wrong, reversed);
        assert_eq!(s.accuracy["+"][&2], 1.0); // 12+30=42 reversed is "24": right
        assert_eq!(s.accuracy["+"][&3], 1.0);
        assert_eq!(s.accuracy["/"][&2], 0.0);
        assert!((s.overall["all"] - 2.0 / 3.0).abs() < 1e-12);
        assert!(examples.iter().any(|e| !e.correct && e.prompt == "17/5="));
    }
}
