//! The faults of issue 15 and the flag conventions of issue 9, each kind with several inputs, end to end on the
//! default models: the end-of-generation set, escapes in stop strings, values that start with `-`, sampling
//! values out of their domain, `-n 0`, perplexity's scoring, `--verbose-prompt`, and llama.cpp's flag names.

mod common;

use common::{flexidepth, text};

fn ok(args: &[&str]) -> (String, String) {
    let out = flexidepth(args);
    let (o, e) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{args:?} failed: {e}");
    (o, e)
}

fn fails(args: &[&str], needle: &str) -> String {
    let out = flexidepth(args);
    let e = text(&out.stderr);
    assert!(!out.status.success(), "{args:?} should fail");
    assert!(!e.contains("panicked"), "{e}");
    assert!(e.contains(needle), "{args:?}: stderr should mention {needle:?}: {e}");
    e
}

const QWEN: &str = "qwen2.5-coder-0.5b-instruct";

#[test]
fn end_of_generation_set_covers_end_of_text_and_end_of_turn() {
    // Qwen2.5's GGUF names only <|im_end|> (151645); <|endoftext|> (151643) ends generation too.
    let (info, _) = ok(&["info", "-m", QWEN]);
    assert!(info.contains("eos token ids:     [151643, 151645]"), "{info}");
    // SmolLM2: <|endoftext|> (0) and <|im_end|> (2).
    let (info, _) = ok(&["info"]);
    assert!(info.contains("eos token ids:     [0, 2]"), "{info}");
    // The model's first token after a finished turn is <|endoftext|>: nothing is printed, the reason is EOS.
    let (out, err) = ok(&[
        "generate",
        "-m",
        QWEN,
        "-p",
        "<|im_start|>user\nSay hi.<|im_end|>\n<|im_start|>assistant\nHi!<|im_end|>\n",
        "-n",
        "16",
        "--temp",
        "0",
    ]);
    assert_eq!(out.trim(), "", "{err}");
    assert!(
        err.contains("stop reason: eos") && err.contains("decode: 1 tokens"),
        "{err}"
    );
    // convert writes the whole set, and the folder it makes reads it back.
    let dir = tempfile::tempdir().unwrap();
    let hf = dir.path().join("hf");
    ok(&["convert", "-o", hf.to_str().unwrap()]);
    let gen: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(hf.join("generation_config.json")).unwrap()).unwrap();
    assert_eq!(gen["eos_token_id"], serde_json::json!([0, 2]));
    let (info, _) = ok(&["info", "-m", hf.to_str().unwrap()]);
    assert!(info.contains("eos token ids:     [0, 2]"), "{info}");
    // generation_config.json's single-id form, with the list in config.json: still the whole set.
    std::fs::write(hf.join("generation_config.json"), r#"{"eos_token_id": 2}"#).unwrap();
    let (info, _) = ok(&["info", "-m", hf.to_str().unwrap()]);
    assert!(info.contains("eos token ids:     [0, 2]"), "{info}");
}

#[test]
fn escapes_in_stop_strings() {
    // The README's example: "\n\n" typed with backslashes stops at the blank line.
    let (out, err) = ok(&[
        "generate",
        "-m",
        QWEN,
        "-p",
        "def add(a, b):",
        "-n",
        "30",
        "--temperature",
        "0",
        "--stop",
        "\\n\\n",
    ]);
    assert!(err.contains("stop reason: stop string"), "{err}");
    assert!(
        out.contains("return a + b") && !out.trim_end().contains("\n\n"),
        "{out:?}"
    );
    // The same stop written as \u and \x escapes and through -r / --reverse-prompt, on the default model.
    let base = ["generate", "-p", "The capital of France is", "-n", "8", "--temp", "0"];
    let (full, _) = ok(&base);
    assert!(full.contains("Paris"), "{full}");
    let want = full[..full.find("Paris").unwrap()].trim_end().to_string();
    for stop in [
        ["--stop", "\\u0050aris"],
        ["-r", "\\x50aris"],
        ["--reverse-prompt", "P\\u0061ris"],
    ] {
        let (cut, err) = ok(&[&base[..], &stop[..]].concat());
        assert_eq!(cut.trim_end(), want, "{stop:?}");
        assert!(err.contains("stop reason: stop string"), "{stop:?}: {err}");
    }
    // An escaped backslash is a backslash, not a newline: the stop never matches.
    let (kept, err) = ok(&[&base[..], &["--stop", "\\\\n"]].concat());
    assert_eq!(kept, full);
    assert!(err.contains("stop reason: max tokens"), "{err}");
    fails(&[&base[..], &["--stop", ""]].concat(), "stop string");
}

#[test]
fn values_may_start_with_a_hyphen() {
    let (a, _) = ok(&["tokenize", "-p", "->"]);
    let (b, _) = ok(&["tokenize", "--prompt=->"]);
    assert_eq!(a, b);
    assert_ne!(a.trim(), "[]");
    for p in ["-", "--", "-n 5", "--help"] {
        let (ids, _) = ok(&["tokenize", "-p", p]);
        assert!(ids.starts_with('[') && ids.trim() != "[]", "{p}: {ids}");
    }
    ok(&["generate", "-p", "- milk", "-n", "2", "--temp", "0"]);
    ok(&["generate", "--chat", "-5 + 3 = ?", "-n", "2", "--temp", "0"]);
    ok(&[
        "generate",
        "--chat",
        "hi",
        "--system",
        "-be brief-",
        "-n",
        "1",
        "--temp",
        "0",
    ]);
    // A negative number reaches the domain check instead of being read as a flag.
    fails(&["generate", "-p", "x", "--temperature", "-1"], "--temperature must be");
}

#[test]
fn sampling_values_outside_their_domain_are_refused_before_loading() {
    for (flag, value, needle) in [
        ("--repeat-penalty", "0", "--repeat-penalty must be a number > 0"),
        ("--repeat-penalty", "-1", "--repeat-penalty must be a number > 0"),
        ("--top-p", "-0.5", "--top-p must be a number in (0, 1]"),
        ("--top-p", "0", "--top-p must be a number in (0, 1]"),
        ("--top-p", "1.01", "--top-p must be"),
        ("--min-p", "2", "--min-p must be a number in [0, 1]"),
        ("--min-p", "-0.1", "--min-p must be"),
        ("--temp", "-0.5", "--temperature must be a number ≥ 0"),
        ("--temperature", "nan", "--temperature must be"),
        ("--temperature", "inf", "--temperature must be"),
    ] {
        let e = fails(&["generate", "-p", "x", flag, value], needle);
        assert!(!e.contains("loaded"), "{flag} {value}: refused only after loading: {e}");
    }
    // Values on the edges of the domains are fine.
    ok(&[
        "generate",
        "-p",
        "x",
        "-n",
        "1",
        "--top-p",
        "1",
        "--min-p",
        "1",
        "--repeat-penalty",
        "0.5",
        "--temp",
        "0",
    ]);
}

#[test]
fn n_zero_generates_nothing_and_computes_nothing() {
    for args in [
        vec!["generate", "-p", "Hello", "-n", "0"],
        vec!["generate", "--chat", "Hello", "--max-new-tokens", "0", "--temp", "0.7"],
    ] {
        let (out, err) = ok(&args);
        assert_eq!(out.trim(), "", "{args:?}");
        assert!(
            err.contains("not computed (-n 0)") && err.contains("decode: 0 tokens"),
            "{err}"
        );
    }
}

#[test]
fn verbose_prompt_shows_the_rendered_text_and_its_ids() {
    let (_, err) = ok(&["generate", "--chat", "Hi", "-n", "0", "--verbose-prompt"]);
    assert!(err.contains("prompt: \"<|im_start|>system\\n"), "{err}");
    assert!(
        err.contains("<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n\""),
        "{err}"
    );
    let (ids, _) = ok(&["tokenize", "-p", "Hello, world!"]);
    let (_, err) = ok(&["generate", "-p", "Hello, world!", "-n", "0", "--verbose-prompt"]);
    let shown: Vec<String> = err
        .lines()
        .filter_map(|l| l.split_once(" -> ").map(|(id, _)| id.trim().to_string()))
        .collect();
    assert_eq!(format!("[{}]", shown.join(",")), ids.trim(), "{err}");
    assert!(err.contains("number of tokens in prompt = 4"), "{err}");
    // Without the flag nothing of it is printed.
    let (_, err) = ok(&["generate", "-p", "Hello, world!", "-n", "0"]);
    assert!(!err.contains(" -> "), "{err}");
}

#[test]
fn perplexity_says_what_it_scored() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("t.txt");
    std::fs::write(
        &f,
        "It is a truth universally acknowledged, that a single man in possession. ".repeat(30),
    )
    .unwrap();
    let f = f.to_str().unwrap();
    let ppl = |out: &str| -> (f64, usize) {
        let line = out.lines().nth(1).unwrap();
        let field = |name: &str| {
            line.split(name)
                .nth(1)
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap()
                .to_string()
        };
        (
            field("perplexity: ").parse().unwrap(),
            field("scored: ").parse().unwrap(),
        )
    };
    let (all, _) = ok(&["perplexity", "-f", f, "-c", "64"]);
    assert!(
        all.starts_with("scoring: all positions of each 64-token window\ntokens: 64"),
        "{all}"
    );
    assert_eq!(ppl(&all).1, 63);
    let (half, _) = ok(&["perplexity", "-f", f, "--ctx-size", "64", "--scoring", "second-half"]);
    assert!(
        half.starts_with("scoring: second half of each 64-token window (llama-perplexity)"),
        "{half}"
    );
    assert_eq!(ppl(&half).1, 31);
    // With more context each scored token is easier on a repeated sentence.
    assert!(ppl(&half).0 < ppl(&all).0, "{half} {all}");
    let (strided, _) = ok(&[
        "perplexity",
        "-f",
        f,
        "--ctx",
        "64",
        "--stride",
        "32",
        "--max-tokens",
        "128",
    ]);
    assert!(
        strided.contains("transformers' strided") && strided.contains("windows: 3"),
        "{strided}"
    );
    assert_eq!(ppl(&strided).1, 127);
    let e = fails(
        &["perplexity", "-f", f, "-c", "9000"],
        "--ctx-size 9000 is longer than the model's context",
    );
    assert!(!e.contains("-n"), "{e}");
    fails(
        &["perplexity", "-f", f, "-c", "64", "--stride", "0"],
        "--stride must be",
    );
    fails(&["perplexity", "-f", f, "--scoring", "first-half"], "invalid value");
}

#[test]
fn llama_cpp_names_are_aliases_of_ours() {
    let run = |args: &[&str]| ok(args).0;
    let a = run(&[
        "generate",
        "-p",
        "Once upon a time",
        "-n",
        "6",
        "--temperature",
        "0.9",
        "--seed",
        "3",
    ]);
    let b = run(&[
        "generate",
        "-p",
        "Once upon a time",
        "--n-predict",
        "6",
        "--temp",
        "0.9",
        "-s",
        "3",
    ]);
    let c = run(&[
        "generate",
        "-p",
        "Once upon a time",
        "--max-new-tokens",
        "6",
        "--temp",
        "0.9",
        "-s",
        "3",
    ]);
    assert_eq!(a, b);
    assert_eq!(a, c);
    // -f reads the prompt from a file, like -p.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p.txt");
    std::fs::write(&p, "Once upon a time").unwrap();
    assert_eq!(
        run(&[
            "generate",
            "-f",
            p.to_str().unwrap(),
            "-n",
            "6",
            "--temp",
            "0.9",
            "-s",
            "3"
        ]),
        a
    );
    // A GGUF model runs on its blocks by default; f32 stays available.
    let (_, err) = ok(&["generate", "-p", "Hi", "-n", "1"]);
    assert!(err.contains("layers, q)"), "{err}");
    let (_, err) = ok(&["generate", "-p", "Hi", "-n", "1", "--dtype", "f32"]);
    assert!(err.contains("layers, f32)"), "{err}");
    fails(
        &["generate", "--dtype", "f64", "-p", "x"],
        "invalid value 'f64' for '--dtype",
    );
    fails(
        &["generate", "--depth-mode", "sometimes", "-p", "x"],
        "possible values: dynamic, run, skip",
    );
    fails(&["bench", "-o", "xml"], "possible values: md, csv, json");
}
