//! The small endpoints: `GET /v1/models`, `GET /health`, `GET /metrics`, `POST /tokenize`, `POST /detokenize`,
//! `GET /tokenizer_info` (llama-server's and vLLM's shapes; lm-evaluation-harness tokenizes through the last three
//! when a server has them, so it needs no tokenizer files of its own).

use super::body::JsonBody;
use super::error::ApiError;
use super::AppState;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use flexidepth::chat::Message;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

/// The model as `/v1/models` lists it, with our extras under `meta`.
fn model_json(state: &AppState) -> Value {
    let info = &state.info;
    json!({
        "id": info.name,
        "object": "model",
        "created": state.created,
        "owned_by": "flexidepth",
        "meta": {
            "context_length": info.context,
            "num_layers": info.num_layers,
            "routed_layers": info.routed_layers,
            "skip_threshold": (!info.routed_layers.is_empty()).then_some(info.depth.skip_threshold),
        },
    })
}

pub async fn models(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({ "object": "list", "data": [model_json(&state)] }))
}

pub async fn model(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    if id != state.info.name {
        return Err(ApiError::not_found(&format!("model '{id}'")));
    }
    Ok(Json(model_json(&state)))
}

/// 200 while serving, 503 once shutting down.
pub async fn health(State(state): State<Arc<AppState>>) -> Response {
    if state.queue.is_closed() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "shutting down" })),
        )
            .into_response();
    }
    Json(json!({ "status": "ok" })).into_response()
}

pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

/// `POST /tokenize`: text (`content`, or vLLM's `prompt`) or chat `messages` (template applied).
#[derive(Debug, Deserialize)]
pub struct TokenizeRequest {
    #[serde(alias = "prompt")]
    pub content: Option<String>,
    /// Apply the tokenizer's special tokens (e.g. a BOS); default false (llama-server's default).
    #[serde(alias = "add_special_tokens")]
    pub add_special: Option<bool>,
    pub messages: Option<Vec<Message>>,
}

pub async fn tokenize(
    State(state): State<Arc<AppState>>,
    JsonBody(req): JsonBody<TokenizeRequest>,
) -> Result<Json<Value>, ApiError> {
    let tok = &state.tokenizer;
    let tokens = match (&req.content, &req.messages) {
        (Some(text), None) => tok.encode(text, req.add_special.unwrap_or(false))?,
        (None, Some(messages)) => {
            let template = tok
                .chat_template
                .as_ref()
                .ok_or_else(|| ApiError::bad_request("this model has no chat template", Some("messages")))?;
            tok.encode(&template.render(messages, true)?, false)?
        }
        _ => {
            return Err(ApiError::bad_request(
                "give either content (text) or messages",
                Some("content"),
            ))
        }
    };
    Ok(Json(json!({
        "tokens": tokens,
        "count": tokens.len(),
        "max_model_len": state.info.context,
    })))
}

/// `POST /detokenize`: token ids back to text.
#[derive(Debug, Deserialize)]
pub struct DetokenizeRequest {
    pub tokens: Vec<u32>,
}

pub async fn detokenize(
    State(state): State<Arc<AppState>>,
    JsonBody(req): JsonBody<DetokenizeRequest>,
) -> Result<Json<Value>, ApiError> {
    if let Some(bad) = req.tokens.iter().find(|&&t| t as usize >= state.info.vocab_size) {
        return Err(ApiError::bad_request(
            format!("token id {bad} is outside the vocabulary ({})", state.info.vocab_size),
            Some("tokens"),
        ));
    }
    let text = state.tokenizer.decode(&req.tokens, false)?;
    // llama-server answers `content`, vLLM `prompt`.
    Ok(Json(json!({ "content": text, "prompt": text })))
}

/// `GET /tokenizer_info`: the special tokens and the chat template (vLLM's shape).
pub async fn tokenizer_info(State(state): State<Arc<AppState>>) -> Json<Value> {
    let tok = &state.tokenizer;
    Json(json!({
        "eos_token": tok.eos_token,
        "bos_token": tok.bos_token,
        "pad_token": null,
        "chat_template": tok.chat_template.as_ref().map(|t| t.source()),
        "model_max_length": state.info.context,
    }))
}
