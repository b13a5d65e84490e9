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
const SAMPLING_KEYS: [&str; 9] = [
    "top_k",
    "top_p",
    "min_p",
    "typical_p",
    "epsilon_cutoff",
    "eta_cutoff",
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
    /// `num_samples`, `max_new_tokens` and `seed` are set per run; the ids of the settings given
    /// as text are filled in from `settings` ([`SampleSettings::resolve_tokens`]).
    pub config: SamplingConfig,
    /// The settings as parsed, text not yet turned into token ids.
    pub settings: SampleSettings,
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
        } else if k == "bad_words" || k == "sequence_bias" {
            // Several, separated by '|', as DRY's breakers.
            for item in v.split('|').filter(|b| !b.is_empty()) {
                s.set(k, item)
                    .with_context(|| format!("setting '{spec}'"))?;
            }
        } else {
            s.set(k, v).with_context(|| format!("setting '{spec}'"))?;
        }
        temperature_given |= k == "temperature";
        if SAMPLING_KEYS.contains(&k) && !temperature_given && s.temperature == 0.0 {
            s.temperature = 1.0;
        }
        parts.push(format!("{k} {v}"));
    }
    if s.penalty_alpha > 0.0 && !temperature_given {
        // top_k is contrastive search's candidate count here, not a sampling filter.
        s.temperature = 0.0;
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
        config,
        settings: s,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::options::unescape;
    use crate::tokenizer::Tokenizer;

    #[test]
    fn escapes_and_custom_settings() {
        assert_eq!(unescape("a\\nb\\\\n\\t\\x"), "a\nb\\n\t\\x");
        let s = parse_setting(
            "temperature=0.7+top_p=0.95+dry_multiplier=0.8+dry_sequence_breakers=none",
        )
        .unwrap();
        assert!(s.config.sampling());
        assert_eq!(s.config.top_p, Some(0.95));
        assert!(s.settings.dry_breakers().is_empty());
        let g = parse_setting("repetition_penalty=1.2").unwrap();
        assert!(!g.config.sampling());
        assert!(g.description.starts_with("greedy"));
        assert!(parse_setting("top_p=2").is_err());
        for name in SETTING_NAMES {
            assert_eq!(parse_setting(name).unwrap().name, name);
        }
    }

    #[test]
    fn bad_words_and_sequence_bias_as_text_or_ids() {
        let tok = Tokenizer::gpt2().unwrap();
        let s =
            parse_setting("bad_words=Romeo|ids:13+sequence_bias=\\n=-2|ids:11,290=1.5").unwrap();
        let mut cfg = s.config.clone();
        s.settings.resolve_tokens(&mut cfg, &tok, 50257).unwrap();
        // Text: as written and after a space (other BPE tokens); ids: exactly those.
        let romeo = tok.encode("Romeo").unwrap();
        let spaced = tok.encode(" Romeo").unwrap();
        assert_ne!(romeo, spaced);
        assert_eq!(cfg.bad_words_ids, vec![romeo, spaced, vec![13]]);
        // "\n" starts with whitespace: as written only.
        assert_eq!(
            cfg.sequence_bias,
            vec![(tok.encode("\n").unwrap(), -2.0), (vec![11, 290], 1.5)]
        );
        // Text that starts with a space is taken as written only.
        let mut settings = s.settings.clone();
        settings.bad_words = vec![" the".into()];
        settings.sequence_bias.clear();
        settings.resolve_tokens(&mut cfg, &tok, 50257).unwrap();
        assert_eq!(cfg.bad_words_ids, vec![tok.encode(" the").unwrap()]);
        // With penalty_alpha, top_k counts contrastive search's candidates: no sampling.
        let c = parse_setting("penalty_alpha=0.6+top_k=4").unwrap();
        assert!(!c.config.sampling() && c.description.starts_with("greedy"));
        for bad in ["bad_words=ids:", "sequence_bias=x", "sequence_bias=x=nan"] {
            let s = parse_setting(bad).unwrap();
            let mut cfg = s.config.clone();
            assert!(
                s.settings.resolve_tokens(&mut cfg, &tok, 50257).is_err(),
                "{bad}"
            );
        }
    }
}
