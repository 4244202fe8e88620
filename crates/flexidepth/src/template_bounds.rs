//! Bounds on rendering a chat template, which comes from a model file and may be anything: minijinja's fuel caps
//! the instructions executed (nested `range(100000)` loops), and the output is capped relative to the input (a
//! `'x' * 100000000` text). Either ends in a clear [`Error::Template`] instead of minutes of work or an abort.

use crate::error::{Error, Result};

/// Template instructions one rendering may execute: real chat templates take a few thousand per message.
pub const FUEL: u64 = 20_000_000;
/// Rendered bytes allowed beyond eight times the input's size (messages, tools and documents as JSON).
pub const BASE_OUTPUT_BYTES: usize = 1 << 20;

/// Render `tmpl` (from an environment with [`FUEL`] set) with `ctx`, refusing output past
/// `BASE_OUTPUT_BYTES + 8 · input_bytes`.
pub(crate) fn render(tmpl: &minijinja::Template, ctx: minijinja::Value, input_bytes: usize) -> Result<String> {
    let mut out = CappedOutput {
        bytes: Vec::new(),
        cap: BASE_OUTPUT_BYTES.saturating_add(input_bytes.saturating_mul(8)),
        overflowed: false,
    };
    match tmpl.render_captured_to(ctx, &mut out) {
        Ok(_) => String::from_utf8(out.bytes).map_err(|_| Error::Template("rendered invalid UTF-8".into())),
        Err(e) if e.kind() == minijinja::ErrorKind::OutOfFuel => Err(Error::Template(format!(
            "rendering takes more than {FUEL} steps (an endless or huge loop?)"
        ))),
        Err(_) if out.overflowed => Err(Error::Template(format!(
            "the rendered text grows past {} bytes",
            out.cap
        ))),
        Err(e) => Err(Error::Template(format!("cannot render: {e}"))),
    }
}

/// A rendering target that refuses to grow past `cap` bytes.
struct CappedOutput {
    bytes: Vec<u8>,
    cap: usize,
    overflowed: bool,
}

impl std::io::Write for CappedOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > self.cap {
            self.overflowed = true;
            return Err(std::io::Error::other("output cap"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::chat::{ChatTemplate, Message};

    fn render(src: &str) -> crate::Result<String> {
        ChatTemplate::new(src.into(), None, None).render(&[Message::new("user", "hi")], true)
    }

    #[test]
    fn endless_loops_and_huge_texts_are_clear_errors() {
        let e = render("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("steps"), "{e}");
        let e = render("{{ 'x' * 100000000 }}").unwrap_err().to_string();
        assert!(e.contains("grows past"), "{e}");
        assert_eq!(render("{{ messages[0].content }}!").unwrap(), "hi!");
    }
}
