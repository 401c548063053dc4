//! The wall clock the index is driven by: milliseconds since the Unix epoch, so that
//! heartbeat times stay meaningful across a restart and between replicas.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in milliseconds since the Unix epoch (0 on a clock set before it).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
