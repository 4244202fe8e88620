//! Cyclical decoding with refilling (spec B4), one token at a time on one KV cache.
//!
//! Write E, T, D for the encoding, thinking and decoding layers, `P` for the prompt length and `local = pos − P`:
//!
//! ```text
//! prefill     e = E(embed(prompt)); t = T(e); s0 = t (plain) or e + t (readd); logits of D(s0) at the last row
//! head        local % τ == 0: e = E(embed(x)); the thinking layers run on the refill block
//!             [e of the previous cycle's late-only tokens; e] at their positions (real history: K/V written for
//!             every row, only the head's output kept); s0 = e + t_head; run D
//! late-only   s0 = e = E(embed(x)); run D only; e is kept for the next head's refill block
//! ```
//!
//! The cache keeps one length for the encoding and decoding layers (every position, written when processed) and a
//! separate fill for the thinking layers ([`DmtdDecoder::thinking_fill`]): with cyclical refilling it lags the
//! other by less than τ and is a gap-free prefix whenever a head runs (B4.5); in the shadow ablation it counts the
//! prompt and the heads, packed in contiguous slots and rotated at their true positions (B4.6).
//!
//! τ = 1 is plain decoding: every token is a head with nothing to refill, and, with no late-only token for it to
//! stand beside, the head does not re-add the embedding — the base model, bit for bit. (The B3 formula at τ = 1
//! would re-add it at every position: a model nobody trains.)

use super::options::{DmtdOptions, History, Prefill};
use crate::cache::KvCache;
use crate::error::{Error, Result};
use crate::model::ops::{Fused, Ops};
use crate::model::plan::FullDepth;
use crate::model::{ForwardCtx, Model};
use candle_core::Tensor;
use std::ops::Range;

/// What one step of [`DmtdDecoder`] did.
#[derive(Debug)]
pub struct DmtdStep {
    /// Logits of the last row fed, `[1, vocab]`.
    pub logits: Tensor,
    /// Whether the token fed was a cycle head (prefill counts as one).
    pub head: bool,
    /// Rows the thinking layers ran in this step: the refill block (the head included), 0 for a late-only step;
    /// the prompt's length in prefill.
    pub thinking_rows: usize,
    /// Layers run for the token fed: all of them at a head, E + D for a late-only token.
    pub layers: usize,
}

/// A DMTD decoding session over one sequence: [`DmtdDecoder::prefill`] once, then [`DmtdDecoder::step`] with each
/// token to feed. Holds its own KV cache.
pub struct DmtdDecoder<'m> {
    model: &'m Model,
    opts: DmtdOptions,
    cache: KvCache,
    prompt_len: usize,
    /// Thinking-layer cache fill: positions (real history) or slots (shadow) `0..thinking_fill` hold K/V.
    thinking_fill: usize,
    /// Encoding outputs `[1, hidden]` of the late-only tokens since the last head (real history), in order.
    pending: Vec<Tensor>,
}

impl<'m> DmtdDecoder<'m> {
    /// A session on `model` holding at most `max_len` positions (prompt and generated tokens; capped at the
    /// model's context window).
    ///
    /// # Errors
    /// [`Error::Input`] when the layout's layers do not add up to the model's.
    pub fn new(model: &'m Model, opts: DmtdOptions, max_len: usize) -> Result<Self> {
        let layers = model.config.num_hidden_layers;
        if opts.layout.num_layers() != layers {
            return Err(Error::Input(format!(
                "DMTD layout of {} layers (E{} T{} D{}) on a model with {layers} layers",
                opts.layout.num_layers(),
                opts.layout.num_encoding_layers,
                opts.layout.num_thinking_layers,
                opts.layout.num_decoding_layers
            )));
        }
        Ok(DmtdDecoder {
            model,
            opts,
            cache: model.new_cache(max_len),
            prompt_len: 0,
            thinking_fill: 0,
            pending: Vec::new(),
        })
    }

    /// Positions filled so far (the position of the next token fed).
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    /// Whether nothing has been fed yet.
    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }

    /// The most positions the session holds.
    pub fn max_len(&self) -> usize {
        self.cache.max_len()
    }

    /// Prompt length (0 before the prefill).
    pub fn prompt_len(&self) -> usize {
        self.prompt_len
    }

    /// Thinking-layer cache fill (see the module docs).
    pub fn thinking_fill(&self) -> usize {
        self.thinking_fill
    }

    /// The session's KV cache (the thinking layers' entries past [`Self::thinking_fill`] are not yet written).
    pub fn cache(&self) -> &KvCache {
        &self.cache
    }

    /// The options the session runs under.
    pub fn options(&self) -> &DmtdOptions {
        &self.opts
    }

    /// Run the prompt through every layer (spec B4.1, the prefill convention from the options).
    ///
    /// # Errors
    /// An empty prompt, a second prefill, ids outside the vocabulary, a prompt longer than the session
    /// ([`Error::ContextOverflow`]).
    pub fn prefill(&mut self, ids: &[u32]) -> Result<DmtdStep> {
        if !self.cache.is_empty() {
            return Err(Error::Input("a DMTD session is prefilled once".into()));
        }
        let n = ids.len();
        self.cache.reserve(n)?;
        let ctx = ForwardCtx::new(self.model, 0, n)?;
        let e = self.run(self.model.embed(ids)?, self.opts.layout.encoding(), &ctx)?;
        let t = self.run(e.clone(), self.opts.layout.thinking(), &ctx)?;
        let s0 = match self.opts.prefill {
            Prefill::Plain => t,
            Prefill::Readd => (e + t)?,
        };
        let s = self.run(s0, self.opts.layout.decoding(), &ctx)?;
        self.cache.set_len(n);
        self.prompt_len = n;
        self.thinking_fill = n;
        Ok(DmtdStep {
            logits: self.logits(&s)?,
            head: true,
            thinking_rows: n,
            layers: self.opts.layout.num_layers(),
        })
    }

    /// Feed the next token `id` at position [`Self::len`]: a head step or a late-only step (spec B4.3, B4.4).
    ///
    /// # Errors
    /// A step before the prefill, an id outside the vocabulary, a full session ([`Error::ContextOverflow`]).
    pub fn step(&mut self, id: u32) -> Result<DmtdStep> {
        if self.cache.is_empty() {
            return Err(Error::Input("a DMTD session must be prefilled before it steps".into()));
        }
        let pos = self.cache.len();
        self.cache.reserve(pos + 1)?;
        let layout = self.opts.layout;
        let head = layout.is_head(pos - self.prompt_len);
        let ctx = ForwardCtx::new(self.model, pos, 1)?;
        let e = self.run(self.model.embed(&[id])?, layout.encoding(), &ctx)?;
        let (s0, thinking_rows) = if head {
            let (t, rows) = self.think(&e, pos)?;
            // τ = 1 is the base model (module docs); otherwise the head re-adds its embedding (B3, B4.3).
            let s0 = if layout.mtp_horizon > 1 { (&e + t)? } else { t };
            (s0, rows)
        } else {
            if self.opts.history == History::Real {
                self.pending.push(e.clone());
            }
            (e, 0)
        };
        let s = self.run(s0, layout.decoding(), &ctx)?;
        self.cache.set_len(pos + 1);
        Ok(DmtdStep {
            logits: self.logits(&s)?,
            head,
            thinking_rows,
            layers: if head {
                layout.num_layers()
            } else {
                layout.num_encoding_layers + layout.num_decoding_layers
            },
        })
    }

    /// The thinking layers at a head at `pos` with encoding output `e: [1, hidden]`: the thinking output of the
    /// head `[1, hidden]` and the rows run.
    fn think(&mut self, e: &Tensor, pos: usize) -> Result<(Tensor, usize)> {
        let thinking = self.opts.layout.thinking();
        match self.opts.history {
            History::Real => {
                let start = pos - self.pending.len();
                if self.thinking_fill != start {
                    return Err(Error::Input(format!(
                        "DMTD: the thinking layers hold {} positions but the refill block starts at {start}",
                        self.thinking_fill
                    )));
                }
                let mut rows = std::mem::take(&mut self.pending);
                rows.push(e.clone());
                let n = rows.len();
                let block = Tensor::cat(&rows, 0)?;
                let ctx = ForwardCtx::new(self.model, start, n)?;
                let t = self.run(block, thinking, &ctx)?;
                self.thinking_fill = pos + 1;
                Ok((t.narrow(0, n - 1, 1)?, n))
            }
            History::Shadow => {
                let ctx = ForwardCtx::at_slot(self.model, pos, self.thinking_fill)?;
                let t = self.run(e.clone(), thinking, &ctx)?;
                self.thinking_fill += 1;
                Ok((t, 1))
            }
        }
    }

    /// Run `layers` at full depth on `x` under `ctx`, writing their K/V into the session's cache.
    fn run(&mut self, x: Tensor, layers: Range<usize>, ctx: &ForwardCtx) -> Result<Tensor> {
        if layers.is_empty() {
            return Ok(x);
        }
        Ok(self
            .model
            .run_layers(&Fused, x, layers, ctx, Some(&mut self.cache), &FullDepth)?
            .hidden)
    }

    /// Logits `[1, vocab]` of the last row of `s`.
    fn logits(&self, s: &Tensor) -> Result<Tensor> {
        let last = s.narrow(0, s.dim(0)? - 1, 1)?;
        let ops: &dyn Ops = &Fused;
        let logits = self.model.head(ops, &last)?;
        // As `Model::forward_with`: a NaN or an infinity (corrupt weights) is an error, never text.
        let sum = logits.sum_all()?.to_scalar::<f32>()?;
        if !sum.is_finite() {
            return Err(Error::Input(
                "the model computed non-finite logits (NaN or infinity): its weights are corrupt".into(),
            ));
        }
        Ok(logits)
    }
}
