//! The HTTP side: axum routes for OpenAI's API and ours, the shared state, the API-key check and the request and
//! error counters. Handlers validate and tokenize; the scheduler thread does the computing.

pub mod body;
pub mod chat;
pub mod completions;
pub mod error;
pub mod misc;
pub mod params;
pub mod stream;

pub use crate::config::ServeConfig;
use crate::engine::ModelInfo;
use crate::metrics::Metrics;
use crate::request::{Event, GenRequest};
use crate::scheduler::{Queue, SubmitError};
use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use error::ApiError;
use flexidepth::tokenizer::Tokenizer;
use std::sync::Arc;
use tokio::sync::mpsc::UnboundedReceiver;

/// What every handler reads.
pub struct AppState {
    pub config: ServeConfig,
    pub info: ModelInfo,
    pub tokenizer: Arc<Tokenizer>,
    pub queue: Arc<Queue>,
    pub metrics: Arc<Metrics>,
    /// When the server started (`created` of the model object).
    pub created: u64,
}

impl AppState {
    /// Queue a generation: 429 when the queue is full, 503 when shutting down.
    pub fn submit(&self, req: GenRequest) -> Result<UnboundedReceiver<Event>, ApiError> {
        self.queue.submit(req).map_err(|e| match e {
            SubmitError::QueueFull => ApiError::queue_full(),
            SubmitError::ShuttingDown => ApiError::shutting_down(),
        })
    }
}

/// The endpoints, in the order the router lists them (the metrics' `endpoint` label).
const ENDPOINTS: [&str; 9] = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/models",
    "/health",
    "/metrics",
    "/tokenize",
    "/detokenize",
    "/tokenizer_info",
    "/v1/models/{id}",
];

/// Every route, behind the API-key check and the counters.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(ENDPOINTS[0], post(chat::chat_completions))
        .route(ENDPOINTS[1], post(completions::completions))
        .route(ENDPOINTS[2], get(misc::models))
        .route(ENDPOINTS[3], get(misc::health))
        .route(ENDPOINTS[4], get(misc::metrics))
        .route(ENDPOINTS[5], post(misc::tokenize))
        .route(ENDPOINTS[6], post(misc::detokenize))
        .route(ENDPOINTS[7], get(misc::tokenizer_info))
        .route(ENDPOINTS[8], get(misc::model))
        .fallback(|| async { ApiError::not_found("this path") })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(middleware::from_fn_with_state(state.clone(), check_key))
        .layer(middleware::from_fn_with_state(state.clone(), count))
        .with_state(state)
}

/// With `--api-key`, every path but `/health` needs `Authorization: Bearer KEY`.
async fn check_key(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(key) = &state.config.api_key {
        let given = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        // Compared in constant time, so that the answer's timing says nothing about the key.
        let ok = given.is_some_and(|g| {
            g.len() == key.len() && g.bytes().zip(key.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
        });
        if !ok && req.uri().path() != "/health" {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(req).await
}

/// Count the request by endpoint and, if it failed, its status.
async fn count(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let endpoint = if path.starts_with("/v1/models/") {
        ENDPOINTS[8]
    } else {
        ENDPOINTS.iter().find(|&&e| e == path).copied().unwrap_or("other")
    };
    state.metrics.request(endpoint);
    let resp = next.run(req).await;
    if resp.status().is_client_error() || resp.status().is_server_error() {
        state.metrics.error(resp.status().as_u16());
    }
    resp
}
