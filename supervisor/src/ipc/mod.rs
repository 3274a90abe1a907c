//! The supervisor's end of a worker's channel.

mod channel;

pub(crate) use channel::{Channel, Event, UnreadProbe};
