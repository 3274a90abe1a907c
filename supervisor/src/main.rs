//! The `warden` command line (work in progress).

#[cfg_attr(
    not(test),
    expect(
        dead_code,
        reason = "the CLI layer is wired into main by a later change"
    )
)]
mod cli;

fn main() {
    // First: when started as warden's exec shim this execs the target and never returns.
    warden::shim::run_if_shim();
}
