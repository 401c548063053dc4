//! `shoal add`, `get`, `push`, `ls` and `status`: through the daemon, or (`get`, `ls`)
//! standalone on the data dir.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use shoal_control::{human_bytes, FetchReport, GetBody, LsEntry, Progress, Rate};
use shoal_core::{PeerAddr, Ticket};
use shoal_node::config::NodeConfig;
use shoal_node::fetch::FetchRequest;
use shoal_node::node::Node;

use super::{absolute, runtime};

pub(crate) fn add(data_dir: &Path, path: &Path, qr: bool) -> anyhow::Result<()> {
    let path =
        std::fs::canonicalize(path).with_context(|| format!("cannot read {}", path.display()))?;
    let md = std::fs::metadata(&path).with_context(|| format!("cannot read {}", path.display()))?;
    if !md.is_file() {
        bail!("{} is not a regular file: shoal shares single files", path.display());
    }
    std::fs::File::open(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let client = super::manage_cli::daemon(data_dir)?;
    let reply = client.add(&path)?;
    println!("{}", reply.ticket);
    if qr {
        let code = qrcode::QrCode::new(reply.ticket.to_ascii_uppercase().as_bytes())
            .context("ticket too long for a QR code")?;
        let image = code
            .render::<qrcode::render::unicode::Dense1x2>()
            .dark_color(qrcode::render::unicode::Dense1x2::Light)
            .light_color(qrcode::render::unicode::Dense1x2::Dark)
            .build();
        eprintln!("{image}");
    }
    Ok(())
}

/// Renders progress: a bar on a terminal, a plain line a second otherwise.
pub(crate) struct ProgressView {
    bar: Option<indicatif::ProgressBar>,
    last: Option<Instant>,
    warned: Option<String>,
}

impl ProgressView {
    fn new() -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} [{wide_bar}] {pos}/{len} pieces  {msg}  eta {eta}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar
        });
        Self { bar, last: None, warned: None }
    }

    fn update(&mut self, p: &Progress) {
        if p.warning.is_some() && p.warning != self.warned {
            self.warned = p.warning.clone();
            let line = format!("warning: {}", p.warning.as_deref().unwrap_or_default());
            match &self.bar {
                Some(bar) => bar.println(line),
                None => eprintln!("{line}"),
            }
        }
        if let Some(bar) = &self.bar {
            bar.set_length(u64::from(p.pieces_total));
            bar.set_position(u64::from(p.pieces_done));
            bar.set_message(format!("{}/s, {} peers", human_bytes(p.rate), p.peers));
            return;
        }
        let due = self.last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
        if due || p.pieces_done == p.pieces_total {
            self.last = Some(Instant::now());
            let pct = if p.pieces_total == 0 {
                100.0
            } else {
                100.0 * f64::from(p.pieces_done) / f64::from(p.pieces_total)
            };
            let eta = if p.rate > 0.0 {
                format!("{:.0}s", (p.size - p.bytes_done) as f64 / p.rate)
            } else {
                "?".into()
            };
            eprintln!(
                "progress: {}/{} pieces ({pct:.1}%), {}/s, {} peers, eta {eta}",
                p.pieces_done,
                p.pieces_total,
                human_bytes(p.rate),
                p.peers
            );
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// An output path made absolute, in an existing directory, and not there yet.
pub(crate) fn checked_output(output: &Path) -> anyhow::Result<PathBuf> {
    let output = absolute(output)?;
    if let Some(dir) = output.parent() {
        if !dir.is_dir() {
            bail!(
                "directory {} does not exist: create it or choose another output path",
                dir.display()
            );
        }
    }
    if output.symlink_metadata().is_ok() {
        bail!("{} already exists: remove it or choose another output path", output.display());
    }
    Ok(output)
}

/// A ticket as typed, or one line naming what is wrong with it (showing only its start).
pub(crate) fn parse_ticket(ticket: &str) -> anyhow::Result<Ticket> {
    let shown: String = ticket.chars().take(12).collect();
    ticket.parse().map_err(|e| anyhow::anyhow!("cannot read ticket \"{shown}..\": {e}"))
}

pub(crate) fn get(
    data_dir: &Path,
    ticket: &str,
    output: &Path,
    peers: Vec<PeerAddr>,
    limit: Option<Rate>,
    tracker: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let parsed = parse_ticket(ticket)?;
    let output = checked_output(output)?;
    let mut view = ProgressView::new();
    let body = GetBody {
        ticket: ticket.trim().to_string(),
        output: output.clone(),
        peers: peers.iter().map(|p| p.to_string()).collect(),
        limit: limit.map(|r| r.0),
        tracker: tracker.clone(),
    };
    let report = match super::manage_cli::daemon_if_running(data_dir)? {
        Some(client) => client.get(&body, |p| view.update(p)).map_err(anyhow::Error::from),
        None => match get_standalone(data_dir, parsed, output, peers, limit, tracker, &mut view) {
            // A daemon took the data dir in the instant between looking and opening it.
            Err(e) if super::manage_cli::in_use(&e) => super::manage_cli::after_in_use(data_dir, e)
                .and_then(|c| Ok(c.get(&body, |p| view.update(p))?)),
            r => r,
        },
    };
    view.finish();
    let report = report?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_report(&report);
    }
    Ok(())
}

pub(crate) fn get_standalone(
    data_dir: &Path,
    ticket: Ticket,
    output: PathBuf,
    extra_peers: Vec<PeerAddr>,
    limit: Option<Rate>,
    tracker: Option<String>,
    view: &mut ProgressView,
) -> anyhow::Result<FetchReport> {
    runtime()?.block_on(async {
        let node = Node::open(&NodeConfig::new(data_dir.to_path_buf()))?;
        // Serve what we verify while we fetch.
        shoal_node::daemon::start(&node);
        let (ptx, mut prx) = tokio::sync::watch::channel(Progress::default());
        let req = FetchRequest { ticket, extra_peers, output, limit: limit.map(|r| r.0), tracker };
        let fut = shoal_node::fetch::fetch(node.clone(), req, ptx);
        tokio::pin!(fut);
        let result = loop {
            tokio::select! {
                r = &mut fut => break r,
                Ok(()) = prx.changed() => view.update(&prx.borrow_and_update().clone()),
            }
        };
        node.close().await;
        result
    })
}

pub(crate) fn print_report(r: &FetchReport) {
    let rate = r.downloaded_bytes as f64 / r.seconds.max(1e-9);
    let used = r.peers.iter().filter(|p| p.pieces > 0).count();
    println!(
        "fetched {} ({}) to {} in {:.1}s ({}/s from {used} peers, {} bad pieces{})",
        r.content_id.get(..12).unwrap_or(&r.content_id),
        human_bytes(r.size as f64),
        r.path,
        r.seconds,
        human_bytes(rate),
        r.bad_pieces,
        if r.resumed_pieces > 0 {
            format!(", {} pieces resumed", r.resumed_pieces)
        } else {
            String::new()
        }
    );
    for p in r.peers.iter().filter(|p| p.banned) {
        println!("banned {} at {} for sending bad data", p.node_id, p.addr);
    }
}

pub(crate) fn push(data_dir: &Path, target: &str, json: bool) -> anyhow::Result<()> {
    let target = if target.parse::<shoal_core::ContentId>().is_ok() {
        target.to_string()
    } else {
        let p = std::fs::canonicalize(target).with_context(|| format!("cannot read {target}"))?;
        p.display().to_string()
    };
    let client = super::manage_cli::daemon(data_dir)?;
    let r = client.push(&target)?;
    if json {
        println!("{}", serde_json::to_string(&r)?);
    } else if r.already_stored {
        println!(
            "already stored: {} ({}), nothing sent",
            &r.content_id[..12],
            human_bytes(r.size as f64)
        );
    } else {
        println!(
            "pushed {} of {} ({}) in {:.1}s; {}",
            human_bytes(r.pushed_bytes as f64),
            &r.content_id[..12],
            human_bytes(r.size as f64),
            r.seconds,
            if r.stored { "stored" } else { "storage still lacks pieces this node does not hold" }
        );
    }
    Ok(())
}

pub(crate) fn ls(data_dir: &Path, json: bool) -> anyhow::Result<()> {
    let entries: Vec<LsEntry> = match super::manage_cli::daemon_if_running(data_dir)? {
        Some(c) => c.ls()?,
        None => super::manage_cli::ls_standalone(data_dir)?,
    };
    if json {
        println!("{}", serde_json::to_string(&entries)?);
        return Ok(());
    }
    for e in &entries {
        let state = match e.state.as_str() {
            "partial" if e.pieces_total > 0 => {
                format!(
                    "partial {:.1}%",
                    100.0 * f64::from(e.pieces_have) / f64::from(e.pieces_total)
                )
            }
            s => s.to_string(),
        };
        println!(
            "{}  {:<16} {:>10}  {}",
            e.content_id,
            state,
            human_bytes(e.size as f64),
            shoal_core::manifest::escape_name(&e.name)
        );
    }
    Ok(())
}

pub(crate) fn status(data_dir: &Path, json: bool) -> anyhow::Result<()> {
    let client = super::manage_cli::daemon(data_dir)?;
    let s = client.status()?;
    if json {
        println!("{}", serde_json::to_string(&s)?);
    } else {
        println!("{} {}", s.role, s.node_id);
        println!("addresses {}", s.addrs.join(", "));
        println!(
            "uploaded {} ({} pieces)",
            human_bytes(s.uploaded_bytes as f64),
            s.pieces_uploaded
        );
        println!(
            "downloaded {} ({} bad pieces)",
            human_bytes(s.downloaded_bytes as f64),
            s.bad_pieces
        );
        println!(
            "pushed {} into storage; {} pushes refused",
            human_bytes(s.pushed_bytes as f64),
            s.pushes_refused
        );
        for c in &s.contents {
            println!(
                "{}  {:<15}{:<7} {:>5}/{:<5} pieces  {:>3} peers  uploaded {:>10}  {}",
                &c.content_id[..16],
                c.state,
                if c.stored { " stored" } else { "" },
                c.pieces_have,
                c.pieces_total,
                c.peers,
                human_bytes(c.uploaded_bytes as f64),
                shoal_core::manifest::escape_name(&c.name)
            );
        }
    }
    Ok(())
}
