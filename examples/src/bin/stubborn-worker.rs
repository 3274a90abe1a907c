//! Scenario: a worker that links the SDK but never looks at its cancel token. Its handler
//! (`serve_blocking`) reports progress once, so the host knows it is working, then spins in a
//! CPU-bound loop forever. warden's cancel message trips the token, which nobody checks; the
//! polite signal (SIGTERM) trips it again through the SDK's handler, to no effect; only the
//! ladder's last stage, SIGKILL to the process group, stops it: outcome `killed`.
//!
//! With `--default-sigterm` the SDK leaves SIGTERM at its default disposition
//! (`Worker::handle_sigterm(false)`), so the polite signal ends the process: outcome
//! `terminated`. The code is `warden_examples::workers::stubborn`.

fn main() -> std::process::ExitCode {
    let default_sigterm = std::env::args_os()
        .skip(1)
        .any(|a| a == "--default-sigterm");
    warden_examples::workers::stubborn(default_sigterm)
}
