//! A TOML config file turned into command-line arguments for one clap subcommand.
//!
//! Every long flag of the subcommand is a key. Its TOML shape follows from the arg itself
//! ([`Kind::of`]): a boolean for a switch, an array for a repeatable arg (a single value is
//! taken as an array of one), one value otherwise. A value may be any TOML scalar (`node-ttl =
//! 10`, `upload-limit = "20MiB/s"`): the flag's own parser reads its text, so a value it
//! refuses is refused as on the command line, naming the key. `--print-config` writes numbers
//! as numbers where the arg's parser yields one ([`Scalar`]).
//! A key is turned into `--key=value` arguments only where the command line and the
//! environment left the arg at its default, which gives flag > environment > file > default.

use std::any::TypeId;
use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command};
use toml::{Table, Value};

/// The largest config file read: a real one is a few KiB.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Why a config file cannot be used. Each message names the file, and the key where one is at
/// fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileError {
    /// The file cannot be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_FILE_BYTES`].
    #[error("config file {path} is larger than {} KiB: is it the right file?", MAX_FILE_BYTES / 1024)]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// The file is not TOML.
    #[error("config file {path} is not valid TOML at line {line}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The line (from 1) where parsing failed.
        line: usize,
        /// The parser's message.
        message: String,
    },
    /// A key that is no flag of the command.
    #[error("config file {path}: unknown key `{key}`{}", hint(suggestion.as_deref()))]
    UnknownKey {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// The closest known key, if one is close.
        suggestion: Option<String>,
    },
    /// A value of the wrong TOML type.
    #[error("config file {path}: `{key}` must be {expected}, not {found}")]
    Type {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What the key takes, like `a string (like "20MiB/s")`.
        expected: String,
        /// The TOML type found.
        found: &'static str,
    },
    /// A value the flag's parser refuses.
    #[error("config file {path}: `{key}` = {value:?}: {message}")]
    Value {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// The value as passed to the flag.
        value: String,
        /// The parser's reason.
        message: String,
    },
    /// The file's settings do not go together with each other or with the command line.
    #[error("config file {path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// clap's reason.
        message: String,
    },
}

fn hint(suggestion: Option<&str>) -> String {
    match suggestion {
        Some(s) => format!(" (did you mean `{s}`?)"),
        None => " (keys are the long flags of the command, without the dashes)".to_string(),
    }
}

impl FileError {
    /// The error of a parse that failed only because of arguments taken from the file at
    /// `path` (the command line alone parsed), as one line naming the key where clap names one.
    pub fn from_clap(path: &Path, e: &clap::Error) -> Self {
        use clap::error::{ContextKind, ContextValue};
        let context = |kind| match e.get(kind) {
            Some(ContextValue::String(s)) => Some(s.clone()),
            _ => None,
        };
        let arg = context(ContextKind::InvalidArg);
        let value = context(ContextKind::InvalidValue);
        if let (Some(arg), Some(value)) = (arg, value) {
            // "--upload-limit <UPLOAD_LIMIT>": the key is the flag without dashes and value name.
            let key = arg.trim_start_matches('-').split([' ', '=']).next().unwrap_or_default();
            let message = match std::error::Error::source(e) {
                Some(source) => source.to_string(),
                None => first_line(e),
            };
            return FileError::Value { path: path.into(), key: key.into(), value, message };
        }
        FileError::Invalid { path: path.into(), message: first_line(e) }
    }
}

/// The first line of clap's rendered error, without its `error: ` prefix.
fn first_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let line = text.lines().next().unwrap_or_default();
    line.strip_prefix("error: ").unwrap_or(line).to_string()
}

/// Reads and parses the config file (at most [`MAX_FILE_BYTES`]).
pub fn read(path: &Path) -> Result<Table, FileError> {
    let read_err = |source| FileError::Read { path: path.into(), source };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut text = String::new();
    file.take(MAX_FILE_BYTES + 1).read_to_string(&mut text).map_err(read_err)?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(FileError::TooLarge { path: path.into() });
    }
    parse(path, &text)
}

/// Parses config text (`path` only names it in errors).
pub fn parse(path: &Path, text: &str) -> Result<Table, FileError> {
    text.parse::<Table>().map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start).min(text.len());
        let line = text.as_bytes()[..offset].iter().filter(|&&b| b == b'\n').count() + 1;
        FileError::Syntax { path: path.into(), line, message: e.message().trim().to_string() }
    })
}

/// The TOML type `--print-config` writes a value of an arg as (where its text is one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scalar {
    /// A TOML integer.
    Integer,
    /// A TOML float.
    Float,
    /// A TOML boolean.
    Boolean,
    /// A TOML string.
    String,
}

/// What a key takes, derived from its arg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A switch (`--flag`): a boolean; the flag is passed when the boolean equals this.
    Switch(bool),
    /// A counted flag (`-vvv`): an integer, the number of times.
    Count,
    /// One value.
    One(Scalar),
    /// Several values (a repeatable flag): an array.
    Many(Scalar),
}

impl Kind {
    /// The kind of `arg` (of a built command).
    pub fn of(arg: &Arg) -> Kind {
        match arg.get_action() {
            ArgAction::SetTrue => return Kind::Switch(true),
            ArgAction::SetFalse => return Kind::Switch(false),
            ArgAction::Count => return Kind::Count,
            _ => {}
        }
        let id = arg.get_value_parser().type_id();
        let is = |t: TypeId| id == t;
        let scalar = if [
            TypeId::of::<u8>(),
            TypeId::of::<u16>(),
            TypeId::of::<u32>(),
            TypeId::of::<u64>(),
            TypeId::of::<usize>(),
            TypeId::of::<i8>(),
            TypeId::of::<i16>(),
            TypeId::of::<i32>(),
            TypeId::of::<i64>(),
            TypeId::of::<isize>(),
        ]
        .into_iter()
        .any(is)
        {
            Scalar::Integer
        } else if is(TypeId::of::<f64>()) || is(TypeId::of::<f32>()) {
            Scalar::Float
        } else if is(TypeId::of::<bool>()) {
            Scalar::Boolean
        } else {
            Scalar::String
        };
        let many = matches!(arg.get_action(), ArgAction::Append)
            || arg.get_num_args().is_some_and(|r| r.max_values() > 1);
        if many {
            Kind::Many(scalar)
        } else {
            Kind::One(scalar)
        }
    }

    /// What the kind takes, for error messages, with an example line for `key`.
    fn expected(self, key: &str) -> String {
        match self {
            Kind::Switch(_) => format!("true or false (like {key} = true)"),
            Kind::Count => format!("a whole number (like {key} = 2)"),
            Kind::One(s) => format!("{} (like {key} = {})", s.name(), s.example()),
            Kind::Many(s) => {
                format!("an array of {}s (like {key} = [{}])", s.name_bare(), s.example())
            }
        }
    }
}

impl Scalar {
    fn name(self) -> &'static str {
        match self {
            Scalar::Integer => "a whole number",
            Scalar::Float => "a number",
            Scalar::Boolean => "true or false",
            Scalar::String => "a string",
        }
    }

    fn name_bare(self) -> &'static str {
        match self {
            Scalar::Integer => "whole number",
            Scalar::Float => "number",
            Scalar::Boolean => "boolean",
            Scalar::String => "string",
        }
    }

    fn example(self) -> &'static str {
        match self {
            Scalar::Integer => "10",
            Scalar::Float => "0.5",
            Scalar::Boolean => "true",
            Scalar::String => "\"...\"",
        }
    }

    /// The value as the flag's argument. Any TOML scalar is taken, whatever the arg's type:
    /// a custom parser may read numbers from strings (`"20MiB/s"` into a `u64`), and the
    /// flag's own parser judges the text after all, naming the key if it refuses it.
    fn arg_value(v: &Value) -> Option<String> {
        match v {
            Value::Integer(i) => Some(i.to_string()),
            Value::Float(f) => Some(f.to_string()),
            Value::Boolean(b) => Some(b.to_string()),
            Value::String(s) => Some(s.clone()),
            Value::Datetime(_) | Value::Array(_) | Value::Table(_) => None,
        }
    }
}

/// The name of a TOML value's type, for error messages.
fn type_name(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "a whole number",
        Value::Float(_) => "a fractional number",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date",
        Value::Array(_) => "an array",
        Value::Table(_) => "a table",
    }
}

/// The setting args of `cmd` (a built command), keyed by long flag.
pub fn settings(cmd: &Command) -> impl Iterator<Item = (&str, &Arg)> {
    cmd.get_arguments().filter(|a| crate::is_setting(a)).filter_map(|a| Some((a.get_long()?, a)))
}

/// The `--key=value` arguments that bring the file's settings into a command line whose
/// matches are `matches`: only for the args the command line and environment left at their
/// default. `cmd` is the built subcommand; `path` names the file in errors.
pub fn to_args(
    path: &Path,
    cmd: &Command,
    matches: &ArgMatches,
    table: &Table,
) -> Result<Vec<OsString>, FileError> {
    let mut out = Vec::new();
    for (key, value) in table {
        let Some((_, arg)) = settings(cmd).find(|(k, _)| k == key) else {
            let known: Vec<&str> = settings(cmd).map(|(k, _)| k).collect();
            return Err(FileError::UnknownKey {
                path: path.into(),
                key: key.clone(),
                suggestion: closest(key, &known).map(str::to_string),
            });
        };
        let kind = Kind::of(arg);
        let values = values(kind, value).ok_or_else(|| FileError::Type {
            path: path.into(),
            key: key.clone(),
            expected: kind.expected(key),
            found: type_name(value),
        })?;
        let from_default = matches!(
            matches.value_source(arg.get_id().as_str()),
            None | Some(ValueSource::DefaultValue)
        );
        if !from_default {
            continue;
        }
        for v in values {
            out.push(match v {
                Some(v) => format!("--{key}={v}").into(),
                None => format!("--{key}").into(),
            });
        }
    }
    Ok(out)
}

/// The arguments of one key, each `Some(value)` for `--key=value` or `None` for a bare `--key`;
/// `None` if the TOML value is not of the kind's type.
fn values(kind: Kind, value: &Value) -> Option<Vec<Option<String>>> {
    match kind {
        Kind::Switch(when) => match value {
            Value::Boolean(b) if *b == when => Some(vec![None]),
            Value::Boolean(_) => Some(vec![]),
            _ => None,
        },
        Kind::Count => match value {
            Value::Integer(n) if (0..=255).contains(n) => Some(vec![None; *n as usize]),
            _ => None,
        },
        Kind::One(_) => Some(vec![Some(Scalar::arg_value(value)?)]),
        Kind::Many(_) => match value {
            Value::Array(items) => items.iter().map(|v| Scalar::arg_value(v).map(Some)).collect(),
            v => Some(vec![Some(Scalar::arg_value(v)?)]),
        },
    }
}

/// The known key closest to `key` by edit distance, if it is close enough to be a typo.
pub fn closest<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
    let best = known.iter().map(|k| (distance(key, k), *k)).min()?;
    (best.0 <= 2.max(key.len() / 3)).then_some(best.1)
}

/// Levenshtein distance between two short strings.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}
