//! Unix primitives: posix_spawn, signals by pid and pgid, exit peeking and reaping.
//!
//! Contract for the rest of the crate:
//! - [`posix_spawn`] starts a child in a new process group whose leader it is, with every signal
//!   at its default disposition (except those the caller asks to keep as inherited), an empty
//!   signal mask, the channel (if any) at fd 3, the exec shim's report pipe (if any) at fd 4,
//!   and no other inherited descriptor above 2 (on glibc; elsewhere descriptors rely on
//!   close-on-exec). It never forks the address space and never runs Rust code in the child.
//! - [`kill_group`] and [`kill_pid`] are only called for children that are not yet reaped, so
//!   the pid and the pgid (= the leader's pid) cannot have been recycled.
//! - [`peek_exit`] observes an exit without reaping; [`reap`] reaps; each child has exactly one
//!   reaper (its [`Child`](super::Child)).

use std::ffi::{CStr, CString};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::ExitStatus;
use super::Stdio;

/// The fd at which a worker finds its channel.
pub(crate) const CHANNEL_FD: RawFd = 3;
/// The fd at which the exec shim finds the write end of its report pipe (see
/// [`super::shim`]); the shim makes it close-on-exec, so the program never sees it.
pub(crate) const REPORT_FD: RawFd = 4;

/// Everything `posix_spawn` needs, already converted to C strings.
pub(crate) struct SpawnArgs<'a> {
    pub path: &'a CStr,
    pub argv: &'a [CString],
    pub envp: &'a [CString],
    pub cwd: Option<&'a CStr>,
    pub channel: Option<RawFd>,
    pub stdin: Stdio,
    pub stdout: Stdio,
    pub stderr: Stdio,
    /// Write ends of capture pipes (above fd 9) placed at fds 1 and 2 instead of `stdout` /
    /// `stderr`.
    pub captured: Option<[RawFd; 2]>,
    /// Put the child in a new process group of its own (GNU timeout's `--foreground` does not).
    pub new_group: bool,
    /// The write end of the shim's report pipe (above fd 9), placed at [`REPORT_FD`].
    pub report: Option<RawFd>,
    /// Signals left out of the reset to default: the child inherits our disposition of them.
    pub keep_inherited: &'a [libc::c_int],
}

/// One file action of a spawn, done in order in the child (by posix_spawn, or by the direct
/// spawn's child in `direct.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FdAction {
    /// `dup2(from, to)`.
    Dup2 { from: RawFd, to: RawFd },
    /// `/dev/null` opened with `flags` at `to`.
    OpenNull { to: RawFd, flags: libc::c_int },
    /// `close(fd)`; not open is not an error.
    Close(RawFd),
}

impl SpawnArgs<'_> {
    /// The file actions, in order: the channel at fd 3 (or fd 3 closed, below the shim's
    /// report pipe), the report pipe at fd 4, the capture pipes at fds 1 and 2, then stdio.
    /// Every source is above fd 9, so no action clobbers a later one's source.
    pub(crate) fn fd_actions(&self) -> Vec<FdAction> {
        let mut out = Vec::with_capacity(6);
        if let Some(fd) = self.channel {
            debug_assert!(
                fd > CHANNEL_FD,
                "channel fd must not collide with its target"
            );
            out.push(FdAction::Dup2 {
                from: fd,
                to: CHANNEL_FD,
            });
        } else if self.report.is_some() {
            // Nothing belongs at fd 3, and closefrom starts above the report pipe.
            out.push(FdAction::Close(CHANNEL_FD));
        }
        if let Some(fd) = self.report {
            debug_assert!(fd > REPORT_FD, "report fd must not collide with its target");
            out.push(FdAction::Dup2 {
                from: fd,
                to: REPORT_FD,
            });
        }
        if let Some(fds) = self.captured {
            for (from, to) in fds.into_iter().zip([1, 2]) {
                debug_assert!(
                    from > REPORT_FD,
                    "capture fd must not collide with the fixed ones"
                );
                out.push(FdAction::Dup2 { from, to });
            }
        }
        for (to, stdio, flags) in [
            (0, self.stdin, libc::O_RDONLY),
            (1, self.stdout, libc::O_WRONLY),
            (2, self.stderr, libc::O_WRONLY),
        ] {
            if to != 0 && self.captured.is_some() {
                // Captured: fds 1 and 2 are the capture pipes (dup2'd above).
                continue;
            }
            // Stderr as stdin means nothing: /dev/null, as documented.
            let null = stdio == Stdio::Null || (stdio == Stdio::Stderr && to == 0);
            match stdio {
                _ if null => out.push(FdAction::OpenNull { to, flags }),
                // fd 2 is the supervisor's stderr, inherited by the child (dup2 onto 1 leaves
                // the child's fd 2 as it is).
                Stdio::Stderr if to == 1 => out.push(FdAction::Dup2 { from: 2, to: 1 }),
                Stdio::Null | Stdio::Stderr | Stdio::Inherit => {}
            }
        }
        out
    }

    /// The first descriptor the child closes (with everything above it): above the last
    /// fixed one it has.
    pub(crate) fn close_from(&self) -> RawFd {
        if self.report.is_some() {
            REPORT_FD + 1
        } else if self.channel.is_some() {
            CHANNEL_FD + 1
        } else {
            CHANNEL_FD
        }
    }
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// Owns initialised posix_spawn file actions and attributes, destroying them on drop.
struct SpawnState {
    actions: MaybeUninit<libc::posix_spawn_file_actions_t>,
    attr: MaybeUninit<libc::posix_spawnattr_t>,
    actions_init: bool,
    attr_init: bool,
}

impl Drop for SpawnState {
    fn drop(&mut self) {
        if self.actions_init {
            // SAFETY: `actions` was initialised by posix_spawn_file_actions_init and is destroyed
            // exactly once, here.
            unsafe { libc::posix_spawn_file_actions_destroy(self.actions.as_mut_ptr()) };
        }
        if self.attr_init {
            // SAFETY: as above, for the attribute object.
            unsafe { libc::posix_spawnattr_destroy(self.attr.as_mut_ptr()) };
        }
    }
}

/// Starts a child with `posix_spawn` (vfork + exec in glibc: no copy of our address space, no
/// Rust code in the child). Returns its pid. On `ENOEXEC` retries the file under `/bin/sh`, as
/// `execvp` does.
pub(crate) fn posix_spawn(args: &SpawnArgs<'_>) -> io::Result<libc::pid_t> {
    match spawn_once(args.path, args.argv, args) {
        Err(e) if e.raw_os_error() == Some(libc::ENOEXEC) => {
            let sh = c"/bin/sh";
            let mut argv = Vec::with_capacity(args.argv.len() + 1);
            argv.push(CString::from(sh));
            argv.push(CString::from(args.path));
            argv.extend(args.argv.iter().skip(1).cloned());
            spawn_once(sh, &argv, args)
        }
        other => other,
    }
}

fn spawn_once(path: &CStr, argv: &[CString], args: &SpawnArgs<'_>) -> io::Result<libc::pid_t> {
    let mut st = SpawnState {
        actions: MaybeUninit::uninit(),
        attr: MaybeUninit::uninit(),
        actions_init: false,
        attr_init: false,
    };
    // SAFETY: init functions take a pointer to uninitialised storage of the right type.
    check(unsafe { libc::posix_spawn_file_actions_init(st.actions.as_mut_ptr()) })?;
    st.actions_init = true;
    // SAFETY: as above.
    check(unsafe { libc::posix_spawnattr_init(st.attr.as_mut_ptr()) })?;
    st.attr_init = true;
    let fa = st.actions.as_mut_ptr();
    let attr = st.attr.as_mut_ptr();

    for action in args.fd_actions() {
        let rc = match action {
            FdAction::Dup2 { from, to } => {
                // SAFETY: `fa` is initialised; `from` is open in this process for the duration
                // of the call. dup2 onto another number clears FD_CLOEXEC on the child's copy.
                unsafe { libc::posix_spawn_file_actions_adddup2(fa, from, to) }
            }
            FdAction::OpenNull { to, flags } => {
                // SAFETY: `fa` is initialised; the path is a valid C string that outlives the
                // call.
                unsafe {
                    libc::posix_spawn_file_actions_addopen(fa, to, c"/dev/null".as_ptr(), flags, 0)
                }
            }
            FdAction::Close(fd) => {
                // SAFETY: `fa` is initialised; closing a descriptor that is not open is not an
                // error for glibc's posix_spawn.
                unsafe { libc::posix_spawn_file_actions_addclose(fa, fd) }
            }
        };
        check(rc)?;
    }
    if let Some(cwd) = args.cwd {
        add_chdir(fa, cwd)?;
    }
    add_closefrom(fa, args.close_from())?;

    // Every catchable signal back to its default, nothing blocked: a worker must not inherit a
    // supervisor's ignored SIGTERM or blocked mask (tini and systemd do the same). Signals the
    // caller keeps are left out of the reset, so the child inherits them as they are here.
    let mut default_set = MaybeUninit::<libc::sigset_t>::uninit();
    let mut empty_set = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigfillset/sigemptyset/sigdelset initialise or update the sets they are given
    // (sigdelset of a number that is no signal fails with EINVAL and changes nothing).
    unsafe {
        libc::sigfillset(default_set.as_mut_ptr());
        libc::sigdelset(default_set.as_mut_ptr(), libc::SIGKILL);
        libc::sigdelset(default_set.as_mut_ptr(), libc::SIGSTOP);
        for &sig in args.keep_inherited {
            libc::sigdelset(default_set.as_mut_ptr(), sig);
        }
        libc::sigemptyset(empty_set.as_mut_ptr());
    }
    let mut flags = libc::POSIX_SPAWN_SETSIGDEF | libc::POSIX_SPAWN_SETSIGMASK;
    if args.new_group {
        flags |= libc::POSIX_SPAWN_SETPGROUP;
    }
    // SAFETY: `attr` is initialised; the sets were initialised just above.
    unsafe {
        check(libc::posix_spawnattr_setflags(attr, flags as _))?;
        check(libc::posix_spawnattr_setpgroup(attr, 0))?;
        check(libc::posix_spawnattr_setsigdefault(
            attr,
            default_set.as_ptr(),
        ))?;
        check(libc::posix_spawnattr_setsigmask(attr, empty_set.as_ptr()))?;
    }

    let argv_ptrs: Vec<*mut libc::c_char> = argv
        .iter()
        .map(|a| a.as_ptr().cast_mut())
        .chain(std::iter::once(std::ptr::null_mut()))
        .collect();
    let envp_ptrs: Vec<*mut libc::c_char> = args
        .envp
        .iter()
        .map(|a| a.as_ptr().cast_mut())
        .chain(std::iter::once(std::ptr::null_mut()))
        .collect();
    let mut pid: libc::pid_t = 0;
    // SAFETY: every pointer is valid for the call: the path and the strings behind argv/envp
    // live in `path`, `argv` and `args`, both pointer arrays are null-terminated, and `fa`/`attr`
    // are initialised. posix_spawn does not keep any of them after it returns.
    check(unsafe {
        libc::posix_spawn(
            &mut pid,
            path.as_ptr(),
            fa,
            attr,
            argv_ptrs.as_ptr(),
            envp_ptrs.as_ptr(),
        )
    })?;
    Ok(pid)
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn add_chdir(fa: *mut libc::posix_spawn_file_actions_t, cwd: &CStr) -> io::Result<()> {
    // SAFETY: `fa` is initialised; glibc copies the path.
    check(unsafe { libc::posix_spawn_file_actions_addchdir_np(fa, cwd.as_ptr()) })
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn add_chdir(_fa: *mut libc::posix_spawn_file_actions_t, _cwd: &CStr) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "a working directory needs glibc's posix_spawn_file_actions_addchdir_np",
    ))
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn add_closefrom(fa: *mut libc::posix_spawn_file_actions_t, from: RawFd) -> io::Result<()> {
    // SAFETY: `fa` is initialised.
    check(unsafe { libc::posix_spawn_file_actions_addclosefrom_np(fa, from) })
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn add_closefrom(_fa: *mut libc::posix_spawn_file_actions_t, _from: RawFd) -> io::Result<()> {
    // Elsewhere stray descriptors are closed only if they are close-on-exec, as Rust opens them.
    Ok(())
}

/// The size of a memory page in bytes (4096 where sysconf cannot tell).
pub(crate) fn page_size() -> u64 {
    // SAFETY: sysconf reads a constant of the system; it has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).ok().filter(|&s| s > 0).unwrap_or(4096)
}

/// A connected socket pair, both ends close-on-exec. The second (child) end is moved above fd 9
/// so that dup2 onto fd 3 in the child always copies it (dup2 onto itself would keep
/// close-on-exec and the worker would find fd 3 closed).
pub(crate) fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType};
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
    let flags = SockFlag::SOCK_CLOEXEC;
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
    let flags = SockFlag::empty();
    let (ours, theirs) =
        nix::sys::socket::socketpair(AddressFamily::Unix, SockType::Stream, None, flags)?;
    set_cloexec(&ours)?;
    let theirs = if theirs.as_raw_fd() <= 9 {
        let moved = nix::fcntl::fcntl(&theirs, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(10))?;
        // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
        unsafe { OwnedFd::from_raw_fd(moved) }
    } else {
        set_cloexec(&theirs)?;
        theirs
    };
    Ok((ours, theirs))
}

/// The exec shim's report pipe: see [`child_pipe`].
pub(crate) fn report_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    child_pipe()
}

/// A pipe whose write end is for a child (the shim's report, a captured stdout or stderr):
/// `(read, write)`, both close-on-exec, the write end moved above fd 9 for the same reason as
/// the channel's child end (see [`socketpair`]). The read end is non-blocking (it is read from
/// the async runtime).
pub(crate) fn child_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    fcntl(&read, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
    let write = if write.as_raw_fd() <= 9 {
        let moved = fcntl(&write, FcntlArg::F_DUPFD_CLOEXEC(10))?;
        // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
        unsafe { OwnedFd::from_raw_fd(moved) }
    } else {
        write
    };
    Ok((read, write))
}

/// Marks a descriptor this process inherited at a known number close-on-exec (the shim's
/// report pipe, so that only the shim and never the program holds it). `Err` if `fd` is not
/// open.
pub(crate) fn set_cloexec_raw(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_SETFD on a number only changes that descriptor's flags (EBADF if it is not
    // open); no memory is involved.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Writes all of `bytes` to the descriptor `fd` this process inherited (the shim's report).
pub(crate) fn write_raw(fd: RawFd, bytes: &[u8]) -> io::Result<()> {
    let mut done = 0;
    while done < bytes.len() {
        let rest = &bytes[done..];
        // SAFETY: `rest` is valid for reads of `rest.len()` bytes for the duration of the call.
        let n = unsafe { libc::write(fd, rest.as_ptr().cast(), rest.len()) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::WriteZero));
        }
        done += n as usize;
    }
    Ok(())
}

/// Runs `write` with SIGPIPE blocked in this thread, and takes back the SIGPIPE the kernel
/// raised at this thread if the write met a closed pipe: whatever the host's disposition of
/// SIGPIPE, a captured stream forwarded to a closed stdout gives EPIPE, never a signal. A
/// SIGPIPE sent to the process meanwhile stays pending for another thread.
pub fn without_sigpipe<T>(write: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    // SAFETY: the sets are initialised by sigemptyset before use and outlive the calls;
    // pthread_sigmask only changes this thread's mask, restored below on every path.
    let (set, old) = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGPIPE);
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
        (set, old)
    };
    let result = write();
    if matches!(&result, Err(e) if e.kind() == io::ErrorKind::BrokenPipe) {
        consume_pending_sigpipe(&set);
    }
    // SAFETY: `old` is the mask read above; restoring it is always valid.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    result
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn consume_pending_sigpipe(set: &libc::sigset_t) {
    let zero = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `set` is a valid, initialised set; a null siginfo is allowed; a zero timeout
    // polls, so this never blocks. It dequeues a SIGPIPE pending on this thread (blocked here).
    unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &zero) };
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn consume_pending_sigpipe(set: &libc::sigset_t) {
    // SAFETY: a zeroed sigset_t is a valid value for sigpending to fill; valid pointers to
    // initialised sets; sigwait returns at once, as SIGPIPE is pending (checked first) and
    // blocked in this thread.
    unsafe {
        let mut pending: libc::sigset_t = std::mem::zeroed();
        if libc::sigpending(&mut pending) == 0 && libc::sigismember(&pending, libc::SIGPIPE) == 1 {
            let mut sig = 0;
            libc::sigwait(set, &mut sig);
        }
    }
}

fn set_cloexec(fd: &OwnedFd) -> io::Result<()> {
    use nix::fcntl::{FcntlArg, FdFlag, fcntl};
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    Ok(())
}

/// Sends `sig` to the process group `pgid`. Callers guarantee the group's leader is not reaped.
pub(crate) fn kill_group(pgid: libc::pid_t, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: killpg has no memory-safety preconditions; the pgid is pinned by our unreaped leader.
    if unsafe { libc::killpg(pgid, sig) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sends `sig` to the process `pid`. Callers guarantee it is not reaped.
pub(crate) fn kill_pid(pid: libc::pid_t, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: kill has no memory-safety preconditions; the pid is pinned by being our unreaped child.
    if unsafe { libc::kill(pid, sig) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn waitid(pid: libc::pid_t, flags: libc::c_int) -> io::Result<Option<ExitStatus>> {
    loop {
        // SAFETY: an all-zero siginfo_t is a valid value; waitid writes into it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is a valid, writable siginfo_t; P_PID with our own child's pid.
        let rc = unsafe { libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, flags) };
        if rc == -1 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        let (si_pid, status) = siginfo_parts(&info);
        if si_pid == 0 {
            return Ok(None);
        }
        return Ok(Some(match info.si_code {
            libc::CLD_EXITED => ExitStatus::Code(status),
            libc::CLD_DUMPED => ExitStatus::Signal {
                signal: status,
                core_dumped: true,
            },
            _ => ExitStatus::Signal {
                signal: status,
                core_dumped: false,
            },
        }));
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn siginfo_parts(info: &libc::siginfo_t) -> (libc::pid_t, libc::c_int) {
    // SAFETY: after waitid the SIGCHLD fields of the union are the ones written.
    unsafe { (info.si_pid(), info.si_status()) }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn siginfo_parts(info: &libc::siginfo_t) -> (libc::pid_t, libc::c_int) {
    (info.si_pid, info.si_status)
}

/// Whether `pid` has exited, without reaping it (so its pid and pgid stay reserved).
pub(crate) fn peek_exit(pid: libc::pid_t) -> io::Result<Option<ExitStatus>> {
    waitid(pid, libc::WEXITED | libc::WNOHANG | libc::WNOWAIT)
}

/// Whether any child of ours has exited and waits to be reaped: one `waitid` that reaps
/// nothing. Errors other than "no children at all" count as yes (the caller then looks).
pub(crate) fn any_zombie_child() -> bool {
    loop {
        // SAFETY: an all-zero siginfo_t is a valid value; waitid writes into it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is a valid, writable siginfo_t; P_ALL ignores the id; WNOWAIT leaves
        // whatever it finds unreaped.
        let rc = unsafe {
            libc::waitid(
                libc::P_ALL,
                0,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        if rc == -1 {
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::ECHILD) => return false,
                _ => return true,
            }
        }
        return siginfo_parts(&info).0 != 0;
    }
}

/// Blocks until `pid` has exited, without reaping it.
pub(crate) fn wait_exit_unreaped(pid: libc::pid_t) -> io::Result<Option<ExitStatus>> {
    waitid(pid, libc::WEXITED | libc::WNOWAIT)
}

/// Reaps `pid`; with `block` false returns `None` if it has not exited yet.
pub(crate) fn reap(pid: libc::pid_t, block: bool) -> io::Result<Option<ExitStatus>> {
    waitid(pid, libc::WEXITED | if block { 0 } else { libc::WNOHANG })
}

/// A supervisor started with SIGCHLD ignored would have its children reaped by the kernel, and
/// every wait would fail with ECHILD. Put the default back (only if it was ignored: a handler
/// someone installed, such as tokio's, stays).
pub(crate) fn reset_sigchld_if_ignored() -> io::Result<()> {
    // SAFETY: zeroed sigaction is valid; querying with a null new action changes nothing.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers; a null `act` only reads the current disposition.
    if unsafe { libc::sigaction(libc::SIGCHLD, std::ptr::null(), &mut old) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if old.sa_sigaction == libc::SIG_IGN {
        // SAFETY: zeroed sigaction with SIG_DFL is a valid disposition to install.
        let mut new: libc::sigaction = unsafe { std::mem::zeroed() };
        new.sa_sigaction = libc::SIG_DFL;
        // SAFETY: valid pointers; installs SIG_DFL, which runs no code of ours.
        if unsafe { libc::sigaction(libc::SIGCHLD, &new, std::ptr::null_mut()) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Restores the default disposition of `sig` (the shim uses it for SIGPIPE, which Rust's
/// runtime ignores and which an exec would otherwise pass on ignored).
pub(crate) fn reset_signal_default(sig: libc::c_int) -> io::Result<()> {
    set_disposition(sig, libc::SIG_DFL)
}

/// Puts the calling thread under `SCHED_FIFO` at the lowest real-time priority (Linux; where
/// the process may: root, `CAP_SYS_NICE`, an `RLIMIT_RTPRIO` above 0). Elsewhere `Unsupported`.
pub(crate) fn set_realtime_thread() -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 1 };
        // SAFETY: sets the calling thread's policy (pid 0: this thread); `param` is a valid
        // sched_param that outlives the call.
        if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    Err(io::ErrorKind::Unsupported.into())
}

/// Sets `sig` to SIG_IGN, reporting failure (EINVAL for SIGKILL, SIGSTOP or a number that is
/// no signal). The exec shim uses it for the signals a program must start with ignored.
pub(crate) fn set_ignored(sig: libc::c_int) -> io::Result<()> {
    set_disposition(sig, libc::SIG_IGN)
}

fn set_disposition(sig: libc::c_int, handler: libc::sighandler_t) -> io::Result<()> {
    // SAFETY: a zeroed sigaction is a valid value; only SIG_DFL or SIG_IGN is installed, which
    // runs no code of ours; the shim is single-threaded when it calls this.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = handler;
    // SAFETY: valid pointers for the call; the old action is not asked for.
    if unsafe { libc::sigaction(sig, &action, std::ptr::null_mut()) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Puts glibc's internal signals (32 and 33, below `SIGRTMIN`) back to SIG_DFL. glibc's
/// posix_spawn child sets them to SIG_IGN when the parent had handlers for them (any threaded
/// glibc process does), and an ignored signal survives exec: without this every program
/// would start with them ignored. glibc's `sigaction` refuses these numbers, hence the raw
/// system call. Only the single-threaded shim calls it, just before exec.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub(crate) fn reset_internal_signals() -> io::Result<()> {
    for sig in 32..libc::SIGRTMIN() {
        // The kernel's `struct sigaction` (handler, flags, restorer where the architecture
        // has one, mask): all zero is SIG_DFL with no flags and an empty mask, whatever the
        // layout.
        let action = [0u64; 4];
        // SAFETY: rt_sigaction reads a kernel sigaction from `action` (32 valid, zeroed bytes,
        // at least the struct's size), writes no old action (null), and takes the size of
        // the kernel's sigset (8 bytes); SIG_DFL runs no code of ours.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                action.as_ptr(),
                std::ptr::null_mut::<u64>(),
                8usize,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Elsewhere there are no such signals to put back.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(crate) fn reset_internal_signals() -> io::Result<()> {
    Ok(())
}

/// Whether `sig` is a signal a process may set to SIG_IGN (not SIGKILL or SIGSTOP, and a
/// number this system has).
pub(crate) fn can_be_ignored(sig: libc::c_int) -> bool {
    if sig == libc::SIGKILL || sig == libc::SIGSTOP {
        return false;
    }
    let mut set = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the set; sigaddset then only writes inside it, and fails
    // with EINVAL for a number that is no signal.
    unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        libc::sigaddset(set.as_mut_ptr(), sig) == 0
    }
}

/// `PR_SET_PDEATHSIG`: `sig` (any signal, real-time ones included) is sent to this process
/// when the thread that created it exits.
#[cfg(target_os = "linux")]
pub(crate) fn set_parent_death_signal(sig: libc::c_int) -> io::Result<()> {
    let arg =
        libc::c_ulong::try_from(sig).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: PR_SET_PDEATHSIG takes a signal number by value; no memory is involved.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, arg, 0, 0, 0) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Replaces this process with `path` (argv as given), falling back to `/bin/sh path args...`
/// on ENOEXEC as execvp does. Returns only on failure.
pub(crate) fn exec(path: &std::ffi::OsStr, argv: &[std::ffi::OsString]) -> io::Error {
    use std::os::unix::ffi::OsStrExt;
    let to_c = |s: &std::ffi::OsStr| {
        CString::new(s.as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
    };
    let (cpath, cargv) = match (
        to_c(path),
        argv.iter().map(|a| to_c(a)).collect::<io::Result<Vec<_>>>(),
    ) {
        (Ok(p), Ok(a)) => (p, a),
        (Err(e), _) | (_, Err(e)) => return e,
    };
    let Err(err) = nix::unistd::execv(&cpath, &cargv);
    if err == nix::errno::Errno::ENOEXEC {
        let mut sh_argv = vec![c"/bin/sh".to_owned(), cpath];
        sh_argv.extend(cargv.into_iter().skip(1));
        let Err(e) = nix::unistd::execv(c"/bin/sh", &sh_argv);
        return io::Error::from(e);
    }
    io::Error::from(err)
}

/// The Landlock ABI version this kernel offers; 0 without Landlock (not built in, or not
/// enabled at boot).
#[cfg(target_os = "linux")]
pub(crate) fn landlock_abi() -> i32 {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with a null attribute pointer, size 0 and the VERSION flag, landlock_create_ruleset
    // only returns the ABI version (or fails); it reads and writes no memory.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    i32::try_from(v).unwrap_or(0).max(0)
}

/// Whether this kernel has seccomp filters (`PR_GET_SECCOMP` fails with EINVAL without them).
#[cfg(target_os = "linux")]
pub(crate) fn seccomp_available() -> bool {
    // SAFETY: PR_GET_SECCOMP takes no pointer; it only returns this thread's seccomp mode.
    unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) >= 0 }
}

/// `setrlimit(resource, soft, hard)`, for the single-threaded shim before exec.
#[cfg(target_os = "linux")]
pub(crate) fn set_rlimit(resource: u32, soft: u64, hard: u64) -> io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: `limit` is a valid rlimit for the duration of the call; the resource number is
    // checked by the kernel (EINVAL).
    if unsafe { libc::setrlimit(resource as libc::__rlimit_resource_t, &limit) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Closes every descriptor from `first` up (`close_range`, Linux 5.9).
#[cfg(target_os = "linux")]
pub(crate) fn close_from(first: RawFd) -> io::Result<()> {
    let first =
        libc::c_uint::try_from(first).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: close_range only closes descriptors of this process; the single-threaded shim
    // owns none of them any more (nothing of it refers to those numbers after this).
    let rc = unsafe { libc::syscall(libc::SYS_close_range, first, libc::c_uint::MAX, 0u32) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether the calling thread is the process's main thread (the one whose exit is the
/// process's, in Rust). Only Linux can tell cheaply; elsewhere `false`.
pub(crate) fn on_main_thread() -> bool {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid and getpid take no arguments and cannot fail.
        unsafe { libc::gettid() == libc::getpid() }
    }
    #[cfg(not(target_os = "linux"))]
    false
}

/// Whether a fork without exec is both safe and cheap here: this process has one thread (no
/// other thread can hold a lock, malloc's or std's, that the child would wait on for ever) and
/// at most `max_rss` bytes resident (the page tables fork copies, and the pages the child keeps
/// alive once the parent writes them, stay small). Read from /proc/self/stat; `false` when it
/// cannot be read.
#[cfg(target_os = "linux")]
pub(crate) fn single_threaded_and_small(max_rss: u64) -> bool {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return false;
    };
    // After the command name (which may hold spaces and parentheses): field 3 (state) on.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return false;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // num_threads is field 20 and rss (in pages) field 24: indexes 17 and 21 from field 3.
    let threads = fields.get(17).and_then(|f| f.parse::<u64>().ok());
    let rss_pages = fields.get(21).and_then(|f| f.parse::<u64>().ok());
    matches!((threads, rss_pages), (Some(1), Some(pages)) if pages.saturating_mul(page_size()) <= max_rss)
}

/// Forks a detached helper that runs `run` in a copy of this process and exits with its
/// status; returns its pid. Call it only where [`single_threaded_and_small`] holds: the child
/// runs ordinary Rust code (it allocates), which is sound after fork only when the forking
/// thread was the only one.
///
/// The child starts as a fresh exec would leave it, so that it behaves like the same helper
/// started through exec: `stdin` at fd 0, /dev/null at 1 and 2 and nothing above (a shell
/// reading our output must not wait for it), an empty signal mask, every handler of ours back
/// to SIG_DFL (ignored signals stay ignored), a process group of its own, and `name` as its
/// thread name (what `ps` and /proc/PID/comm show; its command line stays ours). It never
/// returns into the caller's frames: it ends with `_exit`, after `run` or a panic (status 125).
#[cfg(target_os = "linux")]
pub(crate) fn fork_helper(
    stdin: &OwnedFd,
    name: &CStr,
    run: impl FnOnce() -> i32,
) -> io::Result<libc::pid_t> {
    // Opened before the fork: the child then needs no path lookup to have its 1 and 2.
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    // SAFETY: fork has no memory-safety preconditions; the child only continues in the branch
    // below, which never returns into the caller's frames (it ends in `_exit`), and the caller
    // guarantees the process is single-threaded, so no lock the child takes can be held by a
    // thread that does not exist in it.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid > 0 {
        return Ok(pid);
    }
    // A child whose descriptors could not be set up ends at once, without `run`: a guard
    // with no order socket would read its failure as the supervisor's end.
    let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        match helper_start(stdin.as_raw_fd(), null.as_raw_fd(), name) {
            Ok(()) => run(),
            Err(_) => 125,
        }
    }))
    .unwrap_or(125);
    // SAFETY: ends the child at once, without running the parent's atexit handlers or
    // destructors (which own descriptors and state that are the parent's).
    unsafe { libc::_exit(code) }
}

/// The forked helper's start: its descriptors, signals, group and name (see [`fork_helper`]).
///
/// # Errors
/// When 0, 1 and 2 could not be made (`EMFILE` for the copies, say).
#[cfg(target_os = "linux")]
fn helper_start(stdin: RawFd, null: RawFd, name: &CStr) -> io::Result<()> {
    // SAFETY: fcntl(F_DUPFD) and dup2 only make and replace descriptors of this (child)
    // process. Both are first copied above 2, so that neither is closed by a dup2 onto its
    // own number (a host with fd 0 closed may have either there); no Rust object of the
    // child's is used after this except through 0, 1 and 2.
    let placed = unsafe {
        let stdin = libc::fcntl(stdin, libc::F_DUPFD, 3);
        let null = libc::fcntl(null, libc::F_DUPFD, 3);
        stdin >= 3
            && null >= 3
            && libc::dup2(stdin, 0) == 0
            && libc::dup2(null, 1) == 1
            && libc::dup2(null, 2) == 2
    };
    if !placed {
        return Err(io::Error::last_os_error());
    }
    if let Err(e) = close_from(3) {
        close_listed_from(3, e);
    }
    // SAFETY: sigemptyset initialises the set before sigprocmask reads it; only this thread's
    // mask changes.
    unsafe {
        let mut empty = MaybeUninit::<libc::sigset_t>::uninit();
        libc::sigemptyset(empty.as_mut_ptr());
        libc::pthread_sigmask(libc::SIG_SETMASK, empty.as_ptr(), std::ptr::null_mut());
    }
    for sig in 1..=libc::SIGRTMAX() {
        // SAFETY: a zeroed sigaction is a valid value to receive the current disposition.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointers; a null new action only reads the disposition (numbers glibc
        // refuses fail with EINVAL and are skipped).
        let read = unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) } == 0;
        if read && old.sa_sigaction != libc::SIG_IGN && old.sa_sigaction != libc::SIG_DFL {
            let _ = reset_signal_default(sig);
        }
    }
    // SAFETY: setpgid(0, 0) makes the calling process a group leader; no memory is involved.
    unsafe { libc::setpgid(0, 0) };
    set_thread_name(name);
    Ok(())
}

/// Names the calling thread (`PR_SET_NAME`: /proc/PID/comm for a single-threaded process);
/// the kernel keeps the first 15 bytes.
#[cfg(target_os = "linux")]
pub(crate) fn set_thread_name(name: &CStr) {
    // SAFETY: PR_SET_NAME copies at most 16 bytes from a NUL-terminated string that outlives
    // the call.
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr(), 0, 0, 0) };
}

/// Closes every descriptor from `first` up that `/proc/self/fd` lists: the fallback for a
/// kernel without `close_range` (`why` is its error, logged if the listing fails too).
#[cfg(target_os = "linux")]
pub(crate) fn close_listed_from(first: RawFd, why: io::Error) {
    let listed: Vec<RawFd> = match std::fs::read_dir("/proc/self/fd") {
        Ok(dir) => dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .filter(|&fd| fd >= first)
            .collect(),
        Err(e) => {
            eprintln!(
                "warden: cannot close inherited descriptors (close_range: {why}; /proc/self/fd: {e})"
            );
            return;
        }
    };
    for fd in listed {
        // SAFETY: closes a descriptor number of this process; the caller owns no object that
        // refers to one at or above `first` (the directory's own descriptor is closed by now,
        // and closing it twice only returns EBADF).
        unsafe { libc::close(fd) };
    }
}

/// `PR_SET_NO_NEW_PRIVS`: no exec from here on gains privileges (setuid bits, file
/// capabilities); needed before an unprivileged seccomp filter.
#[cfg(target_os = "linux")]
pub(crate) fn set_no_new_privs() -> io::Result<()> {
    // SAFETY: PR_SET_NO_NEW_PRIVS takes integers only; no memory is involved.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether this process runs as root (RLIMIT_NPROC binds nobody with CAP_SYS_RESOURCE or
/// CAP_SYS_ADMIN, which root has).
pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A descriptor's owner whose descriptor stays open and the same for as long as it lives, as
/// registering it with the reactor needs.
pub(crate) trait OwnsFd: AsRawFd {}
impl OwnsFd for std::os::unix::net::UnixStream {}
impl OwnsFd for OwnedFd {}
impl OwnsFd for std::fs::File {}

/// Registers `owner` (non-blocking) with the current runtime's reactor for `interest` alone:
/// the shim's report pipe, output pipes, the channel, a cgroup's `cgroup.events`. tokio's own `UnixStream` registers for
/// reading and writing both, and a unix socket registered for writability wakes its
/// reactor's thread each time the peer reads.
///
/// # Errors
/// The registration's (`epoll_ctl`); `owner` is dropped then.
///
/// # Panics
/// Outside a tokio runtime with I/O enabled.
pub(crate) fn register<T: OwnsFd>(
    owner: T,
    interest: tokio::io::Interest,
) -> io::Result<tokio::io::unix::AsyncFd<T>> {
    // SAFETY: `T: OwnsFd` owns its descriptor, open and the same for its whole life; the
    // AsyncFd owns `owner` from here until it is dropped.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(owner, interest) }
        .map_err(io::Error::from)
}
