//! flexidepth-experiments: the experiments and reports built on the engine and the trainer.
//!
//! [`compare`] (the paper's method comparison, retain %), [`eval`] (perplexity, quality against full depth), [`study`] (the paper's layer-usage experiment),
//! [`corpus`] and [`dataset`] (training and evaluation text, the self-distillation data builder), [`bench`]
//! (llama-bench-style speed; [`bench_dmtd`] its DMTD rows, [`bench_batched`] its batched decode), [`depthmap`] (per-token depth maps), [`plot`] and [`curves`] (SVG charts).
//! Nothing in the engine or the trainer depends on this crate.

pub mod bench;
pub mod bench_batched;
pub mod bench_dmtd;
pub mod compare;
pub mod corpus;
pub mod curves;
pub mod dataset;
pub mod depthmap;
pub mod dmtd_quality;
pub mod eval;
pub mod frontier;
pub mod plot;
pub mod replaceability;
pub mod study;
pub mod tasks;
