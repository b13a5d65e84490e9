//! `nanogpt sample` (nanoGPT's `sample.py`) and `nanogpt repetition` (repetition metrics per
//! decoding setting): [`run_sample`] and [`run_repetition`] load the model ([`crate::load`]),
//! generate, and write to the given streams, so tests drive them exactly as the command line
//! does. The options are [`super::options`].
//!
//! # `nanogpt sample` output
//! - Default: each sample streams to stdout token by token (see [`super::stream`]). Each sample
//!   has its own random stream, so the text does not depend on `--batch_size`.
//! - `--json`: no streaming; one JSON object per line per sample (JSON Lines):
//!   `{"sample", "prompt", "prompt_ids", "generated_ids", "text", "finish_reason", "stop",
//!   "score", "mean_logprob"}`, and `"loop_guard"` when the loop guard fired. `prompt_ids` are the ids generation started from (the prompt's,
//!   or `[50256]` for an empty prompt with GPT-2's vocabulary); `text` is the generated text
//!   only; `finish_reason` is `length`, `eot` (the end-of-text token, not in `generated_ids`) or
//!   `stop` (`stop` then names the string; `generated_ids` ends with the token that completed it)
//!   or `loop` (the loop guard stopped it). `loop_guard` lists where the guard fired:
//!   `{"position", "span", "action"}`, `position` indexing the generated tokens as they were then
//!   (where the loop began), `action` `stop` or `backtrack`.
//! - Notes (prompt cropped to the context, download progress, empty prompt) go to stderr.
//!
//! # Prompts
//! `--start` is the text itself or `FILE:path` (the whole file, as nanoGPT reads it). A prompt
//! longer than the model's `block_size` is cropped to its last `block_size` tokens (nanoGPT
//! does the same), with a note on stderr. An empty prompt starts from `<|endoftext|>` with GPT-2's
//! vocabulary (as transformers does) and is an error with a character vocabulary.

use super::generate::{generate, generate_each};
use super::options::{unescape, RepetitionArgs, SampleArgs, SamplerKind};
use super::repetition::{measure_generations, LoopRule};
use super::report::{self, RepetitionReport, RepetitionRow};
use super::run_c::{run_c_generate, sets_unused};
use super::sequence::start_tokens;
use super::settings::{parse_setting, Setting, SETTING_NAMES};
use super::stream::{record, Streamer};
use crate::engine::{self, InferenceWeights, KvDtype};
use crate::load;
use crate::tokenizer::Tokenizer;
use anyhow::{anyhow, bail, Context, Result};
use std::io::Write;
use std::path::Path;
use std::time::Instant;

/// The prompt text of `--start`: the text itself, or the file of `FILE:path`.
pub fn read_start(start: &str) -> Result<String> {
    match start.strip_prefix("FILE:") {
        Some(path) => std::fs::read_to_string(path).map_err(|e| {
            anyhow!("--start=FILE:{path}: cannot read the prompt file ({e}): check the path, or pass the prompt text itself")
        }),
        None => Ok(start.to_string()),
    }
}

/// `nanogpt sample`: loads the model, generates, and prints to `out` (streaming, or JSON Lines
/// with `--json`) batch by batch, keeping no more than one batch in memory; notes go to `err`.
///
/// It runs on a thread of rayon's pool (the caller waits): each decoding step starts dozens of
/// parallel kernels, and from a thread outside the pool every one of them is a handoff and a
/// wake-up, which for a small model costs more than the step.
pub fn run_sample(
    args: &SampleArgs,
    out: &mut (dyn Write + Send),
    err: &mut (dyn Write + Send),
) -> Result<()> {
    rayon::scope(|_| sample_on_pool(args, out, err))
}

fn sample_on_pool(args: &SampleArgs, out: &mut dyn Write, err: &mut dyn Write) -> Result<()> {
    let prompt_text = read_start(&args.start)?;
    if args.compile.is_some() {
        writeln!(err, "note: --compile is ignored")?;
    }
    let loaded = load::for_sampling(&args.model, err)?;
    let weights = inference_weights(args, &loaded, err)?;
    let mut engine = engine::open(loaded.model, args.device)?;
    engine.set_inference_weights(weights)?;
    // run_c is run.c's (and runq.c's) arithmetic, f32 cache included.
    let run_c_cache = (args.sampler == SamplerKind::RunC).then_some(KvDtype::Float32);
    engine.set_kv_cache_dtype(args.kv_cache_dtype.or(run_c_cache))?;
    let (model, tok) = (engine.as_ref(), &loaded.tokenizer);
    if args.sampler == SamplerKind::RunC {
        let Tokenizer::Llama(llama_tok) = tok else {
            bail!("--sampler=run_c is llama2.c's loop: it runs Llama models (a llama2.c .bin or a Llama directory), not this one");
        };
        if sets_unused(&args.decoding) {
            writeln!(
                err,
                "note: --sampler=run_c reads --temperature, --top_p, --seed, --max_new_tokens and --num_samples only; the other decoding settings are not used"
            )?;
        }
        run_c_generate(
            model,
            llama_tok,
            &prompt_text,
            &args.decoding,
            args.json,
            out,
            err,
        )?;
        return Ok(());
    }
    let cfg = args.decoding.config(tok, model.config().vocab_size)?;
    let prompt = tok
        .encode(&prompt_text)
        .context("cannot encode --start with the model's vocabulary")?;
    let start = start_tokens(model, &prompt, tok)?;
    if prompt.is_empty() {
        writeln!(
            err,
            "note: empty prompt: starting from <|endoftext|> (token {})",
            start.first().copied().unwrap_or_default()
        )?;
    }
    let block = model.config().block_size;
    if start.len() > block {
        writeln!(
            err,
            "note: the prompt has {} tokens, more than the model's context of {block}: the model sees only its last {block} (as nanoGPT crops it)",
            start.len()
        )?;
    }
    if cfg.num_beams > 1 && cfg.num_samples > 1 {
        writeln!(
            err,
            "note: beam search returns --num_return_sequences={} sequences; --num_samples is not used",
            cfg.num_return_sequences
        )?;
    }
    if args.json {
        generate_each(model, &start, &cfg, tok, &mut |_, _| {}, &mut |i, g| {
            let r = record(i, &prompt_text, &start, &g, tok, &cfg.stop);
            writeln!(out, "{}", serde_json::to_string(&r)?)?;
            Ok(())
        })?;
        out.flush()?;
        return Ok(());
    }
    let group = if cfg.num_beams > 1 {
        1
    } else if cfg.batch_size == 0 {
        cfg.num_samples
    } else {
        cfg.batch_size.min(cfg.num_samples)
    }
    .max(1);
    let mut streamer = Streamer::new(out, tok, &cfg.stop, &prompt_text, group);
    let mut done = 0;
    let result = generate_each(
        model,
        &start,
        &cfg,
        tok,
        &mut |s, t| streamer.token(s, t),
        &mut |_, _| {
            done += 1;
            Ok(())
        },
    );
    match result {
        Ok(()) => streamer.finish(done),
        Err(e) => {
            // Show what was generated before the failure, then the failure.
            streamer.flush();
            Err(e)
        }
    }
}

/// Prompts used when `--prompts` is not given: openings in the style of tiny Shakespeare (the
/// dataset nanoGPT's examples train on; plain characters, so character vocabularies have them).
pub const DEFAULT_PROMPTS: [&str; 6] = [
    "ROMEO:\n",
    "First Citizen:\nBefore we proceed any further, hear me speak.\n",
    "KING RICHARD III:\nNow is the winter of our discontent\n",
    "JULIET:\nO Romeo, Romeo! wherefore art thou Romeo?\n",
    "HAMLET:\nTo be, or not to be, that is the question:\n",
    "MENENIUS:\nI tell you, friends, most charitable care\n",
];

/// The prompts of `--prompts FILE` (one per line, `\n` escapes), or [`DEFAULT_PROMPTS`].
pub fn read_prompts(path: Option<&Path>) -> Result<Vec<String>> {
    let Some(path) = path else {
        return Ok(DEFAULT_PROMPTS.iter().map(|s| s.to_string()).collect());
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        anyhow!(
            "--prompts={}: cannot read the prompt file ({e}): give a text file with one prompt per line",
            path.display()
        )
    })?;
    let prompts: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(unescape)
        .collect();
    if prompts.is_empty() {
        bail!(
            "--prompts={}: no prompts in the file (one per line)",
            path.display()
        );
    }
    Ok(prompts)
}

/// `nanogpt repetition`: generates for every prompt and setting, measures, and prints the table
/// to `out` (Markdown, or CSV / JSON); progress goes to `err`.
pub fn run_repetition(
    args: &RepetitionArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<RepetitionReport> {
    if args.csv && args.json {
        bail!("--csv and --json: choose one");
    }
    if args.num_samples == 0 {
        bail!("--num_samples must be at least 1");
    }
    let settings: Vec<Setting> = if args.settings.is_empty() {
        SETTING_NAMES
            .iter()
            .map(|n| parse_setting(n))
            .collect::<Result<_>>()?
    } else {
        args.settings
            .iter()
            .flat_map(|s| s.split(','))
            .filter(|s| !s.trim().is_empty())
            .map(parse_setting)
            .collect::<Result<_>>()?
    };
    if settings.is_empty() {
        bail!(
            "--settings is empty: name at least one of {}",
            SETTING_NAMES.join(", ")
        );
    }
    let prompts = read_prompts(args.prompts.as_deref())?;
    let loaded = load::for_sampling(&args.model, err)?;
    let weights = dtype_weights(args.dtype.as_deref(), InferenceWeights::F32, &loaded, err)?;
    let mut engine = engine::open(loaded.model, args.device)?;
    engine.set_inference_weights(weights)?;
    engine.set_kv_cache_dtype(args.kv_cache_dtype)?;
    let (model, tok) = (engine.as_ref(), &loaded.tokenizer);
    let mut encoded = Vec::with_capacity(prompts.len());
    for (i, p) in prompts.iter().enumerate() {
        let ids = tok.encode(p).with_context(|| {
            format!("prompt {} ({p:?}) does not fit the model's vocabulary: pass --prompts FILE with prompts it can encode", i + 1)
        })?;
        encoded.push(start_tokens(model, &ids, tok)?);
    }
    let rule = LoopRule::default();
    let mut rows = Vec::with_capacity(settings.len());
    for (si, setting) in settings.iter().enumerate() {
        let t0 = Instant::now();
        let mut cfg = setting.config.clone();
        cfg.max_new_tokens = args.max_new_tokens;
        cfg.seed = args.seed;
        cfg.num_samples = if cfg.sampling() && cfg.num_beams == 1 {
            args.num_samples
        } else {
            1
        };
        setting
            .settings
            .resolve_tokens(&mut cfg, tok, model.config().vocab_size)
            .with_context(|| format!("setting {}", setting.name))?;
        let mut gens = Vec::new();
        for ids in &encoded {
            gens.extend(
                generate(model, ids, &cfg, tok, &mut |_, _| {})
                    .with_context(|| format!("setting {}", setting.name))?,
            );
        }
        let stats = measure_generations(&gens, &rule);
        writeln!(
            err,
            "[{}/{}] {}: {} samples, {} tokens, {:.1}s",
            si + 1,
            settings.len(),
            setting.name,
            stats.samples,
            stats.tokens,
            t0.elapsed().as_secs_f64()
        )?;
        rows.push(RepetitionRow {
            setting: setting.name.clone(),
            description: setting.description.clone(),
            stats,
        });
    }
    let report = RepetitionReport {
        model: loaded.name.clone(),
        prompts,
        max_new_tokens: args.max_new_tokens,
        num_samples: args.num_samples,
        seed: args.seed,
        loop_rule: rule,
        rows,
    };
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else if args.csv {
        write!(out, "{}", report::csv(&report))?;
    } else {
        write!(out, "{}", report::markdown(&report))?;
    }
    out.flush()?;
    Ok(report)
}

/// The weights `--dtype` asks cached inference to compute with: f32 by default, int8 (Q8_0, group
/// 64, or a llama2.c v2 file's own group) for `int8`, and int8 at the file's group for a v2 file
/// with `--sampler=run_c` unless `--dtype=float32` (runq.c's arithmetic). Notes go to `err`.
pub fn inference_weights(
    args: &SampleArgs,
    loaded: &load::LoadedModel,
    err: &mut dyn Write,
) -> Result<InferenceWeights> {
    let default = match (args.sampler, loaded.int8_group) {
        (SamplerKind::RunC, Some(group)) => InferenceWeights::Q8 { group },
        _ => InferenceWeights::F32,
    };
    dtype_weights(args.dtype.as_deref(), default, loaded, err)
}

/// `--dtype`'s value as weights: float32, bfloat16 (float16 too: the same size, no fast path of
/// its own) or int8 (groups of 64). An error names the accepted values.
pub fn parse_dtype(dtype: &str) -> Result<InferenceWeights> {
    match dtype.trim() {
        "float16" => Ok(InferenceWeights::Bf16),
        d => d.parse(),
    }
}

/// The weights `--dtype` names (`default` without one; int8 takes a llama2.c v2 file's own
/// group, else 64), with a note when int8 cannot use its group everywhere. `sample`,
/// `repetition` and `serve` share it.
pub fn dtype_weights(
    dtype: Option<&str>,
    default: InferenceWeights,
    loaded: &load::LoadedModel,
    err: &mut dyn Write,
) -> Result<InferenceWeights> {
    let file_q8 = loaded
        .int8_group
        .map(|group| InferenceWeights::Q8 { group });
    let w = match dtype {
        None => default,
        Some(d) => match parse_dtype(d)? {
            InferenceWeights::Q8 { .. } => file_q8.unwrap_or(InferenceWeights::Q8 { group: 64 }),
            InferenceWeights::Bf16 if d.trim() == "float16" => {
                writeln!(
                    err,
                    "note: --dtype=float16 samples with bfloat16 weights (the same size; float16 has no fast path here)"
                )?;
                InferenceWeights::Bf16
            }
            w => w,
        },
    };
    if let InferenceWeights::Q8 { group } = w {
        let cfg = &loaded.model.config;
        let mut widths = vec![cfg.n_embd, cfg.mlp_width()];
        widths.dedup();
        for inp in widths.into_iter().filter(|n| !n.is_multiple_of(group)) {
            match engine::q8_group(group, inp) {
                0 => writeln!(
                    err,
                    "note: int8: rows of {inp} values are not a multiple of the group size {group}: the matrices they feed stay f32"
                )?,
                g => writeln!(
                    err,
                    "note: int8: rows of {inp} values are not a multiple of the group size {group}: the matrices they feed use groups of {g} (runq.c would let its groups run across rows)"
                )?,
            }
        }
    }
    Ok(w)
}
