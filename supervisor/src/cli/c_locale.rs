//! Text rules of the C locale that GNU's parsers and diagnostics follow.
//!
//! GNU coreutils writes a rejected operand as `'...'` with C-style escapes
//! (gnulib `quotearg`, `locale_quoting_style`). In a UTF-8 locale GNU would
//! switch to curly quotes; warden does not localise its messages, so it always
//! produces the C-locale form, which is plain ASCII whatever the input bytes.

/// Quotes `bytes` the way GNU's `quote()` does in the C locale.
///
/// The result is enclosed in `'`; inside it, `\` and `'` are backslash-escaped,
/// the control characters that have a C letter escape use it (`\t`, `\n`...),
/// and every other byte that is not printable ASCII becomes a three-digit
/// octal escape (`\001`, `\377`).
pub(crate) fn quote(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() + 2);
    out.push('\'');
    for &byte in bytes {
        let letter = match byte {
            0x07 => Some('a'),
            0x08 => Some('b'),
            0x0c => Some('f'),
            b'\n' => Some('n'),
            b'\r' => Some('r'),
            b'\t' => Some('t'),
            0x0b => Some('v'),
            b'\\' => Some('\\'),
            b'\'' => Some('\''),
            _ => None,
        };
        if let Some(letter) = letter {
            out.push('\\');
            out.push(letter);
        } else if (0x20..=0x7e).contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push('\\');
            out.push(char::from(b'0' + (byte >> 6)));
            out.push(char::from(b'0' + ((byte >> 3) & 7)));
            out.push(char::from(b'0' + (byte & 7)));
        }
    }
    out.push('\'');
    out
}

/// `isspace` in the C locale: what `strtod` and `strtol` skip before a number.
pub(crate) fn is_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

#[cfg(test)]
mod tests {
    use super::{is_space, quote};

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
}
