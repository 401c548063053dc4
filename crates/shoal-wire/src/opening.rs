//! The opening frame of a stream: what kind of stream it is.

use crate::codec::{DecodeError, Frame};
use crate::message::{Message, Request};
use crate::offline::OfflineRequest;

/// The first frame of a stream the dialer opens: [`Message::Hello`] opens the control stream,
/// a [`Request`] opens a request stream, an [`OfflineRequest`] an offline request stream.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Opening {
    /// The control stream's first message.
    Control(Message),
    /// A request stream's request.
    Request(Request),
    /// An offline request (to a storage node).
    Offline(OfflineRequest),
}

impl Frame for Opening {
    fn encode_body(&self, out: &mut Vec<u8>) {
        match self {
            Self::Control(m) => m.encode_body(out),
            Self::Request(r) => r.encode_body(out),
            Self::Offline(r) => r.encode_body(out),
        }
    }

    fn decode_body(ty: u8, body: &[u8]) -> Result<Self, DecodeError> {
        match ty {
            0x10..=0x1f => Request::decode_body(ty, body).map(Self::Request),
            0x30..=0x3f => OfflineRequest::decode_body(ty, body).map(Self::Offline),
            _ => Message::decode_body(ty, body).map(Self::Control),
        }
    }
}
