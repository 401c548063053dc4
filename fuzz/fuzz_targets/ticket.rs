//! Ticket parsing never panics, and what parses prints and parses back to the same ticket.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_core::Ticket;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(t) = s.parse::<Ticket>() {
            assert_eq!(t.to_string().parse::<Ticket>().unwrap(), t);
        }
    }
});
