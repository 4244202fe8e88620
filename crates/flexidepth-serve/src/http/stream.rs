//! From the scheduler's events to responses: gathered whole for a plain response, or as server-sent events
//! (`data: {chunk}` per token, `data: [DONE]` at the end) for `stream: true`. The receiver lives in the response:
//! when the client goes away, the response is dropped, the receiver with it, and the scheduler cancels the request.

use super::error::ApiError;
use crate::engine::ModelInfo;
use crate::request::{Event, Finish, TokenLogprob};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::convert::Infallible;
use tokio::sync::mpsc::UnboundedReceiver;

/// A whole generation, gathered from its events.
#[derive(Debug, Default)]
pub struct Collected {
    /// The shown text (stop strings and special tokens excluded).
    pub text: String,
    pub ids: Vec<u32>,
    /// One per generated token, when logprobs were asked for.
    pub logprobs: Vec<TokenLogprob>,
    /// Layers used per generated token.
    pub layers: Vec<f64>,
    /// One per prompt token, when prompt logprobs were asked for.
    pub prompt_logprobs: Option<Vec<Option<TokenLogprob>>>,
    pub finish: Option<Finish>,
}

/// Wait for the whole generation.
pub async fn collect(mut rx: UnboundedReceiver<Event>) -> Result<Collected, ApiError> {
    let mut c = Collected::default();
    while let Some(event) = rx.recv().await {
        match event {
            Event::Prompt(p) => c.prompt_logprobs = Some(p),
            Event::Token {
                id,
                text,
                logprob,
                layers,
            } => {
                c.ids.push(id);
                c.text.push_str(&text);
                c.logprobs.extend(logprob);
                c.layers.push(layers);
            }
            Event::Done(finish) => {
                c.text.push_str(&finish.tail);
                c.finish = Some(finish);
                return Ok(c);
            }
            Event::Error(f) => return Err(ApiError::with_status(f.status, f.message)),
        }
    }
    Err(ApiError::internal("the scheduler stopped before the request finished"))
}

/// The `depth` object of a response: mean layers per generated token (`null` without any), and per token on request.
pub fn depth_json(info: &ModelInfo, policy: &str, layers: &[f64], per_token: bool) -> Value {
    let mean = (!layers.is_empty()).then(|| layers.iter().sum::<f64>() / layers.len() as f64);
    let mut v = json!({
        "num_layers": info.num_layers,
        "policy": policy,
        "generated_tokens": layers.len(),
        "mean_layers": mean,
    });
    if per_token {
        v["tokens"] = json!(layers);
    }
    v
}

/// OpenAI's `usage`.
pub fn usage_json(prompt_tokens: usize, completion_tokens: usize) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    })
}

/// Seconds since the epoch (`created`).
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A fresh response id with `prefix` (`chatcmpl`, `cmpl`).
pub fn response_id(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{prefix}-{:x}{:06x}", now_secs(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// What an endpoint puts in its stream chunks.
pub trait Chunker: Send + 'static {
    /// Chunks sent before any event (chat: the assistant's role).
    fn start(&mut self) -> Vec<Value> {
        vec![]
    }
    /// The prompt's logprobs (completions' echo).
    fn prompt(&mut self, _logprobs: &[Option<TokenLogprob>]) -> Vec<Value> {
        vec![]
    }
    /// One generated token (its text may be empty).
    fn token(&mut self, text: &str, logprob: Option<&TokenLogprob>, layers: f64) -> Vec<Value>;
    /// The end: the finish reason, `depth`, and `usage` when asked for.
    fn finish(&mut self, finish: &Finish) -> Vec<Value>;
}

/// The events of `rx` as server-sent events, ending with `data: [DONE]` (after an error object, on failure).
pub fn sse(rx: UnboundedReceiver<Event>, mut chunker: impl Chunker) -> Response {
    let to_sse = |values: Vec<Value>| -> Vec<Result<SseEvent, Infallible>> {
        values
            .iter()
            .map(|v| Ok(SseEvent::default().data(v.to_string())))
            .collect()
    };
    let start = futures_util::stream::iter(to_sse(chunker.start()));
    let body = futures_util::stream::unfold(
        (rx, chunker, false),
        move |(mut rx, mut chunker, finished)| async move {
            if finished {
                return None;
            }
            let (out, done) = match rx.recv().await {
                Some(Event::Prompt(p)) => (chunker.prompt(&p), false),
                Some(Event::Token {
                    text, logprob, layers, ..
                }) => (chunker.token(&text, logprob.as_ref(), layers), false),
                Some(Event::Done(finish)) => (chunker.finish(&finish), true),
                Some(Event::Error(f)) => (vec![ApiError::with_status(f.status, f.message).body()], true),
                None => (
                    vec![ApiError::internal("the scheduler stopped before the request finished").body()],
                    true,
                ),
            };
            let mut events = to_sse(out);
            if done {
                events.push(Ok(SseEvent::default().data("[DONE]")));
            }
            Some((events, (rx, chunker, done)))
        },
    )
    .flat_map(futures_util::stream::iter);
    Sse::new(start.chain(body)).into_response()
}
