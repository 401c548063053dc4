//! Adversaries: hostile clients run inside `shoal-testnet` against the honest processes of a
//! scenario, as raw protocol clients (built on `shoal-wire` and `shoal-net`, not the node
//! library), each a tokio task bounded in count and in time that stops by itself.
//!
//! The roles (keys of a scenario's `[adversaries]` table; see `scenario.rs`):
//! - `sybils`: fresh ed25519 ids that register at the tracker and announce a fabricated
//!   content each (uploading its manifest when asked) and a full bitfield of the real one
//!   ([`sybil`]);
//! - `storage_claims`: ids that register *as storage* through the tracker protocol, claim the
//!   real content complete, and never serve it ([`silent`] with the storage role); the
//!   `fake_storage` key starts real `shoal daemon --role storage` processes the tracker was not
//!   told to admit (the scenario launches those);
//! - `slow_readers`: clients that request pieces of every honest node and read them at a
//!   trickle ([`slow`]);
//! - `silent_peers`: ids that register, announce a full bitfield of the real content, accept
//!   peer connections and streams, and never answer ([`silent`]);
//! - `push_squatter`: pushes the seed's manifest into storage before the seed does, then its
//!   own junk content and pieces of the real one without any right ([`squat`]);
//! - `flooders`: clients that flood every honest node with request streams for random
//!   contents, out-of-range pieces, push bodies that never come, and subscriptions
//!   ([`flood`]).
//!
//! Refusals (rejects, rate limits, closed connections, silence) are the expected outcome and
//! are only counted. What an adversary got accepted is counted too, for the report.

mod client;
mod flood;
mod silent;
mod slow;
mod squat;
mod sybil;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use shoal_core::manifest::Manifest;
use shoal_core::{ContentId, PeerAddr};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The most of each role a scenario may ask for: the testnet shares its machine with the
/// processes it measures.
const MAX_PER_ROLE: usize = 64;
/// The most sybil ids a scenario may ask for.
const MAX_SYBILS: usize = 10_000;
/// The longest an adversary runs.
const MAX_SECONDS: f64 = 120.0;
/// How long [`Adversaries::finish`] waits, for all of them together, for the adversaries to
/// stop by themselves once told to.
const STOP_WAIT: Duration = Duration::from_secs(10);

/// The `[adversaries]` table of a scenario. Every key defaults to none.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// Fresh ids registering and announcing at the tracker (at most 10,000).
    #[serde(default)]
    pub(crate) sybils: usize,
    /// Real `shoal daemon --role storage` processes the tracker does not admit.
    #[serde(default)]
    pub(crate) fake_storage: usize,
    /// In-process ids registering as storage and claiming the content.
    #[serde(default)]
    pub(crate) storage_claims: usize,
    /// Clients reading pieces at a trickle.
    #[serde(default)]
    pub(crate) slow_readers: usize,
    /// Ids that announce the content and never answer.
    #[serde(default)]
    pub(crate) silent_peers: usize,
    /// One client squatting storage.
    #[serde(default)]
    pub(crate) push_squatter: bool,
    /// Clients flooding honest nodes with requests.
    #[serde(default)]
    pub(crate) flooders: usize,
    /// How long each adversary runs at most, in seconds (default 60, at most 120); all stop
    /// as soon as every honest fetch is over.
    pub(crate) seconds: Option<f64>,
}

impl Config {
    /// Whether the scenario has any adversary.
    pub(crate) fn any(&self) -> bool {
        self.sybils > 0
            || self.fake_storage > 0
            || self.storage_claims > 0
            || self.slow_readers > 0
            || self.silent_peers > 0
            || self.push_squatter
            || self.flooders > 0
    }

    /// Refuses counts the testnet cannot run alongside what it measures.
    pub(crate) fn validate(&self) -> anyhow::Result<()> {
        let roles = [
            ("fake_storage", self.fake_storage),
            ("storage_claims", self.storage_claims),
            ("slow_readers", self.slow_readers),
            ("silent_peers", self.silent_peers),
            ("flooders", self.flooders),
        ];
        for (name, n) in roles {
            anyhow::ensure!(n <= MAX_PER_ROLE, "adversaries.{name} = {n}: at most {MAX_PER_ROLE}");
        }
        anyhow::ensure!(
            self.sybils <= MAX_SYBILS,
            "adversaries.sybils = {}: at most {MAX_SYBILS}",
            self.sybils
        );
        if let Some(s) = self.seconds {
            // Checked before `duration`, which cannot take a NaN or an infinity.
            anyhow::ensure!(
                s.is_finite() && s > 0.0,
                "adversaries.seconds = {s}: must be a positive, finite number of seconds"
            );
        }
        Ok(())
    }

    /// How long each adversary runs (`seconds` clamped to [`MAX_SECONDS`]); only valid after
    /// [`Self::validate`].
    fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.seconds.unwrap_or(60.0).clamp(0.0, MAX_SECONDS))
    }
}

/// What the adversaries attack.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// The tracker's address.
    pub(crate) tracker: SocketAddr,
    /// The honest nodes, the seed first.
    pub(crate) honest: Vec<PeerAddr>,
    /// The honest storage nodes.
    pub(crate) storage: Vec<PeerAddr>,
    /// The scenario's content.
    pub(crate) content: ContentId,
}

/// What one adversary did, for the report.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Tally {
    /// The role and its number, like `flooder0`.
    pub(crate) name: String,
    /// Hostile requests sent.
    pub(crate) attempts: u64,
    /// Refused: a reject, an error answer, a closed stream or connection.
    pub(crate) refused: u64,
    /// Left without an answer within the adversary's wait.
    pub(crate) unanswered: u64,
    /// Accepted by an honest process.
    pub(crate) accepted: u64,
    /// Notable findings, at most a few.
    pub(crate) notes: Vec<String>,
    /// What an honest process accepted that it must refuse (each one breaks an invariant).
    pub(crate) breaches: Vec<String>,
    /// The adversary did not stop by itself within [`STOP_WAIT`] of being told to and was
    /// aborted (its counts are lost); a failed check.
    pub(crate) aborted: bool,
}

impl Tally {
    fn new(name: String) -> Self {
        Self { name, ..Self::default() }
    }

    /// Counts the outcome of one attempt: `Ok(true)` accepted, `Ok(false)` refused, `Err`
    /// unanswered (a timeout) or refused (anything else: a closed stream or connection).
    fn count(&mut self, outcome: &anyhow::Result<bool>) {
        self.attempts += 1;
        match outcome {
            Ok(true) => self.accepted += 1,
            Ok(false) => self.refused += 1,
            Err(e) if e.is::<client::Unanswered>() => self.unanswered += 1,
            Err(_) => self.refused += 1,
        }
    }

    fn note(&mut self, what: String) {
        push_bounded(&mut self.notes, what);
    }

    fn breach(&mut self, what: String) {
        push_bounded(&mut self.breaches, what);
    }

    /// Adds the counts and findings of `other` (a sub-task of the same adversary).
    fn merge(&mut self, other: Tally) {
        self.attempts += other.attempts;
        self.refused += other.refused;
        self.unanswered += other.unanswered;
        self.accepted += other.accepted;
        other.notes.into_iter().for_each(|n| self.note(n));
        other.breaches.into_iter().for_each(|n| self.breach(n));
    }
}

/// Keeps at most 8 distinct findings.
fn push_bounded(list: &mut Vec<String>, what: String) {
    if list.len() < 8 && !list.contains(&what) {
        list.push(what);
    }
}

/// What every adversary task shares: the target, the manifest, and when to stop.
#[derive(Debug, Clone)]
struct Ctx {
    target: Arc<Target>,
    manifest: Arc<Manifest>,
    manifest_bytes: Arc<Vec<u8>>,
    /// The push squatter's key, the same in both of its phases.
    squatter: Arc<shoal_net::Identity>,
    until: Instant,
    stop: watch::Receiver<bool>,
}

impl Ctx {
    /// Whether to stop: the time is up or the scenario said so.
    fn done(&self) -> bool {
        *self.stop.borrow() || Instant::now() >= self.until
    }

    /// How long the next call may wait for its answer: [`client::ANSWER_WAIT`], cut to the
    /// time left, so every task stops by itself by its end time.
    fn wait(&self) -> Duration {
        client::wait_until(self.until)
    }

    /// Waits `d`, or less if told to stop. Cancel-safe.
    async fn pause(&self, d: Duration) {
        let mut stop = self.stop.clone();
        let until = tokio::time::Instant::from_std(self.until.min(Instant::now() + d));
        tokio::select! {
            _ = tokio::time::sleep_until(until) => {}
            _ = stopped(&mut stop) => {}
        }
    }
}

/// Resolves once the scenario says stop (or the sender is gone). Cancel-safe.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`: drop it here, inside.
    let _ = stop.wait_for(|s| *s).await.map(|_| ());
}

/// The running adversaries of one scenario pass, on their own small runtime.
#[derive(Debug)]
pub(crate) struct Adversaries {
    rt: tokio::runtime::Runtime,
    stop: watch::Sender<bool>,
    ctx: Ctx,
    /// Each task with its adversary's name.
    tasks: Vec<(String, JoinHandle<Tally>)>,
}

impl Adversaries {
    /// Prepares the adversaries of `cfg` against `target`: learns the content's manifest from
    /// the seed (as anyone holding the ticket can). Nothing attacks until [`Self::start`].
    pub(crate) fn prepare(target: Target) -> anyhow::Result<Self> {
        // One worker thread: the adversaries must not starve the processes they attack of CPU.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .context("starting the adversaries' runtime")?;
        let (stop, stop_rx) = watch::channel(false);
        let (manifest, bytes) = rt.block_on(async {
            let ep =
                client::endpoint(&shoal_net::Identity::generate(), target.honest[0].addr, &[])?;
            let wait = shoal_net::endpoint::CONNECT_TIMEOUT;
            let conn = client::dial(&ep, &target.honest[0], shoal_wire::ALPN, wait).await?;
            client::fetch_manifest(&conn, target.content).await
        })?;
        let ctx = Ctx {
            target: Arc::new(target),
            manifest: Arc::new(manifest),
            manifest_bytes: Arc::new(bytes),
            squatter: Arc::new(shoal_net::Identity::generate()),
            until: Instant::now(),
            stop: stop_rx,
        };
        Ok(Self { rt, stop, ctx, tasks: Vec::new() })
    }

    /// Pushes the seed's manifest into every storage node before the seed does (the first
    /// move of the push squatter); blocks until the storage nodes answered.
    pub(crate) fn squat_manifest(&self) -> Tally {
        self.rt.block_on(squat::manifest_first(&self.ctx))
    }

    /// Starts every adversary of `cfg`; each runs at most `cfg.seconds`.
    pub(crate) fn start(&mut self, cfg: &Config) {
        let mut ctx = self.ctx.clone();
        ctx.until = Instant::now() + cfg.duration();
        let _guard = self.rt.enter();
        let tasks = &mut self.tasks;
        let mut spawn = |name: String, task: JoinHandle<Tally>| tasks.push((name, task));
        if cfg.sybils > 0 {
            spawn(sybil::NAME.into(), tokio::spawn(sybil::run(ctx.clone(), cfg.sybils)));
        }
        for i in 0..cfg.storage_claims {
            let name = format!("storage-claim{i}");
            spawn(name.clone(), tokio::spawn(silent::run(ctx.clone(), name, true)));
        }
        for i in 0..cfg.silent_peers {
            let name = format!("silent{i}");
            spawn(name.clone(), tokio::spawn(silent::run(ctx.clone(), name, false)));
        }
        for i in 0..cfg.slow_readers {
            let name = format!("slow{i}");
            spawn(name.clone(), tokio::spawn(slow::run(ctx.clone(), name)));
        }
        for i in 0..cfg.flooders {
            let name = format!("flooder{i}");
            spawn(name.clone(), tokio::spawn(flood::run(ctx.clone(), name)));
        }
        if cfg.push_squatter {
            spawn(squat::NAME.into(), tokio::spawn(squat::run(ctx.clone())));
        }
    }

    /// Stops every adversary and returns what each did. Blocks at most [`STOP_WAIT`] for all of
    /// them (and a little more to shut down): a task that has not stopped by then is aborted
    /// and its tally says so ([`Tally::aborted`]).
    pub(crate) fn finish(self) -> Vec<Tally> {
        let _ = self.stop.send(true);
        let tasks = self.tasks;
        let out = self.rt.block_on(async move {
            let deadline = tokio::time::Instant::now() + STOP_WAIT;
            let mut out = Vec::new();
            for (name, t) in tasks {
                let abort = t.abort_handle();
                match tokio::time::timeout_at(deadline, t).await {
                    Ok(Ok(tally)) => out.push(tally),
                    Ok(Err(e)) => {
                        let mut tally = Tally::new(name);
                        tally.note(format!("the adversary's task failed: {e}"));
                        out.push(tally);
                    }
                    Err(_) => {
                        abort.abort();
                        out.push(Tally { aborted: true, ..Tally::new(name) });
                    }
                }
            }
            out
        });
        self.rt.shutdown_timeout(Duration::from_secs(2));
        out
    }
}

/// Prints one line per adversary.
pub(crate) fn print(tallies: &[Tally]) {
    for t in tallies {
        println!(
            "  adversary {:<16} {:>6} attempts: {} refused, {} unanswered, {} accepted{}{}",
            t.name,
            t.attempts,
            t.refused,
            t.unanswered,
            t.accepted,
            if t.notes.is_empty() { String::new() } else { format!(" ({})", t.notes.join("; ")) },
            if t.aborted { " [did not stop by itself: aborted]" } else { "" }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_bounded_and_default_to_none() {
        let none: Config = toml::from_str("").unwrap();
        assert!(!none.any());
        assert_eq!(none.duration(), Duration::from_secs(60));
        let many: Config = toml::from_str("flooders = 65").unwrap();
        assert!(many.validate().unwrap_err().to_string().contains("at most 64"));
        let sybils: Config = toml::from_str("sybils = 10001").unwrap();
        assert!(sybils.validate().is_err());
        let long: Config = toml::from_str("seconds = 1000.0\nsybils = 1").unwrap();
        assert!(long.any());
        assert_eq!(long.duration(), Duration::from_secs(120));
        assert!(toml::from_str::<Config>("bogus = 1").is_err());
    }

    #[test]
    fn seconds_must_be_positive_and_finite() {
        for bad in ["nan", "inf", "-inf", "0.0", "-1.0"] {
            let cfg: Config = toml::from_str(&format!("seconds = {bad}\nflooders = 1")).unwrap();
            let err = cfg.validate().unwrap_err().to_string();
            assert!(
                err.contains("adversaries.seconds") && err.contains("positive"),
                "{bad}: {err}"
            );
        }
        let ok: Config = toml::from_str("seconds = 0.5\nflooders = 1").unwrap();
        ok.validate().unwrap();
        assert_eq!(ok.duration(), Duration::from_millis(500));
    }

    #[test]
    fn outcomes_are_counted_by_kind() {
        let mut t = Tally::new("x".into());
        t.count(&Ok(true));
        t.count(&Ok(false));
        t.count(&Err(client::Unanswered.into()));
        t.count(&Err(anyhow::anyhow!("connection lost")));
        assert_eq!((t.attempts, t.accepted, t.refused, t.unanswered), (4, 1, 2, 1));
        for i in 0..20 {
            t.note(format!("n{i}"));
        }
        t.note("n0".into());
        assert_eq!(t.notes.len(), 8);
    }
}
