//! Model configuration: nanoGPT's `GPTConfig`, its presets, and validation with clear errors;
//! and the model-shape knobs that `train` and `bench` share ([`crate::with_model_shape`]).

use crate::llama::LlamaConfig;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GptConfig {
    pub n_layer: usize,
    pub n_head: usize,
    pub n_embd: usize,
    pub block_size: usize,
    /// The real vocabulary: logits beyond it never reach the loss or a sample.
    pub vocab_size: usize,
    /// Round the embedding table up to a multiple of 64 rows (50257 -> 50304) for faster matmuls.
    pub pad_vocab: bool,
    pub bias: bool,
    pub dropout: f32,
    /// GPT-2's block or Llama-2's; configs written before Llama existed read as GPT-2.
    #[serde(default)]
    pub arch: Arch,
}

/// `--model`: which family a model trained from scratch belongs to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelFamily {
    #[default]
    Gpt2,
    Llama,
}

impl crate::config::knobs::Knob for ModelFamily {
    fn set_text(&mut self, text: &str) -> std::result::Result<(), String> {
        *self = match text.trim() {
            "gpt2" => ModelFamily::Gpt2,
            "llama" => ModelFamily::Llama,
            _ => return Err("expected gpt2 or llama".into()),
        };
        Ok(())
    }
    fn show(&self) -> String {
        match self {
            ModelFamily::Gpt2 => "gpt2",
            ModelFamily::Llama => "llama",
        }
        .into()
    }
}

/// Which transformer block the model is made of.
///
/// GPT-2: LayerNorm, learned positions, GELU MLP 4x wide, one head per key/value head, linear
/// weights stored (in, out) as GPT-2's Conv1D, classifier tied to the token embedding.
/// Llama-2: RMSNorm, rotary positions, SwiGLU MLP, grouped-query attention, no biases, linear
/// weights stored (out, in) as Hugging Face's `nn.Linear`, classifier tied or separate.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    #[default]
    Gpt2,
    Llama(LlamaArch),
}

/// What a Llama adds to the shape `GptConfig` already says (`n_layer`, `n_head`, `n_embd`,
/// `block_size`, `vocab_size`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LlamaArch {
    /// Key/value heads: `n_head / n_kv_head` query heads share one.
    pub n_kv_head: usize,
    /// Width of the SwiGLU MLP.
    pub hidden_dim: usize,
    pub norm_eps: f32,
    pub rope_theta: f32,
    /// The classifier is the token embedding.
    pub tied: bool,
}

impl Default for GptConfig {
    /// nanoGPT's `GPTConfig` defaults (GPT-2 124M shape, vocab padded, with biases).
    fn default() -> Self {
        GptConfig {
            n_layer: 12,
            n_head: 12,
            n_embd: 768,
            block_size: 1024,
            vocab_size: 50257,
            pad_vocab: true,
            bias: true,
            dropout: 0.0,
            arch: Arch::Gpt2,
        }
    }
}

impl GptConfig {
    /// OpenAI's GPT-2 shapes, as nanoGPT's `from_pretrained` sets them.
    pub fn preset(name: &str) -> Result<GptConfig> {
        let (n_layer, n_head, n_embd) = match name {
            "gpt2" => (12, 12, 768),
            "gpt2-medium" => (24, 16, 1024),
            "gpt2-large" => (36, 20, 1280),
            "gpt2-xl" => (48, 25, 1600),
            other => bail!(
                "unknown model preset '{other}': use gpt2, gpt2-medium, gpt2-large or gpt2-xl"
            ),
        };
        Ok(GptConfig {
            n_layer,
            n_head,
            n_embd,
            ..GptConfig::default()
        })
    }

    /// Rows of the embedding table: `vocab_size`, or the next multiple of 64 when padding.
    pub fn padded_vocab_size(&self) -> usize {
        if self.pad_vocab {
            self.vocab_size.div_ceil(64) * 64
        } else {
            self.vocab_size
        }
    }

    pub fn head_size(&self) -> usize {
        self.n_embd / self.n_head
    }

    pub fn llama(&self) -> Option<&LlamaArch> {
        match &self.arch {
            Arch::Llama(l) => Some(l),
            Arch::Gpt2 => None,
        }
    }

    /// Key/value heads (grouped-query attention); GPT-2 has one per query head.
    pub fn n_kv_head(&self) -> usize {
        self.llama().map_or(self.n_head, |l| l.n_kv_head)
    }

    /// Width of a token's packed queries, keys and values.
    pub fn qkv_width(&self) -> usize {
        (self.n_head + 2 * self.n_kv_head()) * self.head_size()
    }

    /// Width of the MLP's hidden activation (after GELU, or after SwiGLU's gate).
    pub fn mlp_width(&self) -> usize {
        self.llama().map_or(4 * self.n_embd, |l| l.hidden_dim)
    }

    /// Width of the MLP's first projection: GELU's input, or SwiGLU's gate and up side by side.
    pub fn mlp_in_width(&self) -> usize {
        match &self.arch {
            Arch::Gpt2 => 4 * self.n_embd,
            Arch::Llama(l) => 2 * l.hidden_dim,
        }
    }

    /// The Llama shape in llama2.c's terms.
    pub fn llama_config(&self) -> Option<LlamaConfig> {
        self.llama().map(|l| LlamaConfig {
            dim: self.n_embd,
            hidden_dim: l.hidden_dim,
            n_layers: self.n_layer,
            n_heads: self.n_head,
            n_kv_heads: l.n_kv_head,
            vocab_size: self.vocab_size,
            seq_len: self.block_size,
            norm_eps: l.norm_eps,
            rope_theta: l.rope_theta,
            shared_classifier: l.tied,
        })
    }

    /// A Llama of shape `cfg`: no biases, no vocabulary padding (its files have none).
    pub fn from_llama(cfg: &LlamaConfig) -> GptConfig {
        GptConfig {
            n_layer: cfg.n_layers,
            n_head: cfg.n_heads,
            n_embd: cfg.dim,
            block_size: cfg.seq_len,
            vocab_size: cfg.vocab_size,
            pad_vocab: false,
            bias: false,
            dropout: 0.0,
            arch: Arch::Llama(LlamaArch {
                n_kv_head: cfg.n_kv_heads,
                hidden_dim: cfg.hidden_dim,
                norm_eps: cfg.norm_eps,
                rope_theta: cfg.rope_theta,
                tied: cfg.shared_classifier,
            }),
        }
    }

    pub fn validate(&self) -> Result<()> {
        for (key, value) in [
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
            ("n_embd", self.n_embd),
            ("block_size", self.block_size),
            ("vocab_size", self.vocab_size),
        ] {
            if value == 0 {
                bail!("{key} must be at least 1");
            }
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            bail!(
                "n_embd ({}) must be a multiple of n_head ({})",
                self.n_embd,
                self.n_head
            );
        }
        if self.vocab_size > u32::MAX as usize {
            bail!("vocab_size {} is too large", self.vocab_size);
        }
        if !(0.0..1.0).contains(&self.dropout) {
            bail!("dropout must be in [0, 1), got {}", self.dropout);
        }
        if let Some(llama) = self.llama_config() {
            if self.bias || self.pad_vocab {
                bail!("a Llama has no biases and no vocabulary padding (set bias and pad_vocab to false)");
            }
            llama.validate()?;
        }
        Ok(())
    }

    /// Parameters, counted as nanoGPT's `get_num_params()` does: position embeddings excluded,
    /// the tied token embedding counted once, padding rows excluded.
    pub fn num_params(&self) -> usize {
        if let Some(llama) = self.llama_config() {
            return llama.param_count().unwrap_or(usize::MAX);
        }
        let (c, l, v) = (self.n_embd, self.n_layer, self.vocab_size);
        let b = usize::from(self.bias);
        let per_layer = 2 * (c + b * c) // two LayerNorms
            + c * 3 * c + b * 3 * c // c_attn
            + c * c + b * c // attn.c_proj
            + c * 4 * c + b * 4 * c // c_fc
            + 4 * c * c + b * c; // mlp.c_proj
        v * c + l * per_layer + (c + b * c)
    }

    /// Training FLOPs per token as in nanoGPT's `estimate_mfu` (PaLM appendix B):
    /// 6N for the matmuls forward and backward plus 12*L*C*T for attention.
    pub fn flops_per_token(&self, seq_len: usize) -> f64 {
        6.0 * self.num_params() as f64 + 12.0 * (self.n_layer * self.n_embd * seq_len) as f64
    }
}

/// Declares a [`crate::knobs!`] table with the model-shape knobs (nanoGPT's train.py defaults)
/// between two groups of its own rows, and `model_config` to turn them into a [`GptConfig`].
/// `train` and `bench` both use it, so the shape is defined here once.
#[macro_export]
macro_rules! with_model_shape {
    (
        $(#[$meta:meta])*
        pub struct $name:ident { { $($before:tt)* } { $($after:tt)* } }
    ) => {
        $crate::knobs! {
            $(#[$meta])*
            pub struct $name {
                { $($before)* }
                {
                    /// Context length in tokens
                    block_size: usize = 1024,
                    /// Transformer blocks
                    n_layer: usize = 12,
                    /// Attention heads per block
                    n_head: usize = 12,
                    /// Embedding width
                    n_embd: usize = 768,
                    /// Dropout probability while training
                    dropout: f32 = 0.0,
                    /// Biases in the linear layers and LayerNorms
                    bias: bool = false,
                    /// gpt2, or llama (llama2.c's model: RMSNorm, rotary positions, SwiGLU,
                    /// grouped-query attention, no biases, classifier tied to the embedding)
                    model: $crate::config::ModelFamily = $crate::config::ModelFamily::Gpt2,
                    /// llama2.c's name for n_embd (overrides it)
                    dim: Option<usize> = None,
                    /// llama2.c's name for n_layer (overrides it)
                    n_layers: Option<usize> = None,
                    /// llama2.c's name for n_head (overrides it)
                    n_heads: Option<usize> = None,
                    /// Llama: key/value heads, each shared by n_head / n_kv_heads query heads
                    /// [default: n_head]
                    n_kv_heads: Option<usize> = None,
                    /// Llama: the SwiGLU width is 2/3 of 4 x dim, rounded up to a multiple of
                    /// this (llama2.c's rule)
                    multiple_of: usize = 32,
                    /// llama2.c's name for block_size (overrides it)
                    max_seq_len: Option<usize> = None,
                }
                { $($after)* }
            }
        }

        impl $name {
            /// The model these knobs describe, with a vocabulary of `vocab_size` (padded to a
            /// multiple of 64 when `pad_vocab`).
            /// A Llama (`model = "llama"`) is never padded and has llama2.c's norm epsilon and
            /// RoPE base.
            pub fn model_config(&self, vocab_size: usize, pad_vocab: bool) -> $crate::config::GptConfig {
                let n_layer = self.n_layers.unwrap_or(self.n_layer);
                let n_head = self.n_heads.unwrap_or(self.n_head);
                let n_embd = self.dim.unwrap_or(self.n_embd);
                let block_size = self.max_seq_len.unwrap_or(self.block_size);
                match self.model {
                    $crate::config::ModelFamily::Gpt2 => $crate::config::GptConfig {
                        n_layer,
                        n_head,
                        n_embd,
                        block_size,
                        vocab_size,
                        pad_vocab,
                        bias: self.bias,
                        dropout: self.dropout,
                        arch: $crate::config::Arch::Gpt2,
                    },
                    $crate::config::ModelFamily::Llama => {
                        let multiple = self.multiple_of.max(1);
                        let llama = $crate::llama::LlamaConfig {
                            dim: n_embd,
                            hidden_dim: (2 * 4 * n_embd / 3).div_ceil(multiple) * multiple,
                            n_layers: n_layer,
                            n_heads: n_head,
                            n_kv_heads: self.n_kv_heads.unwrap_or(n_head),
                            vocab_size,
                            seq_len: block_size,
                            norm_eps: $crate::llama::config::LLAMA2C_NORM_EPS,
                            rope_theta: $crate::llama::config::LLAMA2C_ROPE_THETA,
                            shared_classifier: true,
                        };
                        $crate::config::GptConfig {
                            bias: self.bias,
                            dropout: self.dropout,
                            ..$crate::config::GptConfig::from_llama(&llama)
                        }
                    }
                }
            }
        }
    };
}
