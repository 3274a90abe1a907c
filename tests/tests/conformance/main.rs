//! The conformance suite: the protocol's rules checked end to end against any worker SDK.
//!
//! Each case takes a worker *command* ([`sdks::Sdk`]) that implements the modes of
//! `protocol/CONFORMANCE.md` and runs it either under the real supervisor (the `warden`
//! library) or, for what a well-behaved supervisor never sends (refusals, garbage, oversized
//! frames, a cancel right behind its job, an end-of-file), under [`peer::Peer`], a supervisor
//! written by hand on a socketpair. Every case runs once per SDK: `rust::` is the Rust SDK's
//! `conformance-worker`, `python::` and `python_async::` are
//! `sdk/python/tests/conformance_worker.py` on `warden_worker.serve` and `serve_async`. A new
//! SDK adds one line to the `conformance!` call below and a constructor in `sdks.rs`.
//!
//! The e2e kit (`../e2e/support.rs`) runs every case: bounded waits that name what they waited
//! for, readiness by progress report (never a sleep), and the survivor check by marker.

#[path = "../e2e/support.rs"]
#[expect(
    dead_code,
    reason = "the e2e suite's kit, shared; this suite uses part of it"
)]
mod support;

mod cases;
mod peer;
mod sdks;

use std::future::Future;

use sdks::Sdk;
use support::{Ctx, e2e};

/// Runs `case` against `sdk` under the e2e kit, or says loudly why it is skipped.
fn run<F, Fut>(case: &str, sdk: Option<Sdk>, body: F)
where
    F: FnOnce(Ctx, Sdk) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(sdk) = sdk else {
        eprintln!("SKIPPED conformance case {case}: this SDK is not available (see above)");
        return;
    };
    let name = format!("{}-{case}", sdk.name);
    e2e(&name, move |t| body(t, sdk));
}

/// One test per case and SDK: `rust::echo_completes`, `python::echo_completes`, ...
macro_rules! conformance {
    (sdks: [$($sdk:ident => $make:expr),* $(,)?], cases: $cases:tt) => {
        $( conformance!(@sdk $sdk, $make, $cases); )*
    };
    (@sdk $sdk:ident, $make:expr, [$($(#[$attr:meta])* $case:ident),* $(,)?]) => {
        mod $sdk {
            $(
                $(#[$attr])*
                #[test]
                fn $case() {
                    crate::run(stringify!($case), $make, crate::cases::$case);
                }
            )*
        }
    };
}

conformance! {
    sdks: [
        rust => crate::sdks::Sdk::rust(),
        python => crate::sdks::Sdk::python("blocking"),
        python_async => crate::sdks::Sdk::python("async"),
    ],
    cases: [
        // Under the real supervisor.
        echo_completes,
        failed_carries_the_message,
        cancelled_at_stage_one,
        timeout_cancels_cooperatively,
        deadline_reaches_the_job,
        crossing_cancel_completes_despite_cancel,
        output_over_the_frame_limit_fails,
        stays_live_under_unresponsive_after_while_spinning,
        // Under the hand-written supervisor.
        handshake_over_a_split_stream,
        refusal_exits_non_zero,
        other_version_exits_non_zero,
        cancel_before_start_answers_once,
        stale_cancels_are_ignored,
        queued_jobs_run_in_order,
        progress_coalesces,
        heartbeats_flow_while_the_handler_spins,
        sigterm_cancels_then_exits_zero,
        sigterm_while_idle_exits_zero,
        eof_while_idle_exits,
        eof_with_a_busy_handler_exits_within_the_grace,
        oversized_frames_from_the_supervisor_end_serving,
        garbage_from_the_supervisor_ends_serving,
    ]
}
