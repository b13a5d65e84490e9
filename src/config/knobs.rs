//! Settings defined once. A [`knobs!`] table gives a settings struct its fields, defaults, key
//! list, typed text setter and help, so a config file, `--key=value` overrides, the command line
//! (`src/cli/` builds its flags from [`KnobSpec`]s) and the `repetition` settings language all
//! read the same table: a new knob is one line in one table.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// How a knob is given on a command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `--key=value`.
    Value,
    /// `--key` alone means true; `--key=false` also works.
    Flag,
    /// Repeatable: each `--key=value` adds one.
    List,
}

/// One knob as the command line shows it.
#[derive(Clone, Debug)]
pub struct KnobSpec {
    pub name: &'static str,
    pub help: &'static str,
    /// The default as text; empty when there is none to show.
    pub default: String,
    pub kind: Kind,
}

/// A knob's value type: how it is read from text and shown as a default.
pub trait Knob: Sized {
    const KIND: Kind = Kind::Value;
    /// Sets `self` from `text`; `Err` says what was expected.
    fn set_text(&mut self, text: &str) -> Result<(), String>;
    fn show(&self) -> String;
}

impl Knob for bool {
    const KIND: Kind = Kind::Flag;
    fn set_text(&mut self, text: &str) -> Result<(), String> {
        // nanoGPT spells booleans True/False.
        *self = match text.trim() {
            "true" | "True" | "1" => true,
            "false" | "False" | "0" => false,
            _ => return Err("expected true or false".into()),
        };
        Ok(())
    }
    fn show(&self) -> String {
        self.to_string()
    }
}

impl Knob for String {
    fn set_text(&mut self, text: &str) -> Result<(), String> {
        *self = text.to_string();
        Ok(())
    }
    fn show(&self) -> String {
        self.clone()
    }
}

/// Repeatable text (`--stop=a --stop=b`).
impl Knob for Vec<String> {
    const KIND: Kind = Kind::List;
    fn set_text(&mut self, text: &str) -> Result<(), String> {
        self.push(text.to_string());
        Ok(())
    }
    fn show(&self) -> String {
        self.join(" ")
    }
}

/// A knob with no default: set means `Some`.
/// An optional knob: `none` (also Python's `None`, JSON's `null`) unsets it.
impl<T: Knob + Default> Knob for Option<T> {
    fn set_text(&mut self, text: &str) -> Result<(), String> {
        if matches!(text.trim(), "none" | "None" | "null") {
            *self = None;
            return Ok(());
        }
        let mut v = T::default();
        v.set_text(text)?;
        *self = Some(v);
        Ok(())
    }
    fn show(&self) -> String {
        self.as_ref().map(Knob::show).unwrap_or_default()
    }
}

macro_rules! numbers {
    ($($t:ty => $what:literal),*) => {$(
        impl Knob for $t {
            fn set_text(&mut self, text: &str) -> Result<(), String> {
                // nanoGPT writes 5*8 for gradient_accumulation_steps: allow a product.
                *self = text
                    .split('*')
                    .map(|f| f.trim().replace('_', "").parse::<$t>().ok())
                    .try_fold(1 as $t, |acc, f| f.map(|f| acc * f))
                    .ok_or($what)?;
                Ok(())
            }
            fn show(&self) -> String {
                self.to_string()
            }
        }
    )*};
}
numbers!(usize => "expected a whole number", u64 => "expected a whole number",
         i64 => "expected a whole number", f32 => "expected a number", f64 => "expected a number");

/// Knobs read with their type's `FromStr`, shown with its `Display`.
macro_rules! parsed {
    ($($t:ty),*) => {$(
        impl Knob for $t {
            fn set_text(&mut self, text: &str) -> Result<(), String> {
                *self = text.trim().parse().map_err(|e| format!("{e:#}"))?;
                Ok(())
            }
            fn show(&self) -> String {
                self.to_string()
            }
        }
    )*};
}
parsed!(
    crate::engine::Device,
    crate::engine::Dtype,
    crate::engine::KvDtype
);

impl Knob for PathBuf {
    fn set_text(&mut self, text: &str) -> Result<(), String> {
        *self = PathBuf::from(text);
        Ok(())
    }
    fn show(&self) -> String {
        self.display().to_string()
    }
}

/// What every [`knobs!`] table offers, for code that handles any table (the command line).
pub trait Table: Sized {
    fn specs() -> Vec<KnobSpec>;
    fn parse_from_args(args: &[String]) -> Result<Self>;
}

/// Sets one knob from text (taken as it is: text knobs keep their spaces); the error names the
/// key, the value and what was expected.
pub fn set_knob<T: Knob>(field: &mut T, key: &str, value: &str) -> Result<()> {
    field
        .set_text(value)
        .map_err(|why| anyhow::anyhow!("bad value for {key}: '{value}' ({why})"))
}

/// The error for a key no table has.
pub fn unknown_key(key: &str, keys: &[&str]) -> anyhow::Error {
    anyhow::anyhow!(
        "unknown config key '{key}'; valid keys: {}",
        keys.join(", ")
    )
}

/// Applies nanoGPT-style `--key=value` arguments (also `--key value`). Values are read as
/// nanoGPT's configurator reads Python literals: a quoted string loses its quotes.
pub fn apply_overrides(
    set: &mut dyn FnMut(&str, &str) -> Result<()>,
    args: &[String],
) -> Result<()> {
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        let Some(kv) = arg.strip_prefix("--") else {
            bail!("unexpected argument '{arg}': overrides look like --key=value");
        };
        let (key, value) = match kv.split_once('=') {
            Some((k, v)) => (k, v.to_string()),
            None => {
                i += 1;
                let v = args
                    .get(i)
                    .with_context(|| format!("--{kv} needs a value (--{kv}=VALUE)"))?;
                (kv, v.clone())
            }
        };
        set(key, unquote(value.trim()))?;
        i += 1;
    }
    Ok(())
}

fn unquote(s: &str) -> &str {
    s.strip_prefix('"')
        .and_then(|x| x.strip_suffix('"'))
        .or_else(|| s.strip_prefix('\'').and_then(|x| x.strip_suffix('\'')))
        .unwrap_or(s)
}

/// Applies the flat `key = value` lines of a TOML text (nanoGPT's config/*.py as TOML); `source`
/// names it in errors.
pub fn apply_toml(
    set: &mut dyn FnMut(&str, &str) -> Result<()>,
    text: &str,
    source: &str,
) -> Result<()> {
    let table: toml::Table = text.parse().with_context(|| {
        // nanoGPT's config/*.py spell these the Python way, which TOML does not parse.
        format!(
            "{source} is not valid TOML (TOML writes booleans as true/false, and a product \
                 such as 5*8 as 40 or the string \"5*8\")"
        )
    })?;
    for (key, value) in table {
        let text = match &value {
            toml::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        set(&key, text.trim()).with_context(|| format!("in {source}"))?;
    }
    Ok(())
}

/// Reads a TOML config file into `set` (see [`apply_toml`]).
pub fn apply_file(set: &mut dyn FnMut(&str, &str) -> Result<()>, path: &Path) -> Result<()> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    apply_toml(set, &text, &path.display().to_string())
}

/// Parses command-line arguments as the command line gives them: `--key=value`, `--key value`,
/// a flag alone (`--json`), a list knob repeated. Values are taken as typed (no unquoting).
pub fn parse_args(
    set: &mut dyn FnMut(&str, &str) -> Result<()>,
    specs: &[KnobSpec],
    args: &[String],
) -> Result<()> {
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        let Some(kv) = arg.strip_prefix("--") else {
            bail!("unexpected argument '{arg}': options look like --key=value");
        };
        let (key, inline) = match kv.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (kv, None),
        };
        let Some(spec) = specs.iter().find(|s| s.name == key) else {
            let keys: Vec<&str> = specs.iter().map(|s| s.name).collect();
            bail!(
                "unexpected argument '--{key}'; valid options: --{}",
                keys.join(", --")
            );
        };
        let value = match (inline, spec.kind) {
            (Some(v), _) => v.to_string(),
            (None, Kind::Flag) => "true".to_string(),
            (None, _) => {
                i += 1;
                args.get(i)
                    .with_context(|| format!("--{key} needs a value (--{key}=VALUE)"))?
                    .clone()
            }
        };
        set(key, &value)?;
        i += 1;
    }
    Ok(())
}

/// Declares a settings table: the struct, its `Default`, `KEYS`, `specs()` (name, help, default,
/// kind), `has(key)` and `set(key, text)`. Doc comments are the help. Rows may come in several
/// brace groups (so a shared group such as [`crate::with_model_shape`] can be spliced in), and
/// `[name: Table, ...]` after the struct name includes whole tables as fields (their keys are
/// this table's keys too).
#[macro_export]
macro_rules! knobs {
    (
        $(#[$meta:meta])*
        pub struct $name:ident $([$($inc:ident : $ity:ty),* $(,)?])? {
            $({
                $(
                    $(#[doc = $doc:literal])*
                    $field:ident : $ty:ty = $default:expr
                ),* $(,)?
            })*
        }
    ) => {
        $(#[$meta])*
        pub struct $name {
            $($(pub $inc: $ity,)*)?
            $($(
                $(#[doc = $doc])*
                pub $field: $ty,
            )*)*
        }

        impl $crate::config::knobs::Table for $name {
            fn specs() -> Vec<$crate::config::knobs::KnobSpec> {
                $name::specs()
            }
            fn parse_from_args(args: &[String]) -> anyhow::Result<Self> {
                $name::parse_from(args)
            }
        }

        impl Default for $name {
            fn default() -> Self {
                $name {
                    $($($inc: <$ity>::default(),)*)?
                    $($($field: $default,)*)*
                }
            }
        }

        impl $name {
            /// This table's own keys, in order (included tables' keys are in [`Self::specs`]).
            pub const KEYS: &'static [&'static str] = &[$($(stringify!($field),)*)*];

            /// Every knob: included tables first, then this table's own, in order.
            pub fn specs() -> Vec<$crate::config::knobs::KnobSpec> {
                let defaults = Self::default();
                let own = vec![$($(
                    $crate::config::knobs::KnobSpec {
                        name: stringify!($field),
                        help: concat!($($doc, "\n"),*),
                        default: $crate::config::knobs::Knob::show(&defaults.$field),
                        kind: <$ty as $crate::config::knobs::Knob>::KIND,
                    },
                )*)*];
                [$($(<$ity>::specs(),)*)? own].concat()
            }

            /// Parses command-line arguments (without the program and command names): see
            /// [`parse_args`]($crate::config::knobs::parse_args).
            pub fn parse_from<I>(args: I) -> anyhow::Result<Self>
            where
                I: IntoIterator,
                I::Item: AsRef<str>,
            {
                let args: Vec<String> = args.into_iter().map(|a| a.as_ref().to_string()).collect();
                let mut parsed = Self::default();
                $crate::config::knobs::parse_args(&mut |k, v| parsed.set(k, v), &Self::specs(), &args)?;
                Ok(parsed)
            }

            /// Whether `key` is one of this table's knobs (included ones too).
            pub fn has(key: &str) -> bool {
                Self::KEYS.contains(&key) $($(|| <$ity>::has(key))*)?
            }

            /// Sets `key` from its text form, type-checked; an unknown key is an error that lists
            /// the valid ones.
            pub fn set(&mut self, key: &str, value: &str) -> anyhow::Result<()> {
                match key {
                    $($(stringify!($field) => {
                        $crate::config::knobs::set_knob(&mut self.$field, key, value)
                    })*)*
                    $($(_ if <$ity>::has(key) => self.$inc.set(key, value),)*)?
                    _ => {
                        let specs = Self::specs();
                        let keys: Vec<&str> = specs.iter().map(|s| s.name).collect();
                        Err($crate::config::knobs::unknown_key(key, &keys))
                    }
                }
            }
        }
    };
}
