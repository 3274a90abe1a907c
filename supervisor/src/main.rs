//! The `warden` command line (work in progress).

mod cli;

fn main() {}
