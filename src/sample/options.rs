//! The sampling settings, each defined once: [`SampleSettings`] is the table of decoding knobs
//! that `nanogpt sample`'s flags, the `repetition` settings language ([`super::settings`]) and
//! [`SamplingConfig::default`] all read; [`SampleArgs`] and [`RepetitionArgs`] are the two
//! commands' option tables (the command line in `src/cli/` builds its flags from them).

use super::config::{DryConfig, EarlyStopping, LengthDecay, SamplingConfig, DRY_DEFAULT_BREAKERS};
use super::context::ContextMode;
use super::llama_samplers::FilterOrder;
use super::loop_guard::{LoopGuardConfig, LoopGuardMode, SpanRange};
use super::stop::Vocab;
use crate::config::knobs::Knob;
use crate::engine::{Device, KvDtype};
use crate::load::ModelSource;
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Context, Result};
use std::path::PathBuf;

crate::knobs! {
    /// The decoding knobs, with nanoGPT's `sample.py` defaults where nanoGPT has the knob and
    /// Hugging Face `generate`'s ("off") for the rest.
    #[derive(Clone, Debug, PartialEq)]
    pub struct SampleSettings {
        {
            /// Samples to generate
            num_samples: usize = 10,
            /// Tokens to generate per sample
            max_new_tokens: usize = 500,
            /// 0 = greedy (the most likely token)
            temperature: f32 = 0.8,
            /// Keep the k most likely tokens; 0 = off
            top_k: usize = 200,
            /// Random seed: the same seed gives the same samples (not the same as PyTorch's)
            seed: u64 = 1337,
            /// Nucleus sampling: keep the most likely tokens up to this probability mass
            top_p: Option<f32> = None,
            /// Keep tokens at least this times as likely as the most likely one
            min_p: Option<f32> = None,
            /// Locally typical sampling with this mass
            typical_p: Option<f32> = None,
            /// CTRL's penalty on every token already in the prompt or output; 1 = off (try 1.3)
            repetition_penalty: f32 = 1.0,
            /// Never repeat an n-gram of this size; 0 = off
            no_repeat_ngram_size: usize = 0,
            /// OpenAI's: logit -= count in the output * this
            frequency_penalty: f32 = 0.0,
            /// OpenAI's: logit -= this for every token already in the output
            presence_penalty: f32 = 0.0,
            /// llama.cpp's DRY penalty strength; 0 = off (try 0.8)
            dry_multiplier: f32 = 0.0,
            /// DRY's penalty grows by this factor per repeated token beyond the allowed length
            dry_base: f32 = 1.75,
            /// Repeats up to this many tokens are not penalised
            dry_allowed_length: usize = 2,
            /// A string that breaks a repeat (repeatable; \n escapes understood; "none" for none)
            /// [default: \n : " *]
            dry_sequence_breakers: Vec<String> = Vec::new(),
            /// Look back this many tokens; -1 = the whole sequence, 0 = DRY off
            dry_penalty_last_n: i64 = -1,
            /// Beam search with this many beams (deterministic with --temperature=0, else beam
            /// sampling)
            num_beams: usize = 1,
            /// Beam scores are sum(log p) / length^length_penalty
            length_penalty: f32 = 1.0,
            /// Beam search: true, false or never (Hugging Face's meanings)
            early_stopping: EarlyStopping = EarlyStopping::False,
            /// Beam search: how many of the best beams to return
            num_return_sequences: usize = 1,
            /// End a sample when its text contains this (repeatable; \n escapes understood)
            stop: Vec<String> = Vec::new(),
            /// End a sample at <|endoftext|>
            stop_at_eot: bool = true,
            /// Samples decoded together in one batch; 0 = all of them (memory grows with it)
            batch_size: usize = 64,
            /// Epsilon sampling: drop tokens less likely than this, in (0, 1) (try 3e-4)
            epsilon_cutoff: Option<f32> = None,
            /// Eta sampling: drop tokens less likely than min(eta, sqrt(eta)*exp(-entropy)), in
            /// (0, 1) (try 2e-3)
            eta_cutoff: Option<f32> = None,
            /// Never generate this text (repeatable; \n escapes): banned as written and after a
            /// space; ids:1,2,3 bans exactly those token ids
            bad_words: Vec<String> = Vec::new(),
            /// TEXT=BIAS: add BIAS to the logit of the token that completes TEXT (repeatable; TEXT
            /// as for bad_words, e.g. " the=-2" or ids:262=-2)
            sequence_bias: Vec<String> = Vec::new(),
            /// START,FACTOR: past START generated tokens, favour <|endoftext|> more by FACTOR per
            /// token (e.g. 20,1.1)
            exponential_decay_length_penalty: Option<LengthDecay> = None,
            /// Diverse beam search: split the beams into this many groups (must divide
            /// num_beams; deterministic only)
            num_beam_groups: usize = 1,
            /// Diverse beam search: a group's log-prob of a token earlier groups chose at this
            /// step drops by this much per group (try 0.5-2)
            diversity_penalty: f32 = 0.0,
            /// Contrastive search when > 0 (with --top_k candidates, --temperature=0): weight of
            /// the penalty on repeating earlier hidden states (try 0.6 with top_k 4)
            penalty_alpha: f32 = 0.0,
            /// Loop guard: off, stop (end the sample; finish reason loop) or backtrack (delete
            /// the loop, ban the token that began it there, go on)
            loop_guard: LoopGuardMode = LoopGuardMode::Off,
            /// Loop guard: the lengths in tokens a loop's repeated span may have, MIN..MAX
            loop_guard_ngram: SpanRange = SpanRange { min: 2, max: 32 },
            /// Loop guard: copies of a span back to back that make a loop
            loop_guard_repeats: usize = 3,
            /// Loop guard: backtracks per sample; the loop after them stops the sample
            loop_guard_max_backtracks: usize = 8,
            /// Past block_size: crop (nanoGPT's exact window, a full forward per token) or
            /// slide (re-prefill half a block when full: faster, approximate)
            context: ContextMode = ContextMode::Crop,
            /// llama.cpp's mirostat: 0 = off, 1 or 2 = that version (draws the token itself; the
            /// other filters are not used)
            mirostat: usize = 0,
            /// Mirostat's target surprise in bits
            mirostat_tau: f32 = 5.0,
            /// Mirostat's learning rate
            mirostat_eta: f32 = 0.1,
            /// XTC: how often to remove the top choices; 0 = off
            xtc_probability: f32 = 0.0,
            /// XTC: tokens at least this likely are top choices (all but the least likely go)
            xtc_threshold: f32 = 0.1,
            /// Keep tokens whose logit is within this many standard deviations of the top one;
            /// <= 0 = off
            top_n_sigma: f32 = -1.0,
            /// The filters' order, as llama.cpp's --samplers: names from temperature, top_k,
            /// top_p, min_p, typ_p, top_n_sigma joined by ';' (left out = not applied)
            /// [default: temperature;top_k;top_p;min_p;typ_p;top_n_sigma]
            samplers: FilterOrder = FilterOrder::default(),
        }
    }
}

impl Default for SamplingConfig {
    /// The defaults of the settings table.
    fn default() -> Self {
        SampleSettings::default().sampling_config()
    }
}

impl SampleSettings {
    /// The [`SamplingConfig`] these settings describe, DRY's breakers not yet turned into ids
    /// (see [`SampleSettings::dry_breakers`]).
    pub fn sampling_config(&self) -> SamplingConfig {
        SamplingConfig {
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
                // Negative is llama.cpp's "the whole sequence".
                penalty_last_n: usize::try_from(self.dry_penalty_last_n).ok(),
            },
            seed: self.seed,
            stop: self.stop.iter().map(|s| unescape(s)).collect(),
            stop_at_eot: self.stop_at_eot,
            batch_size: self.batch_size,
            num_beams: self.num_beams,
            length_penalty: self.length_penalty,
            early_stopping: self.early_stopping,
            num_return_sequences: self.num_return_sequences,
            epsilon_cutoff: self.epsilon_cutoff,
            eta_cutoff: self.eta_cutoff,
            bad_words_ids: Vec::new(),
            sequence_bias: Vec::new(),
            exponential_decay_length_penalty: self.exponential_decay_length_penalty,
            num_beam_groups: self.num_beam_groups,
            diversity_penalty: self.diversity_penalty,
            penalty_alpha: self.penalty_alpha,
            loop_guard: LoopGuardConfig {
                mode: self.loop_guard,
                spans: self.loop_guard_ngram,
                repeats: self.loop_guard_repeats,
                max_backtracks: self.loop_guard_max_backtracks,
            },
            context: self.context,
            mirostat: self.mirostat,
            mirostat_tau: self.mirostat_tau,
            mirostat_eta: self.mirostat_eta,
            xtc_probability: self.xtc_probability,
            xtc_threshold: self.xtc_threshold,
            top_n_sigma: Some(self.top_n_sigma).filter(|&n| n > 0.0),
            samplers: self.samplers.clone(),
        }
    }

    /// DRY's sequence breakers as strings: llama.cpp's default when none are given, none for
    /// "none".
    pub fn dry_breakers(&self) -> Vec<String> {
        if self.dry_sequence_breakers.is_empty() {
            DRY_DEFAULT_BREAKERS.iter().map(|s| s.to_string()).collect()
        } else if self.dry_sequence_breakers.iter().any(|s| s == "none") {
            Vec::new()
        } else {
            self.dry_sequence_breakers
                .iter()
                .map(|s| unescape(s))
                .collect()
        }
    }

    /// The complete [`SamplingConfig`], checked, with the settings given as text in ids of `tok`
    /// (see [`SampleSettings::resolve_tokens`]).
    pub fn config(&self, tok: &Tokenizer, vocab_size: usize) -> Result<SamplingConfig> {
        let mut cfg = self.sampling_config();
        cfg.validate()?;
        self.resolve_tokens(&mut cfg, tok, vocab_size)?;
        Ok(cfg)
    }

    /// Fills in `cfg`'s token ids from the settings given as text: DRY's breakers (when DRY is
    /// on), `bad_words` and `sequence_bias` (see [`token_sequences`]).
    pub fn resolve_tokens(
        &self,
        cfg: &mut SamplingConfig,
        tok: &Tokenizer,
        vocab_size: usize,
    ) -> Result<()> {
        if cfg.dry_enabled() {
            cfg.dry.breakers = dry_breaker_ids(tok, vocab_size, &self.dry_breakers())?;
        }
        cfg.bad_words_ids.clear();
        for w in &self.bad_words {
            cfg.bad_words_ids.extend(
                token_sequences(tok, vocab_size, w).with_context(|| format!("bad_words {w:?}"))?,
            );
        }
        cfg.sequence_bias.clear();
        for spec in &self.sequence_bias {
            let (text, bias) = spec
                .rsplit_once('=')
                .and_then(|(t, b)| Some((t, b.trim().parse::<f32>().ok()?)))
                .filter(|(_, b)| !b.is_nan())
                .with_context(|| format!("sequence_bias {spec:?}: expected TEXT=BIAS, e.g. \" the=-2\" or ids:262=-2"))?;
            let seqs = token_sequences(tok, vocab_size, text)
                .with_context(|| format!("sequence_bias {spec:?}"))?;
            cfg.sequence_bias
                .extend(seqs.into_iter().map(|s| (s, bias)));
        }
        Ok(())
    }
}

/// The token sequences a bad word or biased text stands for. `ids:1,2,3` is exactly those ids.
/// Text (with `\n` escapes) is its tokens as written and, unless it starts with whitespace, the
/// tokens of " text" as well: GPT-2's BPE spells a word after a space with other tokens, and who
/// bans "Romeo" means it in the middle of a line too.
pub fn token_sequences(tok: &Tokenizer, vocab_size: usize, spec: &str) -> Result<Vec<Vec<u32>>> {
    let n = vocab_size.min(tok.vocab_size());
    let seqs = match spec.strip_prefix("ids:") {
        Some(list) => {
            let ids = list
                .split(',')
                .map(|x| x.trim().parse::<u32>().ok())
                .collect::<Option<Vec<u32>>>()
                .filter(|ids| !ids.is_empty())
                .with_context(|| format!("'{spec}': expected ids:ID,ID,... (token ids)"))?;
            vec![ids]
        }
        None => {
            let text = unescape(spec);
            if text.is_empty() {
                bail!("the text is empty");
            }
            let mut seqs = vec![tok.encode(&text)?];
            if !text.starts_with(char::is_whitespace) {
                // A vocabulary without a space cannot spell it; the text as written is enough.
                if let Ok(spaced) = tok.encode(&format!(" {text}")) {
                    if spaced != seqs[0] {
                        seqs.push(spaced);
                    }
                }
            }
            seqs
        }
    };
    if let Some(&bad) = seqs.iter().flatten().find(|&&id| id as usize >= n) {
        bail!("token id {bad} is outside the vocabulary ({n} tokens)");
    }
    Ok(seqs)
}

/// DRY's breaker strings as token ids of `tok` (within the model's `vocab_size`).
pub fn dry_breaker_ids(
    tok: &Tokenizer,
    vocab_size: usize,
    breakers: &[String],
) -> Result<Vec<u32>> {
    let n = vocab_size.min(tok.vocab_size());
    super::dry::breaker_ids(n, breakers, &|id| tok.token_bytes(id))
}

crate::knobs! {
    /// `nanogpt sample`: the model, the decoding settings, the prompt and the output.
    #[derive(Clone, Debug)]
    pub struct SampleArgs [model: ModelSource, decoding: SampleSettings] {
        {
            /// The prompt, or FILE:path to read it from a file. Empty: start from <|endoftext|>
            /// (GPT-2 vocabulary only) [default: a newline, as nanoGPT]
            start: String = "\n".into(),
            /// Print one JSON object per sample and line (no streaming): prompt_ids,
            /// generated_ids, text, finish_reason, ...
            json: bool = false,
            /// cpu, cuda or auto (the CPU until the CUDA backend has passed its GPU check)
            device: Device = Device::Auto,
            /// float32; bfloat16: weights rounded to bf16, half the bytes to read per token
            /// (activations stay f32; float16 means the same here); or int8: int8 weights and
            /// activations (Q8_0 in groups of 64, llama2.c's runq.c arithmetic) [default:
            /// float32; int8 at the file's group size for a llama2.c v2 file with
            /// --sampler=run_c, as runq.c]
            dtype: Option<String> = None,
            /// float32, bfloat16 or int8: the keys and values the KV cache holds (bfloat16 reads
            /// half the bytes per token at depth, int8 a quarter) [default: the weights' dtype;
            /// float32 with --sampler=run_c, as runq.c]
            kv_cache_dtype: Option<KvDtype> = None,
            /// Accepted for nanoGPT's sample.py command lines; ignored
            compile: Option<String> = None,
            /// nanogpt (every decoding setting), or run_c: llama2.c's run.c loop and sampler
            /// (temperature, top_p and seed only; a Llama model; prints what run.c prints)
            sampler: SamplerKind = SamplerKind::Nanogpt,
        }
    }
}

/// Which generate loop `nanogpt sample` runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SamplerKind {
    Nanogpt,
    /// llama2.c's `run.c` (see [`super::run_c`]).
    RunC,
}

impl Knob for SamplerKind {
    fn set_text(&mut self, text: &str) -> Result<(), String> {
        *self = match text.trim() {
            "nanogpt" => SamplerKind::Nanogpt,
            "run_c" => SamplerKind::RunC,
            _ => return Err("expected nanogpt or run_c".into()),
        };
        Ok(())
    }
    fn show(&self) -> String {
        match self {
            SamplerKind::Nanogpt => "nanogpt",
            SamplerKind::RunC => "run_c",
        }
        .into()
    }
}

crate::knobs! {
    /// `nanogpt repetition`: how much each decoding setting repeats itself.
    #[derive(Clone, Debug)]
    pub struct RepetitionArgs [model: ModelSource] {
        {
            /// A file with one prompt per line (\n in a line is a newline; empty lines are
            /// skipped) [default: six Shakespeare-like openings]
            prompts: Option<PathBuf> = None,
            /// Tokens to generate per sample
            max_new_tokens: usize = 128,
            /// Samples per prompt for the settings that sample (greedy and beam search give one)
            num_samples: usize = 4,
            /// Comma-separated settings: greedy, sample (temperature 0.8 + top_k 200, nanoGPT's),
            /// top_p (0.9), repetition_penalty (1.3), no_repeat_ngram (3), freq_presence (0.5 +
            /// 0.5), dry (0.8/1.75/2), beam (4 beams), loop_stop, loop_backtrack (the loop guard),
            /// mirostat (v2), xtc (0.5/0.1), top_n_sigma (1); penalties and the loop guard are
            /// applied to greedy decoding.
            /// Or your own: key=value pairs joined by '+' on top of greedy, with sample's option
            /// names, e.g. temperature=0.8+top_p=0.95+dry_multiplier=0.8
            /// (dry_sequence_breakers=none|default|a|b; bad_words=a|b; sequence_bias=a=-2|b=1)
            /// [default: all built-in ones]
            settings: Vec<String> = Vec::new(),
            /// Random seed of the sampled settings
            seed: u64 = 1337,
            /// Print CSV instead of Markdown
            csv: bool = false,
            /// Print JSON instead of Markdown
            json: bool = false,
            /// cpu, cuda or auto (the CPU until the CUDA backend has passed its GPU check)
            device: Device = Device::Auto,
            /// float32, bfloat16 or int8: the weights the generations compute with (as
            /// `sample --dtype`)
            dtype: Option<String> = None,
            /// float32, bfloat16 or int8: the keys and values the KV cache holds (bfloat16 reads
            /// half the bytes per token at depth, int8 a quarter) [default: the weights' dtype]
            kv_cache_dtype: Option<KvDtype> = None,
        }
    }
}

impl Knob for EarlyStopping {
    fn set_text(&mut self, text: &str) -> Result<(), String> {
        *self = match text.trim() {
            "true" | "True" | "1" => EarlyStopping::True,
            "false" | "False" | "0" => EarlyStopping::False,
            "never" => EarlyStopping::Never,
            _ => return Err("expected true, false or never".into()),
        };
        Ok(())
    }
    fn show(&self) -> String {
        match self {
            EarlyStopping::True => "true",
            EarlyStopping::False => "false",
            EarlyStopping::Never => "never",
        }
        .into()
    }
}

/// `START,FACTOR`, as transformers' `(start_index, decay_factor)` (parentheses allowed).
impl Knob for LengthDecay {
    fn set_text(&mut self, text: &str) -> Result<(), String> {
        let inner = text.trim().trim_start_matches('(').trim_end_matches(')');
        let parsed = inner.split_once(',').and_then(|(a, b)| {
            Some(LengthDecay {
                start: a.trim().parse().ok()?,
                factor: b.trim().parse().ok()?,
            })
        });
        *self = parsed
            .ok_or("expected START,FACTOR (generated tokens, growth per token), e.g. 20,1.1")?;
        Ok(())
    }
    fn show(&self) -> String {
        format!("{},{}", self.start, self.factor)
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
