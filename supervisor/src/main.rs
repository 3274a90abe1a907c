//! The `warden` command line (work in progress).

#[cfg_attr(
    not(test),
    expect(
        dead_code,
        reason = "the CLI layer is wired into main by a later change"
    )
)]
mod cli;

fn main() {}
