//! Spawning and the handshake: a worker that never says hello, says something else first,
//! speaks another version or dies first is killed and reaped before `spawn` returns the error.

use std::time::Instant;

use tracing::instrument::WithSubscriber;

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
            // The library records the pid on its span once the child is held (the handshake is
            // then under way): drop the spawn exactly there.
            let (subscriber, mut pids) = pid_recorder();
            let pid = {
                let spawn = warden::Worker::spawn(&cmd, config).with_subscriber(subscriber);
                tokio::pin!(spawn);
                tokio::select! {
                    result = &mut spawn => panic!("the handshake ended: {result:?}"),
                    pid = within(LIMIT, "the worker span's pid", pids.recv()) => pid.expect("pid"),
                }
            }; // The spawn future is dropped here, mid-handshake.
            t.wait_reaped(pid, "the worker of the dropped spawn").await;
        },
    );
}

/// A subscriber that forwards every `pid` recorded on a span.
fn pid_recorder() -> (tracing::Dispatch, tokio::sync::mpsc::UnboundedReceiver<u32>) {
    use tracing::field::{Field, Visit};
    use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

    struct PidLayer(tokio::sync::mpsc::UnboundedSender<u32>);
    struct PidVisitor(Option<u64>);
    impl Visit for PidVisitor {
        fn record_u64(&mut self, field: &Field, value: u64) {
            if field.name() == "pid" {
                self.0 = Some(value);
            }
        }
        fn record_debug(&mut self, _: &Field, _: &dyn std::fmt::Debug) {}
    }
    impl<S: tracing::Subscriber> Layer<S> for PidLayer {
        fn on_record(
            &self,
            _: &tracing::span::Id,
            values: &tracing::span::Record<'_>,
            _: Context<'_, S>,
        ) {
            let mut visitor = PidVisitor(None);
            values.record(&mut visitor);
            if let Some(pid) = visitor.0.and_then(|pid| u32::try_from(pid).ok()) {
                let _ = self.0.send(pid);
            }
        }
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let subscriber = tracing_subscriber::registry().with(PidLayer(tx));
    (tracing::Dispatch::new(subscriber), rx)
}

#[test]
fn dropping_spawn_at_any_moment_leaves_no_process() {
    e2e(
        "dropping_spawn_at_any_moment_leaves_no_process",
        |t| async move {
            // The earliest moment a test can see: the program runs. The spawning thread may not
            // have handed the child to the spawn future yet.
            for _ in 0..20 {
                let config = WorkerConfig::protocol().handshake_timeout(ms(60_000));
                let cmd = t.command(&[mode::HANG_HANDSHAKE]);
                let pid = {
                    let spawn = warden::Worker::spawn(&cmd, config);
                    tokio::pin!(spawn);
                    tokio::select! {
                        result = &mut spawn => panic!("the handshake ended: {result:?}"),
                        pid = t.find_marked("the worker process to start") => pid,
                    }
                };
                t.wait_reaped(pid, "the worker of the dropped spawn").await;
            }
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
