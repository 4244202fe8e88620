//! The contract between the HTTP handlers and the scheduler: a [`GenRequest`] goes in, a stream of [`Event`]s
//! comes back on the request's own channel (dropping the receiver cancels the request).

use flexidepth::depth::DepthMode;
use flexidepth::generate::SamplingParams;

/// How deep a request's tokens go: the server's FlexiDepth policy with the request's overrides.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DepthChoice {
    pub mode: DepthMode,
    /// Run a routed layer iff its gate is above this.
    pub skip_threshold: f32,
}

/// One generation, validated and tokenized by a handler.
#[derive(Debug, Clone)]
pub struct GenRequest {
    /// Prompt token ids (non-empty, shorter than the context).
    pub prompt: Vec<u32>,
    /// Tokens to generate at most; 0 only scores the prompt.
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation ends when the text contains one of these (not shown).
    pub stop: Vec<String>,
    pub depth: DepthChoice,
    /// Logprobs of each generated token, with this many alternatives (`None`: no logprobs).
    pub logprobs: Option<usize>,
    /// Logprobs of the prompt's tokens (completions' `echo`), with this many alternatives.
    pub prompt_logprobs: Option<usize>,
}

/// One alternative token with its log-probability.
#[derive(Debug, Clone, PartialEq)]
pub struct TopLogprob {
    pub id: u32,
    /// The token's own text (special tokens included).
    pub token: String,
    pub logprob: f32,
}

/// A token's log-probability under the model (before sampling filters), and the most likely alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token: TopLogprob,
    /// Most likely first.
    pub top: Vec<TopLogprob>,
}

/// Why a generation ended, in OpenAI's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// End-of-generation token or stop string.
    Stop,
    /// `max_tokens` reached, or the context is full.
    Length,
}

impl FinishReason {
    /// OpenAI's `finish_reason` value.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// The end of a generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Finish {
    pub reason: FinishReason,
    /// Text held back until the end (a possible stop string's start, an incomplete character).
    pub tail: String,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// The label of the depth policy that ran (`flexi:0.5`, `flexi:run`, ...).
    pub policy: String,
}

/// A failure that ends a request, with the HTTP status it maps to.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub status: u16,
    pub message: String,
}

/// What the scheduler sends back for one request, in order: `Prompt` (when prompt logprobs were asked), any
/// number of `Token`s, then `Done` or `Error`.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// One entry per prompt token; the first has none (nothing predicts it).
    Prompt(Vec<Option<TokenLogprob>>),
    Token {
        id: u32,
        /// The text this token completed (often empty: held back, or the end-of-generation token).
        text: String,
        logprob: Option<TokenLogprob>,
        /// Layers used by the forward pass that produced this token.
        layers: f64,
    },
    Done(Finish),
    Error(Failure),
}
