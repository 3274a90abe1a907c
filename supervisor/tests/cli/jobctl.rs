//! Job control in a real terminal: an interactive bash in a tmux pane runs warden, the test
//! types Ctrl-Z and `fg`, and checks that the whole tree stops with warden, runs again after
//! `fg`, and that the time stopped does not count against the deadline.
//!
//! The command line runs warden through a small script that writes warden's exit status to a
//! FIFO the test reads (bash itself would go on with the rest of a `;` list as soon as the job
//! stops). The fixture's readiness lines go to the same FIFO. The stop is held for a measured
//! interval (not a synchronisation: the test waits for every state it asserts), and the
//! deadline must then fire no earlier than DURATION + that interval.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::fixture::ROLE_VAR;
use crate::support::{
    LIMIT, MARK_VAR, TempDir, WARDEN, assert_no_survivors, fixture_argv, new_mark,
};

/// The command's deadline.
const DURATION: Duration = Duration::from_secs(3);
/// How long the job is held stopped (measured, then used in the assertion).
const HOLD: Duration = Duration::from_secs(2);
/// How much later than DURATION + the stop the deadline may fire (the late side is loose: a
/// busy machine delays it, and only the early side proves the pause).
const SLACK: Duration = Duration::from_secs(3);

/// Polls `cond` (an observation of /proc or of the terminal, not a synchronisation: nothing
/// announces these states) until it holds; fails naming `what` after [`LIMIT`].
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) -> Instant {
    let deadline = Instant::now() + LIMIT;
    loop {
        if cond() {
            return Instant::now();
        }
        assert!(Instant::now() < deadline, "waited {LIMIT:?} for {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

/// Field `n` (1-based, as in proc(5)) of /proc/PID/stat.
fn stat_field(pid: i32, n: usize) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(n - 3).map(str::to_owned)
}

fn state(pid: i32) -> Option<char> {
    stat_field(pid, 3).and_then(|s| s.chars().next())
}

fn stopped(pid: i32) -> bool {
    state(pid) == Some('T')
}

/// The cgroup v2 directory of `pid`.
fn cgroup_dir(pid: i32) -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mount = info.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        (right.split_whitespace().next() == Some("cgroup2"))
            .then(|| left.split_whitespace().nth(4).map(PathBuf::from))
            .flatten()
    })?;
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path = own.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(mount.join(path.trim_start_matches('/')))
}

fn frozen(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("cgroup.events"))
        .is_ok_and(|s| s.lines().any(|l| l.trim() == "frozen 1"))
}

/// A tmux server with one interactive bash, on a socket of its own; killed by PID on drop.
struct Terminal {
    socket: String,
    server: i32,
}

impl Terminal {
    fn start(dir: &TempDir, mark: &str) -> Terminal {
        let socket = dir.0.join("tmux").to_string_lossy().into_owned();
        let status = Command::new("tmux")
            .args(["-S", &socket, "-f", "/dev/null", "new-session", "-d"])
            .args(["-x", "200", "-y", "50", "bash --norc --noprofile -i"])
            .env(MARK_VAR, mark)
            .env("LC_ALL", "C")
            .env_remove("WARDEN_CONTAINMENT")
            .env_remove("TMUX")
            .status()
            .expect("run tmux");
        assert!(status.success(), "tmux new-session failed");
        let mut terminal = Terminal { socket, server: 0 };
        terminal.server = terminal
            .tmux(&["display-message", "-p", "#{pid}"])
            .trim()
            .parse()
            .expect("tmux server pid");
        terminal
    }

    fn tmux(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-S", &self.socket])
            .args(args)
            .output()
            .expect("run tmux");
        assert!(out.status.success(), "tmux {args:?} failed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "0"];
        args.extend_from_slice(keys);
        self.tmux(&args);
    }

    fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-t", "0"])
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        if self.server > 0 {
            let _ = kill(Pid::from_raw(self.server), Signal::SIGKILL);
            let server = self.server;
            // Not our child (tmux daemonises): watch /proc until it is gone.
            let deadline = Instant::now() + LIMIT;
            while state(server).is_some_and(|s| s != 'Z') && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

/// Lines written to the FIFO at `path` (opened read-write, so writers never block and the
/// reader never sees EOF between them).
fn fifo_lines(path: &Path) -> Receiver<String> {
    let status = Command::new("mkfifo").arg(path).status().expect("mkfifo");
    assert!(status.success(), "mkfifo failed");
    let fifo = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open fifo");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(fifo).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn next_line(lines: &Receiver<String>, what: &str, want: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + LIMIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if want(&line) => return line,
            Ok(_) => {}
            Err(e) => panic!("no line {what} on the fifo ({e:?})"),
        }
    }
}

/// What a scenario runs and how its tree is stopped.
struct Scenario<'a> {
    what: &'a str,
    /// warden's arguments before the fixture's command line.
    warden: &'a [&'a str],
    containment: Option<&'a str>,
    /// The fixture's shapes (`tree:hang:SHAPES`).
    shapes: &'a str,
    /// The tree is in a cgroup whose freezer must say `frozen 1`; else every member must be
    /// in state `T`.
    frozen_cgroup: bool,
    expected_status: i32,
}

fn run(s: &Scenario<'_>) {
    let dir = TempDir::new();
    let mark = new_mark();
    let fifo = dir.0.join("fifo");
    let lines = fifo_lines(&fifo);
    let script = dir.file(
        "run.sh",
        &format!(
            "\"$@\" > '{f}'\necho \"exit $?\" > '{f}'\n",
            f = fifo.display()
        ),
        0o755,
    );
    let (exe, fixture_args) = fixture_argv();
    let mut line = format!("{ROLE_VAR}=tree:hang:{} ", s.shapes);
    if let Some(mode) = s.containment {
        line.push_str(&format!("WARDEN_CONTAINMENT={mode} "));
    }
    line.push_str(&format!("sh {script} {WARDEN}"));
    for arg in s
        .warden
        .iter()
        .copied()
        .chain([exe.as_str()])
        .chain(fixture_args)
    {
        line.push(' ');
        line.push_str(arg);
    }

    let terminal = Terminal::start(&dir, &mark);
    let typed = Instant::now();
    terminal.keys(&[&line, "Enter"]);
    let mut members = Vec::new();
    let command: i32 = loop {
        let l = next_line(&lines, "up/ready", |l| {
            l.starts_with("up ") || l.starts_with("ready ")
        });
        let pid = l
            .rsplit(' ')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("a pid");
        members.push(pid);
        if l.starts_with("ready ") {
            break pid;
        }
    };
    let warden: i32 = stat_field(command, 4)
        .and_then(|p| p.parse().ok())
        .expect("the command's parent is warden");
    let cgroup = cgroup_dir(command).expect("the command's cgroup");

    terminal.keys(&["C-z"]);
    let stopped_at = wait_for(&format!("{}: the tree and warden stopped", s.what), || {
        let tree_stopped = if s.frozen_cgroup {
            frozen(&cgroup)
        } else {
            members.iter().all(|&p| stopped(p))
        };
        tree_stopped && stopped(warden)
    });
    if s.frozen_cgroup {
        for &pid in &members {
            assert_eq!(
                cgroup_dir(pid).as_ref(),
                Some(&cgroup),
                "{}: member {pid} outside the frozen cgroup",
                s.what
            );
        }
    }
    wait_for(
        &format!("{}: the shell reports the job stopped", s.what),
        || terminal.screen().contains("Stopped"),
    );
    // The measured hold: the job stays stopped this long (checked below, not assumed).
    thread::sleep(HOLD);
    assert!(
        s.frozen_cgroup && frozen(&cgroup) || members.iter().all(|&p| stopped(p)),
        "{}: the tree ran while warden was stopped",
        s.what
    );
    let fg_at = Instant::now();
    terminal.keys(&["fg", "Enter"]);
    let running_at = wait_for(
        &format!("{}: the tree and warden running again", s.what),
        || {
            let tree_running = if s.frozen_cgroup {
                !frozen(&cgroup)
            } else {
                true
            };
            tree_running && members.iter().all(|&p| !stopped(p)) && !stopped(warden)
        },
    );

    let status = next_line(&lines, "exit STATUS", |l| l.starts_with("exit "));
    let ended = typed.elapsed();
    assert_eq!(status, format!("exit {}", s.expected_status), "{}", s.what);
    // warden was stopped at least from `stopped_at` to `fg_at`, and its clock started after
    // the command line was typed: a paused deadline cannot fire before this.
    let held = fg_at - stopped_at;
    assert!(
        ended >= DURATION + held,
        "{}: ended {ended:?} after typing, before DURATION {DURATION:?} + the stop {held:?}",
        s.what
    );
    let stop_at_most = running_at.duration_since(typed);
    assert!(
        ended <= DURATION + stop_at_most + SLACK,
        "{}: ended {ended:?} after typing, far later than DURATION + the stop",
        s.what
    );
    drop(terminal);
    assert_no_survivors(&mark, s.what);
}

#[test]
fn timeout_ctrl_z_freezes_the_cgroup_and_pauses_the_deadline() {
    run(&Scenario {
        what: "timeout, cgroup",
        warden: &["timeout", "3"],
        containment: Some("cgroup"),
        shapes: "bg,setsid",
        frozen_cgroup: true,
        expected_status: 124,
    });
}

#[test]
fn timeout_ctrl_z_stops_the_process_group_and_pauses_the_deadline() {
    run(&Scenario {
        what: "timeout, process group",
        warden: &["timeout", "3"],
        containment: Some("process-group"),
        shapes: "bg",
        frozen_cgroup: false,
        expected_status: 124,
    });
}

#[test]
fn timeout_ctrl_z_stops_escaped_members_as_a_subreaper() {
    run(&Scenario {
        what: "timeout, subreaper",
        warden: &["timeout", "3"],
        containment: Some("subreaper"),
        shapes: "bg,setsid",
        frozen_cgroup: false,
        expected_status: 124,
    });
}

#[test]
fn timeout_foreground_command_takes_the_terminal_stop_itself() {
    // The command shares warden's group and gets the terminal's SIGTSTP itself; warden only
    // pauses its deadline. No children: --foreground leaves them alone, so they would outlive
    // the run.
    run(&Scenario {
        what: "timeout --foreground",
        warden: &["timeout", "--foreground", "3"],
        containment: None,
        shapes: "",
        frozen_cgroup: false,
        expected_status: 124,
    });
}

#[test]
fn run_ctrl_z_suspends_the_worker_and_pauses_its_timeout() {
    run(&Scenario {
        what: "run, cgroup",
        warden: &["run", "--timeout", "3", "--"],
        containment: Some("cgroup"),
        shapes: "bg,setsid",
        frozen_cgroup: true,
        expected_status: 124,
    });
}

#[test]
fn run_ctrl_z_stops_the_process_group_and_pauses_its_timeout() {
    run(&Scenario {
        what: "run, process group",
        warden: &["run", "--timeout", "3", "--"],
        containment: Some("process-group"),
        shapes: "bg",
        frozen_cgroup: false,
        expected_status: 124,
    });
}
