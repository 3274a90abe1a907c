//! Command-line front ends.
//!
//! `signals` and `duration` hold the operand rules of GNU coreutils that
//! `warden timeout` and `warden run --signal` share.

mod c_locale;
pub(crate) mod duration;
pub(crate) mod signals;
