//! A Llama model's parameters on the host, in one canonical form whatever file they came from:
//! one flat f32 buffer and a table of named views, as the GPT-2 [`crate::model::ParamTable`].
//!
//! The canonical form is Hugging Face's: its tensor names (`model.layers.0.self_attn.q_proj.weight`
//! ...), linear weights as (out, in), and its RoPE layout (each head's dimensions k and
//! k + head_dim/2 turn together, `rotate_half`). So gradients compare directly with PyTorch's, and
//! the checkpoint is a directory transformers opens. llama2.c's files (interleaved RoPE, stacked
//! layers) are converted on the way in and out by [`super::llama2c`].
//!
//! Also here: reading and writing the Hugging Face directory (`config.json` + `model.safetensors`).

use super::config::{hf_config_json, read_hf_config, LlamaConfig};
use crate::atomic_file::{tmp_path, write_atomic};
use crate::model::params::ParamInfo;
use crate::model::weights::{copy_f32_tensor, f32_le_bytes};
use anyhow::{bail, Context, Result};
use safetensors::{Dtype, SafeTensors};
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// Offsets of one layer's tensors in the flat buffer.
#[derive(Clone, Copy, Debug)]
pub struct LlamaLayerOffsets {
    /// RMSNorm weight before attention (llama2.c `rms_att`).
    pub attn_norm: usize,
    pub wq: usize,
    pub wk: usize,
    pub wv: usize,
    pub wo: usize,
    /// RMSNorm weight before the MLP (llama2.c `rms_ffn`).
    pub ffn_norm: usize,
    /// SwiGLU: down(silu(gate x) * up x); llama2.c's w1, w3 and w2.
    pub w_gate: usize,
    pub w_up: usize,
    pub w_down: usize,
}

#[derive(Clone, Debug)]
pub struct LlamaTable {
    pub entries: Vec<ParamInfo>,
    pub total: usize,
    pub embed: usize,
    pub layers: Vec<LlamaLayerOffsets>,
    pub norm: usize,
    /// The classifier; the embedding's offset when it is shared (tied).
    pub lm_head: usize,
}

impl LlamaTable {
    /// Layout: embedding, each layer's tensors in Hugging Face's order, the final norm, then
    /// `lm_head` unless shared. An error for a bad shape or sizes past `usize`.
    pub fn new(cfg: &LlamaConfig) -> Result<LlamaTable> {
        cfg.validate()?;
        if cfg.param_count().is_none() {
            bail!("the model's sizes overflow; the header or config is corrupt");
        }
        Ok(LlamaTable::layout(cfg))
    }

    /// The layout of a shape that `LlamaConfig::validate` accepted and whose size fits.
    pub(crate) fn layout(cfg: &LlamaConfig) -> LlamaTable {
        let (d, hd, kv, v) = (cfg.dim, cfg.hidden_dim, cfg.kv_dim(), cfg.vocab_size);
        let mut entries = Vec::new();
        let mut total = 0;
        let mut add = |name: String, shape: Vec<usize>| -> usize {
            let offset = total;
            total += shape.iter().product::<usize>();
            entries.push(ParamInfo {
                name,
                decay: shape.len() >= 2,
                shape,
                offset,
            });
            offset
        };
        let embed = add("model.embed_tokens.weight".into(), vec![v, d]);
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for l in 0..cfg.n_layers {
            let p = |s: &str| format!("model.layers.{l}.{s}");
            layers.push(LlamaLayerOffsets {
                attn_norm: add(p("input_layernorm.weight"), vec![d]),
                wq: add(p("self_attn.q_proj.weight"), vec![d, d]),
                wk: add(p("self_attn.k_proj.weight"), vec![kv, d]),
                wv: add(p("self_attn.v_proj.weight"), vec![kv, d]),
                wo: add(p("self_attn.o_proj.weight"), vec![d, d]),
                ffn_norm: add(p("post_attention_layernorm.weight"), vec![d]),
                w_gate: add(p("mlp.gate_proj.weight"), vec![hd, d]),
                w_up: add(p("mlp.up_proj.weight"), vec![hd, d]),
                w_down: add(p("mlp.down_proj.weight"), vec![d, hd]),
            });
        }
        let norm = add("model.norm.weight".into(), vec![d]);
        let lm_head = if cfg.shared_classifier {
            embed
        } else {
            add("lm_head.weight".into(), vec![v, d])
        };
        LlamaTable {
            entries,
            total,
            embed,
            layers,
            norm,
            lm_head,
        }
    }

    pub fn get(&self, name: &str) -> Option<&ParamInfo> {
        self.entries.iter().find(|e| e.name == name)
    }
}

/// A Llama model on the host: shape, table and every parameter in f32.
#[derive(Clone, Debug)]
pub struct Llama {
    pub config: LlamaConfig,
    pub table: LlamaTable,
    pub params: Vec<f32>,
}

impl Llama {
    /// A model of shape `config` with every parameter zero, for readers to fill. A shape with
    /// more parameters than `file_bytes` (the size of the file they come from) can hold at
    /// `bytes_per_param` is refused before anything is allocated.
    pub(crate) fn zeros_for_file(
        config: LlamaConfig,
        path: &Path,
        bytes_per_param: f64,
        file_bytes: usize,
    ) -> Result<Llama> {
        config
            .validate()
            .with_context(|| format!("{}: bad model shape", path.display()))?;
        let fits = config
            .param_count()
            .is_some_and(|n| n as f64 * bytes_per_param <= file_bytes as f64);
        if !fits {
            bail!(
                "{}: its model shape needs more parameters than the file's {file_bytes} bytes \
                 hold; the file is truncated or its header (or config.json) is wrong",
                path.display(),
            );
        }
        let table = LlamaTable::new(&config).with_context(|| format!("{}", path.display()))?;
        Ok(Llama {
            params: vec![0.0; table.total],
            config,
            table,
        })
    }

    /// The values of one named tensor.
    pub fn tensor(&self, name: &str) -> Option<&[f32]> {
        self.table.get(name).map(|e| &self.params[e.range()])
    }
}

/// Loads a Hugging Face Llama directory: `config.json` and one `model.safetensors` holding F32
/// tensors. A tied model's file may hold `lm_head.weight` too if it equals the embedding; any
/// other tensor the model does not use is an error, since it means a different model.
pub fn load_hf_dir(dir: &Path) -> Result<Llama> {
    let cfg = read_hf_config(&dir.join("config.json"))?;
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).with_context(|| {
        format!(
            "cannot read {}: a Llama directory needs config.json and model.safetensors \
             (sharded checkpoints are not supported)",
            path.display()
        )
    })?;
    let st = SafeTensors::deserialize(&bytes).with_context(|| {
        format!(
            "{} is not a valid safetensors file (truncated?)",
            path.display()
        )
    })?;
    let mut model = Llama::zeros_for_file(cfg, &path, 4.0, bytes.len())?;
    for e in &model.table.entries {
        let view = st
            .tensor(&e.name)
            .with_context(|| format!("{}: tensor \"{}\" is missing", path.display(), e.name))?;
        copy_f32_tensor(
            &view,
            &e.name,
            &e.shape,
            &mut model.params[e.range()],
            &path,
        )?;
    }
    if let (true, Ok(head)) = (model.config.shared_classifier, st.tensor("lm_head.weight")) {
        let embed_len = model.config.vocab_size * model.config.dim;
        let embed = &model.params[model.table.embed..model.table.embed + embed_len];
        if head.data() != f32_le_bytes(embed) {
            bail!(
                "{}: config.json ties the classifier to the embedding (tie_word_embeddings), \
                 but the file's lm_head.weight differs from it; set tie_word_embeddings to false",
                path.display()
            );
        }
    }
    let known: HashSet<&str> = model
        .table
        .entries
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    let mut unused: Vec<&str> = st
        .names()
        .into_iter()
        // A tied model's lm_head was checked above, and older transformers saved RoPE's
        // frequencies, which follow from the config.
        .filter(|n| !known.contains(n) && *n != "lm_head.weight")
        .filter(|n| !n.ends_with(".rotary_emb.inv_freq"))
        .collect();
    if !unused.is_empty() {
        unused.sort();
        bail!(
            "{}: {} tensor(s) that this {}-layer model does not use, first {}; does config.json match the weights?",
            path.display(),
            unused.len(),
            model.config.n_layers,
            unused[0]
        );
    }
    Ok(model)
}

/// Writes `config.json` + `model.safetensors` as transformers' `save_pretrained` does (a tied
/// model stores no `lm_head.weight`), each to a temp file then renamed.
pub fn save_hf_dir(model: &Llama, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut tensors = Vec::with_capacity(model.table.entries.len());
    for e in &model.table.entries {
        let data = f32_le_bytes(&model.params[e.range()]);
        tensors.push((
            e.name.clone(),
            safetensors::tensor::TensorView::new(Dtype::F32, e.shape.clone(), data)?,
        ));
    }
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let st_path = dir.join("model.safetensors");
    let tmp = tmp_path(&st_path);
    safetensors::serialize_to_file(tensors, Some(metadata), &tmp)
        .with_context(|| format!("cannot write {} (disk full?)", tmp.display()))?;
    std::fs::rename(&tmp, &st_path)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), st_path.display()))?;
    write_atomic(
        &dir.join("config.json"),
        hf_config_json(&model.config).as_bytes(),
    )
}
