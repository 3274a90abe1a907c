//! The spawning thread: every child is started from one long-lived thread.
//!
//! Why a thread of its own: `PR_SET_PDEATHSIG` (set by the exec shim) fires when the *thread*
//! that spawned the child exits, and tokio retires its blocking-pool threads; one thread that
//! lives as long as the process keeps that signal meaning "the supervisor died". It also keeps
//! the posix_spawn call (which blocks until the child has exec'd) off the async workers. The
//! one exception is the main thread of a current-thread runtime (the CLI's), which lives as
//! long as the process and is its runtime's only thread: it spawns inline.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::Instant;

use tokio::sync::oneshot;

use super::direct::{self, DirectSetup};
use super::shim::{REPORT_LEN, ShimPlan, Step, decode};
use super::unix::{self, CHANNEL_FD, SpawnArgs};
use super::{Child, Command, Stdio, pidfd};
use crate::error::{SetupStep, SpawnError};

/// Environment variable that tells a worker which fd holds its channel.
pub(crate) const CHANNEL_FD_ENV: &str = "WARDEN_FD";

/// How to spawn, beyond the command itself.
#[derive(Debug, Default)]
pub(crate) struct SpawnOptions {
    /// The child's end of the socketpair, placed at fd 3.
    pub channel: Option<OwnedFd>,
    /// Keep the child in the supervisor's process group (GNU timeout's `--foreground`).
    pub same_group: bool,
    /// Setup to run in the exec shim; `None` spawns the program directly.
    pub shim: Option<ShimPlan>,
    /// Variables added to the child's environment.
    pub extra_env: Vec<(OsString, OsString)>,
    /// Signals left out of posix_spawn's reset to default (without a shim: the child then
    /// inherits the supervisor's disposition of them).
    pub keep_inherited: Vec<libc::c_int>,
    /// The write ends of capture pipes, placed at fds 1 and 2 (instead of the command's
    /// stdout and stderr); closed here once the child has its copies.
    pub captured: Option<[OwnedFd; 2]>,
}

struct Prepared {
    display: OsString,
    new_group: bool,
    path: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    cwd: Option<CString>,
    channel: Option<OwnedFd>,
    stdio: [Stdio; 3],
    captured: Option<[OwnedFd; 2]>,
    /// The exec shim runs first: give it a report pipe.
    shim: bool,
    /// The shim's setup done in the spawned child itself (`direct.rs`): no shim, no pipe.
    direct: Option<DirectSetup>,
    keep_inherited: Vec<libc::c_int>,
}

/// A spawned child in transit from the spawning thread to its `Child`. If it is dropped before
/// [`take`](Self::take) (the spawn future was dropped, before or after the reply was sent),
/// it kills and reaps the child: nobody else ever will.
struct Spawned {
    pid: libc::pid_t,
    pidfd: Option<OwnedFd>,
    new_group: bool,
    /// The read end of the shim's report pipe.
    report: Option<OwnedFd>,
    /// Taken just before the clone: when the process came to be.
    created: Instant,
    taken: bool,
}

impl Spawned {
    fn take(mut self) -> (libc::pid_t, Option<OwnedFd>, bool, Option<OwnedFd>, Instant) {
        self.taken = true;
        (
            self.pid,
            self.pidfd.take(),
            self.new_group,
            self.report.take(),
            self.created,
        )
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if !self.taken {
            abandon(self.pid, self.new_group);
        }
    }
}

/// What the spawning thread answers.
enum Started {
    /// A child, running or (through the shim) about to report.
    Child(Spawned),
    /// A step of the direct spawn failed, with this errno; the child is reaped.
    Failed(Step, i32),
}

type Reply = io::Result<Started>;

struct Request {
    prepared: Prepared,
    reply: oneshot::Sender<Reply>,
}

fn spawner() -> Option<&'static mpsc::Sender<Request>> {
    static SPAWNER: OnceLock<Option<mpsc::Sender<Request>>> = OnceLock::new();
    SPAWNER
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Request>();
            let started = std::thread::Builder::new().name("warden-spawner".into()).spawn(move || {
                if let Err(e) = unix::reset_sigchld_if_ignored() {
                    tracing::warn!(error = %e, "could not reset SIGCHLD to its default disposition");
                }
                for req in rx {
                    let reply = spawn_now(&req.prepared);
                    // The channel's child end (and the capture pipes' write ends) are closed
                    // here, after the child has its copies.
                    drop(req.prepared);
                    // If the caller is gone the reply is dropped, and `Spawned` cleans up.
                    let _ = req.reply.send(reply);
                }
            });
            started.ok().map(|_| tx)
        })
        .as_ref()
}

/// Whether this spawn runs on the calling thread: the main thread of a current-thread runtime
/// (the CLI's). That thread lives as long as the process, so PDEATHSIG keeps its meaning, and
/// it is the runtime's only thread, so a handover would only add a thread's start and two
/// wake-ups to every spawn (0.26 ms of a `warden timeout 10 true`). Anywhere else the
/// spawning thread does it: tokio retires its blocking threads, and a multi-threaded
/// runtime's workers should not wait for an exec.
fn spawns_inline() -> bool {
    unix::on_main_thread()
        && tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread)
}

/// A spawn on the calling thread; the spawning thread's start-up (SIGCHLD back to its default
/// if it was ignored) is done once first.
fn spawn_inline(prepared: Prepared) -> Reply {
    static SIGCHLD: std::sync::Once = std::sync::Once::new();
    SIGCHLD.call_once(|| {
        if let Err(e) = unix::reset_sigchld_if_ignored() {
            tracing::warn!(error = %e, "could not reset SIGCHLD to its default disposition");
        }
    });
    let reply = spawn_now(&prepared);
    // The child has its copies of the channel's end and the capture pipes' write ends now.
    drop(prepared);
    reply
}

/// Kills and reaps a child whose spawner went away before taking it. Its pid is still
/// unreaped, so neither it nor its group can have been recycled.
fn abandon(pid: libc::pid_t, new_group: bool) {
    if new_group {
        let _ = unix::kill_group(pid, libc::SIGKILL);
    }
    let _ = unix::kill_pid(pid, libc::SIGKILL);
    // Reap off this thread: a child stuck in D state must not stall every later spawn.
    let reaper = std::thread::Builder::new()
        .name("warden-reap".into())
        .spawn(move || {
            let _ = super::sweep::reap_owned(pid, true);
        });
    if reaper.is_err() {
        tracing::warn!(
            pid,
            "could not start a reaping thread; the child may stay a zombie"
        );
    }
}

fn spawn_now(p: &Prepared) -> Reply {
    // The shim's report pipe: our read end and the child's write end are close-on-exec, so
    // no other child keeps the write end past its own exec; ours is dropped right after the
    // spawn, so the shim's exec (or exit) is the pipe's EOF.
    let pipe = if p.shim {
        Some(unix::report_pipe()?)
    } else {
        None
    };
    let args = SpawnArgs {
        path: &p.path,
        argv: &p.argv,
        envp: &p.envp,
        cwd: p.cwd.as_deref(),
        channel: p.channel.as_ref().map(|fd| fd.as_raw_fd()),
        stdin: p.stdio[0],
        stdout: p.stdio[1],
        stderr: p.stdio[2],
        captured: p
            .captured
            .as_ref()
            .map(|[out, err]| [out.as_raw_fd(), err.as_raw_fd()]),
        new_group: p.new_group,
        report: pipe.as_ref().map(|(_, write)| write.as_raw_fd()),
        keep_inherited: &p.keep_inherited,
    };
    // Registered under the lock the orphan sweeper takes, so it can never reap this pid.
    let mut owned = super::sweep::owned();
    // GNU timeout's clock starts when fork returns; a vfork-style spawn returns only once the
    // program is exec'd, so the moment is taken here, before the clone.
    let created = Instant::now();
    let pid = match &p.direct {
        Some(setup) => match direct::spawn(&args, setup)? {
            Ok(pid) => pid,
            Err((step, errno)) => return Ok(Started::Failed(step, errno)),
        },
        None => unix::posix_spawn(&args)?,
    };
    owned.insert(pid);
    drop(owned);
    let report = pipe.map(|(read, write)| {
        drop(write);
        read
    });
    let fd = match pidfd::open(pid) {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!(pid, error = %e, "pidfd_open failed; falling back to the pid");
            None
        }
    };
    Ok(Started::Child(Spawned {
        pid,
        pidfd: fd,
        new_group: p.new_group,
        report,
        created,
        taken: false,
    }))
}

fn cstring(bytes: impl Into<Vec<u8>>, what: &'static str) -> Result<CString, SpawnError> {
    CString::new(bytes).map_err(|_| SpawnError::InvalidCommand { what })
}

/// Finds `program` as execvp would, with its errors: a name with a slash is used as given
/// (whether it can be run is for `execve` to say: the shim reports its error, or posix_spawn
/// returns it); otherwise the first executable regular file of that name in `path_var`'s
/// directories. As in glibc's `execvp`, a directory where the name is missing (`ENOENT`,
/// `ENOTDIR`, ...) is skipped, `EACCES` is remembered and the search goes on, and any other
/// error ends it (`ELOOP`, or `ENAMETOOLONG` for a name longer than `NAME_MAX`), as
/// `NotExecutable`.
fn resolve(program: &OsStr, path_var: Option<&OsStr>) -> Result<PathBuf, SpawnError> {
    if program.is_empty() {
        return Err(SpawnError::NotFound {
            program: program.to_owned(),
        });
    }
    if program.as_bytes().contains(&b'/') {
        return Ok(PathBuf::from(program));
    }
    let search = path_var.unwrap_or(OsStr::new("/usr/local/bin:/usr/bin:/bin"));
    let mut denied = false;
    for dir in std::env::split_paths(search) {
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir
        };
        let candidate = dir.join(program);
        match std::fs::metadata(&candidate) {
            Ok(meta) if meta.is_file() && meta.permissions().mode() & 0o111 != 0 => {
                if nix::unistd::access(&candidate, nix::unistd::AccessFlags::X_OK).is_ok() {
                    return Ok(candidate);
                }
                denied = true;
            }
            Ok(_) => denied = true,
            Err(e) => match e.raw_os_error() {
                Some(libc::EACCES) => denied = true,
                Some(
                    libc::ENOENT | libc::ESTALE | libc::ENOTDIR | libc::ENODEV | libc::ETIMEDOUT,
                )
                | None => {}
                Some(_) => {
                    return Err(SpawnError::NotExecutable {
                        program: program.to_owned(),
                        source: e,
                    });
                }
            },
        }
    }
    if denied {
        Err(SpawnError::NotExecutable {
            program: program.to_owned(),
            source: io::Error::from_raw_os_error(libc::EACCES),
        })
    } else {
        Err(SpawnError::NotFound {
            program: program.to_owned(),
        })
    }
}

fn prepare(cmd: &Command, opts: SpawnOptions) -> Result<Prepared, SpawnError> {
    let SpawnOptions {
        channel,
        same_group,
        shim,
        extra_env,
        keep_inherited,
        captured,
    } = opts;
    let mut env = cmd.resolved_env();
    env.retain(|(k, _)| k != CHANNEL_FD_ENV && !extra_env.iter().any(|(e, _)| e == k));
    env.extend(extra_env);
    if channel.is_some() {
        env.push((CHANNEL_FD_ENV.into(), CHANNEL_FD.to_string().into()));
    }
    let path_var = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_os_str());
    let path_var = path_var
        .map(OsStr::to_owned)
        .or_else(|| std::env::var_os("PATH"));
    let path = resolve(&cmd.program, path_var.as_deref())?;
    let mut argv = Vec::with_capacity(cmd.args.len() + 1);
    argv.push(cstring(cmd.program.as_bytes(), "program")?);
    for a in &cmd.args {
        argv.push(cstring(a.as_bytes(), "argument")?);
    }
    let mut envp = Vec::with_capacity(env.len());
    for (k, v) in env {
        if k.is_empty() || k.as_bytes().contains(&b'=') {
            return Err(SpawnError::InvalidCommand {
                what: "environment variable name",
            });
        }
        let mut kv = k.into_vec();
        kv.push(b'=');
        kv.extend_from_slice(v.as_bytes());
        envp.push(cstring(kv, "environment variable")?);
    }
    let cwd = match &cmd.cwd {
        Some(dir) => Some(cstring(dir.as_os_str().as_bytes(), "working directory")?),
        None => None,
    };
    let mut path = cstring(path.into_os_string().into_vec(), "program")?;
    let direct = shim.as_ref().and_then(DirectSetup::for_plan);
    let use_shim = shim.is_some() && direct.is_none();
    if let Some(plan) = shim.filter(|_| use_shim) {
        argv = plan.argv(&path, &argv);
        path = super::shim::executable();
    }
    Ok(Prepared {
        display: cmd.program.clone(),
        new_group: !same_group,
        path,
        argv,
        envp,
        cwd,
        channel,
        stdio: [cmd.stdin, cmd.stdout, cmd.stderr],
        captured,
        shim: use_shim,
        direct,
        keep_inherited,
    })
}

/// The error for a failed `execve` (posix_spawn's, without a shim; the shim's `exec` step).
fn exec_error(program: OsString, err: io::Error) -> SpawnError {
    match err.raw_os_error() {
        Some(libc::ENOENT) => SpawnError::NotFound { program },
        _ => SpawnError::NotExecutable {
            program,
            source: err,
        },
    }
}

/// The error for a failed `posix_spawn` without a shim: exec errors as [`exec_error`], the
/// rest (EAGAIN, ENOMEM from the clone itself...) as `Launch`.
fn classify(program: OsString, err: io::Error) -> SpawnError {
    match err.raw_os_error() {
        Some(
            libc::ENOENT
            | libc::EACCES
            | libc::EPERM
            | libc::EISDIR
            | libc::ENOEXEC
            | libc::ETXTBSY
            | libc::ELOOP
            | libc::ENAMETOOLONG
            | libc::ENOTDIR
            | libc::E2BIG,
        ) => exec_error(program, err),
        _ => SpawnError::Launch {
            program,
            source: err,
        },
    }
}

/// The error for the shim's failure report.
fn shim_error(program: OsString, step: Step, errno: i32) -> SpawnError {
    let source = io::Error::from_raw_os_error(errno);
    let step = match step {
        Step::Exec => return exec_error(program, source),
        Step::Invocation => return SpawnError::Launch { program, source },
        Step::DeathSignal => SetupStep::DeathSignal,
        Step::JoinCgroup => SetupStep::JoinCgroup,
        Step::ResetSignals => SetupStep::ResetSignals,
        Step::IgnoreSignals => SetupStep::IgnoreSignals,
        Step::SetRlimit => SetupStep::SetRlimit,
        Step::CloseFds => SetupStep::CloseFds,
        Step::NoNewPrivs => SetupStep::NoNewPrivs,
        Step::Landlock => SetupStep::Landlock,
        Step::Seccomp => SetupStep::Seccomp,
    };
    SpawnError::Setup {
        program,
        step,
        source,
    }
}

/// What the shim's report pipe said: `Ok(None)` at EOF with no bytes (the program was
/// exec'd), `Ok(Some(..))` for a failure record.
///
/// # Cancel safety
/// Cancel-safe in the sense that matters: dropping it loses only the report, and the caller
/// then drops the child, which kills and reaps it.
async fn read_report(fd: OwnedFd) -> io::Result<Option<(Step, i32)>> {
    let fd = unix::register(fd, tokio::io::Interest::READABLE)?;
    let mut buf = [0u8; REPORT_LEN];
    let mut len = 0;
    loop {
        let mut guard = fd.readable().await?;
        match guard
            .try_io(|fd| nix::unistd::read(fd.get_ref(), &mut buf[len..]).map_err(io::Error::from))
        {
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => {
                len += n;
                if len == REPORT_LEN {
                    break;
                }
            }
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => {}
        }
    }
    match len {
        0 => Ok(None),
        _ => decode(&buf[..len]).map(Some).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "the exec shim sent a malformed report",
            )
        }),
    }
}

/// Spawns `cmd` (in its own process group unless `opts.same_group`), with `opts.channel` (the
/// child's end of the socketpair, if any) at fd 3 and `WARDEN_FD=3` in its environment. With
/// the exec shim it resolves once the program is exec'd, or with the shim's failure (the
/// process then killed and reaped); the wait for that runs here, never on the spawning thread.
pub(crate) async fn spawn(cmd: &Command, opts: SpawnOptions) -> Result<Child, SpawnError> {
    let prepared = prepare(cmd, opts)?;
    let display = prepared.display.clone();
    let started = if spawns_inline() {
        spawn_inline(prepared)
    } else {
        let (reply, rx) = oneshot::channel();
        let gone = || SpawnError::Launch {
            program: display.clone(),
            source: io::Error::other("the spawning thread is gone"),
        };
        spawner()
            .ok_or_else(gone)?
            .send(Request { prepared, reply })
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
    .map_err(|e| classify(display.clone(), e))?;
    let (pid, fd, new_group, report, created) = match started {
        Started::Child(spawned) => spawned.take(),
        Started::Failed(step, errno) => return Err(shim_error(display, step, errno)),
    };
    let mut child = Child::new(pid, fd, created).map_err(|source| {
        abandon(pid, new_group);
        SpawnError::Launch {
            program: display.clone(),
            source,
        }
    })?;
    let Some(report) = report else {
        return Ok(child);
    };
    // Held by the shim until its exec: a failure before or at exec arrives as one record. The
    // shim is about to exit then and has started nothing, so the process alone is killed.
    let error = match read_report(report).await {
        Ok(None) => return Ok(child),
        Ok(Some((step, errno))) => shim_error(display, step, errno),
        Err(source) => SpawnError::Launch {
            program: display,
            source,
        },
    };
    let _ = child.signal(libc::SIGKILL);
    if child.wait_exit().await.is_ok() {
        let _ = child.reap();
    }
    // Otherwise the child's drop kills and reaps it.
    Err(error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn resolves_like_execvp() {
        assert!(matches!(
            resolve(OsStr::new(""), None),
            Err(SpawnError::NotFound { .. })
        ));
        assert_eq!(
            resolve(OsStr::new("/bin/sh"), None).unwrap(),
            Path::new("/bin/sh")
        );
        // A name with a slash is left to execve, which says what is wrong with it.
        assert_eq!(
            resolve(OsStr::new("./no-such-x"), None).unwrap(),
            Path::new("./no-such-x")
        );
        let found = resolve(OsStr::new("sh"), Some(OsStr::new("/nonexistent:/bin"))).unwrap();
        assert_eq!(found, Path::new("/bin/sh"));
        assert!(matches!(
            resolve(
                OsStr::new("no-such-program-warden"),
                Some(OsStr::new("/bin"))
            ),
            Err(SpawnError::NotFound { .. })
        ));
    }

    #[test]
    fn rejects_nul_bytes() {
        let mut cmd = Command::new("sh");
        cmd.arg("a\0b");
        assert!(matches!(
            prepare(&cmd, SpawnOptions::default()),
            Err(SpawnError::InvalidCommand { what: "argument" })
        ));
    }
}
