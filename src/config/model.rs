//! Model configuration: nanoGPT's `GPTConfig`, its presets, and validation with clear errors;
//! and the model-shape knobs that `train` and `bench` share ([`crate::with_model_shape`]).

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
        Ok(())
    }

    /// Parameters, counted as nanoGPT's `get_num_params()` does: position embeddings excluded,
    /// the tied token embedding counted once, padding rows excluded.
    pub fn num_params(&self) -> usize {
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
                }
                { $($after)* }
            }
        }

        impl $name {
            /// The model these knobs describe, with a vocabulary of `vocab_size` (padded to a
            /// multiple of 64 when `pad_vocab`).
            pub fn model_config(&self, vocab_size: usize, pad_vocab: bool) -> $crate::config::GptConfig {
                $crate::config::GptConfig {
                    n_layer: self.n_layer,
                    n_head: self.n_head,
                    n_embd: self.n_embd,
                    block_size: self.block_size,
                    vocab_size,
                    pad_vocab,
                    bias: self.bias,
                    dropout: self.dropout,
                }
            }
        }
    };
}
