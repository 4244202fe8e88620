//! Shared helpers of the integration tests: the default models (loaded once per test binary) and the fixture.

#![allow(dead_code)]

pub mod dmtd_ref;
pub mod tiny;
pub mod tiny_gguf;

use flexidepth::loader::ModelFiles;
use flexidepth::model::{Model, WeightFormat};
use serde_json::Value;
use std::sync::OnceLock;

pub const MODELS: [&str; 2] = ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"];

/// The reference outputs (copied from `shared/fixtures/golden-logits.json`).
pub fn golden() -> &'static Value {
    static G: OnceLock<Value> = OnceLock::new();
    G.get_or_init(|| {
        let text = include_str!("../fixtures/golden-logits.json");
        serde_json::from_str(text).expect("the fixture is valid JSON")
    })
}

pub fn golden_model(name: &str) -> &'static Value {
    &golden()["models"][name]
}

/// A default model, opened and loaded in f32 once per test binary. The models are fetched by
/// `scripts/fetch-models.sh` (the README's test command runs it); a missing one fails the test with that hint.
pub fn model(name: &str) -> &'static (ModelFiles, Model) {
    static SMOL: OnceLock<(ModelFiles, Model)> = OnceLock::new();
    static QWEN: OnceLock<(ModelFiles, Model)> = OnceLock::new();
    let cell = match name {
        "smollm2-135m-instruct" => &SMOL,
        "qwen2.5-coder-0.5b-instruct" => &QWEN,
        other => panic!("no such test model {other}"),
    };
    cell.get_or_init(|| {
        let files = ModelFiles::open(name).unwrap_or_else(|e| panic!("{e}"));
        let model = files
            .load_model(WeightFormat::F32, &candle_core::Device::Cpu)
            .unwrap_or_else(|e| panic!("{e}"));
        (files, model)
    })
}

pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

pub fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// The fixture's perplexity passage: Pride and Prejudice from "It is a truth universally acknowledged" on, lines
/// joined by newlines (from `scripts/fetch-data.sh`'s `data/austen/prideprejudice.txt`). 200 lines are far more
/// than the 512 tokens scored.
pub fn pride_passage() -> String {
    let path = flexidepth::loader::cache_dir().join("data/austen/prideprejudice.txt");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; fetch it with scripts/fetch-data.sh austen", path.display()));
    let lines: Vec<&str> = text.split('\n').collect();
    let start = lines
        .iter()
        .position(|l| l.starts_with("It is a truth universally acknowledged"))
        .expect("the novel's first sentence");
    lines[start..start + 200].join("\n")
}
