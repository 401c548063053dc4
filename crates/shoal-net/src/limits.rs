//! Flow-control windows and connection caps fitted to each role.
//!
//! QUIC lets the sender put up to the receiver's flow-control window of bytes in flight, and the
//! receiver must buffer whatever arrives before the application reads it. So the receive windows
//! an endpoint advertises are memory any stranger can make it spend, per connection. A role that
//! only ever receives small frames from strangers (an ordinary node's serving side, a tracker)
//! advertises tiny windows; a storage node, which receives pushed pieces, moderate ones; and the
//! dialing side of a downloader, which chose its peers and reads every byte into a bounded piece
//! buffer, large ones for throughput.
//!
//! # Memory ceiling
//!
//! What strangers can make an endpoint hold at once, by construction:
//!
//! ```text
//! per connection  = connection_window                 received, not yet read
//!                 + max_streams x (MAX_FRAME_LEN + 2 KiB)
//!                                                     a small reply each stream's reader does
//!                                                     not take (until the 20 s write deadline),
//!                                                     and the stream's task
//!                 + 80 KiB                            the control stream's decoder (a 64 KiB
//!                                                     read and a partial 16 KiB frame)
//!                 + 64 KiB                            QUIC connection state
//! per node        = max_connections x per connection
//!                 + upload budget                     pieces and manifests being sent (node:
//!                                                     64 MiB, or one piece if larger)
//!                 + upload bookkeeping                32 contents x 65,536 pieces x 2 B = 4 MiB
//! ```
//!
//! With the defaults (MAX_FRAME_LEN = 16 KiB):
//!
//! | role | windows (stream / connection) | streams | connections | per connection | per node |
//! |---|---|---|---|---|---|
//! | [`Limits::node`] | 64 KiB / 256 KiB | 64 | 256 | 256 + 64 x 18 + 80 + 64 KiB = 1.5 MiB | 256 x 1.5 + 68 = ~450 MiB |
//! | [`Limits::storage`] | 4 MiB / 8 MiB | 64 | 64 | 8 MiB + 1.3 MiB = 9.3 MiB | 64 x 9.3 + 68 = ~665 MiB |
//! | [`Limits::tracker`] | 64 KiB / 256 KiB | 32 | 4096 | 256 + 32 x 18 + 80 + 64 KiB = 976 KiB | 4096 x 0.95 = ~3.9 GiB |
//!
//! These are worst cases that need every connection slot filled (hundreds of distinct source
//! addresses: each address may hold at most `per_ip` connections, each node id `per_peer`)
//! and every peer refusing to read. One hostile host is held to `per_ip x per connection`:
//! 32 x 1.5 = 48 MiB against a node (192 MiB from loopback, whose cap is 128). The tracker's
//! row covers only what this crate bounds; what its requests cost is the tracker's to bound.

/// Receive windows and connection caps of an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes a peer may send on one stream it opened before we read them (serving side).
    pub stream_window: u32,
    /// Bytes a peer may send on one connection to us before we read them (serving side).
    pub connection_window: u32,
    /// Bytes we may have sent and not yet had acknowledged, per connection we serve. Data we
    /// write is our own (pieces we chose to send), so this sets upload throughput per peer
    /// (send window / round-trip time), not what strangers can make us hold.
    pub send_window: u64,
    /// Request streams a peer may have open at once on one connection to us.
    pub max_streams: u32,
    /// Connections served at once; more are refused before the handshake.
    pub max_connections: usize,
    /// Connections served at once from one node id; more are closed after the handshake
    /// (the id is only known then).
    pub per_peer: usize,
    /// Connections served at once from one source IP address; more are refused before the
    /// handshake.
    pub per_ip: usize,
    /// [`Limits::per_ip`] for loopback addresses. Loopback peers run on this machine, and a
    /// testnet runs dozens of nodes (and their fetches and pushes) on 127.0.0.1, which the
    /// ordinary per-address cap would refuse; the total cap still bounds them.
    pub per_loopback_ip: usize,
    /// Stream receive window on connections this endpoint dials (downloads: large, for
    /// throughput; we chose the peer and read every byte into a bounded buffer).
    pub dial_stream_window: u32,
    /// Connection receive window on connections this endpoint dials.
    pub dial_connection_window: u32,
}

impl Limits {
    /// An ordinary node: strangers only send it small frames (hellos, subscriptions, requests),
    /// so its serving side advertises tiny windows; its dialing side downloads at full speed.
    pub fn node() -> Self {
        Self {
            stream_window: 64 * 1024,
            connection_window: 256 * 1024,
            send_window: 16 * 1024 * 1024,
            max_streams: 64,
            max_connections: 256,
            per_peer: 16,
            per_ip: 32,
            per_loopback_ip: 128,
            dial_stream_window: 16 * 1024 * 1024,
            dial_connection_window: 64 * 1024 * 1024,
        }
    }

    /// A storage node: its serving side receives pushed pieces, so moderate windows, and fewer
    /// connections to keep the product bounded.
    pub fn storage() -> Self {
        Self {
            stream_window: 4 * 1024 * 1024,
            connection_window: 8 * 1024 * 1024,
            max_connections: 64,
            per_ip: 16,
            per_loopback_ip: 48,
            ..Self::node()
        }
    }

    /// A tracker: small requests from many nodes, so tiny windows and many connections. It
    /// dials nobody with bulk data, so its dialing windows are small too.
    pub fn tracker() -> Self {
        Self {
            stream_window: 64 * 1024,
            connection_window: 256 * 1024,
            send_window: 1024 * 1024,
            // Above the tracker's own cap of 16 requests in progress per connection, so that a
            // request waiting for one of those slots is queued by the tracker (and served when a
            // silent stream passes its deadline) rather than stuck on QUIC stream credit.
            max_streams: 32,
            max_connections: 4096,
            per_peer: 16,
            per_ip: 32,
            per_loopback_ip: 4096,
            dial_stream_window: 64 * 1024,
            dial_connection_window: 256 * 1024,
        }
    }

    /// The per-address cap that applies to `ip`.
    pub fn per_ip_cap(&self, ip: std::net::IpAddr) -> usize {
        if ip.to_canonical().is_loopback() {
            self.per_loopback_ip
        } else {
            self.per_ip
        }
    }
}

impl Default for Limits {
    /// [`Limits::node`].
    fn default() -> Self {
        Self::node()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serving_windows_fit_the_role() {
        let (node, storage, tracker) = (Limits::node(), Limits::storage(), Limits::tracker());
        // Strangers can make an ordinary node or a tracker buffer far less than a storage node.
        assert!(node.connection_window <= 256 * 1024);
        assert!(tracker.connection_window <= node.connection_window);
        assert!(storage.connection_window > node.connection_window);
        // The bulk side is the dialing side of a downloader.
        assert!(node.dial_connection_window >= 16 * node.connection_window);
        for l in [node, storage, tracker] {
            assert!(l.stream_window <= l.connection_window);
            assert!(l.per_peer <= l.per_ip && l.per_ip <= l.max_connections);
            assert!(l.per_loopback_ip <= l.max_connections);
        }
        // Total receive buffering a full storage node may be made to hold stays under 1 GiB.
        assert!(storage.max_connections as u64 * u64::from(storage.connection_window) <= 1 << 30);
    }

    #[test]
    fn loopback_gets_its_own_cap() {
        let l = Limits::node();
        assert_eq!(l.per_ip_cap("127.0.0.1".parse().unwrap()), l.per_loopback_ip);
        assert_eq!(l.per_ip_cap("::1".parse().unwrap()), l.per_loopback_ip);
        assert_eq!(l.per_ip_cap("192.0.2.7".parse().unwrap()), l.per_ip);
    }
}
