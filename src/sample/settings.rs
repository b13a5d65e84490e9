//! The settings language of `nanogpt repetition`: a built-in decoding setting by name, or
//! `key=value` pairs joined by `+` on top of greedy decoding. The keys are those of
//! [`SampleSettings`], the table `nanogpt sample`'s flags come from.

use super::config::SamplingConfig;
use super::options::SampleSettings;
use anyhow::{bail, Context, Result};

/// The built-in decoding settings of `nanogpt repetition`, in report order.
pub const SETTING_NAMES: [&str; 13] = [
    "greedy",
    "sample",
    "top_p",
    "repetition_penalty",
    "no_repeat_ngram",
    "freq_presence",
    "dry",
    "beam",
    "loop_stop",
    "loop_backtrack",
    "mirostat",
    "xtc",
    "top_n_sigma",
];

/// Each built-in setting: its `key=value` spec and its description. Penalties apply to greedy.
const BUILT_IN: [(&str, &str); 13] = [
    ("", "greedy"),
    (
        "temperature=0.8+top_k=200",
        "temperature 0.8, top_k 200 (nanoGPT)",
    ),
    ("top_p=0.9", "temperature 1, top_p 0.9"),
    ("repetition_penalty=1.3", "greedy, repetition_penalty 1.3"),
    ("no_repeat_ngram_size=3", "greedy, no_repeat_ngram_size 3"),
    (
        "frequency_penalty=0.5+presence_penalty=0.5",
        "greedy, frequency 0.5 + presence 0.5",
    ),
    (
        "dry_multiplier=0.8+dry_base=1.75+dry_allowed_length=2",
        "greedy, DRY 0.8 / 1.75 / 2",
    ),
    ("num_beams=4", "beam search, 4 beams"),
    ("loop_guard=stop", "greedy, loop guard stop"),
    ("loop_guard=backtrack", "greedy, loop guard backtrack"),
    ("mirostat=2", "mirostat v2, tau 5, eta 0.1 (llama.cpp)"),
    (
        "xtc_probability=0.5+xtc_threshold=0.1",
        "temperature 1, XTC 0.5 / 0.1",
    ),
    ("top_n_sigma=1", "temperature 1, top-n-sigma 1"),
];

/// Keys that switch sampling on (at temperature 1 unless the spec gives a temperature).
const SAMPLING_KEYS: [&str; 7] = [
    "top_k",
    "top_p",
    "min_p",
    "typical_p",
    "mirostat",
    "xtc_probability",
    "top_n_sigma",
];

/// Keys the repetition run sets itself, the same for every setting.
const RUN_KEYS: [&str; 3] = ["num_samples", "max_new_tokens", "seed"];

/// One decoding setting of the repetition report.
#[derive(Clone, Debug)]
pub struct Setting {
    pub name: String,
    pub description: String,
    /// `num_samples`, `max_new_tokens` and `seed` are set per run; DRY's breaker ids are filled
    /// in from `dry_breakers` when DRY is on.
    pub config: SamplingConfig,
    /// DRY's sequence breakers as strings (llama.cpp's default unless the spec says otherwise).
    pub dry_breakers: Vec<String>,
}

/// A built-in setting by name, or a custom one: `key=value` pairs joined by `+`, on top of
/// greedy decoding (a sampling key such as `temperature`, `top_k`, `top_p` switches sampling on).
pub fn parse_setting(spec: &str) -> Result<Setting> {
    let spec = spec.trim();
    let (pairs, description) = match SETTING_NAMES.iter().position(|&n| n == spec) {
        Some(i) => (BUILT_IN[i].0, Some(BUILT_IN[i].1.to_string())),
        None if spec.contains('=') => (spec, None),
        None => bail!(
            "unknown setting '{spec}': use one of {} or key=value pairs joined by '+' (e.g. temperature=0.8+top_p=0.95)",
            SETTING_NAMES.join(", ")
        ),
    };
    // Greedy: temperature 0, no filters, one sample.
    let mut s = SampleSettings {
        num_samples: 1,
        temperature: 0.0,
        top_k: 0,
        ..SampleSettings::default()
    };
    let mut temperature_given = false;
    let mut parts = Vec::new();
    for pair in pairs.split('+').filter(|p| !p.trim().is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .with_context(|| format!("setting '{spec}': '{pair}' is not key=value"))?;
        let (k, v) = (k.trim(), v.trim());
        if RUN_KEYS.contains(&k) {
            bail!("setting '{spec}': {k} is the same for every setting: pass --{k} instead");
        }
        if k == "dry_sequence_breakers" {
            // "none", "default", or strings separated by '|' (\n escapes understood, as on
            // the command line).
            s.dry_sequence_breakers = match v {
                "default" => Vec::new(),
                _ => v
                    .split('|')
                    .filter(|b| !b.is_empty())
                    .map(String::from)
                    .collect(),
            };
        } else {
            s.set(k, v).with_context(|| format!("setting '{spec}'"))?;
        }
        temperature_given |= k == "temperature";
        if SAMPLING_KEYS.contains(&k) && !temperature_given && s.temperature == 0.0 {
            s.temperature = 1.0;
        }
        parts.push(format!("{k} {v}"));
    }
    let config = s.sampling_config();
    let description = description.unwrap_or_else(|| {
        if !config.sampling() && config.num_beams == 1 {
            parts.insert(0, "greedy".into());
        }
        parts.join(", ")
    });
    config
        .validate()
        .with_context(|| format!("setting '{spec}'"))?;
    Ok(Setting {
        name: spec.to_string(),
        description,
        dry_breakers: s.dry_breakers(),
        config,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::options::unescape;

    #[test]
    fn escapes_and_custom_settings() {
        assert_eq!(unescape("a\\nb\\\\n\\t\\x"), "a\nb\\n\t\\x");
        let s = parse_setting(
            "temperature=0.7+top_p=0.95+dry_multiplier=0.8+dry_sequence_breakers=none",
        )
        .unwrap();
        assert!(s.config.sampling());
        assert_eq!(s.config.top_p, Some(0.95));
        assert!(s.dry_breakers.is_empty());
        let g = parse_setting("repetition_penalty=1.2").unwrap();
        assert!(!g.config.sampling());
        assert!(g.description.starts_with("greedy"));
        assert!(parse_setting("top_p=2").is_err());
        for name in SETTING_NAMES {
            assert_eq!(parse_setting(name).unwrap().name, name);
        }
    }
}
