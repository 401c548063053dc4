//! Manifest decoding never panics, and what decodes re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_core::Manifest;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Manifest::decode(data) {
        assert_eq!(m.encode(), data);
    }
});
