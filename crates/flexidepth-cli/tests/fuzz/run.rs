//! Running one fuzz case: the built CLI as a subprocess under an address-space cap (setrlimit in `pre_exec`) and a
//! wall-clock limit, judged as a clean error, a correct result, or a failure (panic, signal, hang, a non-finite
//! number in a written tensor file).

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Address space a run may map: a tiny model needs a few hundred MB; an allocation sized by a corrupt count fails.
pub const MEMORY_CAP: u64 = 4 << 30;
/// Wall-clock limit of one run: a tiny model loads and answers in well under a second.
pub const TIME_LIMIT: Duration = Duration::from_secs(30);

/// One run of the CLI.
pub struct Case {
    /// What was fuzzed (`gguf`, `config.json`, ...).
    pub target: &'static str,
    /// The mutation, for the failure report.
    pub what: String,
    pub args: Vec<String>,
    /// The case's own folder (its inputs and outputs).
    pub dir: PathBuf,
    /// Files to write before the run.
    pub files: Vec<(PathBuf, Vec<u8>)>,
    /// A folder whose `.safetensors` files must hold only finite numbers after a successful run.
    pub outputs: Option<PathBuf>,
}

pub enum Verdict {
    Ok,
    CleanError,
    Failure(String),
}

/// Run `case` with the binary `bin` and judge it.
pub fn run(bin: &Path, case: &Case) -> Verdict {
    std::fs::create_dir_all(&case.dir).unwrap();
    for (path, bytes) in &case.files {
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p).unwrap();
        }
        std::fs::write(path, bytes).unwrap();
    }
    let (out_path, err_path) = (case.dir.join("stdout"), case.dir.join("stderr"));
    let mut cmd = Command::new(bin);
    cmd.args(&case.args)
        .current_dir(&case.dir)
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap());
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: MEMORY_CAP,
                rlim_max: MEMORY_CAP,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("the binary starts");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > TIME_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            return Verdict::Failure(format!("still running after {TIME_LIMIT:?} (a hang)"));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stderr = String::from_utf8_lossy(&std::fs::read(&err_path).unwrap()).into_owned();
    let tail: String = stderr.lines().rev().take(3).collect::<Vec<_>>().join(" | ");
    if let Some(sig) = status.signal() {
        return Verdict::Failure(format!("killed by signal {sig}: {tail}"));
    }
    if stderr.contains("panicked") {
        return Verdict::Failure(format!("panic: {tail}"));
    }
    match status.code() {
        Some(0) => match &case.outputs {
            Some(dir) => match non_finite_outputs(dir) {
                None => Verdict::Ok,
                Some(bad) => Verdict::Failure(format!("exit 0 but {bad}")),
            },
            None => Verdict::Ok,
        },
        Some(1 | 2) if stderr.contains("error") => Verdict::CleanError,
        Some(c) => Verdict::Failure(format!("exit code {c}: {tail}")),
        None => Verdict::Failure("no exit code".into()),
    }
}

/// The first `.safetensors` file in `dir` holding a NaN or an infinity, described.
fn non_finite_outputs(dir: &Path) -> Option<String> {
    for entry in std::fs::read_dir(dir).ok()? {
        let path = entry.ok()?.path();
        if path.extension().is_none_or(|e| e != "safetensors") {
            continue;
        }
        let bytes = std::fs::read(&path).ok()?;
        let Ok(st) = safetensors::SafeTensors::deserialize(&bytes) else {
            return Some(format!("{} is not readable", path.display()));
        };
        for (name, view) in st.tensors() {
            let data = view.data();
            let finite = match view.dtype() {
                safetensors::Dtype::F32 => data
                    .chunks_exact(4)
                    .all(|c| f32::from_le_bytes(c.try_into().unwrap()).is_finite()),
                safetensors::Dtype::BF16 => data
                    .chunks_exact(2)
                    .all(|c| (u16::from_le_bytes([c[0], c[1]]) & 0x7F80) != 0x7F80),
                safetensors::Dtype::F16 => data
                    .chunks_exact(2)
                    .all(|c| (u16::from_le_bytes([c[0], c[1]]) & 0x7C00) != 0x7C00),
                _ => true,
            };
            if !finite {
                return Some(format!("{} holds a non-finite value in '{name}'", path.display()));
            }
        }
    }
    None
}
