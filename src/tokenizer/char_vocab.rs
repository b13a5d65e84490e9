//! A character-level vocabulary, as nanoGPT's `shakespeare_char`: the sorted unique characters
//! (Unicode code points) of a text, numbered from 0. Stored as `meta.json`; nanoGPT's `meta.pkl`
//! is read too.

use super::pickle;
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
    /// 'stoi': {str: int}}`.
    pub fn from_meta_pkl(bytes: &[u8], path: &Path) -> Result<CharVocab> {
        let p = path.display();
        let doc = pickle::load(bytes).map_err(|e| {
            anyhow!("{p}: cannot read this pickle ({e}); convert it to meta.json (vocab_size, itos, stoi)")
        })?;
        let top = doc
            .as_dict(doc.root())
            .with_context(|| format!("{p}: the pickle is not a dict"))?;
        let field = |name: &str| {
            top.iter()
                .find(|&&(k, _)| doc.as_str(k) == Some(name))
                .map(|&(_, v)| v)
        };
        let itos_id = field("itos").with_context(|| format!("{p}: missing 'itos'"))?;
        let itos_dict = doc
            .as_dict(itos_id)
            .with_context(|| format!("{p}: 'itos' is not a dict"))?;
        let mut itos = vec![None; itos_dict.len()];
        for &(k, v) in itos_dict {
            let i = doc
                .as_int(k)
                .filter(|&i| i >= 0 && (i as usize) < itos.len())
                .with_context(|| {
                    format!("{p}: 'itos' keys must be the ids 0..{}", itos_dict.len())
                })?;
            let c = doc
                .as_str(v)
                .and_then(single_char)
                .with_context(|| format!("{p}: itos[{i}] is not a one-character string"))?;
            itos[i as usize] = Some(c);
        }
        let itos = itos
            .into_iter()
            .collect::<Option<Vec<char>>>()
            .with_context(|| format!("{p}: 'itos' repeats an id, so some ids have no character"))?;
        let vocab = CharVocab::from_itos(itos).map_err(|e| anyhow!("{p}: bad 'itos': {e}"))?;
        if let Some(v) = field("vocab_size") {
            let n = doc
                .as_int(v)
                .with_context(|| format!("{p}: 'vocab_size' is not an integer"))?;
            vocab.check_size(n.max(0) as usize, path)?;
        }
        if let Some(v) = field("stoi") {
            let stoi = doc
                .as_dict(v)
                .with_context(|| format!("{p}: 'stoi' is not a dict"))?;
            let pairs = stoi.iter().map(|&(k, v)| {
                let id = doc.as_int(v).and_then(|i| u64::try_from(i).ok());
                (doc.as_str(k).unwrap_or(""), id)
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
