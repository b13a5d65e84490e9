//! nanoGPT's training knobs, with its defaults. Values come from a TOML config file and then
//! `--key=value` overrides; both go through `set`, which type-checks and rejects unknown keys
//! with the list of valid ones.

use crate::config::GptConfig;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Checkpoints store this; knobs added later take their defaults when an older one is read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainConfig {
    // I/O
    pub out_dir: String,
    pub eval_interval: usize,
    pub log_interval: usize,
    pub eval_iters: usize,
    pub eval_only: bool,
    pub always_save_checkpoint: bool,
    /// scratch | resume | gpt2 | gpt2-medium | gpt2-large | gpt2-xl | a model directory
    pub init_from: String,
    // data
    pub dataset: String,
    /// Where `<dataset>/` lives (nanoGPT: `data/`).
    pub data_dir: String,
    pub gradient_accumulation_steps: usize,
    pub batch_size: usize,
    pub block_size: usize,
    // model
    pub n_layer: usize,
    pub n_head: usize,
    pub n_embd: usize,
    pub dropout: f32,
    pub bias: bool,
    /// 0 = from the dataset's meta.json, else 50304 (nanoGPT's padded GPT-2 vocab).
    pub vocab_size: usize,
    /// Completion-only loss for character data: when set (e.g. "="), only the characters after
    /// it up to the end of the line are predicted targets. Empty: every token (nanoGPT).
    pub loss_after: String,
    // AdamW
    pub learning_rate: f32,
    pub max_iters: usize,
    pub weight_decay: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub grad_clip: f32,
    // learning rate schedule
    pub decay_lr: bool,
    pub warmup_iters: usize,
    pub lr_decay_iters: usize,
    pub min_lr: f32,
    // system
    pub seed: u64,
    /// 0 = measure this CPU's f32 matmul peak for MFU.
    pub peak_tflops: f64,
    pub device: String,
    pub dtype: String,
    /// Accepted for nanoGPT compatibility; there is nothing to compile.
    pub compile: bool,
}

impl Default for TrainConfig {
    /// nanoGPT's train.py defaults (GPT-2 124M on OpenWebText), on this CPU in f32.
    fn default() -> Self {
        TrainConfig {
            out_dir: "out".into(),
            eval_interval: 2000,
            log_interval: 1,
            eval_iters: 200,
            eval_only: false,
            always_save_checkpoint: true,
            init_from: "scratch".into(),
            dataset: "openwebtext".into(),
            data_dir: "data".into(),
            gradient_accumulation_steps: 40,
            batch_size: 12,
            block_size: 1024,
            n_layer: 12,
            n_head: 12,
            n_embd: 768,
            dropout: 0.0,
            bias: false,
            vocab_size: 0,
            loss_after: String::new(),
            learning_rate: 6e-4,
            max_iters: 600_000,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.95,
            grad_clip: 1.0,
            decay_lr: true,
            warmup_iters: 2000,
            lr_decay_iters: 600_000,
            min_lr: 6e-5,
            seed: 1337,
            peak_tflops: 0.0,
            device: "cpu".into(),
            dtype: "float32".into(),
            compile: false,
        }
    }
}

/// Keys nanoGPT's configs carry that mean nothing here (logging to a service): accepted, ignored.
const IGNORED_KEYS: [&str; 4] = ["wandb_log", "wandb_project", "wandb_run_name", "backend"];

macro_rules! knobs {
    ($($name:ident),* $(,)?) => {
        /// Every key `set` accepts, in nanoGPT's order.
        pub const KEYS: &[&str] = &[$(stringify!($name)),*];

        impl TrainConfig {
            /// Sets `key` from its text form, type-checked.
            pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
                match key {
                    $(stringify!($name) => self.$name = parse_value(key, value)?,)*
                    _ if IGNORED_KEYS.contains(&key) => {}
                    _ => bail!("unknown config key '{key}'; valid keys: {}", KEYS.join(", ")),
                }
                Ok(())
            }
        }
    };
}

knobs!(
    out_dir,
    eval_interval,
    log_interval,
    eval_iters,
    eval_only,
    always_save_checkpoint,
    init_from,
    dataset,
    data_dir,
    gradient_accumulation_steps,
    batch_size,
    block_size,
    n_layer,
    n_head,
    n_embd,
    dropout,
    bias,
    vocab_size,
    loss_after,
    learning_rate,
    max_iters,
    weight_decay,
    beta1,
    beta2,
    grad_clip,
    decay_lr,
    warmup_iters,
    lr_decay_iters,
    min_lr,
    seed,
    peak_tflops,
    device,
    dtype,
    compile,
);

/// Parses one value, accepting Python's spellings (True/False, quoted strings).
fn parse_value<T: ParseKnob>(key: &str, value: &str) -> Result<T> {
    T::parse_knob(value.trim())
        .with_context(|| format!("bad value for {key}: '{value}' ({})", T::EXPECTED))
}

trait ParseKnob: Sized {
    const EXPECTED: &'static str;
    fn parse_knob(s: &str) -> Option<Self>;
}

impl ParseKnob for bool {
    const EXPECTED: &'static str = "expected true or false";
    fn parse_knob(s: &str) -> Option<bool> {
        match s {
            "true" | "True" => Some(true),
            "false" | "False" => Some(false),
            _ => None,
        }
    }
}

impl ParseKnob for String {
    const EXPECTED: &'static str = "expected text";
    fn parse_knob(s: &str) -> Option<String> {
        let unquoted = s
            .strip_prefix('"')
            .and_then(|x| x.strip_suffix('"'))
            .or_else(|| s.strip_prefix('\'').and_then(|x| x.strip_suffix('\'')));
        Some(unquoted.unwrap_or(s).to_string())
    }
}

macro_rules! parse_number {
    ($($t:ty => $what:literal),*) => {$(
        impl ParseKnob for $t {
            const EXPECTED: &'static str = $what;
            fn parse_knob(s: &str) -> Option<$t> {
                // nanoGPT writes 5*8 for gradient_accumulation_steps: allow a product.
                s.split('*').map(|f| f.trim().replace('_', "").parse::<$t>().ok()).try_fold(1 as $t, |acc, f| f.map(|f| acc * f))
            }
        }
    )*};
}
parse_number!(usize => "expected a whole number", u64 => "expected a whole number", f32 => "expected a number", f64 => "expected a number");

impl TrainConfig {
    /// Reads a TOML config file (flat `key = value` lines, as nanoGPT's config/*.py) over the
    /// defaults.
    pub fn from_file(path: &Path) -> Result<TrainConfig> {
        let mut cfg = TrainConfig::default();
        cfg.apply_file(path)?;
        Ok(cfg)
    }

    pub fn apply_file(&mut self, path: &Path) -> Result<()> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        self.apply_toml(&text, &path.display().to_string())
    }

    /// Applies the `key = value` lines of a TOML text; `source` names it in errors.
    pub fn apply_toml(&mut self, text: &str, source: &str) -> Result<()> {
        let table: toml::Table = text
            .parse()
            .with_context(|| format!("{source} is not valid TOML"))?;
        for (key, value) in table {
            let text = match &value {
                toml::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            self.set(&key, &text)
                .with_context(|| format!("in {source}"))?;
        }
        Ok(())
    }

    /// Applies `--key=value` arguments (also `--key value`).
    pub fn apply_overrides(&mut self, args: &[String]) -> Result<()> {
        let mut i = 0;
        while i < args.len() {
            let arg = &args[i];
            let Some(kv) = arg.strip_prefix("--") else {
                bail!("unexpected argument '{arg}': overrides look like --key=value");
            };
            let (key, value) = match kv.split_once('=') {
                Some((k, v)) => (k, v.to_string()),
                None => {
                    i += 1;
                    let v = args
                        .get(i)
                        .with_context(|| format!("--{kv} needs a value (--{kv}=VALUE)"))?;
                    (kv, v.clone())
                }
            };
            self.set(key, &value)?;
            i += 1;
        }
        Ok(())
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<()> {
        for (key, v) in [
            ("eval_interval", self.eval_interval),
            ("log_interval", self.log_interval),
            (
                "gradient_accumulation_steps",
                self.gradient_accumulation_steps,
            ),
            ("batch_size", self.batch_size),
            ("block_size", self.block_size),
        ] {
            if v == 0 {
                bail!("{key} must be at least 1");
            }
        }
        if !self.learning_rate.is_finite() || self.learning_rate < 0.0 {
            bail!(
                "learning_rate must be a non-negative number, got {}",
                self.learning_rate
            );
        }
        if !(0.0..1.0).contains(&self.beta1) || !(0.0..1.0).contains(&self.beta2) {
            bail!("beta1 and beta2 must be in [0, 1)");
        }
        if self.device != "cpu" {
            bail!(
                "device '{}' is not available: this build trains on the CPU (device = \"cpu\")",
                self.device
            );
        }
        if self.dtype != "float32" {
            bail!(
                "dtype '{}' is not supported on the CPU: use dtype = \"float32\"",
                self.dtype
            );
        }
        Ok(())
    }

    /// The model shape these knobs describe (for init_from = scratch).
    pub fn model_config(&self, vocab_size: usize) -> GptConfig {
        GptConfig {
            n_layer: self.n_layer,
            n_head: self.n_head,
            n_embd: self.n_embd,
            block_size: self.block_size,
            vocab_size,
            pad_vocab: true,
            bias: self.bias,
            dropout: self.dropout,
        }
    }

    pub fn out_dir(&self) -> PathBuf {
        PathBuf::from(&self.out_dir)
    }

    pub fn dataset_dir(&self) -> PathBuf {
        Path::new(&self.data_dir).join(&self.dataset)
    }

    pub fn tokens_per_iter(&self) -> usize {
        self.gradient_accumulation_steps * self.batch_size * self.block_size
    }
}

/// nanoGPT's `get_lr`: linear warmup for warmup_iters, cosine decay to min_lr at lr_decay_iters,
/// min_lr after; the constant learning_rate when decay_lr is off.
pub fn learning_rate_at(cfg: &TrainConfig, it: usize) -> f32 {
    if !cfg.decay_lr {
        return cfg.learning_rate;
    }
    if it < cfg.warmup_iters {
        return cfg.learning_rate * (it + 1) as f32 / (cfg.warmup_iters + 1) as f32;
    }
    if it > cfg.lr_decay_iters {
        return cfg.min_lr;
    }
    let ratio =
        (it - cfg.warmup_iters) as f64 / (cfg.lr_decay_iters - cfg.warmup_iters).max(1) as f64;
    let coeff = 0.5 * (1.0 + (std::f64::consts::PI * ratio).cos());
    (cfg.min_lr as f64 + coeff * (cfg.learning_rate - cfg.min_lr) as f64) as f32
}
