//! The user-facing side of sampling: `nanogpt sample` (nanoGPT's `sample.py`) and
//! `nanogpt repetition` (repetition metrics per decoding setting). The option structs are parsed
//! by `main.rs`; [`run_sample`] and [`run_repetition`] do the work and write to the given
//! streams, so tests drive them exactly as the command line does.
//!
//! # Model sources ([`ModelArgs`], shared by both commands)
//! - `--init_from=resume` (default, as nanoGPT): the checkpoint in `--out_dir` (default `out`),
//!   its `best/`, else `latest/`. The tokenizer is the one of the dataset the run trained on
//!   (`data_dir/dataset` from the run's saved training config, or `--data_dir=DIR` when the data
//!   moved): its `meta.json`/`meta.pkl` character vocabulary, else GPT-2 BPE. If that dataset
//!   directory is gone, a model with GPT-2's vocabulary size still gets GPT-2 BPE; any other is an
//!   error saying where the vocabulary was expected.
//! - `--init_from=gpt2|gpt2-medium|gpt2-large|gpt2-xl`: `./NAME/`, the Hugging Face cache, or a
//!   download into the cache (see [`crate::model::pretrained::download_gpt2`]; `HF_ENDPOINT`
//!   picks a mirror, `HF_HUB_OFFLINE=1` forbids the download).
//! - `--init_from=DIR`: any Hugging Face GPT-2 directory (`config.json` + `model.safetensors`,
//!   GPT-2 BPE), a checkpoint directory of this crate (it has `train_state.json`: tokenizer as
//!   for `resume`), or a run's out_dir (same as `--out_dir=DIR`).
//!
//! # `nanogpt sample` output
//! - Default: each sample streams to stdout token by token as nanoGPT prints it: the prompt text,
//!   the generated text, a newline and the `---------------` line. Bytes of a UTF-8 character
//!   split across tokens are held back until the character is complete. Samples decoded in one
//!   batch still print one after another: the first streams live, the others are buffered and
//!   follow as soon as the one before ends (each sample has its own random stream, so the text
//!   does not depend on `--batch_size`). Beam search prints its sequences once the search ends.
//! - `--json`: no streaming; one JSON object per line per sample (JSON Lines):
//!   `{"sample", "prompt", "prompt_ids", "generated_ids", "text", "finish_reason", "stop",
//!   "score", "mean_logprob"}`. `prompt_ids` are the ids generation started from (the prompt's,
//!   or `[50256]` for an empty prompt with GPT-2's vocabulary); `text` is the generated text
//!   only; `finish_reason` is `length`, `eot` (the end-of-text token, not in `generated_ids`) or
//!   `stop` (`stop` then names the string; `generated_ids` ends with the token that completed it).
//! - A stop string ends the sample's text right after the stop string (both streaming and
//!   `text`), even when the token that completed it carries more characters.
//! - Notes (prompt cropped to the context, download progress, empty prompt) go to stderr.
//!
//! # Prompts
//! `--start` is the text itself or `FILE:path` (the whole file, as nanoGPT reads it). A prompt
//! longer than the model's `block_size` is cropped to its last `block_size` tokens (nanoGPT
//! does the same), with a note on stderr. An empty prompt starts from `<|endoftext|>` with GPT-2's
//! vocabulary (as transformers does) and is an error with a character vocabulary.

use super::config::{DryConfig, EarlyStopping, SamplingConfig, DRY_DEFAULT_BREAKERS};
use super::generate::{generate, start_tokens, FinishReason, Generation};
use super::repetition::{measure_generations, LoopRule};
use super::report::{self, RepetitionReport, RepetitionRow};
use super::stop::{StopScan, Vocab};
use crate::engine::{self, Device};
use crate::hf::Hub;
use crate::model::pretrained::{download_gpt2, find_model_dir, GPT2_NAMES};
use crate::model::weights::{load_hf_dir, load_model_file};
use crate::model::Gpt;
use crate::tokenizer::{Tokenizer, GPT2_VOCAB_SIZE};
use crate::train::checkpoint::{load_trained_model, TrainState, STATE_FILE};
use anyhow::{anyhow, bail, Context, Result};
use clap::{ArgAction, Args, Parser};
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// nanoGPT's separator line between samples.
pub const SEPARATOR: &str = "---------------";

/// nanoGPT spells booleans True/False; accept those, true/false and 1/0.
fn parse_bool(s: &str) -> Result<bool, String> {
    match s {
        "true" | "True" | "1" => Ok(true),
        "false" | "False" | "0" => Ok(false),
        _ => Err(format!("expected true or false, got '{s}'")),
    }
}

fn parse_early_stopping(s: &str) -> Result<EarlyStopping, String> {
    match s {
        "true" | "True" | "1" => Ok(EarlyStopping::True),
        "false" | "False" | "0" => Ok(EarlyStopping::False),
        "never" => Ok(EarlyStopping::Never),
        _ => Err(format!("expected true, false or never, got '{s}'")),
    }
}

/// `\n`, `\t`, `\r` and `\\` in a stop string or sequence breaker typed on a command line.
pub fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('\\') => out.push('\\'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

/// Where the model comes from (see the module docs).
#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// resume (the checkpoint in --out_dir), gpt2, gpt2-medium, gpt2-large, gpt2-xl (./NAME/, the
    /// Hugging Face cache, or downloaded into it), or a directory with config.json +
    /// model.safetensors.
    #[arg(long = "init_from", default_value = "resume")]
    pub init_from: String,
    /// The training run's directory, for --init_from=resume [default: out]
    #[arg(long = "out_dir")]
    pub out_dir: Option<PathBuf>,
    /// Where the run's dataset directory is now (DATA_DIR/<dataset>/ with meta.json), if it moved
    /// [default: the data_dir the run trained with]
    #[arg(long = "data_dir")]
    pub data_dir: Option<PathBuf>,
}

/// A loaded model with its tokenizer.
pub struct LoadedModel {
    pub model: Gpt,
    pub tokenizer: Tokenizer,
    /// What was loaded, for reports ("gpt2", "out/best", ...).
    pub name: String,
}

/// Loads the model and tokenizer `args` names. Notes go to `err`.
pub fn load_model(args: &ModelArgs, err: &mut dyn Write) -> Result<LoadedModel> {
    let init = args.init_from.trim();
    if init == "resume" {
        let out_dir = args.out_dir.clone().unwrap_or_else(|| PathBuf::from("out"));
        return load_out_dir(&out_dir, args.data_dir.as_deref(), err);
    }
    if let Some(out_dir) = &args.out_dir {
        writeln!(
            err,
            "note: --out_dir={} is not used with --init_from={init} (it is for --init_from=resume)",
            out_dir.display()
        )?;
    }
    if GPT2_NAMES.contains(&init) {
        let dir = match find_model_dir(init) {
            Ok(dir) => dir,
            Err(not_found) => {
                let hub = Hub::from_env();
                if hub.offline {
                    bail!("{not_found:#} (HF_HUB_OFFLINE is set, so it was not downloaded)");
                }
                writeln!(
                    err,
                    "{init} is neither in ./{init}/ nor in the Hugging Face cache: downloading it from {}",
                    hub.endpoint
                )?;
                download_gpt2(init, &hub)?
            }
        };
        let model = load_hf_dir(&dir)?;
        let tokenizer = gpt2_tokenizer_for(&model, &dir)?;
        return Ok(LoadedModel {
            model,
            tokenizer,
            name: init.to_string(),
        });
    }
    let dir = Path::new(init);
    if !dir.is_dir() {
        bail!(
            "--init_from={init}: not resume, {}, nor a directory: pass one of those",
            GPT2_NAMES.join(", ")
        );
    }
    let has = |f: &str| dir.join(f).is_file();
    if has("config.json") && has("model.safetensors") {
        if has(STATE_FILE) {
            // One of this crate's checkpoint directories: it knows its dataset.
            let path = dir.join(STATE_FILE);
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let state: TrainState = serde_json::from_str(&text)
                .with_context(|| format!("{} is damaged: not a training state", path.display()))?;
            let model = load_model_file(&dir.join("model.safetensors"), state.model.clone())?;
            let tokenizer = checkpoint_tokenizer(&state, &model, args.data_dir.as_deref(), err)?;
            return Ok(LoadedModel {
                model,
                tokenizer,
                name: dir.display().to_string(),
            });
        }
        let model = load_hf_dir(dir)?;
        let tokenizer = gpt2_tokenizer_for(&model, dir)?;
        return Ok(LoadedModel {
            model,
            tokenizer,
            name: dir.display().to_string(),
        });
    }
    if dir.join("best").is_dir() || dir.join("latest").is_dir() {
        return load_out_dir(dir, args.data_dir.as_deref(), err);
    }
    bail!(
        "--init_from={init}: the directory has no config.json + model.safetensors (nor best/ or latest/ checkpoints): pass a GPT-2 model directory"
    );
}

fn load_out_dir(
    out_dir: &Path,
    data_dir: Option<&Path>,
    err: &mut dyn Write,
) -> Result<LoadedModel> {
    if !out_dir.is_dir() {
        bail!(
            "--out_dir={}: no such directory: train a model first (nanogpt train ...), pass the run's --out_dir, or use --init_from=gpt2",
            out_dir.display()
        );
    }
    let (model, state) = load_trained_model(out_dir)?;
    let tokenizer = checkpoint_tokenizer(&state, &model, data_dir, err)?;
    Ok(LoadedModel {
        model,
        tokenizer,
        name: out_dir.display().to_string(),
    })
}

/// GPT-2 BPE for a model loaded from a Hugging Face directory, if its vocabulary can be GPT-2's.
fn gpt2_tokenizer_for(model: &Gpt, dir: &Path) -> Result<Tokenizer> {
    let v = model.config.vocab_size;
    if v < GPT2_VOCAB_SIZE {
        bail!(
            "{}: the model's vocabulary has {v} tokens, fewer than GPT-2's {GPT2_VOCAB_SIZE}, and the directory names no dataset: \
             for a model trained here, pass its run directory with --out_dir",
            dir.display()
        );
    }
    Tokenizer::gpt2()
}

/// The tokenizer of the dataset a checkpoint was trained on.
fn checkpoint_tokenizer(
    state: &TrainState,
    model: &Gpt,
    data_dir: Option<&Path>,
    err: &mut dyn Write,
) -> Result<Tokenizer> {
    let dataset_dir = match data_dir {
        Some(d) => d.join(&state.train.dataset),
        None => state.train.dataset_dir(),
    };
    let v = model.config.vocab_size;
    let tokenizer = if dataset_dir.is_dir() {
        Tokenizer::for_data_dir(&dataset_dir)?
    } else if v >= GPT2_VOCAB_SIZE {
        writeln!(
            err,
            "note: the run's dataset directory {} is gone; its vocabulary size ({v}) is GPT-2's, so using GPT-2 BPE",
            dataset_dir.display()
        )?;
        Tokenizer::gpt2()?
    } else {
        bail!(
            "the model was trained on {} (a {v}-token vocabulary, not GPT-2's), which is gone: \
             restore that directory (its meta.json holds the vocabulary) or pass --data_dir=DIR where DIR/{}/meta.json is",
            dataset_dir.display(),
            state.train.dataset
        );
    };
    if tokenizer.vocab_size() > v {
        bail!(
            "{}'s vocabulary has {} tokens but the model only {v}: it is not the dataset the model was trained on; pass --data_dir=DIR with the right {}/",
            dataset_dir.display(),
            tokenizer.vocab_size(),
            state.train.dataset
        );
    }
    Ok(tokenizer)
}

/// A token's bytes; an id the tokenizer lacks (a padded vocabulary slot) prints as U+FFFD
/// rather than ending the run.
fn token_bytes_lossy(tok: &Tokenizer, id: u32) -> Vec<u8> {
    if (id as usize) < tok.vocab_size() {
        if let Ok(b) = tok.token_bytes(id) {
            return b;
        }
    }
    "\u{FFFD}".as_bytes().to_vec()
}

/// The decoding knobs shared by `sample` (all of them) -- see [`SamplingConfig`].
#[derive(Args, Clone, Debug)]
pub struct SampleArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt, or FILE:path to read it from a file. Empty: start from <|endoftext|> (GPT-2
    /// vocabulary only) [default: a newline, as nanoGPT]
    #[arg(
        long,
        default_value = "\n",
        hide_default_value = true,
        allow_hyphen_values = true
    )]
    pub start: String,
    /// Samples to generate
    #[arg(long = "num_samples", default_value_t = 10)]
    pub num_samples: usize,
    /// Tokens to generate per sample
    #[arg(long = "max_new_tokens", default_value_t = 500)]
    pub max_new_tokens: usize,
    /// 0 = greedy (the most likely token)
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    /// Keep the k most likely tokens; 0 = off
    #[arg(long = "top_k", default_value_t = 200)]
    pub top_k: usize,
    /// Random seed: the same seed gives the same samples (not the same as PyTorch's)
    #[arg(long, default_value_t = 1337)]
    pub seed: u64,
    /// Nucleus sampling: keep the most likely tokens up to this probability mass
    #[arg(long = "top_p")]
    pub top_p: Option<f32>,
    /// Keep tokens at least this times as likely as the most likely one
    #[arg(long = "min_p")]
    pub min_p: Option<f32>,
    /// Locally typical sampling with this mass
    #[arg(long = "typical_p")]
    pub typical_p: Option<f32>,
    /// CTRL's penalty on every token already in the prompt or output; 1 = off (try 1.3)
    #[arg(long = "repetition_penalty", default_value_t = 1.0)]
    pub repetition_penalty: f32,
    /// Never repeat an n-gram of this size; 0 = off
    #[arg(long = "no_repeat_ngram_size", default_value_t = 0)]
    pub no_repeat_ngram_size: usize,
    /// OpenAI's: logit -= count in the output * this
    #[arg(
        long = "frequency_penalty",
        default_value_t = 0.0,
        allow_hyphen_values = true
    )]
    pub frequency_penalty: f32,
    /// OpenAI's: logit -= this for every token already in the output
    #[arg(
        long = "presence_penalty",
        default_value_t = 0.0,
        allow_hyphen_values = true
    )]
    pub presence_penalty: f32,
    /// llama.cpp's DRY penalty strength; 0 = off (try 0.8)
    #[arg(long = "dry_multiplier", default_value_t = 0.0)]
    pub dry_multiplier: f32,
    /// DRY's penalty grows by this factor per repeated token beyond the allowed length
    #[arg(long = "dry_base", default_value_t = 1.75)]
    pub dry_base: f32,
    /// Repeats up to this many tokens are not penalised
    #[arg(long = "dry_allowed_length", default_value_t = 2)]
    pub dry_allowed_length: usize,
    /// A string that breaks a repeat (repeatable; \n escapes understood; "none" for none)
    /// [default: \n : " *]
    #[arg(long = "dry_sequence_breakers", allow_hyphen_values = true)]
    pub dry_sequence_breakers: Vec<String>,
    /// Look back this many tokens; -1 = the whole sequence, 0 = DRY off
    #[arg(long = "dry_penalty_last_n", default_value_t = -1, allow_hyphen_values = true)]
    pub dry_penalty_last_n: i64,
    /// Beam search with this many beams (deterministic with --temperature=0, else beam sampling)
    #[arg(long = "num_beams", default_value_t = 1)]
    pub num_beams: usize,
    /// Beam scores are sum(log p) / length^length_penalty
    #[arg(
        long = "length_penalty",
        default_value_t = 1.0,
        allow_hyphen_values = true
    )]
    pub length_penalty: f32,
    /// Beam search: true, false or never (Hugging Face's meanings)
    #[arg(long = "early_stopping", default_value = "false", value_parser = parse_early_stopping)]
    pub early_stopping: EarlyStopping,
    /// Beam search: how many of the best beams to return
    #[arg(long = "num_return_sequences", default_value_t = 1)]
    pub num_return_sequences: usize,
    /// End a sample when its text contains this (repeatable; \n escapes understood)
    #[arg(long, allow_hyphen_values = true)]
    pub stop: Vec<String>,
    /// End a sample at <|endoftext|>
    #[arg(long = "stop_at_eot", default_value = "true", value_parser = parse_bool, action = ArgAction::Set)]
    pub stop_at_eot: bool,
    /// Samples decoded together in one batch; 0 = all of them
    #[arg(long = "batch_size", default_value_t = 0)]
    pub batch_size: usize,
    /// Print one JSON object per sample and line (no streaming): prompt_ids, generated_ids, text,
    /// finish_reason, ...
    #[arg(long, num_args = 0..=1, require_equals = true, default_value = "false",
          default_missing_value = "true", value_parser = parse_bool, action = ArgAction::Set)]
    pub json: bool,
    /// Accepted for nanoGPT's sample.py command lines; ignored (runs on the CPU, in f32)
    #[arg(long, hide = true)]
    pub device: Option<String>,
    #[arg(long, hide = true)]
    pub dtype: Option<String>,
    #[arg(long, hide = true)]
    pub compile: Option<String>,
}

#[derive(Parser)]
#[command(name = "nanogpt sample", no_binary_name = true)]
struct SampleCli {
    #[command(flatten)]
    args: SampleArgs,
}

#[derive(Parser)]
#[command(name = "nanogpt repetition", no_binary_name = true)]
struct RepetitionCli {
    #[command(flatten)]
    args: RepetitionArgs,
}

impl SampleArgs {
    /// Parses command-line arguments (without the program and subcommand names).
    pub fn parse_from<I, T>(args: I) -> Result<SampleArgs>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        SampleCli::try_parse_from(args)
            .map(|c| c.args)
            .map_err(|e| anyhow!("{}", e.render().to_string().trim_end()))
    }

    /// The [`SamplingConfig`] these options describe; `tok` turns DRY's breaker strings into ids.
    pub fn config(&self, tok: &Tokenizer, vocab_size: usize) -> Result<SamplingConfig> {
        let stop: Vec<String> = self.stop.iter().map(|s| unescape(s)).collect();
        let mut cfg = SamplingConfig {
            num_samples: self.num_samples,
            max_new_tokens: self.max_new_tokens,
            do_sample: true,
            temperature: self.temperature,
            top_k: Some(self.top_k).filter(|&k| k > 0),
            top_p: self.top_p,
            min_p: self.min_p,
            typical_p: self.typical_p,
            repetition_penalty: self.repetition_penalty,
            no_repeat_ngram_size: self.no_repeat_ngram_size,
            frequency_penalty: self.frequency_penalty,
            presence_penalty: self.presence_penalty,
            dry: DryConfig {
                multiplier: self.dry_multiplier,
                base: self.dry_base,
                allowed_length: self.dry_allowed_length,
                breakers: Vec::new(),
                penalty_last_n: if self.dry_penalty_last_n < 0 {
                    None
                } else {
                    Some(self.dry_penalty_last_n as usize)
                },
            },
            seed: self.seed,
            stop,
            stop_at_eot: self.stop_at_eot,
            batch_size: self.batch_size,
            num_beams: self.num_beams,
            length_penalty: self.length_penalty,
            early_stopping: self.early_stopping,
            num_return_sequences: self.num_return_sequences,
        };
        cfg.validate()?;
        if cfg.dry_enabled() {
            let breakers: Vec<String> = if self.dry_sequence_breakers.is_empty() {
                DRY_DEFAULT_BREAKERS.iter().map(|s| s.to_string()).collect()
            } else if self.dry_sequence_breakers.iter().any(|s| s == "none") {
                Vec::new()
            } else {
                self.dry_sequence_breakers
                    .iter()
                    .map(|s| unescape(s))
                    .collect()
            };
            cfg.dry.breakers = dry_breaker_ids(tok, vocab_size, &breakers)?;
        }
        Ok(cfg)
    }
}

fn dry_breaker_ids(tok: &Tokenizer, vocab_size: usize, breakers: &[String]) -> Result<Vec<u32>> {
    let n = vocab_size.min(tok.vocab_size());
    super::dry::breaker_ids(n, breakers, &|id| tok.token_bytes(id))
}

/// The prompt text of `--start`: the text itself, or the file of `FILE:path`.
pub fn read_start(start: &str) -> Result<String> {
    match start.strip_prefix("FILE:") {
        Some(path) => std::fs::read_to_string(path).map_err(|e| {
            anyhow!("--start=FILE:{path}: cannot read the prompt file ({e}): check the path, or pass the prompt text itself")
        }),
        None => Ok(start.to_string()),
    }
}

/// One sample as `--json` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct SampleRecord {
    pub sample: usize,
    pub prompt: String,
    pub prompt_ids: Vec<u32>,
    pub generated_ids: Vec<u32>,
    pub text: String,
    /// `length`, `eot` or `stop`.
    pub finish_reason: &'static str,
    /// The stop string that ended the sample.
    pub stop: Option<String>,
    /// Beam search: the sequence's score.
    pub score: Option<f32>,
    /// Mean log-probability of the generated tokens under the model.
    pub mean_logprob: Option<f64>,
}

/// The bytes of the generated text, cut after the stop string that ended it.
fn generated_bytes(tok: &Tokenizer, g: &Generation, stops: &[String]) -> Vec<u8> {
    let mut bytes: Vec<u8> = g
        .tokens
        .iter()
        .flat_map(|&t| token_bytes_lossy(tok, t))
        .collect();
    if let FinishReason::Stop { index, at_byte } = g.finished_by {
        let end = at_byte + stops.get(index).map_or(0, |s| s.len());
        bytes.truncate(end.min(bytes.len()));
    }
    bytes
}

fn record(
    i: usize,
    prompt: &str,
    start: &[u32],
    g: &Generation,
    tok: &Tokenizer,
    stops: &[String],
) -> SampleRecord {
    let (finish_reason, stop) = match &g.finished_by {
        FinishReason::Length => ("length", None),
        FinishReason::Eot => ("eot", None),
        FinishReason::Stop { index, .. } => ("stop", stops.get(*index).cloned()),
    };
    SampleRecord {
        sample: i,
        prompt: prompt.to_string(),
        prompt_ids: start.to_vec(),
        generated_ids: g.tokens.clone(),
        text: String::from_utf8_lossy(&generated_bytes(tok, g, stops)).into_owned(),
        finish_reason,
        stop,
        score: g.score,
        mean_logprob: super::repetition::mean_logprob(&[g.logprobs.as_slice()]),
    }
}

/// Incremental UTF-8 decoding of one sample's bytes, cut after a stop string.
#[derive(Default)]
struct TextStream {
    pending: Vec<u8>,
    scan: StopScan,
    done: bool,
}

impl TextStream {
    /// Adds a token's bytes; returns the text that is now complete.
    fn push(&mut self, bytes: &[u8], stops: &[String]) -> String {
        if self.done {
            return String::new();
        }
        let mut take = bytes;
        if !stops.is_empty() {
            let before = self.scan.bytes().len();
            if let Some((index, at)) = self.scan.push(bytes, stops) {
                let end = at + stops[index].len();
                take = &bytes[..end.saturating_sub(before).min(bytes.len())];
                self.done = true;
            }
        }
        self.pending.extend_from_slice(take);
        drain_utf8(&mut self.pending)
    }

    /// The rest (an incomplete character at the very end becomes U+FFFD).
    fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}

/// Takes the longest prefix of `buf` that is complete UTF-8 (invalid bytes become U+FFFD, as
/// `from_utf8_lossy` does) and leaves an incomplete character at the end in `buf`.
fn drain_utf8(buf: &mut Vec<u8>) -> String {
    let mut out = String::new();
    let mut pos = 0;
    while pos < buf.len() {
        match std::str::from_utf8(&buf[pos..]) {
            Ok(s) => {
                out.push_str(s);
                pos = buf.len();
            }
            Err(e) => {
                let valid = e.valid_up_to();
                // The prefix was just checked.
                out.push_str(&String::from_utf8_lossy(&buf[pos..pos + valid]));
                match e.error_len() {
                    Some(n) => {
                        out.push('\u{FFFD}');
                        pos += valid + n;
                    }
                    None => {
                        pos += valid;
                        break;
                    }
                }
            }
        }
    }
    buf.drain(..pos);
    out
}

/// Prints samples one after another while `generate` hands out tokens of a whole batch: the
/// lowest unfinished sample streams live, later ones are buffered until it ends.
///
/// Within a batch, every step emits one token per running sample in increasing sample order, so
/// when sample `s` emits its token number `t` and an earlier sample `c` of the same batch has
/// fewer than `t + 1` tokens, `c` has ended. Batches (of `group` samples) run one after another.
struct Streamer<'a> {
    out: &'a mut dyn Write,
    tok: &'a Tokenizer,
    stops: &'a [String],
    prompt: &'a str,
    group: usize,
    cur: usize,
    live: bool,
    counts: Vec<usize>,
    pending: Vec<Vec<u32>>,
    texts: Vec<TextStream>,
    error: Option<anyhow::Error>,
}

impl<'a> Streamer<'a> {
    fn token(&mut self, s: usize, token: u32) {
        if self.error.is_none() {
            if let Err(e) = self.token_inner(s, token) {
                self.error = Some(e);
            }
        }
    }

    fn grow(&mut self, n: usize) {
        if self.counts.len() < n {
            self.counts.resize(n, 0);
            self.pending.resize_with(n, Vec::new);
            self.texts.resize_with(n, TextStream::default);
        }
    }

    fn token_inner(&mut self, s: usize, token: u32) -> Result<()> {
        self.grow(s + 1);
        let t = self.counts[s];
        self.counts[s] += 1;
        if s == self.cur {
            return self.emit(token);
        }
        self.pending[s].push(token);
        while self.cur < s && self.ended(self.cur, s, t) {
            self.end_sample()?;
            self.flush_pending()?;
        }
        Ok(())
    }

    fn ended(&self, c: usize, s: usize, t: usize) -> bool {
        c / self.group < s / self.group || self.counts[c] <= t
    }

    fn begin(&mut self) -> Result<()> {
        if !self.live {
            self.out.write_all(self.prompt.as_bytes())?;
            self.live = true;
        }
        Ok(())
    }

    fn emit(&mut self, token: u32) -> Result<()> {
        self.begin()?;
        let bytes = token_bytes_lossy(self.tok, token);
        let text = self.texts[self.cur].push(&bytes, self.stops);
        self.out.write_all(text.as_bytes())?;
        self.out.flush()?;
        Ok(())
    }

    fn flush_pending(&mut self) -> Result<()> {
        self.grow(self.cur + 1);
        self.begin()?;
        for token in std::mem::take(&mut self.pending[self.cur]) {
            self.emit(token)?;
        }
        Ok(())
    }

    fn end_sample(&mut self) -> Result<()> {
        self.grow(self.cur + 1);
        self.begin()?;
        let rest = self.texts[self.cur].finish();
        write!(self.out, "{rest}\n{SEPARATOR}\n")?;
        self.out.flush()?;
        self.cur += 1;
        self.live = false;
        Ok(())
    }

    /// Prints every sample not printed yet, up to `n`.
    fn finish(&mut self, n: usize) -> Result<()> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        while self.cur < n {
            self.flush_pending()?;
            self.end_sample()?;
        }
        Ok(())
    }
}

/// `nanogpt sample`: loads the model, generates, and prints to `out` (streaming, or JSON Lines
/// with `--json`); notes go to `err`. Returns the samples as `--json` prints them.
pub fn run_sample(
    args: &SampleArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<Vec<SampleRecord>> {
    let prompt_text = read_start(&args.start)?;
    for (flag, v) in [
        ("device", &args.device),
        ("dtype", &args.dtype),
        ("compile", &args.compile),
    ] {
        if v.is_some() {
            writeln!(
                err,
                "note: --{flag} is ignored: nanogpt samples on the CPU in f32"
            )?;
        }
    }
    let loaded = load_model(&args.model, err)?;
    let engine = engine::open(loaded.model, Device::Auto)?;
    let (model, tok) = (engine.as_ref(), &loaded.tokenizer);
    let cfg = args.config(tok, model.config().vocab_size)?;
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
    let gens = if args.json {
        let gens = generate(model, &start, &cfg, tok, &mut |_, _| {})?;
        for (i, g) in gens.iter().enumerate() {
            let r = record(i, &prompt_text, &start, g, tok, &cfg.stop);
            writeln!(out, "{}", serde_json::to_string(&r)?)?;
        }
        out.flush()?;
        gens
    } else {
        let group = if cfg.num_beams > 1 {
            1
        } else if cfg.batch_size == 0 {
            cfg.num_samples
        } else {
            cfg.batch_size.min(cfg.num_samples)
        }
        .max(1);
        let mut streamer = Streamer {
            out,
            tok,
            stops: &cfg.stop,
            prompt: &prompt_text,
            group,
            cur: 0,
            live: false,
            counts: Vec::new(),
            pending: Vec::new(),
            texts: Vec::new(),
            error: None,
        };
        let gens = generate(model, &start, &cfg, tok, &mut |s, t| streamer.token(s, t));
        match gens {
            Ok(gens) => {
                streamer.finish(gens.len())?;
                gens
            }
            Err(e) => {
                // Show what was generated before the failure, then the failure.
                let _ = streamer.out.flush();
                return Err(e);
            }
        }
    };
    Ok(gens
        .iter()
        .enumerate()
        .map(|(i, g)| record(i, &prompt_text, &start, g, tok, &cfg.stop))
        .collect())
}

// ---------------------------------------------------------------------------------------------
// nanogpt repetition

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

/// The built-in decoding settings of `nanogpt repetition`, in report order.
pub const SETTING_NAMES: [&str; 8] = [
    "greedy",
    "sample",
    "top_p",
    "repetition_penalty",
    "no_repeat_ngram",
    "freq_presence",
    "dry",
    "beam",
];

/// `nanogpt repetition`: how much each decoding setting repeats itself.
#[derive(Args, Clone, Debug)]
pub struct RepetitionArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A file with one prompt per line (\n in a line is a newline; empty lines are skipped)
    /// [default: six Shakespeare-like openings]
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// Tokens to generate per sample
    #[arg(long = "max_new_tokens", default_value_t = 128)]
    pub max_new_tokens: usize,
    /// Samples per prompt for the settings that sample (greedy and beam search give one)
    #[arg(long = "num_samples", default_value_t = 4)]
    pub num_samples: usize,
    /// Comma-separated settings: greedy, sample (temperature 0.8 + top_k 200, nanoGPT's), top_p
    /// (0.9), repetition_penalty (1.3), no_repeat_ngram (3), freq_presence (0.5 + 0.5), dry
    /// (0.8/1.75/2), beam (4 beams); penalties are applied to greedy decoding. Or your own:
    /// key=value pairs joined by '+' on top of greedy, with sample's option names, e.g.
    /// temperature=0.8+top_p=0.95+dry_multiplier=0.8 (dry_sequence_breakers=none|default|a|b)
    /// [default: all built-in ones]
    #[arg(long, value_delimiter = ',')]
    pub settings: Vec<String>,
    /// Random seed of the sampled settings
    #[arg(long, default_value_t = 1337)]
    pub seed: u64,
    /// Print CSV instead of Markdown
    #[arg(long, num_args = 0..=1, require_equals = true, default_value = "false",
          default_missing_value = "true", value_parser = parse_bool, action = ArgAction::Set)]
    pub csv: bool,
    /// Print JSON instead of Markdown
    #[arg(long, num_args = 0..=1, require_equals = true, default_value = "false",
          default_missing_value = "true", value_parser = parse_bool, action = ArgAction::Set)]
    pub json: bool,
}

impl RepetitionArgs {
    /// Parses command-line arguments (without the program and subcommand names).
    pub fn parse_from<I, T>(args: I) -> Result<RepetitionArgs>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        RepetitionCli::try_parse_from(args)
            .map(|c| c.args)
            .map_err(|e| anyhow!("{}", e.render().to_string().trim_end()))
    }
}

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
    let mut c = SamplingConfig::greedy(0);
    let mut dry_breakers: Vec<String> =
        DRY_DEFAULT_BREAKERS.iter().map(|s| s.to_string()).collect();
    let description = match spec {
        "greedy" => "greedy".to_string(),
        "sample" => {
            c.do_sample = true;
            c.temperature = 0.8;
            c.top_k = Some(200);
            "temperature 0.8, top_k 200 (nanoGPT)".to_string()
        }
        "top_p" => {
            c.do_sample = true;
            c.top_p = Some(0.9);
            "temperature 1, top_p 0.9".to_string()
        }
        "repetition_penalty" => {
            c.repetition_penalty = 1.3;
            "greedy, repetition_penalty 1.3".to_string()
        }
        "no_repeat_ngram" => {
            c.no_repeat_ngram_size = 3;
            "greedy, no_repeat_ngram_size 3".to_string()
        }
        "freq_presence" => {
            c.frequency_penalty = 0.5;
            c.presence_penalty = 0.5;
            "greedy, frequency 0.5 + presence 0.5".to_string()
        }
        "dry" => {
            c.dry.multiplier = 0.8;
            c.dry.base = 1.75;
            c.dry.allowed_length = 2;
            "greedy, DRY 0.8 / 1.75 / 2".to_string()
        }
        "beam" => {
            c.num_beams = 4;
            "beam search, 4 beams".to_string()
        }
        _ if spec.contains('=') => {
            let mut parts = Vec::new();
            for pair in spec.split('+') {
                let (k, v) = pair.split_once('=').with_context(|| {
                    format!("setting '{spec}': '{pair}' is not key=value")
                })?;
                let (k, v) = (k.trim(), v.trim());
                if k == "dry_sequence_breakers" {
                    // "none", "default", or strings separated by '|' (\n escapes understood).
                    dry_breakers = match v {
                        "none" => Vec::new(),
                        "default" => dry_breakers,
                        _ => v.split('|').map(unescape).filter(|b| !b.is_empty()).collect(),
                    };
                } else {
                    set_knob(&mut c, k, v).with_context(|| format!("setting '{spec}'"))?;
                }
                parts.push(format!("{k} {v}"));
            }
            if !c.sampling() && c.num_beams == 1 {
                parts.insert(0, "greedy".into());
            }
            parts.join(", ")
        }
        _ => bail!(
            "unknown setting '{spec}': use one of {} or key=value pairs joined by '+' (e.g. temperature=0.8+top_p=0.95)",
            SETTING_NAMES.join(", ")
        ),
    };
    c.validate().with_context(|| format!("setting '{spec}'"))?;
    Ok(Setting {
        name: spec.to_string(),
        description,
        config: c,
        dry_breakers,
    })
}

fn set_knob(c: &mut SamplingConfig, key: &str, v: &str) -> Result<()> {
    let f = || -> Result<f32> {
        v.parse::<f32>()
            .map_err(|_| anyhow!("{key}={v}: not a number"))
    };
    let u = || -> Result<usize> {
        v.parse::<usize>()
            .map_err(|_| anyhow!("{key}={v}: not a whole number"))
    };
    match key {
        "temperature" => {
            c.temperature = f()?;
            c.do_sample = c.temperature > 0.0;
        }
        "top_k" => {
            c.top_k = Some(u()?).filter(|&k| k > 0);
            c.do_sample = true;
        }
        "top_p" => {
            c.top_p = Some(f()?);
            c.do_sample = true;
        }
        "min_p" => {
            c.min_p = Some(f()?);
            c.do_sample = true;
        }
        "typical_p" => {
            c.typical_p = Some(f()?);
            c.do_sample = true;
        }
        "repetition_penalty" => c.repetition_penalty = f()?,
        "no_repeat_ngram_size" => c.no_repeat_ngram_size = u()?,
        "frequency_penalty" => c.frequency_penalty = f()?,
        "presence_penalty" => c.presence_penalty = f()?,
        "dry_multiplier" => c.dry.multiplier = f()?,
        "dry_base" => c.dry.base = f()?,
        "dry_allowed_length" => c.dry.allowed_length = u()?,
        "dry_penalty_last_n" => {
            let n: i64 = v
                .parse()
                .map_err(|_| anyhow!("{key}={v}: not a whole number"))?;
            c.dry.penalty_last_n = if n < 0 { None } else { Some(n as usize) };
        }
        "num_beams" => c.num_beams = u()?,
        "length_penalty" => c.length_penalty = f()?,
        "early_stopping" => {
            c.early_stopping = parse_early_stopping(v).map_err(|e| anyhow!("{key}: {e}"))?
        }
        _ => bail!(
            "unknown key '{key}': use temperature, top_k, top_p, min_p, typical_p, repetition_penalty, no_repeat_ngram_size, \
             frequency_penalty, presence_penalty, dry_multiplier, dry_base, dry_allowed_length, dry_penalty_last_n, num_beams, \
             length_penalty or early_stopping"
        ),
    }
    Ok(())
}

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
            .filter(|s| !s.trim().is_empty())
            .map(|s| parse_setting(s))
            .collect::<Result<_>>()?
    };
    if settings.is_empty() {
        bail!(
            "--settings is empty: name at least one of {}",
            SETTING_NAMES.join(", ")
        );
    }
    let prompts = read_prompts(args.prompts.as_deref())?;
    let loaded = load_model(&args.model, err)?;
    let engine = engine::open(loaded.model, Device::Auto)?;
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
        if cfg.dry_enabled() {
            cfg.dry.breakers =
                dry_breaker_ids(tok, model.config().vocab_size, &setting.dry_breakers)?;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeding bytes in any split gives `from_utf8_lossy` of the whole.
    #[test]
    fn utf8_split_across_tokens_is_held_back_until_complete() {
        let cases: [&[u8]; 4] = [
            "héllo wörld 😀 ok".as_bytes(),
            b"a\xe2\x82b\xff\xfec",
            b"\xf0\x9f\x98",
            "日本語".as_bytes(),
        ];
        for whole in cases {
            for chunk in 1..=4 {
                let mut t = TextStream::default();
                let mut got = String::new();
                for part in whole.chunks(chunk) {
                    let s = t.push(part, &[]);
                    // Nothing is printed that a later byte could still change.
                    assert!(
                        !s.ends_with('\u{FFFD}')
                            || String::from_utf8_lossy(whole).contains('\u{FFFD}')
                    );
                    got.push_str(&s);
                }
                got.push_str(&t.finish());
                assert_eq!(
                    got,
                    String::from_utf8_lossy(whole),
                    "{whole:?} in chunks of {chunk}"
                );
            }
        }
        let mut t = TextStream::default();
        assert_eq!(t.push(&[0xe6, 0x97], &[]), "");
        assert_eq!(t.push(&[0xa5, b'x'], &[]), "日x");
    }

    #[test]
    fn stop_string_cuts_inside_a_token() {
        let stops = vec!["END".to_string()];
        let mut t = TextStream::default();
        assert_eq!(t.push(b"abc E", &stops), "abc E");
        assert_eq!(t.push(b"ND and more", &stops), "ND");
        assert_eq!(t.push(b"later", &stops), "");
    }

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
