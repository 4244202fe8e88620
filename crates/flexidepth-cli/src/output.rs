//! Writing to the terminal without panicking: `println!` panics when stdout cannot be written (`> /dev/full`, a
//! closed pipe), and so does `eprintln!` for stderr.
//!
//! - [`out`] writes a line of results to stdout; a write error ends the command with a message and exit code 1;
//! - the crate's `eprintln!` (this module's macro, which shadows std's in every module declared after it) drops a
//!   diagnostic line stderr cannot take: there is nowhere left to report it.

use std::io::Write;

/// Write `line` and a newline to stdout.
pub fn out(line: impl std::fmt::Display) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")
        .and_then(|_| stdout.flush())
        .map_err(|e| anyhow::anyhow!("cannot write to stdout: {e}"))
}

/// `eprintln!` that ignores a failed write instead of panicking.
macro_rules! eprintln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}
