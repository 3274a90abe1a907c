//! Process trees: what a worker started dies with it.

use nix::sys::signal::Signal;
use warden::{CancelReason, CancellationToken, JobOptions, Outcome, Stage, WorkerConfig};
use warden_tests::mode;

use crate::support::*;

/// Runs a tree-making worker, cancels it once its children are up (it dies of SIGTERM; its
/// children ignore SIGTERM), and returns the children's pids after checking the report.
async fn cancel_tree(t: &Ctx, args: &[&str]) -> Vec<u32> {
    let config = WorkerConfig::protocol().deadlines(short(ms(100), ms(60_000)));
    let worker = t.spawn(args, config).await;
    let token = CancellationToken::new();
    let (options, mut progress) = watch(JobOptions::new().token(token.clone()));
    let (report, children) = tokio::join!(run_job(&worker, WAIT, options), async {
        let children = progress.ready().await;
        token.cancel();
        children
    });

    assert_eq!(report.outcome, Outcome::Terminated, "{report:#?}");
    assert_eq!(report.stage, Some(Stage::Signal));
    assert_eq!(report.reason, Some(CancelReason::Requested));
    assert_eq!(report.exit, Some(by_signal(Signal::SIGTERM)));
    assert_eq!(
        report.trace.kill_sent, None,
        "the ladder itself never reached SIGKILL"
    );
    assert!(!children.is_empty());
    assert_eq!(shutdown(worker).await, Some(by_signal(Signal::SIGTERM)));
    children
}

#[test]
fn fork_tree_is_gone_after_the_job() {
    e2e("fork_tree_is_gone_after_the_job", |t| async move {
        let children = cancel_tree(&t, &[mode::FORK_TREE, "3"]).await;
        assert_eq!(children.len(), 3);
        // They survived the polite signal; the group SIGKILL after the leader's exit ends them.
        for pid in children {
            t.wait_gone(pid, "a child in the worker's process group")
                .await;
        }
    });
}

#[test]
#[ignore = "needs containment (issue 3)"]
fn setsid_escapee_is_gone_after_the_job() {
    e2e("setsid_escapee_is_gone_after_the_job", |t| async move {
        let children = cancel_tree(&t, &[mode::SETSID_ESCAPE]).await;
        assert_eq!(children.len(), 1);
        for pid in children {
            t.wait_gone(pid, "a child that left the worker's session")
                .await;
        }
    });
}
