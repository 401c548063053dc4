//! The peer certificate parser (run on every TLS handshake with a stranger) never panics on any
//! bytes, and a certificate it accepts names a valid node key.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(id) = shoal_net::tls::node_id_of(data) {
        assert_eq!(id.public_key_bytes().len(), 32);
    }
});
