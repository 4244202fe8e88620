//! `flexidepth compare`'s argument errors: a clear message and a non-zero exit, before any model or data loads
//! (budgets that round to the same layer count: right after the model loads).

mod common;

use common::{flexidepth, text};

#[test]
fn bad_budgets_and_tasks_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("grid");
    let out = out.to_str().unwrap();
    for (budgets, needle) in [
        ("0", "must be above 0"),
        ("3/2", "must be at most 1"),
        ("1/8,x", "bad budget 'x'"),
        ("1/0", "division by zero"),
        ("-0.25", "must be above 0"),
        ("1/8,1/8", "given twice"),
        ("1/8,0.125", "given twice"),
    ] {
        let o = flexidepth(&["compare", &format!("--budgets={budgets}"), "-o", out]);
        let err = text(&o.stderr);
        assert!(!o.status.success(), "{budgets}: should fail");
        assert!(!err.contains("panicked"), "{budgets}: {err}");
        assert!(err.contains(needle), "{budgets}: {err}");
    }
    let o = flexidepth(&["compare", "--budgets", "1/8", "--tasks", "mmlu,humaneval", "-o", out]);
    assert!(text(&o.stderr).contains("--confirm-run-unsafe-code"));
    let o = flexidepth(&["compare", "--budgets", "1/8", "--tasks", "mmlu,nope", "-o", out]);
    assert!(text(&o.stderr).contains("unknown task 'nope'"));
    // The task options eval and compare share, checked alike by both.
    for (flag, value, needle) in [
        ("--batch-size", "0", "--batch-size must be in 1..=64"),
        ("--batch-size", "65", "--batch-size must be in 1..=64"),
        ("--limit", "0", "--limit must be at least 1"),
        ("--code-timeout", "0", "--code-timeout must be in (0, 600]"),
    ] {
        for cmd in [&["compare", "--budgets", "1/8", "-o", out][..], &["eval"][..]] {
            let o = flexidepth(&[cmd, &["--tasks", "arc_easy", flag, value]].concat());
            let err = text(&o.stderr);
            assert!(
                !o.status.success() && err.contains(needle),
                "{cmd:?} {flag} {value}: {err}"
            );
        }
    }
    // Different budgets that round to the same layer count on the model (1/8 and 0.13 of 30 layers: both 4).
    let o = flexidepth(&["compare", "--budgets", "1/8,0.13", "--tasks", "arc_easy", "-o", out]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("both skip 4 of 30 layers"),
        "{}",
        text(&o.stderr)
    );
    assert!(!dir.path().join("grid").exists(), "nothing written on a bad argument");
    // --report-only runs no cell: on a fresh folder there is nothing to report.
    let o = flexidepth(&[
        "compare",
        "--budgets",
        "1/8",
        "--tasks",
        "arc_easy",
        "--report-only",
        "-o",
        out,
    ]);
    let err = text(&o.stderr);
    assert!(!o.status.success() && err.contains("no full-depth cell"), "{err}");
    assert!(!err.contains("running"), "{err}");
}
