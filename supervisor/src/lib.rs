//! warden: an out-of-process supervisor (work in progress).
#![warn(missing_docs)]
