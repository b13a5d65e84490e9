//! A character-level vocabulary, as nanoGPT's `shakespeare_char`: the sorted unique characters
//! (Unicode code points) of a text, numbered from 0. Stored as `meta.json`; nanoGPT's `meta.pkl`
//! is read too.

use anyhow::{anyhow, bail, Context, Result};
use std::collections::HashMap;
use std::path::Path;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CharVocab {
    itos: Vec<char>,
    stoi: HashMap<char, u32>,
}

impl CharVocab {
    /// The sorted unique characters of `text` (Python's `sorted(set(text))`).
    pub fn from_text(text: &str) -> CharVocab {
        let mut chars: Vec<char> = text.chars().collect();
        chars.sort_unstable();
        chars.dedup();
        let stoi = chars
            .iter()
            .enumerate()
            .map(|(i, &c)| (c, i as u32))
            .collect();
        CharVocab { itos: chars, stoi }
    }

    /// A vocabulary from its id -> character table; characters must be unique.
    pub fn from_itos(itos: Vec<char>) -> Result<CharVocab> {
        let mut stoi = HashMap::with_capacity(itos.len());
        for (i, &c) in itos.iter().enumerate() {
            if let Some(prev) = stoi.insert(c, i as u32) {
                bail!("character {c:?} appears twice in the vocabulary (ids {prev} and {i})");
            }
        }
        Ok(CharVocab { itos, stoi })
    }

    pub fn vocab_size(&self) -> usize {
        self.itos.len()
    }

    /// The characters in id order.
    pub fn chars(&self) -> &[char] {
        &self.itos
    }

    pub fn id_of(&self, c: char) -> Option<u32> {
        self.stoi.get(&c).copied()
    }

    /// Ids of `text`; a character outside the vocabulary is an error naming it.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        text.chars()
            .enumerate()
            .map(|(pos, c)| {
                self.id_of(c).with_context(|| {
                    format!(
                        "character {c:?} (U+{:04X}) at position {pos} is not in this \
                         {}-character vocabulary; use only characters of the training text",
                        c as u32,
                        self.itos.len()
                    )
                })
            })
            .collect()
    }

    /// Text of `ids`; an id outside the vocabulary is an error.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        ids.iter()
            .map(|&id| {
                self.itos.get(id as usize).copied().with_context(|| {
                    format!(
                        "token id {id} is not in this {}-character vocabulary",
                        self.itos.len()
                    )
                })
            })
            .collect()
    }

    /// `{"vocab_size": n, "itos": ["a", ...], "stoi": {"a": 0, ...}}`, pretty-printed.
    pub fn to_meta_json(&self) -> String {
        let itos: Vec<String> = self.itos.iter().map(|c| c.to_string()).collect();
        let stoi: serde_json::Map<String, serde_json::Value> = self
            .itos
            .iter()
            .enumerate()
            .map(|(i, c)| (c.to_string(), serde_json::Value::from(i)))
            .collect();
        let json = serde_json::json!({
            "vocab_size": self.itos.len(),
            "itos": itos,
            "stoi": stoi,
        });
        serde_json::to_string_pretty(&json).unwrap_or_default() + "\n"
    }

    /// Parses `meta.json` text; `path` only names the file in errors.
    pub fn from_meta_json(text: &str, path: &Path) -> Result<CharVocab> {
        let p = path.display();
        let json: serde_json::Value =
            serde_json::from_str(text).with_context(|| format!("{p} is not valid JSON"))?;
        let itos = json
            .get("itos")
            .and_then(|v| v.as_array())
            .with_context(|| format!("{p}: missing \"itos\" (a list of one-character strings)"))?;
        let itos = itos
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str()
                    .and_then(single_char)
                    .with_context(|| format!("{p}: itos[{i}] is not a one-character string"))
            })
            .collect::<Result<Vec<char>>>()?;
        let vocab = CharVocab::from_itos(itos).map_err(|e| anyhow!("{p}: bad \"itos\": {e}"))?;
        if let Some(v) = json.get("vocab_size") {
            let n = v
                .as_u64()
                .with_context(|| format!("{p}: \"vocab_size\" is not an integer"))?;
            vocab.check_size(n as usize, path)?;
        }
        if let Some(stoi) = json.get("stoi") {
            let stoi = stoi
                .as_object()
                .with_context(|| format!("{p}: \"stoi\" is not an object"))?;
            let pairs = stoi.iter().map(|(k, v)| (k.as_str(), v.as_u64()));
            vocab.check_stoi(pairs, stoi.len(), path)?;
        }
        Ok(vocab)
    }

    /// Reads nanoGPT's `meta.pkl`: a pickled dict `{'vocab_size': int, 'itos': {int: str},
    /// 'stoi': {str: int}}`. `serde-pickle` only builds data: a pickle that names Python code
    /// (a global such as `os.system`, which REDUCE would call in Python) is refused, never run.
    pub fn from_meta_pkl(bytes: &[u8], path: &Path) -> Result<CharVocab> {
        use serde_pickle::{DeOptions, Error, ErrorCode, HashableValue as Key, Value};
        let p = path.display();
        let doc = serde_pickle::value_from_slice(bytes, DeOptions::new()).map_err(|e| {
            let why = match e {
                Error::Eval(ErrorCode::EOFWhileParsing, at) => {
                    format!("the pickle is truncated at byte {at}")
                }
                Error::Syntax(ErrorCode::UnresolvedGlobal) => {
                    "it names a Python global, code that is refused, not run".into()
                }
                e => e.to_string(),
            };
            anyhow!("{p}: cannot read this pickle ({why}); convert it to meta.json (vocab_size, itos, stoi)")
        })?;
        let Value::Dict(mut top) = doc else {
            bail!("{p}: the pickle is not a dict");
        };
        let mut field = |name: &str| top.remove(&Key::String(name.into()));
        let (itos, vocab_size, stoi) = (field("itos"), field("vocab_size"), field("stoi"));
        let Some(Value::Dict(itos_dict)) = itos else {
            bail!("{p}: 'itos' is missing or not a dict");
        };
        // The keys come sorted, so the ids 0..n are each there once exactly when key i is i.
        let n = itos_dict.len();
        let mut itos = Vec::with_capacity(n);
        for (i, (k, v)) in itos_dict.into_iter().enumerate() {
            if !matches!(k, Key::I64(id) if id == i as i64) {
                bail!("{p}: 'itos' keys must be the ids 0..{n}");
            }
            let c = match &v {
                Value::String(s) => single_char(s),
                _ => None,
            };
            itos.push(c.with_context(|| format!("{p}: itos[{i}] is not a one-character string"))?);
        }
        let vocab = CharVocab::from_itos(itos).map_err(|e| anyhow!("{p}: bad 'itos': {e}"))?;
        if let Some(v) = vocab_size {
            let Value::I64(n) = v else {
                bail!("{p}: 'vocab_size' is not an integer");
            };
            vocab.check_size(n.max(0) as usize, path)?;
        }
        if let Some(v) = stoi {
            let Value::Dict(stoi) = v else {
                bail!("{p}: 'stoi' is not a dict");
            };
            let pairs = stoi.iter().map(|(k, v)| {
                let id = match v {
                    Value::I64(i) => u64::try_from(*i).ok(),
                    _ => None,
                };
                let key = match k {
                    Key::String(s) => s.as_str(),
                    _ => "",
                };
                (key, id)
            });
            vocab.check_stoi(pairs, stoi.len(), path)?;
        }
        Ok(vocab)
    }

    /// Reads `meta.json`, or nanoGPT's `meta.pkl` when the name ends in `.pkl`.
    pub fn load(path: &Path) -> Result<CharVocab> {
        let bytes = std::fs::read(path).map_err(|e| {
            anyhow!(
                "cannot read {}: {e} (prepare the character-level dataset first)",
                path.display()
            )
        })?;
        if path.extension().is_some_and(|e| e == "pkl") {
            return Self::from_meta_pkl(&bytes, path);
        }
        let text = std::str::from_utf8(&bytes)
            .with_context(|| format!("{} is not UTF-8 text", path.display()))?;
        Self::from_meta_json(text, path)
    }

    fn check_size(&self, n: usize, path: &Path) -> Result<()> {
        if n != self.itos.len() {
            bail!(
                "{}: vocab_size is {n} but itos has {} characters",
                path.display(),
                self.itos.len()
            );
        }
        Ok(())
    }

    fn check_stoi<'a>(
        &self,
        pairs: impl Iterator<Item = (&'a str, Option<u64>)>,
        len: usize,
        path: &Path,
    ) -> Result<()> {
        let p = path.display();
        if len != self.itos.len() {
            bail!(
                "{p}: stoi has {len} entries but itos has {}",
                self.itos.len()
            );
        }
        for (s, id) in pairs {
            let ok = match (single_char(s), id) {
                (Some(c), Some(id)) => self.id_of(c) == Some(id as u32) && id <= u32::MAX as u64,
                _ => false,
            };
            if !ok {
                bail!("{p}: stoi[{s:?}] = {id:?} does not match itos");
            }
        }
        Ok(())
    }
}

/// The only character of `s`, if it has exactly one.
fn single_char(s: &str) -> Option<char> {
    let mut it = s.chars();
    match (it.next(), it.next()) {
        (Some(c), None) => Some(c),
        _ => None,
    }
}
