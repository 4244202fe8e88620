//! The training forward pass: the engine's own layer code ([`flexidepth::model::layer`]) executing the FlexiDepth
//! policy, computed with differentiable ops ([`Differentiable`]) instead of the fused inference kernels.
//!
//! The layers below the first routed one run with the inference ops and no graph (nothing there is trainable).
//! From the first routed layer on, the graph reaches the routers and adapters, which are the model's own
//! routers and adapters backed by the trainable `Var`s ([`crate::params::DepthParams::attach`]): run rows have
//! their MLP scaled by `w` and skipped rows their adapter by `1 − w` (spec A3/A4), so gradients reach each router
//! through the gate of every row, and `L_skip` through the gate tensors the pass returns. The hard decision
//! `w > threshold` carries no gradient.

use crate::ops::{add_const, frozen_linear, rms_norm, rope, softmax};
use candle_core::Tensor;
use flexidepth::depth::{FlexiDepth, FullDepth, Routing};
use flexidepth::error::{Error, Result};
use flexidepth::model::attention::QueryPos;
use flexidepth::model::linear::Linear;
use flexidepth::model::norm::RmsNorm;
use flexidepth::model::ops::{Fused, Ops};
use flexidepth::model::rope::Rope;
use flexidepth::model::{ForwardCtx, Model};

/// The ops of the training pass: gradients reach every input, never a frozen constant. On tensors outside the
/// graph they fall back to the fused inference kernels, so a frozen prefix costs what inference costs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Differentiable;

impl Ops for Differentiable {
    fn linear(&self, x: &Tensor, linear: &Linear) -> Result<Tensor> {
        match linear.dense_weight() {
            // A trainable weight (router, adapter): the plain matmul, whose backward reaches the weight.
            Some(w) if w.is_variable() => linear.forward(x),
            _ if !x.track_op() => linear.forward(x),
            _ => frozen_linear(x, linear),
        }
    }
    fn rms_norm(&self, x: &Tensor, norm: &RmsNorm) -> Result<Tensor> {
        if !x.track_op() && !norm.weight.is_variable() {
            return Fused.rms_norm(x, norm);
        }
        rms_norm(x, norm)
    }
    fn softmax(&self, x: &Tensor) -> Result<Tensor> {
        if !x.track_op() {
            return Fused.softmax(x);
        }
        softmax(x)
    }
    fn rope(&self, x: &Tensor, r: &Rope, pos: &QueryPos) -> Result<Tensor> {
        if !x.track_op() {
            return Fused.rope(x, r, pos);
        }
        let (cos, sin) = match pos {
            QueryPos::Contiguous(start) => r.tables(*start, x.dim(1)?)?,
            QueryPos::Rows(idx) => r.tables_rows(idx)?,
        };
        rope(x, &cos, &sin)
    }
    fn add_mask(&self, scores: &Tensor, mask: &Tensor) -> Result<Tensor> {
        add_const(scores, mask)
    }
}

/// What the training forward returns.
#[derive(Debug)]
pub struct TrainForward {
    /// `[seq, vocab]`
    pub logits: Tensor,
    /// Continuous gates `[seq]`, one per routed layer in layer order (in the graph: `L_skip` is built on them).
    pub gates: Vec<Tensor>,
    /// Rows that ran each routed layer in full (hard decisions), for the layers-used statistic.
    pub rows_run: Vec<usize>,
    /// Layers used per row (the engine's accounting of the executed plan), summed over the rows.
    pub layers_sum: f64,
    /// Hidden states entering the first routed layer (no graph): the teacher continues from here.
    pub prefix: Tensor,
    /// The first routed layer.
    pub first_routed: usize,
}

/// The first routed layer of `model`.
pub fn first_routed(model: &Model) -> Result<usize> {
    model
        .routed_layers()
        .first()
        .copied()
        .ok_or_else(|| Error::Input("no routed layers to train".into()))
}

/// Forward `ids` (one sequence, from position 0, no cache) through `model` under FlexiDepth routing with
/// `routing`'s threshold, skip unit (the whole layer as released, or the FFN only) and gate scaling (released: the
/// LM loss reaches the routers through the gates; hard: only `L_skip` does), with the trainable routers and
/// adapters the model holds.
pub fn forward(model: &Model, ids: &[u32], routing: Routing) -> Result<TrainForward> {
    let first = first_routed(model)?;
    let n = model.layers.len();
    let ctx = ForwardCtx::new(model, 0, ids.len())?;
    let prefix = model
        .run_layers(&Fused, model.embed(ids)?, 0..first, &ctx, None, &FullDepth)?
        .hidden;
    let policy = FlexiDepth {
        skip_threshold: Some(routing.skip_threshold),
        unit: Some(routing.skip_unit),
        gate_scaling: Some(routing.gate_scaling),
        ..FlexiDepth::default()
    };
    let out = model.run_layers(&Differentiable, prefix.clone(), first..n, &ctx, None, &policy)?;
    let bytes = model.layer_bytes();
    // The frozen prefix's layers run in full for every row.
    let layers_sum = (0..ids.len())
        .map(|row| first as f64 + out.plan.layers_used(row, &bytes))
        .sum();
    let rows_run = out
        .plan
        .routed()
        .map(|r| {
            (0..ids.len())
                .filter(|&row| r.step(row).is_some_and(|s| s.is_full()))
                .count()
        })
        .collect();
    Ok(TrainForward {
        logits: model.head(&Differentiable, &out.hidden)?,
        gates: out.gates,
        rows_run,
        layers_sum,
        prefix,
        first_routed: first,
    })
}

/// Logits `[seq, vocab]` of the frozen full-depth model continued from `prefix` (the hidden states entering layer
/// `start`, positions `0..seq`): the teacher of distillation. No graph.
pub fn teacher_logits(model: &Model, prefix: Tensor, start: usize) -> Result<Tensor> {
    let ctx = ForwardCtx::new(model, 0, prefix.dim(0)?)?;
    let x = model
        .run_layers(&Fused, prefix, start..model.layers.len(), &ctx, None, &FullDepth)?
        .hidden;
    model.head(&Fused, &x)
}
