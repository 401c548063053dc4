//! Sequences of picker operations (peers joining, leaving, announcing, delivering good and bad
//! pieces, failing requests): the picker never panics, never asks a banned peer, never asks for
//! a piece the download has, never asks a peer for a piece it does not hold, and never keeps more
//! than MAX_COPIES requests for one piece.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use shoal_core::{Bitfield, PieceIndex};
use shoal_swarm::{Picker, Verdict, MAX_COPIES};

fuzz_target!(|data: &[u8]| {
    let Some((&n, ops)) = data.split_first() else { return };
    let pieces = u32::from(n % 40) + 1;
    let mut picker: Picker<u8> = Picker::new(Bitfield::new(pieces), u64::from(n));
    let mut held: BTreeMap<u8, Bitfield> = BTreeMap::new();
    let mut banned = std::collections::BTreeSet::new();
    let mut in_flight: BTreeMap<(u8, u32), ()> = BTreeMap::new();
    for pair in ops.chunks(2) {
        let (op, arg) = (pair[0], *pair.get(1).unwrap_or(&0));
        let peer = op & 7;
        let piece = PieceIndex(u32::from(arg) % pieces);
        match op >> 3 & 7 {
            0 => {
                let mut b = Bitfield::new(pieces);
                for i in 0..pieces {
                    if (u32::from(arg) + i * 7) % 3 != 0 {
                        b.set(PieceIndex(i));
                    }
                }
                // A re-sent bitfield replaces what the peer holds; its requests stay in flight
                // and its strikes stay (a banned peer is refused).
                if picker.add_peer(peer, b.clone()) {
                    assert!(!banned.contains(&peer), "a banned peer was added again");
                    held.insert(peer, b);
                }
            }
            1 => {
                picker.remove_peer(peer);
                held.remove(&peer);
                in_flight.retain(|&(p, _), _| p != peer);
            }
            2 => {
                picker.peer_has(peer, piece);
                if let Some(b) = held.get_mut(&peer) {
                    b.set(piece);
                }
            }
            3 | 4 => {
                if let Some(r) = picker.next_request(peer) {
                    assert!(!banned.contains(&peer), "asked a banned peer");
                    assert!(!picker.have().get(r.piece), "asked for a piece we have");
                    assert!(held.get(&peer).is_some_and(|b| b.get(r.piece)), "peer lacks it");
                    in_flight.insert((peer, r.piece.0), ());
                    let copies = in_flight.keys().filter(|&&(_, p)| p == r.piece.0).count();
                    assert!(copies as u32 <= MAX_COPIES, "too many copies of one piece");
                }
            }
            5 => {
                if in_flight.remove(&(peer, piece.0)).is_some() {
                    for other in picker.piece_verified(peer, piece) {
                        in_flight.remove(&(other, piece.0));
                    }
                    in_flight.retain(|&(_, p), _| p != piece.0);
                }
            }
            6 => {
                if in_flight.remove(&(peer, piece.0)).is_some() {
                    picker.request_failed(peer, piece);
                }
            }
            _ => {
                if in_flight.remove(&(peer, piece.0)).is_some()
                    && picker.piece_failed(peer, piece) == Verdict::Banned
                {
                    banned.insert(peer);
                    held.remove(&peer);
                    in_flight.retain(|&(p, _), _| p != peer);
                }
            }
        }
    }
});
