//! `flexidepth compare`'s argument errors: a clear message and a non-zero exit, before any model or data loads.

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
    assert!(!dir.path().join("grid").exists(), "nothing written on a bad argument");
}
