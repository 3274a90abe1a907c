//! The direct spawn (Linux on x86_64 and aarch64): a vfork-style child that does the exec
//! shim's setup itself and execs the program, one exec instead of two.
//!
//! The shim ([`super::shim`]) exists because posix_spawn cannot set `PR_SET_PDEATHSIG`, join a
//! cgroup or set rlimits in the child, and a `pre_exec` closure would fork the whole
//! supervisor. But its price is a second exec of a (large) binary per spawn, about as long as
//! the program's own. This module does what glibc's posix_spawn does, `clone(CLONE_VM |
//! CLONE_VFORK)` on a stack of its own, and runs in that child only async-signal-safe system
//! calls on memory prepared before the clone (no allocation, no lock, no panic): the file
//! actions and signal reset posix_spawn would do, then the shim's steps (death signal, cgroup
//! joins, signals started ignored, rlimits, `no_new_privs`), then `execve` (with execvp's
//! `/bin/sh` fallback). A failing step writes its step and errno into the shared plan and
//! exits; the parent, resumed by the kernel once the child has exec'd or exited, reads it
//! there, so no report pipe is needed either.
//!
//! Landlock and seccomp stay in the shim (their rulesets are built with allocations); so does
//! everything on a kernel without `close_range` (Linux 5.9). `WARDEN_SPAWN=shim` in the
//! supervisor's environment turns this path off (for measuring both, or as an escape hatch).
//!
//! **Into the cgroup.** Where it can, the child is made with `clone3(CLONE_VM | CLONE_VFORK |
//! CLONE_INTO_CGROUP)` (Linux 5.7) and starts in the tree's leaf: no `cgroup.procs` write,
//! which waits out an RCU grace period (10 ms here) whenever the cgroup lock was not taken for
//! writing just before, as in every `warden run`. glibc exports no clone3, so the call is a
//! few lines of assembly (x86_64) whose child calls [`child`] on its own stack. Refused
//! (ENOSYS, EPERM under a seccomp policy, EINVAL before 5.7), the spawn falls back to
//! `clone` and the write, and does not ask again; `WARDEN_SPAWN=clone` skips clone3.

use std::ffi::{CStr, CString, c_void};
use std::io;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};

use super::shim::{Setup, ShimPlan, Step};
use super::unix::{FdAction, SpawnArgs};

/// The child's stack: what the steps and glibc's `execve` wrapper need, with room to spare.
const STACK_LEN: usize = 64 * 1024;
/// The kernel's number of signals (`_NSIG`), numbered 1 to 64.
const NSIG: libc::c_int = 64;

/// The shim's steps this path does itself, owned (built before the clone).
#[derive(Debug, Clone)]
pub(crate) struct DirectSetup {
    death_signal: Option<libc::c_int>,
    /// `cgroup.procs` files to join, in order: the tree's leaf, then its v1 limit cgroups.
    cgroups: Vec<CString>,
    /// The tree's leaf (a cgroup v2 directory), to spawn straight into with `clone3`.
    leaf: Option<CString>,
    ignored: Vec<libc::c_int>,
    rlimits: Vec<(u32, u64, u64)>,
    no_new_privs: bool,
}

impl DirectSetup {
    /// The plan for `plan`, if this path can carry it out: not for a Landlock ruleset or the
    /// seccomp filter, not on a kernel without `close_range`, and not when
    /// `WARDEN_SPAWN=shim` asks for the shim.
    pub(crate) fn for_plan(plan: &ShimPlan) -> Option<DirectSetup> {
        let Setup {
            cgroups,
            rlimits,
            close_fds: _, // the file actions close every descriptor above the channel anyway
            no_new_privs,
            landlock,
            seccomp,
        } = &plan.setup;
        if landlock.is_some() || *seccomp || !enabled() {
            return None;
        }
        let path = |p: &std::path::Path| CString::new(p.as_os_str().as_encoded_bytes()).ok();
        let mut procs = Vec::with_capacity(cgroups.len() + 1);
        for p in plan.cgroup_procs.iter().chain(cgroups) {
            procs.push(path(p)?);
        }
        let leaf = match plan
            .cgroup_procs
            .as_deref()
            .and_then(std::path::Path::parent)
        {
            Some(dir) => Some(path(dir)?),
            None => None,
        };
        Some(DirectSetup {
            death_signal: plan.death_signal,
            cgroups: procs,
            leaf,
            ignored: plan.ignored.clone(),
            rlimits: rlimits.clone(),
            no_new_privs: *no_new_privs,
        })
    }
}

/// `WARDEN_SPAWN` in the supervisor's environment, read once: `shim` or `clone` (the direct
/// spawn without clone3), anything else the default.
fn spawn_mode() -> Option<&'static std::ffi::OsStr> {
    static MODE: OnceLock<Option<std::ffi::OsString>> = OnceLock::new();
    MODE.get_or_init(|| std::env::var_os("WARDEN_SPAWN"))
        .as_deref()
}

/// Whether the path is on: `close_range` exists (probed once) and `WARDEN_SPAWN` is not
/// `shim`.
fn enabled() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| {
        if spawn_mode().is_some_and(|m| m == "shim") {
            return false;
        }
        // SAFETY: closing the range [MAX, MAX], which holds no open descriptor, changes
        // nothing; the call only tells whether the kernel has close_range.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_close_range,
                libc::c_uint::MAX,
                libc::c_uint::MAX,
                0u32,
            )
        };
        rc == 0
    })
}

/// Everything the child reads, prepared before the clone: raw pointers into memory that
/// outlives the call (the parent is suspended until the child has exec'd or exited).
struct Plan {
    path: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    /// `/bin/sh PATH ARGS...`, for a file `execve` refuses with ENOEXEC (as execvp does).
    sh_argv: *const *const libc::c_char,
    new_group: bool,
    fd_actions: *const FdAction,
    fd_actions_len: usize,
    cwd: *const libc::c_char,
    close_from: libc::c_uint,
    /// Bit `n - 1` set: signal `n` goes back to SIG_DFL. Clear: it keeps an inherited SIG_IGN
    /// (a handler never survives exec, and is reset too).
    reset: u64,
    /// Bit `n - 1`: signal `n` starts ignored.
    ignore: u64,
    death_signal: libc::c_int,
    parent: libc::pid_t,
    cgroups: *const *const libc::c_char,
    cgroups_len: usize,
    /// The child was cloned into the leaf (`CLONE_INTO_CGROUP`): skip the first write.
    in_leaf: bool,
    rlimits: *const (u32, u64, u64),
    rlimits_len: usize,
    no_new_privs: bool,
    /// Written by a failing child: the step's code, 0 for none.
    failed_step: AtomicU32,
    failed_errno: AtomicI32,
}

fn bit(sig: libc::c_int) -> u64 {
    match u32::try_from(sig - 1) {
        Ok(n) if n < 64 => 1u64 << n,
        _ => 0,
    }
}

fn pointers(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// Starts the program of `args` with `setup` done in the child. Call it from the spawning
/// thread: `PR_SET_PDEATHSIG` follows the thread that spawns.
///
/// `Ok(Ok(pid))`: the program is running (exec'd); `Ok(Err((step, errno)))`: a step failed in
/// the child, which is reaped.
///
/// # Errors
/// The clone's own error (EAGAIN, ENOMEM...), or the stack's.
pub(crate) fn spawn(
    args: &SpawnArgs<'_>,
    setup: &DirectSetup,
) -> io::Result<Result<libc::pid_t, (Step, i32)>> {
    let argv = pointers(args.argv);
    let envp = pointers(args.envp);
    let sh: &CStr = c"/bin/sh";
    let mut sh_argv: Vec<*const libc::c_char> = vec![sh.as_ptr(), args.path.as_ptr()];
    sh_argv.extend(args.argv.iter().skip(1).map(|a| a.as_ptr()));
    sh_argv.push(std::ptr::null());
    let cgroups = pointers(&setup.cgroups);

    let fd_actions = args.fd_actions();
    let mut reset = !0u64;
    for &sig in args.keep_inherited {
        reset &= !bit(sig);
    }
    let mut ignore = 0u64;
    for &sig in &setup.ignored {
        ignore |= bit(sig);
    }
    let mut plan = Plan {
        path: args.path.as_ptr(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        sh_argv: sh_argv.as_ptr(),
        new_group: args.new_group,
        fd_actions: fd_actions.as_ptr(),
        fd_actions_len: fd_actions.len(),
        cwd: args.cwd.map_or(std::ptr::null(), CStr::as_ptr),
        close_from: libc::c_uint::try_from(args.close_from()).unwrap_or(3),
        reset,
        ignore,
        death_signal: setup.death_signal.unwrap_or(0),
        // A pid always fits a pid_t; 0 (never a parent) only disables the check.
        parent: libc::pid_t::try_from(std::process::id()).unwrap_or(0),
        cgroups: cgroups.as_ptr(),
        cgroups_len: setup.cgroups.len(),
        in_leaf: false,
        rlimits: setup.rlimits.as_ptr(),
        rlimits_len: setup.rlimits.len(),
        no_new_privs: setup.no_new_privs,
        failed_step: AtomicU32::new(0),
        failed_errno: AtomicI32::new(0),
    };

    let stack = Stack::new()?;
    // Every signal blocked on this thread across the clone, so the child starts with all of
    // them blocked: no handler of ours can run in it (it shares our memory) before it has
    // reset them. glibc's internal signals too, hence the raw system call.
    let old = set_mask(!0u64);
    // Straight into the leaf where the kernel can (clone3, Linux 5.7): no `cgroup.procs`
    // write, which waits out an RCU grace period (~10 ms here) when the cgroup lock was not
    // taken for writing just before, as in every `warden run`.
    let mut into_leaf = None;
    if let Some(leaf) = &setup.leaf {
        plan.in_leaf = true;
        match into_cgroup(&plan, &stack, leaf) {
            Ok(pid) => into_leaf = Some(pid),
            Err(e) => {
                plan.in_leaf = false;
                tracing::debug!(error = %e, "clone3 into the cgroup refused; joining it by cgroup.procs");
            }
        }
    }
    let pid = match into_leaf {
        Some(pid) => Ok(pid),
        None => clone_vfork(&plan, &stack),
    };
    set_mask(old);
    drop(stack);
    let pid = pid?;
    let code = plan.failed_step.load(Ordering::Acquire);
    if code == 0 {
        return Ok(Ok(pid));
    }
    // The child has exited (it wrote the step and called _exit); reap it here, it is not
    // registered anywhere.
    let _ = super::unix::reap(pid, true);
    let step = Step::from_code(code).unwrap_or(Step::Invocation);
    Ok(Err((step, plan.failed_errno.load(Ordering::Acquire))))
}

/// glibc's clone(CLONE_VM | CLONE_VFORK) of [`child`] on `stack`.
fn clone_vfork(plan: &Plan, stack: &Stack) -> io::Result<libc::pid_t> {
    // SAFETY: `child` runs on `stack` (mapped, writable, its top 16-byte aligned) and reads
    // only `plan`, which outlives this call; CLONE_VFORK suspends this thread until the child
    // has exec'd or exited, so the memory it shares stays as it was, and the child does
    // nothing that allocates, locks or unwinds. SIGCHLD makes it an ordinary child for waitid
    // and pidfds.
    let pid = unsafe {
        libc::clone(
            child,
            stack.top(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            (&raw const *plan).cast_mut().cast::<c_void>(),
        )
    };
    if pid < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(pid)
    }
}

/// `struct clone_args` of Linux 5.7 (`CLONE_ARGS_SIZE_VER2`, 88 bytes).
#[repr(C)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// `CLONE_INTO_CGROUP` (Linux 5.7; not in every libc crate version).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Whether clone3 into a cgroup was refused once for a reason that will not change (ENOSYS,
/// EPERM from a seccomp policy, EINVAL from a kernel before 5.7): not asked again.
static CLONE3_REFUSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// clone3(CLONE_VM | CLONE_VFORK | CLONE_INTO_CGROUP) of [`child`] on `stack`, into the
/// cgroup directory `leaf`. Refused (no child made): the error, and the caller clones the
/// old way.
fn into_cgroup(plan: &Plan, stack: &Stack, leaf: &CStr) -> io::Result<libc::pid_t> {
    if spawn_mode().is_some_and(|m| m == "clone") || CLONE3_REFUSED.load(Ordering::Relaxed) {
        return Err(io::Error::from_raw_os_error(libc::ENOSYS));
    }
    // SAFETY: open takes a valid C string; the descriptor is ours and closed below.
    let dir = unsafe {
        libc::open(
            leaf.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if dir < 0 {
        return Err(io::Error::last_os_error());
    }
    let args = CloneArgs {
        flags: (libc::CLONE_VM | libc::CLONE_VFORK) as u64 | CLONE_INTO_CGROUP,
        pidfd: 0,
        child_tid: 0,
        parent_tid: 0,
        exit_signal: libc::SIGCHLD as u64,
        stack: stack.low() as u64,
        stack_size: stack.usable_len() as u64,
        tls: 0,
        set_tid: 0,
        set_tid_size: 0,
        cgroup: u64::try_from(dir).unwrap_or(u64::MAX),
    };
    // SAFETY: as for clone in `clone_vfork`: `child` runs on `stack`, whose top is 16-byte aligned,
    // reads only `plan`, and this thread is suspended until it has exec'd or exited; `args`
    // is a valid clone_args of the size given.
    let rc = unsafe {
        clone3_vfork(
            &raw const args,
            std::mem::size_of::<CloneArgs>(),
            child,
            (&raw const *plan).cast_mut().cast::<c_void>(),
        )
    };
    // SAFETY: `dir` is ours, closed once; the child has its own reference to the cgroup.
    unsafe { libc::close(dir) };
    if rc < 0 {
        let errno = i32::try_from(-rc).unwrap_or(libc::EINVAL);
        if matches!(
            errno,
            libc::ENOSYS | libc::EPERM | libc::EINVAL | libc::E2BIG
        ) {
            CLONE3_REFUSED.store(true, Ordering::Relaxed);
        }
        return Err(io::Error::from_raw_os_error(errno));
    }
    libc::pid_t::try_from(rc).map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))
}

/// The raw clone3 system call, whose child calls `f(arg)` on the new stack and exits with
/// its value: glibc exports no clone3 wrapper, and a child that returned into Rust code on a
/// stack without its caller's frames would crash. Returns the child's pid or `-errno`.
///
/// # Safety
/// `args` must describe a stack (CLONE_VM) that nothing else uses while the child runs, and
/// `f` must never return into anything but the exit below (it may return: the child exits).
#[cfg(target_arch = "x86_64")]
unsafe fn clone3_vfork(
    args: *const CloneArgs,
    size: usize,
    f: extern "C" fn(*mut c_void) -> libc::c_int,
    arg: *mut c_void,
) -> i64 {
    let ret: i64;
    // SAFETY: the caller's contract. The parent continues at `2:` with the result in rax and
    // every register but rax, rcx and r11 (clobbered by `syscall`) as it was. The child
    // starts on its new stack with the same registers: it clears the frame pointer, calls
    // `f` (the stack top is 16-byte aligned, so `call` leaves the ABI's alignment) and exits.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "mov rdi, r9",
            "call r8",
            "mov edi, eax",
            "mov eax, 60",
            "syscall",
            "ud2",
            "2:",
            inlateout("rax") libc::SYS_clone3 => ret,
            in("rdi") args,
            in("rsi") size,
            in("r8") f,
            in("r9") arg,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

/// Elsewhere (aarch64): not written yet; the caller clones the old way and writes
/// `cgroup.procs`.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn clone3_vfork(
    _args: *const CloneArgs,
    _size: usize,
    _f: extern "C" fn(*mut c_void) -> libc::c_int,
    _arg: *mut c_void,
) -> i64 {
    -i64::from(libc::ENOSYS)
}

/// The child's stack: an anonymous mapping with a guard page below it.
struct Stack {
    base: *mut c_void,
    len: usize,
}

impl Stack {
    fn new() -> io::Result<Stack> {
        let page = usize::try_from(super::unix::page_size()).unwrap_or(4096);
        let len = STACK_LEN + page;
        // SAFETY: a fresh private anonymous mapping; nothing else refers to it.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let stack = Stack { base, len };
        // SAFETY: the lowest page of the mapping just made; the stack grows down onto it.
        if unsafe { libc::mprotect(base, page, libc::PROT_NONE) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stack)
    }

    /// The highest address: where the child's stack starts (page-aligned, so 16-aligned).
    fn top(&self) -> *mut c_void {
        self.base.wrapping_byte_add(self.len)
    }

    /// The lowest address above the guard page (clone3 takes the stack as low end and size).
    fn low(&self) -> *mut c_void {
        self.base.wrapping_byte_add(self.len - STACK_LEN)
    }

    /// The size of the stack above the guard page.
    fn usable_len(&self) -> usize {
        STACK_LEN
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once; the child no longer runs on it
        // (it exec'd or exited before clone returned).
        unsafe { libc::munmap(self.base, self.len) };
    }
}

/// The errno of the last failed call (the parent thread's TLS, which the child shares; the
/// parent is suspended and does not read it).
fn errno() -> i32 {
    // SAFETY: __errno_location returns this thread's errno slot, always valid.
    unsafe { *libc::__errno_location() }
}

/// Records the failing step and exits without running anything of the parent's (no atexit
/// handler, no flush).
fn fail(plan: &Plan, step: Step, errno: i32) -> ! {
    plan.failed_errno.store(errno, Ordering::Release);
    plan.failed_step.store(step.code(), Ordering::Release);
    // SAFETY: _exit ends this child at once; it is async-signal-safe.
    unsafe { libc::_exit(127) }
}

/// Sets this thread's signal mask to `mask` (bit `n - 1`: signal `n`; glibc's internal ones
/// too, which its wrappers leave out) and returns the old one. Async-signal-safe.
fn set_mask(mask: u64) -> u64 {
    let mut old = 0u64;
    // SAFETY: rt_sigprocmask reads `mask` and writes the old mask into `old`, both 8-byte
    // kernel sigsets valid for the call.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &raw const mask,
            &raw mut old,
            8usize,
        );
    }
    old
}

/// `rt_sigaction(sig, handler)`, returning the old handler. The kernel's `struct sigaction`
/// starts with the handler on these architectures; zero flags and an empty mask follow.
fn set_handler(sig: libc::c_int, handler: usize) -> Result<usize, i32> {
    let action = [handler as u64, 0, 0, 0];
    let mut old = [0u64; 4];
    // SAFETY: rt_sigaction reads a kernel sigaction from `action` and writes the old one into
    // `old` (32 bytes each, at least the struct's size), with the kernel's sigset size (8).
    // SIG_DFL and SIG_IGN run no code.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_rt_sigaction,
            sig,
            action.as_ptr(),
            old.as_mut_ptr(),
            8usize,
        )
    };
    if rc == 0 {
        Ok(usize::try_from(old[0]).unwrap_or(usize::MAX))
    } else {
        Err(errno())
    }
}

/// The child: async-signal-safe system calls only, on the plan's memory, then exec.
extern "C" fn child(arg: *mut c_void) -> libc::c_int {
    // SAFETY: `arg` is the `Plan` the parent passed to clone; it outlives this child's use of
    // it (the parent is suspended until the exec or the exit).
    let plan = unsafe { &*arg.cast::<Plan>() };
    // SAFETY: every call below is an async-signal-safe system call (or glibc's thin wrapper
    // of one) taking plain integers or pointers into the plan, which are valid C strings,
    // null-terminated arrays of them, or arrays of `fd_actions_len`/`cgroups_len`/`rlimits_len` entries,
    // prepared by the parent; nothing allocates, locks or unwinds.
    unsafe {
        // Signals: every one back to SIG_DFL but those kept inherited, and of those a handler
        // too (it is the parent's code; exec would reset it anyway). Then those the program
        // starts with ignored.
        for sig in 1..=NSIG {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            let wanted = if plan.ignore & bit(sig) != 0 {
                libc::SIG_IGN
            } else {
                libc::SIG_DFL
            };
            match set_handler(sig, wanted) {
                Ok(old) if plan.reset & bit(sig) == 0 && old == libc::SIG_IGN => {
                    // Kept as inherited: its SIG_IGN stays, unless asked ignored anyway.
                    let _ = set_handler(sig, libc::SIG_IGN);
                }
                Ok(_) => {}
                Err(e) if plan.ignore & bit(sig) != 0 => fail(plan, Step::IgnoreSignals, e),
                Err(e) => fail(plan, Step::ResetSignals, e),
            }
        }
        if plan.new_group && libc::setpgid(0, 0) != 0 {
            fail(plan, Step::Invocation, errno());
        }
        for i in 0..plan.fd_actions_len {
            match *plan.fd_actions.add(i) {
                FdAction::Dup2 { from, to } => {
                    if libc::dup2(from, to) < 0 {
                        fail(plan, Step::Invocation, errno());
                    }
                }
                FdAction::Close(fd) => {
                    libc::close(fd);
                }
                FdAction::OpenNull { to, flags } => {
                    let fd = libc::open(c"/dev/null".as_ptr(), flags);
                    if fd < 0 {
                        fail(plan, Step::Invocation, errno());
                    }
                    if fd != to {
                        if libc::dup2(fd, to) < 0 {
                            fail(plan, Step::Invocation, errno());
                        }
                        libc::close(fd);
                    }
                }
            }
        }
        if !plan.cwd.is_null() && libc::chdir(plan.cwd) != 0 {
            fail(plan, Step::Invocation, errno());
        }
        if libc::syscall(
            libc::SYS_close_range,
            plan.close_from,
            libc::c_uint::MAX,
            0u32,
        ) != 0
        {
            fail(plan, Step::CloseFds, errno());
        }
        if plan.death_signal != 0 {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::c_ulong::try_from(plan.death_signal).unwrap_or(0),
            ) != 0
            {
                fail(plan, Step::DeathSignal, errno());
            }
            // The supervisor died before the line above: nobody would signal us.
            if plan.parent != 0 && libc::getppid() != plan.parent {
                libc::_exit(137);
            }
        }
        for i in usize::from(plan.in_leaf)..plan.cgroups_len {
            let procs = *plan.cgroups.add(i);
            let fd = libc::open(procs, libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                fail(plan, Step::JoinCgroup, errno());
            }
            let written = libc::write(fd, c"0\n".as_ptr().cast(), 2);
            if written != 2 {
                fail(plan, Step::JoinCgroup, errno());
            }
            libc::close(fd);
        }
        for i in 0..plan.rlimits_len {
            let (resource, soft, hard) = *plan.rlimits.add(i);
            let limit = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            if libc::setrlimit(resource as libc::__rlimit_resource_t, &raw const limit) != 0 {
                fail(plan, Step::SetRlimit, errno());
            }
        }
        if plan.no_new_privs && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            fail(plan, Step::NoNewPrivs, errno());
        }
        set_mask(0);
        libc::execve(plan.path, plan.argv, plan.envp);
        let mut e = errno();
        if e == libc::ENOEXEC {
            libc::execve(c"/bin/sh".as_ptr(), plan.sh_argv, plan.envp);
            e = errno();
        }
        fail(plan, Step::Exec, e)
    }
}
