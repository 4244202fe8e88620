//! `flexidepth serve`: an OpenAI-compatible HTTP server for a flexidepth model, with depth telemetry and continuous
//! batching.
//!
//! The pieces: [`config`] (address, key, limits), [`engine`] (the model and what the handlers know of it),
//! [`request`] (what a handler asks of the scheduler and the events it gets back), [`scheduler`] (the thread that
//! owns the model: continuous batching, chunked prompts, a bounded queue, cancellation), [`sequence`] (one request
//! in the batch), [`logprobs`], [`metrics`] (Prometheus text), [`http`] (axum routes: chat, completions, models,
//! health, metrics, tokenize, detokenize; OpenAI's error shape) and [`server`] (starting and stopping it all).
//!
//! Endpoints follow OpenAI's API as `llama-server` and vLLM serve it; responses add a `depth` object (the layers
//! each generated token used) and requests may set `skip_threshold`, `depth_mode` and `depth_tokens`.

pub mod config;
pub mod engine;
pub mod http;
pub mod logprobs;
pub mod metrics;
pub mod request;
pub mod scheduler;
mod sequence;
pub mod server;

pub use config::ServeConfig;
pub use engine::Engine;
pub use server::Server;
