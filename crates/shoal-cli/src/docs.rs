//! The `completions SHELL` and `man [DIR]` subcommands, generated from the command itself.

use std::path::{Path, PathBuf};

use clap::{Arg, ArgMatches, Command};
use clap_complete::Shell;

use crate::Error;

/// Name of the completions subcommand.
pub(crate) const COMPLETIONS: &str = "completions";
/// Name of the man subcommand.
pub(crate) const MAN: &str = "man";
/// Ids of the subcommands' args: apart from the binary's global args, which propagate here.
const SHELL_ID: &str = "shoal-cli.shell";
const DIR_ID: &str = "shoal-cli.dir";

/// The completions subcommand of the program `name`.
pub(crate) fn completions_command(name: &str) -> Command {
    Command::new(COMPLETIONS)
        .about(format!("Print a shell completion script, like: source <({name} completions bash)"))
        .arg(
            Arg::new(SHELL_ID)
                .required(true)
                .value_name("SHELL")
                .value_parser(clap::value_parser!(Shell))
                .help("The shell: bash, elvish, fish, powershell or zsh."),
        )
}

pub(crate) fn man_command() -> Command {
    Command::new(MAN)
        .about("Print the man page (roff), or write one page per subcommand into DIR")
        .arg(
            Arg::new(DIR_ID)
                .value_name("DIR")
                .value_parser(clap::value_parser!(PathBuf))
                .help("Write NAME.1, NAME-SUBCOMMAND.1, ... into this existing directory."),
        )
}

/// The completion script for the shell in `m`.
pub(crate) fn completions(cmd: &mut Command, m: &ArgMatches) -> String {
    // The arg is required and parsed as a Shell, so it is there.
    let shell = m.get_one::<Shell>(SHELL_ID).copied().unwrap_or(Shell::Bash);
    let name = cmd.get_name().to_string();
    let mut out = Vec::new();
    clap_complete::generate(shell, cmd, name, &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// The top page as roff, or the list of pages written into the directory in `m`.
pub(crate) fn man(cmd: Command, m: &ArgMatches) -> Result<String, Error> {
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let Some(dir) = m.get_one::<PathBuf>(DIR_ID) else {
        let mut out = Vec::new();
        // Writing into a Vec does not fail.
        let _ = clap_mangen::Man::new(cmd).render(&mut out);
        return Ok(String::from_utf8_lossy(&out).into_owned());
    };
    let mut written = Vec::new();
    write_pages(&cmd, dir, &mut written)
        .map_err(|source| Error::Man { dir: dir.clone(), source })?;
    Ok(written.iter().map(|p| format!("{}\n", p.display())).collect())
}

/// Writes the page of `cmd` and of each of its visible subcommands, depth first.
fn write_pages(cmd: &Command, dir: &Path, written: &mut Vec<PathBuf>) -> std::io::Result<()> {
    written.push(clap_mangen::Man::new(cmd.clone()).generate_to(dir)?);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub, dir, written)?;
    }
    Ok(())
}
