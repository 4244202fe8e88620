//! The two requests every task is made of, as lm-evaluation-harness (`HFLM`) defines them, run on a [`Model`] under
//! a depth policy: the log-likelihood of continuations after a context, and greedy generation until a stop sequence.
//! Every forward pass's executed plan is added to a [`Cost`] (layers and weight bytes per processed token).

use candle_core::{DType, Tensor, D};
use flexidepth::cache::KvCache;
use flexidepth::error::{Error, Result};
use flexidepth::model::plan::{DepthPolicy, ExecutedPlan, LayerBytes};
use flexidepth::model::{BatchRow, Logits, Model, RowInvariant};
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
    /// The tokenizer's end-of-generation ids (looked up once).
    eos: Vec<u32>,
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
            eos: tokenizer.end_of_generation_ids(),
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
        let (ids, mut cache, budget) = self.begin(prompt, max_new_tokens)?;
        let mut generated: Vec<u32> = Vec::new();
        let mut feed = ids;
        while generated.len() < budget {
            let out = self.model.forward_with(&feed, &mut cache, Logits::Last, self.policy)?;
            self.cost.add(&out.plan, &self.bytes);
            let logits: Vec<f32> = out.logits.squeeze(0)?.to_dtype(DType::F32)?.to_vec1()?;
            if let Some(text) = self.advance(&mut generated, &logits, stops, budget)? {
                return Ok(text);
            }
            feed = vec![generated[generated.len() - 1]];
        }
        self.tokenizer.decode(&generated, true)
    }

    /// [`Lm::generate_until`] for many requests, up to `batch_size` sequences at a time (continuous batching: a
    /// finished sequence's place goes to the next request). Each prompt is prefilled alone; then every decode step
    /// feeds one token of each running sequence in one [`Model::forward_batch`] call with
    /// [`RowInvariant`] ops, so a weight is read once per step for the whole batch and a sequence's tokens do not
    /// depend on what else runs beside it. Against [`Lm::generate_until`] (one sequence, fused ops) a decode step
    /// may round differently (see [`RowInvariant`]), which can change a greedy choice between near-equal logits.
    /// `done(i)` is called as request `i` finishes. Returns the texts in the order of `requests`.
    ///
    /// Errors: as [`Lm::generate_until`], for the first request that fails; `batch_size` 0; non-finite logits.
    pub fn generate_batch(
        &mut self,
        requests: &[GenRequest],
        batch_size: usize,
        done: &mut dyn FnMut(usize),
    ) -> Result<Vec<String>> {
        if batch_size == 0 {
            return Err(Error::Input("the generation batch size must be at least 1".into()));
        }
        let mut texts: Vec<Option<String>> = vec![None; requests.len()];
        let mut queue = 0..requests.len();
        let mut running: Vec<Running> = Vec::with_capacity(batch_size);
        loop {
            while running.len() < batch_size {
                let Some(index) = queue.next() else { break };
                let req = &requests[index];
                let (ids, mut cache, budget) = self.begin(&req.prompt, req.max_new_tokens)?;
                let mut generated = Vec::new();
                let finished = if budget == 0 {
                    Some(String::new())
                } else {
                    let out = self.model.forward_with(&ids, &mut cache, Logits::Last, self.policy)?;
                    self.cost.add(&out.plan, &self.bytes);
                    let logits: Vec<f32> = out.logits.squeeze(0)?.to_dtype(DType::F32)?.to_vec1()?;
                    self.advance(&mut generated, &logits, &req.stops, budget)?
                };
                match finished {
                    Some(text) => {
                        texts[index] = Some(text);
                        done(index);
                    }
                    None => running.push(Running {
                        index,
                        cache,
                        generated,
                        budget,
                    }),
                }
            }
            if running.is_empty() {
                break;
            }
            let mut rows: Vec<BatchRow> = running
                .iter_mut()
                .map(|r| BatchRow {
                    token: r.generated[r.generated.len() - 1],
                    cache: &mut r.cache,
                    policy: self.policy,
                })
                .collect();
            let out = self.model.forward_batch(&RowInvariant, &mut rows)?;
            drop(rows);
            for plan in &out.plans {
                self.cost.add(plan, &self.bytes);
            }
            let logits: Vec<Vec<f32>> = out.logits.to_dtype(DType::F32)?.to_vec2()?;
            if logits.iter().flatten().any(|v| !v.is_finite()) {
                return Err(Error::Input(
                    "the model computed non-finite logits (NaN or infinity): its weights are corrupt".into(),
                ));
            }
            let mut still = Vec::with_capacity(running.len());
            for (mut r, row) in running.into_iter().zip(&logits) {
                let req = &requests[r.index];
                match self.advance(&mut r.generated, row, &req.stops, r.budget)? {
                    Some(text) => {
                        texts[r.index] = Some(text);
                        done(r.index);
                    }
                    None => still.push(r),
                }
            }
            running = still;
        }
        Ok(texts.into_iter().map(Option::unwrap_or_default).collect())
    }

    /// A generation's ids, its cache (reserved for the whole generation) and its token budget.
    fn begin(&self, prompt: &str, max_new_tokens: usize) -> Result<(Vec<u32>, KvCache, usize)> {
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
        let mut cache = self.model.new_cache(ids.len() + budget);
        cache.reserve(ids.len() + budget)?; // never grown (see `choices`)
        Ok((ids, cache, budget))
    }

    /// Take the greedy token of `logits` into `generated`; the finished text when it ends the generation (an
    /// end-of-text token, which is not kept; a stop sequence, cut before it; the budget reached).
    fn advance(
        &self,
        generated: &mut Vec<u32>,
        logits: &[f32],
        stops: &[String],
        budget: usize,
    ) -> Result<Option<String>> {
        let next = flexidepth::generate::sampler::argmax(logits);
        if self.eos.contains(&next) {
            return self.tokenizer.decode(generated, true).map(Some);
        }
        generated.push(next);
        let text = self.tokenizer.decode(generated, true)?;
        if let Some(cut) = cut_at_stop(&text, stops) {
            return Ok(Some(cut.to_string()));
        }
        Ok((generated.len() >= budget).then_some(text))
    }
}

/// One harness `generate_until` request.
#[derive(Debug, Clone, PartialEq)]
pub struct GenRequest {
    /// The text given to the model (encoded without special tokens).
    pub prompt: String,
    /// Stop sequences: the text is cut before the first that appears.
    pub stops: Vec<String>,
    pub max_new_tokens: usize,
}

/// A sequence [`Lm::generate_batch`] is decoding.
struct Running {
    /// Its request.
    index: usize,
    cache: KvCache,
    /// Tokens so far (never empty: the prefill chose the first).
    generated: Vec<u32>,
    budget: usize,
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
