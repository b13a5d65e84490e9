//! All parameters in one f32 buffer, described by a table of named views (GPT-2's key names).
//! Gradients and AdamW moments use the same layout, so the optimizer is one fused loop and a
//! checkpoint is the table written out.

use crate::config::GptConfig;
use crate::llama::LlamaTable;
use crate::rng::Rng;

/// One tensor inside the flat buffer.
#[derive(Clone, Debug)]
pub struct ParamInfo {
    /// GPT-2's name without the `transformer.` prefix, e.g. `h.0.attn.c_attn.weight`.
    pub name: String,
    pub shape: Vec<usize>,
    pub offset: usize,
    /// nanoGPT's optimizer groups: weight decay on tensors of 2+ dimensions only.
    pub decay: bool,
}

impl ParamInfo {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.len()
    }
}

/// Offsets of one layer's tensors (bias offsets are meaningless when the model has no bias).
#[derive(Clone, Copy, Debug, Default)]
pub struct LayerOffsets {
    pub ln1_w: usize,
    pub ln1_b: usize,
    pub qkv_w: usize,
    pub qkv_b: usize,
    pub attproj_w: usize,
    pub attproj_b: usize,
    pub ln2_w: usize,
    pub ln2_b: usize,
    pub fc_w: usize,
    pub fc_b: usize,
    pub fcproj_w: usize,
    pub fcproj_b: usize,
}

#[derive(Clone, Debug)]
pub struct ParamTable {
    pub entries: Vec<ParamInfo>,
    pub total: usize,
    pub wte: usize,
    pub wpe: usize,
    pub layers: Vec<LayerOffsets>,
    pub lnf_w: usize,
    pub lnf_b: usize,
    /// The classifier: `wte` when tied (GPT-2 always is).
    pub lm_head: usize,
}

impl ParamTable {
    /// Layout: wte (padded rows), wpe, then each layer's tensors in GPT-2's order, then ln_f.
    /// Linear weights keep GPT-2's Conv1D layout (in_features, out_features).
    pub fn new(cfg: &GptConfig) -> ParamTable {
        if let Some(llama) = cfg.llama_config() {
            return ParamTable::from_llama(&LlamaTable::layout(&llama));
        }
        let (c, vp, t) = (cfg.n_embd, cfg.padded_vocab_size(), cfg.block_size);
        let mut entries = Vec::new();
        let mut total = 0;
        let mut add = |name: String, shape: Vec<usize>| -> usize {
            let offset = total;
            total += shape.iter().product::<usize>();
            let decay = shape.len() >= 2;
            entries.push(ParamInfo {
                name,
                shape,
                offset,
                decay,
            });
            offset
        };
        let wte = add("wte.weight".into(), vec![vp, c]);
        let wpe = add("wpe.weight".into(), vec![t, c]);
        let mut layers = Vec::with_capacity(cfg.n_layer);
        let bias_or_none = |add: &mut dyn FnMut(String, Vec<usize>) -> usize, name: String, n| {
            if cfg.bias {
                add(name, vec![n])
            } else {
                0
            }
        };
        for l in 0..cfg.n_layer {
            let p = |s: &str| format!("h.{l}.{s}");
            let mut o = LayerOffsets {
                ln1_w: add(p("ln_1.weight"), vec![c]),
                ..Default::default()
            };
            o.ln1_b = bias_or_none(&mut add, p("ln_1.bias"), c);
            o.qkv_w = add(p("attn.c_attn.weight"), vec![c, 3 * c]);
            o.qkv_b = bias_or_none(&mut add, p("attn.c_attn.bias"), 3 * c);
            o.attproj_w = add(p("attn.c_proj.weight"), vec![c, c]);
            o.attproj_b = bias_or_none(&mut add, p("attn.c_proj.bias"), c);
            o.ln2_w = add(p("ln_2.weight"), vec![c]);
            o.ln2_b = bias_or_none(&mut add, p("ln_2.bias"), c);
            o.fc_w = add(p("mlp.c_fc.weight"), vec![c, 4 * c]);
            o.fc_b = bias_or_none(&mut add, p("mlp.c_fc.bias"), 4 * c);
            o.fcproj_w = add(p("mlp.c_proj.weight"), vec![4 * c, c]);
            o.fcproj_b = bias_or_none(&mut add, p("mlp.c_proj.bias"), c);
            layers.push(o);
        }
        let lnf_w = add("ln_f.weight".into(), vec![c]);
        let lnf_b = bias_or_none(&mut add, "ln_f.bias".into(), c);
        ParamTable {
            entries,
            total,
            wte,
            wpe,
            layers,
            lnf_w,
            lnf_b,
            lm_head: wte,
        }
    }

    /// A Llama's layout (Hugging Face's names and order) in the block's terms: the fused
    /// matrices the engine multiplies by are adjacent tensors, (out, in) each, so q, k and v
    /// stack into one (q + 2 kv, C) matrix and gate and up into one (2 hidden, C).
    /// No biases and no position table (`wpe` is unused).
    fn from_llama(t: &LlamaTable) -> ParamTable {
        let layers = t
            .layers
            .iter()
            .map(|o| LayerOffsets {
                ln1_w: o.attn_norm,
                qkv_w: o.wq,
                attproj_w: o.wo,
                ln2_w: o.ffn_norm,
                fc_w: o.w_gate,
                fcproj_w: o.w_down,
                ..Default::default()
            })
            .collect();
        ParamTable {
            entries: t.entries.clone(),
            total: t.total,
            wte: t.embed,
            wpe: usize::MAX,
            layers,
            lnf_w: t.norm,
            lnf_b: 0,
            lm_head: t.lm_head,
        }
    }

    pub fn get(&self, name: &str) -> Option<&ParamInfo> {
        self.entries.iter().find(|e| e.name == name)
    }

    /// nanoGPT's init: N(0, 0.02) for weights and embeddings, N(0, 0.02/sqrt(2*n_layer)) for the
    /// residual projections, zero biases, unit LayerNorm weights. Padding rows of wte stay zero.
    /// A Llama gets llama2.c's, the same but for which projections are scaled: its `wo` and
    /// `w3` (Hugging Face's o_proj and up_proj).
    pub fn init(&self, cfg: &GptConfig, seed: u64) -> Vec<f32> {
        let mut data = vec![0.0f32; self.total];
        let mut rng = Rng::new(seed);
        let resid_std = 0.02 / (2.0 * cfg.n_layer as f64).sqrt();
        for e in &self.entries {
            let is_ln = e.name.contains("ln_") || e.name.ends_with("norm.weight");
            let slice = &mut data[e.range()];
            if e.name.ends_with(".bias") {
                continue;
            } else if is_ln {
                slice.fill(1.0);
            } else {
                let scaled = ["c_proj.weight", "o_proj.weight", "up_proj.weight"];
                let std = if scaled.iter().any(|s| e.name.ends_with(s)) {
                    resid_std
                } else {
                    0.02
                };
                let live = if e.name == "wte.weight" {
                    cfg.vocab_size * cfg.n_embd
                } else {
                    slice.len()
                };
                for x in &mut slice[..live] {
                    *x = (rng.normal() * std) as f32;
                }
            }
        }
        data
    }
}
