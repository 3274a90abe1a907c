//! Scenario: an untrusted plugin that attacks its host, one attack per run, chosen by the first
//! argument (`hostile-worker ATTACK [ARGS...]`; see `warden_examples::hostile::Attack` for the
//! list). `plugin-host` runs it under warden's limits and sandbox; run alone, outside warden,
//! the SDK attacks fail at once for lack of a channel.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    warden_examples::hostile::main_with(&[], &args)
}
