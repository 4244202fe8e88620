//! flexidepth: an engine for adaptive-depth LLM inference on candle.
//!
//! The pieces, each in its own module: [`config`] (one resolved model config), [`weights`] (GGUF and
//! safetensors by HF tensor name), [`tokenizer`] and [`chat`], [`model`] (the decoder stack), [`cache`] (the KV
//! cache, outside the model), [`generate`] (sampler, streaming, decode loop), [`eval`] (perplexity, and
//! quality against full depth), [`plot`] (SVG charts), [`convert`] (GGUF → HF folder), [`loader`] (finding and
//! opening models), [`corpus`] and [`dataset`] (training data), [`train`] (routers and adapters on a frozen base)
//! and [`study`] (the layer-usage experiment).

pub mod bench;
pub mod cache;
pub mod chat;
pub mod config;
pub mod convert;
pub mod corpus;
pub mod dataset;
pub mod depth;
pub mod depthmap;
pub mod error;
pub mod eval;
pub mod generate;
pub mod kernels;
pub mod loader;
pub mod model;
pub mod plot;
pub mod study;
pub mod tokenizer;
pub mod trace;
pub mod train;
pub mod weights;

pub use error::{Error, Result};
