//! One request in the running batch: its KV cache, sampler, streaming detokenizer and stop strings, and the
//! events it sends back. The scheduler moves it through prompt chunks, then one token per decode step, as
//! `flexidepth::generate::generate` does for a single sequence (same stop rules, same text).

use crate::logprobs::token_logprob;
use crate::metrics::Metrics;
use crate::request::{Event, Failure, Finish, FinishReason, GenRequest, TokenLogprob};
use flexidepth::cache::KvCache;
use flexidepth::depth::DepthPolicy;
use flexidepth::generate::{Sampler, StopStrings, TokenStream};
use flexidepth::model::plan::LayerBytes;
use flexidepth::model::{Logits, Model};
use flexidepth::tokenizer::Tokenizer;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::mpsc::UnboundedSender;

/// What every sequence's step needs from the scheduler.
pub(crate) struct StepCtx<'a> {
    pub model: &'a Model,
    pub tokenizer: &'a Tokenizer,
    pub eos_token_ids: &'a [u32],
    pub layer_bytes: &'a [LayerBytes],
    pub metrics: &'a Metrics,
}

/// A request being served.
pub(crate) struct Sequence {
    req: GenRequest,
    events: UnboundedSender<Event>,
    pub cache: KvCache,
    pub policy: Arc<dyn DepthPolicy>,
    /// Prompt tokens already in the cache.
    prefilled: usize,
    sampler: Sampler,
    detok: TokenStream,
    stops: StopStrings,
    /// Prompt and generated tokens (the repeat penalty's window).
    history: Vec<u32>,
    generated: usize,
    /// Prompt logprobs gathered over the chunks (echo).
    prompt_logprobs: Vec<Option<TokenLogprob>>,
    /// The token to feed at the next decode step.
    pub next: Option<u32>,
    pub done: bool,
}

impl Sequence {
    pub fn new(model: &Model, req: GenRequest, events: UnboundedSender<Event>, policy: Arc<dyn DepthPolicy>) -> Self {
        Sequence {
            cache: model.new_cache(req.prompt.len() + req.max_tokens),
            sampler: Sampler::new(req.sampling.clone()),
            stops: StopStrings::new(req.stop.clone()),
            history: req.prompt.clone(),
            prompt_logprobs: Vec::new(),
            detok: TokenStream::new(),
            prefilled: 0,
            generated: 0,
            next: None,
            done: false,
            req,
            events,
            policy,
        }
    }

    /// Whether prompt tokens are left to process.
    pub fn needs_prefill(&self) -> bool {
        !self.done && self.prefilled < self.req.prompt.len()
    }

    /// Whether the client went away (its receiver is gone).
    pub fn cancelled(&self) -> bool {
        self.events.is_closed()
    }

    /// Bytes the KV cache holds now.
    pub fn cache_bytes(&self, model: &Model) -> u64 {
        let c = &model.config;
        (self.cache.capacity() * c.num_key_value_heads * c.head_dim * c.num_hidden_layers * 2 * 4) as u64
    }

    fn send(&self, event: Event) {
        // A closed channel is a cancelled request: the scheduler drops it before the next step.
        let _ = self.events.send(event);
    }

    /// End the request with an error.
    pub fn fail(&mut self, status: u16, message: String) {
        self.send(Event::Error(Failure { status, message }));
        self.done = true;
        self.next = None;
    }

    /// Process the next chunk of at most `chunk` prompt tokens (returns how many); after the last one, take the
    /// first token.
    pub fn prefill(&mut self, ctx: &StepCtx, chunk: usize) -> flexidepth::Result<usize> {
        let (start, len) = (self.prefilled, self.req.prompt.len());
        let end = (start + chunk).min(len);
        let top = self.req.prompt_logprobs;
        let mode = if top.is_some() { Logits::All } else { Logits::Last };
        let out = ctx.model.forward_with(
            &self.req.prompt[start..end],
            &mut self.cache,
            mode,
            self.policy.as_ref(),
        )?;
        self.prefilled = end;
        ctx.metrics.prefill_chunks.fetch_add(1, Ordering::Relaxed);
        ctx.metrics
            .prompt_tokens
            .fetch_add((end - start) as u64, Ordering::Relaxed);
        let rows: Vec<Vec<f32>> = out.logits.to_vec2()?;
        if let Some(k) = top {
            if start == 0 {
                self.prompt_logprobs.push(None); // nothing predicts the first token
            }
            // Row r predicts the token after it.
            for (r, row) in rows.iter().enumerate().filter(|(r, _)| start + r + 1 < len) {
                let target = self.req.prompt[start + r + 1];
                self.prompt_logprobs
                    .push(Some(token_logprob(ctx.tokenizer, row, target, k)?));
            }
        }
        if end < len {
            return Ok(end - start);
        }
        if top.is_some() {
            let logprobs = std::mem::take(&mut self.prompt_logprobs);
            self.send(Event::Prompt(logprobs));
        }
        if self.req.max_tokens == 0 {
            self.finish(ctx, FinishReason::Length, false)?;
        } else {
            let last = rows.last().map(Vec::as_slice).unwrap_or_default();
            let layers = out.plan.layers_used(rows.len() - 1, ctx.layer_bytes);
            self.accept(ctx, last, layers)?;
        }
        Ok(end - start)
    }

    /// Sample a token from `logits` (`[vocab]`, from a pass that used `layers` layers), send it, and either queue
    /// it for the next decode step or finish.
    pub fn accept(&mut self, ctx: &StepCtx, logits: &[f32], layers: f64) -> flexidepth::Result<()> {
        let id = self.sampler.sample(logits, &self.history);
        let logprob = match self.req.logprobs {
            Some(k) => Some(token_logprob(ctx.tokenizer, logits, id, k)?),
            None => None,
        };
        self.history.push(id);
        self.generated += 1;
        ctx.metrics.token(layers);
        let mut text = String::new();
        let mut stop = None;
        let mut by_string = false;
        if ctx.eos_token_ids.contains(&id) {
            stop = Some(FinishReason::Stop);
        } else if let Some(piece) = self.detok.push(ctx.tokenizer, id)? {
            let (shown, hit) = self.stops.push(&piece);
            text = shown;
            if hit {
                (stop, by_string) = (Some(FinishReason::Stop), true);
            }
        }
        self.send(Event::Token {
            id,
            text,
            logprob,
            layers,
        });
        let full = self.generated >= self.req.max_tokens || self.cache.len() + 1 > self.cache.max_len();
        match stop.or(full.then_some(FinishReason::Length)) {
            Some(reason) => self.finish(ctx, reason, by_string),
            None => {
                self.next = Some(id);
                Ok(())
            }
        }
    }

    /// Send the end of the request: the held-back text (none after a stop string) and the counts.
    fn finish(&mut self, ctx: &StepCtx, reason: FinishReason, by_string: bool) -> flexidepth::Result<()> {
        let tail = if by_string {
            String::new()
        } else {
            let rest = self.detok.finish(ctx.tokenizer)?;
            let (shown, _) = self.stops.push(&rest);
            shown + &self.stops.finish()
        };
        self.send(Event::Done(Finish {
            reason,
            tail,
            prompt_tokens: self.req.prompt.len(),
            completion_tokens: self.generated,
            policy: self.policy.label(),
        }));
        self.done = true;
        self.next = None;
        Ok(())
    }
}
