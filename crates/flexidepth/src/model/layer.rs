//! One pre-norm decoder layer, `h = x + attn(norm(x)); out = h + mlp(norm(h))`, executing a [`LayerPlan`] — the
//! one place where the layer math lives, for inference and training alike (the [`Ops`] differ, not the code).
//!
//! A [`LayerPlan::Rows`] plan is FlexiDepth's layer when its rows are run or skip (spec A3):
//!
//! ```text
//! u = input_layernorm(x);  w = sigmoid(router(u))     (the policy computed w when it planned)
//! K, V of every row → cache                            (skipped rows too: they skip only q, attention, o_proj)
//! h = x + attn(u)          on Run rows;  h = x on the others
//! out = h + w · mlp(norm(h))          on Mlp rows       (unscaled without gates)
//! out = h + (1 − w) · adapter(norm(h)) on Adapter rows
//! out = h                              on Skip rows
//! ```
//!
//! Rows are grouped by what they do (attention: run or not; FFN: MLP, adapter or nothing), each group computed as
//! one batch and scattered back, so a row never pays for a part it skips. At batch 1 there is one group and no gather.

use super::adapter::Adapter;
use super::attention::{mask_for_rows, Attention, AttnBlock, QueryPos};
use super::mlp::Mlp;
use super::norm::RmsNorm;
use super::ops::Ops;
use super::plan::{AttnStep, FfnStep, Gates, LayerPlan, RowStep};
use super::router::Router;
use super::ForwardCtx;
use crate::cache::KvCache;
use crate::error::{Error, Result};
use candle_core::{DType, Tensor};

#[derive(Debug)]
pub struct DecoderLayer {
    pub layer_idx: usize,
    pub input_layernorm: RmsNorm,
    pub self_attn: Attention,
    pub post_attention_layernorm: RmsNorm,
    pub mlp: Mlp,
    /// FlexiDepth router (`model.layers.{i}.router`), on routed layers only.
    pub router: Option<Router>,
    /// FlexiDepth adapter (`model.layers.{i}.router_proj`), on routed layers only.
    pub router_proj: Option<Adapter>,
}

/// The keys and values the rows attend over: the cache's, or (without a cache) this pass's own.
struct Keys {
    k: Tensor,
    v: Tensor,
    kv_len: usize,
    /// Keys no query may see (besides its own), by position.
    hidden: Option<Vec<bool>>,
}

impl DecoderLayer {
    /// Run the layer on `x: [rows, hidden]` (rows at positions `ctx.pos..`) as `plan` says, writing this layer's K/V
    /// into `cache`; without a cache (a fresh pass from position 0, as training runs) the rows attend over their own
    /// K/V. `normed` is `input_layernorm(x)` when the policy already computed it.
    ///
    /// Errors: [`LayerPlan::Absent`], [`LayerPlan::Exit`] and [`LayerPlan::Replaced`] are the caller's to handle; a plan whose rows or gates
    /// do not match `x`, or an adapter step on a layer without an adapter, is an input error.
    pub fn forward(
        &self,
        ops: &dyn Ops,
        x: &Tensor,
        normed: Option<Tensor>,
        ctx: &ForwardCtx,
        cache: Option<&mut KvCache>,
        plan: &LayerPlan,
    ) -> Result<Tensor> {
        let u = match normed {
            Some(u) => u,
            None => ops.rms_norm(x, &self.input_layernorm)?,
        };
        match plan {
            LayerPlan::Full => self.forward_full(ops, x, &u, ctx, cache),
            LayerPlan::Rows {
                steps,
                gates,
                scale_by_gate,
            } => {
                if steps.len() != ctx.seq_len {
                    return Err(Error::Input(format!(
                        "layer {}: a plan for {} rows on {} rows",
                        self.layer_idx,
                        steps.len(),
                        ctx.seq_len
                    )));
                }
                if steps.iter().all(RowStep::is_full) && !scale_by_gate {
                    // Every row runs unscaled: the base layer, bit for bit (same code path).
                    return self.forward_full(ops, x, &u, ctx, cache);
                }
                let scale = if *scale_by_gate {
                    let g = gates.as_ref().ok_or_else(|| {
                        Error::Input(format!("layer {}: a gate-scaled plan without gates", self.layer_idx))
                    })?;
                    Some(g)
                } else {
                    None
                };
                self.forward_rows(ops, x, &u, ctx, cache, steps, scale)
            }
            LayerPlan::Absent | LayerPlan::Exit | LayerPlan::Replaced(_) => Err(Error::Input(format!(
                "layer {}: an absent or replaced layer is not executed here (the caller runs it)",
                self.layer_idx
            ))),
        }
    }

    /// Write this pass's K/V (or keep them local without a cache) and return what the queries attend over.
    fn keys(
        &self,
        ops: &dyn Ops,
        u: &Tensor,
        ctx: &ForwardCtx,
        cache: Option<&mut KvCache>,
        hide: &[bool],
    ) -> Result<Keys> {
        let pos = match &ctx.packed {
            Some(p) => QueryPos::Rows(&p.row_pos),
            None => QueryPos::Contiguous(ctx.pos),
        };
        let (k, v) = self.self_attn.project_kv_at(ops, u, ctx.rope, &pos)?;
        // Slots equal positions except for a single row in DMTD's shadow history (`ForwardCtx::at_slot`).
        let kv_len = ctx.slot + ctx.seq_len;
        match cache {
            Some(_) if ctx.packed.is_some() => Err(Error::Input("packed sequences run without a KV cache".into())),
            Some(cache) => {
                cache.write(self.layer_idx, ctx.slot, &k, &v)?;
                for (i, _) in hide.iter().enumerate().filter(|(_, h)| **h) {
                    cache.hide(self.layer_idx, ctx.slot + i);
                }
                let (k, v) = cache.view(self.layer_idx, kv_len)?;
                let hidden = cache.hidden(self.layer_idx, kv_len).map(|h| h.to_vec());
                Ok(Keys { k, v, kv_len, hidden })
            }
            None if ctx.pos == 0 => Ok(Keys {
                k,
                v,
                kv_len,
                hidden: hide.iter().any(|h| *h).then(|| hide.to_vec()),
            }),
            None => Err(Error::Input(
                "a pass without a KV cache must start at position 0".into(),
            )),
        }
    }

    /// The plain layer (every row runs, unscaled), given `u = input_layernorm(x)`.
    fn forward_full(
        &self,
        ops: &dyn Ops,
        x: &Tensor,
        u: &Tensor,
        ctx: &ForwardCtx,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let keys = self.keys(ops, u, ctx, cache, &[])?;
        let mask = match &keys.hidden {
            // Keys hidden by an earlier pass (the no-skip-KV ablation) stay hidden.
            Some(h) => {
                let positions: Vec<usize> = (ctx.pos..ctx.pos + ctx.seq_len).collect();
                Some(mask_for_rows(&positions, keys.kv_len, Some(h), x.device(), DType::F32)?)
            }
            None => ctx.mask.clone(),
        };
        let h = self.attend_all(ops, x, u, ctx, &keys, mask.as_ref())?;
        let mlp = self
            .mlp
            .forward(ops, &ops.rms_norm(&h, &self.post_attention_layernorm)?)?;
        Ok((h + mlp)?)
    }

    #[allow(clippy::too_many_arguments)]
    fn forward_rows(
        &self,
        ops: &dyn Ops,
        x: &Tensor,
        u: &Tensor,
        ctx: &ForwardCtx,
        cache: Option<&mut KvCache>,
        steps: &[RowStep],
        scale: Option<&Gates>,
    ) -> Result<Tensor> {
        let hide: Vec<bool> = steps.iter().map(|s| s.attn == AttnStep::KvHidden).collect();
        let keys = self.keys(ops, u, ctx, cache, &hide)?;
        let h = self.attend_rows(ops, x, u, ctx, &keys, steps)?;
        self.ffn_rows(ops, &h, steps, scale)
    }

    /// `h = x + attn(u)` with every row a query (rows at `ctx.pos..`, or packed sequences).
    fn attend_all(
        &self,
        ops: &dyn Ops,
        x: &Tensor,
        u: &Tensor,
        ctx: &ForwardCtx,
        keys: &Keys,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let attn = match &ctx.packed {
            None => {
                let q_pos = QueryPos::Contiguous(ctx.pos);
                self.self_attn.attend(ops, u, ctx.rope, q_pos, &keys.k, &keys.v, mask)?
            }
            Some(p) => {
                // Each sequence's rows attend over its own keys, under its causal mask.
                let blocks: Vec<AttnBlock> = p
                    .seqs
                    .iter()
                    .zip(&p.masks)
                    .map(|(rows, mask)| AttnBlock {
                        rows: rows.clone(),
                        keys: rows.clone(),
                        mask: mask.clone(),
                    })
                    .collect();
                let q_pos = QueryPos::Rows(&p.row_pos);
                self.self_attn
                    .attend_blocks(ops, u, ctx.rope, q_pos, &keys.k, &keys.v, &blocks)?
            }
        };
        Ok((x + attn)?)
    }

    /// `h = x + attn(u)` on the rows whose attention runs, `h = x` on the others.
    fn attend_rows(
        &self,
        ops: &dyn Ops,
        x: &Tensor,
        u: &Tensor,
        ctx: &ForwardCtx,
        keys: &Keys,
        steps: &[RowStep],
    ) -> Result<Tensor> {
        let run_rows: Vec<u32> = rows_where(steps, |s| s.attn == AttnStep::Run);
        if run_rows.is_empty() {
            return Ok(x.clone());
        }
        if let Some(p) = &ctx.packed {
            return self.attend_rows_packed(ops, x, u, ctx, p, keys, &run_rows);
        }
        let device = x.device();
        let positions: Vec<usize> = run_rows.iter().map(|&i| ctx.pos + i as usize).collect();
        let hidden = keys.hidden.as_deref();
        let mask = if positions.len() == 1 && hidden.is_none() && positions[0] + 1 == keys.kv_len {
            None // the last token sees every key
        } else {
            Some(mask_for_rows(&positions, keys.kv_len, hidden, device, DType::F32)?)
        };
        if run_rows.len() == steps.len() {
            return self.attend_all(ops, x, u, ctx, keys, mask.as_ref());
        }
        let idx = Tensor::new(run_rows.as_slice(), device)?;
        let pos_idx = Tensor::new(positions.iter().map(|&p| p as u32).collect::<Vec<_>>(), device)?;
        let attn = self.self_attn.attend(
            ops,
            &u.index_select(&idx, 0)?,
            ctx.rope,
            QueryPos::Rows(&pos_idx),
            &keys.k,
            &keys.v,
            mask.as_ref(),
        )?;
        Ok(x.index_add(&idx, &attn, 0)?)
    }

    /// [`Self::attend_rows`] on packed sequences: the running rows of each sequence attend over that sequence's keys.
    #[allow(clippy::too_many_arguments)]
    fn attend_rows_packed(
        &self,
        ops: &dyn Ops,
        x: &Tensor,
        u: &Tensor,
        ctx: &ForwardCtx,
        packed: &super::Packed,
        keys: &Keys,
        run_rows: &[u32],
    ) -> Result<Tensor> {
        let all = run_rows.len() == ctx.seq_len;
        if all && keys.hidden.is_none() {
            return self.attend_all(ops, x, u, ctx, keys, None);
        }
        let device = x.device();
        // Run rows are in row order, so each sequence's are one run of them.
        let mut blocks = Vec::with_capacity(packed.seqs.len());
        let mut positions: Vec<u32> = Vec::with_capacity(run_rows.len());
        let mut next = 0;
        for seq in &packed.seqs {
            let first = next;
            while next < run_rows.len() && (run_rows[next] as usize) < seq.end {
                positions.push(run_rows[next] - seq.start as u32);
                next += 1;
            }
            if next == first {
                continue;
            }
            let in_seq: Vec<usize> = positions[first..next].iter().map(|&p| p as usize).collect();
            let hidden = keys.hidden.as_deref().map(|h| &h[seq.clone()]);
            blocks.push(AttnBlock {
                rows: first..next,
                keys: seq.clone(),
                mask: Some(mask_for_rows(&in_seq, seq.len(), hidden, device, DType::F32)?),
            });
        }
        let pos_idx = Tensor::new(positions, device)?;
        let q_pos = QueryPos::Rows(&pos_idx);
        if all {
            let attn = self
                .self_attn
                .attend_blocks(ops, u, ctx.rope, q_pos, &keys.k, &keys.v, &blocks)?;
            return Ok((x + attn)?);
        }
        let idx = Tensor::new(run_rows, device)?;
        let attn = self.self_attn.attend_blocks(
            ops,
            &u.index_select(&idx, 0)?,
            ctx.rope,
            q_pos,
            &keys.k,
            &keys.v,
            &blocks,
        )?;
        Ok(x.index_add(&idx, &attn, 0)?)
    }

    /// `out = h + (scaled) MLP or adapter of post_attention_layernorm(h)`, per row group.
    fn ffn_rows(&self, ops: &dyn Ops, h: &Tensor, steps: &[RowStep], scale: Option<&Gates>) -> Result<Tensor> {
        let v = ops.rms_norm(h, &self.post_attention_layernorm)?;
        let w = scale.map(|g| g.tensor.unsqueeze(1)).transpose()?; // [rows, 1]
        let adapter = || {
            self.router_proj.as_ref().ok_or_else(|| {
                Error::Input(format!(
                    "layer {} has no adapter to stand in for its FFN",
                    self.layer_idx
                ))
            })
        };
        let rows = steps.len();
        let mut out = h.clone();
        for kind in [FfnStep::Mlp, FfnStep::Adapter] {
            let group = rows_where(steps, |s| s.ffn == kind);
            if group.is_empty() {
                continue;
            }
            let all = group.len() == rows;
            let (input, idx) = if all {
                (v.clone(), None)
            } else {
                let idx = Tensor::new(group.as_slice(), h.device())?;
                (v.index_select(&idx, 0)?, Some(idx))
            };
            let y = match kind {
                FfnStep::Mlp => self.mlp.forward(ops, &input)?,
                _ => adapter()?.forward(ops, &input)?,
            };
            let y = match &w {
                Some(w) => {
                    let w = match &idx {
                        Some(idx) => w.index_select(idx, 0)?,
                        None => w.clone(),
                    };
                    // Released semantics: MLP scaled by w, adapter by 1 − w (spec A3).
                    let s = if kind == FfnStep::Mlp { w } else { (1.0 - w)? };
                    y.broadcast_mul(&s)?
                }
                None => y,
            };
            out = match idx {
                None => (out + y)?,
                Some(idx) => out.index_add(&idx, &y, 0)?,
            };
        }
        Ok(out)
    }
}

/// Indices of the rows whose step satisfies `pred`.
fn rows_where(steps: &[RowStep], pred: impl Fn(&RowStep) -> bool) -> Vec<u32> {
    (0..steps.len() as u32).filter(|&i| pred(&steps[i as usize])).collect()
}
