//! The Shoal peer protocol, without I/O.
//!
//! Goals: a small explicit wire format with a version and a hard size limit on every message;
//! piece bytes sent raw after a small header, so bulk data is never serialised byte by byte;
//! logic that runs the same in a node, a simulation and a fuzzer. Non-goals: encryption and
//! peer authentication (QUIC with TLS bound to node keys does both, in `shoal-net`), and
//! scheduling (which piece to ask whom for is `shoal-swarm`'s job).
//!
//! A connection (ALPN [`ALPN`]) carries:
//! - one bidirectional **control stream**, opened by the dialer, carrying [`Message`]s both
//!   ways: [`Message::Hello`] first, then subscriptions, bitfields, haves and rejects. The
//!   [`Session`] state machine checks their order and bounds.
//! - one bidirectional **request stream** per request, opened by the downloader: a
//!   [`Request`] frame, answered by a [`Response`] header frame followed, for manifests and
//!   pieces, by exactly `len` raw bytes; then the stream ends. Many requests run at once
//!   (pipelining), each on its own stream, so a slow piece never blocks another.
//!
//! - offline request streams to storage nodes: see [`offline`].
//!
//! Framing: `len: u32 BE | type: u8 | body`, where `len` counts type and body and may not
//! exceed [`MAX_FRAME_LEN`]. [`Decoder`] returns `Ok(None)` for an incomplete frame.

#![warn(missing_docs)]

mod codec;
mod message;
pub mod offline;
mod opening;
mod session;
#[cfg(test)]
mod testutil;
pub mod tracker;

pub use codec::{encode, encode_into, DecodeError, Decoder, Frame, MAX_FRAME_LEN};
pub use message::{Message, RejectReason, Request, Response, MAX_REASON_LEN, MAX_TOKEN_LEN};
pub use opening::Opening;
pub use session::{Event, ProtocolError, Session, MAX_SUBSCRIPTIONS};

/// The ALPN of the peer protocol, version 2.
pub const ALPN: &[u8] = b"shoal/peer/2";
/// The protocol version carried in [`Message::Hello`]. Version 2: pushes carry flags, a device
/// certificate and the token in a new layout; `QuotaExceeded` rejects.
pub const PROTOCOL_VERSION: u16 = 2;
