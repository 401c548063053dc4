//! Re-seed token parsing never panics, and what parses encodes back to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_wire::tracker::ReseedToken;

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = ReseedToken::decode(data) {
        assert_eq!(t.encode(), data, "a token has one encoding");
        assert_eq!(ReseedToken::decode(&t.encode()).unwrap(), t);
    }
});
