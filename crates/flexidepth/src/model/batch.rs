//! A decode step of many sequences at once (continuous batching): one new token per sequence, each sequence with
//! its own KV cache, position and depth policy.
//!
//! Per layer, every linear layer multiplies the rows of the whole batch in one call (a weight is read once per step,
//! not once per sequence), and the rows are grouped by what their plan says, as [`super::layer::DecoderLayer`]
//! groups the rows of one sequence: K/V for every present row, queries, attention and `o_proj` only for the rows
//! that run attention (each row attends over its own cache), the MLP for the MLP rows and the adapter for the
//! adapter rows — so a row that skips saves its work in a batch too. A row whose policy runs another layer in a
//! layer's place (LaCo's merged layer) is run by that layer after the others. Rows sharing a policy object are planned
//! together (one router call for them).
//!
//! With [`super::invariant::RowInvariant`] ops a row's logits are the same, bit for bit, whatever else is in the
//! batch; the arithmetic per row is the layer's own (same kernels, same order), so results also agree with
//! [`Model::forward_with`] up to the rounding of the kernels each picks.

use super::attention::{mask_for_rows, QueryPos};
use super::layer::DecoderLayer;
use super::ops::Ops;
use super::plan::{
    AttnStep, DepthPolicy, ExecutedPlan, FfnStep, LayerInput, LayerPlan, LayerRecord, RecordKind, RowStep,
};
use super::rope::Rope;
use super::Model;
use crate::cache::KvCache;
use crate::error::{Error, Result};
use candle_core::{DType, Tensor};
use std::sync::Arc;

/// One sequence's next token in a batched decode step.
pub struct BatchRow<'a> {
    /// The token to feed (at position `cache.len()`).
    pub token: u32,
    pub cache: &'a mut KvCache,
    pub policy: &'a dyn DepthPolicy,
}

/// The result of [`Model::forward_batch`].
#[derive(Debug)]
pub struct BatchOutput {
    /// `[rows, vocab]`, in the order of the rows.
    pub logits: Tensor,
    /// What each layer did, per row (each an [`ExecutedPlan`] of one row).
    pub plans: Vec<ExecutedPlan>,
}

/// What one layer does with each row of the batch.
struct RowPlans {
    /// `None`: the layer is absent for the row (pruned, or the row exited earlier).
    steps: Vec<Option<RowStep>>,
    /// The gate that scales the row's FFN, when its plan scales by the gate.
    scale: Vec<Option<f32>>,
    /// `input_layernorm(x)`, when one policy planned every row and computed it.
    normed: Option<Tensor>,
    /// Rows whose policy runs another layer in this one's place ([`LayerPlan::Replaced`], LaCo's merged layer),
    /// by replacement; their `steps` are `None` (the layer itself does not run them).
    replaced: Vec<(Arc<DecoderLayer>, Vec<usize>)>,
}

impl Model {
    /// Feed each row's token at its cache's next position, every row through every layer under its own policy, and
    /// return the logits of each row; each cache grows by one position. See the module docs for how the batch is
    /// computed; `ops` is [`super::invariant::RowInvariant`] for batch-invariant results.
    ///
    /// Errors: an empty batch, a token outside the vocabulary, a full cache ([`Error::ContextOverflow`]), a plan
    /// that does not fit its rows.
    pub fn forward_batch(&self, ops: &dyn Ops, rows: &mut [BatchRow]) -> Result<BatchOutput> {
        if rows.is_empty() {
            return Err(Error::Input("a batched step needs at least one row".into()));
        }
        let positions: Vec<usize> = rows.iter().map(|r| r.cache.len()).collect();
        for (row, &pos) in rows.iter_mut().zip(&positions) {
            row.cache.reserve(pos + 1)?;
        }
        let ids: Vec<u32> = rows.iter().map(|r| r.token).collect();
        let mut x = self.embed(&ids)?;
        let groups = policy_groups(rows);
        let mut plans = vec![
            ExecutedPlan {
                rows: 1,
                layers: vec![]
            };
            rows.len()
        ];
        let mut exited = vec![false; rows.len()];
        let n = rows.len();
        for layer in &self.layers {
            let mut plan = plan_layer(layer, ops, &x, &positions, &groups, &mut exited, &mut plans)?;
            let replaced = std::mem::take(&mut plan.replaced);
            if plan.steps.iter().any(Option::is_some) {
                x = layer_forward(layer, ops, &self.rope, &x, rows, &positions, plan)?;
            }
            // A row a layer pass does not run goes through it unchanged, so each replacement runs its own rows
            // after the layer has run the others (K/V under the same layer index, as `run_layers` writes them).
            for (other, members) in replaced {
                let mut steps = vec![None; n];
                members.iter().for_each(|&i| steps[i] = Some(RowStep::RUN));
                let plan = RowPlans {
                    steps,
                    scale: vec![None; n],
                    normed: None,
                    replaced: Vec::new(),
                };
                x = layer_forward(&other, ops, &self.rope, &x, rows, &positions, plan)?;
            }
        }
        for (row, &pos) in rows.iter_mut().zip(&positions) {
            row.cache.set_len(pos + 1);
        }
        Ok(BatchOutput {
            logits: self.head(ops, &x)?,
            plans,
        })
    }
}

/// The rows of each distinct policy object, in order of first appearance.
fn policy_groups<'a>(rows: &[BatchRow<'a>]) -> Vec<(&'a dyn DepthPolicy, Vec<usize>)> {
    let mut groups: Vec<(&'a dyn DepthPolicy, Vec<usize>)> = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        // Same object (address and type): same decisions. Equal policies in two objects are merely planned apart.
        match groups.iter_mut().find(|(p, _)| std::ptr::eq(*p, row.policy)) {
            Some((_, members)) => members.push(i),
            None => groups.push((row.policy, vec![i])),
        }
    }
    groups
}

/// Each group's policy plans its live rows; the plans are recorded per row and merged into one [`RowPlans`].
fn plan_layer(
    layer: &DecoderLayer,
    ops: &dyn Ops,
    x: &Tensor,
    positions: &[usize],
    groups: &[(&dyn DepthPolicy, Vec<usize>)],
    exited: &mut [bool],
    plans: &mut [ExecutedPlan],
) -> Result<RowPlans> {
    let n = positions.len();
    let mut out = RowPlans {
        steps: vec![None; n],
        scale: vec![None; n],
        normed: None,
        replaced: Vec::new(),
    };
    for (policy, members) in groups {
        let live: Vec<usize> = members.iter().copied().filter(|&i| !exited[i]).collect();
        if live.is_empty() {
            continue;
        }
        let whole = live.len() == n;
        let xg = if whole { x.clone() } else { select_rows(x, &live)? };
        let input = LayerInput::new(layer, &xg, positions[live[0]], ops);
        let plan = policy.plan(layer, &input)?;
        if whole {
            out.normed = input.take_normed();
        }
        let record = |kind: RecordKind, gates: Option<Vec<f32>>| LayerRecord {
            layer_idx: layer.layer_idx,
            kind,
            gates,
        };
        match plan {
            LayerPlan::Exit => live.iter().for_each(|&i| exited[i] = true),
            LayerPlan::Replaced(other) => {
                live.iter()
                    .for_each(|&i| plans[i].layers.push(record(RecordKind::Full, None)));
                match out.replaced.iter_mut().find(|(l, _)| Arc::ptr_eq(l, &other)) {
                    Some((_, rows)) => rows.extend(&live),
                    None => out.replaced.push((other, live)),
                }
            }
            LayerPlan::Absent => live
                .iter()
                .for_each(|&i| plans[i].layers.push(record(RecordKind::Absent, None))),
            LayerPlan::Full => {
                for &i in &live {
                    out.steps[i] = Some(RowStep::RUN);
                    plans[i].layers.push(record(RecordKind::Full, None));
                }
            }
            LayerPlan::Rows {
                steps,
                gates,
                scale_by_gate,
            } => {
                if steps.len() != live.len() || gates.as_ref().is_some_and(|g| g.values.len() != live.len()) {
                    return Err(Error::Input(format!(
                        "layer {}: a plan for {} rows on {} rows",
                        layer.layer_idx,
                        steps.len(),
                        live.len()
                    )));
                }
                if scale_by_gate && gates.is_none() {
                    return Err(Error::Input(format!(
                        "layer {}: a gate-scaled plan without gates",
                        layer.layer_idx
                    )));
                }
                for (j, &i) in live.iter().enumerate() {
                    let gate = gates.as_ref().map(|g| g.values[j]);
                    out.steps[i] = Some(steps[j]);
                    out.scale[i] = gate.filter(|_| scale_by_gate);
                    plans[i]
                        .layers
                        .push(record(RecordKind::Rows(vec![steps[j]]), gate.map(|g| vec![g])));
                }
            }
        }
    }
    Ok(out)
}

/// One layer on the rows of a batch: K/V into each row's cache, attention for the rows that run it, then the FFN
/// per row group.
fn layer_forward(
    layer: &DecoderLayer,
    ops: &dyn Ops,
    rope: &Rope,
    x: &Tensor,
    rows: &mut [BatchRow],
    positions: &[usize],
    mut plan: RowPlans,
) -> Result<Tensor> {
    let u = match plan.normed.take() {
        Some(u) => u,
        None => ops.rms_norm(x, &layer.input_layernorm)?,
    };
    write_kv(layer, ops, rope, &u, rows, positions, &plan.steps)?;
    let h = attend(layer, ops, rope, x, &u, rows, positions, &plan.steps)?;
    ffn(layer, ops, &h, &plan)
}

/// K/V of every row the layer is present for, each written into its own cache at its position (and hidden from
/// later tokens when its step says so).
fn write_kv(
    layer: &DecoderLayer,
    ops: &dyn Ops,
    rope: &Rope,
    u: &Tensor,
    rows: &mut [BatchRow],
    positions: &[usize],
    steps: &[Option<RowStep>],
) -> Result<()> {
    let present = rows_where(steps, |_| true);
    let pos_idx = position_index(&present, positions, u.device())?;
    let (k, v) = layer
        .self_attn
        .project_kv_at(ops, &select_rows(u, &present)?, rope, &QueryPos::Rows(&pos_idx))?;
    for (j, &i) in present.iter().enumerate() {
        let cache = &mut *rows[i].cache;
        let (kj, vj) = (k.narrow(1, j, 1)?.contiguous()?, v.narrow(1, j, 1)?.contiguous()?);
        cache.write(layer.layer_idx, positions[i], &kj, &vj)?;
        if steps[i].is_some_and(|s| s.attn == AttnStep::KvHidden) {
            cache.hide(layer.layer_idx, positions[i]);
        }
    }
    Ok(())
}

/// `h = x + attn(u)` on the rows that run attention (queries and `o_proj` batched, each row over its own cache),
/// `h = x` on the others.
#[allow(clippy::too_many_arguments)]
fn attend(
    layer: &DecoderLayer,
    ops: &dyn Ops,
    rope: &Rope,
    x: &Tensor,
    u: &Tensor,
    rows: &[BatchRow],
    positions: &[usize],
    steps: &[Option<RowStep>],
) -> Result<Tensor> {
    let run = rows_where(steps, |s| s.attn == AttnStep::Run);
    if run.is_empty() {
        return Ok(x.clone());
    }
    let attn = &layer.self_attn;
    let pos_idx = position_index(&run, positions, x.device())?;
    let q = attn.project_q(ops, &select_rows(u, &run)?, rope, &QueryPos::Rows(&pos_idx))?;
    let mut heads = Vec::with_capacity(run.len());
    for (j, &i) in run.iter().enumerate() {
        let (pos, cache) = (positions[i], &*rows[i].cache);
        let kv_len = pos + 1;
        let (k, v) = cache.view(layer.layer_idx, kv_len)?;
        // The newest token sees every key, except keys hidden by the no-skip-KV ablation.
        let mask = match cache.hidden(layer.layer_idx, kv_len) {
            Some(hidden) => Some(mask_for_rows(&[pos], kv_len, Some(hidden), x.device(), DType::F32)?),
            None => None,
        };
        heads.push(attn.attend_queries(ops, &q.narrow(1, j, 1)?, &k, &v, mask.as_ref())?);
    }
    let out = ops.linear(&Tensor::cat(&heads, 0)?, &attn.o_proj)?;
    add_rows(x, &run, &out)
}

/// `out = h + (scaled) MLP or adapter of post_attention_layernorm(h)`, per row group (as the single-sequence
/// layer: MLP rows scaled by their gate, adapter rows by one minus it, when their plan scales).
fn ffn(layer: &DecoderLayer, ops: &dyn Ops, h: &Tensor, plan: &RowPlans) -> Result<Tensor> {
    let v = ops.rms_norm(h, &layer.post_attention_layernorm)?;
    let mut out = h.clone();
    for kind in [FfnStep::Mlp, FfnStep::Adapter] {
        let group = rows_where(&plan.steps, |s| s.ffn == kind);
        if group.is_empty() {
            continue;
        }
        let input = select_rows(&v, &group)?;
        let y = match kind {
            FfnStep::Mlp => layer.mlp.forward(ops, &input)?,
            _ => {
                let adapter = layer.router_proj.as_ref().ok_or_else(|| {
                    Error::Input(format!(
                        "layer {} has no adapter to stand in for its FFN",
                        layer.layer_idx
                    ))
                })?;
                adapter.forward(ops, &input)?
            }
        };
        let y = if group.iter().any(|&i| plan.scale[i].is_some()) {
            // An unscaled row is multiplied by exactly 1.
            let s: Vec<f32> = group
                .iter()
                .map(|&i| match (plan.scale[i], kind) {
                    (Some(w), FfnStep::Mlp) => w,
                    (Some(w), _) => 1.0 - w,
                    (None, _) => 1.0,
                })
                .collect();
            y.broadcast_mul(&Tensor::from_vec(s, (group.len(), 1), h.device())?)?
        } else {
            y
        };
        out = add_rows(&out, &group, &y)?;
    }
    Ok(out)
}

/// Indices of the present rows whose step satisfies `pred`.
fn rows_where(steps: &[Option<RowStep>], pred: impl Fn(&RowStep) -> bool) -> Vec<usize> {
    (0..steps.len())
        .filter(|&i| steps[i].as_ref().is_some_and(&pred))
        .collect()
}

/// Rows `idx` of `x` (`x` itself when they are all of them, in order).
fn select_rows(x: &Tensor, idx: &[usize]) -> Result<Tensor> {
    if idx.len() == x.dim(0)? {
        return Ok(x.clone());
    }
    let idx: Vec<u32> = idx.iter().map(|&i| i as u32).collect();
    Ok(x.index_select(&Tensor::new(idx.as_slice(), x.device())?, 0)?)
}

/// `x` with `y`'s rows added to rows `idx`.
fn add_rows(x: &Tensor, idx: &[usize], y: &Tensor) -> Result<Tensor> {
    if idx.len() == x.dim(0)? {
        return Ok((x + y)?);
    }
    let idx: Vec<u32> = idx.iter().map(|&i| i as u32).collect();
    Ok(x.index_add(&Tensor::new(idx.as_slice(), x.device())?, y, 0)?)
}

/// The positions of rows `idx`, as the `[rows]` u32 tensor rope takes.
fn position_index(idx: &[usize], positions: &[usize], device: &candle_core::Device) -> Result<Tensor> {
    let pos: Vec<u32> = idx.iter().map(|&i| positions[i] as u32).collect();
    Ok(Tensor::new(pos.as_slice(), device)?)
}
