//! The server's settings: where it listens, who may call it, and its limits.

use std::net::SocketAddr;
use std::time::Duration;

/// How the server listens and what it accepts.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Loopback by default: exposing the server is a choice (`--host 0.0.0.0`).
    pub addr: SocketAddr,
    /// Clients must send `Authorization: Bearer KEY` (every path but `/health`).
    pub api_key: Option<String>,
    /// Sequences decoded together at most.
    pub max_batch: usize,
    /// Requests waiting for a batch slot at most (then 429).
    pub max_queue: usize,
    /// Prompt tokens processed per scheduler step at most.
    pub prefill_chunk: usize,
    /// Prompt tokens at most (default: the context minus one); longer prompts are refused with 400.
    pub max_prompt_tokens: Option<usize>,
    /// `max_tokens` at most; a request's default when it gives none is also capped by this.
    pub max_tokens_limit: usize,
    /// Request bodies larger than this are refused with 413.
    pub max_body_bytes: usize,
    /// At shutdown, running requests have this long to finish before they are cancelled.
    pub shutdown_grace: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            api_key: None,
            max_batch: 16,
            max_queue: 64,
            prefill_chunk: 128,
            max_prompt_tokens: None,
            max_tokens_limit: 4096,
            max_body_bytes: 2 << 20,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}
