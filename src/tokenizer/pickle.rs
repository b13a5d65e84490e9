//! Just enough of Python's pickle format (protocols 2 to 5) to read nanoGPT's `meta.pkl`:
//! dicts, lists, ints, strings, booleans and None. Anything else is refused with its opcode.
//! Values live in an arena so that memoised (shared) objects stay shared, as in Python.

use anyhow::{bail, Context, Result};
use std::collections::HashMap;

/// One unpickled object. Containers hold arena ids (see [`Doc`]).
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Str(String),
    List(Vec<usize>),
    Dict(Vec<(usize, usize)>),
}

/// An unpickled object graph: `values[root()]` is the pickled object.
#[derive(Debug)]
pub struct Doc {
    values: Vec<Value>,
    root: usize,
}

impl Doc {
    pub fn root(&self) -> usize {
        self.root
    }

    pub fn get(&self, id: usize) -> Option<&Value> {
        self.values.get(id)
    }

    pub fn as_dict(&self, id: usize) -> Option<&[(usize, usize)]> {
        match self.get(id) {
            Some(Value::Dict(items)) => Some(items),
            _ => None,
        }
    }

    pub fn as_str(&self, id: usize) -> Option<&str> {
        match self.get(id) {
            Some(Value::Str(s)) => Some(s),
            _ => None,
        }
    }

    pub fn as_int(&self, id: usize) -> Option<i64> {
        match self.get(id) {
            Some(Value::Int(i)) => Some(*i),
            _ => None,
        }
    }
}

enum Slot {
    Mark,
    Obj(usize),
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.with_context(|| format!("the pickle is truncated at byte {}", self.pos))?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn uint(&mut self, n: usize) -> Result<u64> {
        let b = self.take(n)?;
        Ok(b.iter().rev().fold(0u64, |acc, &x| acc << 8 | x as u64))
    }

    fn str(&mut self, len: u64) -> Result<String> {
        let at = self.pos;
        let len = usize::try_from(len).context("string length overflows")?;
        let b = self.take(len)?;
        String::from_utf8(b.to_vec())
            .ok()
            .with_context(|| format!("invalid UTF-8 string at byte {at}"))
    }
}

/// Unpickles `bytes`.
pub fn load(bytes: &[u8]) -> Result<Doc> {
    let mut r = Reader { bytes, pos: 0 };
    let mut values: Vec<Value> = Vec::new();
    let mut stack: Vec<Slot> = Vec::new();
    let mut memo: HashMap<u64, usize> = HashMap::new();

    fn push(values: &mut Vec<Value>, stack: &mut Vec<Slot>, v: Value) {
        values.push(v);
        stack.push(Slot::Obj(values.len() - 1));
    }
    fn pop(stack: &mut Vec<Slot>, at: usize) -> Result<usize> {
        match stack.pop() {
            Some(Slot::Obj(id)) => Ok(id),
            _ => bail!("stack underflow at byte {at}"),
        }
    }
    fn top(stack: &[Slot], at: usize) -> Result<usize> {
        match stack.last() {
            Some(Slot::Obj(id)) => Ok(*id),
            _ => bail!("stack underflow at byte {at}"),
        }
    }
    // Pops down to the last MARK, returning the objects above it in order.
    fn pop_mark(stack: &mut Vec<Slot>, at: usize) -> Result<Vec<usize>> {
        let mark = stack
            .iter()
            .rposition(|s| matches!(s, Slot::Mark))
            .with_context(|| format!("no MARK for the opcode at byte {at}"))?;
        let items = stack
            .drain(mark..)
            .filter_map(|s| match s {
                Slot::Obj(id) => Some(id),
                Slot::Mark => None,
            })
            .collect();
        Ok(items)
    }

    loop {
        let at = r.pos;
        let op = r.take(1)?[0];
        match op {
            0x80 => {
                // PROTO
                let proto = r.uint(1)?;
                if !(2..=5).contains(&proto) {
                    bail!("pickle protocol {proto} is not supported (only 2 to 5)");
                }
            }
            0x95 => {
                r.uint(8)?; // FRAME: a length hint only
            }
            b'.' => {
                let root = pop(&mut stack, at)?;
                return Ok(Doc { values, root });
            }
            b'(' => stack.push(Slot::Mark),
            b'}' => push(&mut values, &mut stack, Value::Dict(Vec::new())),
            b']' => push(&mut values, &mut stack, Value::List(Vec::new())),
            b'N' => push(&mut values, &mut stack, Value::None),
            0x88 => push(&mut values, &mut stack, Value::Bool(true)),
            0x89 => push(&mut values, &mut stack, Value::Bool(false)),
            b'K' => {
                let v = r.uint(1)? as i64;
                push(&mut values, &mut stack, Value::Int(v));
            }
            b'M' => {
                let v = r.uint(2)? as i64;
                push(&mut values, &mut stack, Value::Int(v));
            }
            b'J' => {
                let v = r.uint(4)? as u32 as i32 as i64;
                push(&mut values, &mut stack, Value::Int(v));
            }
            0x8a => {
                // LONG1: little-endian two's complement of n bytes
                let n = r.uint(1)? as usize;
                if n > 8 {
                    bail!("integer at byte {at} does not fit in 64 bits");
                }
                let raw = r.uint(n)?;
                let v = if n == 0 {
                    0
                } else {
                    let shift = 64 - 8 * n as u32;
                    ((raw << shift) as i64) >> shift
                };
                push(&mut values, &mut stack, Value::Int(v));
            }
            0x8c | b'X' | 0x8d => {
                // SHORT_BINUNICODE, BINUNICODE, BINUNICODE8
                let width = match op {
                    0x8c => 1,
                    b'X' => 4,
                    _ => 8,
                };
                let len = r.uint(width)?;
                let s = r.str(len)?;
                push(&mut values, &mut stack, Value::Str(s));
            }
            0x94 => {
                // MEMOIZE
                let id = top(&stack, at)?;
                memo.insert(memo.len() as u64, id);
            }
            b'q' | b'r' => {
                // BINPUT, LONG_BINPUT
                let key = r.uint(if op == b'q' { 1 } else { 4 })?;
                memo.insert(key, top(&stack, at)?);
            }
            b'h' | b'j' => {
                // BINGET, LONG_BINGET
                let key = r.uint(if op == b'h' { 1 } else { 4 })?;
                let id = *memo
                    .get(&key)
                    .with_context(|| format!("memo key {key} at byte {at} was never stored"))?;
                stack.push(Slot::Obj(id));
            }
            b's' | b'u' => {
                // SETITEM, SETITEMS
                let items = if op == b's' {
                    let v = pop(&mut stack, at)?;
                    let k = pop(&mut stack, at)?;
                    vec![k, v]
                } else {
                    pop_mark(&mut stack, at)?
                };
                if items.len() % 2 != 0 {
                    bail!("odd number of items for SETITEMS at byte {at}");
                }
                let dict = top(&stack, at)?;
                let Some(Value::Dict(entries)) = values.get_mut(dict) else {
                    bail!("SETITEM on a non-dict at byte {at}");
                };
                for kv in items.chunks_exact(2) {
                    entries.push((kv[0], kv[1]));
                }
            }
            b'a' | b'e' => {
                // APPEND, APPENDS
                let items = if op == b'a' {
                    vec![pop(&mut stack, at)?]
                } else {
                    pop_mark(&mut stack, at)?
                };
                let list = top(&stack, at)?;
                let Some(Value::List(elems)) = values.get_mut(list) else {
                    bail!("APPEND on a non-list at byte {at}");
                };
                elems.extend(items);
            }
            other => bail!("unsupported pickle opcode 0x{other:02x} at byte {at}"),
        }
    }
}
