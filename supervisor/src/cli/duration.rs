//! DURATION operands, with GNU `timeout`'s rules (`parse_duration` over
//! gnulib `xstrtod`/`cl_strtod`, then `dtotimespec`).
//!
//! # Grammar
//! What glibc `strtod` reads in the C locale, then at most one suffix byte:
//! - leading C-locale blanks, an optional `+` or `-`;
//! - a decimal number (`1`, `1.`, `.5`, `2.5e-3`; the exponent is only taken
//!   when digits follow the `e`), a hexadecimal float (`0x1p3`, `0x.8`,
//!   `0x1.8P1`; `0x1d` is 29, not one day), `inf`/`infinity` in any case;
//! - nothing more, or exactly one of `s`, `m`, `h`, `d` (lower case).
//!
//! Negative values and NaN are rejected; `-0` is accepted as 0. Overflow is
//! not an error: `1e400` is infinity.
//!
//! The decimal point is always `.`: warden does not follow `LC_NUMERIC` (GNU
//! tries the locale's point first, then `.`).
//!
//! # Rounding (upstream coreutils 9.7+, not 9.1)
//! A value is rounded *up*, as upstream's `parse_duration` does with gnulib's
//! `dtimespec_bound` (to the next representable double, and a number that
//! underflows to zero becomes the smallest positive one, keeping its sign),
//! then to the next nanosecond like `dtotimespec`. So any positive value, even
//! `1e-10` or `1e-10000`, arms a timer of at least 1 ns, `-1e-10000` is a
//! negative number (invalid), and only an exact zero (`0`, `-0`, `0x0p0`)
//! disables the timeout. GNU 9.1 took underflows as 0 (no timeout) and
//! accepted `-1e-400`; the differential tests mark those operands.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use super::c_locale::{is_space, quote};

/// At and beyond this length a timer is treated as [`Interval::Never`].
///
/// About 136 years: no process lives that long, every platform timer accepts
/// anything shorter, and `Instant + NEVER_THRESHOLD` cannot overflow. GNU's own
/// last-resort timer, `alarm()`, saturates at the same number of seconds.
pub(crate) const NEVER_THRESHOLD: Duration = Duration::from_secs(u32::MAX as u64);

/// A parsed DURATION: when a timer should fire, if ever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Interval {
    /// The value was 0: no timer at all ("a duration of 0 disables the
    /// associated timeout").
    Disabled,
    /// Fire after this long: at least 1 ns and less than [`NEVER_THRESHOLD`].
    After(Duration),
    /// A timer is armed in principle but is too long ever to fire
    /// (`inf`, `1e400`, `200y` worth of seconds): never fire.
    Never,
}

impl Interval {
    /// Classifies a number of seconds, rounding up to the next nanosecond as
    /// gnulib's `dtotimespec` does. `None` for a negative value or NaN, which
    /// [`parse_seconds`] never returns.
    pub(crate) fn from_seconds(seconds: f64) -> Option<Interval> {
        if seconds.is_nan() || seconds < 0.0 {
            return None;
        }
        if seconds == 0.0 {
            return Some(Interval::Disabled);
        }
        if seconds >= NEVER_THRESHOLD.as_secs_f64() {
            return Some(Interval::Never);
        }
        // The same steps as dtotimespec, in f64, so the result is identical.
        let whole = seconds.trunc();
        let fraction = 1e9 * (seconds - whole);
        let mut nanos = fraction.trunc();
        if nanos < fraction {
            nanos += 1.0;
        }
        // In range by the checks above: whole < 2^32, 0 <= nanos <= 1e9.
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "both values are non-negative integers checked to be in range"
        )]
        let (secs, nanos) = (whole as u64, nanos as u32);
        // Duration::new carries nanos == 1e9 into the seconds.
        Some(Interval::After(Duration::new(secs, nanos)))
    }
}

/// A DURATION operand that GNU `timeout` would reject.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid time interval {}", quote(.operand.as_bytes()))]
pub(crate) struct InvalidDurationError {
    /// The operand as given.
    pub(crate) operand: OsString,
}

/// Parses a DURATION operand (see the module docs) into an [`Interval`].
pub(crate) fn parse_duration(operand: &OsStr) -> Result<Interval, InvalidDurationError> {
    let seconds = parse_seconds(operand)?;
    Interval::from_seconds(seconds).ok_or_else(|| InvalidDurationError {
        operand: operand.to_owned(),
    })
}

/// Parses a DURATION operand into seconds exactly as GNU's `parse_duration`
/// does: the result is `>= 0` or `-0.0`, possibly infinite, never NaN.
pub(crate) fn parse_seconds(operand: &OsStr) -> Result<f64, InvalidDurationError> {
    let invalid = || InvalidDurationError {
        operand: operand.to_owned(),
    };
    let bytes = operand.as_bytes();
    let (value, used, underflow) = strtod(bytes).ok_or_else(invalid)?;
    let value = round_up(value, underflow);
    // GNU's `!(0 <= value)`: rejects negatives and NaN, keeps -0.0.
    if value.is_nan() || value < 0.0 {
        return Err(invalid());
    }
    let multiplier = match &bytes[used..] {
        b"" | b"s" => 1.0,
        b"m" => 60.0,
        b"h" => 60.0 * 60.0,
        b"d" => 60.0 * 60.0 * 24.0,
        _ => return Err(invalid()),
    };
    Ok(round_up(value * multiplier, false))
}

/// gnulib's `dtimespec_bound`: a bound on the true value that is not below it. A non-zero
/// finite value moves away from zero to the next double (about one part in 2^53); a value
/// that underflowed to zero (`underflow`, strtod's ERANGE) becomes the smallest subnormal of
/// the same sign; zero, infinities and NaN stay as they are.
fn round_up(value: f64, underflow: bool) -> f64 {
    if value == 0.0 && underflow {
        return f64::from_bits(1).copysign(value);
    }
    let phi = f64::EPSILON / 2.0 * (1.0 + f64::EPSILON);
    value + phi * value
}

/// glibc `strtod` in the C locale (round to nearest): the value of the longest
/// prefix of `s` that is a number, that prefix's length, and whether a non-zero
/// number underflowed to zero (where strtod sets ERANGE and returns 0); `None`
/// when no number starts `s`.
fn strtod(s: &[u8]) -> Option<(f64, usize, bool)> {
    let mut pos = s.iter().take_while(|&&b| is_space(b)).count();
    let negative = match s.get(pos) {
        Some(b'-') => {
            pos += 1;
            true
        }
        Some(b'+') => {
            pos += 1;
            false
        }
        _ => false,
    };
    let body = &s[pos..];
    let (magnitude, used) = if starts_with_ignore_case(body, b"inf") {
        let used = if starts_with_ignore_case(&body[3..], b"inity") {
            8
        } else {
            3
        };
        (f64::INFINITY, used)
    } else if starts_with_ignore_case(body, b"nan") {
        (f64::NAN, 3 + nan_payload_len(&body[3..]))
    } else if let Some(hex) = scan_hex(body) {
        hex
    } else {
        scan_decimal(body)?
    };
    let value = if negative { -magnitude } else { magnitude };
    // A zero result from a mantissa with a non-zero digit underflowed. The mantissa is what
    // comes before the exponent marker (`p` for hex, whose digits include `e`; `e` otherwise).
    let number = &body[..used];
    let hex = number.len() > 1 && number[1].eq_ignore_ascii_case(&b'x');
    let mantissa = if hex {
        let digits = &number[2..];
        &digits[..digits
            .iter()
            .position(|b| b.eq_ignore_ascii_case(&b'p'))
            .unwrap_or(digits.len())]
    } else {
        &number[..number
            .iter()
            .position(|b| b.eq_ignore_ascii_case(&b'e'))
            .unwrap_or(number.len())]
    };
    let nonzero = mantissa.iter().any(|b| b.is_ascii_hexdigit() && *b != b'0');
    let underflow = magnitude == 0.0 && nonzero && !starts_with_ignore_case(body, b"nan");
    Some((value, pos + used, underflow))
}

fn starts_with_ignore_case(s: &[u8], prefix: &[u8]) -> bool {
    s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// Length of an optional `(n-char-sequence)` after `nan`.
fn nan_payload_len(s: &[u8]) -> usize {
    if s.first() != Some(&b'(') {
        return 0;
    }
    let inner = s[1..]
        .iter()
        .take_while(|&&b| b.is_ascii_alphanumeric() || b == b'_')
        .count();
    if s.get(1 + inner) == Some(&b')') {
        inner + 2
    } else {
        0
    }
}

/// A decimal number: digits with at most one `.`, at least one digit, then an
/// exponent only if a digit follows `e`/`E` and its optional sign.
fn scan_decimal(s: &[u8]) -> Option<(f64, usize)> {
    let int_digits = count_digits(s, u8::is_ascii_digit);
    let mut pos = int_digits;
    let mut frac_digits = 0;
    if s.get(pos) == Some(&b'.') {
        frac_digits = count_digits(&s[pos + 1..], u8::is_ascii_digit);
        pos += 1 + frac_digits;
    }
    if int_digits + frac_digits == 0 {
        return None;
    }
    pos += exponent_len(&s[pos..], b'e');
    // The prefix is ASCII in Rust's float grammar; Rust rounds to nearest,
    // ties to even, like glibc, and saturates huge exponents to 0 or inf.
    let text = std::str::from_utf8(&s[..pos]).ok()?;
    let value = text.parse::<f64>().ok()?;
    Some((value, pos))
}

/// Length of an exponent (`e`/`p` in either case, optional sign, digits) at
/// the start of `s`, or 0 if there is none.
fn exponent_len(s: &[u8], marker: u8) -> usize {
    if !s.first().is_some_and(|b| b.eq_ignore_ascii_case(&marker)) {
        return 0;
    }
    let sign = usize::from(matches!(s.get(1), Some(b'+' | b'-')));
    match count_digits(&s[1 + sign..], u8::is_ascii_digit) {
        0 => 0,
        digits => 1 + sign + digits,
    }
}

fn count_digits(s: &[u8], is_digit: fn(&u8) -> bool) -> usize {
    s.iter().take_while(|b| is_digit(b)).count()
}

/// A hexadecimal float: `0x`, hex digits with at most one `.` (at least one
/// digit), then an optional binary exponent `p[+-]digits`. `None` when `0x`
/// is not followed by a digit; then only the `0` is a number (decimal scan).
fn scan_hex(s: &[u8]) -> Option<(f64, usize)> {
    if !(s.len() > 2 && s[0] == b'0' && s[1].eq_ignore_ascii_case(&b'x')) {
        return None;
    }
    let digits = &s[2..];
    let int_len = count_digits(digits, u8::is_ascii_hexdigit);
    let mut frac_len = 0;
    if digits.get(int_len) == Some(&b'.') {
        frac_len = count_digits(&digits[int_len + 1..], u8::is_ascii_hexdigit);
    }
    if int_len + frac_len == 0 {
        return None;
    }
    let mantissa_end = if frac_len > 0 || digits.get(int_len) == Some(&b'.') {
        int_len + 1 + frac_len
    } else {
        int_len
    };
    let exp_len = exponent_len(&digits[mantissa_end..], b'p');
    let exponent = if exp_len == 0 {
        0
    } else {
        parse_saturating_exponent(&digits[mantissa_end + 1..mantissa_end + exp_len])
    };
    let int_part = &digits[..int_len];
    let frac_part = &digits[int_len + usize::from(frac_len > 0)..][..frac_len];
    let value = hex_to_f64(int_part, frac_part, exponent);
    Some((value, 2 + mantissa_end + exp_len))
}

/// A signed decimal exponent, saturated far beyond any f64 range.
fn parse_saturating_exponent(s: &[u8]) -> i64 {
    const LIMIT: i64 = 1 << 40;
    let (negative, digits) = match s.first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let magnitude = digits
        .iter()
        .fold(0_i64, |acc, &d| (acc * 10 + i64::from(d - b'0')).min(LIMIT));
    if negative { -magnitude } else { magnitude }
}

/// The hex digits `int_part.frac_part` times 2^`exponent`, correctly rounded
/// to nearest (ties to even), with gradual underflow and overflow to infinity.
fn hex_to_f64(int_part: &[u8], frac_part: &[u8], exponent: i64) -> f64 {
    // value = (mantissa + sticky fraction) * 2^scale
    let mut mantissa: u64 = 0;
    let mut scale: i64 = 0;
    let mut sticky = false;
    let digits = int_part
        .iter()
        .map(|&d| (d, false))
        .chain(frac_part.iter().map(|&d| (d, true)));
    for (digit, is_fraction) in digits {
        let nibble = u64::from(hex_value(digit));
        if mantissa >> 60 == 0 {
            mantissa = (mantissa << 4) | nibble;
            if is_fraction {
                scale -= 4;
            }
        } else {
            sticky |= nibble != 0;
            if !is_fraction {
                scale += 4;
            }
        }
    }
    round_to_f64(mantissa, sticky, scale.saturating_add(exponent))
}

fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        b'A'..=b'F' => digit - b'A' + 10,
        _ => 0,
    }
}

/// `(mantissa + ε) * 2^scale` rounded to the nearest f64, ties to even, where
/// `sticky` says whether ε (less than one unit of `mantissa`) is non-zero.
fn round_to_f64(mantissa: u64, sticky: bool, scale: i64) -> f64 {
    if mantissa == 0 {
        return 0.0;
    }
    let leading = mantissa.leading_zeros();
    let normalized = mantissa << leading; // top bit set
    // value = 1.f * 2^top
    let top = scale.saturating_add(63 - i64::from(leading));
    if top > 1023 {
        return f64::INFINITY;
    }
    // Bits kept: 53 for a normal result, fewer below 2^-1022.
    let kept_bits = if top >= -1022 { 53 } else { 53 + (top + 1022) };
    if kept_bits < 0 {
        return 0.0; // below half the smallest subnormal
    }
    let drop = 64 - kept_bits; // 11..=64
    let (mut kept, rest, half) = if drop == 64 {
        (0_u64, normalized, 1_u64 << 63)
    } else {
        (
            normalized >> drop,
            normalized & ((1_u64 << drop) - 1),
            1_u64 << (drop - 1),
        )
    };
    let more_than_half = rest > half || (rest == half && sticky);
    if more_than_half || (rest == half && kept & 1 == 1) {
        kept += 1;
    }
    if top >= -1022 {
        // kept is in [2^52, 2^53]; 2^53 means the rounding carried.
        let (kept, top) = if kept >> 53 == 1 {
            (kept >> 1, top + 1)
        } else {
            (kept, top)
        };
        if top > 1023 {
            return f64::INFINITY;
        }
        #[expect(clippy::cast_sign_loss, reason = "top + 1023 is in 1..=2046 here")]
        let biased = (top + 1023) as u64;
        f64::from_bits((biased << 52) | (kept & ((1 << 52) - 1)))
    } else {
        // Subnormal: the lowest kept bit weighs 2^-1074, so the bits are the
        // value; a carry to 2^52 is the smallest normal, also correct.
        f64::from_bits(kept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seconds(s: &str) -> Result<f64, InvalidDurationError> {
        parse_seconds(OsStr::new(s))
    }

    fn interval(s: &str) -> Interval {
        parse_duration(OsStr::new(s)).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    /// What upstream's `dtimespec_bound` makes of an exactly parsed value.
    fn up(value: f64) -> f64 {
        round_up(value, false)
    }

    fn after(secs: u64, nanos: u32) -> Interval {
        Interval::After(Duration::new(secs, nanos))
    }

    #[test]
    fn plain_numbers_and_suffixes() {
        assert_eq!(seconds("5"), Ok(up(up(5.0))));
        assert_eq!(seconds("5s"), Ok(up(up(5.0))));
        assert_eq!(seconds("1.5m"), Ok(up(up(1.5) * 60.0)));
        assert_eq!(seconds("2h"), Ok(up(up(2.0) * 3600.0)));
        assert_eq!(seconds("1d"), Ok(up(up(1.0) * 86400.0)));
        assert_eq!(seconds(".5"), Ok(up(up(0.5))));
        assert_eq!(seconds("1."), Ok(up(up(1.0))));
        assert_eq!(seconds("+3"), Ok(up(up(3.0))));
        assert_eq!(seconds(" \t\n1"), Ok(up(up(1.0))));
        assert_eq!(seconds("1e3"), Ok(up(up(1000.0))));
        assert_eq!(seconds("1E-1"), Ok(up(up(0.1))));
        assert_eq!(seconds("1.e2s"), Ok(up(up(100.0))));
    }

    #[test]
    fn hex_floats() {
        assert_eq!(seconds("0x1p3"), Ok(up(up(8.0))));
        assert_eq!(seconds("0X1P3"), Ok(up(up(8.0))));
        assert_eq!(seconds("0x.8"), Ok(up(up(0.5))));
        assert_eq!(seconds("0x1.8p1"), Ok(up(up(3.0))));
        assert_eq!(seconds("0x10"), Ok(up(up(16.0))));
        assert_eq!(seconds("0x1."), Ok(up(up(1.0))));
        assert_eq!(seconds("0x1d"), Ok(up(up(29.0))), "d is a hex digit here");
        assert_eq!(seconds("0x1e"), Ok(up(up(30.0))), "e is a hex digit here");
        assert_eq!(seconds("0x1p-2m"), Ok(up(up(0.25) * 60.0)));
        assert_eq!(seconds("0x1p+2"), Ok(up(up(4.0))));
    }

    #[test]
    fn hex_rounding_is_exact() {
        let cases: &[(&str, f64)] = &[
            ("0x1.fffffffffffffp1023", f64::MAX),
            ("0x1.fffffffffffff8p1023", f64::INFINITY),
            ("0x1p1024", f64::INFINITY),
            ("0x1p-1074", f64::from_bits(1)),
            ("0x1p-1075", 0.0),
            ("0x1.0000000000001p-1075", f64::from_bits(1)),
            ("0x3p-1076", f64::from_bits(1)),
            ("0x1p-1022", f64::MIN_POSITIVE),
            ("0x0.fffffffffffff8p-1022", f64::MIN_POSITIVE),
            ("0x1.00000000000008", 1.0),
            ("0x1.00000000000018", 1.0 + 2.0 * f64::EPSILON),
            ("0x1.000000000000080000000001", 1.0 + f64::EPSILON),
            ("0x10000000000000000", 18_446_744_073_709_551_616.0),
            ("0x0000000000000000001p0", 1.0),
            ("0x.00000000000000000000001p92", 1.0),
            ("0x1p99999999999999999999", f64::INFINITY),
            ("0x1p-99999999999999999999", 0.0),
        ];
        for &(text, expected) in cases {
            let parsed = strtod(text.as_bytes()).map(|(value, _, _)| value.to_bits());
            assert_eq!(parsed, Some(expected.to_bits()), "{text}");
        }
    }

    #[test]
    fn infinity_and_overflow_never_fire() {
        for text in [
            "inf",
            "INF",
            "Infinity",
            "infinitys",
            "infd",
            "+inf",
            "1e400",
        ] {
            assert_eq!(interval(text), Interval::Never, "{text}");
        }
        assert_eq!(interval("1e308d"), Interval::Never);
        assert_eq!(interval("4294967295"), Interval::Never);
        assert_eq!(interval("4294967294"), after(4_294_967_294, 954));
    }

    #[test]
    fn only_an_exact_zero_disables() {
        for text in [
            "0",
            "0s",
            "0.0d",
            "-0",
            "-0.0",
            "0x0p0",
            "-0x0",
            "0e-400",
            "-0x0p-2000",
        ] {
            assert_eq!(interval(text), Interval::Disabled, "{text}");
        }
    }

    #[test]
    fn values_round_up_like_upstream() {
        // Expected values computed with upstream's dtimespec_bound + dtotimespec in C.
        assert_eq!(interval("1e-10"), after(0, 1));
        assert_eq!(interval("1e-320"), after(0, 1));
        assert_eq!(interval("0x1p-1074"), after(0, 1));
        // Underflows to zero: the smallest positive value, so a 1 ns timer (9.1: none).
        assert_eq!(interval("1e-400"), after(0, 1));
        assert_eq!(interval("1e-10000"), after(0, 1));
        assert_eq!(interval("0x1p-1075"), after(0, 1));
        assert_eq!(interval("0.1"), after(0, 100_000_001));
        assert_eq!(interval("1.5"), after(1, 500_000_001));
        assert_eq!(interval("5"), after(5, 1));
        assert_eq!(interval("1.5m"), after(90, 1));
        assert_eq!(interval("1.1h"), after(3960, 1));
        assert_eq!(interval("0.7d"), after(60480, 1));
        assert_eq!(interval("0.9999999999"), after(1, 0));
    }

    #[test]
    fn rejected_operands() {
        for text in [
            "", " ", "x", "1x", "1S", "1M", "1ss", "1 ", "1s ", "-1", "-1e-320", "-inf", "nan",
            "NaN", "-nan", "nan(1)", "nans", "infinit", "infi", ".", "-", "+", "+-1", "- 1", "1e",
            "1e+", "1e5e", "0x", "0xs", "0x1p", "0x.p1", "1..5", "1,5", "١", "1\u{e9}", "0x1ps",
            "?",
        ] {
            let err = seconds(text).expect_err(text);
            assert_eq!(err.operand, OsStr::new(text));
        }
    }

    #[test]
    fn error_text_quotes_like_gnu() {
        let err = seconds("1\nx").unwrap_err();
        assert_eq!(err.to_string(), r"invalid time interval '1\nx'");
        let err = seconds("").unwrap_err();
        assert_eq!(err.to_string(), "invalid time interval ''");
    }

    #[test]
    fn non_utf8_operands_are_rejected_not_panicking() {
        use std::os::unix::ffi::OsStrExt as _;
        let err = parse_seconds(OsStr::from_bytes(b"1\xff")).unwrap_err();
        assert_eq!(err.to_string(), r"invalid time interval '1\377'");
    }

    #[test]
    fn from_seconds_rejects_what_the_parser_never_returns() {
        assert_eq!(Interval::from_seconds(-1.0), None);
        assert_eq!(Interval::from_seconds(f64::NAN), None);
        assert_eq!(Interval::from_seconds(-0.0), Some(Interval::Disabled));
        assert_eq!(Interval::from_seconds(f64::INFINITY), Some(Interval::Never));
    }

    #[test]
    fn strtod_prefix_lengths() {
        assert_eq!(strtod(b"  1.5xyz"), Some((1.5, 5, false)));
        assert_eq!(strtod(b"1e-400s"), Some((0.0, 6, true)));
        assert_eq!(strtod(b"0e-400"), Some((0.0, 6, false)));
        assert_eq!(strtod(b"0x1p-1075"), Some((0.0, 9, true)));
        assert_eq!(strtod(b"0x"), Some((0.0, 1, false)));
        assert_eq!(strtod(b"0xg"), Some((0.0, 1, false)));
        assert_eq!(strtod(b"infinit"), Some((f64::INFINITY, 3, false)));
        assert_eq!(strtod(b"1e+x"), Some((1.0, 1, false)));
        assert_eq!(strtod(b"0x1p+x"), Some((1.0, 3, false)));
        assert_eq!(strtod(b"x"), None);
        assert_eq!(strtod(b"-"), None);
        let (nan, used, _) = strtod(b"nan(abc_1)s").unwrap();
        assert!(nan.is_nan());
        assert_eq!(used, 10);
        let (_, used, _) = strtod(b"nan(abc").unwrap();
        assert_eq!(used, 3);
    }

    #[test]
    fn never_threshold_fits_instant_arithmetic() {
        let now = std::time::Instant::now();
        assert!(now.checked_add(NEVER_THRESHOLD).is_some());
    }
}
