//! One pre-norm decoder layer, `h = x + attn(norm(x)); out = h + mlp(norm(h))`, and its FlexiDepth form when the
//! layer is routed (spec A3):
//!
//! ```text
//! u = input_layernorm(x);  w = sigmoid(router(u));  run = w > threshold
//! K, V of every row → cache                          (skipped rows too: they skip only q, attention, o_proj)
//! h = x + attn(u)          on run rows;  h = x on skipped rows
//! out = h + w · mlp(norm(h))          on run rows
//! out = h + (1 − w) · adapter(norm(h)) on skipped rows
//! ```
//!
//! Rows are split into a run group and a skip group, each computed as one batch and scattered back, so a skipped
//! row never pays for `q_proj`, attention, `o_proj` or the MLP. At batch 1 there is one group and no gather.

use super::attention::{mask_for_rows, Attention, QueryPos};
use super::mlp::Mlp;
use super::norm::RmsNorm;
use super::ForwardCtx;
use crate::cache::KvCache;
use crate::depth::{Adapter, DepthMode, Router};
use crate::error::Result;
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

/// What a routed layer decided for each row of a forward pass.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerRouting {
    pub layer_idx: usize,
    pub gates: Vec<f32>,
    pub run: Vec<bool>,
}

impl DecoderLayer {
    /// The layer on `x: [rows, hidden]`; writes this layer's K/V for the new positions into `cache`. Routed layers
    /// also return their decisions.
    pub fn forward(&self, x: &Tensor, ctx: &ForwardCtx, cache: &mut KvCache) -> Result<(Tensor, Option<LayerRouting>)> {
        match (&self.router, &self.router_proj) {
            (Some(router), Some(adapter)) if ctx.depth.mode != DepthMode::Off => {
                self.forward_routed(x, ctx, cache, router, adapter)
            }
            _ => Ok((
                self.forward_full(x, &self.input_layernorm.forward(x)?, ctx, cache)?,
                None,
            )),
        }
    }

    /// The plain layer (every row runs, unscaled), given `normed = input_layernorm(x)`.
    fn forward_full(&self, x: &Tensor, normed: &Tensor, ctx: &ForwardCtx, cache: &mut KvCache) -> Result<Tensor> {
        let (k, v) = self.self_attn.project_kv(normed, ctx.rope, ctx.pos)?;
        cache.write(self.layer_idx, ctx.pos, &k, &v)?;
        let (k_all, v_all) = cache.view(self.layer_idx, ctx.pos + ctx.seq_len)?;
        let attn = self.self_attn.attend(
            normed,
            ctx.rope,
            QueryPos::Contiguous(ctx.pos),
            &k_all,
            &v_all,
            ctx.mask.as_ref(),
        )?;
        let h = (x + attn)?;
        let mlp = self.mlp.forward(&self.post_attention_layernorm.forward(&h)?)?;
        Ok((h + mlp)?)
    }

    fn forward_routed(
        &self,
        x: &Tensor,
        ctx: &ForwardCtx,
        cache: &mut KvCache,
        router: &Router,
        adapter: &Adapter,
    ) -> Result<(Tensor, Option<LayerRouting>)> {
        let settings = &ctx.depth;
        let u = self.input_layernorm.forward(x)?;
        let gates_t = router.gates(&u)?;
        let gates: Vec<f32> = gates_t.to_vec1()?;
        let run: Vec<bool> = match settings.mode {
            DepthMode::Dynamic => gates.iter().map(|&w| w > settings.skip_threshold).collect(),
            DepthMode::Run | DepthMode::Off => vec![true; gates.len()],
            DepthMode::Skip => vec![false; gates.len()],
        };
        let routing = LayerRouting {
            layer_idx: self.layer_idx,
            gates,
            run: run.clone(),
        };
        if settings.mode == DepthMode::Run {
            // Forced run is the base model, bit for bit: same code path, no gate scaling.
            return Ok((self.forward_full(x, &u, ctx, cache)?, Some(routing)));
        }

        // Every row writes K/V (released behaviour); the ablation hides the skipped rows' entries afterwards.
        let (k, v) = self.self_attn.project_kv(&u, ctx.rope, ctx.pos)?;
        cache.write(self.layer_idx, ctx.pos, &k, &v)?;
        if !settings.skip_kv {
            for (i, _) in run.iter().enumerate().filter(|(_, r)| !**r) {
                cache.hide(self.layer_idx, ctx.pos + i);
            }
        }
        let rows = run.len();
        let run_rows: Vec<u32> = (0..rows as u32).filter(|&i| run[i as usize]).collect();
        let skip_rows: Vec<u32> = (0..rows as u32).filter(|&i| !run[i as usize]).collect();
        let device = x.device();

        // Attention on the run rows only.
        let h = if run_rows.is_empty() {
            x.clone()
        } else {
            let kv_len = ctx.pos + ctx.seq_len;
            let (k_all, v_all) = cache.view(self.layer_idx, kv_len)?;
            let positions: Vec<usize> = run_rows.iter().map(|&i| ctx.pos + i as usize).collect();
            let hidden = cache.hidden(self.layer_idx, kv_len);
            let mask = if positions.len() == 1 && hidden.is_none() && positions[0] + 1 == kv_len {
                None // the last token sees every key
            } else {
                Some(mask_for_rows(&positions, kv_len, hidden, device, DType::F32)?)
            };
            if skip_rows.is_empty() {
                let attn = self.self_attn.attend(
                    &u,
                    ctx.rope,
                    QueryPos::Contiguous(ctx.pos),
                    &k_all,
                    &v_all,
                    mask.as_ref(),
                )?;
                (x + attn)?
            } else {
                let idx = Tensor::new(run_rows.as_slice(), device)?;
                let pos_idx = Tensor::new(positions.iter().map(|&p| p as u32).collect::<Vec<_>>(), device)?;
                let u_run = u.index_select(&idx, 0)?;
                let attn = self.self_attn.attend(
                    &u_run,
                    ctx.rope,
                    QueryPos::Rows(&pos_idx),
                    &k_all,
                    &v_all,
                    mask.as_ref(),
                )?;
                x.index_add(&idx, &attn, 0)?
            }
        };

        // FFN on run rows scaled by w, adapter on skipped rows scaled by 1 − w.
        let v_norm = self.post_attention_layernorm.forward(&h)?;
        let w = gates_t.unsqueeze(1)?;
        let out = if skip_rows.is_empty() {
            (&h + self.mlp.forward(&v_norm)?.broadcast_mul(&w)?)?
        } else if run_rows.is_empty() {
            (&h + adapter.forward(&v_norm)?.broadcast_mul(&(1.0 - &w)?)?)?
        } else {
            let run_idx = Tensor::new(run_rows.as_slice(), device)?;
            let skip_idx = Tensor::new(skip_rows.as_slice(), device)?;
            let y_run = self
                .mlp
                .forward(&v_norm.index_select(&run_idx, 0)?)?
                .broadcast_mul(&w.index_select(&run_idx, 0)?)?;
            let y_skip = adapter
                .forward(&v_norm.index_select(&skip_idx, 0)?)?
                .broadcast_mul(&(1.0 - w.index_select(&skip_idx, 0)?)?)?;
            h.index_add(&run_idx, &y_run, 0)?.index_add(&skip_idx, &y_skip, 0)?
        };
        Ok((out, Some(routing)))
    }
}
