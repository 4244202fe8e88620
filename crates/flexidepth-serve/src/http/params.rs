//! The request fields chat and completions share — OpenAI's sampling and length fields, plus ours for depth
//! (`skip_threshold`, `depth_mode`, `depth_tokens`) and llama.cpp's extra samplers — and their checks, which turn
//! them into a [`GenRequest`]. Unknown fields are ignored, as OpenAI does.

use super::error::ApiError;
use super::ServeConfig;
use crate::engine::ModelInfo;
use crate::logprobs::MAX_TOP_LOGPROBS;
use crate::request::{DepthChoice, GenRequest};
use flexidepth::depth::DepthMode;
use serde::Deserialize;

/// `stop`: one string or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StopField {
    One(String),
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with `usage` (and no choices) before `[DONE]`.
    #[serde(default)]
    pub include_usage: bool,
}

/// Fields of both `/v1/chat/completions` and `/v1/completions`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CommonFields {
    /// Accepted and ignored: the server serves one model.
    pub model: Option<String>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub max_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<u64>,
    pub min_p: Option<f64>,
    #[serde(alias = "repetition_penalty")]
    pub repeat_penalty: Option<f32>,
    pub stop: Option<StopField>,
    /// An integer; negative values are taken modulo 2^64.
    pub seed: Option<serde_json::Number>,
    pub n: Option<u64>,
    /// Run a routed layer iff its gate is above this (FlexiDepth models).
    pub skip_threshold: Option<f32>,
    /// `dynamic`, `run` (every layer: the base model) or `skip` (every routed layer skipped).
    pub depth_mode: Option<String>,
    /// Return the layers each generated token used (`depth.tokens`).
    pub depth_tokens: Option<bool>,
}

/// Most stop strings a request may give.
const MAX_STOPS: usize = 16;

/// What the endpoint decides beyond the common fields.
pub struct Shape {
    pub prompt: Vec<u32>,
    /// The field the prompt came from (`messages`, `prompt`), named by length errors.
    pub prompt_param: &'static str,
    /// `max_tokens` (or chat's `max_completion_tokens`) as given.
    pub max_tokens: Option<u64>,
    /// When `max_tokens` is absent: `None` fills the context (chat), `Some(n)` is OpenAI's completions default.
    pub default_max_tokens: Option<usize>,
    /// 0 is allowed (scores the prompt: completions with `echo`).
    pub allow_zero: bool,
    pub logprobs: Option<u64>,
    pub prompt_logprobs: Option<u64>,
}

impl CommonFields {
    pub fn streaming(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    pub fn include_usage(&self) -> bool {
        self.stream_options.as_ref().is_some_and(|o| o.include_usage)
    }

    /// The generation these fields ask for, checked against the model and the server's limits.
    pub fn gen_request(&self, info: &ModelInfo, config: &ServeConfig, shape: Shape) -> Result<GenRequest, ApiError> {
        if let Some(n) = self.n.filter(|&n| n != 1) {
            return Err(ApiError::bad_request(format!("n must be 1 (got {n})"), Some("n")));
        }
        let max_tokens = self.max_tokens(info, config, &shape)?;
        let top = |v: Option<u64>, param: &str| -> Result<Option<usize>, ApiError> {
            match v {
                Some(k) if k as usize > MAX_TOP_LOGPROBS => Err(ApiError::bad_request(
                    format!("{param} must be at most {MAX_TOP_LOGPROBS} (got {k})"),
                    Some(param),
                )),
                other => Ok(other.map(|k| k as usize)),
            }
        };
        Ok(GenRequest {
            logprobs: top(shape.logprobs, "logprobs")?,
            prompt_logprobs: top(shape.prompt_logprobs, "logprobs")?,
            sampling: self.sampling(info)?,
            stop: self.stops()?,
            depth: self.depth(info)?,
            prompt: shape.prompt,
            max_tokens,
        })
    }

    /// The prompt's length and `max_tokens` against the context and the server's limits.
    fn max_tokens(&self, info: &ModelInfo, config: &ServeConfig, shape: &Shape) -> Result<usize, ApiError> {
        let p = shape.prompt.len();
        if p == 0 {
            return Err(ApiError::bad_request("the prompt is empty", Some(shape.prompt_param)));
        }
        let max_prompt = config
            .max_prompt_tokens
            .unwrap_or(info.context - 1)
            .min(info.context - 1);
        if p > max_prompt {
            return Err(ApiError::bad_request_code(
                format!(
                    "the prompt has {p} tokens; this server takes at most {max_prompt} (context {})",
                    info.context
                ),
                shape.prompt_param,
                "context_length_exceeded",
            ));
        }
        let room = info.context - p;
        let limit = config.max_tokens_limit.min(room);
        let m = match shape.max_tokens {
            None => return Ok(shape.default_max_tokens.unwrap_or(limit).min(limit)),
            Some(m) => m as usize,
        };
        if m == 0 && !shape.allow_zero {
            return Err(ApiError::bad_request(
                "max_tokens must be at least 1 (0 generates nothing; completions score a prompt with echo)",
                Some("max_tokens"),
            ));
        }
        if m > config.max_tokens_limit {
            return Err(ApiError::bad_request(
                format!(
                    "max_tokens is {m}; this server generates at most {}",
                    config.max_tokens_limit
                ),
                Some("max_tokens"),
            ));
        }
        if m > room {
            return Err(ApiError::bad_request_code(
                format!(
                    "this model's maximum context length is {} tokens, but {} were requested ({p} in the prompt, \
                     {m} for the completion)",
                    info.context,
                    p + m
                ),
                "max_tokens",
                "context_length_exceeded",
            ));
        }
        Ok(m)
    }

    /// The model's sampling defaults with the request's values, each checked against its domain.
    fn sampling(&self, info: &ModelInfo) -> Result<flexidepth::generate::SamplingParams, ApiError> {
        let mut s = info.sampling.clone();
        if let Some(t) = self.temperature {
            s.temperature = t;
        }
        if let Some(p) = self.top_p {
            s.top_p = p;
        }
        if let Some(k) = self.top_k {
            s.top_k = k as usize;
        }
        if let Some(p) = self.min_p {
            s.min_p = p;
        }
        if let Some(r) = self.repeat_penalty {
            s.repeat_penalty = r;
        }
        s.seed = match &self.seed {
            Some(n) => n
                .as_u64()
                .or_else(|| n.as_i64().map(|v| v as u64))
                .ok_or_else(|| ApiError::bad_request(format!("seed must be an integer, not {n}"), Some("seed")))?,
            None => fresh_seed(),
        };
        s.validate().map_err(|e| match e {
            flexidepth::Error::InvalidParameter { name, value, domain } => {
                ApiError::bad_request(format!("{name} must be {domain}, not {value}"), Some(name))
            }
            other => ApiError::from(other),
        })?;
        Ok(s)
    }

    fn stops(&self) -> Result<Vec<String>, ApiError> {
        let stops = match &self.stop {
            None => vec![],
            Some(StopField::One(s)) => vec![s.clone()],
            Some(StopField::Many(v)) => v.clone(),
        };
        if stops.len() > MAX_STOPS {
            return Err(ApiError::bad_request(
                format!("stop takes at most {MAX_STOPS} strings"),
                Some("stop"),
            ));
        }
        if stops.iter().any(String::is_empty) {
            return Err(ApiError::bad_request("stop strings must not be empty", Some("stop")));
        }
        Ok(stops)
    }

    /// The server's depth choice with the request's overrides; they need a model with routers.
    fn depth(&self, info: &ModelInfo) -> Result<DepthChoice, ApiError> {
        let mut choice = info.depth;
        if let Some(m) = &self.depth_mode {
            choice.mode = m
                .parse::<DepthMode>()
                .map_err(|e| ApiError::bad_request(e.to_string(), Some("depth_mode")))?;
        }
        if let Some(t) = self.skip_threshold {
            if !(t.is_finite() && (0.0..=1.0).contains(&t)) {
                return Err(ApiError::bad_request(
                    format!("skip_threshold must be a number in [0, 1], not {t}"),
                    Some("skip_threshold"),
                ));
            }
            choice.skip_threshold = t;
        }
        if info.routed_layers.is_empty() && (self.depth_mode.is_some() || self.skip_threshold.is_some()) {
            let param = if self.depth_mode.is_some() {
                "depth_mode"
            } else {
                "skip_threshold"
            };
            return Err(ApiError::bad_request(
                format!("{param} needs a model with routers: start the server with --depth FILE"),
                Some(param),
            ));
        }
        Ok(choice)
    }
}

/// A seed for a request that gives none (sampling differs between such requests, as OpenAI's does).
fn fresh_seed() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos
        ^ COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
}
