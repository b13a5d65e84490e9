//! The table `nanogpt repetition` prints: one row per decoding setting, as Markdown or CSV (and
//! JSON through serde). The metrics are defined in [`super::repetition`].

use super::repetition::{LoopRule, RepetitionStats};
use serde::Serialize;
use std::fmt::Write;

/// One decoding setting's measurements.
#[derive(Clone, Debug, Serialize)]
pub struct RepetitionRow {
    pub setting: String,
    pub description: String,
    #[serde(flatten)]
    pub stats: RepetitionStats,
}

/// Everything `nanogpt repetition` measured.
#[derive(Clone, Debug, Serialize)]
pub struct RepetitionReport {
    pub model: String,
    pub prompts: Vec<String>,
    pub max_new_tokens: usize,
    /// Samples per prompt for the settings that sample.
    pub num_samples: usize,
    pub seed: u64,
    pub loop_rule: LoopRule,
    pub rows: Vec<RepetitionRow>,
}

/// The columns: header, and the value of a row.
const COLUMNS: [&str; 13] = [
    "setting",
    "decoding",
    "samples",
    "tokens",
    "rep-2",
    "rep-3",
    "rep-4",
    "distinct-2",
    "distinct-3",
    "distinct-4",
    "seq-rep-4",
    "ends in loop",
    "mean log p",
];

fn cells(r: &RepetitionRow) -> [String; 13] {
    let s = &r.stats;
    let f = |x: f64| format!("{x:.3}");
    [
        r.setting.clone(),
        r.description.clone(),
        s.samples.to_string(),
        s.tokens.to_string(),
        f(s.rep_2),
        f(s.rep_3),
        f(s.rep_4),
        f(s.distinct_2),
        f(s.distinct_3),
        f(s.distinct_4),
        f(s.seq_rep_4),
        format!("{:.0}%", s.loop_share * 100.0),
        s.mean_logprob
            .map_or_else(|| "-".to_string(), |x| format!("{x:.2}")),
    ]
}

/// The report as a Markdown table, with a line saying what was run and a legend.
pub fn markdown(report: &RepetitionReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Model `{}`, {} prompts, {} new tokens, {} samples per prompt when sampling (greedy and beam search: 1), seed {}.\n",
        report.model,
        report.prompts.len(),
        report.max_new_tokens,
        report.num_samples,
        report.seed
    );
    let _ = writeln!(out, "| {} |", COLUMNS.join(" | "));
    let align: Vec<&str> = COLUMNS
        .iter()
        .enumerate()
        .map(|(i, _)| if i < 2 { "---" } else { "---:" })
        .collect();
    let _ = writeln!(out, "|{}|", align.join("|"));
    for r in &report.rows {
        let c = cells(r);
        let escaped: Vec<String> = c.iter().map(|x| x.replace('|', "\\|")).collect();
        let _ = writeln!(out, "| {} |", escaped.join(" | "));
    }
    let _ = writeln!(
        out,
        "\nOver generated token ids: rep-n = 1 - distinct n-grams / n-grams within each sample, pooled \
         (Su et al. 2022); distinct-n = distinct n-grams across all samples / all n-grams; seq-rep-4 = \
         rep-4 per sample, averaged (Welleck et al. 2019); ends in loop = share of samples ending in a \
         phrase of {}+ tokens repeated back to back to the end; mean log p = mean log-probability of \
         the generated tokens under the model (higher = more likely text). Lower rep and higher distinct \
         mean less repetition.",
        report.loop_rule.min_period
    );
    out
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The report as CSV: a header line, then one line per setting, with full-precision numbers
/// (`loop_share` as a fraction, `mean_logprob` empty when unknown).
pub fn csv(report: &RepetitionReport) -> String {
    let mut out = String::from(
        "setting,description,samples,tokens,rep_2,rep_3,rep_4,diversity,distinct_1,distinct_2,distinct_3,distinct_4,seq_rep_4,loop_share,mean_logprob\n",
    );
    for r in &report.rows {
        let s = &r.stats;
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            csv_field(&r.setting),
            csv_field(&r.description),
            s.samples,
            s.tokens,
            s.rep_2,
            s.rep_3,
            s.rep_4,
            s.diversity,
            s.distinct_1,
            s.distinct_2,
            s.distinct_3,
            s.distinct_4,
            s.seq_rep_4,
            s.loop_share,
            s.mean_logprob.map_or_else(String::new, |x| x.to_string())
        );
    }
    out
}
