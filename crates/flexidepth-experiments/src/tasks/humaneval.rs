//! `humaneval`: lm-evaluation-harness `humaneval` (version 1.0) scored as pass@1 of one greedy completion (as the
//! harness's greedy variant): the prompt is the problem's code, generation runs greedily until `\nclass`, `\ndef`,
//! `\n#`, `\nif` or `\nprint` (at most 1,024 new tokens), and the program `prompt + completion + "\n" + test + "\n" +
//! "check(entry_point)"` is run by `python3` in its own process ([`run_program`]): pass iff it exits 0 within the
//! time limit. Running model-written code needs `--confirm-run-unsafe-code`, as the harness does.
//!
//! The data: oe-eval's `codex_humaneval/gold_bpb_0shot` request file (the 164 problems).

use super::data::{doc_str, read_request_docs};
use super::{Item, Kind};
use flexidepth::error::{Error, Result};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The harness's stop sequences.
pub const STOPS: [&str; 5] = ["\nclass", "\ndef", "\n#", "\nif", "\nprint"];
/// The harness's `max_gen_toks`.
pub const MAX_NEW_TOKENS: usize = 1024;

/// HumanEval's items.
pub fn humaneval() -> Result<Vec<Item>> {
    read_request_docs("codex_humaneval", "gold_bpb_0shot")?
        .iter()
        .map(|d| {
            Ok(Item {
                id: doc_str(d, "task_id")?.to_string(),
                kind: Kind::HumanEval {
                    prompt: doc_str(d, "prompt")?.to_string(),
                    test: doc_str(d, "test")?.to_string(),
                    entry_point: doc_str(d, "entry_point")?.to_string(),
                },
            })
        })
        .collect()
}

/// The program that checks a completion (the harness's `check_program`).
pub fn program(prompt: &str, completion: &str, test: &str, entry_point: &str) -> String {
    format!("{prompt}{completion}\n{test}\ncheck({entry_point})\n")
}

/// Limits of one program run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Wall-clock limit; the process is killed after it (the harness's 3 s).
    pub timeout: Duration,
    /// Address-space limit in bytes (`RLIMIT_AS`).
    pub memory_bytes: u64,
    /// Largest file the program may write, in bytes (`RLIMIT_FSIZE`).
    pub file_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_secs(3),
            memory_bytes: 1 << 30,
            file_bytes: 1 << 20,
        }
    }
}

/// How a program run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Passed,
    Failed,
    TimedOut,
}

/// The launcher: sets the limits with Python's `resource` module, then runs the program file (argv[1]) as
/// `__main__`, in isolated mode (`-I`: no user site, no environment variables, no script folder on the path).
const LAUNCHER: &str = "import resource, runpy, sys\n\
mem, fsize, cpu = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])\n\
resource.setrlimit(resource.RLIMIT_AS, (mem, mem))\n\
resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))\n\
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))\n\
runpy.run_path(sys.argv[1], run_name='__main__')\n";

/// Run `source` with `python3` in a fresh temporary folder (its working directory, removed afterwards), with an
/// empty environment, no input, output discarded, under `limits` (memory, file size and CPU time set in the child,
/// wall-clock time enforced here by killing it).
///
/// Errors: `python3` cannot be started, or the temporary folder cannot be made.
pub fn run_program(source: &str, limits: Limits) -> Result<Outcome> {
    let dir = tempdir()?;
    let file = dir.0.join("program.py");
    std::fs::write(&file, source).map_err(|e| Error::Input(format!("cannot write {}: {e}", file.display())))?;
    let cpu = limits.timeout.as_secs().max(1) + 1;
    let mut child = Command::new("python3")
        .arg("-I")
        .arg("-c")
        .arg(LAUNCHER)
        .arg(&file)
        .arg(limits.memory_bytes.to_string())
        .arg(limits.file_bytes.to_string())
        .arg(cpu.to_string())
        .current_dir(&dir.0)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| Error::Input(format!("cannot run python3 for humaneval: {e}")))?;
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                return Ok(if status.success() {
                    Outcome::Passed
                } else {
                    Outcome::Failed
                });
            }
            Ok(None) if start.elapsed() >= limits.timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Ok(Outcome::TimedOut);
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(Error::Input(format!("cannot wait for python3: {e}"))),
        }
    }
}

/// A temporary folder removed on drop.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir() -> Result<TempDir> {
    static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("flexidepth-humaneval-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| Error::Input(format!("cannot make {}: {e}", dir.display())))?;
    Ok(TempDir(dir))
}
