//! Every peer-, offline- and tracker-protocol decoder, fed arbitrary bytes in arbitrary splits: never panics, and a
//! frame that decodes re-encodes to the same bytes. The bytes are read as a pipelined stream (tracker
//! protocol version 3): every whole frame in turn until one is incomplete or malformed, so
//! sequences of requests (compact lookups among them) are covered, not only a first frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_wire::tracker::{TrackerRequest, TrackerResponse, MAX_TRACKER_FRAME_LEN};
use shoal_wire::offline::{OfflineReply, OfflineRequest, PieceReply};
use shoal_wire::{encode, Decoder, Frame, Message, Opening, Response};

fn check<F: Frame + PartialEq + std::fmt::Debug>(data: &[u8], split: usize) {
    let mut d = Decoder::with_limit(MAX_TRACKER_FRAME_LEN);
    d.feed(&data[..split]);
    let first = d.decode::<F>();
    d.feed(&data[split..]);
    let mut frames = match first {
        Ok(Some(frame)) => vec![frame],
        Ok(None) => Vec::new(),
        Err(_) => return,
    };
    // Then every further whole frame, as a pipelined stream is read.
    while let Ok(Some(frame)) = d.decode::<F>() {
        frames.push(frame);
    }
    for frame in frames {
        let bytes = encode(&frame);
        let mut again = Decoder::with_limit(MAX_TRACKER_FRAME_LEN);
        again.feed(&bytes);
        assert_eq!(again.decode::<F>().unwrap(), Some(frame));
    }
}

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |&b| b as usize % (data.len() + 1));
    check::<Message>(data, split);
    check::<Response>(data, split);
    check::<Opening>(data, split);
    check::<TrackerRequest>(data, split);
    check::<TrackerResponse>(data, split);
    check::<OfflineRequest>(data, split);
    check::<OfflineReply>(data, split);
    check::<PieceReply>(data, split);
});
