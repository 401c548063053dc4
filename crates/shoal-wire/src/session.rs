//! The control-stream state machine.
//!
//! `AwaitHello -> Ready`: each side sends [`Message::Hello`] first; the remote's hello must
//! carry our protocol version and the node id its TLS handshake proved. After that, the
//! session checks that bitfields and haves only come for contents we subscribed to, with the
//! piece count we expect, and that the remote sends a bounded number of subscriptions: every
//! `Subscribe` counts, accepted, refused or repeated, so probing for contents costs the remote
//! its session after [`MAX_SUBSCRIPTIONS`] tries. Memory is bounded the same way: the sets
//! below never hold more than [`MAX_SUBSCRIPTIONS`] entries, and the transmit and event queues
//! grow by at most one entry per message handled or call made.
//! The async layer feeds decoded messages in and sends what [`Session::poll_transmit`] gives.

use std::collections::{HashMap, HashSet, VecDeque};

use shoal_core::{Bitfield, ContentId, NodeId, PieceIndex};

use crate::message::{Message, RejectReason};
use crate::PROTOCOL_VERSION;

/// The most `Subscribe` messages one peer may send on one session, whether they are accepted,
/// refused or repeated. An honest downloader sends one per content it fetches.
pub const MAX_SUBSCRIPTIONS: usize = 4096;

/// The remote broke the protocol; the connection should be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The first message was not a hello.
    #[error("expected hello first")]
    HelloExpected,
    /// A second hello.
    #[error("unexpected second hello")]
    DuplicateHello,
    /// The remote speaks another version.
    #[error("peer speaks protocol version {theirs}, we speak {ours}")]
    Version {
        /// our version
        ours: u16,
        /// theirs
        theirs: u16,
    },
    /// The hello names a node id other than the one authenticated by TLS.
    #[error("hello claims node id {claimed} but the connection proved {proven}")]
    NodeIdMismatch {
        /// what the hello said
        claimed: NodeId,
        /// what TLS proved
        proven: NodeId,
    },
    /// A bitfield, have or reject for a content we did not subscribe to.
    #[error("unsolicited message for content {0}")]
    Unsolicited(ContentId),
    /// A bitfield whose length is not the content's piece count.
    #[error("bitfield of {got} pieces for a content of {expected}")]
    BitfieldLength {
        /// pieces in the bitfield
        got: u32,
        /// pieces in the content
        expected: u32,
    },
    /// A have for a piece past the end.
    #[error("have for piece {piece} of a content of {pieces} pieces")]
    PieceOutOfRange {
        /// the piece
        piece: PieceIndex,
        /// pieces in the content
        pieces: u32,
    },
    /// The remote sent more subscriptions (accepted or refused) than allowed.
    #[error("peer sent more than {MAX_SUBSCRIPTIONS} subscriptions")]
    TooManySubscriptions,
}

/// Something the application must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// Hellos exchanged; the remote is who TLS said and speaks our version.
    Ready,
    /// The remote wants our bitfield of a content: answer with
    /// [`Session::accept_subscription`] or [`Session::reject_subscription`].
    Subscribed(ContentId),
    /// The remote's pieces of a content we subscribed to.
    Bitfield(ContentId, Bitfield),
    /// The remote gained a piece.
    Have(ContentId, PieceIndex),
    /// The remote refused our subscription.
    Rejected(ContentId, RejectReason, String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitHello,
    Ready,
}

/// One side of a control stream.
#[derive(Debug)]
pub struct Session {
    remote: NodeId,
    state: State,
    transmit: VecDeque<Message>,
    events: VecDeque<Event>,
    /// Contents we subscribed to, with their piece counts.
    ours: HashMap<ContentId, u32>,
    /// Contents the remote subscribed to and we accepted: they get our haves.
    theirs: HashSet<ContentId>,
    /// Subscriptions from the remote awaiting our answer.
    pending: HashSet<ContentId>,
    /// `Subscribe` messages received, whatever became of them.
    subscribes: usize,
    /// The region the remote said its tracker placed it in.
    remote_region: Option<shoal_core::Region>,
}

impl Session {
    /// A session between `local` and the TLS-authenticated `remote`; queues our hello.
    pub fn new(local: NodeId, remote: NodeId) -> Self {
        Self::in_region(local, remote, None)
    }

    /// [`Session::new`], our hello naming the region our tracker placed us in.
    pub fn in_region(local: NodeId, remote: NodeId, region: Option<shoal_core::Region>) -> Self {
        let mut s = Self {
            remote,
            state: State::AwaitHello,
            transmit: VecDeque::new(),
            events: VecDeque::new(),
            ours: HashMap::new(),
            theirs: HashSet::new(),
            pending: HashSet::new(),
            subscribes: 0,
            remote_region: None,
        };
        s.transmit.push_back(Message::Hello { version: PROTOCOL_VERSION, node_id: local, region });
        s
    }

    /// The region the remote said (in its hello) its tracker placed it in.
    pub fn remote_region(&self) -> Option<&shoal_core::Region> {
        self.remote_region.as_ref()
    }

    /// True once hellos are exchanged.
    pub fn is_ready(&self) -> bool {
        self.state == State::Ready
    }

    /// Feeds one message from the remote. An error means the connection must be closed.
    pub fn handle_message(&mut self, msg: Message) -> Result<(), ProtocolError> {
        match (self.state, msg) {
            (State::AwaitHello, Message::Hello { version, node_id, region }) => {
                if version != PROTOCOL_VERSION {
                    return Err(ProtocolError::Version { ours: PROTOCOL_VERSION, theirs: version });
                }
                if node_id != self.remote {
                    return Err(ProtocolError::NodeIdMismatch {
                        claimed: node_id,
                        proven: self.remote,
                    });
                }
                self.state = State::Ready;
                self.remote_region = region;
                self.events.push_back(Event::Ready);
            }
            (State::AwaitHello, _) => return Err(ProtocolError::HelloExpected),
            (State::Ready, Message::Hello { .. }) => return Err(ProtocolError::DuplicateHello),
            (State::Ready, Message::Subscribe { content }) => {
                if self.subscribes >= MAX_SUBSCRIPTIONS {
                    return Err(ProtocolError::TooManySubscriptions);
                }
                self.subscribes += 1;
                if !self.theirs.contains(&content) && self.pending.insert(content) {
                    self.events.push_back(Event::Subscribed(content));
                }
            }
            (State::Ready, Message::Bitfield { content, bitfield }) => {
                let expected =
                    *self.ours.get(&content).ok_or(ProtocolError::Unsolicited(content))?;
                if bitfield.len() != expected {
                    return Err(ProtocolError::BitfieldLength { got: bitfield.len(), expected });
                }
                self.events.push_back(Event::Bitfield(content, bitfield));
            }
            (State::Ready, Message::Have { content, piece }) => {
                let pieces = *self.ours.get(&content).ok_or(ProtocolError::Unsolicited(content))?;
                if piece.0 >= pieces {
                    return Err(ProtocolError::PieceOutOfRange { piece, pieces });
                }
                self.events.push_back(Event::Have(content, piece));
            }
            (State::Ready, Message::Reject { content, reason, text }) => {
                self.ours.remove(&content).ok_or(ProtocolError::Unsolicited(content))?;
                self.events.push_back(Event::Rejected(content, reason, text));
            }
        }
        Ok(())
    }

    /// Subscribes to the remote's pieces of a content of `pieces` pieces.
    pub fn subscribe(&mut self, content: ContentId, pieces: u32) {
        if self.ours.insert(content, pieces).is_none() {
            self.transmit.push_back(Message::Subscribe { content });
        }
    }

    /// Answers a remote subscription with our bitfield; our haves follow from now on.
    pub fn accept_subscription(&mut self, content: ContentId, bitfield: Bitfield) {
        if self.pending.remove(&content) {
            self.theirs.insert(content);
            self.transmit.push_back(Message::Bitfield { content, bitfield });
        }
    }

    /// Refuses a remote subscription.
    pub fn reject_subscription(&mut self, content: ContentId, reason: RejectReason, text: &str) {
        if self.pending.remove(&content) || self.theirs.remove(&content) {
            let text = text.to_string();
            self.transmit.push_back(Message::Reject { content, reason, text });
        }
    }

    /// Tells the remote, if it subscribed to that content, which pieces it may ask us for
    /// now: the bitfield replaces the one it has (an origin narrowing what it shows).
    pub fn replace_bitfield(&mut self, content: ContentId, bitfield: Bitfield) {
        if self.theirs.contains(&content) {
            self.transmit.push_back(Message::Bitfield { content, bitfield });
        }
    }

    /// Tells the remote we gained a piece, if it subscribed to that content.
    pub fn announce_have(&mut self, content: ContentId, piece: PieceIndex) {
        if self.theirs.contains(&content) {
            self.transmit.push_back(Message::Have { content, piece });
        }
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Message> {
        self.transmit.pop_front()
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// `Subscribe` messages the remote has sent, accepted, refused or repeated.
    pub fn subscriptions_received(&self) -> usize {
        self.subscribes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(seed: u8) -> NodeId {
        // Derive valid keys deterministically from a libp2p keypair seeded by `seed`.
        let kp = libp2p_identity_key(seed);
        NodeId::from_public_key_bytes(kp).unwrap()
    }

    fn libp2p_identity_key(seed: u8) -> [u8; 32] {
        // Hellos only need valid curve points; these are two known-valid encodings.
        let mut k = [0u8; 32];
        if seed == 0 {
            k[0] = 0x58;
            k[1..].fill(0x66);
        } else {
            k[0] = 0x01; // the identity point (0, 1) encodes as 01 00 .. 00
        }
        k
    }

    /// Moves every queued message from `a` to `b` and back until both are idle.
    fn drive(a: &mut Session, b: &mut Session) -> Result<(), ProtocolError> {
        loop {
            let mut moved = false;
            while let Some(m) = a.poll_transmit() {
                b.handle_message(m)?;
                moved = true;
            }
            while let Some(m) = b.poll_transmit() {
                a.handle_message(m)?;
                moved = true;
            }
            if !moved {
                return Ok(());
            }
        }
    }

    #[test]
    fn subscribe_bitfield_have() {
        let (ia, ib) = (id(0), id(1));
        let (mut a, mut b) = (Session::new(ia, ib), Session::new(ib, ia));
        let c = ContentId([7; 32]);
        a.subscribe(c, 10);
        drive(&mut a, &mut b).unwrap();
        assert_eq!(a.poll_event(), Some(Event::Ready));
        assert_eq!(b.poll_event(), Some(Event::Ready));
        assert_eq!(b.poll_event(), Some(Event::Subscribed(c)));
        let mut bf = Bitfield::new(10);
        bf.set(PieceIndex(3));
        b.accept_subscription(c, bf.clone());
        b.announce_have(c, PieceIndex(4));
        drive(&mut a, &mut b).unwrap();
        assert_eq!(a.poll_event(), Some(Event::Bitfield(c, bf)));
        assert_eq!(a.poll_event(), Some(Event::Have(c, PieceIndex(4))));
    }

    /// A ready session of `ia` facing `ib`.
    fn ready(ia: NodeId, ib: NodeId) -> Session {
        let mut a = Session::new(ia, ib);
        a.handle_message(Message::Hello { version: PROTOCOL_VERSION, node_id: ib, region: None })
            .unwrap();
        assert_eq!(
            a.poll_transmit(),
            Some(Message::Hello { version: PROTOCOL_VERSION, node_id: ia, region: None })
        );
        assert_eq!(a.poll_event(), Some(Event::Ready));
        a
    }

    #[test]
    fn refused_subscriptions_count_toward_the_cap() {
        let (ia, ib) = (id(0), id(1));
        let mut a = ready(ia, ib);
        for i in 0..MAX_SUBSCRIPTIONS {
            let mut c = [0u8; 32];
            c[..8].copy_from_slice(&(i as u64).to_be_bytes());
            let content = ContentId(c);
            a.handle_message(Message::Subscribe { content }).unwrap();
            assert_eq!(a.poll_event(), Some(Event::Subscribed(content)));
            a.reject_subscription(content, RejectReason::NotFound, "content not held here");
            assert!(matches!(a.poll_transmit(), Some(Message::Reject { .. })));
        }
        // Nothing is remembered of refused subscriptions...
        assert!(a.pending.is_empty() && a.theirs.is_empty());
        assert_eq!(a.subscriptions_received(), MAX_SUBSCRIPTIONS);
        // ...but they were counted: one more ends the session.
        assert_eq!(
            a.handle_message(Message::Subscribe { content: ContentId([0xff; 32]) }),
            Err(ProtocolError::TooManySubscriptions)
        );
    }

    #[test]
    fn repeated_subscriptions_count_but_are_answered_once() {
        let (ia, ib) = (id(0), id(1));
        let mut a = ready(ia, ib);
        let c = ContentId([9; 32]);
        for _ in 0..MAX_SUBSCRIPTIONS {
            a.handle_message(Message::Subscribe { content: c }).unwrap();
        }
        assert_eq!(a.poll_event(), Some(Event::Subscribed(c)));
        assert_eq!(a.poll_event(), None, "a repeat asks the application nothing new");
        assert_eq!(
            a.handle_message(Message::Subscribe { content: c }),
            Err(ProtocolError::TooManySubscriptions)
        );
    }

    #[test]
    fn protocol_violations_are_errors() {
        let (ia, ib) = (id(0), id(1));
        let c = ContentId([1; 32]);
        let mut a = Session::new(ia, ib);
        assert_eq!(
            a.handle_message(Message::Subscribe { content: c }),
            Err(ProtocolError::HelloExpected)
        );

        let mut a = Session::new(ia, ib);
        let err = a.handle_message(Message::Hello {
            version: PROTOCOL_VERSION,
            node_id: ia,
            region: None,
        });
        assert!(matches!(err, Err(ProtocolError::NodeIdMismatch { .. })));

        let mut a = Session::new(ia, ib);
        let err = a.handle_message(Message::Hello { version: 9, node_id: ib, region: None });
        assert!(matches!(err, Err(ProtocolError::Version { .. })));

        let mut a = Session::new(ia, ib);
        a.handle_message(Message::Hello { version: PROTOCOL_VERSION, node_id: ib, region: None })
            .unwrap();
        assert_eq!(
            a.handle_message(Message::Have { content: c, piece: PieceIndex(0) }),
            Err(ProtocolError::Unsolicited(c))
        );
        a.subscribe(c, 4);
        assert!(matches!(
            a.handle_message(Message::Have { content: c, piece: PieceIndex(4) }),
            Err(ProtocolError::PieceOutOfRange { .. })
        ));
        assert!(matches!(
            a.handle_message(Message::Bitfield { content: c, bitfield: Bitfield::new(5) }),
            Err(ProtocolError::BitfieldLength { .. })
        ));
    }
}
