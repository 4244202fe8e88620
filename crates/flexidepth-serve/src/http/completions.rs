//! `POST /v1/completions`: raw prompts (text or token ids, one or a list), with `echo` and `logprobs` — what
//! lm-evaluation-harness's `local-completions` model sends: a log-likelihood request is the context and the
//! continuation as one prompt, `echo: true`, `logprobs: 1`, `max_tokens: 1`, and it reads the prompt tokens'
//! `token_logprobs` and `top_logprobs`.

use super::body::{parse, RawBody};
use super::error::ApiError;
use super::params::{CommonFields, Shape};
use super::stream::{self, Chunker, Collected};
use super::AppState;
use crate::request::{Finish, TokenLogprob};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::sync::Arc;

/// The request body's own fields (the shared ones are [`CommonFields`]; any other is ignored).
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    /// A string, a list of strings, a list of token ids, or a list of lists of token ids.
    pub prompt: Value,
    /// Return the prompt before the completion (text and, with `logprobs`, its tokens' logprobs).
    pub echo: Option<bool>,
    /// Log-probabilities of the tokens, with this many alternatives each.
    pub logprobs: Option<u64>,
}

/// OpenAI's default `max_tokens` for completions.
const DEFAULT_MAX_TOKENS: usize = 16;

/// The prompts of the request as token ids (text gets the tokenizer's special tokens, e.g. a BOS, as `generate -p`).
fn prompts(state: &AppState, prompt: &Value) -> Result<Vec<Vec<u32>>, ApiError> {
    let bad = || {
        ApiError::bad_request(
            "prompt must be a string, a list of strings, a list of token ids or a list of lists of token ids",
            Some("prompt"),
        )
    };
    let ids = |v: &Vec<Value>| -> Result<Vec<u32>, ApiError> {
        v.iter()
            .map(|x| match x.as_u64() {
                Some(id) if (id as usize) < state.info.vocab_size => Ok(id as u32),
                Some(id) => Err(ApiError::bad_request(
                    format!("token id {id} is outside the vocabulary ({})", state.info.vocab_size),
                    Some("prompt"),
                )),
                None => Err(bad()),
            })
            .collect()
    };
    let text = |s: &str| -> Result<Vec<u32>, ApiError> { Ok(state.tokenizer.encode(s, true)?) };
    let list = match prompt {
        Value::String(s) => return Ok(vec![text(s)?]),
        Value::Array(list) if list.is_empty() => return Err(bad()),
        Value::Array(list) => list,
        _ => return Err(bad()),
    };
    match &list[0] {
        Value::Number(_) => Ok(vec![ids(list)?]),
        Value::String(_) => list.iter().map(|p| p.as_str().ok_or_else(bad).and_then(text)).collect(),
        Value::Array(_) => list
            .iter()
            .map(|p| p.as_array().ok_or_else(bad).and_then(ids))
            .collect(),
        _ => Err(bad()),
    }
}

pub async fn completions(State(state): State<Arc<AppState>>, RawBody(body): RawBody) -> Result<Response, ApiError> {
    let req: CompletionRequest = parse(&body)?;
    let common: CommonFields = parse(&body)?;
    let prompts = prompts(&state, &req.prompt)?;
    let echo = req.echo.unwrap_or(false);
    if common.streaming() && prompts.len() != 1 {
        return Err(ApiError::bad_request("stream takes a single prompt", Some("prompt")));
    }
    let mut gens = Vec::with_capacity(prompts.len());
    for prompt in &prompts {
        gens.push(common.gen_request(
            &state.info,
            &state.config,
            Shape {
                prompt: prompt.clone(),
                prompt_param: "prompt",
                max_tokens: common.max_tokens,
                default_max_tokens: Some(DEFAULT_MAX_TOKENS),
                allow_zero: echo,
                logprobs: req.logprobs,
                prompt_logprobs: req.logprobs.filter(|_| echo),
            },
        )?);
    }
    // All queued, or none: a refusal drops the receivers taken so far, which cancels them.
    let receivers = gens
        .into_iter()
        .map(|g| state.submit(g))
        .collect::<Result<Vec<_>, _>>()?;
    let head = (stream::response_id("cmpl"), stream::now_secs());
    let per_token = common.depth_tokens.unwrap_or(false);
    if common.streaming() {
        let rx = receivers
            .into_iter()
            .next()
            .ok_or_else(|| ApiError::internal("no prompt"))?;
        let chunker = CompletionChunks {
            head,
            state: state.clone(),
            echo: echo.then(|| state.tokenizer.decode(&prompts[0], false)).transpose()?,
            prompt: prompts[0].clone(),
            with_logprobs: req.logprobs.is_some(),
            per_token,
            include_usage: common.include_usage(),
            layers: vec![],
        };
        return Ok(stream::sse(rx, chunker));
    }
    let opts = ChoiceOpts {
        echo,
        with_logprobs: req.logprobs.is_some(),
        per_token,
    };
    whole_response(&state, head, &prompts, receivers, opts).await
}

/// What every choice of a response shows.
#[derive(Clone, Copy)]
struct ChoiceOpts {
    echo: bool,
    with_logprobs: bool,
    per_token: bool,
}

/// The `text_completion` object once every prompt's generation has finished.
async fn whole_response(
    state: &AppState,
    head: (String, u64),
    prompts: &[Vec<u32>],
    receivers: Vec<tokio::sync::mpsc::UnboundedReceiver<crate::request::Event>>,
    opts: ChoiceOpts,
) -> Result<Response, ApiError> {
    let results = futures_util::future::join_all(receivers.into_iter().map(stream::collect)).await;
    let mut choices = Vec::new();
    let (mut prompt_tokens, mut completion_tokens, mut all_layers) = (0, 0, Vec::new());
    let mut policy = String::new();
    for (index, (c, prompt)) in results.into_iter().zip(prompts).enumerate() {
        let c = c?;
        let finish = c.finish.as_ref().ok_or_else(|| ApiError::internal("no finish"))?;
        prompt_tokens += finish.prompt_tokens;
        completion_tokens += finish.completion_tokens;
        all_layers.extend(&c.layers);
        policy = finish.policy.clone();
        choices.push(choice(state, index, prompt, &c, opts)?);
    }
    Ok(axum::Json(json!({
        "id": head.0,
        "object": "text_completion",
        "created": head.1,
        "model": state.info.name,
        "choices": choices,
        "usage": stream::usage_json(prompt_tokens, completion_tokens),
        "depth": stream::depth_json(&state.info, &policy, &all_layers, false),
    }))
    .into_response())
}

/// One choice: the text (after the prompt's, with `echo`), its logprobs, the finish reason and its own `depth`.
fn choice(state: &AppState, index: usize, prompt: &[u32], c: &Collected, opts: ChoiceOpts) -> Result<Value, ApiError> {
    let finish = c.finish.as_ref().ok_or_else(|| ApiError::internal("no finish"))?;
    let mut text = String::new();
    let mut entries: Vec<(String, Option<&TokenLogprob>)> = Vec::new();
    if opts.echo {
        text = state.tokenizer.decode(prompt, false)?;
        if let Some(p) = &c.prompt_logprobs {
            for (&id, lp) in prompt.iter().zip(p) {
                entries.push((state.tokenizer.decode(&[id], false)?, lp.as_ref()));
            }
        }
    }
    text.push_str(&c.text);
    entries.extend(c.logprobs.iter().map(|lp| (lp.token.token.clone(), Some(lp))));
    Ok(json!({
        "index": index,
        "text": text,
        "logprobs": opts.with_logprobs.then(|| legacy_logprobs(&entries)),
        "finish_reason": finish.reason.as_str(),
        "depth": stream::depth_json(&state.info, &finish.policy, &c.layers, opts.per_token),
    }))
}

/// The completions API's logprobs object: parallel lists of token texts, their logprobs (`null` for the first
/// prompt token), the alternatives as `{text: logprob}` and each token's character offset in the text.
fn legacy_logprobs(entries: &[(String, Option<&TokenLogprob>)]) -> Value {
    let mut offset = 0;
    let mut offsets = Vec::with_capacity(entries.len());
    for (token, _) in entries {
        offsets.push(offset);
        offset += token.chars().count();
    }
    let top = |lp: &TokenLogprob| -> Value {
        let mut m = Map::new();
        for t in &lp.top {
            // Two ids with the same text: the likelier one's value stays.
            m.entry(t.token.clone()).or_insert(json!(t.logprob));
        }
        Value::Object(m)
    };
    json!({
        "tokens": entries.iter().map(|(t, _)| t).collect::<Vec<_>>(),
        "token_logprobs": entries.iter().map(|(_, lp)| lp.map(|l| l.token.logprob)).collect::<Vec<_>>(),
        "top_logprobs": entries.iter().map(|(_, lp)| lp.map(top)).collect::<Vec<_>>(),
        "text_offset": offsets,
    })
}

/// `text_completion` chunks.
struct CompletionChunks {
    head: (String, u64),
    state: Arc<AppState>,
    /// The prompt's text, sent first with `echo`.
    echo: Option<String>,
    prompt: Vec<u32>,
    with_logprobs: bool,
    per_token: bool,
    include_usage: bool,
    layers: Vec<f64>,
}

impl CompletionChunks {
    fn chunk(&self, text: &str, logprobs: Value, finish: Option<&str>) -> Value {
        json!({
            "id": self.head.0,
            "object": "text_completion",
            "created": self.head.1,
            "model": self.state.info.name,
            "choices": [{ "index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish }],
        })
    }
}

impl Chunker for CompletionChunks {
    fn start(&mut self) -> Vec<Value> {
        // With logprobs the prompt's text goes out with its logprobs instead.
        match (&self.echo, self.with_logprobs) {
            (Some(p), false) => vec![self.chunk(p, Value::Null, None)],
            _ => vec![],
        }
    }

    fn prompt(&mut self, logprobs: &[Option<TokenLogprob>]) -> Vec<Value> {
        let tok = &self.state.tokenizer;
        let entries: Vec<(String, Option<&TokenLogprob>)> = self
            .prompt
            .iter()
            .zip(logprobs)
            .map(|(&id, lp)| (tok.decode(&[id], false).unwrap_or_default(), lp.as_ref()))
            .collect();
        let text = self.echo.clone().unwrap_or_default();
        vec![self.chunk(&text, legacy_logprobs(&entries), None)]
    }

    fn token(&mut self, text: &str, logprob: Option<&TokenLogprob>, layers: f64) -> Vec<Value> {
        self.layers.push(layers);
        if text.is_empty() && logprob.is_none() {
            return vec![];
        }
        let lp = logprob.map_or(Value::Null, |l| legacy_logprobs(&[(l.token.token.clone(), Some(l))]));
        vec![self.chunk(text, lp, None)]
    }

    fn finish(&mut self, finish: &Finish) -> Vec<Value> {
        let mut last = self.chunk(&finish.tail, Value::Null, Some(finish.reason.as_str()));
        last["depth"] = stream::depth_json(&self.state.info, &finish.policy, &self.layers, self.per_token);
        let mut out = vec![last];
        if self.include_usage {
            let mut usage = self.chunk("", Value::Null, None);
            usage["choices"] = json!([]);
            usage["usage"] = stream::usage_json(finish.prompt_tokens, finish.completion_tokens);
            out.push(usage);
        }
        out
    }
}
