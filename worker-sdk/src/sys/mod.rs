//! Platform code: the only place in this crate with `unsafe`.
//!
//! Each platform file provides:
//! - `claim_inherited_socket(fd)`: checks that a raw descriptor number is open and is a Unix
//!   stream socket, and only then takes ownership of it as an `OwnedFd`.
//! - `set_cloexec(fd)`: marks a descriptor close-on-exec so the worker's own children never
//!   inherit the channel.
//! - `register_readable(stream)`: registers the channel with the runtime's reactor for
//!   readability alone.

#[cfg(unix)]
#[path = "unix.rs"]
mod imp;

pub(crate) use imp::{ClaimError, claim_inherited_socket, register_readable, set_cloexec};
