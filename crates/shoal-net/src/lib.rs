//! Shoal's transport: node identity, QUIC endpoints whose TLS is bound to node keys, and a
//! shared upload/download rate limiter.
//!
//! - [`identity`]: the node's ed25519 key (a libp2p keypair), kept in the data dir with
//!   mode 0600; the node id is its libp2p `PeerId`.
//! - [`tls`]: self-signed certificates made from the node key itself, and verifiers that read
//!   the peer's key from its certificate. TLS 1.3's CertificateVerify proves the peer holds that
//!   key, so a dialer that names a node id refuses any other peer.
//! - [`endpoint`]: quinn endpoint and transport settings tuned for bulk transfer.
//! - [`limits`]: flow-control windows and connection caps per role, and the memory ceiling
//!   they give; [`admission`] applies the caps to incoming connections.
//! - [`ratelimit`]: a token bucket shared by all connections.
//! - [`framed`]: reading length-prefixed frames from a stream, with a deadline.

#![warn(missing_docs)]

pub mod admission;
pub mod endpoint;
pub mod framed;
pub mod identity;
pub mod limits;
pub mod ratelimit;
pub mod signal;
pub mod tls;

pub use endpoint::{connect, remote_node_id, Endpoint};
pub use identity::Identity;
pub use limits::Limits;
pub use ratelimit::RateLimiter;
