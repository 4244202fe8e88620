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

/// Refuse an output path that cannot be written before any work is done: its folder must exist and its name fit a
/// file system's 255 bytes (a result computed for minutes must not be lost to a typo in `--trace`).
pub fn check_output_path(flag: &str, path: &std::path::Path) -> anyhow::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => std::path::Path::new("."),
    };
    let name_len = path.file_name().map_or(0, |n| n.len());
    if !(1..=255).contains(&name_len) {
        anyhow::bail!("{flag} {}: not a usable file name", path.display());
    }
    if !parent.is_dir() {
        let why = if parent.exists() {
            "is not a folder"
        } else {
            "does not exist"
        };
        anyhow::bail!("{flag} {}: {} {why}", path.display(), parent.display());
    }
    if path.is_dir() {
        anyhow::bail!("{flag} {}: is a folder, not a file", path.display());
    }
    Ok(())
}

/// `eprintln!` that ignores a failed write instead of panicking.
macro_rules! eprintln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}
