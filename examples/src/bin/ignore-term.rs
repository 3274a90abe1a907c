//! Scenario: a plain program (no SDK, no channel) that ignores SIGTERM (`SIG_IGN`) and then blocks
//! forever in `pause()` without using any CPU. warden runs it with `WorkerConfig::plain()`: the
//! ladder starts at the polite signal (SIGTERM + SIGCONT), which does nothing here, so SIGKILL
//! after `kill_after` ends it: outcome `killed`.
//!
//! Usage: `ignore-term [READY_PATH]`. Once SIGTERM is ignored it writes `ready` and a newline to
//! READY_PATH (a FIFO the host reads), so a host can wait for readiness instead of guessing. The
//! code is `warden_examples::workers::ignore_term`.

fn main() -> std::process::ExitCode {
    let ready = std::env::args_os().nth(1).map(std::path::PathBuf::from);
    warden_examples::workers::ignore_term(ready.as_deref())
}
