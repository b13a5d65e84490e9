//! llama2.c's model files, read into the canonical form ([`Llama`]) and written from it.
//!
//! The format is told from the header: a file starting with the magic "ak42" (u32 0x616b3432)
//! is version 1 (f32) or 2 (Q8_0) with a 256-byte header; any other is the legacy version 0
//! (what run.c reads), a 7 x i32 header (a negative vocab_size means an unshared classifier),
//! so a v0 file is accepted only when its size is exactly what that header implies.
//!
//! Version 2 is dequantized at load (w = q * scale per group, in f32, as runq.c's `dequantize`)
//! and its group size kept in [`Llama2cFormat::V2`], so there is one canonical form. Int8
//! inference (`engine::InferenceWeights::Q8`, what `sample --sampler=run_c` uses on a v2 file)
//! quantizes those weights again, which gives back the file's int8 values and scales
//! (`tests/llama_q8.rs`), and computes as runq.c does.
//!
//! llama2.c stacks each kind of tensor over the layers and turns RoPE pairs (2j, 2j+1) of each
//! head where Hugging Face turns (j, j + head_dim/2); [`permute_rope_rows`] converts q and k.

use super::config::{LlamaConfig, LLAMA2C_NORM_EPS, LLAMA2C_ROPE_THETA};
use super::weights::Llama;
use crate::atomic_file::write_atomic_with;
use crate::model::weights::f32_le_bytes;
use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::Path;

/// "ak42" read as a little-endian u32.
const MAGIC: u32 = 0x616b_3432;
/// Versions 1 and 2: the header is padded with zeros to this many bytes.
const HEADER_BYTES: usize = 256;
/// Version 0: dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len.
const V0_HEADER_BYTES: usize = 7 * 4;

/// Which llama2.c file a model came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Llama2cFormat {
    /// Legacy, what run.c reads: f32, with RoPE's frequency tables (skipped when reading).
    V0,
    /// f32, no frequency tables.
    V1,
    /// Q8_0 (what runq.c reads): int8 values with one f32 scale per `group_size` consecutive
    /// values; dequantized at load.
    V2 { group_size: usize },
}

/// One kind of llama2.c tensor; the per-layer kinds are stored stacked over the layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    TokenEmbedding,
    RmsAtt,
    Wq,
    Wk,
    Wv,
    Wo,
    RmsFfn,
    W1,
    W2,
    W3,
    RmsFinal,
    FreqCisReal,
    FreqCisImag,
    Wcls,
}

use Part::*;

/// The tensors in file order; `Wcls` follows when the classifier is not shared.
const V0_ORDER: [Part; 13] = [
    TokenEmbedding,
    RmsAtt,
    Wq,
    Wk,
    Wv,
    Wo,
    RmsFfn,
    W1,
    W2,
    W3,
    RmsFinal,
    FreqCisReal,
    FreqCisImag,
];
const V1_ORDER: [Part; 11] = [
    RmsAtt,
    RmsFfn,
    RmsFinal,
    TokenEmbedding,
    Wq,
    Wk,
    Wv,
    Wo,
    W1,
    W2,
    W3,
];
/// Version 2 stores the norms in f32 first, then each other tensor (one layer at a time)
/// quantized.
const V2_F32: [Part; 3] = [RmsAtt, RmsFfn, RmsFinal];
const V2_Q8: [Part; 8] = [TokenEmbedding, Wq, Wk, Wv, Wo, W1, W2, W3];

impl Part {
    /// (copies, values per copy): one copy per layer for the stacked kinds.
    fn shape(self, c: &LlamaConfig) -> (usize, usize) {
        let (d, hd, l) = (c.dim, c.hidden_dim, c.n_layers);
        match self {
            TokenEmbedding | Wcls => (1, c.vocab_size * d),
            RmsAtt | RmsFfn => (l, d),
            Wq | Wo => (l, d * d),
            Wk | Wv => (l, c.kv_dim() * d),
            W1 | W2 | W3 => (l, hd * d),
            RmsFinal => (1, d),
            FreqCisReal | FreqCisImag => (1, c.seq_len * c.head_dim() / 2),
        }
    }

    /// Where copy `layer` lives in the canonical buffer; `None` for the frequency tables, which
    /// follow from the config.
    fn offset(self, m: &Llama, layer: usize) -> Option<usize> {
        let t = &m.table;
        let at = t.layers.get(layer);
        Some(match self {
            TokenEmbedding => t.embed,
            Wcls => t.lm_head,
            RmsFinal => t.norm,
            RmsAtt => at?.attn_norm,
            Wq => at?.wq,
            Wk => at?.wk,
            Wv => at?.wv,
            Wo => at?.wo,
            RmsFfn => at?.ffn_norm,
            W1 => at?.w_gate,
            W2 => at?.w_down,
            W3 => at?.w_up,
            FreqCisReal | FreqCisImag => return None,
        })
    }

    /// The number of heads whose rows llama2.c orders for interleaved RoPE (q and k only).
    fn rope_heads(self, c: &LlamaConfig) -> Option<usize> {
        match self {
            Wq => Some(c.n_heads),
            Wk => Some(c.n_kv_heads),
            _ => None,
        }
    }
}

/// Which way [`permute_rope_rows`] goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RopeLayout {
    HuggingFace,
    Llama2c,
}

/// Reorders the rows of a q or k projection (`heads` heads of `head_dim` rows, each row `cols`
/// values) into the layout `to`. The only place the two RoPE conventions meet: Hugging Face
/// turns rows (j, j + head_dim/2) of a head together, llama2.c rows (2j, 2j + 1), so
///   llama2c[h*head_dim + 2j + t] = hf[h*head_dim + t*head_dim/2 + j]   (t = 0, 1; j < head_dim/2)
/// (export.py's `permute_reverse`; `to == HuggingFace` is its inverse, `permute_original`).
fn permute_rope_rows(
    src: &[f32],
    dst: &mut [f32],
    heads: usize,
    head_dim: usize,
    cols: usize,
    to: RopeLayout,
) {
    let half = head_dim / 2;
    for h in 0..heads {
        for j in 0..half {
            for t in 0..2 {
                let l2c = (h * head_dim + 2 * j + t) * cols;
                let hf = (h * head_dim + t * half + j) * cols;
                let (from, into) = match to {
                    RopeLayout::Llama2c => (hf, l2c),
                    RopeLayout::HuggingFace => (l2c, hf),
                };
                dst[into..into + cols].copy_from_slice(&src[from..from + cols]);
            }
        }
    }
}

/// Places copy `layer` of `part` (values in llama2.c's layout) into the canonical buffer.
fn place(m: &mut Llama, part: Part, layer: usize, values: &[f32]) {
    let Some(offset) = part.offset(m, layer) else {
        return;
    };
    let dst = &mut m.params[offset..offset + values.len()];
    match part.rope_heads(&m.config) {
        Some(heads) => {
            let (hd, cols) = (m.config.head_dim(), m.config.dim);
            permute_rope_rows(values, dst, heads, hd, cols, RopeLayout::HuggingFace);
        }
        None => dst.copy_from_slice(values),
    }
}

/// Copy `layer` of `part` in llama2.c's layout.
fn extract(m: &Llama, part: Part, layer: usize) -> Vec<f32> {
    let (_, len) = part.shape(&m.config);
    let Some(offset) = part.offset(m, layer) else {
        return Vec::new();
    };
    let src = &m.params[offset..offset + len];
    match part.rope_heads(&m.config) {
        Some(heads) => {
            let mut out = vec![0.0; len];
            let (hd, cols) = (m.config.head_dim(), m.config.dim);
            permute_rope_rows(src, &mut out, heads, hd, cols, RopeLayout::Llama2c);
            out
        }
        None => src.to_vec(),
    }
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn le_i32(bytes: &[u8], at: usize) -> i32 {
    i32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Reads any llama2.c model file (v0, v1 or v2, told from the header).
pub fn read_llama2c(path: &Path) -> Result<(Llama, Llama2cFormat)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let p = path.display();
    if bytes.len() < V0_HEADER_BYTES {
        bail!(
            "{p}: only {} bytes; a llama2.c model file starts with a header of at least {V0_HEADER_BYTES} (truncated?)",
            bytes.len()
        );
    }
    if le_i32(&bytes, 0) as u32 != MAGIC {
        return read_v0(&bytes, path).map(|m| (m, Llama2cFormat::V0));
    }
    if bytes.len() < HEADER_BYTES {
        bail!(
            "{p}: only {} bytes, shorter than llama2.c's {HEADER_BYTES}-byte v1/v2 header (truncated?)",
            bytes.len()
        );
    }
    let shared = match bytes[36] {
        0 => false,
        1 => true,
        x => bail!("{p}: shared_classifier byte is {x}, not 0 or 1; the header is corrupt"),
    };
    let cfg = header_config(&bytes[8..36], shared).with_context(|| p.to_string())?;
    match le_i32(&bytes, 4) {
        1 => {
            let order = with_classifier(&V1_ORDER, shared);
            expect_size(bytes.len(), HEADER_BYTES, f32_bytes(&cfg, &order))
                .with_context(|| p.to_string())?;
            let mut m = Llama::zeros_for_file(cfg, path, 4.0, bytes.len())?;
            fill_f32(&mut m, &order, &bytes[HEADER_BYTES..]);
            Ok((m, Llama2cFormat::V1))
        }
        2 => {
            let group = le_i32(&bytes, 37);
            if group <= 0 {
                bail!("{p}: Q8_0 group size {group} in the header; it must be positive");
            }
            let group = group as usize;
            let q8 = with_classifier(&V2_Q8, shared);
            let q8_bytes = q8_bytes(&cfg, &q8, group).with_context(|| format!("{p}"))?;
            expect_size(bytes.len(), HEADER_BYTES, f32_bytes(&cfg, &V2_F32) + q8_bytes)
                .with_context(|| p.to_string())?;
            let mut m = Llama::zeros_for_file(cfg, path, 1.0, bytes.len())?;
            let rest = fill_f32(&mut m, &V2_F32, &bytes[HEADER_BYTES..]);
            fill_q8(&mut m, &q8, group, rest);
            Ok((m, Llama2cFormat::V2 { group_size: group }))
        }
        v => bail!(
            "{p}: llama2.c file version {v} is not supported (only 0, the legacy format without magic, 1 and 2)"
        ),
    }
}

fn read_v0(bytes: &[u8], path: &Path) -> Result<Llama> {
    let vocab = le_i32(bytes, 20);
    // llama2.c's legacy export marks an unshared classifier by a negative vocab_size.
    let shared = vocab > 0;
    let mut header = bytes[..V0_HEADER_BYTES].to_vec();
    header[20..24].copy_from_slice(&vocab.unsigned_abs().to_le_bytes());
    // Without the magic, the header is only told from noise by being consistent.
    let as_v0 = || {
        format!(
            "{}: no \"ak42\" magic (versions 1, 2), so read as a legacy v0 file with header {:?}",
            path.display(),
            (0..7).map(|i| le_i32(bytes, 4 * i)).collect::<Vec<_>>()
        )
    };
    let cfg = header_config(&header, shared).with_context(as_v0)?;
    let order = with_classifier(&V0_ORDER, shared);
    expect_size(bytes.len(), V0_HEADER_BYTES, f32_bytes(&cfg, &order)).with_context(as_v0)?;
    let mut m = Llama::zeros_for_file(cfg, path, 4.0, bytes.len())?;
    fill_f32(&mut m, &order, &bytes[V0_HEADER_BYTES..]);
    Ok(m)
}

/// The config of the 7 header integers (dim .. seq_len), each of which must be positive.
fn header_config(h: &[u8], shared: bool) -> Result<LlamaConfig> {
    const NAMES: [&str; 7] = [
        "dim",
        "hidden_dim",
        "n_layers",
        "n_heads",
        "n_kv_heads",
        "vocab_size",
        "seq_len",
    ];
    let mut v = [0usize; 7];
    for (i, name) in NAMES.iter().enumerate() {
        let x = le_i32(h, 4 * i);
        if x <= 0 {
            bail!("header says {name} {x}; it must be positive (corrupt or not a llama2.c file)");
        }
        v[i] = x as usize;
    }
    let cfg = LlamaConfig {
        dim: v[0],
        hidden_dim: v[1],
        n_layers: v[2],
        n_heads: v[3],
        n_kv_heads: v[4],
        vocab_size: v[5],
        seq_len: v[6],
        norm_eps: LLAMA2C_NORM_EPS,
        rope_theta: LLAMA2C_ROPE_THETA,
        shared_classifier: shared,
    };
    cfg.validate().context("bad model shape in the header")?;
    Ok(cfg)
}

fn with_classifier(order: &[Part], shared: bool) -> Vec<Part> {
    let mut out = order.to_vec();
    if !shared {
        out.push(Wcls);
    }
    out
}

/// Bytes that `order` takes in f32. Header fields are i32, so no product of three of them
/// overflows u128.
fn f32_bytes(cfg: &LlamaConfig, order: &[Part]) -> u128 {
    order
        .iter()
        .map(|p| {
            let (n, len) = p.shape(cfg);
            4 * n as u128 * len as u128
        })
        .sum()
}

/// Bytes that `order` takes in Q8_0: the int8 values, then one f32 scale per group.
fn q8_bytes(cfg: &LlamaConfig, order: &[Part], group: usize) -> Result<u128> {
    let mut total = 0u128;
    for p in order {
        let (n, len) = p.shape(cfg);
        if !len.is_multiple_of(group) {
            bail!(
                "{p:?} has {len} values per layer, not a multiple of the Q8_0 group size {group}; \
                 the header's sizes do not add up"
            );
        }
        total += n as u128 * (len as u128 + 4 * (len / group) as u128);
    }
    Ok(total)
}

fn expect_size(len: usize, header: usize, body: u128) -> Result<()> {
    let want = header as u128 + body;
    if len as u128 != want {
        bail!(
            "{len} bytes, but its header describes a model of {want} bytes ({}); \
             the file is truncated or not this format",
            if (len as u128) < want {
                "too short"
            } else {
                "too long"
            }
        );
    }
    Ok(())
}

/// Reads `order`'s f32 tensors from the front of `body` (its size checked beforehand); returns
/// the rest.
fn fill_f32<'a>(m: &mut Llama, order: &[Part], mut body: &'a [u8]) -> &'a [u8] {
    for &part in order {
        let (copies, len) = part.shape(&m.config);
        for layer in 0..copies {
            let (now, rest) = body.split_at(4 * len);
            place(m, part, layer, &f32s(now));
            body = rest;
        }
    }
    body
}

/// Reads `order`'s Q8_0 tensors from `body`, each copy as its int8 values then its scales,
/// and dequantizes them: w = q * scale in f32, as runq.c's `dequantize`.
fn fill_q8(m: &mut Llama, order: &[Part], group: usize, mut body: &[u8]) {
    for &part in order {
        let (copies, len) = part.shape(&m.config);
        for layer in 0..copies {
            let (q, rest) = body.split_at(len);
            let (scales, rest) = rest.split_at(4 * (len / group));
            let scales = f32s(scales);
            let values: Vec<f32> = q
                .iter()
                .enumerate()
                .map(|(i, &q)| q as i8 as f32 * scales[i / group])
                .collect();
            place(m, part, layer, &values);
            body = rest;
        }
    }
}

/// Writes `m` as a llama2.c version 1 file (`ak42` header; `export.py`'s `version1_export`).
pub fn write_llama2c_v1(m: &Llama, path: &Path) -> Result<()> {
    write_llama2c(m, path, Llama2cFormat::V1)
}

/// Writes `m` as llama2.c's legacy version 0 file, the one its `run.c` reads (`export.py`'s
/// `legacy_export`: a 7-int header whose vocab_size is negative for a classifier of its own,
/// then the stacked tensors and RoPE's cos/sin tables, which run.c skips).
pub fn write_llama2c_v0(m: &Llama, path: &Path) -> Result<()> {
    write_llama2c(m, path, Llama2cFormat::V0)
}

/// Writes version 0 or 1 (f32 both); version 2 (Q8_0) is not written.
fn write_llama2c(m: &Llama, path: &Path, format: Llama2cFormat) -> Result<()> {
    let c = &m.config;
    let p = path.display();
    if c.norm_eps != LLAMA2C_NORM_EPS || c.rope_theta != LLAMA2C_ROPE_THETA {
        bail!(
            "{p}: a llama2.c file cannot record norm_eps {} or rope_theta {} (run.c has {LLAMA2C_NORM_EPS} \
             and {LLAMA2C_ROPE_THETA} built in); export to Hugging Face instead",
            c.norm_eps,
            c.rope_theta
        );
    }
    let vocab = i64::try_from(c.vocab_size).unwrap_or(i64::MAX);
    let fields = [
        c.dim as i64,
        c.hidden_dim as i64,
        c.n_layers as i64,
        c.n_heads as i64,
        c.n_kv_heads as i64,
        match (format, c.shared_classifier) {
            (Llama2cFormat::V0, false) => -vocab,
            _ => vocab,
        },
        c.seq_len as i64,
    ];
    let mut header = Vec::with_capacity(HEADER_BYTES);
    let order = match format {
        Llama2cFormat::V0 => with_classifier(&V0_ORDER, c.shared_classifier),
        Llama2cFormat::V1 => {
            header.extend(MAGIC.to_le_bytes());
            header.extend(1i32.to_le_bytes());
            with_classifier(&V1_ORDER, c.shared_classifier)
        }
        Llama2cFormat::V2 { .. } => {
            bail!("{p}: writing llama2.c's Q8_0 version 2 is not supported; write version 1")
        }
    };
    for f in fields {
        let f = i32::try_from(f)
            .with_context(|| format!("{p}: size {f} does not fit llama2.c's i32 header"))?;
        header.extend(f.to_le_bytes());
    }
    if format == Llama2cFormat::V1 {
        header.push(c.shared_classifier as u8);
        header.resize(HEADER_BYTES, 0);
    }
    write_atomic_with(path, |w| {
        w.write_all(&header)?;
        for &part in &order {
            for layer in 0..part.shape(c).0 {
                let values = match part {
                    FreqCisReal | FreqCisImag => rope_table(c, part == FreqCisImag),
                    _ => extract(m, part, layer),
                };
                w.write_all(f32_le_bytes(&values))?;
            }
        }
        Ok(())
    })
}

/// Version 0's RoPE tables, (seq_len, head_dim / 2): cos (or sin) of pos * theta^(-2j/hd).
fn rope_table(c: &LlamaConfig, sin: bool) -> Vec<f32> {
    let (hd, theta) = (c.head_dim(), c.rope_theta as f64);
    (0..c.seq_len)
        .flat_map(|pos| {
            (0..hd / 2).map(move |j| {
                let angle = pos as f64 * theta.powf(-((2 * j) as f64) / hd as f64);
                (if sin { angle.sin() } else { angle.cos() }) as f32
            })
        })
        .collect()
}
