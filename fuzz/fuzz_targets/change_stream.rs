//! One entry of the tracker replicas' change stream in Redis (`shoal_index::decode_changes`):
//! arbitrary bytes never panic the decoder, an accepted entry holds at most
//! `MAX_CHANGES_PER_ENTRY` changes, and what an entry decodes to encodes into an entry that,
//! when accepted, decodes to the same changes: nothing a replica applies is read two ways.
//! (A re-encoding may be refused: a node entry's JSON can grow past its limit when a field
//! it left to its default is written out.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_index::{decode_changes, encode_changes, MAX_CHANGES_PER_ENTRY};

fuzz_target!(|data: &[u8]| {
    let Some(ops) = decode_changes(data) else { return };
    assert!(ops.len() <= MAX_CHANGES_PER_ENTRY, "more changes than an entry may carry");
    if let Some(again) = decode_changes(&encode_changes(&ops)) {
        assert_eq!(again, ops, "a decoded entry does not encode back to itself");
    }
});
