//! warden: an out-of-process supervisor (work in progress).
#![warn(missing_docs)]

pub mod escalation;
pub use escalation::{Action, Deadlines, Escalation, Stage, Trace};
