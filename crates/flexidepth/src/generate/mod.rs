//! The decode loop: batched prefill, then one token at a time with the KV cache, sampling, stop conditions and
//! streamed text. Timings follow llama.cpp: prompt tokens/s over the prefill, decode tokens/s from the first
//! generated token on, and time to first token.

pub mod sampler;
pub mod speculative;
pub mod stream;

use crate::cache::KvCache;
use crate::depth::{DepthPolicy, FlexiDepth};
use crate::error::{Error, Result};
use crate::model::plan::LayerBytes;
use crate::model::{ForwardOutput, Logits, Model};
use crate::tokenizer::Tokenizer;
use crate::trace::{DepthTrace, LayerDecision, TokenDepth};
use candle_core::Tensor;
pub use sampler::{Sampler, SamplingParams};
use std::time::Instant;
pub use stream::{StopStrings, TokenStream};

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// Tokens to generate at most; 0 generates nothing and does not compute the prompt.
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation ends after any of these tokens (not shown): the model's end-of-generation set,
    /// [`crate::loader::ModelFiles::eos_token_ids`].
    pub eos_token_ids: Vec<u32>,
    /// Generation ends when the text contains any of these (the stop string is not shown).
    pub stop_strings: Vec<String>,
    /// How deep each token goes (default: FlexiDepth routing at the model's threshold, which is full depth for a
    /// model without routers).
    pub policy: std::sync::Arc<dyn DepthPolicy>,
    /// Record a depth trace (prompt and generated tokens).
    pub trace: bool,
}

impl GenerateOptions {
    /// Greedy decoding of up to `max_new_tokens`, stopping at `eos_token_ids`.
    pub fn greedy(max_new_tokens: usize, eos_token_ids: Vec<u32>) -> Self {
        GenerateOptions {
            max_new_tokens,
            sampling: SamplingParams::greedy(),
            eos_token_ids,
            stop_strings: vec![],
            policy: std::sync::Arc::new(FlexiDepth::default()),
            trace: false,
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    Eos,
    StopString,
    MaxTokens,
    ContextFull,
}

impl std::fmt::Display for StopReason {
    /// What `generate` prints: `eos`, `stop string`, `max tokens`, `context full`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StopReason::Eos => "eos",
            StopReason::StopString => "stop string",
            StopReason::MaxTokens => "max tokens",
            StopReason::ContextFull => "context full",
        })
    }
}

/// Counts and timings of one generation.
#[derive(Debug, Clone)]
pub struct GenerationStats {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    /// Prefill up to and including the first sampled token.
    pub time_to_first_token_s: f64,
    pub prefill_s: f64,
    /// From the first generated token to the last.
    pub decode_s: f64,
    pub stop_reason: StopReason,
}

impl GenerationStats {
    pub fn prompt_tokens_per_s(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill_s.max(1e-9)
    }
    /// Tokens after the first over the time they took (the first one belongs to the prefill).
    pub fn decode_tokens_per_s(&self) -> f64 {
        self.generated_tokens.saturating_sub(1) as f64 / self.decode_s.max(1e-9)
    }
}

/// The result of [`generate`].
#[derive(Debug, Clone)]
pub struct Generation {
    /// Generated ids (the EOS token included when it ended generation).
    pub ids: Vec<u32>,
    /// The text shown (stop strings and special tokens excluded).
    pub text: String,
    pub stats: GenerationStats,
    /// With [`GenerateOptions::trace`]: each token's path through the routed layers.
    pub trace: Option<DepthTrace>,
}

/// Collects per-token routing into a [`DepthTrace`].
pub(crate) struct TraceBuilder {
    pub(crate) trace: DepthTrace,
    bytes: Vec<LayerBytes>,
}

impl TraceBuilder {
    pub(crate) fn new(model: &Model) -> Self {
        TraceBuilder {
            trace: DepthTrace {
                num_layers: model.config.num_hidden_layers,
                routed_layers: model.routed_layers(),
                tokens: Vec::new(),
            },
            bytes: model.layer_bytes(),
        }
    }

    /// Record the rows `ids` (at `pos..`) of one forward pass.
    fn record(
        &mut self,
        tokenizer: &Tokenizer,
        ids: &[u32],
        pos: usize,
        prompt: bool,
        out: &ForwardOutput,
    ) -> Result<()> {
        let routing = out.routing();
        for (row, &id) in ids.iter().enumerate() {
            let routed: Vec<LayerDecision> = routing
                .iter()
                .map(|r| LayerDecision {
                    layer_idx: r.layer_idx,
                    gate: r.gates[row],
                    run: r.run[row],
                })
                .collect();
            self.trace.tokens.push(TokenDepth {
                pos: pos + row,
                token_id: id,
                text: tokenizer.decode(&[id], false)?,
                prompt,
                layers_used: out.plan.layers_used(row, &self.bytes),
                routed,
                dmtd_head: None,
            });
        }
        Ok(())
    }
}

/// A model stepping through one sequence, as the decode loop drives it: plain (or depth-routed) decoding, or
/// DMTD's cyclical decoding (`crate::dmtd::generate`). Each call returns the logits `[1, vocab]` of the last row
/// fed and, with a tracer, records the rows' depth.
pub(crate) trait Stepper {
    /// Feed the prompt.
    fn prefill(&mut self, ids: &[u32], tracer: Option<&mut TraceBuilder>, tokenizer: &Tokenizer) -> Result<Tensor>;
    /// Feed one token at position [`Stepper::len`].
    fn step(&mut self, id: u32, tracer: Option<&mut TraceBuilder>, tokenizer: &Tokenizer) -> Result<Tensor>;
    /// Positions filled.
    fn len(&self) -> usize;
    /// Positions the session holds at most.
    fn max_len(&self) -> usize;
}

/// Decoding through [`Model::forward_with`] under a depth policy, on a KV cache.
struct PolicyStepper<'a> {
    model: &'a Model,
    cache: KvCache,
    policy: &'a dyn DepthPolicy,
}

impl PolicyStepper<'_> {
    fn feed(
        &mut self,
        ids: &[u32],
        prompt: bool,
        tracer: Option<&mut TraceBuilder>,
        tok: &Tokenizer,
    ) -> Result<Tensor> {
        let pos = self.cache.len();
        let out = self
            .model
            .forward_with(ids, &mut self.cache, Logits::Last, self.policy)?;
        if let Some(t) = tracer {
            t.record(tok, ids, pos, prompt, &out)?;
        }
        Ok(out.logits)
    }
}

impl Stepper for PolicyStepper<'_> {
    fn prefill(&mut self, ids: &[u32], tracer: Option<&mut TraceBuilder>, tok: &Tokenizer) -> Result<Tensor> {
        self.feed(ids, true, tracer, tok)
    }
    fn step(&mut self, id: u32, tracer: Option<&mut TraceBuilder>, tok: &Tokenizer) -> Result<Tensor> {
        self.feed(&[id], false, tracer, tok)
    }
    fn len(&self) -> usize {
        self.cache.len()
    }
    fn max_len(&self) -> usize {
        self.cache.max_len()
    }
}

/// Positions a session needs for `prompt_len` tokens and up to `max_new_tokens` more. Saturating:
/// `-n 18446744073709551615` means "until the context is full", not a wrapped-around small cache.
pub(crate) fn session_len(prompt_len: usize, max_new_tokens: usize) -> usize {
    prompt_len.saturating_add(max_new_tokens)
}

/// Generate from `prompt_ids`, calling `on_text` with each piece of text as soon as it is complete.
///
/// Errors: an empty prompt, a prompt that fills the context ([`Error::ContextOverflow`]), sampling values out of
/// their domain ([`Error::InvalidParameter`], see [`SamplingParams::validate`]). With `max_new_tokens == 0`
/// nothing is computed and the result is empty (stop reason `MaxTokens`).
pub fn generate(
    model: &Model,
    tokenizer: &Tokenizer,
    prompt_ids: &[u32],
    opts: &GenerateOptions,
    on_text: &mut dyn FnMut(&str) -> Result<()>,
) -> Result<Generation> {
    let mut stepper = PolicyStepper {
        model,
        cache: model.new_cache(session_len(prompt_ids.len(), opts.max_new_tokens)),
        policy: opts.policy.as_ref(),
    };
    let tracer = opts.trace.then(|| TraceBuilder::new(model));
    run_loop(&mut stepper, model, tokenizer, prompt_ids, opts, tracer, on_text)
}

/// The decode loop of [`generate`] on any [`Stepper`] (`opts.policy` is the stepper's business); `tracer` records
/// the depth trace when given. Errors as [`generate`].
pub(crate) fn run_loop(
    stepper: &mut dyn Stepper,
    model: &Model,
    tokenizer: &Tokenizer,
    prompt_ids: &[u32],
    opts: &GenerateOptions,
    mut tracer: Option<TraceBuilder>,
    on_text: &mut dyn FnMut(&str) -> Result<()>,
) -> Result<Generation> {
    check_request(model, prompt_ids, opts)?;
    if opts.max_new_tokens == 0 {
        // Nothing to generate: the prompt is not even computed (llama.cpp's `-n 0`).
        return Ok(Generation {
            ids: vec![],
            text: String::new(),
            stats: GenerationStats {
                prompt_tokens: prompt_ids.len(),
                generated_tokens: 0,
                time_to_first_token_s: 0.0,
                prefill_s: 0.0,
                decode_s: 0.0,
                stop_reason: StopReason::MaxTokens,
            },
            trace: tracer.map(|t| t.trace),
        });
    }
    let mut sampler = Sampler::new(opts.sampling.clone());
    let mut detok = TokenStream::new();
    let mut stops = StopStrings::new(opts.stop_strings.clone());
    let mut history = prompt_ids.to_vec();
    let mut ids = Vec::new();
    let mut text = String::new();
    let mut emit = |piece: &str, text: &mut String| -> Result<()> {
        if !piece.is_empty() {
            text.push_str(piece);
            on_text(piece)?;
        }
        Ok(())
    };

    let start = Instant::now();
    let mut logits = stepper.prefill(prompt_ids, tracer.as_mut(), tokenizer)?;
    let prefill_s = start.elapsed().as_secs_f64();
    let mut first_token_at = None;
    let mut stop_reason = StopReason::MaxTokens;
    for step in 0..opts.max_new_tokens {
        let row: Vec<f32> = logits.squeeze(0)?.to_vec1()?;
        let next = sampler.sample(&row, &history);
        if step == 0 {
            first_token_at = Some(Instant::now());
        }
        ids.push(next);
        history.push(next);
        if opts.eos_token_ids.contains(&next) {
            stop_reason = StopReason::Eos;
            break;
        }
        if let Some(piece) = detok.push(tokenizer, next)? {
            let (shown, stopped) = stops.push(&piece);
            emit(&shown, &mut text)?;
            if stopped {
                stop_reason = StopReason::StopString;
                break;
            }
        }
        if step + 1 == opts.max_new_tokens {
            break;
        }
        if stepper.len() + 1 > stepper.max_len() {
            stop_reason = StopReason::ContextFull;
            break;
        }
        logits = stepper.step(next, tracer.as_mut(), tokenizer)?;
    }
    if stop_reason != StopReason::StopString {
        let rest = detok.finish(tokenizer)?;
        let (shown, _) = stops.push(&rest);
        emit(&shown, &mut text)?;
        emit(&stops.finish(), &mut text)?;
    }
    let end = Instant::now();
    // The last token was never fed back; a trace still wants its depth (after the timer stops).
    if let (Some(t), Some(&last)) = (tracer.as_mut(), ids.last()) {
        if stepper.len() < stepper.max_len() && t.trace.tokens.len() < prompt_ids.len() + ids.len() {
            stepper.step(last, Some(t), tokenizer)?;
        }
    }
    let first = first_token_at.unwrap_or(end);
    Ok(Generation {
        stats: GenerationStats {
            prompt_tokens: prompt_ids.len(),
            generated_tokens: ids.len(),
            time_to_first_token_s: (first - start).as_secs_f64(),
            prefill_s,
            decode_s: (end - first).as_secs_f64(),
            stop_reason,
        },
        ids,
        text,
        trace: tracer.map(|t| t.trace),
    })
}

/// What every decode loop refuses up front: an empty prompt, a prompt that fills the context window
/// ([`Error::ContextOverflow`]), sampling values out of their domain.
pub(crate) fn check_request(model: &Model, prompt_ids: &[u32], opts: &GenerateOptions) -> Result<()> {
    if prompt_ids.is_empty() {
        return Err(Error::Input("the prompt is empty".into()));
    }
    let context = model.config.max_position_embeddings;
    if prompt_ids.len() >= context {
        return Err(Error::ContextOverflow {
            tokens: prompt_ids.len(),
            context,
        });
    }
    opts.sampling.validate()
}
