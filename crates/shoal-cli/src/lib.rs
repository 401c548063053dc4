//! The command-line layer shared by `shoal` and `shoal-tracker`: config files, `--print-config`,
//! shell completions and man pages, generic over any clap derive parser.
//!
//! A binary calls [`parse`] instead of `Parser::parse`. It adds to the binary's own clap
//! command, without a line of code per flag:
//! - `--config FILE` (and an environment variable naming the file) and `--print-config` on one
//!   subcommand (`shoal daemon`, `shoal-tracker serve`). Every long flag of that subcommand, the
//!   global ones included, is a key of the TOML file, named exactly as the flag
//!   (`upload-limit = "20MiB/s"`, `admit-storage = ["id1", "id2"]`, `danger-s3-allow-http =
//!   true`, `node-ttl = 10`). Precedence: flag > environment variable > file > default. A flag
//!   added to the subcommand later is a key at once.
//! - `completions SHELL` and `man [DIR]` subcommands.
//!
//! How the file joins the command line: the command line is parsed once; every arg whose value
//! came from its default (or that is absent) and that the file sets is appended to the command
//! line as `--key=value`, and the whole is parsed again, so clap's own value parsers, conflicts
//! and `FromArgMatches` do the rest ([`file`]). `--print-config` renders the merged matches back
//! as TOML that `--config` accepts ([`print`]).
//!
//! Entry points: [`parse`] (exits like clap on errors and after printing), [`parse_from`] (for
//! tests), [`command`] (the augmented command).

#![warn(missing_docs)]

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Arg, ArgAction, ArgMatches, Command, Parser};

mod docs;
pub mod file;
pub mod print;

/// What a binary tells [`parse`] about where its config file goes.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// The subcommand that takes `--config` and `--print-config`, like `daemon`.
    pub subcommand: &'static str,
    /// The environment variable naming the config file, like `SHOAL_CONFIG`.
    pub config_env: &'static str,
}

/// The outcome of [`parse_from`].
#[derive(Debug)]
#[non_exhaustive]
pub enum Parsed<P> {
    /// Run the program with these arguments.
    Run(P),
    /// Print this on stdout and exit successfully (`--print-config`, `completions`, `man`).
    Print(String),
}

/// Why the command line (with its config file) cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The command line itself is wrong, or asks for help or the version: clap's own error.
    #[error(transparent)]
    Clap(#[from] clap::Error),
    /// The config file is wrong.
    #[error(transparent)]
    File(#[from] file::FileError),
    /// The effective configuration cannot be written as TOML.
    #[error(transparent)]
    Print(#[from] print::PrintError),
    /// `man DIR` could not write a page.
    #[error("cannot write man pages into {dir}: {source} (does the directory exist?)")]
    Man {
        /// The directory.
        dir: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
}

/// Long flag of the `--config` arg added to the spec's subcommand.
const CONFIG: &str = "config";
/// Long flag of the `--print-config` arg added to the spec's subcommand.
const PRINT_CONFIG: &str = "print-config";
/// Ids of the args this crate adds: apart from any id of the binary's own (global ones
/// propagate into every subcommand, and ids must be unique there).
const CONFIG_ID: &str = "shoal-cli.config";
const PRINT_CONFIG_ID: &str = "shoal-cli.print-config";

/// The parser's command with `--config`, `--print-config`, `completions` and `man` added.
///
/// # Panics
/// If the parser has no subcommand named `spec.subcommand`: a mistake in the binary, caught
/// by its first run in any test.
pub fn command<P: Parser>(spec: &Spec) -> Command {
    let name = spec.subcommand;
    let cmd = P::command();
    let program = cmd.get_name().to_string();
    cmd.mut_subcommand(name, |c| {
        c.arg(
            Arg::new(CONFIG_ID)
                .long(CONFIG)
                .env(spec.config_env)
                .value_name("FILE")
                .value_parser(clap::value_parser!(PathBuf))
                .help(format!(
                    "Read settings from this TOML file: every flag of `{name}` is a key \
                         (like upload-limit = \"20MiB/s\"); flags and environment variables \
                         override it."
                )),
        )
        // No environment variable on purpose: one left in a service's environment would
        // make the daemon print and exit instead of running.
        .arg(Arg::new(PRINT_CONFIG_ID).long(PRINT_CONFIG).action(ArgAction::SetTrue).help(
            "Print the effective settings (flags, environment, config file and \
                         defaults merged) as TOML that --config accepts, then exit.",
        ))
    })
    .subcommand(docs::completions_command(&program))
    .subcommand(docs::man_command())
}

/// Parses the process's command line like `P::parse()`, with the config file and the added
/// subcommands. Prints and exits with status 0 for `--print-config`, `completions` and `man`;
/// prints one line and exits with status 2 on a bad command line or config file.
pub fn parse<P: Parser>(spec: &Spec) -> P {
    match parse_from(spec, std::env::args_os()) {
        Ok(Parsed::Run(p)) => p,
        Ok(Parsed::Print(text)) => {
            print!("{text}");
            std::process::exit(0)
        }
        Err(Error::Clap(e)) => e.exit(),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2)
        }
    }
}

/// Parses `args` (the program name first) as [`parse`] does, without printing or exiting.
pub fn parse_from<P, I, T>(spec: &Spec, args: I) -> Result<Parsed<P>, Error>
where
    P: Parser,
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let mut cmd = command::<P>(spec);
    let mut matches = cmd.clone().try_get_matches_from(&args)?;
    match matches.subcommand() {
        Some((docs::COMPLETIONS, m)) => return Ok(Parsed::Print(docs::completions(&mut cmd, m))),
        Some((docs::MAN, m)) => return docs::man(cmd, m).map(Parsed::Print),
        _ => {}
    }
    if let Some(sub) = subcommand_matches(&matches, spec.subcommand) {
        if let Some(path) = sub.get_one::<PathBuf>(CONFIG_ID).cloned() {
            cmd.build();
            let sub_cmd = find_subcommand(&cmd, spec.subcommand);
            let table = file::read(&path)?;
            let extra = file::to_args(&path, sub_cmd, sub, &table)?;
            if !extra.is_empty() {
                let merged: Vec<OsString> = args.iter().cloned().chain(extra).collect();
                matches = cmd
                    .clone()
                    .try_get_matches_from(merged)
                    .map_err(|e| file::FileError::from_clap(&path, &e))?;
            }
        }
        if let Some(sub) = subcommand_matches(&matches, spec.subcommand) {
            if sub.get_flag(PRINT_CONFIG_ID) {
                cmd.build();
                let sub_cmd = find_subcommand(&cmd, spec.subcommand);
                let title = format!("{} {}", cmd.get_name(), spec.subcommand);
                return Ok(Parsed::Print(print::render(&title, sub_cmd, sub)?));
            }
        }
    }
    Ok(Parsed::Run(P::from_arg_matches(&matches)?))
}

/// The matches of the spec's subcommand, if that is the one invoked.
fn subcommand_matches<'a>(matches: &'a ArgMatches, name: &str) -> Option<&'a ArgMatches> {
    matches.subcommand().filter(|(n, _)| *n == name).map(|(_, m)| m)
}

/// The built subcommand `name` of `cmd` (it exists: [`command`] added args to it).
fn find_subcommand<'a>(cmd: &'a Command, name: &str) -> &'a Command {
    cmd.get_subcommands().find(|c| c.get_name() == name).unwrap_or(cmd)
}

/// True for the args that are settings: ones with a long flag, other than those this crate
/// adds and clap's own help and version.
fn is_setting(arg: &Arg) -> bool {
    match arg.get_long() {
        None => false,
        Some(long) => {
            ![CONFIG, PRINT_CONFIG].contains(&long)
                && !matches!(arg.get_action(), ArgAction::Help | ArgAction::HelpShort)
                && !matches!(arg.get_action(), ArgAction::HelpLong | ArgAction::Version)
        }
    }
}

#[cfg(test)]
mod tests;
