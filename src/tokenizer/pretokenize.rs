//! GPT-2's pre-tokenizer without a regex engine: the text is cut into the pieces that
//! tiktoken's r50k pattern
//!
//! ```text
//! '(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s
//! ```
//!
//! finds, scanning once, left to right. At each position the first alternative that matches
//! wins, so a piece is:
//! - a contraction `'s 'd 'm 't 'll 've 're` (lower case, ASCII apostrophe);
//! - an optional U+0020 space and a maximal run of letters (`\p{L}`), of numbers (`\p{N}`), or of
//!   anything else that is not whitespace (`\s`);
//! - a run of whitespace: all of it at the end of the text; before a non-space character, all
//!   of it but its last character (which then starts the next piece, e.g. as the space of
//!   ` word`); a single whitespace character before a non-space character alone.
//!
//! The character classes are the regex engine's own Unicode tables (`regex-syntax`, which the
//! regex tiktoken-rs uses is built on), so both agree on every code point; the tests compare
//! the tokens with tiktoken-rs on every code point and on random text.

use regex_syntax::hir::{Class, HirKind};
use std::sync::OnceLock;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CharClass {
    Letter,
    Number,
    Space,
    Other,
}

/// Calls `piece` with each piece of `text`, in order; the pieces concatenate to `text`.
pub fn for_each_piece<'t>(text: &'t str, mut piece: impl FnMut(&'t str)) {
    let bytes = text.as_bytes();
    let tables = tables();
    let mut start = 0;
    while start < bytes.len() {
        let end = piece_end(text, start, tables);
        piece(&text[start..end]);
        start = end;
    }
}

/// Where the piece that starts at byte `i` ends.
fn piece_end(text: &str, i: usize, tables: &Tables) -> usize {
    let b = text.as_bytes();
    if b[i] == b'\'' {
        match (b.get(i + 1), b.get(i + 2)) {
            (Some(b's' | b'd' | b'm' | b't'), _) => return i + 2,
            (Some(b'l'), Some(b'l')) | (Some(b'v'), Some(b'e')) | (Some(b'r'), Some(b'e')) => {
                return i + 3
            }
            _ => {}
        }
    }
    let (first, first_len) = class_at(text, i, tables);
    if b[i] == b' ' && i + 1 < b.len() {
        // ` ?X+`: a space takes the run of whatever non-space class follows it.
        let (class, len) = class_at(text, i + 1, tables);
        if class != CharClass::Space {
            return run_end(text, i + 1 + len, class, tables);
        }
    }
    if first != CharClass::Space {
        return run_end(text, i + first_len, first, tables);
    }
    // Whitespace: find the run and the start of its last character.
    let mut end = i + first_len;
    let mut last = i;
    while end < b.len() {
        let (class, len) = class_at(text, end, tables);
        if class != CharClass::Space {
            break;
        }
        last = end;
        end += len;
    }
    if end == b.len() || last == i {
        end // `\s++$`, or a lone whitespace character before a non-space one (`\s`)
    } else {
        last // `\s+(?!\S)`: leave the last one for the next piece
    }
}

/// The end of the maximal run of `class` that continues at byte `i`.
fn run_end(text: &str, mut i: usize, class: CharClass, tables: &Tables) -> usize {
    let b = text.as_bytes();
    while i < b.len() {
        let (c, len) = class_at(text, i, tables);
        if c != class {
            break;
        }
        i += len;
    }
    i
}

/// The class of the character at byte `i` (a character boundary) and its length in bytes.
#[inline]
fn class_at(text: &str, i: usize, tables: &Tables) -> (CharClass, usize) {
    let b = text.as_bytes()[i];
    if b < 0x80 {
        return (tables.ascii[b as usize], 1);
    }
    // A UTF-8 lead byte: the character is the next 2-4 bytes.
    let len = match b {
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        _ => 4,
    };
    let c = text[i..i + len].chars().next().unwrap_or('\u{FFFD}');
    (tables.class_of(c), len)
}

struct Tables {
    ascii: [CharClass; 128],
    /// Sorted, disjoint code point ranges of letters, numbers and whitespace.
    ranges: Vec<(u32, u32, CharClass)>,
}

impl Tables {
    fn class_of(&self, c: char) -> CharClass {
        let c = c as u32;
        let i = self.ranges.partition_point(|&(_, end, _)| end < c);
        match self.ranges.get(i) {
            Some(&(start, _, class)) if start <= c => class,
            _ => CharClass::Other,
        }
    }
}

fn tables() -> &'static Tables {
    static TABLES: OnceLock<Tables> = OnceLock::new();
    TABLES.get_or_init(|| {
        let mut ranges = Vec::new();
        // The three classes are disjoint in Unicode, so the ranges never overlap.
        for (pattern, class) in [
            (r"\p{L}", CharClass::Letter),
            (r"\p{N}", CharClass::Number),
            (r"\s", CharClass::Space),
        ] {
            ranges.extend(
                unicode_ranges(pattern)
                    .into_iter()
                    .map(|(a, b)| (a, b, class)),
            );
        }
        ranges.sort_unstable_by_key(|&(start, _, _)| start);
        let mut t = Tables {
            ascii: [CharClass::Other; 128],
            ranges,
        };
        for c in 0..128u8 {
            t.ascii[c as usize] = t.class_of(c as char);
        }
        t
    })
}

/// The code point ranges of a Unicode class as the regex engine defines it.
fn unicode_ranges(pattern: &str) -> Vec<(u32, u32)> {
    // These fixed patterns always parse to a Unicode class; an empty table would only make
    // every character "other", which the tests would catch.
    let Ok(hir) = regex_syntax::Parser::new().parse(pattern) else {
        return Vec::new();
    };
    match hir.kind() {
        HirKind::Class(Class::Unicode(class)) => class
            .ranges()
            .iter()
            .map(|r| (r.start() as u32, r.end() as u32))
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(text: &str) -> Vec<&str> {
        let mut v = Vec::new();
        for_each_piece(text, |p| v.push(p));
        v
    }

    #[test]
    fn pieces_as_the_regex_cuts_them() {
        assert_eq!(
            pieces("Hello world, it's 2024!"),
            ["Hello", " world", ",", " it", "'s", " 2024", "!"]
        );
        assert_eq!(pieces("a  b"), ["a", " ", " b"]);
        assert_eq!(pieces("a \n\nb"), ["a", " \n", "\n", "b"]);
        assert_eq!(pieces("a\nb"), ["a", "\n", "b"]);
        assert_eq!(pieces("end   "), ["end", "   "]);
        assert_eq!(pieces("''s 'll 'LL"), ["''", "s", " '", "ll", " '", "LL"]);
        assert_eq!(pieces("don't we'll"), ["don", "'t", " we", "'ll"]);
        assert_eq!(pieces("x1½Ⅻ東京é\u{301}"), ["x", "1½Ⅻ", "東京é", "\u{301}"]);
        assert_eq!(pieces(" \u{3000}x"), [" ", "\u{3000}", "x"]);
        assert!(pieces("").is_empty());
    }
}
