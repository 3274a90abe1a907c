//! Signal names and numbers, with GNU coreutils' rules (`operand2sig`,
//! gnulib `str2sig`/`sig2str`).
//!
//! Used by `warden timeout --signal` and `warden run --signal`, so that a
//! signal operand that GNU `timeout`/`kill` accept means the same here.
//!
//! # Accepted operands ([`parse_signal`])
//! - A name in any ASCII case, with or without a `SIG` prefix: `HUP`,
//!   `sigterm`, `Kill`. Aliases are accepted (`IOT`, `CLD`, `POLL`, `IO`).
//! - `RTMIN`, `RTMIN+n`, `RTMAX`, `RTMAX-n` inside the platform's real-time
//!   range (on glibc `RTMIN` is 34: glibc reserves 32 and 33).
//! - A decimal number, starting with a digit. Like a shell status, a number
//!   from 128 to 254 means `n - 128` (`143` is TERM); from 255 on, only its
//!   low 8 bits count (ksh reports 256 + N), so 255 is invalid and 271 is TERM.
//! - `0`, `EXIT`, `SIGEXIT` or `128`: signal 0, which GNU calls `EXIT`. It is
//!   accepted because GNU accepts it; sending it delivers nothing.
//! - Quirks kept for compatibility: `SIG15` (a number after `SIG`),
//!   `RTMIN 3` (`strtol` skips blanks), `RTMIN-0`, `RTMAX+0`.
//!
//! # Platform
//! The name table follows gnulib's order, so the first name listed for a
//! number is the one printed (`ABRT` not `IOT`, `CHLD` not `CLD`, `POLL` not
//! `IO`). It has the Linux set; other Unix systems get the POSIX and common
//! BSD names only, without real-time signals.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

use libc::c_int;

use super::c_locale::{is_space, quote};

/// Names and numbers in gnulib's preference order; `sig2str` takes the first
/// name listed for a number.
const NAMES: &[(&str, c_int)] = &[
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("ILL", libc::SIGILL),
    ("TRAP", libc::SIGTRAP),
    ("ABRT", libc::SIGABRT),
    ("FPE", libc::SIGFPE),
    ("KILL", libc::SIGKILL),
    ("SEGV", libc::SIGSEGV),
    ("BUS", libc::SIGBUS),
    ("PIPE", libc::SIGPIPE),
    ("ALRM", libc::SIGALRM),
    ("TERM", libc::SIGTERM),
    ("USR1", libc::SIGUSR1),
    ("USR2", libc::SIGUSR2),
    ("CHLD", libc::SIGCHLD),
    ("URG", libc::SIGURG),
    ("STOP", libc::SIGSTOP),
    ("TSTP", libc::SIGTSTP),
    ("CONT", libc::SIGCONT),
    ("TTIN", libc::SIGTTIN),
    ("TTOU", libc::SIGTTOU),
    ("SYS", libc::SIGSYS),
    #[cfg(any(target_os = "linux", target_os = "android"))]
    ("POLL", libc::SIGPOLL),
    ("VTALRM", libc::SIGVTALRM),
    ("PROF", libc::SIGPROF),
    ("XCPU", libc::SIGXCPU),
    ("XFSZ", libc::SIGXFSZ),
    ("IOT", libc::SIGIOT),
    // glibc defines SIGCLD as SIGCHLD; the libc crate does not export it.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    ("CLD", libc::SIGCHLD),
    #[cfg(any(target_os = "linux", target_os = "android"))]
    ("PWR", libc::SIGPWR),
    ("WINCH", libc::SIGWINCH),
    ("IO", libc::SIGIO),
    #[cfg(all(
        any(target_os = "linux", target_os = "android"),
        not(any(
            target_arch = "mips",
            target_arch = "mips32r6",
            target_arch = "mips64",
            target_arch = "mips64r6",
            target_arch = "sparc",
            target_arch = "sparc64"
        ))
    ))]
    ("STKFLT", libc::SIGSTKFLT),
    // Korn shell and Bash name for 0.
    ("EXIT", 0),
];

/// A `--signal` operand that names no signal of this platform.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: invalid signal", quote(.operand.as_bytes()))]
pub(crate) struct InvalidSignalError {
    /// The operand as given.
    pub(crate) operand: OsString,
}

/// Converts a signal operand (name or number) to a signal number, as GNU's
/// `operand2sig`; see the module docs for what is accepted.
///
/// The result is 0 or a signal that [`canonical_name`] can name.
pub(crate) fn parse_signal(operand: &OsStr) -> Result<c_int, InvalidSignalError> {
    let bytes = operand.as_bytes();
    let number = if bytes.first().is_some_and(u8::is_ascii_digit) {
        parse_status_number(bytes)
    } else {
        let upper = bytes.to_ascii_uppercase();
        str2signum(&upper).or_else(|| upper.strip_prefix(b"SIG").and_then(str2signum))
    };
    match number {
        Some(signal) if canonical_name(signal).is_some() => Ok(signal),
        _ => Err(InvalidSignalError {
            operand: operand.to_owned(),
        }),
    }
}

/// The preferred name of `signal` without the `SIG` prefix (`"TERM"`,
/// `"RTMIN+3"`, `"EXIT"` for 0), or `None` if this platform has no such
/// signal. Mirrors gnulib's `sig2str`.
pub(crate) fn canonical_name(signal: c_int) -> Option<String> {
    if let Some((name, _)) = NAMES.iter().find(|&&(_, number)| number == signal) {
        return Some((*name).to_owned());
    }
    let (min, max) = realtime_range()?;
    if !(min..=max).contains(&signal) {
        return None;
    }
    Some(if signal <= min + (max - min) / 2 {
        match signal - min {
            0 => "RTMIN".to_owned(),
            delta => format!("RTMIN+{delta}"),
        }
    } else {
        match max - signal {
            0 => "RTMAX".to_owned(),
            delta => format!("RTMAX-{delta}"),
        }
    })
}

/// The name GNU `timeout -v` prints for `signal`: [`canonical_name`], or the
/// decimal number when the signal has no name.
pub(crate) fn signal_name(signal: c_int) -> String {
    canonical_name(signal).unwrap_or_else(|| signal.to_string())
}

/// `operand2sig`'s numeric branch: the whole operand is a decimal `int`,
/// folded like a shell exit status.
fn parse_status_number(digits: &[u8]) -> Option<c_int> {
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut value: c_int = 0;
    for &digit in digits {
        value = value
            .checked_mul(10)?
            .checked_add(c_int::from(digit - b'0'))?;
    }
    // A shell reports death by signal N as 128 + N (ksh: 256 + N).
    Some(value & if value >= 0xff { 0xff } else { 0x7f })
}

/// gnulib's `str2signum` on an already upper-cased name. It does not check
/// that the number is a signal: [`parse_signal`] does that for every branch.
fn str2signum(name: &[u8]) -> Option<c_int> {
    if name.first().is_some_and(u8::is_ascii_digit) {
        // `strtol` saturates; anything that large is no signal anyway.
        let value = c_strtol_whole(name)?;
        return c_int::try_from(value).ok();
    }
    if let Some(&(_, number)) = NAMES.iter().find(|&&(n, _)| n.as_bytes() == name) {
        return Some(number);
    }
    let (min, max) = realtime_range()?;
    if let Some(rest) = name.strip_prefix(b"RTMIN") {
        let offset = c_int::try_from(c_strtol_whole(rest)?).ok()?;
        (0..=max - min).contains(&offset).then_some(min + offset)
    } else if let Some(rest) = name.strip_prefix(b"RTMAX") {
        let offset = c_int::try_from(c_strtol_whole(rest)?).ok()?;
        (min - max..=0).contains(&offset).then_some(max + offset)
    } else {
        None
    }
}

/// `strtol(s, &end, 10)` that must consume all of `s`: leading C-locale
/// blanks, an optional sign, then digits; the empty string is 0 (as `strtol`
/// with nothing to convert leaves `end` at the terminating NUL). Saturates
/// like `strtol` on overflow.
fn c_strtol_whole(s: &[u8]) -> Option<i64> {
    if s.is_empty() {
        return Some(0);
    }
    let blanks = s.iter().take_while(|&&b| is_space(b)).count();
    let rest = &s[blanks..];
    let (negative, digits) = match rest.first() {
        Some(b'-') => (true, &rest[1..]),
        Some(b'+') => (false, &rest[1..]),
        _ => (false, rest),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut value: i64 = 0;
    for &digit in digits {
        let digit = i64::from(digit - b'0');
        value = if negative {
            value.saturating_mul(10).saturating_sub(digit)
        } else {
            value.saturating_mul(10).saturating_add(digit)
        };
    }
    Some(value)
}

/// The real-time signal range, if the platform has one.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn realtime_range() -> Option<(c_int, c_int)> {
    let (min, max) = (libc::SIGRTMIN(), libc::SIGRTMAX());
    (0 < min && min <= max).then_some((min, max))
}

/// The real-time signal range, if the platform has one.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn realtime_range() -> Option<(c_int, c_int)> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<c_int, InvalidSignalError> {
        parse_signal(OsStr::new(s))
    }

    #[test]
    fn names_in_any_case_with_or_without_prefix() {
        for spelling in ["TERM", "term", "Term", "SIGTERM", "sigterm", "SigTerm"] {
            assert_eq!(parse(spelling), Ok(libc::SIGTERM), "{spelling}");
        }
        assert_eq!(parse("HUP"), Ok(libc::SIGHUP));
        assert_eq!(parse("Kill"), Ok(libc::SIGKILL));
        assert_eq!(parse("iot"), Ok(libc::SIGABRT));
        assert_eq!(parse("exit"), Ok(0));
        assert_eq!(parse("SIGEXIT"), Ok(0));
    }

    #[test]
    fn numbers_fold_like_shell_statuses() {
        assert_eq!(parse("9"), Ok(9));
        assert_eq!(parse("09"), Ok(9));
        assert_eq!(parse("0"), Ok(0));
        assert_eq!(parse("128"), Ok(0));
        assert_eq!(parse("143"), Ok(15));
        assert_eq!(parse("256"), Ok(0));
        assert_eq!(parse("271"), Ok(15));
        for invalid in [
            "255",
            "384",
            "127",
            "2147483647",
            "2147483648",
            "4294967311",
        ] {
            assert!(parse(invalid).is_err(), "{invalid}");
        }
    }

    #[test]
    fn numbers_must_be_plain_decimal() {
        for invalid in ["+9", " 9", "9 ", "9x", "-9", "0x9", ""] {
            assert!(parse(invalid).is_err(), "{invalid:?}");
        }
        // After a SIG prefix, gnulib's str2sig takes a number too.
        assert_eq!(parse("sig9"), Ok(9));
        assert_eq!(parse("SIG0"), Ok(0));
        assert!(parse("SIG").is_err());
        assert!(parse("SIG+9").is_err());
        assert!(parse("SIG9 ").is_err());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn realtime_names() {
        let (min, max) = (libc::SIGRTMIN(), libc::SIGRTMAX());
        assert_eq!(parse("RTMIN"), Ok(min));
        assert_eq!(parse("rtmin+2"), Ok(min + 2));
        assert_eq!(parse("SIGRTMIN+2"), Ok(min + 2));
        assert_eq!(parse("RTMIN 3"), Ok(min + 3));
        assert_eq!(parse("RTMIN-0"), Ok(min));
        assert_eq!(parse("RTMAX"), Ok(max));
        assert_eq!(parse("RTMAX+0"), Ok(max));
        assert_eq!(parse("RTMAX-1"), Ok(max - 1));
        assert_eq!(parse(&format!("RTMAX-{}", max - min)), Ok(min));
        assert_eq!(parse(&format!("RTMIN+{}", max - min)), Ok(max));
        for invalid in [
            format!("RTMIN+{}", max - min + 1),
            format!("RTMAX-{}", max - min + 1),
            "RTMIN+".to_owned(),
            "RTMIN ".to_owned(),
            "RTMIN-1".to_owned(),
            "RTMAX+1".to_owned(),
            "RTMIN+0x1".to_owned(),
            "RTMIN+99999999999999999999".to_owned(),
        ] {
            assert!(parse(&invalid).is_err(), "{invalid:?}");
        }
    }

    #[test]
    fn unknown_names_are_rejected_with_gnu_text() {
        let err = parse("bad").unwrap_err();
        assert_eq!(err.to_string(), "'bad': invalid signal");
        assert_eq!(
            parse("a'b").unwrap_err().to_string(),
            r"'a\'b': invalid signal"
        );
        assert!(parse("SIGSIGTERM").is_err());
    }

    #[test]
    fn non_signals_below_rtmin_are_rejected() {
        #[cfg(target_os = "linux")]
        for reserved in 32..libc::SIGRTMIN() {
            assert!(parse(&reserved.to_string()).is_err(), "{reserved}");
            assert_eq!(signal_name(reserved), reserved.to_string());
        }
        assert!(parse("65").is_err());
    }

    #[test]
    fn names_prefer_gnulib_order() {
        assert_eq!(signal_name(libc::SIGTERM), "TERM");
        assert_eq!(signal_name(libc::SIGKILL), "KILL");
        assert_eq!(signal_name(libc::SIGABRT), "ABRT");
        assert_eq!(signal_name(libc::SIGCHLD), "CHLD");
        assert_eq!(signal_name(0), "EXIT");
        assert_eq!(signal_name(-1), "-1");
        assert_eq!(signal_name(200), "200");
        #[cfg(target_os = "linux")]
        {
            assert_eq!(signal_name(libc::SIGIO), "POLL");
            assert_eq!(signal_name(libc::SIGRTMIN()), "RTMIN");
            assert_eq!(signal_name(libc::SIGRTMIN() + 3), "RTMIN+3");
            assert_eq!(signal_name(libc::SIGRTMAX()), "RTMAX");
            assert_eq!(signal_name(libc::SIGRTMAX() - 2), "RTMAX-2");
        }
    }

    #[test]
    fn every_name_round_trips() {
        for signal in 0..128 {
            if let Some(name) = canonical_name(signal) {
                assert_eq!(parse(&name), Ok(signal), "{name}");
                assert_eq!(parse(&format!("sig{name}")), Ok(signal), "{name}");
                assert_eq!(parse(&signal.to_string()), Ok(signal), "{signal}");
                assert_eq!(parse(&(signal + 128).to_string()), Ok(signal), "{signal}");
            } else {
                assert!(parse(&signal.to_string()).is_err(), "{signal}");
            }
        }
    }

    #[test]
    fn strtol_whole_matches_c() {
        assert_eq!(c_strtol_whole(b""), Some(0));
        assert_eq!(c_strtol_whole(b"+2"), Some(2));
        assert_eq!(c_strtol_whole(b" \t-2"), Some(-2));
        assert_eq!(c_strtol_whole(b"+"), None);
        assert_eq!(c_strtol_whole(b" "), None);
        assert_eq!(c_strtol_whole(b"2 "), None);
        assert_eq!(c_strtol_whole(b"99999999999999999999"), Some(i64::MAX));
        assert_eq!(c_strtol_whole(b"-99999999999999999999"), Some(i64::MIN));
    }
}
