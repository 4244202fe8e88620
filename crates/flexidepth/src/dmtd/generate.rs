//! Generation with DMTD: the plain decode loop (`crate::generate`: sampler, streamed text, stop strings, stats)
//! stepping a [`DmtdDecoder`]. Every emitted token is final (no verification, spec B1). The depth trace shows the
//! thinking layers as the "routed" ones: run (gate 1) at prompt tokens and cycle heads, skipped (gate 0) by
//! late-only tokens, with [`TokenDepth::dmtd_head`] set on generated tokens.

use super::{DmtdDecoder, DmtdOptions, DmtdStep};
use crate::error::Result;
use crate::generate::{run_loop, session_len, GenerateOptions, Generation, Stepper, TraceBuilder};
use crate::model::Model;
use crate::tokenizer::Tokenizer;
use crate::trace::{LayerDecision, TokenDepth};
use candle_core::Tensor;

/// Generate from `prompt_ids` with DMTD under `dmtd`, as [`crate::generate::generate`] does with a depth policy
/// (`opts.policy` is not used: the layout decides each token's depth).
///
/// # Errors
/// Those of [`crate::generate::generate`], and a layout whose layers do not add up to the model's.
pub fn generate(
    model: &Model,
    tokenizer: &Tokenizer,
    prompt_ids: &[u32],
    opts: &GenerateOptions,
    dmtd: DmtdOptions,
    on_text: &mut dyn FnMut(&str) -> Result<()>,
) -> Result<Generation> {
    let decoder = DmtdDecoder::new(model, dmtd, session_len(prompt_ids.len(), opts.max_new_tokens))?;
    let mut stepper = DmtdStepper { decoder };
    let tracer = opts.trace.then(|| {
        let mut t = TraceBuilder::new(model);
        t.trace.routed_layers = dmtd.layout.thinking().collect();
        t
    });
    run_loop(&mut stepper, model, tokenizer, prompt_ids, opts, tracer, on_text)
}

struct DmtdStepper<'m> {
    decoder: DmtdDecoder<'m>,
}

impl DmtdStepper<'_> {
    /// Trace rows `ids` at `pos..` of one step.
    fn record(&self, t: &mut TraceBuilder, tok: &Tokenizer, ids: &[u32], pos: usize, step: &DmtdStep) -> Result<()> {
        let prompt = pos < self.decoder.prompt_len();
        let thinking = self.decoder.options().layout.thinking();
        for (row, &id) in ids.iter().enumerate() {
            t.trace.tokens.push(TokenDepth {
                pos: pos + row,
                token_id: id,
                text: tok.decode(&[id], false)?,
                prompt,
                layers_used: step.layers as f64,
                routed: thinking
                    .clone()
                    .map(|layer_idx| LayerDecision {
                        layer_idx,
                        gate: if step.head { 1.0 } else { 0.0 },
                        run: step.head,
                    })
                    .collect(),
                dmtd_head: (!prompt).then_some(step.head),
            });
        }
        Ok(())
    }
}

impl Stepper for DmtdStepper<'_> {
    fn prefill(&mut self, ids: &[u32], tracer: Option<&mut TraceBuilder>, tok: &Tokenizer) -> Result<Tensor> {
        let step = self.decoder.prefill(ids)?;
        if let Some(t) = tracer {
            self.record(t, tok, ids, 0, &step)?;
        }
        Ok(step.logits)
    }
    fn step(&mut self, id: u32, tracer: Option<&mut TraceBuilder>, tok: &Tokenizer) -> Result<Tensor> {
        let pos = self.decoder.len();
        let step = self.decoder.step(id)?;
        if let Some(t) = tracer {
            self.record(t, tok, &[id], pos, &step)?;
        }
        Ok(step.logits)
    }
    fn len(&self) -> usize {
        self.decoder.len()
    }
    fn max_len(&self) -> usize {
        self.decoder.max_len()
    }
}
