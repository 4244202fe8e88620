//! The training-time forward of DMTD, "cyclical masking" (spec B3, after the authors' `MTPQwen3Model.forward`):
//!
//! ```text
//! e  = layers[0 : E](embed(x))          t = layers[E : E+T](e)
//! m_p = 1 if p mod τ == 0 else 0        s0 = e + m ⊙ t
//! s  = layers[E+T : E+T+D](s0)          logits = lm_head(norm(s)) at every position
//! ```
//!
//! At τ = 1 the pass is the base model (`s0 = t`), the convention of cyclical decoding (`decode.rs`), so that
//! teacher-forced τ = 1 equals full depth. Every attention is plain causal. `p` is the index of the row **within its own sequence**: sequences packed into
//! one pass ([`ForwardCtx::packed`]) each attend only over themselves and each start a cycle at their first row
//! (the spec's [I] packing reading — the packed row's index — would make a sample's phase depend on what was packed
//! before it; ours equals one pass per sequence). The teacher-forced quality of cyclical decoding is measured with
//! the same pass.

use super::DmtdLayout;
use crate::depth::FullDepth;
use crate::error::{Error, Result};
use crate::model::ops::Ops;
use crate::model::{ForwardCtx, Model};
use candle_core::Tensor;

/// What the cyclical-masking pass returns (rows of all sequences one after another).
#[derive(Debug)]
pub struct CyclicalPass {
    /// `[rows, hidden]`: the residual stream after the last decoding layer (before the final norm).
    pub hidden: Tensor,
    /// `[rows, hidden]`: `t`, the stream after the thinking layers (full depth below the decoding layers): the
    /// decoding layers run on it give the full-depth model's own output (the distillation teacher).
    pub thinking: Tensor,
}

/// The head indicator `m` of sequences of `lens` rows packed one after another: `1.0` at rows whose index within
/// their sequence is a multiple of τ (see [`DmtdLayout::is_head`]), else `0.0`.
pub fn head_indicator(layout: &DmtdLayout, lens: &[usize]) -> Vec<f32> {
    lens.iter()
        .flat_map(|&n| (0..n).map(|p| if layout.is_head(p) { 1.0 } else { 0.0 }))
        .collect()
}

/// The cyclical-masking forward of `seqs` (each from position 0, packed into one pass) through `model` split by
/// `layout`. The encoding and thinking layers run with `frozen` ops, the decoding layers with `decoding` ops (the
/// trainer's differentiable ops with its low-rank deltas; the fused inference ops for evaluation).
///
/// # Errors
/// [`Error::Input`] when the layout does not tile the model's layers, a sequence is empty, or one is longer than
/// the context.
pub fn cyclical_forward(
    model: &Model,
    frozen: &dyn Ops,
    decoding: &dyn Ops,
    seqs: &[&[u32]],
    layout: &DmtdLayout,
) -> Result<CyclicalPass> {
    if layout.num_layers() != model.layers.len() {
        return Err(Error::Input(format!(
            "the DMTD layout has {} layers (E {} + T {} + D {}) but the model has {}",
            layout.num_layers(),
            layout.num_encoding_layers,
            layout.num_thinking_layers,
            layout.num_decoding_layers,
            model.layers.len()
        )));
    }
    let lens: Vec<usize> = seqs.iter().map(|s| s.len()).collect();
    let ids = seqs.concat();
    let ctx = ForwardCtx::packed(model, &lens)?;
    let run = |ops: &dyn Ops, x: Tensor, layers| -> Result<Tensor> {
        Ok(model.run_layers(ops, x, layers, &ctx, None, &FullDepth)?.hidden)
    };
    let e = run(frozen, model.embed(&ids)?, layout.encoding())?;
    let t = run(frozen, e.clone(), layout.thinking())?;
    let m = Tensor::from_vec(head_indicator(layout, &lens), (ids.len(), 1), t.device())?.to_dtype(t.dtype())?;
    // τ = 1 is the base model, as in decoding (`decode.rs`): no late-only row, so the head does not re-add e.
    let s0 = if layout.mtp_horizon > 1 {
        (e + t.broadcast_mul(&m)?)?
    } else {
        t.clone()
    };
    let hidden = run(decoding, s0, layout.decoding())?;
    Ok(CyclicalPass { hidden, thinking: t })
}

/// The full-depth model's output `[rows, hidden]` (before the final norm) continued from `thinking` (a
/// [`CyclicalPass::thinking`] of sequences of `lens` rows): the decoding layers run on `t` with `ops`.
pub fn full_depth_from_thinking(
    model: &Model,
    ops: &dyn Ops,
    thinking: Tensor,
    lens: &[usize],
    layout: &DmtdLayout,
) -> Result<Tensor> {
    let ctx = ForwardCtx::packed(model, lens)?;
    Ok(model
        .run_layers(ops, thinking, layout.decoding(), &ctx, None, &FullDepth)?
        .hidden)
}
