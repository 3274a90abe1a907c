//! Version rules for the handshake.
//!
//! The worker's `Hello` names the newest version it speaks; the supervisor answers with the
//! version both will speak ([`negotiate`]: the older of the two, if the supervisor still speaks
//! it) or refuses; the worker checks that answer ([`check_version`]).

use thiserror::Error;

/// The newest protocol version this crate speaks. Bumped on any incompatible wire change.
pub const PROTOCOL_VERSION: u16 = 2;

/// The oldest protocol version this crate still speaks.
pub const MIN_PROTOCOL_VERSION: u16 = 1;

/// The first version in which the supervisor may send `StartJob` while earlier jobs have no
/// terminal message yet (the worker queues them and runs them in order; PROTOCOL.md, section 5).
pub const QUEUED_JOBS_VERSION: u16 = 2;

/// Whether jobs may be queued on a connection that speaks `version` (see
/// [`QUEUED_JOBS_VERSION`]).
pub fn queues_jobs(version: u16) -> bool {
    version >= QUEUED_JOBS_VERSION
}

/// The peer speaks a protocol this side cannot.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "incompatible protocol version: peer speaks {peer}, this side speaks {min} to {ours}",
    min = MIN_PROTOCOL_VERSION
)]
pub struct HandshakeError {
    /// The version the peer announced.
    pub peer: u16,
    /// The newest version this side speaks.
    pub ours: u16,
}

/// The supervisor's side: the version to answer a worker's `Hello` with, the older of the
/// worker's newest and ours.
///
/// # Errors
/// [`HandshakeError`] when that version is older than [`MIN_PROTOCOL_VERSION`] (the worker
/// speaks only versions this side no longer does).
pub fn negotiate(peer: u16) -> Result<u16, HandshakeError> {
    let version = peer.min(PROTOCOL_VERSION);
    if version >= MIN_PROTOCOL_VERSION {
        Ok(version)
    } else {
        Err(HandshakeError {
            peer,
            ours: PROTOCOL_VERSION,
        })
    }
}

/// The worker's side: checks the version the supervisor's `Hello` settled on.
///
/// # Errors
/// [`HandshakeError`] when this side does not speak it (older than [`MIN_PROTOCOL_VERSION`] or
/// newer than [`PROTOCOL_VERSION`]).
pub fn check_version(peer: u16) -> Result<u16, HandshakeError> {
    if (MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&peer) {
        Ok(peer)
    } else {
        Err(HandshakeError {
            peer,
            ours: PROTOCOL_VERSION,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_older_version_is_spoken() {
        assert_eq!(negotiate(1), Ok(1));
        assert_eq!(negotiate(2), Ok(2));
        // A newer worker is offered ours; it decides whether it still speaks it.
        assert_eq!(negotiate(7), Ok(PROTOCOL_VERSION));
        assert_eq!(negotiate(0), Err(HandshakeError { peer: 0, ours: 2 }));
        assert_eq!(check_version(1), Ok(1));
        assert_eq!(check_version(2), Ok(2));
        assert!(check_version(0).is_err());
        assert!(check_version(3).is_err());
        assert!(!queues_jobs(1));
        assert!(queues_jobs(2));
    }
}
