//! `nanogpt sample --sampler=run_c`: llama2.c's `run.c` generate loop on this crate's engine, so
//! that a Llama file, a prompt and a seed give the ids run.c gives and the text it prints.
//!
//! As run.c: the prompt is run.c's encoding with BOS first; each step samples with run.c's
//! sampler (`crate::llama::run_c`: temperature 0 = greedy, else one xorshift coin per token,
//! through top-p when 0 < top_p < 1); sampling BOS ends the sample (run.c's "sequence
//! delimiter"; EOS does not); the output is every token after BOS as run.c prints it, then a
//! newline. `--max_new_tokens=N` is run.c's `-n` minus the prompt's length plus one (run.c counts
//! forward passes, and prints its last token without forwarding it). The prompt goes through
//! the model in one pass where run.c feeds it a token at a time: the logits differ by rounding
//! only (~1e-6 here), far below the gaps that decide run.c's choices. On a llama2.c v2 (Q8_0)
//! file the engine computes in int8 as runq.c does (`--dtype=float32` turns that off; see
//! `super::run::inference_weights`).

use super::options::SampleSettings;
use crate::engine::{Engine, Feed};
use crate::llama::run_c::Sampler;
use crate::llama::tokenizer::{LlamaTokenizer, BOS};
use anyhow::{bail, Result};
use std::io::Write;
use std::time::Instant;

/// One sample: its prompt ids (BOS first), the new ids, and whether it ended on BOS.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RunCSample {
    pub prompt_ids: Vec<u32>,
    pub new_ids: Vec<u32>,
    pub stopped_on_bos: bool,
}

/// Whether `s` sets anything besides what run.c's loop reads (temperature, top_p, seed,
/// max_new_tokens, num_samples), which `--sampler=run_c` would leave unused.
pub fn sets_unused(s: &SampleSettings) -> bool {
    let read = SampleSettings {
        temperature: s.temperature,
        top_p: s.top_p,
        seed: s.seed,
        max_new_tokens: s.max_new_tokens,
        num_samples: s.num_samples,
        ..SampleSettings::default()
    };
    *s != read
}

/// Generates `settings.num_samples` samples of up to `max_new_tokens` from `prompt` as run.c
/// does, one sampler (one random stream) across them, printing each as run.c prints (or, with
/// `json`, one JSON object per sample and line). Each sample ends with run.c's speed line on
/// `err`, measured as run.c does (the steps after the first, over the time since it ended), so
/// the two programs can be timed side by side.
pub fn run_c_generate(
    model: &dyn Engine,
    tok: &LlamaTokenizer,
    prompt: &str,
    settings: &SampleSettings,
    json: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<Vec<RunCSample>> {
    let (temperature, top_p, seed) = (
        settings.temperature,
        settings.top_p.unwrap_or(1.0),
        settings.seed,
    );
    if !(temperature >= 0.0 && temperature.is_finite()) {
        bail!("--temperature={temperature}: run.c's sampler takes 0 (greedy) or a positive temperature");
    }
    let mut sampler = Sampler::new(temperature, top_p, seed);
    let cfg = model.config();
    let (v, vp, block) = (cfg.vocab_size, cfg.padded_vocab_size(), cfg.block_size);
    let prompt_ids: Vec<u32> = [BOS].into_iter().chain(tok.encode_runc(prompt)).collect();
    if prompt_ids.len() >= block {
        bail!(
            "the prompt has {} tokens with BOS, and the model's context is {block}: shorten it",
            prompt_ids.len()
        );
    }
    let mut samples = Vec::with_capacity(settings.num_samples);
    let mut logits = vec![0.0f32; vp];
    for _ in 0..settings.num_samples {
        let mut cache = model.kv_cache(1, block);
        let mut feed = prompt_ids.clone();
        let mut s = RunCSample {
            prompt_ids: prompt_ids.clone(),
            new_ids: Vec::new(),
            stopped_on_bos: false,
        };
        let mut printed = Vec::new();
        for w in prompt_ids.windows(2) {
            printed.extend(tok.runc_printed(w[0], w[1])?);
        }
        let mut prev = *prompt_ids.last().unwrap_or(&BOS);
        let (mut steps, mut start) = (0usize, None);
        while s.new_ids.len() < settings.max_new_tokens {
            if cache.len(0) + feed.len() > block {
                break;
            }
            model.forward_cached(
                &mut cache,
                &[Feed {
                    row: 0,
                    tokens: &feed,
                }],
                &mut logits,
            )?;
            steps += 1;
            let next = sampler.sample(&mut logits[..v]) as u32;
            if next == BOS {
                s.stopped_on_bos = true;
                break;
            }
            printed.extend(tok.runc_printed(prev, next)?);
            s.new_ids.push(next);
            prev = next;
            feed = vec![next];
            start.get_or_insert_with(Instant::now);
        }
        printed.push(b'\n');
        if json {
            writeln!(out, "{}", serde_json::to_string(&s)?)?;
        } else {
            out.write_all(&printed)?;
        }
        out.flush()?;
        if let (Some(start), true) = (start, steps > 1) {
            let per_s = (steps - 1) as f64 / start.elapsed().as_secs_f64();
            writeln!(err, "achieved tok/s: {per_s:.6}")?;
        }
        samples.push(s);
    }
    Ok(samples)
}
