//! What the fixture worker (`src/bin/fixture-worker.rs`) and the end-to-end tests
//! (`tests/e2e/`) agree on: mode names, readiness texts, payloads, and the marker variable that
//! lets a test find every process it started.
//!
//! A fixture that is ready for the test's next step (in a job, signal dispositions set, its
//! children started) says so with a progress report whose text starts with [`READY`]; children's
//! pids, when there are any, follow it:
//!
//! ```
//! use warden_tests::{parse_ready, ready_text};
//!
//! assert_eq!(ready_text(&[]), "ready");
//! assert_eq!(ready_text(&[41, 42]), "ready:41,42");
//! assert_eq!(parse_ready("ready:41,42"), Some(vec![41, 42]));
//! assert_eq!(parse_ready("ready"), Some(vec![]));
//! assert_eq!(parse_ready("working"), None);
//! ```
#![warn(missing_docs)]

pub mod sys;

/// Set on every process a test spawns, to a value unique to that test run; descendants inherit
/// it. After the test, any process whose environment still holds it is a survivor.
pub const MARKER_VAR: &str = "WARDEN_TEST_MARKER";

/// Progress text (or its prefix) a fixture reports once the test may go on.
pub const READY: &str = "ready";

/// Payload prefix that makes a cooperative worker echo the rest of the payload.
pub const ECHO: &[u8] = b"echo:";

/// Payload prefix that makes a cooperative worker fail with the rest of the payload as its
/// error message.
pub const FAIL: &[u8] = b"fail:";

/// The progress a cooperative worker reports in an echo job, just before its result.
pub const ECHO_PROGRESS: (f32, &str) = (0.5, "echoing");

/// Output of a late-result worker, which finishes although it was asked to stop.
pub const LATE_OUTPUT: &[u8] = b"late but done";

/// Output a result-then-exit worker writes just before it dies.
pub const RESULT_OUTPUT: &[u8] = b"written before exit";

/// A whole frame whose body is an unknown message tag (99): undecodable.
pub const GARBAGE_FRAME: [u8; 5] = [1, 0, 0, 0, 99];

/// The first part of a frame that declares 10 body bytes: the header and 3 of them.
pub const PARTIAL_FRAME: [u8; 7] = [10, 0, 0, 0, 3, 1, 2];

/// Frame body length a `trickle` worker declares: at one byte per interval it never completes
/// within a test.
pub const TRICKLE_FRAME_LEN: u32 = 10_000;

/// Bytes of text in each report of a `progress-flood` worker (the supervisor keeps at most
/// `MAX_PROGRESS_TEXT` of them).
pub const FLOOD_TEXT_LEN: usize = 4096;

/// Text of the last report a `progress-flood` worker sends, just before its result.
pub const FLOOD_LAST: &str = "flood done";

/// Payload that makes a [`mode::POOL`] worker die of SIGSEGV.
pub const POOL_CRASH: &[u8] = b"crash";

/// Payload prefix that makes a [`mode::POOL`] worker grow by the MiB that follow and keep them.
pub const POOL_GROW: &[u8] = b"grow:";

/// Payload that makes a [`mode::POOL`] worker stop itself (SIGSTOP).
pub const POOL_STOP: &[u8] = b"stop";

/// Payload that makes a [`mode::POOL`] worker report ready and ignore its token forever.
pub const POOL_IGNORE: &[u8] = b"ignore";

/// The protocol version a `bad-version` worker announces: older than any warden speaks (a
/// newer one is not refused: it is offered warden's newest, PROTOCOL.md section 7).
pub const BAD_VERSION: u16 = 0;

/// Fixture modes: the first argument of `fixture-worker`.
pub mod mode {
    /// SDK worker. Payload `echo:<bytes>`: reports [`ECHO_PROGRESS`](crate::ECHO_PROGRESS) and
    /// returns `<bytes>`. Payload `fail:<text>`: fails with `<text>`. Any other payload:
    /// reports ready, waits for its token, reports
    /// [`cancelled_text`](crate::cancelled_text) and answers `Cancelled`.
    pub const COOPERATIVE: &str = "cooperative";
    /// SDK worker that never looks at its token; SIGTERM keeps its default disposition.
    pub const IGNORE_CANCEL: &str = "ignore-cancel";
    /// SDK worker that never looks at its token and whose handler never returns; the SDK
    /// catches SIGTERM (which only trips the token), so only SIGKILL ends it.
    pub const IGNORE_TERM: &str = "ignore-term";
    /// SDK worker that reports ready, waits for its token, then returns
    /// [`LATE_OUTPUT`](crate::LATE_OUTPUT) anyway.
    pub const LATE_RESULT: &str = "late-result";
    /// SDK worker whose handler calls `exit(0)`.
    pub const EXIT_WITHOUT_RESULT: &str = "exit-without-result";
    /// SDK worker whose handler exits with the status given as the next argument.
    pub const EXIT_CODE: &str = "exit-code";
    /// SDK worker whose handler dies of a signal: next argument `segv` or `abort`.
    pub const CRASH: &str = "crash";
    /// SDK worker (SIGTERM at its default) whose handler starts N (next argument) children in
    /// its process group that ignore SIGTERM and block forever, reports `ready:<pids>`, then
    /// blocks forever.
    pub const FORK_TREE: &str = "fork-tree";
    /// As [`FORK_TREE`] with one child that first moves to a session of its own (`setsid`).
    pub const SETSID_ESCAPE: &str = "setsid-escape";
    /// Child of [`FORK_TREE`]: ignores SIGTERM, prints `ready`, blocks forever.
    pub const SLEEPER: &str = "sleeper";
    /// Child of [`SETSID_ESCAPE`]: `setsid`, then as [`SLEEPER`].
    pub const ESCAPEE: &str = "escapee";

    /// Raw protocol: never sends its hello; blocks forever.
    pub const HANG_HANDSHAKE: &str = "hang-handshake";
    /// Raw protocol: sends a heartbeat before its hello.
    pub const HEARTBEAT_BEFORE_HELLO: &str = "heartbeat-before-hello";
    /// Raw protocol: announces protocol version [`BAD_VERSION`](crate::BAD_VERSION).
    pub const BAD_VERSION: &str = "bad-version";
    /// Raw protocol: [`GARBAGE_FRAME`](crate::GARBAGE_FRAME) right after the handshake.
    pub const GARBAGE_IDLE: &str = "garbage-idle";
    /// Raw protocol: [`GARBAGE_FRAME`](crate::GARBAGE_FRAME) once a job started.
    pub const GARBAGE: &str = "garbage";
    /// Raw protocol: once a job started, a `Completed` for the job id plus 1000.
    pub const UNKNOWN_JOB: &str = "unknown-job";
    /// Raw protocol: once a job started, a frame header one byte over the announced limit.
    pub const OVERSIZED: &str = "oversized";
    /// Raw protocol: once a job started, a frame header declaring `u32::MAX` body bytes, then
    /// body bytes until the channel breaks or the next argument's count of MiB is written.
    pub const HUGE_LENGTH: &str = "huge-length";
    /// Raw protocol: once a job started, a 15-byte frame body: a `Completed` for the job whose
    /// output claims 2^50 bytes.
    pub const HUGE_CLAIM: &str = "huge-claim";
    /// Raw protocol: once a job started, a valid `Completed` for it with one byte more in the
    /// frame.
    pub const TRAILING_BYTES: &str = "trailing-bytes";
    /// Raw protocol: once a job started, a frame header declaring
    /// [`TRICKLE_FRAME_LEN`](crate::TRICKLE_FRAME_LEN) body bytes, then one body byte every N
    /// milliseconds (next argument).
    pub const TRICKLE: &str = "trickle";
    /// Raw protocol: once a job started, N MiB (next argument) of progress reports for it with
    /// [`FLOOD_TEXT_LEN`](crate::FLOOD_TEXT_LEN) bytes of text each, then one with the text
    /// [`FLOOD_LAST`](crate::FLOOD_LAST), then `Completed` with the count of reports sent (in
    /// decimal) as its output; exits 0 on `Shutdown`.
    pub const PROGRESS_FLOOD: &str = "progress-flood";
    /// Raw protocol: once a job started, N MiB (next argument) of heartbeats, then `Completed`
    /// with the count of heartbeats sent (in decimal) as its output; exits 0 on `Shutdown`.
    pub const HEARTBEAT_FLOOD: &str = "heartbeat-flood";
    /// Raw protocol: once a job started, [`PARTIAL_FRAME`](crate::PARTIAL_FRAME) and nothing more.
    pub const STALL: &str = "stall";
    /// Raw protocol: once a job started, shuts its channel down (both ways) and blocks forever.
    pub const HANGUP: &str = "hangup";
    /// Raw protocol: [`PARTIAL_FRAME`](crate::PARTIAL_FRAME) right after the handshake.
    pub const STALL_IDLE: &str = "stall-idle";
    /// Raw protocol: sends [`PARTIAL_FRAME`](crate::PARTIAL_FRAME) instead of its hello.
    pub const STALL_BEFORE_HELLO: &str = "stall-before-hello";
    /// Raw protocol: lists its open descriptors before anything else, completes the handshake,
    /// answers its first job with them (`0,1,2,3`), and exits 0 on `Shutdown`.
    pub const LIST_FDS: &str = "list-fds";
    /// Raw protocol: once a job started, a second hello.
    pub const SECOND_HELLO: &str = "second-hello";
    /// Raw protocol: once a job started, `Completed` with
    /// [`RESULT_OUTPUT`](crate::RESULT_OUTPUT), then at once `_exit(0)` (next argument `exit`)
    /// or SIGKILL to itself (`kill`).
    pub const RESULT_THEN_EXIT: &str = "result-then-exit";

    /// Raw protocol: completes the handshake, waits for a job, then sends nothing at all (no
    /// heartbeat, no result: an SDK without heartbeats) and blocks forever, every signal at
    /// its default.
    pub const NEVER_HEARTBEATS: &str = "never-heartbeats";
    /// SDK worker (heartbeats flow, SIGTERM at its default): once a job started, stops its
    /// whole process with SIGSTOP, then blocks forever once continued.
    pub const SIGSTOP_SELF: &str = "sigstop-self";

    /// No protocol: exits with the status given as the next argument.
    pub const PLAIN_EXIT: &str = "plain-exit";
    /// No protocol: blocks forever with every signal at its default.
    pub const PLAIN_WAIT: &str = "plain-wait";
    /// No protocol: ignores SIGTERM, writes `ready` to the FIFO named by the next argument,
    /// blocks forever.
    pub const PLAIN_IGNORE_TERM: &str = "plain-ignore-term";
    /// No protocol: blocks SIGTERM, writes `ready` to the FIFO named by the next argument,
    /// waits for SIGTERM, writes `term` to it, then blocks forever (SIGTERM still blocked).
    pub const PLAIN_TELL_TERM: &str = "plain-tell-term";
    /// A supervisor: spawns N cooperative workers through warden, prints `pids:<a>,<b>...` on
    /// stdout, then blocks forever (for "the supervisor is SIGKILLed" tests).
    pub const HOST: &str = "host";
    /// No protocol: `catch-term FILE TAG exit|stay N` blocks SIGTERM, starts N more members
    /// like itself (with N = 0), prints `member TAG PID` on stdout, lets go of stdout and
    /// stderr, waits for SIGTERM, appends `TAG PID` to FILE, then exits 0 (`exit`) or sleeps
    /// 60 s (`stay`).
    pub const CATCH_TERM: &str = "catch-term";
    /// A supervisor for orphan-ladder tests: `orphan-host FILE` spawns four trees of
    /// [`CATCH_TERM`] members through warden (see `shim.rs` in the e2e tests), prints
    /// `host PID`, then blocks forever.
    pub const ORPHAN_HOST: &str = "orphan-host";

    // Limits (issue 8's untrusted plugins).

    /// SDK worker whose handler allocates and touches the MiB given as the next argument (in
    /// 8 MiB steps), then returns `allocated`.
    pub const ALLOC: &str = "alloc";
    // Pools (issue 9).

    /// SDK worker for pool tests (SIGTERM at its default). Payloads as [`COOPERATIVE`]
    /// (`echo:`, `fail:`, anything else waits for its token), plus [`POOL_CRASH`](crate::POOL_CRASH)
    /// (dies of SIGSEGV), `grow:<MiB>` ([`POOL_GROW`](crate::POOL_GROW): allocates and touches
    /// that much, keeps it for the rest of its life, returns), [`POOL_STOP`](crate::POOL_STOP)
    /// (stops its whole process with SIGSTOP, then blocks forever once continued) and
    /// [`POOL_IGNORE`](crate::POOL_IGNORE) (reports ready, never looks at its token, blocks).
    pub const POOL: &str = "pool";
    /// A supervisor: `pool-host NOFILE WORKERS JOBS` lowers its own `RLIMIT_NOFILE` to NOFILE,
    /// runs a pool of WORKERS [`POOL`] workers of itself, submits JOBS `echo:` jobs, waits for
    /// them all, shuts the pool down, prints `completed C deferrals D workers W` (W: the most
    /// workers seen ready at once) and exits 0.
    pub const POOL_HOST: &str = "pool-host";

    /// No protocol: starts up to N (next argument) [`PLAIN_WAIT`] children, stopping at the
    /// first refused fork, and exits with the number it started (they are left to the tree's
    /// end).
    pub const PLAIN_PROCS: &str = "plain-procs";

    // Captured output (issue 8's untrusted plugins).

    /// No protocol: `plain-print OUT ERR [FIFO]` writes OUT to stdout and ERR to stderr (each
    /// with `\n` and `\xHH` escapes decoded, so any bytes can be written), then exits 0; with
    /// FIFO, it then writes `ready` to it and blocks forever (SIGTERM at its default).
    pub const PLAIN_PRINT: &str = "plain-print";
    /// No protocol: starts an [`ESCAPEE`] (a setsid child that keeps this program's stderr),
    /// waits until it is ready, writes `escaped PID` to stdout and exits 0.
    pub const PLAIN_ESCAPE_STDERR: &str = "plain-escape-stderr";
    /// SDK worker: each job writes `out:PAYLOAD` as a line to stdout and `err:PAYLOAD` to
    /// stderr, then returns the payload.
    pub const SAY: &str = "say";
}

/// The readiness text with children's pids: `ready` or `ready:1,2,3`.
pub fn ready_text(pids: &[u32]) -> String {
    if pids.is_empty() {
        return READY.to_owned();
    }
    let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
    format!("{READY}:{}", pids.join(","))
}

/// The pids in a readiness text; `None` if `text` is not one.
pub fn parse_ready(text: &str) -> Option<Vec<u32>> {
    let rest = text.strip_prefix(READY)?;
    if rest.is_empty() {
        return Some(Vec::new());
    }
    rest.strip_prefix(':')?
        .split(',')
        .map(|pid| pid.parse().ok())
        .collect()
}

/// The progress text a cooperative worker reports when its token trips, naming the cause:
/// `cancelled:requested`, `cancelled:timeout`, `cancelled:shutdown`, `cancelled:signal`...
pub fn cancelled_text(cause: &str) -> String {
    format!("cancelled:{cause}")
}
