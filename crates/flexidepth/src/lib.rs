//! flexidepth: an engine for adaptive-depth LLM inference on candle.
//!
//! The pieces, each in its own module: [`config`] (one resolved model config), [`escape`] (backslash escapes in typed text), [`weights`] (GGUF and
//! safetensors by HF tensor name), [`tokenizer`] and [`chat`], [`model`] (the decoder stack), [`depth`] (depth
//! policies and the FlexiDepth adapter file), [`cache`] (the KV cache, outside the model), [`generate`]
//! (sampler, streaming, decode loop), [`dmtd`] (Direct Multi-Token Decoding), [`trace`] (per-token depth records), [`convert`] (GGUF → HF folder) and
//! [`loader`] (finding and opening models); [`rng`] is the one seeded generator for every reproducible draw; [`tmpfiles`] tracks the temporary files of atomic writes. Training lives in `flexidepth-train`, experiments and reports in
//! `flexidepth-experiments`; neither is a dependency of this crate.

pub mod cache;
pub mod chat;
pub mod config;
pub mod convert;
pub mod depth;
pub mod dmtd;
pub mod error;
pub mod escape;
pub mod finite;
pub mod generate;
pub mod kernels;
pub mod loader;
pub mod model;
pub mod rng;
pub mod template_bounds;
pub mod tmpfiles;
pub mod tokenizer;
pub mod trace;
pub mod weights;

pub use error::{Error, Result};
