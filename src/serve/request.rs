//! A completions or chat request body, checked field by field: every field maps onto the
//! project's sampling settings ([`SamplingConfig`]), and a field this server does not know is
//! an error naming it (OpenAI's clients send only what the user set, so nothing is lost by
//! refusing what we cannot honour).

use super::chat::ChatTemplate;
use crate::sample::options::dry_breaker_ids;
use crate::sample::{SamplingConfig, DRY_DEFAULT_BREAKERS};
use crate::tokenizer::Tokenizer;
use serde_json::{json, Map, Value};

/// Which route the request came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Completion,
    Chat,
}

/// A checked request.
#[derive(Debug)]
pub struct Request {
    pub kind: Kind,
    /// The start tokens (the end-of-text token for an empty prompt).
    pub prompt: Vec<u32>,
    /// The prompt's text, for `echo`.
    pub prompt_text: String,
    pub cfg: SamplingConfig,
    pub n: usize,
    pub stream: bool,
    pub include_usage: bool,
    /// Log-probabilities: `Some(k)` = with the k most likely alternatives per token.
    pub logprobs: Option<usize>,
    pub echo: bool,
    pub return_tokens: bool,
}

/// The defaults of every sampling field (OpenAI's where it has the field, else "off"), as a
/// request body: `GET /v1/defaults`, and what an absent field means.
pub fn defaults() -> Value {
    json!({
        "max_tokens": 16, "temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0,
        "typical_p": 1.0, "frequency_penalty": 0.0, "presence_penalty": 0.0,
        "repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "dry_multiplier": 0.0,
        "dry_base": 1.75, "dry_allowed_length": 2, "dry_penalty_last_n": -1,
        "dry_sequence_breakers": DRY_DEFAULT_BREAKERS, "stop": [], "seed": null, "n": 1,
        "logprobs": null, "echo": false, "logit_bias": {}, "stream": false, "ignore_eos": false,
    })
}

const COMMON: &[&str] = &[
    "model",
    "user",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "typical_p",
    "frequency_penalty",
    "presence_penalty",
    "repetition_penalty",
    "no_repeat_ngram_size",
    "dry_multiplier",
    "dry_base",
    "dry_allowed_length",
    "dry_penalty_last_n",
    "dry_sequence_breakers",
    "stop",
    "seed",
    "n",
    "logprobs",
    "logit_bias",
    "stream",
    "stream_options",
    "ignore_eos",
    "return_tokens",
];
const COMPLETION_ONLY: &[&str] = &["prompt", "echo"];
const CHAT_ONLY: &[&str] = &["messages", "top_logprobs", "max_completion_tokens"];

/// Most choices one request may ask for.
pub const MAX_N: usize = 16;

/// Reads a request body; `Err` is the message of a 400 error.
pub fn parse(
    body: &[u8],
    kind: Kind,
    tok: &Tokenizer,
    vocab_size: usize,
    block_size: usize,
    template: &ChatTemplate,
) -> Result<Request, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not valid JSON: {e}"))?;
    let Value::Object(obj) = value else {
        return Err("the body must be a JSON object".into());
    };
    let own = if kind == Kind::Chat {
        CHAT_ONLY
    } else {
        COMPLETION_ONLY
    };
    if let Some(k) = obj
        .keys()
        .find(|k| !COMMON.contains(&k.as_str()) && !own.contains(&k.as_str()))
    {
        return Err(format!("unknown field '{k}': this server does not support it (see GET /v1/defaults for the fields it takes)"));
    }
    let f = Fields(&obj);
    let mut cfg = SamplingConfig {
        num_samples: 1,
        max_new_tokens: 16,
        do_sample: true,
        temperature: 1.0,
        top_k: None,
        seed: f.u64("seed")?.unwrap_or_else(random_seed),
        stop_at_eot: !f.bool("ignore_eos")?.unwrap_or(false),
        batch_size: 1,
        ..SamplingConfig::default()
    };
    let max_key = if kind == Kind::Chat && obj.contains_key("max_completion_tokens") {
        "max_completion_tokens"
    } else {
        "max_tokens"
    };
    cfg.max_new_tokens = match obj.get(max_key) {
        None => 16,
        // null: until the context is full.
        Some(Value::Null) => usize::MAX,
        Some(_) => f
            .usize(max_key)?
            .filter(|&m| m >= 1)
            .ok_or(format!("{max_key} must be an integer >= 1"))?,
    };
    if let Some(t) = f.f32("temperature")? {
        cfg.temperature = t;
    }
    cfg.top_k = f.usize("top_k")?.filter(|&k| k > 0);
    cfg.top_p = f.f32("top_p")?.filter(|&p| p != 1.0);
    cfg.min_p = f.f32("min_p")?.filter(|&p| p != 0.0);
    cfg.typical_p = f.f32("typical_p")?.filter(|&p| p != 1.0);
    cfg.frequency_penalty = f.f32("frequency_penalty")?.unwrap_or(0.0);
    cfg.presence_penalty = f.f32("presence_penalty")?.unwrap_or(0.0);
    cfg.repetition_penalty = f.f32("repetition_penalty")?.unwrap_or(1.0);
    cfg.no_repeat_ngram_size = f.usize("no_repeat_ngram_size")?.unwrap_or(0);
    cfg.dry.multiplier = f.f32("dry_multiplier")?.unwrap_or(0.0);
    if let Some(b) = f.f32("dry_base")? {
        cfg.dry.base = b;
    }
    if let Some(a) = f.usize("dry_allowed_length")? {
        cfg.dry.allowed_length = a;
    }
    if let Some(n) = f.i64("dry_penalty_last_n")? {
        // Negative is llama.cpp's "the whole sequence".
        cfg.dry.penalty_last_n = usize::try_from(n).ok();
    }
    if cfg.dry_enabled() {
        let breakers = f
            .strings("dry_sequence_breakers")?
            .unwrap_or_else(|| DRY_DEFAULT_BREAKERS.iter().map(|s| s.to_string()).collect());
        cfg.dry.breakers = dry_breaker_ids(tok, vocab_size, &breakers)
            .map_err(|e| format!("dry_sequence_breakers: {e:#}"))?;
    }
    cfg.stop = match obj.get("stop") {
        Some(Value::String(s)) => vec![s.clone()],
        _ => f.strings("stop")?.unwrap_or_default(),
    };
    if cfg.stop.len() > 4 || cfg.stop.iter().any(String::is_empty) {
        return Err(
            "stop must be a non-empty string or an array of up to 4 non-empty strings".into(),
        );
    }
    if let Some(bias) = obj.get("logit_bias").filter(|v| !v.is_null()) {
        let Value::Object(map) = bias else {
            return Err("logit_bias must be an object of token id -> bias".into());
        };
        for (id, b) in map {
            let id: u32 = id
                .parse()
                .ok()
                .filter(|&i| (i as usize) < vocab_size)
                .ok_or(format!(
                    "logit_bias: '{id}' is not a token id below {vocab_size}"
                ))?;
            let b = b
                .as_f64()
                .filter(|b| (-100.0..=100.0).contains(b))
                .ok_or(format!(
                    "logit_bias of token {id} must be a number in [-100, 100]"
                ))?;
            cfg.sequence_bias.push((vec![id], b as f32));
        }
    }
    let n = f.usize("n")?.unwrap_or(1);
    if !(1..=MAX_N).contains(&n) {
        return Err(format!("n must be between 1 and {MAX_N}, got {n}"));
    }
    let logprobs = match kind {
        Kind::Completion => match obj.get("logprobs") {
            None | Some(Value::Null) => None,
            _ => Some(
                f.usize("logprobs")?
                    .filter(|&k| k <= 20)
                    .ok_or("logprobs must be an integer from 0 to 20")?,
            ),
        },
        Kind::Chat => {
            let top = f.usize("top_logprobs")?;
            if top.is_some_and(|k| k > 20) {
                return Err("top_logprobs must be an integer from 0 to 20".into());
            }
            match f.bool("logprobs")? {
                Some(true) => Some(top.unwrap_or(0)),
                _ if top.is_some() => return Err("top_logprobs needs logprobs: true".into()),
                _ => None,
            }
        }
    };
    let echo = f.bool("echo")?.unwrap_or(false);
    if echo && logprobs.is_some() {
        return Err("echo with logprobs is not supported (the prompt's log-probabilities are not computed): drop one of them".into());
    }
    let stream = f.bool("stream")?.unwrap_or(false);
    let include_usage = match obj.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(o)) => {
            if let Some(k) = o.keys().find(|k| *k != "include_usage") {
                return Err(format!("unknown field 'stream_options.{k}'"));
            }
            Fields(o).bool("include_usage")?.unwrap_or(false)
        }
        Some(_) => return Err("stream_options must be an object".into()),
    };
    if include_usage && !stream {
        return Err("stream_options is only allowed with stream: true".into());
    }
    let (prompt_text, prompt) = match kind {
        Kind::Completion => completion_prompt(obj.get("prompt"), tok, vocab_size)?,
        Kind::Chat => {
            let (text, stop) = template.render(obj.get("messages"))?;
            cfg.stop.extend(stop);
            let ids = tok.encode(&text).map_err(|e| format!("messages: {e:#}"))?;
            (text, ids)
        }
    };
    let prompt = if prompt.is_empty() {
        match tok.eot() {
            Some(eot) => vec![eot],
            None => return Err("the prompt is empty and this vocabulary has no end-of-text token to start from: give at least one character".into()),
        }
    } else {
        prompt
    };
    if prompt.len() > block_size {
        return Err(format!(
            "the prompt is {} tokens, longer than the model's context of {block_size}: shorten it",
            prompt.len()
        ));
    }
    cfg.validate().map_err(|e| format!("{e:#}"))?;
    Ok(Request {
        kind,
        prompt,
        prompt_text,
        cfg,
        n,
        stream,
        include_usage,
        logprobs,
        echo,
        return_tokens: f.bool("return_tokens")?.unwrap_or(false),
    })
}

/// The prompt of a completion: a string, or an array of token ids.
fn completion_prompt(
    v: Option<&Value>,
    tok: &Tokenizer,
    vocab_size: usize,
) -> Result<(String, Vec<u32>), String> {
    match v {
        None | Some(Value::Null) => Ok((String::new(), Vec::new())),
        Some(Value::String(s)) => {
            let ids = tok.encode(s).map_err(|e| format!("prompt: {e:#}"))?;
            Ok((s.clone(), ids))
        }
        Some(Value::Array(items)) if items.iter().all(Value::is_u64) => {
            let ids: Vec<u32> = items
                .iter()
                .filter_map(Value::as_u64)
                .map(|id| u32::try_from(id).ok().filter(|&i| (i as usize) < vocab_size))
                .collect::<Option<_>>()
                .ok_or(format!("prompt: token ids must be below the vocabulary size {vocab_size}"))?;
            let text = tok.decode(&ids).map_err(|e| format!("prompt: {e:#}"))?;
            Ok((text, ids))
        }
        Some(Value::Array(_)) => Err("prompt: several prompts in one request are not supported; send one request per prompt (a string or an array of token ids)".into()),
        Some(_) => Err("prompt must be a string or an array of token ids".into()),
    }
}

fn random_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    crate::rng::mix64(t ^ std::process::id() as u64)
}

/// Typed reads of a request's fields; a present field of the wrong type is an error naming it.
struct Fields<'a>(&'a Map<String, Value>);

impl Fields<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }

    fn f32(&self, key: &str) -> Result<Option<f32>, String> {
        self.get(key)
            .map(|v| {
                v.as_f64()
                    .map(|x| x as f32)
                    .ok_or(format!("{key} must be a number"))
            })
            .transpose()
    }

    fn i64(&self, key: &str) -> Result<Option<i64>, String> {
        self.get(key)
            .map(|v| v.as_i64().ok_or(format!("{key} must be an integer")))
            .transpose()
    }

    fn u64(&self, key: &str) -> Result<Option<u64>, String> {
        self.get(key)
            .map(|v| {
                v.as_u64()
                    .or_else(|| v.as_i64().map(|i| i as u64))
                    .ok_or(format!("{key} must be an integer"))
            })
            .transpose()
    }

    fn usize(&self, key: &str) -> Result<Option<usize>, String> {
        self.get(key)
            .map(|v| {
                v.as_u64()
                    .map(|x| x as usize)
                    .ok_or(format!("{key} must be a non-negative integer"))
            })
            .transpose()
    }

    fn bool(&self, key: &str) -> Result<Option<bool>, String> {
        self.get(key)
            .map(|v| v.as_bool().ok_or(format!("{key} must be true or false")))
            .transpose()
    }

    fn strings(&self, key: &str) -> Result<Option<Vec<String>>, String> {
        self.get(key)
            .map(|v| {
                v.as_array()
                    .and_then(|a| a.iter().map(|s| s.as_str().map(String::from)).collect())
                    .ok_or(format!("{key} must be an array of strings"))
            })
            .transpose()
    }
}
