//! Spawning and the handshake: a worker that never says hello, says something else first,
//! speaks another version or dies first is killed and reaped before `spawn` returns the error.

use std::time::Instant;

use warden::{ExitStatus, SpawnError, Violation, WorkerConfig};
use warden_protocol::PROTOCOL_VERSION;
use warden_tests::{BAD_VERSION, mode};

use crate::support::*;

#[test]
fn handshake_never_completed_is_a_timeout_and_the_process_is_gone() {
    e2e(
        "handshake_never_completed_is_a_timeout_and_the_process_is_gone",
        |t| async move {
            let timeout = ms(300);
            let config = WorkerConfig::protocol().handshake_timeout(timeout);
            let start = Instant::now();
            let result = t.try_spawn(&[mode::HANG_HANDSHAKE], config).await;
            let elapsed = start.elapsed();

            let pid = match result {
                Err(SpawnError::HandshakeTimeout {
                    pid,
                    timeout: reported,
                }) => {
                    assert_eq!(reported, timeout);
                    pid
                }
                other => panic!("expected a handshake timeout, got {other:?}"),
            };
            assert!(elapsed >= timeout, "gave up after {elapsed:?}");
            assert!(elapsed <= timeout + SLACK, "gave up after {elapsed:?}");
            assert!(
                !t.is_unreaped(pid),
                "the worker is still there: {:?}",
                proc_state(pid)
            );
        },
    );
}

#[test]
fn message_before_hello_is_a_protocol_error() {
    e2e("message_before_hello_is_a_protocol_error", |t| async move {
        let result = t
            .try_spawn(&[mode::HEARTBEAT_BEFORE_HELLO], WorkerConfig::protocol())
            .await;
        let pid = match result {
            Err(SpawnError::Protocol {
                pid,
                violation: Violation::BeforeHello { kind: "heartbeat" },
            }) => pid,
            other => panic!("expected a protocol error, got {other:?}"),
        };
        assert!(!t.is_unreaped(pid));
    });
}

#[test]
fn stalled_frame_instead_of_hello_is_a_protocol_error() {
    e2e(
        "stalled_frame_instead_of_hello_is_a_protocol_error",
        |t| async move {
            let mut config = WorkerConfig::protocol();
            config.frame_timeout = ms(200);
            let result = t.try_spawn(&[mode::STALL_BEFORE_HELLO], config).await;
            let pid = match result {
                Err(SpawnError::Protocol {
                    pid,
                    violation: Violation::StalledFrame { timeout },
                }) => {
                    assert_eq!(timeout, ms(200));
                    pid
                }
                other => panic!("expected a stalled frame, got {other:?}"),
            };
            assert!(!t.is_unreaped(pid));
        },
    );
}

#[test]
fn incompatible_version_is_refused() {
    e2e("incompatible_version_is_refused", |t| async move {
        let result = t
            .try_spawn(&[mode::BAD_VERSION], WorkerConfig::protocol())
            .await;
        let pid = match result {
            Err(SpawnError::IncompatibleVersion { pid, source }) => {
                let text = format!("{source}");
                assert!(text.contains(&BAD_VERSION.to_string()), "{text}");
                pid
            }
            other => panic!("expected an incompatible version, got {other:?}"),
        };
        assert!(!t.is_unreaped(pid));
    });
}

#[test]
fn exit_during_the_handshake_is_reported_with_its_status() {
    e2e(
        "exit_during_the_handshake_is_reported_with_its_status",
        |t| async move {
            let result = t
                .try_spawn(&[mode::PLAIN_EXIT, "7"], WorkerConfig::protocol())
                .await;
            let pid = match result {
                Err(SpawnError::ExitedDuringHandshake { pid, status }) => {
                    assert_eq!(status, ExitStatus::Code(7));
                    pid
                }
                other => panic!("expected an exit during the handshake, got {other:?}"),
            };
            assert!(!t.is_unreaped(pid));
        },
    );
}

#[test]
fn missing_program_is_not_found() {
    e2e("missing_program_is_not_found", |t| async move {
        let mut cmd = warden::Command::new("/nonexistent/warden-e2e-no-such-program");
        cmd.env(warden_tests::MARKER_VAR, t.marker());
        let result = within(
            LIMIT,
            "spawn",
            warden::Worker::spawn(&cmd, WorkerConfig::protocol()),
        )
        .await;
        assert!(
            matches!(result, Err(SpawnError::NotFound { .. })),
            "{result:?}"
        );
    });
}

#[test]
fn handshake_reports_what_the_worker_said() {
    e2e("handshake_reports_what_the_worker_said", |t| async move {
        let worker = t
            .spawn(&[mode::COOPERATIVE], WorkerConfig::protocol())
            .await;
        let info = worker.info().clone();
        assert_eq!(info.pid, worker.pid());
        assert_eq!(info.protocol_version, Some(PROTOCOL_VERSION));
        let sdk = info.sdk_version.expect("sdk version");
        assert!(!sdk.is_empty());
        assert!(t.is_running(info.pid));
        assert_eq!(shutdown(worker).await, Some(ExitStatus::Code(0)));
    });
}

#[test]
fn dropping_spawn_mid_handshake_kills_and_reaps_the_worker() {
    e2e(
        "dropping_spawn_mid_handshake_kills_and_reaps_the_worker",
        |t| async move {
            let config = WorkerConfig::protocol().handshake_timeout(ms(60_000));
            let cmd = t.command(&[mode::HANG_HANDSHAKE]);
            let pid = {
                let spawn = warden::Worker::spawn(&cmd, config);
                tokio::pin!(spawn);
                tokio::select! {
                    result = &mut spawn => panic!("the handshake ended: {result:?}"),
                    pid = t.find_marked("the worker process to start") => pid,
                }
            }; // The spawn future is dropped here, mid-handshake.
            t.wait_reaped(pid, "the worker of the dropped spawn").await;
        },
    );
}

#[test]
fn file_without_execute_permission_is_not_executable() {
    e2e(
        "file_without_execute_permission_is_not_executable",
        |t| async move {
            let file = t.file("not-executable", "exit 0\n", 0o644);
            let cmd = warden::Command::new(file.path());
            let result = within(
                LIMIT,
                "spawn",
                warden::Worker::spawn(&cmd, WorkerConfig::plain()),
            )
            .await;
            assert!(
                matches!(result, Err(SpawnError::NotExecutable { .. })),
                "{result:?}"
            );
        },
    );
}
