//! The loop guard: watches each sample's generated tokens for a loop as it forms and either ends
//! the sample or backtracks out of the loop.
//!
//! A loop is a span of `n` tokens (`min_span <= n <= max_span`) repeated `repeats` times back to
//! back at the end of the generated tokens (the prompt is never looked at, so a loop is always
//! something the sampler produced and can undo). The check runs after every token, so a loop is
//! caught the moment its last copy completes; the shortest qualifying span is reported. A loop
//! of a single token is caught as a span of 2 (`x x x x x x` is `x x` three times), which is why
//! the default shortest span is 2: three equal tokens in a row (`...`, blank lines) are often
//! fine text, six are not.
//!
//! Where a loop *begins* is the start of its first copy. Actions:
//! - `stop`: the sample ends with [`super::FinishReason::Loop`]; its tokens are kept (as a stop
//!   string is), and the event's `position` says where to cut off the loop.
//! - `backtrack`: the generated tokens (and the sample's KV cache row) go back to where the loop
//!   began, the token that started the loop is banned at that position, and decoding continues:
//!   the whole repeated fragment is deleted and the sample takes its next-best way. Rewinding
//!   only to the second copy leaves the model in the state that entered the loop, and on
//!   tiny-gpt2 it walks back in (2 of 6 greedy samples still ended in a loop, against none).
//!   Bans at later positions are forgotten when rewinding past them (the text there is gone).
//!   Banning one token is not enough either: the model re-enters the same loop a token later,
//!   in another phase. So a span that looped may not be generated twice back to back again,
//!   in any rotation, for the rest of the sample. After `max_backtracks` backtracks the next
//!   loop stops the sample instead, so a sample that keeps looping ends.
//!
//! Tokens a backtrack deletes never reach the streaming callback: with `backtrack`, tokens are
//! handed out when their batch is done.

use crate::config::knobs::Knob;
use serde::Serialize;

/// What the guard does when a loop forms (`--loop_guard`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoopGuardMode {
    Off,
    Stop,
    Backtrack,
}

impl Knob for LoopGuardMode {
    fn set_text(&mut self, text: &str) -> Result<(), String> {
        *self = match text.trim() {
            "off" | "false" | "0" => LoopGuardMode::Off,
            "stop" => LoopGuardMode::Stop,
            "backtrack" => LoopGuardMode::Backtrack,
            _ => return Err("expected off, stop or backtrack".into()),
        };
        Ok(())
    }
    fn show(&self) -> String {
        match self {
            LoopGuardMode::Off => "off",
            LoopGuardMode::Stop => "stop",
            LoopGuardMode::Backtrack => "backtrack",
        }
        .into()
    }
}

/// The span lengths a loop may have (`--loop_guard_ngram=2..32`, or one length `--...=4`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpanRange {
    pub min: usize,
    pub max: usize,
}

impl Knob for SpanRange {
    fn set_text(&mut self, text: &str) -> Result<(), String> {
        const WHAT: &str = "expected a span length n or a range MIN..MAX (e.g. 2..32)";
        let num = |s: &str| s.trim().parse::<usize>().map_err(|_| WHAT.to_string());
        let (min, max) = match text.split_once("..") {
            Some((a, b)) => (num(a)?, num(b)?),
            None => {
                let n = num(text)?;
                (n, n)
            }
        };
        *self = SpanRange { min, max };
        Ok(())
    }
    fn show(&self) -> String {
        format!("{}..{}", self.min, self.max)
    }
}

/// The loop guard's settings (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoopGuardConfig {
    pub mode: LoopGuardMode,
    pub spans: SpanRange,
    /// Copies of the span that make a loop (at least 2).
    pub repeats: usize,
    /// Backtracks per sample before a loop stops it.
    pub max_backtracks: usize,
}

impl LoopGuardConfig {
    pub fn enabled(&self) -> bool {
        self.mode != LoopGuardMode::Off
    }

    /// The range checks; the message names the knob.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !self.enabled() {
            return Ok(());
        }
        if self.spans.min == 0 || self.spans.min > self.spans.max {
            anyhow::bail!(
                "loop_guard_ngram must be a range MIN..MAX with 1 <= MIN <= MAX, got {}",
                self.spans.show()
            );
        }
        if self.repeats < 2 {
            anyhow::bail!(
                "loop_guard_repeats must be at least 2, got {}",
                self.repeats
            );
        }
        Ok(())
    }
}

/// What the guard did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LoopAction {
    Stop,
    Backtrack,
}

/// One time the guard fired, as `--json` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct LoopEvent {
    /// Index in the generated tokens (at that moment) where the loop began: the first token of
    /// its first copy.
    pub position: usize,
    /// The span's length in tokens.
    pub span: usize,
    pub action: LoopAction,
}

/// The loop `generated` ends in, if any: `(position where it began, span)` for the shortest
/// span in `spans` whose last `repeats` copies are equal.
pub fn detect(generated: &[u32], spans: SpanRange, repeats: usize) -> Option<(usize, usize)> {
    let len = generated.len();
    (spans.min.max(1)..=spans.max)
        .take_while(|&n| n * repeats <= len)
        .find(|&n| {
            let begin = len - (repeats - 1) * n;
            // Checked from the end: most spans differ in the newest token.
            (begin..len).rev().all(|i| generated[i] == generated[i - n])
        })
        .map(|n| (len - repeats * n, n))
}

/// One sample's guard state: its bans and how many backtracks it has used.
#[derive(Clone, Debug, Default)]
pub struct RowGuard {
    /// `(position in the generated tokens, banned token)`.
    bans: Vec<(usize, u32)>,
    /// The spans of the loops backtracked out of, each as `span + span` (every rotation of the
    /// span is a window of it).
    looped: Vec<Vec<u32>>,
    backtracks: usize,
}

impl RowGuard {
    /// Sets the logits of the tokens banned after `generated` to -inf: those banned at this
    /// position by a backtrack, and any token that would complete two back-to-back copies of a
    /// span (in any rotation) that looped before. Banning one token where a loop began is not
    /// enough: the model re-enters its loop a token later, in another phase.
    pub fn apply_bans(&self, logits: &mut [f32], generated: &[u32]) {
        let mut ban = |t: u32| {
            if let Some(v) = logits.get_mut(t as usize) {
                *v = f32::NEG_INFINITY;
            }
        };
        let len = generated.len();
        for &(p, t) in &self.bans {
            if p == len {
                ban(t);
            }
        }
        for doubled in &self.looped {
            let n = doubled.len() / 2;
            if len + 1 < 2 * n {
                continue;
            }
            // The last 2n - 1 tokens, periodic with period n, starting with a rotation of the
            // span: the token that repeats tail[n - 1] completes the second copy.
            let tail = &generated[len + 1 - 2 * n..];
            let periodic = (n..tail.len()).all(|i| tail[i] == tail[i - n]);
            if periodic && doubled.windows(n).any(|w| w == &tail[..n]) {
                ban(tail[n - 1]);
            }
        }
    }

    /// Checks the sample's generated tokens after a new one was appended. On a loop, returns the
    /// event; for a backtrack, the caller cuts the sample back to `event.position` tokens (the
    /// ban is already recorded here).
    pub fn check(&mut self, cfg: &LoopGuardConfig, generated: &[u32]) -> Option<LoopEvent> {
        if !cfg.enabled() {
            return None;
        }
        let (position, span) = detect(generated, cfg.spans, cfg.repeats)?;
        let backtrack =
            cfg.mode == LoopGuardMode::Backtrack && self.backtracks < cfg.max_backtracks;
        if backtrack {
            self.backtracks += 1;
            self.bans.retain(|&(p, _)| p <= position);
            self.bans.push((position, generated[position]));
            let copy = &generated[position..position + span];
            if !self
                .looped
                .iter()
                .any(|d| d.windows(span).any(|w| w == copy))
            {
                self.looped.push([copy, copy].concat());
            }
        }
        Some(LoopEvent {
            position,
            span,
            action: if backtrack {
                LoopAction::Backtrack
            } else {
                LoopAction::Stop
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detect_finds_the_shortest_span_and_where_the_loop_began() {
        let spans = SpanRange { min: 2, max: 8 };
        // "a b c" three times: begins at the first copy.
        let s = [9, 1, 2, 3, 1, 2, 3, 1, 2, 3];
        assert_eq!(detect(&s, spans, 3), Some((1, 3)));
        assert_eq!(detect(&s[..9], spans, 3), None);
        // One token six times is a span of 2 repeated three times; five times is not yet.
        assert_eq!(detect(&[7; 6], spans, 3), Some((0, 2)));
        assert_eq!(detect(&[7; 5], spans, 3), None);
        assert_eq!(
            detect(&[7; 4], SpanRange { min: 1, max: 8 }, 3),
            Some((1, 1))
        );
        // Spans longer than the range are not loops.
        assert_eq!(detect(&s[1..], SpanRange { min: 4, max: 8 }, 3), None);
    }

    const NEG: f32 = f32::NEG_INFINITY;

    #[test]
    fn backtracks_are_bounded_and_loops_are_banned() {
        let cfg = LoopGuardConfig {
            mode: LoopGuardMode::Backtrack,
            spans: SpanRange { min: 2, max: 4 },
            repeats: 3,
            max_backtracks: 1,
        };
        let mut g = RowGuard::default();
        let s = [5, 1, 2, 1, 2, 1, 2];
        let e = g.check(&cfg, &s).expect("a loop");
        assert_eq!(
            (e.position, e.span, e.action),
            (1, 2, LoopAction::Backtrack)
        );
        let mut logits = [0.0f32; 4];
        g.apply_bans(&mut logits, &s[..2]);
        assert!(logits.iter().all(|v| v.is_finite()));
        g.apply_bans(&mut logits, &s[..1]);
        assert_eq!(logits[1], f32::NEG_INFINITY);
        // The span (1 2) looped: "2 1 2" may not become "2 1 2 1", nor "1 2 1" "1 2 1 2".
        let mut logits = [0.0f32; 4];
        g.apply_bans(&mut logits, &[3, 3, 2, 1, 2]);
        assert_eq!(logits, [0.0, NEG, 0.0, 0.0]);
        let mut logits = [0.0f32; 4];
        g.apply_bans(&mut logits, &[3, 3, 1, 2, 1]);
        assert_eq!(logits, [0.0, 0.0, NEG, 0.0]);
        let mut logits = [0.0f32; 4];
        g.apply_bans(&mut logits, &[3, 3, 1, 3, 1]);
        assert!(logits.iter().all(|v| v.is_finite()));
        // The budget is spent: the next loop stops.
        assert_eq!(g.check(&cfg, &s).map(|e| e.action), Some(LoopAction::Stop));
        let mut set = LoopGuardMode::Off;
        set.set_text("backtrack").unwrap();
        assert_eq!(set, LoopGuardMode::Backtrack);
        let mut r = SpanRange { min: 0, max: 0 };
        r.set_text("3..12").unwrap();
        assert_eq!((r.min, r.max), (3, 12));
        assert!(r.set_text("3..x").is_err());
    }
}
