//! The effective settings of a subcommand written as TOML that `--config` reads back.

use std::fmt::Write as _;

use clap::{ArgMatches, Command};
use toml::Value;

use crate::file::{settings, Kind, Scalar};

/// Why the settings cannot be written as TOML.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PrintError {
    /// A value is not UTF-8 (a path, most likely), which TOML cannot hold.
    #[error("`{key}` is not UTF-8, which a TOML config file cannot hold: {value}")]
    NotUtf8 {
        /// The key.
        key: String,
        /// The value, with the bad bytes replaced.
        value: String,
    },
}

/// Renders every setting of `cmd` (a built subcommand) with its value in `matches`, each after
/// its help as a comment; a setting without a value is a comment. `title` names the command in
/// the header.
pub fn render(title: &str, cmd: &Command, matches: &ArgMatches) -> Result<String, PrintError> {
    let mut out = format!(
        "# Effective settings of `{title}`: flags, environment, config file and defaults merged.\n\
         # Pass this file back with --config FILE.\n"
    );
    for (key, arg) in settings(cmd) {
        out.push('\n');
        let help = arg.get_long_help().or(arg.get_help()).map(|h| h.to_string());
        for line in wrap(help.as_deref().unwrap_or_default(), 96) {
            let _ = writeln!(out, "# {line}");
        }
        match value(key, Kind::of(arg), matches, arg.get_id().as_str())? {
            Some(v) => {
                let _ = writeln!(out, "{key} = {v}");
            }
            None => {
                let _ = writeln!(out, "# {key}: not set");
            }
        }
    }
    Ok(out)
}

/// The TOML value of one setting, `None` where it has none.
fn value(
    key: &str,
    kind: Kind,
    matches: &ArgMatches,
    id: &str,
) -> Result<Option<Value>, PrintError> {
    match kind {
        Kind::Switch(_) => {
            Ok(matches.try_get_one::<bool>(id).ok().flatten().map(|b| Value::Boolean(*b)))
        }
        Kind::Count => {
            Ok(matches.try_get_one::<u8>(id).ok().flatten().map(|n| Value::Integer(i64::from(*n))))
        }
        Kind::One(s) | Kind::Many(s) => {
            let Some(raw) = matches.get_raw(id) else { return Ok(None) };
            let items = raw.map(|v| scalar(key, s, v)).collect::<Result<Vec<_>, _>>()?;
            Ok(match kind {
                Kind::Many(_) => Some(Value::Array(items)),
                _ => items.into_iter().next(),
            })
        }
    }
}

/// One raw value as a TOML value of type `s`.
fn scalar(key: &str, s: Scalar, raw: &std::ffi::OsStr) -> Result<Value, PrintError> {
    let text = raw.to_str().ok_or_else(|| PrintError::NotUtf8 {
        key: key.into(),
        value: raw.to_string_lossy().into_owned(),
    })?;
    // A number where the text is one: a custom parser of a numeric arg may take other text.
    let number = match s {
        Scalar::Integer => text.parse().ok().map(Value::Integer),
        Scalar::Float => text.parse().ok().map(Value::Float),
        Scalar::Boolean => text.parse().ok().map(Value::Boolean),
        Scalar::String => None,
    };
    Ok(number.unwrap_or_else(|| Value::String(text.to_string())))
}

/// Splits text into lines of at most `width` characters, at spaces.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    for paragraph in text.lines() {
        let mut line = String::new();
        for word in paragraph.split_whitespace() {
            if !line.is_empty() && line.len() + 1 + word.len() > width {
                lines.push(std::mem::take(&mut line));
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
        lines.push(line);
    }
    lines
}
