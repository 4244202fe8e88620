//! Regression tests of the hardening kinds the command line owns, on a tiny GGUF model (and the default model where
//! a long write is needed): sizes from flags bounded before use (1), non-finite or out-of-domain flags refused (4),
//! a chat template that would run for minutes refused (5), stdout errors, Ctrl-C during `convert` and file
//! permissions (6), and errors that name the right flag (9).

mod common;
#[path = "../../flexidepth/tests/common/tiny_gguf.rs"]
mod tiny_gguf;

use common::{flexidepth, text};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn tiny(dir: &Path) -> String {
    let p = dir.join("tiny.gguf");
    std::fs::write(&p, tiny_gguf::tiny_gguf().0).unwrap();
    p.display().to_string()
}

/// Run the CLI and expect a clean error (exit 1 or 2, a message, no panic) mentioning `want`, within seconds.
fn clean_error(args: &[&str], want: &str) {
    let start = Instant::now();
    let o = flexidepth(args);
    let err = text(&o.stderr);
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{args:?} took {:?}",
        start.elapsed()
    );
    assert!(matches!(o.status.code(), Some(1 | 2)), "{args:?}: {:?} {err}", o.status);
    assert!(err.contains(want) && !err.contains("panicked"), "{args:?}: {err}");
}

/// Kind 1: counts from flags are bounded before anything is sized or started by them.
#[test]
fn sizes_from_flags_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let m = tiny(dir.path());
    let out = dir.path().join("d.safetensors").display().to_string();
    clean_error(
        &["-t", "1000000000000", "info", "-m", &m],
        "-t takes a number of threads in 1..=1024",
    );
    clean_error(
        &["-t", "1000000000000,1", "bench", "-m", &m, "-p", "8", "-n", "0"],
        "-t takes",
    );
    clean_error(
        &["-t", "1", "bench", "-m", &m, "-p", "100000", "-n", "0"],
        "needs 100000 positions",
    );
    clean_error(
        &["-t", "1", "bench", "-m", &m, "-n", "18446744073709551615"],
        "positions",
    );
    clean_error(
        &[
            "-t",
            "1",
            "depth",
            "init",
            "-m",
            &m,
            "-o",
            &out,
            "--routed-layers",
            "0..99999999999999",
        ],
        "layer 2 does not exist (the model has 2 layers",
    );
    let data = dir.path().join("d.jsonl");
    std::fs::write(&data, "{\"text\":\"hi there\"}\n").unwrap();
    let run = dir.path().join("run").display().to_string();
    let d = data.display().to_string();
    for (flag, value, want) in [
        (
            "--batch-size",
            "18446744073709551615",
            "batch_size must be in 1..=65536",
        ),
        ("--grad-accum", "4294967296", "grad_accum"),
        ("--steps", "18446744073709551615", "steps must be in"),
        ("--max-len", "18446744073709551615", "max_len"),
    ] {
        clean_error(&["-t", "1", "train", "-m", &m, "-d", &d, "-o", &run, flag, value], want);
    }
}

/// Kind 4: non-finite and out-of-domain values of flags are refused by name.
#[test]
fn flags_outside_their_domains_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let m = tiny(dir.path());
    let depth = dir.path().join("d.safetensors").display().to_string();
    let o = flexidepth(&["-t", "1", "depth", "init", "-m", &m, "-o", &depth]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    for (flag, value) in [
        ("--skip-threshold", "NaN"),
        ("--skip-threshold", "inf"),
        ("--temperature", "NaN"),
        ("--top-p", "2"),
        ("--min-p", "NaN"),
        ("--repeat-penalty", "0"),
    ] {
        clean_error(
            &[
                "-t", "1", "generate", "-m", &m, "--depth", &depth, "-p", "hi", "-n", "2", flag, value,
            ],
            &format!("{flag} must be"),
        );
    }
    // DMTD perplexity: a scoring it would ignore, a cycle longer than the window.
    clean_error(
        &[
            "perplexity",
            "-m",
            &m,
            "-f",
            &m,
            "--dmtd",
            "2",
            "--scoring",
            "second-half",
        ],
        "--dmtd scores every position",
    );
    clean_error(
        &["perplexity", "-m", &m, "-f", &m, "--dmtd", "8", "--ctx-size", "8"],
        "needs windows of at least 9 tokens",
    );
    // A text (or --max-tokens) shorter than the cycle: named, not rows of ratio 1 for offsets that scored nothing.
    let short = dir.path().join("short.txt");
    std::fs::write(&short, "hi there").unwrap();
    clean_error(
        &[
            "perplexity",
            "-m",
            &m,
            "-f",
            short.to_str().unwrap(),
            "--dmtd",
            "10",
            "--dmtd-decoding-layers",
            "1",
            "--ctx-size",
            "32",
        ],
        "needs a window of at least 11 tokens",
    );
    let run = dir.path().join("run").display().to_string();
    clean_error(
        &["-t", "1", "train", "-m", &m, "-d", &m, "-o", &run, "--lr", "NaN"],
        "lr must be",
    );
    clean_error(
        &[
            "-t",
            "1",
            "train",
            "-m",
            &m,
            "-d",
            &m,
            "-o",
            &run,
            "--skip-threshold",
            "NaN",
        ],
        "skip_threshold",
    );
}

/// An HF folder of the tiny model.
fn hf(dir: &Path, m: &str) -> PathBuf {
    let hf = dir.join("hf");
    let o = flexidepth(&["-t", "1", "convert", "-m", m, "-o", hf.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    hf
}

/// Kind 5: a template from the model's files that would loop for minutes or build gigabytes is a clear error.
#[test]
fn unbounded_chat_templates_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let m = tiny(dir.path());
    let hf = hf(dir.path(), &m);
    let cfg = hf.join("tokenizer_config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    for (template, want) in [
        (
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            "steps",
        ),
        (
            "{% for i in range(100000) %}{{ 'x' * 100000 }}{% endfor %}",
            "grows past",
        ),
        ("{{ 'x' * 100000000 }}", "grows past"),
    ] {
        v["chat_template"] = serde_json::json!(template);
        std::fs::write(&cfg, v.to_string()).unwrap();
        clean_error(
            &[
                "-t",
                "1",
                "generate",
                "-m",
                hf.to_str().unwrap(),
                "--chat",
                "hi",
                "-n",
                "2",
            ],
            want,
        );
    }
    v["chat_template"] = serde_json::json!(7);
    std::fs::write(&cfg, v.to_string()).unwrap();
    clean_error(
        &["-t", "1", "generate", "-m", hf.to_str().unwrap(), "-p", "hi", "-n", "2"],
        "'chat_template' must be",
    );
}

/// Kind 6: a full disk on stdout is an error with a message, not a panic.
#[test]
fn a_full_stdout_is_a_clean_error() {
    let dir = tempfile::tempdir().unwrap();
    let m = tiny(dir.path());
    let help: [Vec<&str>; 3] = [vec!["--help"], vec!["generate", "--help"], vec!["--version"]];
    for args in [vec!["info", "-m", &m], vec!["tokenize", "-m", &m, "-p", "hi"]]
        .into_iter()
        .chain(help)
    {
        let o = Command::new(env!("CARGO_BIN_EXE_flexidepth"))
            .args(&args)
            .stdout(std::fs::File::create("/dev/full").unwrap())
            .output()
            .unwrap();
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("cannot write to stdout") && !err.contains("panicked"),
            "{err}"
        );
    }
}

/// The process's umask (from /proc, without changing it under the other test threads).
fn umask() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find_map(|l| l.strip_prefix("Umask:")).unwrap();
    u32::from_str_radix(line.trim(), 8).unwrap()
}

/// Kind 6: `convert` writes files with normal permissions, and a Ctrl-C in the middle of writing the weights
/// leaves no temp file behind (and no half-written model.safetensors).
#[test]
fn convert_cleans_up_on_ctrl_c_and_writes_normal_permissions() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let m = tiny(dir.path());
    let hf = hf(dir.path(), &m);
    let mode = std::fs::metadata(hf.join("model.safetensors"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o666 & !umask(), "{mode:o}");

    // The default model's f32 weights take long enough to write to interrupt the write.
    let out = dir.path().join("big");
    std::fs::create_dir_all(&out).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_flexidepth"))
        .args(["-t", "1", "convert", "-o", out.to_str().unwrap()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let listing = || -> Vec<String> {
        std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    let start = Instant::now();
    while !listing().iter().any(|n| n.contains(".tmp")) {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no temp file appeared: {:?}",
            listing()
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "convert finished before it could be interrupted"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let o: Output = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", text(&o.stderr));
    let left = listing();
    assert!(
        left.iter().all(|n| !n.contains(".tmp") && n != "model.safetensors"),
        "{left:?}"
    );
}

/// Kind 6: output paths and stage names that cannot be written fail before any work, not after it.
#[test]
fn unwritable_outputs_fail_before_the_work() {
    let dir = tempfile::tempdir().unwrap();
    let m = tiny(dir.path());
    let depth = dir.path().join("d.safetensors").display().to_string();
    let o = flexidepth(&["-t", "1", "depth", "init", "-m", &m, "-o", &depth]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    for flag in ["--trace", "--depth-map"] {
        let o = flexidepth(&[
            "-t",
            "1",
            "generate",
            "-m",
            &m,
            "--depth",
            &depth,
            "-p",
            "hi",
            flag,
            "/no/such/dir/x.txt",
        ]);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(
            err.contains("does not exist") && !err.contains("loaded"),
            "{flag}: {err}"
        );
    }
}

#[test]
fn bad_stage_names_fail_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    let name = "s".repeat(300);
    std::fs::write(
        &cfg,
        format!(
            "model = \"no-such-model\"\ndata = \"d.jsonl\"\nout = \"run\"\n[[stage]]\nname = \"{name}\"\nalpha = 0.0\n"
        ),
    )
    .unwrap();
    clean_error(&["train", "--config", cfg.to_str().unwrap()], "must be 1 to 64 letters");
}

/// Kind 9: `-n` near 2^64 is "until the context is full", not a wrapped sum; perplexity's window names its flag.
#[test]
fn errors_name_the_right_cause() {
    let dir = tempfile::tempdir().unwrap();
    let m = tiny(dir.path());
    let o = flexidepth(&[
        "-t",
        "1",
        "generate",
        "-m",
        &m,
        "-p",
        "hi",
        "-n",
        "18446744073709551615",
        "--temperature",
        "0",
    ]);
    let err = text(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(!err.contains("holds 0"), "{err}");
    let f = dir.path().join("t.txt");
    std::fs::write(&f, "hi there, some text to score.").unwrap();
    let o = flexidepth(&[
        "-t",
        "1",
        "perplexity",
        "-m",
        &m,
        "-f",
        f.to_str().unwrap(),
        "--ctx",
        "1000000000",
    ]);
    let err = text(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("--ctx-size 1000000000") && !err.contains("-n"), "{err}");
}
