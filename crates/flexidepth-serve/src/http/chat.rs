//! `POST /v1/chat/completions`: the messages through the model's chat template, then a generation; the reply as
//! one `chat.completion` object or as `chat.completion.chunk` events. Each response carries `usage` and `depth`.

use super::body::{parse, RawBody};
use super::error::ApiError;
use super::params::{CommonFields, Shape};
use super::stream::{self, Chunker};
use super::AppState;
use crate::request::{Finish, TokenLogprob, TopLogprob};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use flexidepth::chat::Message;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

/// The request body's own fields (the shared ones are [`CommonFields`]; any other is ignored).
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    /// OpenAI's newer name for `max_tokens` (wins when both are given).
    pub max_completion_tokens: Option<u64>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<u64>,
}

/// One message; `content` is text or a list of text parts.
#[derive(Debug, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: Option<MessageContent>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

/// The template's messages: text parts joined, other parts refused (the model reads text only).
fn messages(req: &ChatRequest) -> Result<Vec<Message>, ApiError> {
    if req.messages.is_empty() {
        return Err(ApiError::bad_request("messages must not be empty", Some("messages")));
    }
    req.messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let content = match &m.content {
                None => String::new(),
                Some(MessageContent::Text(t)) => t.clone(),
                Some(MessageContent::Parts(parts)) => parts
                    .iter()
                    .map(|p| match (p.kind.as_str(), &p.text) {
                        ("text", Some(t)) => Ok(t.as_str()),
                        (kind, _) => Err(ApiError::bad_request(
                            format!("messages[{i}].content: only text parts are supported, not '{kind}'"),
                            Some("messages"),
                        )),
                    })
                    .collect::<Result<Vec<_>, _>>()?
                    .join(""),
            };
            Ok(Message::new(&m.role, &content))
        })
        .collect()
}

pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let req: ChatRequest = parse(&body)?;
    let common: CommonFields = parse(&body)?;
    let tok = &state.tokenizer;
    let template = tok
        .chat_template
        .as_ref()
        .ok_or_else(|| ApiError::bad_request("this model has no chat template: use /v1/completions", None))?;
    let text = template.render(&messages(&req)?, true)?;
    let prompt = tok.encode(&text, false)?;
    if req.top_logprobs.is_some() && req.logprobs != Some(true) {
        return Err(ApiError::bad_request(
            "top_logprobs needs logprobs: true",
            Some("top_logprobs"),
        ));
    }
    let gen = common.gen_request(
        &state.info,
        &state.config,
        Shape {
            prompt,
            prompt_param: "messages",
            max_tokens: req.max_completion_tokens.or(common.max_tokens),
            default_max_tokens: None,
            allow_zero: false,
            logprobs: (req.logprobs == Some(true)).then_some(req.top_logprobs.unwrap_or(0)),
            prompt_logprobs: None,
        },
    )?;
    let rx = state.submit(gen)?;
    let head = Head {
        id: stream::response_id("chatcmpl"),
        created: stream::now_secs(),
        model: state.info.name.clone(),
    };
    let per_token = common.depth_tokens.unwrap_or(false);
    if common.streaming() {
        let chunker = ChatChunks {
            head,
            state: state.clone(),
            per_token,
            include_usage: common.include_usage(),
            layers: vec![],
        };
        return Ok(stream::sse(rx, chunker));
    }
    let c = stream::collect(rx).await?;
    let finish = c.finish.as_ref().ok_or_else(|| ApiError::internal("no finish"))?;
    let logprobs = (req.logprobs == Some(true))
        .then(|| json!({ "content": c.logprobs.iter().map(logprob_json).collect::<Vec<_>>() }));
    Ok(axum::Json(json!({
        "id": head.id,
        "object": "chat.completion",
        "created": head.created,
        "model": head.model,
        "choices": [{
            "index": 0,
            "message": { "role": "assistant", "content": c.text },
            "logprobs": logprobs,
            "finish_reason": finish.reason.as_str(),
        }],
        "usage": stream::usage_json(finish.prompt_tokens, finish.completion_tokens),
        "depth": stream::depth_json(&state.info, &finish.policy, &c.layers, per_token),
    }))
    .into_response())
}

/// The fields every chunk repeats.
struct Head {
    id: String,
    created: u64,
    model: String,
}

/// OpenAI's entry for one token: text, logprob, UTF-8 bytes, and the alternatives.
fn logprob_json(lp: &TokenLogprob) -> Value {
    let entry = |t: &TopLogprob| json!({ "token": t.token, "logprob": t.logprob, "bytes": t.token.as_bytes() });
    let mut v = entry(&lp.token);
    v["top_logprobs"] = json!(lp.top.iter().map(entry).collect::<Vec<_>>());
    v
}

/// `chat.completion.chunk` objects.
struct ChatChunks {
    head: Head,
    state: Arc<AppState>,
    per_token: bool,
    include_usage: bool,
    layers: Vec<f64>,
}

impl ChatChunks {
    fn chunk(&self, delta: Value, logprobs: Value, finish: Option<&str>) -> Value {
        json!({
            "id": self.head.id,
            "object": "chat.completion.chunk",
            "created": self.head.created,
            "model": self.head.model,
            "choices": [{ "index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish }],
        })
    }
}

impl Chunker for ChatChunks {
    fn start(&mut self) -> Vec<Value> {
        vec![self.chunk(json!({ "role": "assistant", "content": "" }), Value::Null, None)]
    }

    fn token(&mut self, text: &str, logprob: Option<&TokenLogprob>, layers: f64) -> Vec<Value> {
        self.layers.push(layers);
        if text.is_empty() && logprob.is_none() {
            return vec![];
        }
        let logprobs = logprob.map_or(Value::Null, |lp| json!({ "content": [logprob_json(lp)] }));
        vec![self.chunk(json!({ "content": text }), logprobs, None)]
    }

    fn finish(&mut self, finish: &Finish) -> Vec<Value> {
        let mut out = vec![];
        if !finish.tail.is_empty() {
            out.push(self.chunk(json!({ "content": finish.tail }), Value::Null, None));
        }
        let mut last = self.chunk(json!({}), Value::Null, Some(finish.reason.as_str()));
        last["depth"] = stream::depth_json(&self.state.info, &finish.policy, &self.layers, self.per_token);
        out.push(last);
        if self.include_usage {
            let mut usage = self.chunk(json!({}), Value::Null, None);
            usage["choices"] = json!([]);
            usage["usage"] = stream::usage_json(finish.prompt_tokens, finish.completion_tokens);
            out.push(usage);
        }
        out
    }
}
