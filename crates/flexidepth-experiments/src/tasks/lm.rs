//! The two requests every task is made of, as lm-evaluation-harness (`HFLM`) defines them, run on a [`Model`] under
//! a depth policy: the log-likelihood of continuations after a context, and greedy generation until a stop sequence.
//! Every forward pass's executed plan is added to a [`Cost`] (layers and weight bytes per processed token).

use candle_core::{DType, Tensor, D};
use flexidepth::error::{Error, Result};
use flexidepth::model::plan::{DepthPolicy, ExecutedPlan, LayerBytes};
use flexidepth::model::{Logits, Model};
use flexidepth::tokenizer::Tokenizer;

/// Sums over every token row the model processed (prompt, context, continuation and generated tokens).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Cost {
    /// Rows processed.
    pub tokens: usize,
    /// Σ layers used ([`ExecutedPlan::layers_used`]).
    pub layers: f64,
    /// Σ layer weight bytes read ([`ExecutedPlan::weight_bytes`]; head and embedding excluded).
    pub weight_bytes: f64,
}

impl Cost {
    /// Add every row of one forward pass.
    pub fn add(&mut self, plan: &ExecutedPlan, bytes: &[LayerBytes]) {
        for row in 0..plan.rows {
            self.layers += plan.layers_used(row, bytes);
            self.weight_bytes += plan.weight_bytes(row, bytes) as f64;
        }
        self.tokens += plan.rows;
    }

    /// Mean layers used per processed token (0 when none).
    pub fn layers_per_token(&self) -> f64 {
        self.layers / self.tokens.max(1) as f64
    }

    /// Mean layer weight bytes read per processed token (0 when none).
    pub fn bytes_per_token(&self) -> f64 {
        self.weight_bytes / self.tokens.max(1) as f64
    }
}

/// The log-likelihood of one continuation: `Σ log p(token | before)` in nats, and whether every continuation token
/// was the argmax (the harness's `is_greedy`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct LogLik {
    pub logprob: f64,
    pub is_greedy: bool,
}

/// A model, its tokenizer and a depth policy, with the running cost of what it computed.
pub struct Lm<'a> {
    pub model: &'a Model,
    pub tokenizer: &'a Tokenizer,
    pub policy: &'a dyn DepthPolicy,
    bytes: Vec<LayerBytes>,
    pub cost: Cost,
}

/// The harness's `_encode_pair`: trailing whitespace of the context moves to the continuation; the continuation's
/// tokens are those of `context + continuation` after the first `len(encode(context))`. Returns (context ids,
/// continuation ids).
pub fn encode_pair(tokenizer: &Tokenizer, context: &str, continuation: &str) -> Result<(Vec<u32>, Vec<u32>)> {
    let trimmed = context.trim_end();
    let moved = &context[trimmed.len()..];
    let ctx = tokenizer.encode(trimmed, false)?;
    let whole = tokenizer.encode(&format!("{trimmed}{moved}{continuation}"), false)?;
    let cont = whole.get(ctx.len()..).unwrap_or_default().to_vec();
    if cont.is_empty() {
        return Err(Error::Input(format!(
            "the continuation {continuation:?} adds no token after its context"
        )));
    }
    Ok((ctx, cont))
}

impl<'a> Lm<'a> {
    pub fn new(model: &'a Model, tokenizer: &'a Tokenizer, policy: &'a dyn DepthPolicy) -> Self {
        Lm {
            model,
            tokenizer,
            policy,
            bytes: model.layer_bytes(),
            cost: Cost::default(),
        }
    }

    /// The ids a context starts from when it encodes to nothing: the harness's prefix token (BOS, else EOS).
    fn prefix(&self) -> Result<u32> {
        self.tokenizer
            .end_of_generation_ids()
            .first()
            .copied()
            .ok_or_else(|| Error::Input("an empty context needs an end-of-text token, the tokenizer has none".into()))
    }

    /// Log-likelihood of each continuation after `context` (harness `loglikelihood` requests sharing a context): the
    /// context runs once into a KV cache, then each continuation runs from that cache (rolled back to the context
    /// between choices), its first token scored by the context's last logits.
    ///
    /// Errors: a continuation that adds no token, more tokens than the context window.
    pub fn choices(&mut self, context: &str, continuations: &[String]) -> Result<Vec<LogLik>> {
        let mut ctx: Option<Vec<u32>> = None;
        let mut conts = Vec::with_capacity(continuations.len());
        for c in continuations {
            let (cx, cont) = encode_pair(self.tokenizer, context, c)?;
            // Every pair shares the trimmed context, so its ids are the same for all.
            ctx.get_or_insert(cx);
            conts.push(cont);
        }
        let mut ctx = ctx.unwrap_or_default();
        if ctx.is_empty() {
            ctx.push(self.prefix()?);
        }
        let longest = conts.iter().map(Vec::len).max().unwrap_or(0);
        let mut cache = self.model.new_cache(ctx.len() + longest);
        // All at once: growing a cache that holds positions fails in `KvCache::reserve` (it copies a non-contiguous
        // view), so it is never grown here.
        cache.reserve(ctx.len() + longest)?;
        let out = self.model.forward_with(&ctx, &mut cache, Logits::Last, self.policy)?;
        self.cost.add(&out.plan, &self.bytes);
        let first = log_softmax_rows(&out.logits)?;
        let mut result = Vec::with_capacity(conts.len());
        for cont in &conts {
            cache.truncate(ctx.len());
            let mut rows = vec![first[0].clone()];
            if cont.len() > 1 {
                let out = self
                    .model
                    .forward_with(&cont[..cont.len() - 1], &mut cache, Logits::All, self.policy)?;
                self.cost.add(&out.plan, &self.bytes);
                rows.extend(log_softmax_rows(&out.logits)?);
            }
            result.push(score(&rows, cont));
        }
        Ok(result)
    }

    /// The reference for [`Lm::choices`]: one continuation alone, `context ++ continuation` in one forward pass
    /// from an empty cache (as the harness runs it).
    pub fn alone(&mut self, context: &str, continuation: &str) -> Result<LogLik> {
        let (mut ctx, cont) = encode_pair(self.tokenizer, context, continuation)?;
        if ctx.is_empty() {
            ctx.push(self.prefix()?);
        }
        let ids: Vec<u32> = ctx.iter().chain(&cont).copied().collect();
        let mut cache = self.model.new_cache(ids.len());
        let out = self
            .model
            .forward_with(&ids[..ids.len() - 1], &mut cache, Logits::All, self.policy)?;
        self.cost.add(&out.plan, &self.bytes);
        let rows = log_softmax_rows(&out.logits)?;
        Ok(score(&rows[ctx.len() - 1..], &cont))
    }

    /// Greedy generation from `prompt` (encoded without special tokens, as the harness does) until an end-of-text
    /// token, `max_new_tokens`, or one of `stops` appears; the text is cut before the first stop sequence (harness
    /// `generate_until`).
    ///
    /// Errors: an empty prompt, a prompt that fills the context window.
    pub fn generate_until(&mut self, prompt: &str, stops: &[String], max_new_tokens: usize) -> Result<String> {
        let ids = self.tokenizer.encode(prompt, false)?;
        if ids.is_empty() {
            return Err(Error::Input("a generation prompt encodes to no token".into()));
        }
        let window = self.model.config.max_position_embeddings;
        if ids.len() >= window {
            return Err(Error::ContextOverflow {
                tokens: ids.len() + 1,
                context: window,
            });
        }
        let budget = max_new_tokens.min(window - ids.len());
        let eos = self.tokenizer.end_of_generation_ids();
        let mut cache = self.model.new_cache(ids.len() + budget);
        cache.reserve(ids.len() + budget)?; // never grown (see `choices`)
        let mut generated: Vec<u32> = Vec::new();
        let mut feed = ids;
        while generated.len() < budget {
            let out = self.model.forward_with(&feed, &mut cache, Logits::Last, self.policy)?;
            self.cost.add(&out.plan, &self.bytes);
            let logits: Vec<f32> = out.logits.squeeze(0)?.to_dtype(DType::F32)?.to_vec1()?;
            let next = flexidepth::generate::sampler::argmax(&logits);
            if eos.contains(&next) {
                break;
            }
            generated.push(next);
            let text = self.tokenizer.decode(&generated, true)?;
            if let Some(cut) = cut_at_stop(&text, stops) {
                return Ok(cut.to_string());
            }
            feed = vec![next];
        }
        self.tokenizer.decode(&generated, true)
    }
}

/// `text` before the earliest occurrence of any stop sequence, if one occurs.
pub fn cut_at_stop<'t>(text: &'t str, stops: &[String]) -> Option<&'t str> {
    stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()))
        .min()
        .map(|i| &text[..i])
}

/// Rows of `log_softmax(logits)` in f32, `[rows][vocab]`.
fn log_softmax_rows(logits: &Tensor) -> Result<Vec<Vec<f32>>> {
    let lp = candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32)?, D::Minus1)?;
    Ok(lp.to_vec2()?)
}

/// Sum of `rows[i][cont[i]]` and whether each `cont[i]` is its row's argmax.
fn score(rows: &[Vec<f32>], cont: &[u32]) -> LogLik {
    let mut logprob = 0.0f64;
    let mut is_greedy = true;
    for (row, &t) in rows.iter().zip(cont) {
        logprob += row[t as usize] as f64;
        is_greedy &= flexidepth::generate::sampler::argmax(row) == t;
    }
    LogLik { logprob, is_greedy }
}
