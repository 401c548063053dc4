//! Ticket parsing never panics, what parses prints and parses back to the same ticket, and no
//! ticket names more trackers than a ticket carries.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_core::Ticket;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(t) = s.parse::<Ticket>() {
            assert_eq!(t.to_string().parse::<Ticket>().unwrap(), t);
            assert!(t.trackers().len() <= shoal_core::ticket::MAX_TRACKERS);
        }
    }
});
