//! Command-line front ends of the `warden` binary.
//!
//! - `timeout`, `gnu_ladder`, `timeout_main`: `warden timeout`, a drop-in for GNU coreutils
//!   `timeout` (its argument layer, its reactions to timers and signals as a state machine,
//!   and the run on a contained process tree);
//! - `run`, `report`: `warden run`, one program or SDK worker job under the full ladder, with
//!   its exit status rules and JSON report;
//! - `batch`, `batch_exec`, `batch_report`: `warden batch`, one job per line of stdin, N at a
//!   time (the loop; the plain and protocol executors; the JSON Lines and exit status), built
//!   from `run`'s pieces;
//! - `signals`, `duration`, `exit_status`, `c_locale`: operand rules and statuses shared by both;
//! - `signal_set`, `stop`, `containment`: warden's own signals (`stop`: the stop signals and
//!   `--stop-signal`, shared by the subcommands that run a ladder), the containment choice;
//! - `unix`: process-wide signal state (the CLI's only unsafe code).

pub(crate) mod batch;
pub(crate) mod batch_exec;
pub(crate) mod batch_report;
mod c_locale;
pub(crate) mod containment;
pub(crate) mod duration;
pub(crate) mod exit_status;
pub(crate) mod gnu_ladder;
pub(crate) mod out;
pub(crate) mod report;
pub(crate) mod run;
pub(crate) mod signal_set;
pub(crate) mod signals;
pub(crate) mod stop;
pub(crate) mod timeout;
pub(crate) mod timeout_main;
pub(crate) mod unix;

#[cfg(test)]
mod gnu_differential;

/// How long warden waits, on Ctrl-Z, for its tree to stop (the freezer to report `frozen 1`,
/// or every member to be stopped) before it stops itself anyway.
pub(crate) const SUSPEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// The runtime both subcommands run on (current-thread: warden itself does little), started
/// after argument parsing; as PID 1 also the reaper of orphaned zombies (tini's duty). Prints
/// one line and returns `None` if the runtime cannot start.
pub(crate) fn start_runtime(program: &str) -> Option<tokio::runtime::Runtime> {
    // Every child of the CLI is a tree it spawned: it may be their subreaper.
    warden::claim_all_children();
    if std::process::id() == 1 {
        warden::start_orphan_reaper();
    }
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => Some(runtime),
        Err(e) => {
            out::say!("{program}: cannot start the runtime: {e}");
            None
        }
    }
}
