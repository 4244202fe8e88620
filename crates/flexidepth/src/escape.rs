//! Backslash escapes in text typed on a command line, as llama.cpp's `string_process_escapes` handles them for its
//! reverse prompts (`-r`): `\n`, `\r`, `\t`, `\0`, `\'`, `\"`, `\\`, `\xHH` and `\uXXXX` (a Unicode scalar value,
//! four hex digits). Anything else — an unknown letter, a short or invalid `\x`/`\u`, a surrogate, a trailing
//! backslash — is kept as typed, so no input is refused.

/// Replace the escapes of `s` by the characters they stand for (see the module header).
///
/// ```
/// use flexidepth::escape::process_escapes;
/// assert_eq!(process_escapes(r"a\n\tb"), "a\n\tb");
/// assert_eq!(process_escapes(r"\u00e9\\n"), "é\\n");
/// assert_eq!(process_escapes(r"C:\path"), r"C:\path");
/// ```
pub fn process_escapes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let mut chars = after.chars();
        let Some(c) = chars.next() else {
            out.push('\\'); // a trailing backslash stays
            rest = "";
            break;
        };
        let simple = match c {
            'n' => Some('\n'),
            'r' => Some('\r'),
            't' => Some('\t'),
            '0' => Some('\0'),
            '\'' => Some('\''),
            '"' => Some('"'),
            '\\' => Some('\\'),
            _ => None,
        };
        if let Some(ch) = simple {
            out.push(ch);
            rest = &after[1..];
            continue;
        }
        let hex = match c {
            'x' => 2,
            'u' => 4,
            _ => 0,
        };
        let digits = after
            .get(1..1 + hex)
            .filter(|d| d.len() == hex && d.bytes().all(|b| b.is_ascii_hexdigit()));
        let decoded = digits
            .and_then(|d| u32::from_str_radix(d, 16).ok())
            .and_then(char::from_u32);
        match decoded {
            // `\xHH` is a byte in llama.cpp; a lone byte above 0x7f is not text, so only ASCII is decoded here.
            Some(ch) if hex == 4 || ch.is_ascii() => {
                out.push(ch);
                rest = &after[1 + hex..];
            }
            _ => {
                out.push('\\');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::process_escapes as esc;

    #[test]
    fn the_simple_escapes() {
        assert_eq!(esc(r"\n\n"), "\n\n");
        assert_eq!(esc(r"a\tb\rc"), "a\tb\rc");
        assert_eq!(esc(r#"say \"hi\" and \'bye\'"#), "say \"hi\" and 'bye'");
        assert_eq!(esc(r"back\\slash"), "back\\slash");
        assert_eq!(esc(r"\\n"), "\\n"); // an escaped backslash, then a plain n
        assert_eq!(esc(r"nul\0"), "nul\0");
    }

    #[test]
    fn hex_and_unicode() {
        assert_eq!(esc(r"\x41\x7e"), "A~");
        assert_eq!(esc(r"\u00e9t\u00E9"), "été");
        assert_eq!(esc(r"\u4e2d\u6587"), "中文");
        assert_eq!(esc(r"<\u007c>"), "<|>");
    }

    #[test]
    fn malformed_escapes_stay_as_typed() {
        for s in [
            r"\q",
            r"C:\path",
            r"end\",
            r"\x",
            r"\x4",
            r"\xzz",
            r"\u12",
            r"\u12g4",
            r"\ud800",
            r"\xff",
            "",
            "no escapes at all",
            "ünïcödé \\",
            r"\",
        ] {
            assert_eq!(esc(s), s, "{s:?}");
        }
        assert_eq!(esc(r"\u00e9\q\n"), "é\\q\n");
    }
}
