//! Process-wide signal state of the `warden` binary, and the locale its messages follow: the
//! one platform module of the CLI.
//!
//! Contract for the rest of `cli`:
//! - [`reset_inherited_signal_state`] runs first in `main`: nothing blocked, `SIGCHLD` at its
//!   default if it was ignored, so a warden started under `trap '' CHLD` or with `SIGTERM`
//!   blocked still sees its children and its signals (threads created later inherit the mask).
//! - [`ignore_tty_stop_signals`]: like GNU `timeout`, warden itself is never stopped by
//!   `SIGTTIN`/`SIGTTOU`; children start with default dispositions anyway (posix_spawn attrs).
//! - [`block_signals`] / [`unblock_signals`]: warden as PID 1 blocks its stop signals until it
//!   listens to them, so one sent early stays pending instead of being discarded;
//! - [`stop_self`]: job control's last step, once the tree is stopped: warden stops (SIGSTOP,
//!   so the shell sees the job stopped) and returns once continued.
//! - [`reraise`] ends the process with the signal a command died of, with core dumps disabled,
//!   as GNU `timeout` does; it returns only if the signal did not end the process.
//! - [`signal_pipe`] and [`deliver_to`]: warden's own handler for the signals it listens to
//!   (one byte, the signal's number, written to the pipe of the [`SignalSet`] that listens to
//!   it), so that 48 listeners cost 96 `sigaction` calls rather than tokio's registrations.
//!
//! [`SignalSet`]: super::signal_set::SignalSet
//! - [`Locale`]: the locale the environment selects, as GNU's `setlocale (LC_ALL, "")` would
//!   load it, queried for its character set and printable characters. It changes no
//!   process-wide state (nothing calls `setlocale`), so it is safe from any thread.

use std::ffi::CStr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use super::out::say;

use libc::c_int;
use nix::sys::signal::{SigSet, SigmaskHow, sigprocmask};

/// Whether SIGPIPE was ignored when the process started, recorded before Rust's runtime set
/// it to `SIG_IGN` (which it does before `main`, so `main` cannot ask the kernel any more).
static SIGPIPE_IGNORED_AT_START: AtomicBool = AtomicBool::new(false);

/// Runs from `.init_array`, before `main` and before Rust's runtime touches SIGPIPE.
extern "C" fn record_sigpipe_at_start() {
    SIGPIPE_IGNORED_AT_START.store(is_ignored_now(libc::SIGPIPE), Ordering::Relaxed);
}

#[cfg(any(target_os = "linux", target_os = "android"))]
#[used]
#[unsafe(link_section = ".init_array")]
static RECORD_SIGPIPE: extern "C" fn() = record_sigpipe_at_start;

#[cfg(target_vendor = "apple")]
#[used]
#[unsafe(link_section = "__DATA,__mod_init_func")]
static RECORD_SIGPIPE: extern "C" fn() = record_sigpipe_at_start;

fn is_ignored_now(sig: c_int) -> bool {
    // SAFETY: a zeroed sigaction is a valid value to read into; a null new action only
    // queries, which has no effect and runs no code of ours.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(sig, std::ptr::null(), &mut old) == 0 && old.sa_sigaction == libc::SIG_IGN
    }
}

static IGNORED_AT_START: OnceLock<Vec<c_int>> = OnceLock::new();

/// Records which signals warden inherited as ignored (`SIG_IGN`). Call first in `main`, before
/// anything changes a disposition; later calls keep the first record.
pub(crate) fn record_ignored_at_start() {
    IGNORED_AT_START.get_or_init(|| {
        (1..=max_signal())
            .filter(|&sig| match sig {
                libc::SIGKILL | libc::SIGSTOP => false,
                libc::SIGPIPE => SIGPIPE_IGNORED_AT_START.load(Ordering::Relaxed),
                _ => is_ignored_now(sig),
            })
            .collect()
    });
}

/// Every signal that was ignored when warden started (see [`record_ignored_at_start`]).
pub(crate) fn all_ignored_at_start() -> &'static [c_int] {
    IGNORED_AT_START.get().map_or(&[], Vec::as_slice)
}

/// Whether `sig` was ignored when warden started (see [`record_ignored_at_start`]).
pub(crate) fn ignored_at_start(sig: c_int) -> bool {
    IGNORED_AT_START
        .get()
        .is_some_and(|ignored| ignored.contains(&sig))
}

fn max_signal() -> c_int {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    return libc::SIGRTMAX();
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    return 31;
}

/// Runs `write` with SIGPIPE blocked in this thread, taking back the SIGPIPE a closed pipe
/// raised at it: warden handles SIGPIPE (`warden timeout` forwards one it receives to the
/// tree, as upstream GNU does), and its own failed write must not look like one sent to it.
/// The library's, shared with its output capture.
pub(crate) use warden::without_sigpipe;

/// Unblocks every signal and puts `SIGCHLD` back to its default disposition if it was ignored.
pub(crate) fn reset_inherited_signal_state() {
    // Errors cannot happen with valid arguments; there is nothing better to do than go on.
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    // SAFETY: a zeroed sigaction is a valid value to read into; a null new action only queries.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers; with a null `act` this only reads the current disposition.
    let queried = unsafe { libc::sigaction(libc::SIGCHLD, std::ptr::null(), &mut old) } == 0;
    if queried && old.sa_sigaction == libc::SIG_IGN {
        set_default(libc::SIGCHLD);
    }
}

/// Blocks `signals` in the calling thread, and so in every thread it starts from now on.
///
/// For warden as PID 1 (a container's entrypoint): the kernel discards a signal sent to a
/// namespace's init while it has no handler for it, unless it is blocked, when it stays
/// pending. So a SIGTERM that comes before warden listens (while it reads `--input -`, say)
/// is kept for [`unblock_signals`], not lost. Children start with an empty mask anyway
/// (posix_spawn's `SETSIGMASK`).
pub(crate) fn block_signals(signals: &[c_int]) {
    change_mask(SigmaskHow::SIG_BLOCK, signals);
}

/// Unblocks `signals` in the calling thread: one pending is delivered to it now.
pub(crate) fn unblock_signals(signals: &[c_int]) {
    change_mask(SigmaskHow::SIG_UNBLOCK, signals);
}

fn change_mask(how: SigmaskHow, signals: &[c_int]) {
    let mut set = SigSet::empty();
    for &sig in signals {
        if let Ok(sig) = nix::sys::signal::Signal::try_from(sig) {
            set.add(sig);
        }
    }
    // Cannot fail with a valid `how` and set; there is nothing better to do than go on.
    let _ = nix::sys::signal::pthread_sigmask(how, Some(&set), None);
}

/// Ignores `SIGTTIN` and `SIGTTOU` for warden itself (GNU `timeout` does the same, so that a
/// background warden writing a diagnostic is not stopped).
///
/// Why they are not handled like `SIGTSTP` (stop the tree, then warden): the terminal sends
/// them only to a background process group that reads the terminal, or writes to it under
/// `stty tostop`, and warden's tree has a group of its own, so they come only from warden's own
/// terminal I/O or from `kill`. At their default action warden would stop alone and leave its
/// tree running unsupervised; caught, a background write would never finish (the kernel sends
/// `SIGTTOU` again each time the interrupted write is restarted). Ignored, the write goes
/// through and a read fails with `EIO`. `SIGTSTP` (Ctrl-Z, `kill -TSTP`) is the way to stop
/// warden with its tree.
pub(crate) fn ignore_tty_stop_signals() {
    for sig in [libc::SIGTTIN, libc::SIGTTOU] {
        // SAFETY: installs SIG_IGN, which runs no code of ours; called before any thread that
        // could race on the disposition cares about these two signals.
        unsafe { libc::signal(sig, libc::SIG_IGN) };
    }
}

/// Stops warden itself with `SIGSTOP`, which cannot be caught: the shell that waits for it
/// sees the job stopped, as after the default action of `SIGTSTP`. Returns once warden is
/// continued (`SIGCONT`: the shell's `fg` or `bg`).
pub(crate) fn stop_self() {
    // Sent to the calling thread, so the stop takes effect before `raise` returns (and it
    // stops every thread of the process). It cannot fail for a valid signal.
    let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGSTOP);
}

fn set_default(sig: c_int) {
    // SAFETY: a zeroed sigaction with SIG_DFL and an empty mask is a valid disposition, and
    // installing the default action runs no code of ours.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = libc::SIG_DFL;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(sig, &action, std::ptr::null_mut());
    }
}

/// Disables core dumps of this process, GNU's `disable_core_dumps`: `PR_SET_DUMPABLE` 0 where
/// there is one, and `RLIMIT_CORE` 0. True if either worked.
fn disable_core_dumps() -> bool {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let dumpable_off = nix::sys::prctl::set_dumpable(false).is_ok();
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let dumpable_off = false;
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `zero` is a valid rlimit that outlives the call; the kernel only reads it.
    let limited = unsafe { libc::setrlimit(libc::RLIMIT_CORE, &zero) } == 0;
    dumpable_off || limited
}

/// Dies of `sig` the way the monitored command did: core dumps off, `sig` at its default
/// action and unblocked, then raised. Returns if that did not end the process (a signal whose
/// default is to ignore or to stop, PID 1, or core dumps could not be disabled), and the
/// caller then exits with 128 + `sig`.
pub(crate) fn reraise(sig: c_int) {
    if !disable_core_dumps() {
        say!("warden timeout: warning: disabling core dumps failed");
        return;
    }
    set_default(sig);
    // SAFETY: the set is initialised by sigemptyset before use and outlives the calls; an
    // invalid signal number only makes sigaddset fail. raise signals this thread, whose mask
    // was just changed, and has no memory-safety preconditions.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::raise(sig);
    }
}

/// A locale object from `newlocale`, freed on drop.
///
/// # Invariants
/// The pointer is a valid `locale_t` that nothing else frees.
pub(crate) struct Locale(libc::locale_t);

// glibc, musl and the BSDs export this; the libc crate does not declare it for Linux.
// `wint_t` is `unsigned int` there.
unsafe extern "C" {
    fn iswprint_l(wc: u32, locale: libc::locale_t) -> c_int;
}

impl Locale {
    /// The locale `LC_ALL`, the `LC_*` variables and `LANG` select, or `None` when one of
    /// them names a locale that is not installed: GNU's `setlocale (LC_ALL, "")` fails then,
    /// and GNU stays in the C locale.
    pub(crate) fn from_env() -> Option<Self> {
        Self::named(c"")
    }

    /// The locale called `name` (all categories), if it is installed.
    pub(crate) fn named(name: &CStr) -> Option<Self> {
        // SAFETY: `name` is a NUL-terminated string that outlives the call; a null base asks
        // for a new object, which the caller owns (freed in drop).
        let locale =
            unsafe { libc::newlocale(libc::LC_ALL_MASK, name.as_ptr(), std::ptr::null_mut()) };
        // Not `then_some`: a `Locale` built eagerly around null would be dropped (freed).
        if locale.is_null() {
            None
        } else {
            Some(Self(locale))
        }
    }

    /// Whether its character set is UTF-8 (gnulib `locale_charset`, compared as gnulib's
    /// `quotearg` does).
    pub(crate) fn is_utf8(&self) -> bool {
        // SAFETY: `self.0` is a valid locale (invariant); the returned string belongs to it
        // and is copied into the comparison before the locale can be freed.
        let codeset = unsafe { libc::nl_langinfo_l(libc::CODESET, self.0) };
        if codeset.is_null() {
            return false;
        }
        // SAFETY: a non-null `nl_langinfo_l` result is a NUL-terminated string, valid while
        // the locale lives (it does, for this whole function).
        let codeset = unsafe { CStr::from_ptr(codeset) };
        codeset.to_bytes().eq_ignore_ascii_case(b"UTF-8")
    }

    /// `iswprint` in this locale.
    pub(crate) fn is_printable(&self, c: char) -> bool {
        // SAFETY: `self.0` is a valid locale (invariant); iswprint_l only reads it.
        unsafe { iswprint_l(u32::from(c), self.0) != 0 }
    }
}

impl Drop for Locale {
    fn drop(&mut self) {
        // SAFETY: `self.0` came from newlocale and is freed exactly once, here.
        unsafe { libc::freelocale(self.0) };
    }
}

/// Where each signal's handler writes: the write end of a listening set's pipe, or -1.
static SIGNAL_PIPES: [std::sync::atomic::AtomicI32; 65] =
    [const { std::sync::atomic::AtomicI32::new(-1) }; 65];

/// The handler of every signal a [`SignalSet`](super::signal_set::SignalSet) listens to:
/// writes the signal's number (one byte) to its set's pipe, without blocking (a full pipe
/// drops it: hundreds are already waiting to be read), and keeps `errno` as it found it.
/// Only async-signal-safe calls.
extern "C" fn on_signal(sig: c_int) {
    let Some(slot) = usize::try_from(sig).ok().and_then(|i| SIGNAL_PIPES.get(i)) else {
        return;
    };
    let fd = slot.load(Ordering::Acquire);
    if fd < 0 {
        return;
    }
    let byte = u8::try_from(sig).unwrap_or(0);
    // SAFETY: errno is this thread's; it is read and put back around one write(2) of a byte
    // from a local to a descriptor that is never closed once stored (see `deliver_to`).
    unsafe {
        let errno = errno_location();
        let saved = *errno;
        libc::write(fd, std::ptr::from_ref(&byte).cast(), 1);
        *errno = saved;
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
unsafe fn errno_location() -> *mut c_int {
    // SAFETY: returns this thread's errno slot; no preconditions.
    unsafe { libc::__errno_location() }
}

#[cfg(target_vendor = "apple")]
unsafe fn errno_location() -> *mut c_int {
    // SAFETY: returns this thread's errno slot; no preconditions.
    unsafe { libc::__error() }
}

/// A non-blocking, close-on-exec pipe for a signal set: (read end, write end).
pub(crate) fn signal_pipe() -> std::io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    let (read, write) = nix::unistd::pipe()?;
    for fd in [&read, &write] {
        nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )?;
        nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )?;
    }
    Ok((read, write))
}

/// From now on `sig` is written to `write` (a [`signal_pipe`]'s write end, which must stay
/// open for the rest of the process: a handler may be writing to it at any moment) and its
/// disposition is warden's handler (an inherited `SIG_IGN` included), for the rest of the
/// process's life. Refuses what cannot or must not be caught: 0, KILL, STOP, and the
/// synchronous faults ILL, FPE and SEGV (as tokio does).
///
/// # Errors
/// `EINVAL` for those, and whatever `sigaction` says (glibc refuses its own 32 and 33).
pub(crate) fn deliver_to(sig: c_int, write: std::os::fd::RawFd) -> std::io::Result<()> {
    let refused = [
        0,
        libc::SIGKILL,
        libc::SIGSTOP,
        libc::SIGILL,
        libc::SIGFPE,
        libc::SIGSEGV,
    ];
    let slot = usize::try_from(sig)
        .ok()
        .and_then(|i| SIGNAL_PIPES.get(i))
        .filter(|_| !refused.contains(&sig))
        .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    slot.store(write, Ordering::Release);
    // SAFETY: a zeroed sigaction is valid; the handler is an `extern "C" fn(c_int)` that makes
    // only async-signal-safe calls; the mask is emptied before use.
    let rc = unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_signal as extern "C" fn(c_int) as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(sig, &action, std::ptr::null_mut())
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Registers `fd` (non-blocking) with the current runtime's reactor for reading alone.
///
/// # Errors
/// The registration's (`epoll_ctl`); `fd` is closed then.
///
/// # Panics
/// Outside a tokio runtime with I/O enabled.
pub(crate) fn register_readable(
    fd: std::os::fd::OwnedFd,
) -> std::io::Result<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
    // SAFETY: an OwnedFd owns its descriptor, open and the same for its whole life; the
    // AsyncFd owns it from here until it is dropped.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(std::io::Error::from)
}
