//! Helpers of the CLI tests: run the binary, read its output.

#![allow(dead_code)]

use std::process::{Command, Output};

/// Run `flexidepth` with `args`.
pub fn flexidepth(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flexidepth"))
        .args(args)
        .output()
        .expect("the binary runs")
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
