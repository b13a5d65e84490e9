//! The decoding configuration that generation runs with. Its defaults come from the settings
//! table, [`crate::sample::SampleSettings`] (nanoGPT's `sample.py` where nanoGPT has the knob,
//! Hugging Face `generate`'s "off" for the rest).

use super::context::ContextMode;
use super::llama_samplers::FilterOrder;
use super::loop_guard::LoopGuardConfig;
use anyhow::{bail, Result};

/// When beam search stops (Hugging Face's `early_stopping`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EarlyStopping {
    /// `True`: stop as soon as `num_beams` finished hypotheses exist.
    True,
    /// `False` (Hugging Face's default): also stop when no running beam can beat the worst finished
    /// hypothesis, judged by its score normalised at the current length.
    False,
    /// `"never"`: as `False`, but judged at the best length the beam could still reach.
    Never,
}

/// llama.cpp's DRY ("don't repeat yourself") penalty; see [`crate::sample::dry`].
#[derive(Clone, Debug, PartialEq)]
pub struct DryConfig {
    /// Strength; 0 turns DRY off (llama.cpp `--dry-multiplier`, suggested 0.8).
    pub multiplier: f32,
    /// Growth per extra repeated token (`--dry-base`, default 1.75).
    pub base: f32,
    /// Repeats up to this long are not penalised (`--dry-allowed-length`, default 2).
    pub allowed_length: usize,
    /// Token ids that break a repeat (see [`crate::sample::dry::breaker_ids`] to get them from
    /// strings such as llama.cpp's default `["\n", ":", "\"", "*"]`).
    pub breakers: Vec<u32>,
    /// Look at the last this many tokens of the sequence; `None` = all of it (llama.cpp's
    /// `--dry-penalty-last-n -1`). `Some(0)` turns DRY off, as llama.cpp's 0 does.
    pub penalty_last_n: Option<usize>,
}

impl Default for DryConfig {
    /// Off, with llama.cpp's other defaults (from [`crate::sample::SampleSettings`]).
    fn default() -> Self {
        SamplingConfig::default().dry
    }
}

/// The default sequence breakers of llama.cpp and text-generation-webui.
pub const DRY_DEFAULT_BREAKERS: [&str; 4] = ["\n", ":", "\"", "*"];

/// All decoding settings. `Default` is nanoGPT's `sample.py`: 10 samples of 500 tokens,
/// temperature 0.8, top_k 200, seed 1337; everything else off (from
/// [`crate::sample::SampleSettings`]).
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingConfig {
    /// Independent samples (batched together, see `batch_size`). Beam search ignores it and
    /// returns `num_return_sequences` sequences.
    pub num_samples: usize,
    pub max_new_tokens: usize,
    /// Sample from the distribution; `false` (or `temperature == 0`) picks the most likely token
    /// (greedy), or does deterministic beam search when `num_beams > 1`.
    pub do_sample: bool,
    /// Divides the logits; 0 means greedy (nanoGPT's convention).
    pub temperature: f32,
    /// Keep the k most likely tokens (ties with the k-th kept); `None` or 0 = off.
    pub top_k: Option<usize>,
    /// Nucleus: keep the smallest set of most likely tokens whose probability reaches p.
    pub top_p: Option<f32>,
    /// Keep tokens whose probability is at least `min_p` times the top token's.
    pub min_p: Option<f32>,
    /// Locally typical sampling (Meister et al. 2022) with this mass.
    pub typical_p: Option<f32>,
    /// CTRL's penalty over every token in the prompt and the generated text; 1 = off.
    pub repetition_penalty: f32,
    /// Ban tokens that would repeat an n-gram of this size already in the sequence; 0 = off.
    pub no_repeat_ngram_size: usize,
    /// OpenAI's penalties over the generated tokens: logit -= count * frequency_penalty +
    /// (count > 0) * presence_penalty.
    pub frequency_penalty: f32,
    pub presence_penalty: f32,
    pub dry: DryConfig,
    pub seed: u64,
    /// A sample ends when its generated text contains one of these (the text up to and including
    /// the stop string is kept; see [`crate::sample::FinishReason::Stop`]).
    pub stop: Vec<String>,
    /// End a sample at the vocabulary's end-of-text token (`<|endoftext|>` for GPT-2).
    pub stop_at_eot: bool,
    /// How many samples share one batch of the KV cache; 0 = all of them. Each sample has its own
    /// random stream, so the samples do not depend on the batching (up to rounding).
    pub batch_size: usize,
    /// Beam search when > 1.
    pub num_beams: usize,
    /// Beam scores are sum(log p) / generated_len^length_penalty.
    pub length_penalty: f32,
    pub early_stopping: EarlyStopping,
    /// Finished beams returned, best first (at most `num_beams`).
    pub num_return_sequences: usize,
    /// Epsilon sampling (Hewitt et al. 2022): drop tokens less likely than this; in (0, 1).
    pub epsilon_cutoff: Option<f32>,
    /// Eta sampling (Hewitt et al. 2022): drop tokens less likely than
    /// min(eta, sqrt(eta) * exp(-entropy)); in (0, 1).
    pub eta_cutoff: Option<f32>,
    /// Token sequences never generated: the last token of one is banned when the sequence so far
    /// ends with the rest of it. A ban of the end-of-text token alone is ignored, as transformers
    /// ignores a ban of the EOS token.
    pub bad_words_ids: Vec<Vec<u32>>,
    /// (sequence, bias): the bias is added to the sequence's last token when the sequence so far
    /// ends with the rest of it (a one-token sequence: always). Equal sequences: the last counts.
    pub sequence_bias: Vec<(Vec<u32>, f32)>,
    /// Raises the end-of-text token's logit by |logit| * (factor^(n - start) - 1) once n > start
    /// tokens are generated, to end long generations gently.
    pub exponential_decay_length_penalty: Option<LengthDecay>,
    /// Diverse beam search (Vijayakumar et al. 2016) when > 1: the beams form this many groups
    /// that choose in turn each step (see [`crate::sample::beam`]); must divide `num_beams`.
    pub num_beam_groups: usize,
    /// Diverse beam search: a group's log-prob of a token drops by this much for each earlier
    /// group that chose the token at this step (Hamming diversity).
    pub diversity_penalty: f32,
    /// Contrastive search (Su et al. 2022) when > 0: among the `top_k` most likely tokens, the
    /// one with the best (1 - alpha) * probability - alpha * (largest cosine similarity of its
    /// hidden state to an earlier token's); see [`crate::sample::contrastive`].
    pub penalty_alpha: f32,
    /// Ends or backtracks out of loops as they form (see [`crate::sample::loop_guard`]).
    pub loop_guard: LoopGuardConfig,
    /// How generation continues past `block_size` (see [`crate::sample::context`]).
    pub context: ContextMode,
    /// llama.cpp's mirostat version (0 = off, 1, 2), its target surprise (bits) and learning
    /// rate (see [`crate::sample::llama_samplers`]). Sampling only.
    pub mirostat: usize,
    pub mirostat_tau: f32,
    pub mirostat_eta: f32,
    /// XTC: probability of removing the top choices (0 = off), and what counts as one.
    pub xtc_probability: f32,
    pub xtc_threshold: f32,
    /// top-n-sigma: keep logits >= max - n * sigma.
    pub top_n_sigma: Option<f32>,
    /// The filters' order (llama.cpp's `--samplers`); empty = Hugging Face's.
    pub samplers: FilterOrder,
}

/// transformers' `exponential_decay_length_penalty = (start_index, decay_factor)`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LengthDecay {
    /// Generated tokens before the penalty starts.
    pub start: usize,
    /// Growth per token past `start` (> 1 makes ending ever more likely).
    pub factor: f32,
}

impl SamplingConfig {
    /// Hugging Face `generate(do_sample=False)`: one greedy sequence, no filters, no penalties.
    pub fn greedy(max_new_tokens: usize) -> Self {
        SamplingConfig {
            num_samples: 1,
            max_new_tokens,
            do_sample: false,
            temperature: 1.0,
            top_k: None,
            ..SamplingConfig::default()
        }
    }

    /// True when tokens are drawn at random (otherwise argmax / deterministic beams).
    pub fn sampling(&self) -> bool {
        self.do_sample && self.temperature > 0.0
    }

    pub fn dry_enabled(&self) -> bool {
        self.dry.multiplier != 0.0 && self.dry.penalty_last_n != Some(0)
    }

    /// Checks every knob's range; the message names the knob and its valid range.
    pub fn validate(&self) -> Result<()> {
        let finite = |name: &str, v: f32| -> Result<()> {
            if !v.is_finite() {
                bail!("{name} must be a finite number, got {v}");
            }
            Ok(())
        };
        if self.num_samples == 0 {
            bail!("num_samples must be at least 1");
        }
        finite("temperature", self.temperature)?;
        if self.temperature < 0.0 {
            bail!(
                "temperature must be >= 0 (0 = greedy), got {}",
                self.temperature
            );
        }
        for (name, v) in [("top_p", self.top_p), ("typical_p", self.typical_p)] {
            if let Some(p) = v {
                if !(p > 0.0 && p <= 1.0) {
                    bail!("{name} must be in (0, 1], got {p}");
                }
            }
        }
        if let Some(p) = self.min_p {
            if !(0.0..=1.0).contains(&p) {
                bail!("min_p must be in [0, 1], got {p}");
            }
        }
        finite("repetition_penalty", self.repetition_penalty)?;
        if self.repetition_penalty <= 0.0 {
            bail!(
                "repetition_penalty must be > 0 (1 = off), got {}",
                self.repetition_penalty
            );
        }
        finite("frequency_penalty", self.frequency_penalty)?;
        finite("presence_penalty", self.presence_penalty)?;
        finite("dry_multiplier", self.dry.multiplier)?;
        finite("dry_base", self.dry.base)?;
        if self.dry.multiplier < 0.0 {
            bail!(
                "dry_multiplier must be >= 0 (0 = off), got {}",
                self.dry.multiplier
            );
        }
        if self.dry_enabled() && self.dry.base < 1.0 {
            bail!("dry_base must be >= 1, got {}", self.dry.base);
        }
        if self.stop.iter().any(|s| s.is_empty()) {
            bail!("a stop string must not be empty");
        }
        if self.num_beams == 0 {
            bail!("num_beams must be at least 1");
        }
        finite("length_penalty", self.length_penalty)?;
        for (name, v) in [
            ("epsilon_cutoff", self.epsilon_cutoff),
            ("eta_cutoff", self.eta_cutoff),
        ] {
            if let Some(e) = v {
                if !(e > 0.0 && e < 1.0) {
                    bail!("{name} must be in (0, 1), got {e}");
                }
            }
        }
        if self.bad_words_ids.iter().any(|w| w.is_empty())
            || self.sequence_bias.iter().any(|(w, _)| w.is_empty())
        {
            bail!("a bad_words or sequence_bias sequence must not be empty");
        }
        if let Some((_, b)) = self.sequence_bias.iter().find(|(_, b)| b.is_nan()) {
            bail!("a sequence_bias must be a number, got {b}");
        }
        if let Some(d) = self.exponential_decay_length_penalty {
            finite("exponential_decay_length_penalty's factor", d.factor)?;
            if d.factor <= 0.0 {
                bail!(
                    "exponential_decay_length_penalty's factor must be > 0 (> 1 favours ending), got {}",
                    d.factor
                );
            }
        }
        finite("diversity_penalty", self.diversity_penalty)?;
        if self.num_beam_groups == 0 || !self.num_beams.is_multiple_of(self.num_beam_groups) {
            bail!(
                "num_beam_groups must divide num_beams ({}), got {}",
                self.num_beams,
                self.num_beam_groups
            );
        }
        if self.num_beam_groups > 1 {
            if self.sampling() {
                bail!("diverse beam search (num_beam_groups > 1) is deterministic: set temperature=0 or do_sample=false");
            }
            if self.diversity_penalty <= 0.0 {
                bail!(
                    "diversity_penalty must be > 0 with num_beam_groups > 1 (else the groups are identical), got {}",
                    self.diversity_penalty
                );
            }
        } else if self.diversity_penalty != 0.0 {
            bail!("diversity_penalty needs diverse beam search: set num_beam_groups > 1");
        }
        finite("penalty_alpha", self.penalty_alpha)?;
        if !(0.0..=1.0).contains(&self.penalty_alpha) {
            bail!(
                "penalty_alpha must be in [0, 1] (0 = off), got {}",
                self.penalty_alpha
            );
        }
        if self.penalty_alpha > 0.0 {
            if self.sampling() {
                bail!("contrastive search (penalty_alpha > 0) is deterministic: set temperature=0 or do_sample=false");
            }
            if self.num_beams > 1 {
                bail!("contrastive search (penalty_alpha > 0) does not combine with beam search: set num_beams=1");
            }
            if self.top_k.is_none_or(|k| k <= 1) {
                bail!("contrastive search (penalty_alpha > 0) needs top_k > 1 candidates (try 4)");
            }
        }
        if self.num_return_sequences == 0 {
            bail!("num_return_sequences must be at least 1");
        }
        if self.num_return_sequences > self.num_beams.max(1) {
            if self.num_beams > 1 {
                bail!(
                    "num_return_sequences must be between 1 and num_beams ({}), got {}",
                    self.num_beams,
                    self.num_return_sequences
                );
            }
            bail!(
                "num_return_sequences > 1 needs beam search (num_beams >= it); for several samples use num_samples"
            );
        }
        self.loop_guard.validate()?;
        if self.mirostat > 2 {
            bail!("mirostat must be 0 (off), 1 or 2, got {}", self.mirostat);
        }
        finite("mirostat_tau", self.mirostat_tau)?;
        finite("mirostat_eta", self.mirostat_eta)?;
        for (name, v) in [
            ("xtc_probability", self.xtc_probability),
            ("xtc_threshold", self.xtc_threshold),
        ] {
            if !(0.0..=1.0).contains(&v) {
                bail!("{name} must be in [0, 1], got {v}");
            }
        }
        if let Some(n) = self.top_n_sigma {
            finite("top_n_sigma", n)?;
        }
        if (self.mirostat > 0 || self.xtc_probability > 0.0) && self.num_beams > 1 {
            bail!("mirostat and XTC work with sampling, not beam search (num_beams > 1)");
        }
        if self.loop_guard.enabled() && self.num_beams > 1 {
            bail!("loop_guard works with greedy decoding and sampling, not beam search (num_beams > 1)");
        }
        Ok(())
    }
}
