//! `warden` under a real single-node Slurm (Debian's 22.05 on this machine kind): the test
//! starts its own throw-away cluster (munged, slurmctld and slurmd as children of the test, a
//! config, state, spool and logs in a temporary directory, loopback and non-default ports, so
//! a real cluster is never touched), runs the cases concurrently, and stops the daemons by PID
//! at the end, on panic too. It installs nothing: `.ci/run` installs the Debian packages.
//!
//! If Slurm cannot be started (binaries missing, a daemon fails, the node never becomes idle)
//! the test prints a loud `SKIPPED: ...` with the reason and the daemons' log tails, straight
//! to stderr (not captured), and passes, unless `WARDEN_REQUIRE_SLURM=1` (as `.ci/run` sets
//! once Slurm is installed), when it fails instead.
//!
//! Cases (`KillWait=5`; warden's ladder is fitted inside it):
//! - `scancel` of `warden run --protocol` reaches warden (and the worker) as SIGTERM:
//!   cancelled, report written, exit status 143; `scancel --signal=TERM --batch` (warden
//!   alone) the same, at the cooperative stage;
//! - a TERM-ignoring program with a setsid'd daemon: under warden nothing survives the job;
//!   bare, Slurm's `proctrack/linuxproc` loses the daemon (counted, printed, killed by PID);
//! - `--stop-signal USR1` and `scancel --signal=USR1 --batch`: the ladder starts, the report
//!   names USR1;
//! - a job array through `warden batch` (skipped loudly while `warden batch` does not exist).
//!
//! Readiness comes over a FIFO that each job's stderr is pointed at; every process of a job
//! carries a mark in its environment (`--export=ALL,MARK=...`), so survivors are found by
//! marker and killed by PID.

#[path = "cli/fixture.rs"]
mod fixture;
#[path = "cli/support.rs"]
#[expect(
    dead_code,
    reason = "the cli test binary's kit; this binary needs part of it"
)]
mod support;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

use support::{MARK_VAR, Survivor, WARDEN, fixture_argv, kill_all, marked, new_mark};

/// Slurm's grace between its SIGTERM and its SIGKILL, in this cluster's config.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// Bound on the cluster coming up (the node idle).
const STARTUP: Duration = Duration::from_secs(40);
/// Bound on any one job, from submission to `sbatch --wait` returning (it polls every few
/// seconds, so this is far above KillWait plus its poll).
const JOB_LIMIT: Duration = Duration::from_secs(60);
/// Bound on a readiness line from a job.
const READY_LIMIT: Duration = Duration::from_secs(30);

/// Not a test: the entry point of fixture processes (see `cli/fixture.rs`).
#[test]
fn fixture() {
    fixture::main();
}

/// Says `text` on the real stderr (the test harness captures only `eprintln!`).
fn loud(text: &str) {
    let _ = writeln!(std::io::stderr(), "{text}");
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/bin".into(), "/sbin".into()])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// A daemon the test started: its child handle (so its pid is ours until reaped) and log.
struct Daemon {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

/// A throw-away single-node cluster; dropping it stops every daemon by PID.
struct Cluster {
    dir: PathBuf,
    conf: PathBuf,
    node: String,
    mark: String,
    daemons: Vec<Daemon>,
    bin: Bins,
}

#[derive(Clone)]
struct Bins {
    munged: PathBuf,
    slurmctld: PathBuf,
    slurmd: PathBuf,
    sbatch: PathBuf,
    scancel: PathBuf,
    sinfo: PathBuf,
    scontrol: PathBuf,
}

fn short_hostname() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| {
            Command::new("hostname")
                .output()
                .ok()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        })
        .unwrap_or_default();
    name.trim().split('.').next().unwrap_or_default().to_owned()
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| format!("({e})"));
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Polls `ready` (external daemons give no event to wait for) until it holds, a daemon exits,
/// or [`STARTUP`] passes.
fn wait_for(
    daemons: &mut [Daemon],
    what: &str,
    mut ready: impl FnMut() -> bool,
) -> Result<(), String> {
    let deadline = Instant::now() + STARTUP;
    loop {
        if ready() {
            return Ok(());
        }
        for daemon in daemons.iter_mut() {
            if let Ok(Some(status)) = daemon.child.try_wait() {
                return Err(format!(
                    "{} exited ({status}) while waiting for {what}",
                    daemon.name
                ));
            }
        }
        if Instant::now() >= deadline {
            return Err(format!("no {what} within {STARTUP:?}"));
        }
        thread::sleep(Duration::from_millis(100));
    }
}

impl Cluster {
    /// Starts munged, slurmctld and slurmd; `Err` says why Slurm cannot run here.
    fn start() -> Result<Cluster, String> {
        let find =
            |name: &str| find_program(name).ok_or_else(|| format!("{name} is not installed"));
        let bin = Bins {
            munged: find("munged")?,
            slurmctld: find("slurmctld")?,
            slurmd: find("slurmd")?,
            sbatch: find("sbatch")?,
            scancel: find("scancel")?,
            sinfo: find("sinfo")?,
            scontrol: find("scontrol")?,
        };
        let node = short_hostname();
        if node.is_empty() {
            return Err("this host has no hostname".into());
        }
        let dir = std::env::temp_dir().join(format!("warden-slurm-{}", new_mark()));
        let setup = |e: std::io::Error| format!("setting up {}: {e}", dir.display());
        for sub in ["state", "spool", "jobs"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(setup)?;
        }
        // munged wants its socket's directories searchable by all, its key private.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).map_err(setup)?;
        let mut key = vec![0u8; 1024];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut key))
            .map_err(setup)?;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o400)
            .open(dir.join("munge.key"))
            .and_then(|mut f| f.write_all(&key))
            .map_err(setup)?;
        let (ctld_port, slurmd_port) = (free_port().map_err(setup)?, free_port().map_err(setup)?);
        let d = dir.display();
        let conf = format!(
            "# Written by warden's Slurm test; removed with its directory.
ClusterName=wardentest
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={d}/munge.sock
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MailProg=/bin/true
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
KillWait={kill_wait}
ReturnToService=2
NodeName={node} NodeAddr=127.0.0.1 CPUs=8 State=UNKNOWN
PartitionName=warden Nodes={node} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
",
            kill_wait = KILL_WAIT.as_secs()
        );
        let conf_path = dir.join("slurm.conf");
        std::fs::write(&conf_path, conf).map_err(setup)?;
        let mut cluster = Cluster {
            dir: dir.clone(),
            conf: conf_path,
            node,
            mark: new_mark(),
            daemons: Vec::new(),
            bin,
        };
        let sock = dir.join("munge.sock");
        let started = cluster.spawn(
            "munged",
            &cluster.bin.munged.clone(),
            &[
                "-F".into(),
                format!("--socket={}", sock.display()),
                format!("--key-file={d}/munge.key"),
                format!("--pid-file={d}/munged.pid"),
                format!("--log-file={d}/munged.log"),
                format!("--seed-file={d}/munged.seed"),
            ],
        );
        if let Err(e) = started {
            return Err(format!("{e}\n{}", cluster.log_tails()));
        }
        if let Err(e) = wait_for(&mut cluster.daemons, "munged's socket", || sock.exists()) {
            return Err(format!("{e}\n{}", cluster.log_tails()));
        }
        let conf_arg = cluster.conf.display().to_string();
        let started = cluster
            .spawn(
                "slurmctld",
                &cluster.bin.slurmctld.clone(),
                &["-D".into(), "-i".into(), "-f".into(), conf_arg.clone()],
            )
            .and_then(|()| {
                cluster.spawn(
                    "slurmd",
                    &cluster.bin.slurmd.clone(),
                    &["-D".into(), "-f".into(), conf_arg],
                )
            });
        if let Err(e) = started {
            return Err(format!("{e}\n{}", cluster.log_tails()));
        }
        let mut sinfo = cluster.client(&cluster.bin.sinfo);
        sinfo
            .args(["-h", "-n", &cluster.node, "-o", "%T"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let idle = wait_for(&mut cluster.daemons, "the node to be idle", || {
            sinfo
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "idle")
        });
        match idle {
            Ok(()) => Ok(cluster),
            Err(e) => Err(format!("{e}\n{}", cluster.log_tails())),
        }
    }

    fn spawn(&mut self, name: &'static str, program: &Path, args: &[String]) -> Result<(), String> {
        let log = self.dir.join(format!("{name}.out"));
        let out = std::fs::File::create(&log).map_err(|e| format!("{name} log: {e}"))?;
        let err = out.try_clone().map_err(|e| format!("{name} log: {e}"))?;
        let child = Command::new(program)
            .args(args)
            .env("SLURM_CONF", &self.conf)
            .env(MARK_VAR, &self.mark)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        self.daemons.push(Daemon { name, child, log });
        Ok(())
    }

    /// A client command (sbatch, scancel, ...) aimed at this cluster, without any mark.
    fn client(&self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("SLURM_CONF", &self.conf)
            .env_remove(MARK_VAR)
            .stdin(Stdio::null());
        cmd
    }

    fn log_tails(&self) -> String {
        let mut text = String::new();
        for name in ["munged.out", "slurmctld.log", "slurmd.log"] {
            text.push_str(&format!(
                "--- {name} (last lines)\n{}\n",
                tail(&self.dir.join(name), 15)
            ));
        }
        text
    }

    /// Runs a client to completion (bounded); its stdout.
    fn run_client(&self, program: &Path, args: &[&str]) -> String {
        let out = self
            .client(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{} {args:?}: {e}", program.display()));
        assert!(
            out.status.success(),
            "{} {args:?}: {}",
            program.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Cluster {
    /// Stops every daemon by PID (SIGTERM, then SIGKILL after a bounded wait), then whatever
    /// of theirs still carries the cluster's mark (a job step left by a failed case).
    fn drop(&mut self) {
        for daemon in self.daemons.iter_mut().rev() {
            let pid = Pid::from_raw(i32::try_from(daemon.child.id()).unwrap_or(i32::MAX));
            let _ = kill(pid, Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(daemon.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
            if matches!(daemon.child.try_wait(), Ok(None)) {
                let _ = daemon.child.kill();
                let _ = daemon.child.wait();
            }
            let _ = &daemon.log;
        }
        kill_all(&marked(&self.mark));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Lines a job writes to its stderr, which its script points at a FIFO.
struct Fifo {
    path: PathBuf,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Fifo {
    fn new(path: PathBuf) -> Fifo {
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o666))
            .unwrap_or_else(|e| panic!("mkfifo {}: {e}", path.display()));
        let (tx, lines) = mpsc::channel();
        let reader_path = path.clone();
        // Opened read-write (Linux), so it never blocks and never sees EOF: writers may come
        // and go (the tasks of an array, each opening it in turn) and none of them blocks in
        // its open. It ends at the sentinel `Drop` writes.
        let reader = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&reader_path)
            .unwrap_or_else(|e| panic!("open {}: {e}", reader_path.display()));
        thread::spawn(move || {
            for line in BufReader::new(reader).lines() {
                let Ok(line) = line else { break };
                if line == FIFO_END || tx.send(line).is_err() {
                    break;
                }
            }
        });
        Fifo {
            path,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits (bounded) for a line containing `text`.
    fn wait_line(&mut self, what: &str, text: &str) {
        if self.seen.iter().any(|l| l.contains(text)) {
            return;
        }
        let deadline = Instant::now() + READY_LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(text);
                    self.seen.push(line);
                    if found {
                        return;
                    }
                }
                Err(e) => panic!("{what}: no line with {text:?} ({e:?}); saw {:?}", self.seen),
            }
        }
    }

    /// Everything seen so far, and what arrives within a moment (diagnosis only).
    fn text(&mut self) -> String {
        while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(50)) {
            self.seen.push(line);
        }
        self.seen.join("\n")
    }
}

impl Drop for Fifo {
    fn drop(&mut self) {
        // Ends the reader (non-blocking: ENXIO if it is already gone).
        if let Ok(mut end) = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&self.path)
        {
            let _ = writeln!(end, "{FIFO_END}");
        }
    }
}

/// The line that ends a [`Fifo`]'s reader.
const FIFO_END: &str = "\u{0}warden-test-fifo-end";

/// One submitted job: `sbatch --wait` (a child, so the wait is an exit, not a poll) and the
/// job's FIFO.
struct Job<'a> {
    cluster: &'a Cluster,
    name: String,
    id: String,
    mark: String,
    sbatch: Option<Child>,
    fifo: Fifo,
    dir: PathBuf,
}

impl<'a> Job<'a> {
    /// Submits `body` (a shell script after `exec 2>"$READY_FIFO"`) with `env` added to the
    /// job's environment.
    /// `files` are written into the job's directory (its working directory) first.
    fn submit(
        cluster: &'a Cluster,
        name: &str,
        body: &str,
        files: &[(&str, &str)],
        env: &[(&str, &str)],
        sbatch_args: &[&str],
    ) -> Job<'a> {
        let dir = cluster.dir.join("jobs").join(name);
        std::fs::create_dir_all(&dir).expect("job dir");
        for (file, text) in files {
            std::fs::write(dir.join(file), text).expect("job file");
        }
        let fifo = Fifo::new(dir.join("stderr.fifo"));
        let script = dir.join("job.sh");
        std::fs::write(
            &script,
            format!("#!/bin/sh\nexec 2>\"$READY_FIFO\"\n{body}\n"),
        )
        .expect("job script");
        let mark = new_mark();
        let mut export = format!("ALL,{MARK_VAR}={mark},READY_FIFO={}", fifo.path.display());
        for (k, v) in env {
            assert!(
                !v.contains(','),
                "sbatch --export cannot carry a comma: {v}"
            );
            export.push_str(&format!(",{k}={v}"));
        }
        let mut cmd = cluster.client(&cluster.bin.sbatch);
        cmd.args(["--wait", "--parsable", "-J", name])
            .arg(format!("--export={export}"))
            .arg(format!(
                "--output={}",
                dir.join("slurm-%A_%a.out").display()
            ))
            .arg(format!("--chdir={}", dir.display()))
            .args(sbatch_args)
            .arg(&script)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut sbatch = cmd.spawn().expect("start sbatch");
        let stdout = sbatch.stdout.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let id = rx
            .recv_timeout(READY_LIMIT)
            .unwrap_or_else(|e| panic!("{name}: sbatch printed no job id ({e:?})"));
        let id = id.trim().split(';').next().unwrap_or_default().to_owned();
        assert!(!id.is_empty(), "{name}: sbatch printed no job id");
        Job {
            cluster,
            name: name.to_owned(),
            id,
            mark,
            sbatch: Some(sbatch),
            fifo,
            dir,
        }
    }

    fn scancel(&self, args: &[&str]) {
        let mut all = args.to_vec();
        all.push(&self.id);
        self.cluster.run_client(&self.cluster.bin.scancel, &all);
    }

    /// Waits (bounded) for `sbatch --wait` to return: Slurm considers the job over.
    fn wait_done(&mut self) {
        let mut sbatch = self.sbatch.take().expect("waited once");
        let pid = sbatch.id();
        let (tx, rx) = mpsc::channel();
        let waiter = thread::spawn(move || {
            let status = sbatch.wait();
            let _ = tx.send(());
            status
        });
        if rx.recv_timeout(JOB_LIMIT).is_err() {
            let _ = kill(
                Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX)),
                Signal::SIGKILL,
            );
            let _ = waiter.join();
            panic!(
                "{}: job {} did not end within {JOB_LIMIT:?}",
                self.name, self.id
            );
        }
        let _ = waiter.join();
    }

    fn state(&self) -> String {
        self.cluster
            .run_client(&self.cluster.bin.scontrol, &["show", "job", "-o", &self.id])
            .split_whitespace()
            .filter(|w| w.starts_with("JobState=") || w.starts_with("ExitCode="))
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn report(&mut self, file: &str) -> Value {
        let path = self.dir.join(file);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: no report {} ({e}); job stderr:\n{}",
                self.name,
                path.display(),
                self.fifo.text()
            )
        });
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: report: {e}: {text}", self.name))
    }

    /// Marked processes still alive, once those dying had a bounded moment to go.
    fn survivors(&self) -> Vec<Survivor> {
        let deadline = Instant::now() + Duration::from_millis(500);
        loop {
            let found = marked(&self.mark);
            if found.is_empty() || Instant::now() >= deadline {
                return found;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Job<'_> {
    fn drop(&mut self) {
        if let Some(mut sbatch) = self.sbatch.take() {
            let _ = self
                .cluster
                .client(&self.cluster.bin.scancel)
                .args(["--signal=KILL", &self.id])
                .status();
            let _ = sbatch.kill();
            let _ = sbatch.wait();
        }
        kill_all(&marked(&self.mark));
    }
}

/// The SDK fixture worker as a command line for a job script.
fn fixture_command() -> String {
    let (exe, args) = fixture_argv();
    std::iter::once(exe)
        .chain(args.iter().map(|a| (*a).to_owned()))
        .map(|w| format!("'{w}'"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The leaking program: it ignores SIGTERM, and starts a daemon (an intermediate that exits
/// at once, so the daemon is an orphan, in a session of its own) that ignores SIGTERM too and
/// has a child. It says `daemon up` once the daemon and its child exist, then `ready`.
const LEAKY: &str = r#"trap '' TERM
sh -c 'setsid sh -c "trap \"\" TERM; sleep 60 </dev/null >/dev/null 2>&1 & echo daemon up >&2; exec sleep 60 </dev/null >/dev/null 2>&1" & exit 0'
sleep 60 &
echo ready >&2
wait"#;

/// `scancel` (with `args`) of a cooperative protocol worker under warden: cancelled, report
/// written, exit 143.
fn scancel_protocol_job(
    cluster: &Cluster,
    name: &'static str,
    args: &[&str],
    stage: Option<&str>,
) -> String {
    let script = format!(
        "exec '{WARDEN}' run -v --protocol --grace 3 --kill-after 1 --report report.json -- {}",
        fixture_command()
    );
    let mut job = Job::submit(
        cluster,
        name,
        &script,
        &[],
        &[(fixture::ROLE_VAR, "worker:announce-stderr-wait-cancel")],
        &[],
    );
    job.fifo.wait_line(name, "in job");
    job.scancel(args);
    job.wait_done();
    let r = job.report("report.json");
    assert_eq!(r["outcome"], "cancelled", "{r}\n{}", job.fifo.text());
    assert_eq!(r["reason"], "shutdown", "{r}");
    assert_eq!(r["stop_signal"], "TERM", "{r}");
    assert_eq!(r["exit_status"], 143, "{r}");
    assert_eq!(r["violation"], Value::Null, "{r}");
    if let Some(stage) = stage {
        assert_eq!(r["stage"], stage, "{r}");
    }
    let survivors = job.survivors();
    kill_all(&survivors);
    assert!(survivors.is_empty(), "survivors: {survivors:#?}");
    format!(
        "scancel {} -> SIGTERM -> cancelled (stage {}), exit 143; Slurm: {}",
        args.join(" "),
        r["stage"],
        job.state()
    )
}

/// A plain `scancel`: Slurm signals every process of the job, warden and the SDK worker at
/// once, so the worker's `Cancelled` may come before warden's own cancel for the same stop
/// (PROTOCOL.md section 5, "A stop signal reaches the worker first"). Either order is
/// `cancelled`: the stage is `cooperative` when warden's cancel went first, null when the
/// worker's answer did.
fn scancel_reaches_warden_and_worker(cluster: &Cluster) -> String {
    scancel_protocol_job(cluster, "scancel-protocol", &[], None)
}

/// `--batch`: SIGTERM to warden alone, which cancels at the cooperative stage.
fn scancel_batch_reaches_warden_alone(cluster: &Cluster) -> String {
    scancel_protocol_job(
        cluster,
        "scancel-batch",
        &["--signal=TERM", "--batch"],
        Some("cooperative"),
    )
}

fn stop_signal_usr1_from_scancel(cluster: &Cluster) -> String {
    let script = format!(
        "exec '{WARDEN}' run -v --protocol --stop-signal USR1 --grace 3 --kill-after 1 --report report.json -- {}",
        fixture_command()
    );
    let mut job = Job::submit(
        cluster,
        "usr1-protocol",
        &script,
        &[],
        &[(fixture::ROLE_VAR, "worker:announce-stderr-wait-cancel")],
        &[],
    );
    job.fifo.wait_line("USR1 case", "in job");
    job.scancel(&["--signal=USR1", "--batch"]);
    job.wait_done();
    let r = job.report("report.json");
    assert_eq!(r["outcome"], "cancelled", "{r}\n{}", job.fifo.text());
    assert_eq!(r["stage"], "cooperative", "{r}");
    assert_eq!(r["stop_signal"], "USR1", "{r}");
    assert_eq!(r["exit_status"], 128 + libc::SIGUSR1, "{r}");
    let survivors = job.survivors();
    kill_all(&survivors);
    assert!(survivors.is_empty(), "survivors: {survivors:#?}");
    format!(
        "scancel --signal=USR1 --batch -> ladder, report names USR1; Slurm: {}",
        job.state()
    )
}

/// Polls (observation of processes that are not ours) until no marked process is alive.
fn time_to_all_gone(mark: &str, since: Instant, bound: Duration) -> Option<Duration> {
    loop {
        if marked(mark).is_empty() {
            return Some(since.elapsed());
        }
        if since.elapsed() > bound {
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

fn leaking_job_under_warden(cluster: &Cluster) -> String {
    let script =
        format!("exec '{WARDEN}' run -v --kill-after 2 --report report.json -- sh leaky.sh");
    let mut job = Job::submit(
        cluster,
        "leak-warden",
        &script,
        &[("leaky.sh", LEAKY)],
        &[],
        &[],
    );
    job.fifo.wait_line("leak under warden", "daemon up");
    job.fifo.wait_line("leak under warden", "ready");
    let before = marked(&job.mark).len();
    let cancelled = Instant::now();
    job.scancel(&[]);
    let gone = time_to_all_gone(&job.mark, cancelled, JOB_LIMIT);
    job.wait_done();
    let r = job.report("report.json");
    let survivors = job.survivors();
    kill_all(&survivors);
    assert!(
        survivors.is_empty(),
        "under warden, survivors: {survivors:#?}"
    );
    let gone = gone.expect("everything gone");
    assert_eq!(r["outcome"], "killed", "{r}\n{}", job.fifo.text());
    assert_eq!(r["stage"], "kill", "{r}");
    assert_eq!(r["stop_signal"], "TERM", "{r}");
    assert_eq!(r["exit_status"], 143, "{r}");
    format!(
        "leaking job under warden (--kill-after 2, KillWait {}s): {before} processes, 0 survivors after the job, all gone {:.2}s after scancel; Slurm: {}",
        KILL_WAIT.as_secs(),
        gone.as_secs_f64(),
        job.state()
    )
}

fn leaking_job_bare(cluster: &Cluster) -> String {
    let mut job = Job::submit(
        cluster,
        "leak-bare",
        "exec sh leaky.sh",
        &[("leaky.sh", LEAKY)],
        &[],
        &[],
    );
    job.fifo.wait_line("bare leak", "daemon up");
    job.fifo.wait_line("bare leak", "ready");
    let before = marked(&job.mark).len();
    let cancelled = Instant::now();
    job.scancel(&[]);
    job.wait_done();
    let ended = cancelled.elapsed();
    let survivors = job.survivors();
    let count = survivors.len();
    let names: Vec<String> = survivors
        .iter()
        .map(|s| s.cmdline.trim().to_owned())
        .collect();
    kill_all(&survivors);
    assert!(
        count > 0,
        "bare Slurm no longer leaks this job (the README says it does): update the README"
    );
    format!(
        "leaking job bare (KillWait {}s): {before} processes, {count} still running when Slurm reported the job done ({:.1}s after scancel): {names:?}; killed by PID by the test; Slurm: {}",
        KILL_WAIT.as_secs(),
        ended.as_secs_f64(),
        job.state()
    )
}

fn job_array_through_warden_batch(cluster: &Cluster) -> String {
    let help = Command::new(WARDEN)
        .args(["batch", "--help"])
        .stdin(Stdio::null())
        .output();
    if !help.is_ok_and(|o| o.status.success()) {
        let text = "SKIPPED: warden batch not built yet (the job-array case runs once `warden batch --help` works)";
        loud(text);
        return text.to_owned();
    }
    let inputs: Vec<String> = (0..6).map(|i| format!("input-{i}")).collect();
    // The README's recipe: the slice in a file, so that warden (exec'd) is the batch shell.
    let body = format!(
        "first=$((SLURM_ARRAY_TASK_ID * 2 + 1))\n\
         sed -n \"${{first}},$((first + 1))p\" inputs.txt > \"slice-$SLURM_ARRAY_TASK_ID.txt\"\n\
         exec '{WARDEN}' batch -j 2 --report \"report-$SLURM_ARRAY_TASK_ID.jsonl\" -- echo {{}} \
         < \"slice-$SLURM_ARRAY_TASK_ID.txt\""
    );
    let inputs_file = inputs.join("\n") + "\n";
    let mut job = Job::submit(
        cluster,
        "array-batch",
        &body,
        &[("inputs.txt", &inputs_file)],
        &[],
        &["--array=0-2"],
    );
    job.wait_done();
    let mut seen = Vec::new();
    for task in 0..3 {
        let path = job.dir.join(format!("report-{task}.jsonl"));
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("no report {} ({e}); {}", path.display(), job.fifo.text()));
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
            .collect();
        assert_eq!(lines.len(), 2, "task {task}: {text}");
        for line in &lines {
            assert_eq!(line["outcome"], "completed", "task {task}: {line}");
            seen.push(line["input"].as_str().unwrap_or_default().to_owned());
        }
    }
    seen.sort();
    assert_eq!(seen, inputs);
    let survivors = job.survivors();
    kill_all(&survivors);
    assert!(survivors.is_empty(), "survivors: {survivors:#?}");
    "job array of 3 tasks through warden batch: 3 JSON Lines reports, 6 jobs completed".to_owned()
}

/// One case: runs its job(s) on the shared cluster, panics on failure, returns its figures.
type Case = fn(&Cluster) -> String;

#[test]
fn under_slurm() {
    if !Path::new(WARDEN).exists() {
        panic!("{WARDEN} is not built");
    }
    let required = std::env::var_os("WARDEN_REQUIRE_SLURM").is_some_and(|v| v == "1");
    let cluster = match Cluster::start() {
        Ok(cluster) => cluster,
        Err(why) => {
            // `Cluster::start` cleans up what it started through the partial cluster's drop;
            // here only the reason is left to say.
            let text = format!("SKIPPED: the Slurm tests: Slurm cannot be started here: {why}");
            loud(&format!("\n{text}\n"));
            assert!(!required, "{text} (WARDEN_REQUIRE_SLURM=1)");
            return;
        }
    };
    let cases: [(&str, Case); 6] = [
        ("scancel", scancel_reaches_warden_and_worker),
        ("scancel-batch", scancel_batch_reaches_warden_alone),
        ("usr1", stop_signal_usr1_from_scancel),
        ("leak-warden", leaking_job_under_warden),
        ("leak-bare", leaking_job_bare),
        ("array", job_array_through_warden_batch),
    ];
    let results: Vec<(&str, thread::Result<String>)> = thread::scope(|scope| {
        let handles: Vec<_> = cases
            .iter()
            .map(|&(name, case)| {
                let cluster = &cluster;
                (name, scope.spawn(move || case(cluster)))
            })
            .collect();
        handles
            .into_iter()
            .map(|(name, h)| (name, h.join()))
            .collect()
    });
    let mut failed = Vec::new();
    for (name, result) in results {
        match result {
            Ok(figures) => loud(&format!("slurm {name}: {figures}")),
            Err(panic) => {
                let text = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default();
                failed.push(format!("{name}: {text}"));
            }
        }
    }
    if !failed.is_empty() {
        let tails = cluster.log_tails();
        panic!("Slurm cases failed:\n{}\n{tails}", failed.join("\n"));
    }
}
