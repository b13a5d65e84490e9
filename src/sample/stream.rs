//! The output of `nanogpt sample`: samples streamed to the terminal token by token, and the
//! `--json` records.
//!
//! - Streaming: each sample is printed as nanoGPT prints it: the prompt text, the generated
//!   text, a newline and the `---------------` line. Bytes of a UTF-8 character split across
//!   tokens are held back until the character is complete. Samples decoded in one batch still
//!   print one after another: the first streams live, the others are buffered and follow as soon
//!   as the one before ends. Beam search prints its sequences once the search ends.
//! - A stop string ends the sample's text right after the stop string (both streaming and
//!   `text`), even when the token that completed it carries more characters.

use super::loop_guard::LoopEvent;
use super::sequence::{FinishReason, Generation};
use super::stop::{StopScan, Vocab};
use crate::tokenizer::Tokenizer;
use anyhow::Result;
use serde::Serialize;
use std::io::Write;

/// nanoGPT's separator line between samples.
pub const SEPARATOR: &str = "---------------";
/// A token's bytes; an id the tokenizer lacks (a padded vocabulary slot) prints as U+FFFD
/// rather than ending the run.
fn token_bytes_lossy(tok: &Tokenizer, id: u32) -> Vec<u8> {
    if (id as usize) < tok.vocab_size() {
        if let Ok(b) = tok.token_bytes(id) {
            return b;
        }
    }
    "\u{FFFD}".as_bytes().to_vec()
}

/// One sample as `--json` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct SampleRecord {
    pub sample: usize,
    pub prompt: String,
    pub prompt_ids: Vec<u32>,
    pub generated_ids: Vec<u32>,
    pub text: String,
    /// `length`, `eot`, `stop` or `loop`.
    pub finish_reason: &'static str,
    /// The stop string that ended the sample.
    pub stop: Option<String>,
    /// Beam search: the sequence's score.
    pub score: Option<f32>,
    /// Mean log-probability of the generated tokens under the model.
    pub mean_logprob: Option<f64>,
    /// Where the loop guard fired (absent when it did not).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub loop_guard: Vec<LoopEvent>,
}

/// The bytes of the generated text, cut after the stop string that ended it.
fn generated_bytes(tok: &Tokenizer, g: &Generation, stops: &[String]) -> Vec<u8> {
    let mut bytes: Vec<u8> = g
        .tokens
        .iter()
        .flat_map(|&t| token_bytes_lossy(tok, t))
        .collect();
    if let FinishReason::Stop { index, at_byte } = g.finished_by {
        let end = at_byte + stops.get(index).map_or(0, |s| s.len());
        bytes.truncate(end.min(bytes.len()));
    }
    bytes
}

pub fn record(
    i: usize,
    prompt: &str,
    start: &[u32],
    g: &Generation,
    tok: &Tokenizer,
    stops: &[String],
) -> SampleRecord {
    let (finish_reason, stop) = match &g.finished_by {
        FinishReason::Length => ("length", None),
        FinishReason::Eot => ("eot", None),
        FinishReason::Stop { index, .. } => ("stop", stops.get(*index).cloned()),
        FinishReason::Loop => ("loop", None),
    };
    SampleRecord {
        sample: i,
        prompt: prompt.to_string(),
        prompt_ids: start.to_vec(),
        generated_ids: g.tokens.clone(),
        text: String::from_utf8_lossy(&generated_bytes(tok, g, stops)).into_owned(),
        finish_reason,
        stop,
        score: g.score,
        mean_logprob: super::repetition::mean_logprob(&[g.logprobs.as_slice()]),
        loop_guard: g.loop_events.clone(),
    }
}

/// Incremental UTF-8 decoding of one sample's bytes, cut after a stop string.
#[derive(Default)]
struct TextStream {
    pending: Vec<u8>,
    scan: StopScan,
    done: bool,
}

impl TextStream {
    /// Adds a token's bytes; returns the text that is now complete.
    fn push(&mut self, bytes: &[u8], stops: &[String]) -> String {
        if self.done {
            return String::new();
        }
        let mut take = bytes;
        if !stops.is_empty() {
            let before = self.scan.bytes().len();
            if let Some((index, at)) = self.scan.push(bytes, stops) {
                let end = at + stops[index].len();
                take = &bytes[..end.saturating_sub(before).min(bytes.len())];
                self.done = true;
            }
        }
        self.pending.extend_from_slice(take);
        drain_utf8(&mut self.pending)
    }

    /// The rest (an incomplete character at the very end becomes U+FFFD).
    fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}

/// Takes the longest prefix of `buf` that is complete UTF-8 (invalid bytes become U+FFFD, as
/// `from_utf8_lossy` does) and leaves an incomplete character at the end in `buf`.
fn drain_utf8(buf: &mut Vec<u8>) -> String {
    let mut out = String::new();
    let mut pos = 0;
    while pos < buf.len() {
        match std::str::from_utf8(&buf[pos..]) {
            Ok(s) => {
                out.push_str(s);
                pos = buf.len();
            }
            Err(e) => {
                let valid = e.valid_up_to();
                // The prefix was just checked.
                out.push_str(&String::from_utf8_lossy(&buf[pos..pos + valid]));
                match e.error_len() {
                    Some(n) => {
                        out.push('\u{FFFD}');
                        pos += valid + n;
                    }
                    None => {
                        pos += valid;
                        break;
                    }
                }
            }
        }
    }
    buf.drain(..pos);
    out
}

/// Prints samples one after another while `generate` hands out tokens of a whole batch: the
/// lowest unfinished sample streams live, later ones are buffered until it ends.
///
/// Within a batch, every step emits one token per running sample in increasing sample order, so
/// when sample `s` emits its token number `t` and an earlier sample `c` of the same batch has
/// fewer than `t + 1` tokens, `c` has ended. Batches (of `group` samples) run one after another.
pub struct Streamer<'a> {
    out: &'a mut dyn Write,
    tok: &'a Tokenizer,
    stops: &'a [String],
    prompt: &'a str,
    group: usize,
    cur: usize,
    live: bool,
    counts: Vec<usize>,
    pending: Vec<Vec<u32>>,
    texts: Vec<TextStream>,
    error: Option<anyhow::Error>,
}

impl<'a> Streamer<'a> {
    /// Prints to `out`; samples run in batches of `group`.
    pub fn new(
        out: &'a mut dyn Write,
        tok: &'a Tokenizer,
        stops: &'a [String],
        prompt: &'a str,
        group: usize,
    ) -> Self {
        Streamer {
            out,
            tok,
            stops,
            prompt,
            group,
            cur: 0,
            live: false,
            counts: Vec::new(),
            pending: Vec::new(),
            texts: Vec::new(),
            error: None,
        }
    }

    /// Pushes out what was printed so far (before reporting a failure).
    pub fn flush(&mut self) {
        let _ = self.out.flush();
    }

    /// Token `token` of sample `s`, as `generate` hands it out.
    pub fn token(&mut self, s: usize, token: u32) {
        if self.error.is_none() {
            if let Err(e) = self.token_inner(s, token) {
                self.error = Some(e);
            }
        }
    }

    fn grow(&mut self, n: usize) {
        if self.counts.len() < n {
            self.counts.resize(n, 0);
            self.pending.resize_with(n, Vec::new);
            self.texts.resize_with(n, TextStream::default);
        }
    }

    fn token_inner(&mut self, s: usize, token: u32) -> Result<()> {
        self.grow(s + 1);
        let t = self.counts[s];
        self.counts[s] += 1;
        if s == self.cur {
            return self.emit(token);
        }
        self.pending[s].push(token);
        while self.cur < s && self.ended(self.cur, s, t) {
            self.end_sample()?;
            self.flush_pending()?;
        }
        Ok(())
    }

    fn ended(&self, c: usize, s: usize, t: usize) -> bool {
        c / self.group < s / self.group || self.counts[c] <= t
    }

    fn begin(&mut self) -> Result<()> {
        if !self.live {
            self.out.write_all(self.prompt.as_bytes())?;
            self.live = true;
        }
        Ok(())
    }

    fn emit(&mut self, token: u32) -> Result<()> {
        self.begin()?;
        let bytes = token_bytes_lossy(self.tok, token);
        let text = self.texts[self.cur].push(&bytes, self.stops);
        self.out.write_all(text.as_bytes())?;
        self.out.flush()?;
        Ok(())
    }

    fn flush_pending(&mut self) -> Result<()> {
        self.grow(self.cur + 1);
        self.begin()?;
        for token in std::mem::take(&mut self.pending[self.cur]) {
            self.emit(token)?;
        }
        Ok(())
    }

    fn end_sample(&mut self) -> Result<()> {
        self.grow(self.cur + 1);
        self.begin()?;
        let rest = self.texts[self.cur].finish();
        write!(self.out, "{rest}\n{SEPARATOR}\n")?;
        self.out.flush()?;
        self.cur += 1;
        self.live = false;
        Ok(())
    }

    /// Prints every sample not printed yet, up to `n`.
    pub fn finish(&mut self, n: usize) -> Result<()> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        while self.cur < n {
            self.flush_pending()?;
            self.end_sample()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeding bytes in any split gives `from_utf8_lossy` of the whole.
    #[test]
    fn utf8_split_across_tokens_is_held_back_until_complete() {
        let cases: [&[u8]; 4] = [
            "héllo wörld 😀 ok".as_bytes(),
            b"a\xe2\x82b\xff\xfec",
            b"\xf0\x9f\x98",
            "日本語".as_bytes(),
        ];
        for whole in cases {
            for chunk in 1..=4 {
                let mut t = TextStream::default();
                let mut got = String::new();
                for part in whole.chunks(chunk) {
                    let s = t.push(part, &[]);
                    // Nothing is printed that a later byte could still change.
                    assert!(
                        !s.ends_with('\u{FFFD}')
                            || String::from_utf8_lossy(whole).contains('\u{FFFD}')
                    );
                    got.push_str(&s);
                }
                got.push_str(&t.finish());
                assert_eq!(
                    got,
                    String::from_utf8_lossy(whole),
                    "{whole:?} in chunks of {chunk}"
                );
            }
        }
        let mut t = TextStream::default();
        assert_eq!(t.push(&[0xe6, 0x97], &[]), "");
        assert_eq!(t.push(&[0xa5, b'x'], &[]), "日x");
    }

    #[test]
    fn stop_string_cuts_inside_a_token() {
        let stops = vec!["END".to_string()];
        let mut t = TextStream::default();
        assert_eq!(t.push(b"abc E", &stops), "abc E");
        assert_eq!(t.push(b"ND and more", &stops), "ND");
        assert_eq!(t.push(b"later", &stops), "");
    }
}
