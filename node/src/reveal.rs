//! Super-seeding for contents added to this running daemon: a thin wrapper around
//! [`shoal_swarm::Reveal`], which holds the policy (show each subscriber a few pieces nobody
//! was sent yet, one more per piece sent; once every piece left once, for as long again only
//! pieces whose recipients all went away; then everything).
//!
//! Only contents imported while the daemon runs (`shoal add`, `shoal push FILE`) are revealed:
//! that node is the origin, whose first copy a swarm waits for. A content this node fetched,
//! or held when it started, is shown whole, so downloaders in their last seconds get any
//! piece they lack.
//!
//! The control stream of each subscriber registers a bounded channel here; the serving side
//! reports requests and pieces sent; what the machine decides goes to those channels. A std
//! mutex, never held across an await; deadlines are applied at each call and by a clock task
//! every 250 ms.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use shoal_core::{Bitfield, ContentId, NodeId, PieceIndex};
use shoal_swarm::reveal::{Claimed, Config, Event};
use shoal_swarm::Reveal;
use tokio::sync::mpsc;

/// Contents revealed at once; adding more ends the oldest one's mode (it is shown whole).
const MAX_REVEALED: usize = 16;
/// Contents whose mode ended that are remembered, so adding one again does not reveal it anew.
const MAX_ENDED: usize = 64;
/// How often deadlines are applied when nothing else happens (a subscriber that vanished
/// holds its pieces until then).
const TICK: Duration = Duration::from_millis(250);
/// Reveal messages queued for one control stream; more are dropped (the piece stays shown and
/// is hidden again at its deadline).
pub(crate) const QUEUE: usize = 256;

/// What a subscriber's control stream is to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Shown {
    /// A have for this piece.
    Piece(ContentId, PieceIndex),
    /// The content's full bitfield: the mode is over.
    All(ContentId),
    /// What the subscriber may ask for from now on, replacing the whole bitfield it was
    /// answered with (a crowd formed).
    View(ContentId, Bitfield),
}

#[derive(Debug)]
struct Entry {
    machine: Reveal<NodeId>,
    /// Which reveal this is (never reused): a claim made on an earlier one is not given back
    /// to a later one.
    id: u64,
    /// Every subscriber's channel, those beyond the machine's cap included (they are told
    /// when the mode ends).
    subscribers: HashMap<NodeId, mpsc::Sender<Shown>>,
    added: u64,
    /// Waiters for the first copy were woken.
    told: bool,
}

/// The contents this node reveals.
#[derive(Debug, Default)]
pub(crate) struct Reveals {
    // Held only for bookkeeping, never across an await.
    state: Mutex<State>,
    /// Woken when a content's first copy is out (every piece left once) and whenever a mode
    /// ends (its guard ended, a stall, or evicted).
    ended: tokio::sync::Notify,
    /// The limits of every reveal (the machine's defaults but in tests).
    config: Config,
}

#[derive(Debug, Default)]
struct State {
    contents: HashMap<ContentId, Entry>,
    added: u64,
    /// The contents whose mode ended last, oldest first (at most [`MAX_ENDED`]).
    ended: VecDeque<ContentId>,
}

impl State {
    /// Ends `content`'s mode: forgotten but for its id.
    fn end(&mut self, content: ContentId) -> Option<Entry> {
        let e = self.contents.remove(&content)?;
        if self.ended.len() >= MAX_ENDED {
            self.ended.pop_front();
        }
        self.ended.push_back(content);
        Some(e)
    }
}

impl Reveals {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding it cannot leave the map half-updated in a way that matters:
        // at worst a content is shown whole early.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts revealing a content just added, of `pieces` pieces. Adding it again changes
    /// nothing while it is revealed, nor after its mode ended (one of the last [`MAX_ENDED`]):
    /// `shoal push FILE` after `shoal add FILE` imports the file again, and restarting used to
    /// forget which pieces had left and show every subscriber so far everything. (The first
    /// subscribers of every testnet then asked the seed for pieces it had sent, about 3 MiB of
    /// a 64 MiB file at 16 nodes.) It counts as added last, so it is evicted last.
    pub(crate) fn start(&self, content: ContentId, pieces: u32) {
        let mut s = self.lock();
        s.added += 1;
        let added = s.added;
        if let Some(e) = s.contents.get_mut(&content) {
            e.added = added;
            return;
        }
        if s.ended.contains(&content) {
            return;
        }
        if s.contents.len() >= MAX_REVEALED {
            let oldest = s.contents.iter().min_by_key(|(_, e)| e.added).map(|(c, _)| *c);
            if let Some(e) = oldest.and_then(|c| s.end(c).map(|e| (c, e))) {
                tell_all(&e.1, e.0);
                self.ended.notify_waiters();
            }
        }
        let machine = Reveal::new(self.config.clone(), pieces, fastrand::u64(..));
        let entry = Entry { machine, id: added, subscribers: HashMap::new(), added, told: false };
        s.contents.insert(content, entry);
    }

    /// The bitfield to answer `peer`'s subscription to `content` with, if it is revealed
    /// (else `None`: answer with what is held). `tx` receives what `peer` is shown later.
    pub(crate) fn subscribe(
        &self,
        content: ContentId,
        peer: NodeId,
        tx: &mpsc::Sender<Shown>,
    ) -> Option<Bitfield> {
        let mut s = self.lock();
        let e = s.contents.get_mut(&content)?;
        let now = Instant::now();
        e.machine.handle_timeout(now);
        let view = e.machine.subscribe(now, peer);
        e.subscribers.insert(peer, tx.clone());
        pump(e, content);
        Some(view)
    }

    /// What `peer` is shown of `content` now, if this node reveals it (else `None`: it sees
    /// what is held): a bitfield re-sent after a lag must not undo its view.
    pub(crate) fn view(&self, content: ContentId, peer: NodeId) -> Option<Bitfield> {
        let s = self.lock();
        // Not a subscriber of this reveal (beyond the cap, or subscribed before it began):
        // it sees what is held.
        let e = s.contents.get(&content).filter(|e| e.subscribers.contains_key(&peer))?;
        Some(e.machine.view(peer))
    }

    /// `peer` asked for `piece` of `content`.
    fn requested(&self, content: ContentId, peer: NodeId, piece: PieceIndex) {
        let mut s = self.lock();
        if let Some(e) = s.contents.get_mut(&content) {
            let now = Instant::now();
            e.machine.handle_requested(now, peer, piece);
            e.machine.handle_timeout(now);
            pump(e, content);
        }
    }

    /// `piece` of `content` was sent whole to `peer`.
    fn sent(&self, content: ContentId, peer: NodeId, piece: PieceIndex) {
        let mut s = self.lock();
        let Some(e) = s.contents.get_mut(&content) else { return };
        let now = Instant::now();
        e.machine.handle_timeout(now);
        e.machine.handle_sent(now, peer, piece);
        pump(e, content);
        self.after_progress(&mut s, content);
    }

    /// `peer`'s request for `piece` of `content` ended without the piece sent.
    fn abandoned(&self, content: ContentId, peer: NodeId, piece: PieceIndex) {
        let mut s = self.lock();
        let Some(e) = s.contents.get_mut(&content) else { return };
        e.machine.handle_abandoned(Instant::now(), peer, piece);
        pump(e, content);
    }

    /// Claims `piece` of `content` for a push into storage: `None` if this node reveals the
    /// content and a subscriber may be getting that piece from it already (a push of it now
    /// would be a copy more than the swarm needs: leave it for later). Otherwise the piece is
    /// shown to nobody while the claim lasts (see [`Claim`]).
    pub(crate) fn claim(self: &Arc<Self>, content: ContentId, piece: PieceIndex) -> Option<Claim> {
        let held = {
            let mut s = self.lock();
            match s.contents.get_mut(&content) {
                None => None,
                Some(e) => {
                    let now = Instant::now();
                    e.machine.handle_timeout(now);
                    pump(e, content);
                    Some((e.id, e.machine.claim(now, piece)?))
                }
            }
        };
        Some(Claim { reveals: self.clone(), content, piece, held, done: false })
    }

    /// A push of `piece` of `content` that claimed it is to go ahead even if a subscriber may
    /// be getting it too (the push must end with everything stored).
    pub(crate) fn claim_anyway(self: &Arc<Self>, content: ContentId, piece: PieceIndex) -> Claim {
        self.claim(content, piece).unwrap_or_else(|| Claim {
            reveals: self.clone(),
            content,
            piece,
            held: None,
            done: false,
        })
    }

    /// A claim on reveal `id` of `content` was not pushed after all.
    fn unclaimed(&self, content: ContentId, id: u64, claim: Claimed) {
        let mut s = self.lock();
        let Some(e) = s.contents.get_mut(&content).filter(|e| e.id == id) else { return };
        e.machine.handle_unclaimed(Instant::now(), claim);
        pump(e, content);
    }

    /// `piece` of `content` was pushed into storage, which serves it from now on.
    pub(crate) fn copied(&self, content: ContentId, piece: PieceIndex) {
        let mut s = self.lock();
        let Some(e) = s.contents.get_mut(&content) else { return };
        e.machine.handle_copied(Instant::now(), piece);
        pump(e, content);
        self.after_progress(&mut s, content);
    }

    /// A piece of `content` left: waiters for its first copy are woken once every piece left
    /// once, and the mode is forgotten once over.
    fn after_progress(&self, s: &mut State, content: ContentId) {
        let Some(e) = s.contents.get_mut(&content) else { return };
        let (over, first) = (e.machine.is_over(), e.machine.is_done() && !e.told);
        e.told |= first;
        if over {
            s.end(content);
        }
        if over || first {
            self.ended.notify_waiters();
        }
    }

    /// Waits until `content`'s first copy is out (every piece left once, the mode stalled
    /// and ended, or it was evicted by newer contents), at most `limit`. Cancel-safe.
    pub(crate) async fn first_copy_out(&self, content: ContentId, limit: Duration) {
        let until = tokio::time::Instant::now() + limit;
        loop {
            let ended = self.ended.notified();
            tokio::pin!(ended);
            // Registered before the check, so an end between the two is not missed.
            ended.as_mut().enable();
            if self.lock().contents.get(&content).is_none_or(|e| e.machine.is_done()) {
                return;
            }
            tokio::select! {
                () = ended => {}
                () = tokio::time::sleep_until(until) => return,
            }
        }
    }

    /// `peer`'s control stream ended: what it was shown may go to others.
    pub(crate) fn unsubscribe(&self, content: ContentId, peer: NodeId, tx: &mpsc::Sender<Shown>) {
        let mut s = self.lock();
        let Some(e) = s.contents.get_mut(&content) else { return };
        // A node may hold several connections: only the stream that subscribed last speaks
        // for it, and an older one closing (a connection timing out) leaves it alone.
        if !e.subscribers.get(&peer).is_some_and(|t| t.same_channel(tx)) {
            return;
        }
        e.subscribers.remove(&peer);
        let now = Instant::now();
        e.machine.unsubscribe(now, peer);
        e.machine.handle_timeout(now);
        pump(e, content);
    }

    /// Applies the deadlines that passed (pieces left unasked or unsent go to others).
    pub(crate) fn handle_timeout(&self) {
        let mut s = self.lock();
        let now = Instant::now();
        for (c, e) in s.contents.iter_mut() {
            if e.machine.poll_timeout().is_some_and(|t| t <= now) {
                e.machine.handle_timeout(now);
                pump(e, *c);
            }
        }
        let over: Vec<ContentId> =
            s.contents.iter().filter(|(_, e)| e.machine.is_over()).map(|(&c, _)| c).collect();
        for &c in &over {
            s.end(c);
        }
        if !over.is_empty() {
            self.ended.notify_waiters();
        }
    }

    /// Applies deadlines every [`TICK`] while `reveals` lives (a task of the node's runtime).
    pub(crate) fn spawn_clock(reveals: &Arc<Reveals>) {
        let weak = Arc::downgrade(reveals);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(r) = weak.upgrade() else { return };
                r.handle_timeout();
            }
        });
    }

    /// Contents being revealed.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().contents.len()
    }
}

/// A request for a piece, reported to [`Reveals`]: sent whole ([`PieceRequest::sent`]) or, when
/// dropped before that, abandoned (refused, cancelled, failed).
#[derive(Debug)]
pub(crate) struct PieceRequest<'a> {
    reveals: &'a Reveals,
    content: ContentId,
    peer: NodeId,
    piece: PieceIndex,
    done: bool,
}

impl<'a> PieceRequest<'a> {
    pub(crate) fn new(
        reveals: &'a Reveals,
        content: ContentId,
        peer: NodeId,
        piece: PieceIndex,
    ) -> Self {
        reveals.requested(content, peer, piece);
        Self { reveals, content, peer, piece, done: false }
    }

    /// The whole piece went to the transport.
    pub(crate) fn sent(mut self) {
        self.done = true;
        self.reveals.sent(self.content, self.peer, self.piece);
    }
}

impl Drop for PieceRequest<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.reveals.abandoned(self.content, self.peer, self.piece);
        }
    }
}

/// A piece claimed for a push into storage ([`Reveals::claim`]): while it lives the piece is
/// shown to no subscriber (at most `send_deadline`, should it outlive that). Reported as a
/// copy out once storage holds it ([`Claim::copied`]); dropped before that (the push failed
/// or was cancelled), the piece may be shown again.
#[derive(Debug)]
pub(crate) struct Claim {
    reveals: Arc<Reveals>,
    content: ContentId,
    piece: PieceIndex,
    /// Taken from the subscribers' showing, on this reveal (else the content is not revealed,
    /// or the push goes ahead regardless).
    held: Option<(u64, Claimed)>,
    done: bool,
}

impl Claim {
    pub(crate) fn content(&self) -> ContentId {
        self.content
    }

    pub(crate) fn piece(&self) -> PieceIndex {
        self.piece
    }

    /// Storage holds the piece now, and serves it: a copy this node need not send anyone.
    pub(crate) fn copied(mut self) {
        self.done = true;
        self.reveals.copied(self.content, self.piece);
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Some((id, claim)) = self.held.filter(|_| !self.done) {
            self.reveals.unclaimed(self.content, id, claim);
        }
    }
}

/// Carries out the machine's events.
fn pump(e: &mut Entry, content: ContentId) {
    while let Some(ev) = e.machine.poll_event() {
        match ev {
            Event::Show { peer, piece } => {
                if let Some(tx) = e.subscribers.get(&peer) {
                    let _ = tx.try_send(Shown::Piece(content, piece));
                }
            }
            Event::ShowAll => tell_all(e, content),
            Event::Narrow { peer } => {
                if let Some(tx) = e.subscribers.get(&peer) {
                    // Dropped when its queue is full: it goes on seeing everything.
                    let _ = tx.try_send(Shown::View(content, e.machine.view(peer)));
                }
            }
        }
    }
}

/// Every subscriber is sent the full bitfield.
fn tell_all(e: &Entry, content: ContentId) {
    for tx in e.subscribers.values() {
        // Never lost to a full queue (the subscriber would keep a partial bitfield): sent
        // when there is room, by a task that ends with the stream at the latest.
        if let Err(mpsc::error::TrySendError::Full(m)) = tx.try_send(Shown::All(content)) {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let tx = tx.clone();
                rt.spawn(async move {
                    let _ = tx.send(m).await;
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> NodeId {
        shoal_net::Identity::generate().node_id()
    }

    /// Reveals whose mode ends as soon as every piece left once (no guard after the first
    /// copy), as the tests of the first copy expect.
    fn unguarded() -> Reveals {
        let config = Config { guard: Duration::ZERO, guard_share: 0.0, ..Config::default() };
        Reveals { config, ..Reveals::default() }
    }

    /// Three subscribers of `c`, the first `Config::min_peers`, shown everything until the
    /// next comes (a crowd forms and they are narrowed). Their channel's receiver is returned
    /// so what they are sent is kept.
    fn first_three(r: &Reveals, c: ContentId) -> mpsc::Receiver<Shown> {
        let (txw, rxw) = mpsc::channel(QUEUE);
        for _ in 0..3 {
            r.subscribe(c, id(), &txw).unwrap();
        }
        rxw
    }

    /// The last thing queued for a subscriber, draining its queue.
    fn last(rx: &mut mpsc::Receiver<Shown>) -> Option<Shown> {
        std::iter::from_fn(|| rx.try_recv().ok()).last()
    }

    #[test]
    fn a_revealed_content_shows_a_part_then_everything_once_each_piece_left() {
        let r = unguarded();
        let c = ContentId([1; 32]);
        let (a, b) = (id(), id());
        let (tx, mut rx) = mpsc::channel(QUEUE);
        assert!(r.subscribe(c, a, &tx).is_none(), "not added here: shown whole");
        r.start(c, 64);
        // The first three see everything (`Config::min_peers`) until a fourth comes.
        let (txw, mut rxw) = mpsc::channel(QUEUE);
        for _ in 0..3 {
            assert!(r.subscribe(c, id(), &txw).unwrap().is_complete());
        }
        let view_a = r.subscribe(c, a, &tx).unwrap();
        let (txb, mut rxb) = mpsc::channel(QUEUE);
        let view_b = r.subscribe(c, b, &txb).unwrap();
        // Then the three are narrowed to a share of the budget, like the newcomers.
        let mut narrowed = Vec::new();
        while let Ok(Shown::View(cc, v)) = rxw.try_recv() {
            assert_eq!(cc, c);
            narrowed.push(v);
        }
        assert_eq!(narrowed.len(), 3);
        assert!(narrowed.iter().all(|v| v.count() == 8), "32 shared by four");
        assert_eq!((view_a.count(), view_b.count()), (8, 6), "32 / 4, then 32 / 5");
        let mut seen = view_a.clone();
        for v in narrowed.iter().chain([&view_b]) {
            assert!(v.iter_ones().all(|p| !seen.get(p)), "each piece shown to one of them");
            v.iter_ones().for_each(|p| {
                seen.set(p);
            });
        }
        // Every piece sent once (whoever it went to): the mode ends, both are told.
        for p in 0..64 {
            r.sent(c, a, PieceIndex(p));
        }
        assert_eq!(r.len(), 0);
        assert_eq!(last(&mut rx), Some(Shown::All(c)));
        assert_eq!(rxb.try_recv(), Ok(Shown::All(c)));
    }

    #[test]
    fn a_bitfield_resent_to_a_subscriber_is_its_view_while_the_content_is_revealed() {
        let r = unguarded();
        let c = ContentId([2; 32]);
        r.start(c, 64);
        let (tx, _rx) = mpsc::channel(QUEUE);
        let _rxw = first_three(&r, c);
        let a = id();
        let view = r.subscribe(c, a, &tx).unwrap();
        assert!(!view.is_complete());
        assert_eq!(r.view(c, a), Some(view), "what a lag re-sends: its view, not the store's");
        assert_eq!(r.view(c, id()), None, "a stranger: what is held");
        for p in 0..64 {
            r.sent(c, a, PieceIndex(p));
        }
        assert_eq!(r.view(c, a), None, "the mode is over: what is held");
    }

    #[test]
    fn a_push_claims_only_pieces_nobody_is_shown_and_gives_back_what_it_did_not_push() {
        let r = Arc::new(unguarded());
        let c = ContentId([3; 32]);
        assert!(r.claim(c, PieceIndex(0)).is_some(), "not revealed here: push anything");
        r.start(c, 64);
        let (tx, mut rx) = mpsc::channel(QUEUE);
        let (txw, _rxw) = mpsc::channel(QUEUE);
        let others: Vec<NodeId> = (0..3).map(|_| id()).collect();
        for &o in &others {
            r.subscribe(c, o, &txw).unwrap();
        }
        let a = id();
        let view = r.subscribe(c, a, &tx).unwrap();
        let shown = view.iter_ones().next().unwrap();
        assert!(r.claim(c, shown).is_none(), "shown to a subscriber: left for later");
        let seen_by_any = |p: PieceIndex| {
            view.get(p) || others.iter().any(|&o| r.view(c, o).is_some_and(|v| v.get(p)))
        };
        let pushed = (0..64).map(PieceIndex).find(|&p| !seen_by_any(p)).unwrap();
        let claim = r.claim(c, pushed).expect("shown to nobody");
        assert!(r.claim(c, pushed).is_none(), "claimed once");
        claim.copied();
        // A push that fails (its claim dropped unpushed) gives the piece back to be shown.
        let failed = (0..64).map(PieceIndex).find(|&p| r.claim(c, p).is_some()).unwrap();
        assert!(r.claim(c, failed).is_some(), "given back when the claim was dropped");
        // A push that goes ahead anyway (its second pass) never holds a piece back.
        drop(r.claim_anyway(c, shown));
        // Every other piece sent: the one pushed in counts as out, so the mode ends.
        for p in (0..64).map(PieceIndex).filter(|&p| p != pushed) {
            r.sent(c, a, p);
        }
        assert_eq!(r.len(), 0, "the pushed piece counted as a copy out");
        assert_eq!(last(&mut rx), Some(Shown::All(c)));
    }

    #[test]
    fn adding_a_content_again_while_it_is_revealed_changes_nothing() {
        // `shoal push FILE` after `shoal add FILE` imports and starts the file again.
        let r = unguarded();
        let c = ContentId([4; 32]);
        r.start(c, 64);
        let (tx, mut rx) = mpsc::channel(QUEUE);
        let _rxw = first_three(&r, c);
        let a = id();
        let view = r.subscribe(c, a, &tx).unwrap();
        let sent = view.iter_ones().next().unwrap();
        r.sent(c, a, sent);
        let before = r.view(c, a).unwrap();
        r.start(c, 64);
        assert_eq!(r.view(c, a), Some(before), "the same view: still a subscriber");
        while let Ok(m) = rx.try_recv() {
            assert!(!matches!(m, Shown::All(_)), "not shown everything: {m:?}");
        }
        for p in (0..64).map(PieceIndex).filter(|&p| p != sent) {
            r.sent(c, a, p);
        }
        assert_eq!(r.len(), 0, "the piece sent before the second start still counts");
        // Added once more after its mode ended: not revealed anew (the swarm has it).
        r.start(c, 64);
        assert_eq!(r.len(), 0);
        assert!(r.subscribe(c, id(), &tx).is_none(), "shown whole");
    }

    #[tokio::test]
    async fn after_its_first_copy_a_content_shows_only_what_left_with_its_recipients() {
        let r = Reveals::default();
        let c = ContentId([5; 32]);
        r.start(c, 64);
        let _rxw = first_three(&r, c);
        let (a, a2, b) = (id(), id(), id());
        let (tx, _rx) = mpsc::channel(QUEUE);
        let (txb, mut rxb) = mpsc::channel(QUEUE);
        r.subscribe(c, a, &tx).unwrap();
        r.subscribe(c, a2, &tx).unwrap();
        r.subscribe(c, b, &txb).unwrap();
        // Half the pieces to a, half to a2 (a subscriber keeps a quarter and 32 at most).
        let to = |p: u32| if p % 2 == 0 { a } else { a2 };
        for p in 0..63 {
            r.sent(c, to(p), PieceIndex(p));
        }
        // What b was shown while the first copy went out.
        while rxb.try_recv().is_ok() {}
        r.sent(c, to(63), PieceIndex(63));
        // The first copy is out (a push waiting for it goes ahead), the guard holds.
        tokio::time::timeout(Duration::from_secs(5), r.first_copy_out(c, Duration::from_secs(60)))
            .await
            .expect("the first copy is out");
        assert_eq!(r.len(), 1, "still revealed: guarded");
        assert_eq!(rxb.try_recv(), Err(mpsc::error::TryRecvError::Empty), "nothing more shown");
        assert_eq!(r.view(c, b).map(|v| v.count()), Some(0));
        // a goes away with every piece: b is shown some of them again, never everything.
        r.unsubscribe(c, a, &tx);
        let mut again = 0;
        while let Ok(m) = rxb.try_recv() {
            assert!(matches!(m, Shown::Piece(cc, _) if cc == c), "{m:?}");
            again += 1;
        }
        assert!(again > 0 && r.view(c, b).is_some_and(|v| v.count() == again));
        assert!(again < 32, "a share of the budget, never everything: {again}");
    }

    #[tokio::test]
    async fn a_push_waiting_for_the_first_copy_is_woken_and_the_guard_ends_with_everything_shown() {
        let config =
            Config { guard: Duration::from_nanos(1), guard_share: 0.0, ..Config::default() };
        let r = Arc::new(Reveals { config, ..Reveals::default() });
        let c = ContentId([6; 32]);
        r.start(c, 16);
        let _rxw = first_three(&r, c);
        let a = id();
        let (tx, mut rx) = mpsc::channel(QUEUE);
        r.subscribe(c, a, &tx).unwrap();
        let waiter = tokio::spawn({
            let r = r.clone();
            async move { r.first_copy_out(c, Duration::from_secs(60)).await }
        });
        // The waiter runs first and waits (this test's runtime has one thread).
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        for p in 0..16 {
            r.sent(c, a, PieceIndex(p));
        }
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken by the first copy")
            .unwrap();
        // The guard (1 ns here) ends at the next deadline applied: everything is shown, the
        // content is forgotten.
        r.handle_timeout();
        assert_eq!(r.len(), 0);
        assert_eq!(last(&mut rx), Some(Shown::All(c)));
    }

    #[test]
    fn at_most_a_bounded_number_of_contents_are_revealed() {
        let r = Reveals::default();
        let (tx, mut rx) = mpsc::channel(QUEUE);
        let peer = id();
        r.start(ContentId([0; 32]), 8);
        r.subscribe(ContentId([0; 32]), peer, &tx).unwrap();
        for i in 1..=MAX_REVEALED as u8 {
            r.start(ContentId([i; 32]), 8);
        }
        assert_eq!(r.len(), MAX_REVEALED);
        assert_eq!(rx.try_recv(), Ok(Shown::All(ContentId([0; 32]))), "the oldest shown whole");
    }
}
