//! The `flexidepth` binary end to end on the default model: what a user types and sees, errors included
//! (a clear message and a non-zero exit, never a panic).

mod common;

use common::{flexidepth, text};
use std::process::Output;

/// Fails with what a user would see when a command that should fail cleanly does not.
fn assert_clean_failure(out: &Output, needle: &str) {
    let err = text(&out.stderr);
    assert!(!out.status.success(), "should fail: {err}");
    assert!(!err.contains("panicked"), "must not panic: {err}");
    assert!(err.contains(needle), "stderr should mention {needle:?}: {err}");
}

#[test]
fn generate_answers_the_capital_of_france_with_timings() {
    let out = flexidepth(&[
        "generate",
        "--chat",
        "What is the capital of France?",
        "-n",
        "24",
        "--temperature",
        "0",
        // The f32 reference path: with the GGUF's own Q4_1 blocks (the default) this 135M model answers otherwise.
        "--dtype",
        "f32",
    ]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout.trim(), "The capital of France is Paris.");
    let last: Vec<&str> = stderr.lines().rev().take(3).collect();
    assert!(last[0].starts_with("time to first token:"), "{stderr}");
    assert!(
        last[1].starts_with("decode:") && last[1].ends_with("tokens/s"),
        "{stderr}"
    );
    assert!(
        last[2].starts_with("prompt:") && last[2].ends_with("tokens/s"),
        "{stderr}"
    );
}

#[test]
fn seeded_sampling_is_reproducible_and_stop_strings_cut() {
    let args = [
        "generate",
        "-p",
        "Once upon a time",
        "-n",
        "16",
        "--temperature",
        "0.9",
        "--seed",
        "3",
    ];
    let a = flexidepth(&args);
    let b = flexidepth(&args);
    assert!(a.status.success(), "{}", text(&a.stderr));
    assert_eq!(a.stdout, b.stdout);
    let greedy_args = [
        "generate",
        "-p",
        "The capital of France is",
        "-n",
        "8",
        "--temperature",
        "0",
    ];
    let greedy = text(&flexidepth(&greedy_args).stdout);
    let cut = flexidepth(&[&greedy_args[..], &["--stop", "Paris"]].concat());
    let cut_text = text(&cut.stdout);
    assert!(greedy.contains("Paris"), "{greedy}");
    assert_eq!(cut_text.trim_end(), greedy[..greedy.find("Paris").unwrap()].trim_end());
    assert!(text(&cut.stderr).contains("stop reason: stop string"));
}

#[test]
fn tokenize_info_and_perplexity() {
    let out = flexidepth(&["tokenize", "-p", "Hello, world!"]);
    assert_eq!(text(&out.stdout).trim(), "[19556,28,905,17]");

    let out = flexidepth(&["info", "-m", "smollm2-135m-instruct"]);
    let info = text(&out.stdout);
    assert!(
        info.contains("LlamaForCausalLM") && info.contains("layers:            30"),
        "{info}"
    );
    assert!(info.contains("Q4_1") && info.contains("134.5 M"), "{info}");

    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("t.txt");
    std::fs::write(&f, "The quick brown fox jumps over the lazy dog. ".repeat(20)).unwrap();
    let out = flexidepth(&["perplexity", "-f", f.to_str().unwrap(), "--ctx", "64"]);
    let s = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        s.starts_with("scoring: all positions of each 64-token window\ntokens: 64  mean NLL: "),
        "{s}"
    );
    // A repeated sentence is easy: perplexity far below the vocabulary size.
    let ppl: f64 = s
        .split("perplexity: ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(ppl > 1.0 && ppl < 20.0, "{ppl}");
}

#[test]
fn bad_input_gives_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let bad_utf8 = dir.path().join("bad.txt");
    std::fs::write(&bad_utf8, b"hello \xff\xfe world").unwrap();
    assert_clean_failure(
        &flexidepth(&["perplexity", "-f", bad_utf8.to_str().unwrap()]),
        "not valid UTF-8 at byte 6",
    );
    assert_clean_failure(
        &flexidepth(&["generate", "-f", bad_utf8.to_str().unwrap()]),
        "not valid UTF-8",
    );

    let long = dir.path().join("long.txt");
    std::fs::write(&long, "hello ".repeat(9000)).unwrap();
    assert_clean_failure(
        &flexidepth(&["generate", "-f", long.to_str().unwrap(), "-n", "4"]),
        "context window holds 8192",
    );

    assert_clean_failure(&flexidepth(&["generate", "-p", "", "-n", "4"]), "the prompt is empty");
    assert_clean_failure(&flexidepth(&["generate", "-m", "nope.gguf", "-p", "x"]), "not found");
    assert_clean_failure(
        &flexidepth(&["perplexity", "-f", "/no/such/file.txt"]),
        "/no/such/file.txt",
    );
    assert_clean_failure(
        &flexidepth(&["generate", "--dtype", "f64", "-p", "x"]),
        "invalid value 'f64' for '--dtype",
    );

    let junk = dir.path().join("junk.gguf");
    std::fs::write(&junk, b"GGUF\x03\x00\x00\x00\xff\xff\xff\xff\xff\xff\xff\xff").unwrap();
    assert_clean_failure(&flexidepth(&["info", "-m", junk.to_str().unwrap()]), "junk.gguf");
}

#[test]
fn convert_writes_a_loadable_hf_folder() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("hf");
    let out = flexidepth(&[
        "convert",
        "-m",
        "smollm2-135m-instruct",
        "-o",
        out_dir.to_str().unwrap(),
        "--dtype",
        "bf16",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let cfg = std::fs::read_to_string(out_dir.join("config.json")).unwrap();
    assert!(cfg.contains("\"torch_dtype\": \"bfloat16\""), "{cfg}");
    // bf16 weights change the logits a little, not the answer.
    let out = flexidepth(&[
        "generate",
        "-m",
        out_dir.to_str().unwrap(),
        "--chat",
        "What is the capital of France?",
        "-n",
        "12",
        "--temperature",
        "0",
    ]);
    assert!(
        text(&out.stdout).contains("Paris"),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}
