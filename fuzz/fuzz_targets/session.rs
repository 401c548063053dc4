//! Sequences of control-stream messages from a hostile remote, interleaved with local actions:
//! the session never panics; drained after each step (one local action, or at most 31 remote
//! bytes), its transmit and event queues never held more than a constant ([`STEP_BOUND`]: the
//! session queues at most one entry per call made or message handled, whatever the input's
//! length); and after an error the caller closes the connection (the loop stops, as the node
//! does).
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_core::{Bitfield, ContentId, NodeId, PieceIndex};
use shoal_wire::{Decoder, Event, Message, RejectReason, Session, MAX_SUBSCRIPTIONS};

/// The most entries one step may leave in either queue: our hello (first step only), one local
/// action, and one per message decoded from the step's at most 31 new bytes (every message
/// decoded in a step ends in its bytes: those complete before were decoded the step before).
/// The event queue's share is each decoded message's event, answered by one transmit
/// (`accept_subscription`).
const STEP_BOUND: usize = 1 + 1 + 31;

/// Fixed keys, so a saved crashing input reproduces in another process.
fn ids() -> (NodeId, NodeId) {
    use std::sync::OnceLock;
    static IDS: OnceLock<(NodeId, NodeId)> = OnceLock::new();
    *IDS.get_or_init(|| {
        let id = |seed| {
            let kp = libp2p_identity::Keypair::ed25519_from_bytes([seed; 32]).unwrap();
            NodeId::from_public_key(&kp.public()).unwrap()
        };
        (id(1), id(2))
    })
}

fuzz_target!(|data: &[u8]| {
    let (local, remote) = ids();
    let mut s = Session::new(local, remote);
    // Start with a valid hello so the fuzzer reaches the interesting states quickly.
    if data.first().is_some_and(|b| b & 1 == 1) {
        let _ = s.handle_message(Message::Hello { version: shoal_wire::PROTOCOL_VERSION, node_id: remote, region: None });
    }
    let mut dec = Decoder::new();
    let mut i = 1;
    while i < data.len() {
        let op = data[i];
        i += 1;
        let c = ContentId([op & 7; 32]);
        match op >> 5 {
            // Local actions.
            0 => s.subscribe(c, u32::from(op & 0x1f) + 1),
            1 => s.accept_subscription(c, Bitfield::full(u32::from(op & 0x1f) + 1)),
            2 => s.reject_subscription(c, RejectReason::NotFound, "no"),
            3 => s.announce_have(c, PieceIndex(u32::from(op & 3))),
            // Remote bytes: a length-prefixed chunk fed to the decoder.
            _ => {
                let n = (op & 0x1f) as usize;
                let end = (i + n).min(data.len());
                dec.feed(&data[i..end]);
                i = end;
                loop {
                    match dec.decode::<Message>() {
                        Ok(Some(m)) => {
                            if s.handle_message(m).is_err() {
                                return;
                            }
                        }
                        Ok(None) => break,
                        Err(_) => return,
                    }
                }
            }
        }
        let mut events = 0usize;
        while let Some(ev) = s.poll_event() {
            events += 1;
            if let Event::Subscribed(content) = ev {
                s.accept_subscription(content, Bitfield::new(1));
            }
        }
        let mut transmits = 0usize;
        while s.poll_transmit().is_some() {
            transmits += 1;
        }
        assert!(events <= STEP_BOUND, "{events} events queued in one step");
        assert!(transmits <= STEP_BOUND, "{transmits} transmits queued in one step");
        assert!(s.subscriptions_received() <= MAX_SUBSCRIPTIONS);
    }
});
