//! Device certificates (a user's signed statement that a node acts for it, sent by strangers in
//! push requests): decoding never panics, what decodes encodes back to the same bytes, and a
//! fuzzed certificate never verifies for a node it does not name.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_core::DeviceCert;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = DeviceCert::decode(data) {
        assert_eq!(c.encode().as_slice(), data, "a certificate has one encoding");
        let _ = c.verify(&c.node);
    }
});
