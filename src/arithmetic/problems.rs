//! Arithmetic problems and their text formats.
//!
//! - plain:      `123+45=168`, `17/5=3r2` (division gives quotient `r` remainder)
//! - reversed:   the answer's digits least significant first (`123+45=861`; a minus sign stays
//!   in front: `12-45=-33`, reversed `-33`; division reverses quotient and remainder each)
//! - scratchpad: reversed, and multiplication writes its partial products, each reversed, adding
//!   each to a running sum: `123*45=516+0294=5355` (123*5, then 123*40, then the sum),
//!   `123*456=837+0516=8886+00294=88065` (two additions of two numbers, not one of three: a
//!   three-way sum's carries were most of the remaining errors). Division is a fixed-width long
//!   division: operands zero-padded to the dataset's widths (3 and 2 digits: `5/7` is
//!   `005/07=`), then one step `XXX,q,PPP,RR` per dividend digit, separated by `;`, where
//!   X = 10 x the last remainder + the next dividend digit, q = X / divisor, P = q x divisor and
//!   R = X - P, then `;QQQrRR`:
//!   `212/07=002,0,000,02;021,3,021,00;002,0,000,02;030r02`.
//!
//! Reversed answers let a left-to-right model produce the digit it can already compute (Lee et
//! al. 2023 found small models learn addition far faster this way). Division works the other
//! way round, most significant digit first, so it is spelled out instead: every step is one
//! small, local computation, and fixed widths put each digit at the same offset in every line, so
//! attention finds "the remainder two steps back" by position. Without the padding and the
//! partial products (quotient digits and remainders only) division stayed near 56%; this format
//! reached 97% in the same time (measured: see the README).

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
pub const VOCAB: &str = "\n*+,-/0123456789;=r";

/// How a dataset writes its problems: the format, and the widths the scratchpad pads division's
/// operands to (the dataset's longest dividend and divisor). A wider operand (the
/// out-of-distribution set's) is written at its own width.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub format: Format,
    pub dividend_width: usize,
    pub divisor_width: usize,
}

impl Layout {
    /// A layout for `format` with no padding (what plain and reversed use).
    pub fn unpadded(format: Format) -> Layout {
        Layout {
            format,
            dividend_width: 1,
            divisor_width: 1,
        }
    }

    /// Division written as fixed-width long division.
    fn long_division(&self, op: Op) -> bool {
        self.format == Format::Scratchpad && op == Op::Div
    }
}

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

    /// `123+45=` (`005/07=` for scratchpad division)
    pub fn prompt(&self, layout: Layout) -> String {
        if layout.long_division(self.op) {
            let (aw, bw) = self.widths(layout);
            return format!("{:0aw$}/{:0bw$}=", self.a, self.b);
        }
        format!("{}{}{}=", self.a, self.op.symbol(), self.b)
    }

    /// The padded widths of the dividend and divisor in `layout`.
    fn widths(&self, layout: Layout) -> (usize, usize) {
        (
            layout.dividend_width.max(digits(self.a)),
            layout.divisor_width.max(digits(self.b)),
        )
    }

    /// Long division, one step per dividend digit (see the module header). A step's X and P
    /// are below 10 x divisor, so they take one digit more than the divisor; q is one digit.
    fn long_division(&self, layout: Layout) -> String {
        let (aw, bw) = self.widths(layout);
        let xw = bw + 1;
        let mut remainder = 0;
        let mut steps: Vec<String> = format!("{:0aw$}", self.a)
            .bytes()
            .map(|digit| {
                let x = 10 * remainder + u64::from(digit - b'0');
                let q = x / self.b;
                remainder = x - q * self.b;
                format!("{x:0xw$},{q},{:0xw$},{remainder:0bw$}", q * self.b)
            })
            .collect();
        steps.push(format!("{:0aw$}r{remainder:0bw$}", self.a / self.b));
        steps.join(";")
    }

    /// What follows the `=`, without the newline.
    pub fn completion(&self, layout: Layout) -> String {
        let format = layout.format;
        if layout.long_division(self.op) {
            return self.long_division(layout);
        }
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
            // The first partial product, then each next one added to the running sum.
            let mut sum = self.a * (self.b % 10);
            let mut text = reversed(sum);
            let (mut rest, mut place) = (self.b / 10, 10);
            while rest > 0 {
                let part = self.a * (rest % 10) * place;
                sum += part;
                text += &format!("+{}={}", reversed(part), reversed(sum));
                (rest, place) = (rest / 10, place * 10);
            }
            return text;
        }
        match self.answer() {
            Answer::Int(v) => int(v),
            Answer::DivRem(q, r) => format!("{}r{}", num(q), num(r)),
        }
    }

    /// One training line: prompt, completion, newline.
    pub fn line(&self, layout: Layout) -> String {
        format!("{}{}\n", self.prompt(layout), self.completion(layout))
    }

    /// Reads a line back (`123+45=861`, `005/07=...`, with or without a trailing newline). None
    /// if malformed.
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

/// The answer a completion states in `layout`: the text after the last `=` (the scratchpad's
/// final sum) or, for long division, after the last `;`, up to a newline. None if it does not
/// parse.
pub fn parse_answer(completion: &str, op: Op, layout: Layout) -> Option<Answer> {
    let line = completion.split('\n').next()?;
    // Long division writes its quotient and remainder most significant digit first, like plain.
    let (text, reversed) = if layout.long_division(op) {
        (line.rsplit(';').next()?, false)
    } else {
        (line.rsplit('=').next()?, layout.format != Format::Plain)
    };
    let num = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        if reversed {
            s.chars().rev().collect::<String>().parse().ok()
        } else {
            s.parse().ok()
        }
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

    /// The scratchpad layout of a dataset with 3-digit dividends and 2-digit divisors.
    const PADDED: Layout = Layout {
        format: Format::Scratchpad,
        dividend_width: 3,
        divisor_width: 2,
    };

    fn layouts() -> [Layout; 3] {
        [
            Layout::unpadded(Format::Plain),
            Layout::unpadded(Format::Reversed),
            PADDED,
        ]
    }

    fn reads_back(p: Problem, layout: Layout) {
        let line = p.line(layout);
        let (back, completion) = Problem::parse_line(&line).unwrap();
        assert_eq!(back, p, "{line}");
        assert_eq!(
            parse_answer(&completion, p.op, layout),
            Some(p.answer()),
            "{line:?} in {layout:?}"
        );
        assert!(line.chars().all(|c| VOCAB.contains(c)), "{line:?}");
    }

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
            (1234, Op::Div, 7), // wider than the layout: out of distribution
        ];
        for (a, op, b) in cases {
            for layout in layouts() {
                reads_back(Problem { a, op, b }, layout);
            }
        }
    }

    #[test]
    fn every_division_in_the_training_range_reads_back_at_a_fixed_width() {
        for a in 0..1000 {
            for b in 1..100 {
                let p = Problem { a, op: Op::Div, b };
                reads_back(p, PADDED);
                let line = p.line(PADDED);
                assert_eq!(line.len(), 53, "{line:?}");
                // Each step's own arithmetic holds: q = X / divisor, P = q x divisor, R = X - P,
                // and X brings down the next digit onto the last remainder.
                let steps: Vec<&str> = line[7..line.len() - 1].split(';').collect();
                let mut remainder = 0;
                for (step, digit) in steps[..3].iter().zip(format!("{a:03}").bytes()) {
                    let f: Vec<u64> = step.split(',').map(|x| x.parse().unwrap()).collect();
                    assert_eq!(f[0], 10 * remainder + u64::from(digit - b'0'), "{line:?}");
                    assert_eq!(
                        (f[1], f[2], f[3]),
                        (f[0] / b, f[1] * b, f[0] % b),
                        "{line:?}"
                    );
                    remainder = f[3];
                }
            }
        }
    }

    #[test]
    fn products_in_the_training_range_read_back_with_their_running_sums() {
        let unreversed = |s: &str| s.chars().rev().collect::<String>().parse::<u64>().unwrap();
        for a in (0..1000).step_by(7) {
            for b in 0..1000 {
                let p = Problem { a, op: Op::Mul, b };
                reads_back(p, PADDED);
                // `p0+p1=s1+p2=s2`: each partial is a x one digit of b at its place, each sum
                // the partials so far.
                let line = p.line(PADDED);
                let completion = line.trim_end().split_once('=').unwrap().1;
                let mut fields = completion.split(['+', '=']).map(unreversed);
                let (mut sum, mut place, mut rest) = (fields.next().unwrap(), 10, b / 10);
                assert_eq!(sum, a * (b % 10), "{line:?}");
                while rest > 0 {
                    let (part, total) = (fields.next().unwrap(), fields.next().unwrap());
                    assert_eq!(part, a * (rest % 10) * place, "{line:?}");
                    sum += part;
                    assert_eq!(total, sum, "{line:?}");
                    (rest, place) = (rest / 10, place * 10);
                }
                assert_eq!(fields.next(), None, "{line:?}");
            }
        }
    }

    #[test]
    fn examples_of_each_format() {
        let p = |a, op, b| Problem { a, op, b };
        let [plain, reversed, scratchpad] = layouts();
        assert_eq!(p(123, Op::Add, 45).line(plain), "123+45=168\n");
        assert_eq!(p(123, Op::Add, 45).line(reversed), "123+45=861\n");
        assert_eq!(p(12, Op::Sub, 45).line(reversed), "12-45=-33\n");
        assert_eq!(p(17, Op::Div, 5).line(reversed), "17/5=3r2\n");
        assert_eq!(p(127, Op::Div, 5).line(reversed), "127/5=52r2\n");
        assert_eq!(
            p(123, Op::Mul, 45).line(scratchpad),
            "123*45=516+0294=5355\n"
        );
        assert_eq!(
            p(123, Op::Mul, 456).line(scratchpad),
            "123*456=837+0516=8886+00294=88065\n"
        );
        assert_eq!(p(7, Op::Mul, 8).line(scratchpad), "7*8=65\n");
        assert_eq!(
            p(212, Op::Div, 7).line(scratchpad),
            "212/07=002,0,000,02;021,3,021,00;002,0,000,02;030r02\n"
        );
        assert_eq!(
            p(57, Op::Div, 50).line(scratchpad),
            "057/50=000,0,000,00;005,0,000,05;057,1,050,07;001r07\n"
        );
    }

    #[test]
    fn wrong_or_garbled_answers_are_rejected_or_differ() {
        let [plain, reversed, scratchpad] = layouts();
        assert_eq!(parse_answer("86", Op::Add, reversed), Some(Answer::Int(68)));
        assert_eq!(parse_answer("", Op::Add, reversed), None);
        assert_eq!(parse_answer("8-6", Op::Add, reversed), None);
        assert_eq!(parse_answer("3r", Op::Div, plain), None);
        // Long division's answer is the last step, read most significant digit first.
        assert_eq!(
            parse_answer("021,3,021,00;030r02", Op::Div, scratchpad),
            Some(Answer::DivRem(30, 2))
        );
        assert_eq!(parse_answer("002,0,000,02;", Op::Div, scratchpad), None);
    }
}
