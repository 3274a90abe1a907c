//! Stand-in for the direct spawn (`direct.rs`) where it does not exist (not Linux, or another
//! architecture): every spawn with setup goes through the exec shim.

use std::io;

use super::shim::{ShimPlan, Step};
use super::unix::SpawnArgs;

/// Never built here: no plan can be carried out without the shim.
#[derive(Debug, Clone)]
pub(crate) enum DirectSetup {}

impl DirectSetup {
    /// Always `None`: the shim does the setup.
    pub(crate) fn for_plan(_plan: &ShimPlan) -> Option<DirectSetup> {
        None
    }
}

/// Never called: there is no [`DirectSetup`] to call it with.
pub(crate) fn spawn(
    _args: &SpawnArgs<'_>,
    setup: &DirectSetup,
) -> io::Result<Result<libc::pid_t, (Step, i32)>> {
    match *setup {}
}
