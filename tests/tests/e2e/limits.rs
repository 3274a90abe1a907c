//! Limits and the sandbox through the library: the tree's report says which mechanism
//! enforced each limit and, from the kernel's counters, whether it was hit; a job the OOM
//! killer ended is `Killed` with the limit named, and the next tree's counters start at zero.

use warden::{
    Command, JobOptions, LimitKind, Limits, Mechanism, Outcome, Sandbox, Tree, TreeOptions,
    WorkerConfig,
};
use warden_tests::mode;

use crate::support::*;

fn cgroup(mechanism: Mechanism) -> bool {
    matches!(mechanism, Mechanism::CgroupV2 | Mechanism::CgroupV1)
}

#[test]
fn an_oom_killed_sdk_worker_is_killed_by_its_memory_limit_and_counters_do_not_carry_over() {
    e2e("oom_killed_sdk_worker", |t| async move {
        let limited = || {
            WorkerConfig::protocol()
                .deadlines(patient())
                .tree(TreeOptions::new().limits(Limits::new().memory(64 << 20)))
        };
        let worker = t.spawn(&[mode::ALLOC, "1024"], limited()).await;
        let report = run_job(&worker, Vec::new(), JobOptions::new()).await;
        assert_eq!(report.outcome, Outcome::Killed, "{report:?}");
        assert_eq!(report.limit, Some(LimitKind::Memory));
        assert_eq!(
            report.exit,
            Some(by_signal(nix::sys::signal::Signal::SIGKILL))
        );
        assert_eq!(report.trace.kill_sent, None, "warden sent no SIGKILL");
        let memory = report.limits.get(LimitKind::Memory).expect("memory entry");
        assert!(cgroup(memory.mechanism), "{memory:?}");
        assert_eq!(memory.value, 64 << 20);
        assert_eq!(memory.hit, Some(true), "{memory:?}");
        assert!(memory.oom_kills >= Some(1), "{memory:?}");
        shutdown(worker).await;

        // A fresh cgroup per tree: nothing of the OOM kill above is counted here.
        let worker = t.spawn(&[mode::ALLOC, "8"], limited()).await;
        let report = run_job(&worker, Vec::new(), JobOptions::new()).await;
        assert_eq!(report.outcome, Outcome::Completed(b"allocated 8".to_vec()));
        assert_eq!(report.limit, None);
        let memory = report.limits.get(LimitKind::Memory).expect("memory entry");
        assert_eq!(
            (memory.hit, memory.oom_kills),
            (Some(false), Some(0)),
            "{memory:?}"
        );
        assert!(memory.peak.is_some_and(|p| p >= 8 << 20), "{memory:?}");
        shutdown(worker).await;
    });
}

#[test]
fn a_fork_bomb_under_a_process_limit_of_8_peaks_at_8_and_its_children_die_with_the_tree() {
    e2e("fork_bomb_under_max_procs", |t| async move {
        let mut cmd: Command = t.command(&[mode::PLAIN_PROCS, "50"]);
        cmd.stdin(warden::Stdio::Null);
        let options = TreeOptions::new().limits(Limits::new().processes(8));
        let mut tree = within(LIMIT, "spawn of the fork bomb", Tree::spawn(&cmd, options))
            .await
            .expect("spawn");
        let status = within(LIMIT, "the fork bomb's exit", tree.wait())
            .await
            .expect("exit");
        let started = status.code().expect("an exit code");
        assert!((1..=7).contains(&started), "{status:?}");
        let report = within(LIMIT, "the tree's end", tree.finish(LIMIT)).await;
        let procs = report
            .limits
            .get(LimitKind::Processes)
            .expect("processes entry");
        assert!(cgroup(procs.mechanism), "{procs:?}");
        assert_eq!(procs.hit, Some(true), "{procs:?}");
        assert!(procs.peak.is_some_and(|p| p <= 8), "{procs:?}");
        // The children it left running were killed with the tree.
        t.wait_none_marked("the fork bomb's children").await;
    });
}

#[test]
fn a_sandboxed_sdk_worker_sees_fds_0_to_3_and_its_report_lists_the_sandbox() {
    e2e("sandboxed_fds", |t| async move {
        let config = WorkerConfig::protocol().deadlines(patient()).tree(
            TreeOptions::new().sandbox(
                Sandbox::new()
                    .allow_write(std::env::temp_dir())
                    .no_network(true),
            ),
        );
        let worker = t.spawn(&[mode::LIST_FDS], config).await;
        let report = run_job(&worker, Vec::new(), JobOptions::new()).await;
        assert_eq!(report.outcome, Outcome::Completed(b"0,1,2,3".to_vec()));
        assert_eq!(report.limits.sandbox.len(), 7, "{:?}", report.limits);
        assert!(
            report.limits.sandbox.iter().all(|e| e.enforced),
            "{:?}",
            report.limits
        );
        shutdown(worker).await;
    });
}
