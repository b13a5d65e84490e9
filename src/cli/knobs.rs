//! Command-line flags from the library's settings tables ([`nanogpt::knobs!`]): each knob becomes
//! a `--name` flag with its help and default, and what the user typed goes back to the table's
//! own parser. So a flag's name, type, default and help are defined once, in the table.

use anyhow::Result;
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Args, Command, FromArgMatches};
use nanogpt::config::knobs::{Kind, KnobSpec, Table};
use std::marker::PhantomData;

/// A settings table as a group of clap flags: the flags given, for the table to read.
#[derive(Clone, Debug)]
pub struct Knobs<T> {
    args: Vec<String>,
    table: PhantomData<T>,
}

impl<T: Table> Knobs<T> {
    /// The settings the flags give, type-checked by the table (a bad value is a one-line error
    /// naming the flag).
    pub fn parse(&self) -> Result<T> {
        T::parse_from_args(&self.args)
    }
}

impl<T: Table> FromArgMatches for Knobs<T> {
    fn from_arg_matches(m: &ArgMatches) -> std::result::Result<Self, clap::Error> {
        let mut args = Vec::new();
        for spec in T::specs() {
            if m.value_source(spec.name) != Some(ValueSource::CommandLine) {
                continue;
            }
            if let Some(values) = m.get_many::<String>(spec.name) {
                args.extend(values.map(|v| format!("--{}={v}", spec.name)));
            }
        }
        Ok(Knobs {
            args,
            table: PhantomData,
        })
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> std::result::Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl<T: Table> Args for Knobs<T> {
    fn augment_args(cmd: Command) -> Command {
        T::specs()
            .into_iter()
            .fold(cmd, |cmd, spec| cmd.arg(arg(spec)))
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

/// A knob's help on one line, with its default unless the help states it.
fn help_line(spec: &KnobSpec) -> String {
    let help = spec
        .help
        .lines()
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ");
    if spec.default.is_empty() || help.contains("[default") {
        return help;
    }
    format!("{help} [default: {}]", spec.default)
        .trim()
        .to_string()
}

/// Every knob of a table that is read as `--key=value` overrides (`train`), for its help.
pub fn overrides_help<T: Table>() -> String {
    let mut text = String::from("Knobs (config file keys and --key=value overrides):\n");
    for spec in T::specs() {
        text.push_str(&format!("  {:<28} {}\n", spec.name, help_line(&spec)));
    }
    text
}

/// One knob's flag: values are kept as typed, for the table to check.
fn arg(spec: KnobSpec) -> Arg {
    let arg = Arg::new(spec.name).long(spec.name).help(help_line(&spec));
    match spec.kind {
        // `--json` alone, or `--json=false`.
        Kind::Flag => arg
            .num_args(0..=1)
            .default_missing_value("true")
            .action(ArgAction::Set),
        // Values such as -1 or a prompt starting with '-' are values.
        Kind::Value => arg.allow_hyphen_values(true).action(ArgAction::Set),
        Kind::List => arg.allow_hyphen_values(true).action(ArgAction::Append),
    }
}
