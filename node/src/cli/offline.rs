//! `shoal offline ...` and `shoal space ...`: offline download into the user's space on
//! storage, through the daemon.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Subcommand;
use shoal_control::{human_bytes, Client, Source};

#[derive(Debug, Subcommand)]
pub(crate) enum OfflineAction {
    /// Have storage fetch URL into your space (http or https); prints the task id.
    Add {
        /// What to fetch.
        #[arg(required_unless_present = "id", conflicts_with = "id")]
        url: Option<String>,
        /// A resource the tracker knows by this id (its operator's --offline-source ID=URL),
        /// instead of a URL.
        #[arg(long)]
        id: Option<String>,
        /// The name in your space (default: the URL's last path segment).
        #[arg(long)]
        name: Option<String>,
        /// Fetch the segments as storage gets them, into --output, and exit once the whole
        /// file is verified there.
        #[arg(long, requires = "output")]
        follow: bool,
        /// Where --follow puts the file.
        #[arg(short, long, requires = "follow")]
        output: Option<PathBuf>,
        /// Print JSON.
        #[arg(long, env = "SHOAL_JSON")]
        json: bool,
    },
    /// Follow a task already added (on this device or another of yours): fetch its segments
    /// as storage gets them, into --output, until the whole file is verified there. Devices
    /// following the same task take pieces from each other.
    Follow {
        /// The task id.
        task: String,
        /// Where to put the file.
        #[arg(short, long)]
        output: PathBuf,
        /// Print JSON.
        #[arg(long, env = "SHOAL_JSON")]
        json: bool,
    },
    /// List your offline tasks, newest first.
    Ls {
        /// Print JSON.
        #[arg(long, env = "SHOAL_JSON")]
        json: bool,
    },
    /// Print a task's events as they happen, until it ends.
    Watch {
        /// The task id (from `shoal offline add` or `ls`).
        task: String,
        /// One JSON object per line.
        #[arg(long, env = "SHOAL_JSON")]
        json: bool,
    },
    /// Cancel a task; its temporary data is removed.
    Cancel {
        /// The task id.
        task: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum SpaceAction {
    /// List your space on storage.
    Ls {
        /// Print JSON.
        #[arg(long, env = "SHOAL_JSON")]
        json: bool,
    },
    /// Remove an entry (its size no longer counts against your quota).
    Rm {
        /// The entry's name.
        name: String,
    },
    /// Fetch an entry from storage, like `shoal get`.
    Get {
        /// The entry's name.
        name: String,
        /// Where to put the file.
        #[arg(short, long)]
        output: PathBuf,
        /// Print one JSON object with the outcome.
        #[arg(long, env = "SHOAL_JSON")]
        json: bool,
    },
}

fn source<'a>(url: &'a Option<String>, id: &'a Option<String>) -> anyhow::Result<Source<'a>> {
    match (url, id) {
        (Some(u), None) => Ok(Source::Url(u)),
        (None, Some(i)) => Ok(Source::Id(i)),
        _ => bail!("give a URL or --id ID"),
    }
}

fn client(data_dir: &Path) -> anyhow::Result<Client> {
    super::manage_cli::daemon(data_dir)
}

/// Text from storage or an origin, printable (no terminal escapes).
fn esc(s: &str) -> String {
    shoal_core::manifest::escape_name(s)
}

fn print_event(v: &serde_json::Value, json: bool) {
    if json {
        println!("{v}");
        return;
    }
    // Events are the command's output; a failure is the error line the command ends with.
    let n = |k: &str| v[k].as_u64().unwrap_or(0) as f64;
    match v["event"].as_str().unwrap_or("") {
        "accepted" => println!("storage took the task: {}", human_bytes(n("size"))),
        "segment" => println!("segment ready: {} at {}", human_bytes(n("len")), n("offset")),
        "progress" => println!("{} of {}", human_bytes(n("bytes")), human_bytes(n("size"))),
        "restarted" => println!("starting over: {}", esc(v["reason"].as_str().unwrap_or(""))),
        "done" => println!("done: {}", v["content_id"].as_str().unwrap_or("")),
        _ => {}
    }
}

/// The outcome of a follow: its JSON report, or the content id and where the file is.
fn print_followed(
    r: &shoal_control::FollowReport,
    output: &Path,
    json: bool,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(r)?);
    } else {
        println!("{} {}", r.content_id, output.display());
    }
    Ok(())
}

pub(crate) fn offline(data_dir: &Path, action: OfflineAction) -> anyhow::Result<()> {
    let c = client(data_dir)?;
    match action {
        OfflineAction::Add { url, id, name, follow: true, output: Some(output), json } => {
            let output = super::transfer::checked_output(&output)?;
            // With --json the report is the one line on stdout.
            let on_event = |v: &serde_json::Value| {
                if !json {
                    print_event(v, false)
                }
            };
            let report =
                c.offline_follow(&source(&url, &id)?, name.as_deref(), &output, on_event)?;
            print_followed(&report, &output, json)?;
        }
        OfflineAction::Add { url, id, name, json, .. } => {
            let r = c.offline_add(&source(&url, &id)?, name.as_deref())?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!("{}", r.task);
                if r.instant {
                    eprintln!("storage had it already: done");
                }
            }
        }
        OfflineAction::Follow { task, output, json } => {
            let output = super::transfer::checked_output(&output)?;
            let on_event = |v: &serde_json::Value| {
                if !json {
                    print_event(v, false)
                }
            };
            let report = c.offline_follow_task(&task, &output, on_event)?;
            print_followed(&report, &output, json)?;
        }
        OfflineAction::Ls { json } => {
            let tasks = c.offline_ls()?;
            if json {
                println!("{}", serde_json::to_string(&tasks)?);
            }
            for t in tasks.iter().filter(|_| !json) {
                println!(
                    "{}  {:<9} {:>10} / {:<10} {}  {}",
                    t.task,
                    t.state,
                    human_bytes(t.bytes as f64),
                    human_bytes(t.size as f64),
                    esc(&t.name),
                    esc(&t.url)
                );
            }
        }
        OfflineAction::Watch { task, json } => {
            let last = c.offline_watch(&task, |v| print_event(v, json))?;
            if last["event"] == "failed" {
                bail!("task {task} failed: {}", esc(last["reason"].as_str().unwrap_or("")));
            }
        }
        OfflineAction::Cancel { task } => c.offline_cancel(&task)?,
    }
    Ok(())
}

pub(crate) fn space(data_dir: &Path, action: SpaceAction) -> anyhow::Result<()> {
    let c = client(data_dir)?;
    match action {
        SpaceAction::Ls { json } => {
            let s = c.space_ls()?;
            if json {
                println!("{}", serde_json::to_string(&s.entries)?);
            }
            for e in s.entries.iter().filter(|_| !json) {
                println!(
                    "{:<10} {:>10}  {}  {}",
                    e.state,
                    human_bytes(e.size as f64),
                    e.content_id.as_deref().map_or("-", |c| &c[..16]),
                    shoal_core::manifest::escape_name(&e.name)
                );
            }
        }
        SpaceAction::Rm { name } => c.space_rm(&name)?,
        SpaceAction::Get { name, output, json } => {
            let s = c.space_ls()?;
            let entry = s.entries.iter().find(|e| e.name == name).with_context(|| {
                format!("your space has no entry named {name:?} (see `shoal space ls`)")
            })?;
            let Some(content) = &entry.content_id else {
                bail!("{name:?} is still being fetched: wait for it (`shoal offline watch TASK`) or follow it");
            };
            let storage: shoal_core::PeerAddr = s.storage.parse()?;
            let ticket = shoal_core::Ticket {
                peers: vec![storage],
                ..shoal_core::Ticket::new(content.parse()?)
            };
            super::transfer::get(
                data_dir,
                &ticket.to_string(),
                &output,
                Vec::new(),
                None,
                None,
                json,
            )?;
        }
    }
    Ok(())
}
