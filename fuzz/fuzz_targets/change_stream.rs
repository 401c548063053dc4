//! One entry of the tracker replicas' change stream in Redis (`shoal_index::decode_changes`):
//! arbitrary bytes never panic the decoder, and what an entry decodes to encodes into an
//! entry that decodes to the same changes (nothing a replica applies is read two ways), unless
//! re-encoding made it longer than an entry may be (a node entry's JSON may gain a field it
//! left to its default).
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_index::{decode_changes, encode_changes, MAX_CHANGES_PER_ENTRY};

fuzz_target!(|data: &[u8]| {
    let Some(ops) = decode_changes(data) else { return };
    assert!(ops.len() <= MAX_CHANGES_PER_ENTRY, "more changes than an entry may carry");
    let encoded = encode_changes(&ops);
    match decode_changes(&encoded) {
        Some(again) => assert_eq!(again, ops, "a decoded entry does not encode back to itself"),
        None => assert!(encoded.len() > data.len(), "a decoded entry re-encodes to a refused one"),
    }
});
