//! Text rules of the locale that GNU's parsers and diagnostics follow.
//!
//! GNU coreutils writes a rejected operand or a command name with gnulib
//! `quote()` (`locale_quoting_style`), whose form depends on the character
//! set of the locale the environment selects: in the C locale `'...'` with
//! C-style escapes, plain ASCII whatever the input bytes; in a UTF-8 locale
//! (this machine's default is `LANG=C.UTF-8`) `‘...’`, with printable
//! characters kept as they are. warden does the same. It has no message
//! catalogs, so in a locale where coreutils has a translation the wording
//! still differs (such locales are not installed on the reference machine).
//! Numbers are always read by the C rules, as GNU's `cl_strtod` ends up doing.

use super::unix::Locale;

/// Quotes `bytes` the way GNU's `quote()` does in the locale the environment
/// selects: [`quote_utf8`] in a UTF-8 locale, [`quote_c`] otherwise (a locale
/// that is not installed leaves GNU in the C locale).
pub(crate) fn quote(bytes: &[u8]) -> String {
    // Unit tests compare messages with fixed texts, and with GNU run under `LC_ALL=C`,
    // whatever locale the test runner has; the binary's own choice is tested end to end.
    if cfg!(test) {
        return quote_c(bytes);
    }
    match Locale::from_env() {
        Some(locale) if locale.is_utf8() => quote_utf8(bytes, |c| locale.is_printable(c)),
        _ => quote_c(bytes),
    }
}

/// Quotes `bytes` the way GNU's `quote()` does in the C locale.
///
/// The result is enclosed in `'`; inside it, `\` and `'` are backslash-escaped,
/// the control characters that have a C letter escape use it (`\t`, `\n`...),
/// and every other byte that is not printable ASCII becomes a three-digit
/// octal escape (`\001`, `\377`).
pub(crate) fn quote_c(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() + 2);
    out.push('\'');
    for &byte in bytes {
        push_ascii(&mut out, byte, true);
    }
    out.push('\'');
    out
}

/// Quotes `bytes` the way GNU's `quote()` does in a UTF-8 locale whose
/// `iswprint` is `is_printable`.
///
/// The result is enclosed in `‘` and `’`. ASCII is escaped as by [`quote_c`],
/// except that `'` is not (it is no longer the closing quote); a printable
/// character is kept, `’` behind a backslash; the bytes of an unprintable
/// character and every byte that is not valid UTF-8 become octal escapes.
pub(crate) fn quote_utf8(bytes: &[u8], is_printable: impl Fn(char) -> bool) -> String {
    const OPEN: char = '\u{2018}';
    const CLOSE: char = '\u{2019}';
    let mut out = String::with_capacity(bytes.len() + 6);
    out.push(OPEN);
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            let mut buffer = [0; 4];
            let encoded = c.encode_utf8(&mut buffer).as_bytes();
            if let &[ascii] = encoded {
                push_ascii(&mut out, ascii, false);
            } else if is_printable(c) {
                if c == CLOSE {
                    out.push('\\');
                }
                out.push(c);
            } else {
                for &byte in encoded {
                    push_octal(&mut out, byte);
                }
            }
        }
        for &byte in chunk.invalid() {
            push_octal(&mut out, byte);
        }
    }
    out.push(CLOSE);
    out
}

/// One byte as GNU's C-style escapes write it; `'` escaped only if it is the
/// closing quote.
fn push_ascii(out: &mut String, byte: u8, escape_apostrophe: bool) {
    let letter = match byte {
        0x07 => Some('a'),
        0x08 => Some('b'),
        0x0c => Some('f'),
        b'\n' => Some('n'),
        b'\r' => Some('r'),
        b'\t' => Some('t'),
        0x0b => Some('v'),
        b'\\' => Some('\\'),
        b'\'' if escape_apostrophe => Some('\''),
        _ => None,
    };
    if let Some(letter) = letter {
        out.push('\\');
        out.push(letter);
    } else if (0x20..=0x7e).contains(&byte) {
        out.push(char::from(byte));
    } else {
        push_octal(out, byte);
    }
}

fn push_octal(out: &mut String, byte: u8) {
    out.push('\\');
    out.push(char::from(b'0' + (byte >> 6)));
    out.push(char::from(b'0' + ((byte >> 3) & 7)));
    out.push(char::from(b'0' + (byte & 7)));
}

/// `isspace` in the C locale: what `strtod` and `strtol` skip before a number.
pub(crate) fn is_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

#[cfg(test)]
mod tests {
    use super::super::unix::Locale;
    use super::{is_space, quote_c as quote, quote_utf8};

    #[test]
    fn c_locale_spaces() {
        let spaces: Vec<u8> = (0..=255).filter(|&b| is_space(b)).collect();
        assert_eq!(spaces, b"\t\n\x0b\x0c\r ");
    }

    #[test]
    fn plain_text_is_wrapped_in_single_quotes() {
        assert_eq!(quote(b"x"), "'x'");
        assert_eq!(quote(b""), "''");
        assert_eq!(quote(b"1 2?*$"), "'1 2?*$'");
    }

    #[test]
    fn quotes_and_backslashes_are_escaped() {
        assert_eq!(quote(b"a'b"), r"'a\'b'");
        assert_eq!(quote(br"a\b"), r"'a\\b'");
    }

    #[test]
    fn control_and_high_bytes_use_c_escapes() {
        assert_eq!(quote(b"a\tb\\c\x01\xff"), r"'a\tb\\c\001\377'");
        assert_eq!(quote(b"1\nx"), r"'1\nx'");
        assert_eq!(quote(b"x\x7fy\xc3\xa9"), r"'x\177y\303\251'");
        assert_eq!(quote(b"\x07\x08\x0b\x0c\r\x1b"), r"'\a\b\v\f\r\033'");
    }

    /// What GNU 9.1 printed for these operands under `LC_ALL=C.UTF-8` here.
    #[test]
    fn utf8_locale_uses_curly_quotes_and_keeps_printable_characters() {
        let Some(locale) = Locale::named(c"C.UTF-8") else {
            eprintln!("skipping: the C.UTF-8 locale is not installed");
            return;
        };
        assert!(locale.is_utf8());
        let q = |bytes: &[u8]| quote_utf8(bytes, |c| locale.is_printable(c));
        assert_eq!(q(b"x"), "\u{2018}x\u{2019}");
        assert_eq!(q(b"a'b"), "\u{2018}a'b\u{2019}");
        assert_eq!(q(br"a\b"), "\u{2018}a\\\\b\u{2019}");
        assert_eq!(q(b"a\tb\x01"), "\u{2018}a\\tb\\001\u{2019}");
        assert_eq!(
            q("é\u{feff}\u{e000}😀".as_bytes()),
            "\u{2018}é\u{feff}\u{e000}😀\u{2019}"
        );
        assert_eq!(q("a’b‘".as_bytes()), "\u{2018}a\\’b‘\u{2019}");
        // Unprintable characters and invalid UTF-8, byte by byte.
        assert_eq!(q("\u{85}\u{378}".as_bytes()), r"‘\302\205\315\270’");
        assert_eq!(q(b"\xe2\x80x\xff"), r"‘\342\200x\377’");
        assert_eq!(q(b"\xed\xa0\x80\xc0\x80"), r"‘\355\240\200\300\200’");
        assert_eq!(q(b"\xe2\x80"), r"‘\342\200’");
    }

    #[test]
    fn the_c_locale_is_not_utf8() {
        if let Some(locale) = Locale::named(c"C") {
            assert!(!locale.is_utf8());
        }
        assert!(Locale::named(c"xx_NO.such-locale").is_none());
    }
}
