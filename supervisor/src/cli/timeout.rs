//! Arguments of `warden timeout`, a drop-in for GNU coreutils `timeout`.
//!
//! `warden timeout [OPTION]... DURATION COMMAND [ARG]...` accepts what GNU
//! `timeout` 9.1 accepts, means the same by it, and rejects the rest with the
//! same message (under warden's program name) and status 125. The reference is
//! glibc `getopt_long` with the option string `"+k:s:v"` plus `-f` and `-p`,
//! which newer coreutils accept too:
//!
//! - options stop at the first operand (DURATION), at `-` alone, or after
//!   `--`; everything after DURATION belongs to COMMAND, even `--help`;
//! - short options cluster (`-vs9`, `-vk1`); an option's value is the rest of
//!   the cluster or, if that is empty, the next argument (`-k 1`);
//! - long options take `--name=value` or `--name value`, and may be shortened
//!   to any unambiguous prefix (`--pre`, `--kill=1`); an exact name wins; an
//!   ambiguous prefix (`--ve`) lists the candidates in GNU's order;
//! - options act in order: `--help`/`--version` end parsing at once, and a bad
//!   `-k`/`-s` value is reported before anything after it is looked at;
//! - too few operands print only the `Try ...` line, exactly like GNU 9.1
//!   (which has no "missing operand" message for `timeout`).
//!
//! Why hand-written rather than clap: the contract here is getopt's exact
//! behaviour and text (the `+` ordering, prefix matching with GNU's
//! ambiguity list, `--=x`, option values taken from the next argument even
//! when it starts with `-`, the error wording). clap differs on several of
//! these, and bending it would take more code than this parser, which is
//! checked against the real `timeout` by the differential tests.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

use libc::c_int;

use super::duration::{Interval, InvalidDurationError, parse_duration};
use super::exit_status::EXIT_CANCELED;
use super::signals::{InvalidSignalError, parse_signal};

/// The name `warden timeout`'s diagnostics use unless the binary runs as `timeout`.
pub(crate) const PROGRAM: &str = "warden timeout";

static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Runs as a drop-in `timeout` from now on: messages, `--help` and `--version` name the
/// program `argv0`, the argv[0] it was started with, verbatim (GNU's `program_name`: `timeout`
/// through `PATH`, `/usr/local/bin/timeout` when run by path). Call before parsing; the first
/// call wins.
pub(crate) fn set_program_name(argv0: String) {
    let _ = NAME.set(argv0);
}

/// The name this command's messages use: [`PROGRAM`], or argv[0] when installed as `timeout`.
pub(crate) fn program_name() -> &'static str {
    NAME.get().map_or(PROGRAM, String::as_str)
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// Run COMMAND under a timeout.
    Run(Invocation),
    /// Print [`help_text`] to stdout and exit 0.
    Help,
    /// Print [`version_text`] to stdout and exit 0.
    Version,
}

/// A command to run under a timeout, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Invocation {
    /// When to send [`signal`](Self::signal) (the DURATION operand).
    pub(crate) duration: Interval,
    /// How long after the first signal to send `SIGKILL` (`-k`); disabled by
    /// default.
    pub(crate) kill_after: Interval,
    /// The signal sent on timeout (`-s`); `SIGTERM` by default. May be 0
    /// (GNU accepts `-s 0`), which delivers nothing.
    pub(crate) signal: c_int,
    /// `-f`/`--foreground`: leave COMMAND in warden's process group and
    /// signal only COMMAND itself.
    pub(crate) foreground: bool,
    /// `-p`/`--preserve-status`: exit with COMMAND's status even on timeout.
    pub(crate) preserve_status: bool,
    /// `-v`/`--verbose`: report each signal sent on stderr.
    pub(crate) verbose: bool,
    /// The program to run, looked up in `PATH` like `execvp`.
    pub(crate) command: OsString,
    /// Its arguments, after the program name.
    pub(crate) args: Vec<OsString>,
}

/// A command line GNU `timeout` would reject; warden exits with
/// [`UsageError::exit_status`] after writing [`UsageError::render`] to stderr.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum UsageError {
    /// A short option that does not exist (`-x`). Holds the byte.
    #[error("invalid option -- '{}'", String::from_utf8_lossy(&[*.0]))]
    InvalidOption(u8),
    /// A short option that needs a value, last on the line (`-k`).
    #[error("option requires an argument -- '{}'", String::from_utf8_lossy(&[*.0]))]
    MissingShortArgument(u8),
    /// A long option that matches nothing. Holds the whole argument.
    #[error("unrecognized option '{}'", .0.to_string_lossy())]
    UnrecognizedOption(OsString),
    /// A long option prefix that matches several options.
    #[error(
        "option '{}' is ambiguous; possibilities:{}",
        .argument.to_string_lossy(),
        candidates_text(.candidates)
    )]
    AmbiguousOption {
        /// The whole argument, `=value` included.
        argument: OsString,
        /// The matching option names, without `--`, in GNU's order.
        candidates: Vec<&'static str>,
    },
    /// `--name=value` for an option that takes no value.
    #[error("option '--{0}' doesn't allow an argument")]
    UnexpectedArgument(&'static str),
    /// A long option that needs a value, last on the line.
    #[error("option '--{0}' requires an argument")]
    MissingLongArgument(&'static str),
    /// A bad DURATION or `--kill-after` value.
    #[error(transparent)]
    InvalidDuration(#[from] InvalidDurationError),
    /// A bad `--signal` value.
    #[error(transparent)]
    InvalidSignal(#[from] InvalidSignalError),
    /// Fewer than two operands (DURATION and COMMAND).
    #[error("missing operand")]
    MissingOperand,
}

impl UsageError {
    /// The status to exit with: 125, as for any failure of warden itself.
    pub(crate) fn exit_status(&self) -> u8 {
        EXIT_CANCELED
    }

    /// Exactly what to write to stderr, GNU's text with `program` as the
    /// program name: `"{program}: {message}\n"` (raw argument bytes kept as
    /// given), then `"Try '{program} --help' for more information.\n"`. For
    /// [`UsageError::MissingOperand`] only the second line, as GNU 9.1.
    pub(crate) fn render(&self, program: &str) -> Vec<u8> {
        let mut out = Vec::new();
        let diagnostic = match self {
            UsageError::MissingOperand => None,
            UsageError::InvalidOption(byte) => {
                Some([b"invalid option -- '".as_slice(), &[*byte], b"'"].concat())
            }
            UsageError::MissingShortArgument(byte) => Some(
                [
                    b"option requires an argument -- '".as_slice(),
                    &[*byte],
                    b"'",
                ]
                .concat(),
            ),
            UsageError::UnrecognizedOption(argument) => {
                Some([b"unrecognized option '", argument.as_bytes(), b"'"].concat())
            }
            UsageError::AmbiguousOption {
                argument,
                candidates,
            } => Some(
                [
                    b"option '",
                    argument.as_bytes(),
                    b"' is ambiguous; possibilities:",
                    candidates_text(candidates).as_bytes(),
                ]
                .concat(),
            ),
            other => Some(other.to_string().into_bytes()),
        };
        if let Some(diagnostic) = diagnostic {
            out.extend_from_slice(program.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(&diagnostic);
            out.push(b'\n');
        }
        out.extend_from_slice(format!("Try '{program} --help' for more information.\n").as_bytes());
        out
    }
}

fn candidates_text(candidates: &[&str]) -> String {
    candidates
        .iter()
        .map(|name| format!(" '--{name}'"))
        .collect()
}

/// Options that take no value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flag {
    Foreground,
    PreserveStatus,
    Verbose,
    Help,
    Version,
}

/// Options that need a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Valued {
    KillAfter,
    Signal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OptionKind {
    Flag(Flag),
    Valued(Valued),
}

struct LongOption {
    name: &'static str,
    kind: OptionKind,
}

/// GNU 9.1's order, which is the order of an ambiguity list.
const LONG_OPTIONS: &[LongOption] = &[
    LongOption {
        name: "kill-after",
        kind: OptionKind::Valued(Valued::KillAfter),
    },
    LongOption {
        name: "signal",
        kind: OptionKind::Valued(Valued::Signal),
    },
    LongOption {
        name: "verbose",
        kind: OptionKind::Flag(Flag::Verbose),
    },
    LongOption {
        name: "foreground",
        kind: OptionKind::Flag(Flag::Foreground),
    },
    LongOption {
        name: "preserve-status",
        kind: OptionKind::Flag(Flag::PreserveStatus),
    },
    LongOption {
        name: "help",
        kind: OptionKind::Flag(Flag::Help),
    },
    LongOption {
        name: "version",
        kind: OptionKind::Flag(Flag::Version),
    },
];

fn short_option(byte: u8) -> Option<OptionKind> {
    match byte {
        b'f' => Some(OptionKind::Flag(Flag::Foreground)),
        b'k' => Some(OptionKind::Valued(Valued::KillAfter)),
        b'p' => Some(OptionKind::Flag(Flag::PreserveStatus)),
        b's' => Some(OptionKind::Valued(Valued::Signal)),
        b'v' => Some(OptionKind::Flag(Flag::Verbose)),
        _ => None,
    }
}

/// getopt's long option lookup: an exact name, else the only option the name
/// is a prefix of.
fn find_long_option(argument: &OsStr, name: &[u8]) -> Result<&'static LongOption, UsageError> {
    if let Some(exact) = LONG_OPTIONS.iter().find(|o| o.name.as_bytes() == name) {
        return Ok(exact);
    }
    let matches: Vec<&'static LongOption> = LONG_OPTIONS
        .iter()
        .filter(|o| o.name.as_bytes().starts_with(name))
        .collect();
    match matches.as_slice() {
        [] => Err(UsageError::UnrecognizedOption(argument.to_owned())),
        [only] => Ok(only),
        several => Err(UsageError::AmbiguousOption {
            argument: argument.to_owned(),
            candidates: several.iter().map(|o| o.name).collect(),
        }),
    }
}

/// Option values gathered so far.
struct Options {
    kill_after: Interval,
    signal: c_int,
    foreground: bool,
    preserve_status: bool,
    verbose: bool,
}

impl Options {
    /// Applies a flag; `Some` when the flag ends parsing (help, version).
    fn apply_flag(&mut self, flag: Flag) -> Option<Parsed> {
        match flag {
            Flag::Foreground => self.foreground = true,
            Flag::PreserveStatus => self.preserve_status = true,
            Flag::Verbose => self.verbose = true,
            Flag::Help => return Some(Parsed::Help),
            Flag::Version => return Some(Parsed::Version),
        }
        None
    }

    fn apply_value(&mut self, option: Valued, value: &OsStr) -> Result<(), UsageError> {
        match option {
            Valued::KillAfter => self.kill_after = parse_duration(value)?,
            Valued::Signal => self.signal = parse_signal(value)?,
        }
        Ok(())
    }
}

/// Parses the arguments that follow `warden timeout` (not including the
/// program name or the `timeout` subcommand), with GNU `timeout`'s rules; see
/// the module docs.
pub(crate) fn parse(args: &[OsString]) -> Result<Parsed, UsageError> {
    let mut options = Options {
        kill_after: Interval::Disabled,
        signal: libc::SIGTERM,
        foreground: false,
        preserve_status: false,
        verbose: false,
    };
    let mut index = 0;
    while let Some(argument) = args.get(index) {
        let bytes = argument.as_bytes();
        if bytes == b"--" {
            index += 1;
            break;
        }
        if bytes.len() < 2 || bytes[0] != b'-' {
            break; // the first operand ends the options ("+" ordering)
        }
        index += 1;
        if let Some(body) = bytes.strip_prefix(b"--") {
            let (name, inline_value) = match body.iter().position(|&b| b == b'=') {
                Some(eq) => (&body[..eq], Some(OsStr::from_bytes(&body[eq + 1..]))),
                None => (body, None),
            };
            let option = find_long_option(argument, name)?;
            match (option.kind, inline_value) {
                (OptionKind::Flag(_), Some(_)) => {
                    return Err(UsageError::UnexpectedArgument(option.name));
                }
                (OptionKind::Flag(flag), None) => {
                    if let Some(done) = options.apply_flag(flag) {
                        return Ok(done);
                    }
                }
                (OptionKind::Valued(valued), Some(value)) => options.apply_value(valued, value)?,
                (OptionKind::Valued(valued), None) => {
                    let value = args
                        .get(index)
                        .ok_or(UsageError::MissingLongArgument(option.name))?;
                    index += 1;
                    options.apply_value(valued, value)?;
                }
            }
            continue;
        }
        // A cluster of short options after the '-'.
        let mut position = 1;
        while let Some(&byte) = bytes.get(position) {
            position += 1;
            match short_option(byte).ok_or(UsageError::InvalidOption(byte))? {
                OptionKind::Flag(flag) => {
                    if let Some(done) = options.apply_flag(flag) {
                        return Ok(done);
                    }
                }
                OptionKind::Valued(valued) => {
                    let value = if position < bytes.len() {
                        OsStr::from_bytes(&bytes[position..])
                    } else {
                        let next = args
                            .get(index)
                            .ok_or(UsageError::MissingShortArgument(byte))?;
                        index += 1;
                        next.as_os_str()
                    };
                    options.apply_value(valued, value)?;
                    break;
                }
            }
        }
    }
    let [duration, command, rest @ ..] = &args[index..] else {
        return Err(UsageError::MissingOperand);
    };
    Ok(Parsed::Run(Invocation {
        duration: parse_duration(duration)?,
        kill_after: options.kill_after,
        signal: options.signal,
        foreground: options.foreground,
        preserve_status: options.preserve_status,
        verbose: options.verbose,
        command: command.clone(),
        args: rest.to_vec(),
    }))
}

/// The `--help` text: GNU's, with warden's name, the `-f`/`-p` short forms
/// and a note that warden signals the whole process tree.
pub(crate) fn help_text() -> String {
    let program = program_name();
    format!(
        "\
Usage: {program} [OPTION] DURATION COMMAND [ARG]...
  or:  {program} [OPTION]
Start COMMAND, and kill it if still running after DURATION.

Mandatory arguments to long options are mandatory for short options too.
  -f, --foreground
                 when not running timeout directly from a shell prompt,
                   allow COMMAND to read from the TTY and get TTY signals;
                   in this mode, children of COMMAND will not be timed out
  -k, --kill-after=DURATION
                 also send a KILL signal if COMMAND is still running
                   this long after the initial signal was sent
  -p, --preserve-status
                 exit with the same status as COMMAND, even when the
                   command times out
  -s, --signal=SIGNAL
                 specify the signal to be sent on timeout;
                   SIGNAL may be a name like 'HUP' or a number;
                   see 'kill -l' for a list of signals
  -v, --verbose  diagnose to stderr any signal sent upon timeout
      --help        display this help and exit
      --version     output version information and exit

DURATION is a floating point number with an optional suffix:
's' for seconds (the default), 'm' for minutes, 'h' for hours or 'd' for days.
A duration of 0 disables the associated timeout.

Upon timeout, send the TERM signal to COMMAND, if no other SIGNAL specified.
The TERM signal kills any process that does not block or catch that signal.
It may be necessary to use the KILL signal, since this signal can't be caught.
Unlike GNU timeout, warden sends these signals to the whole process tree of
COMMAND, not only to its process group (except with --foreground), and no
descendant of COMMAND is left running when it exits.

Every terminating signal warden receives (INT, QUIT, HUP, TERM, PIPE, USR1,
USR2, ...), unless it was ignored when warden started, is forwarded to COMMAND
as current GNU timeout does, and ALRM counts as the timeout. A second INT or
TERM kills the whole tree at once (exit status 137); a third makes warden exit
at once (128 + the signal). The containment comes from $WARDEN_CONTAINMENT:
auto (the default), cgroup, subreaper or process-group.

Exit status:
  124  if COMMAND times out, and --preserve-status is not specified
  125  if warden itself fails
  126  if COMMAND is found but cannot be invoked
  127  if COMMAND cannot be found
  137  if COMMAND (or warden itself) is sent the KILL (9) signal (128+9)
  -    the exit status of COMMAND otherwise
"
    )
}

/// The `--version` text.
pub(crate) fn version_text() -> String {
    format!(
        "{} (warden) {}\n",
        program_name(),
        env!("CARGO_PKG_VERSION")
    )
}

#[cfg(test)]
mod tests {
    use std::os::unix::ffi::OsStringExt;

    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    fn run(list: &[&str]) -> Invocation {
        match parse(&args(list)) {
            Ok(Parsed::Run(invocation)) => invocation,
            other => panic!("{list:?}: {other:?}"),
        }
    }

    fn error(list: &[&str]) -> UsageError {
        match parse(&args(list)) {
            Err(error) => error,
            Ok(parsed) => panic!("{list:?} was accepted: {parsed:?}"),
        }
    }

    fn rendered(list: &[&str]) -> String {
        String::from_utf8(error(list).render(PROGRAM)).unwrap()
    }

    /// `n` seconds as parsed (upstream rounds every duration up, by a nanosecond here).
    fn secs(n: u64) -> Interval {
        parse_duration(OsStr::new(&n.to_string())).unwrap()
    }

    #[test]
    fn defaults() {
        let invocation = run(&["5", "sleep", "10", "-v"]);
        assert_eq!(
            invocation,
            Invocation {
                duration: secs(5),
                kill_after: Interval::Disabled,
                signal: libc::SIGTERM,
                foreground: false,
                preserve_status: false,
                verbose: false,
                command: "sleep".into(),
                args: args(&["10", "-v"]),
            }
        );
    }

    #[test]
    fn every_option_in_short_and_long_form() {
        let short = run(&["-f", "-k", "2", "-p", "-s", "HUP", "-v", "1m", "cmd"]);
        let long = run(&[
            "--foreground",
            "--kill-after=2",
            "--preserve-status",
            "--signal",
            "HUP",
            "--verbose",
            "1m",
            "cmd",
        ]);
        assert_eq!(short, long);
        assert!(short.foreground && short.preserve_status && short.verbose);
        assert_eq!(short.kill_after, secs(2));
        assert_eq!(short.signal, libc::SIGHUP);
        assert_eq!(short.duration, secs(60));
    }

    #[test]
    fn clustered_short_options() {
        let invocation = run(&["-vs9", "-pk1", "5", "cmd"]);
        assert!(invocation.verbose && invocation.preserve_status);
        assert_eq!(invocation.signal, libc::SIGKILL);
        assert_eq!(invocation.kill_after, secs(1));
        // The value of -k is the rest of the cluster, whatever it is.
        assert_eq!(
            rendered(&["-kv", "5", "cmd"]),
            "warden timeout: invalid time interval 'v'\n\
             Try 'warden timeout --help' for more information.\n"
        );
        // An option value may start with '-'.
        assert_eq!(
            error(&["-k", "-1", "5", "cmd"]).to_string(),
            "invalid time interval '-1'"
        );
    }

    #[test]
    fn long_option_prefixes() {
        let invocation = run(&[
            "--pre",
            "--fore",
            "--kill=3",
            "--sig=INT",
            "--verb",
            "5",
            "c",
        ]);
        assert!(invocation.preserve_status && invocation.foreground && invocation.verbose);
        assert_eq!(invocation.kill_after, secs(3));
        assert_eq!(invocation.signal, libc::SIGINT);
        assert_eq!(parse(&args(&["--h"])), Ok(Parsed::Help));
        assert_eq!(parse(&args(&["--vers"])), Ok(Parsed::Version));
        assert_eq!(
            error(&["--ve", "5", "c"]),
            UsageError::AmbiguousOption {
                argument: "--ve".into(),
                candidates: vec!["verbose", "version"],
            }
        );
        assert_eq!(
            rendered(&["--v"]),
            "warden timeout: option '--v' is ambiguous; possibilities: '--verbose' '--version'\n\
             Try 'warden timeout --help' for more information.\n"
        );
        // An empty name is a prefix of every option.
        match error(&["--=x"]) {
            UsageError::AmbiguousOption { candidates, .. } => {
                assert_eq!(candidates.len(), LONG_OPTIONS.len());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn long_option_errors() {
        assert_eq!(
            error(&["--foo=bar", "5", "c"]),
            UsageError::UnrecognizedOption("--foo=bar".into())
        );
        assert_eq!(
            error(&["--verbose=1", "5", "c"]),
            UsageError::UnexpectedArgument("verbose")
        );
        assert_eq!(
            error(&["--verb=1", "5", "c"]).to_string(),
            "option '--verbose' doesn't allow an argument"
        );
        assert_eq!(
            error(&["--kill"]),
            UsageError::MissingLongArgument("kill-after")
        );
        assert_eq!(error(&["--kill="]).to_string(), "invalid time interval ''");
    }

    #[test]
    fn short_option_errors() {
        assert_eq!(error(&["-x", "5", "c"]), UsageError::InvalidOption(b'x'));
        assert_eq!(error(&["-1", "c"]), UsageError::InvalidOption(b'1'));
        assert_eq!(error(&["-h"]), UsageError::InvalidOption(b'h'));
        assert_eq!(error(&["-vk"]), UsageError::MissingShortArgument(b'k'));
        assert_eq!(
            rendered(&["-s"]),
            "warden timeout: option requires an argument -- 's'\n\
             Try 'warden timeout --help' for more information.\n"
        );
        assert_eq!(
            rendered(&["-s", "bogus", "5", "c"]),
            "warden timeout: 'bogus': invalid signal\n\
             Try 'warden timeout --help' for more information.\n"
        );
    }

    #[test]
    fn raw_bytes_are_echoed_as_given() {
        let arg = OsString::from_vec(b"-\xc3\xa9".to_vec());
        let error = parse(&[arg, "5".into(), "c".into()]).unwrap_err();
        assert_eq!(error, UsageError::InvalidOption(0xc3));
        assert_eq!(
            error.render("t"),
            b"t: invalid option -- '\xc3'\nTry 't --help' for more information.\n"
        );
        let arg = OsString::from_vec(b"--\xff".to_vec());
        let error = parse(&[arg]).unwrap_err();
        assert_eq!(
            error.render("t"),
            b"t: unrecognized option '--\xff'\nTry 't --help' for more information.\n"
        );
    }

    #[test]
    fn options_stop_at_the_first_operand_or_double_dash() {
        let invocation = run(&["5", "--help"]);
        assert_eq!(invocation.command, "--help");
        let invocation = run(&["--", "5", "-v"]);
        assert_eq!(invocation.command, "-v");
        assert!(!invocation.verbose);
        let invocation = run(&["5", "--", "x"]);
        assert_eq!(invocation.command, "--");
        assert_eq!(invocation.args, args(&["x"]));
        // '-' alone is an operand, here a bad DURATION.
        assert_eq!(error(&["-", "c"]).to_string(), "invalid time interval '-'");
        assert_eq!(
            error(&["--", "--", "c"]).to_string(),
            "invalid time interval '--'"
        );
        assert_eq!(run(&["--", "-0", "c"]).duration, Interval::Disabled);
    }

    #[test]
    fn options_act_in_order() {
        assert_eq!(parse(&args(&["--help", "-x"])), Ok(Parsed::Help));
        assert_eq!(
            parse(&args(&["-v", "--version", "bad"])),
            Ok(Parsed::Version)
        );
        assert_eq!(error(&["-x", "--help"]), UsageError::InvalidOption(b'x'));
        assert_eq!(
            error(&["-k", "x", "--help"]).to_string(),
            "invalid time interval 'x'"
        );
        // The last value wins; a bad one fails even after a good one.
        assert_eq!(
            run(&["-s", "HUP", "-s", "INT", "5", "c"]).signal,
            libc::SIGINT
        );
        assert!(parse(&args(&["-k", "1", "-k", "x", "5", "c"])).is_err());
    }

    #[test]
    fn missing_operands_print_only_the_try_line() {
        for list in [&[][..], &["5"], &["x"], &["-v", "5"], &["--", "5"]] {
            assert_eq!(error(list), UsageError::MissingOperand, "{list:?}");
        }
        assert_eq!(
            rendered(&["5"]),
            "Try 'warden timeout --help' for more information.\n"
        );
        // DURATION is only checked once there is a COMMAND.
        assert_eq!(error(&["x", "c"]).to_string(), "invalid time interval 'x'");
    }

    #[test]
    fn signal_zero_and_shell_statuses() {
        assert_eq!(run(&["-s", "0", "5", "c"]).signal, 0);
        assert_eq!(run(&["-s", "143", "5", "c"]).signal, libc::SIGTERM);
        assert_eq!(run(&["-s", "sigkill", "5", "c"]).signal, libc::SIGKILL);
    }

    #[test]
    fn usage_errors_exit_125() {
        assert_eq!(error(&[]).exit_status(), 125);
        assert_eq!(error(&["-x"]).exit_status(), 125);
    }

    #[test]
    fn help_and_version_texts() {
        let help = help_text();
        assert!(help.starts_with("Usage: warden timeout [OPTION] DURATION COMMAND [ARG]...\n"));
        for option in LONG_OPTIONS {
            assert!(
                help.contains(&format!("--{}", option.name)),
                "{}",
                option.name
            );
        }
        for short in ["-f, ", "-k, ", "-p, ", "-s, ", "-v, "] {
            assert!(help.contains(short), "{short}");
        }
        assert!(help.contains("whole process tree"));
        assert!(version_text().starts_with("warden timeout (warden) "));
        assert!(version_text().ends_with('\n'));
    }
}
