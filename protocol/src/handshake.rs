//! Version rules for the handshake.

use thiserror::Error;

/// The protocol version this crate speaks. Bumped on any incompatible wire change.
pub const PROTOCOL_VERSION: u16 = 1;

/// The peer speaks a protocol this side cannot.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("incompatible protocol version: peer speaks {peer}, this side speaks {ours}")]
pub struct HandshakeError {
    /// The version the peer announced.
    pub peer: u16,
    /// The version this side speaks.
    pub ours: u16,
}

/// Checks a peer's announced version. Version 1 is the only one so far, so compatibility is
/// equality; a later version may accept a range.
pub fn check_version(peer: u16) -> Result<u16, HandshakeError> {
    if peer == PROTOCOL_VERSION {
        Ok(PROTOCOL_VERSION)
    } else {
        Err(HandshakeError {
            peer,
            ours: PROTOCOL_VERSION,
        })
    }
}
