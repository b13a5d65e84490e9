//! Arithmetic problems and their text formats.
//!
//! - plain:      `123+45=168`, `17/5=3r2` (division gives quotient `r` remainder)
//! - reversed:   the answer's digits least significant first (`123+45=861`; a minus sign stays
//!   in front: `12-45=-33`, reversed `-33`; division reverses quotient and remainder each)
//! - scratchpad: reversed, and multiplication writes its partial products first, each reversed:
//!   `123*45=516+0294=5355` (123*5, then 123*40, then the sum).
//!
//! Reversed answers let a left-to-right model produce the digit it can already compute (Lee et
//! al. 2023 found small models learn addition far faster this way).

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Op {
    Add,
    Sub,
    Mul,
    Div,
}

impl Op {
    pub const ALL: [Op; 4] = [Op::Add, Op::Sub, Op::Mul, Op::Div];

    pub fn symbol(self) -> char {
        match self {
            Op::Add => '+',
            Op::Sub => '-',
            Op::Mul => '*',
            Op::Div => '/',
        }
    }

    pub fn from_symbol(c: char) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.symbol() == c)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Plain,
    Reversed,
    Scratchpad,
}

impl Format {
    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "plain" => Some(Format::Plain),
            "reversed" => Some(Format::Reversed),
            "scratchpad" => Some(Format::Scratchpad),
            _ => None,
        }
    }
}

/// Every character any format uses: the vocabulary is fixed, so all datasets share it.
pub const VOCAB: &str = "\n*+-/0123456789=r";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Problem {
    pub a: u64,
    pub op: Op,
    pub b: u64,
}

/// The value of an answer: an integer, or a quotient and remainder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    Int(i64),
    DivRem(u64, u64),
}

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Answer::Int(v) => write!(f, "{v}"),
            Answer::DivRem(q, r) => write!(f, "{q} remainder {r}"),
        }
    }
}

pub fn digits(x: u64) -> usize {
    x.checked_ilog10().map_or(1, |d| d as usize + 1)
}

fn reversed(x: u64) -> String {
    x.to_string().chars().rev().collect()
}

impl Problem {
    pub fn answer(&self) -> Answer {
        let (a, b) = (self.a as i64, self.b as i64);
        match self.op {
            Op::Add => Answer::Int(a + b),
            Op::Sub => Answer::Int(a - b),
            Op::Mul => Answer::Int(a * b),
            Op::Div => Answer::DivRem(self.a / self.b, self.a % self.b),
        }
    }

    /// The larger operand's digit count: the "length" accuracy is reported by.
    pub fn length(&self) -> usize {
        digits(self.a).max(digits(self.b))
    }

    /// `123+45=`
    pub fn prompt(&self) -> String {
        format!("{}{}{}=", self.a, self.op.symbol(), self.b)
    }

    /// What follows the `=`, without the newline.
    pub fn completion(&self, format: Format) -> String {
        let num = |x: u64| {
            if format == Format::Plain {
                x.to_string()
            } else {
                reversed(x)
            }
        };
        let int = |v: i64| {
            if v < 0 {
                format!("-{}", num(v.unsigned_abs()))
            } else {
                num(v as u64)
            }
        };
        if format == Format::Scratchpad && self.op == Op::Mul {
            let mut parts: Vec<String> = Vec::new();
            let mut rest = self.b;
            let mut place = 1u64;
            loop {
                parts.push(reversed(self.a * (rest % 10) * place));
                rest /= 10;
                place *= 10;
                if rest == 0 {
                    break;
                }
            }
            let total = num(self.a * self.b);
            return if parts.len() == 1 {
                total
            } else {
                format!("{}={total}", parts.join("+"))
            };
        }
        match self.answer() {
            Answer::Int(v) => int(v),
            Answer::DivRem(q, r) => format!("{}r{}", num(q), num(r)),
        }
    }

    /// One training line: prompt, completion, newline.
    pub fn line(&self, format: Format) -> String {
        format!("{}{}\n", self.prompt(), self.completion(format))
    }

    /// Reads a line back (`123+45=861` or with a trailing newline). None if malformed.
    pub fn parse_line(line: &str) -> Option<(Problem, String)> {
        let line = line.trim_end_matches('\n');
        let (lhs, completion) = line.split_once('=')?;
        let pos = lhs
            .char_indices()
            .skip(1)
            .find(|&(_, c)| Op::from_symbol(c).is_some())?
            .0;
        let op = Op::from_symbol(lhs[pos..].chars().next()?)?;
        let (a, b) = (lhs[..pos].parse().ok()?, lhs[pos + 1..].parse().ok()?);
        Some((Problem { a, op, b }, completion.to_string()))
    }
}

/// The answer a completion states in `format`: the text after the last `=` (the scratchpad's
/// final sum), up to a newline. None if it does not parse.
pub fn parse_answer(completion: &str, op: Op, format: Format) -> Option<Answer> {
    let text = completion.split('\n').next()?;
    let text = text.rsplit('=').next()?;
    let num = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        let s: String = if format == Format::Plain {
            s.to_string()
        } else {
            s.chars().rev().collect()
        };
        s.parse().ok()
    };
    if op == Op::Div {
        let (q, r) = text.split_once('r')?;
        return Some(Answer::DivRem(num(q)?, num(r)?));
    }
    match text.strip_prefix('-') {
        Some(mag) => Some(Answer::Int(-(num(mag)? as i64))),
        None => Some(Answer::Int(num(text)? as i64)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_read_back_to_the_right_value() {
        let cases = [
            (123, Op::Add, 45),
            (12, Op::Sub, 45),
            (999, Op::Mul, 99),
            (7, Op::Mul, 8),
            (127, Op::Div, 5),
            (5, Op::Div, 17),
            (0, Op::Sub, 0),
        ];
        for (a, op, b) in cases {
            let p = Problem { a, op, b };
            for format in [Format::Plain, Format::Reversed, Format::Scratchpad] {
                let line = p.line(format);
                let (back, completion) = Problem::parse_line(&line).unwrap();
                assert_eq!(back, p, "{line}");
                assert_eq!(
                    parse_answer(&completion, op, format),
                    Some(p.answer()),
                    "{line:?} in {format:?}"
                );
                assert!(line.chars().all(|c| VOCAB.contains(c)), "{line:?}");
            }
        }
    }

    #[test]
    fn examples_of_each_format() {
        let p = |a, op, b| Problem { a, op, b };
        assert_eq!(p(123, Op::Add, 45).line(Format::Plain), "123+45=168\n");
        assert_eq!(p(123, Op::Add, 45).line(Format::Reversed), "123+45=861\n");
        assert_eq!(p(12, Op::Sub, 45).line(Format::Reversed), "12-45=-33\n");
        assert_eq!(p(17, Op::Div, 5).line(Format::Reversed), "17/5=3r2\n");
        assert_eq!(p(127, Op::Div, 5).line(Format::Reversed), "127/5=52r2\n");
        assert_eq!(
            p(123, Op::Mul, 45).line(Format::Scratchpad),
            "123*45=516+0294=5355\n"
        );
    }

    #[test]
    fn wrong_or_garbled_answers_are_rejected_or_differ() {
        assert_eq!(
            parse_answer("86", Op::Add, Format::Reversed),
            Some(Answer::Int(68))
        );
        assert_eq!(parse_answer("", Op::Add, Format::Reversed), None);
        assert_eq!(parse_answer("8-6", Op::Add, Format::Reversed), None);
        assert_eq!(parse_answer("3r", Op::Div, Format::Plain), None);
    }
}
