//! Command-line front ends.
//!
//! `timeout` is the argument layer of `warden timeout`, a drop-in for GNU
//! coreutils `timeout`; `signals` and `duration` hold the operand rules it
//! shares with other subcommands (`warden run --signal`), `exit_status` the
//! statuses it exits with.

mod c_locale;
pub(crate) mod duration;
pub(crate) mod exit_status;
pub(crate) mod signals;
pub(crate) mod timeout;

#[cfg(test)]
mod gnu_differential;
