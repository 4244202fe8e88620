//! `flexidepth data` end to end on the default model and the fetched corpora: a tiny build is reproducible and
//! well-formed; missing data and a bad destination fail cleanly.

mod common;

use common::{flexidepth, text};

#[test]
fn a_tiny_build_is_reproducible_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    let paths = [dir.path().join("a.jsonl"), dir.path().join("b.jsonl")];
    for p in &paths {
        let out = flexidepth(&[
            "data",
            "-o",
            p.to_str().unwrap(),
            "--instructions",
            "3",
            "--texts",
            "2",
            "--max-new-tokens",
            "8",
            "--seed",
            "7",
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(text(&out.stderr).contains("by task:"));
    }
    let a = std::fs::read_to_string(&paths[0]).unwrap();
    assert_eq!(a, std::fs::read_to_string(&paths[1]).unwrap());
    let lines: Vec<serde_json::Value> = a.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(lines.len() >= 3, "{a}");
    for v in &lines {
        let source = v["source"].as_str().unwrap();
        assert!(source.starts_with("austen:") || source.starts_with("kjv:"), "{source}");
        assert!(!source.contains("persuasion"));
        if v["task"] == "text" {
            assert!(v["text"].as_str().is_some_and(|t| !t.is_empty()));
        } else {
            let m = v["messages"].as_array().unwrap();
            assert_eq!(
                (m[0]["role"].as_str(), m[1]["role"].as_str()),
                (Some("user"), Some("assistant"))
            );
        }
    }
}

#[test]
fn missing_data_and_bad_output_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flexidepth"))
        .args(["data", "-o", dir.path().join("x.jsonl").to_str().unwrap()])
        .env("FLEXIDEPTH_CACHE", dir.path())
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert!(!out.status.success() && !err.contains("panicked"), "{err}");
    assert!(err.contains("scripts/fetch-data.sh"), "{err}");

    let out = flexidepth(&["data", "-o", "/no/such/folder/x.jsonl"]);
    let err = text(&out.stderr);
    assert!(!out.status.success() && err.contains("/no/such/folder"), "{err}");
}
