//! What skipping one layer for one token costs (issue 10, item 2): the labels of the supervised router start.
//!
//! The label of (token `t`, routed layer `l`) is the KL divergence, in nats, of token `t`'s next-token
//! distribution at full depth from the one when **only row `t` skips only layer `l`** — K/V still written, the
//! adapter scaled by `1 − w*` stands in (spec A3, with the fitted adapter at the target gate `w*` of
//! [`crate::local_fit`]; every other row and layer runs unscaled). Only rows `≤ t` influence row `t`'s output and
//! rows `< t` are unchanged, so the label is computed as a single-row pass of row `t` through layers `l..` over the
//! full-depth KV cache ([`skip_kl_labels`]); [`skip_kl_brute_force`] runs the whole sequence for every (t, l) instead
//! and is the reference the fast path is tested against.

use candle_core::{Tensor, D};
use flexidepth::depth::{DepthPolicy, FullDepth, SkipUnit};
use flexidepth::error::{Error, Result};
use flexidepth::model::layer::DecoderLayer;
use flexidepth::model::ops::Fused;
use flexidepth::model::plan::{AttnStep, FfnStep, Gates, LayerInput, LayerPlan, RowStep};
use flexidepth::model::{ForwardCtx, Model};

/// A policy that skips exactly one row of one layer, the adapter scaled by `1 − gate` (released semantics); all
/// else is the base model, unscaled.
#[derive(Debug, Clone, Copy)]
pub struct SkipOne {
    pub layer_idx: usize,
    /// The row (of the pass) that skips.
    pub row: usize,
    pub unit: SkipUnit,
    /// The gate `w` the skipped row's adapter is scaled with (`1 − w`).
    pub gate: f32,
}

/// A skipped row's step for `unit` (released: K/V written; see `flexidepth::depth::FlexiDepth`).
pub fn skip_step(unit: SkipUnit) -> Result<RowStep> {
    match unit {
        SkipUnit::Layer => Ok(RowStep::SKIP),
        SkipUnit::Ffn => Ok(RowStep {
            attn: AttnStep::Run,
            ffn: FfnStep::Adapter,
        }),
        _ => Err(Error::Unsupported(
            "router labels: only the layer and FFN skip units".into(),
        )),
    }
}

impl DepthPolicy for SkipOne {
    fn plan(&self, layer: &DecoderLayer, input: &LayerInput) -> Result<LayerPlan> {
        if layer.layer_idx != self.layer_idx {
            return Ok(LayerPlan::Full);
        }
        let rows = input.x.dim(0)?;
        if self.row >= rows {
            return Err(Error::Input(format!("SkipOne: row {} of {rows}", self.row)));
        }
        let mut steps = vec![RowStep::RUN; rows];
        steps[self.row] = skip_step(self.unit)?;
        // Gates of 1 leave run rows' MLP unscaled (×1.0 is exact); the skipped row's adapter gets 1 − gate.
        let mut values = vec![1f32; rows];
        values[self.row] = self.gate;
        Ok(LayerPlan::Rows {
            steps,
            gates: Some(Gates {
                tensor: Tensor::new(values.as_slice(), input.x.device())?,
                values,
            }),
            scale_by_gate: true,
        })
    }
    fn label(&self) -> String {
        format!("skip-one:{}:{}", self.layer_idx, self.row)
    }
}

/// `KL(p ‖ q)` per row of logits `[rows, vocab]`, in nats.
pub fn kl_rows(p_logits: &Tensor, q_logits: &Tensor) -> Result<Vec<f32>> {
    let lp = candle_nn::ops::log_softmax(p_logits, D::Minus1)?;
    let lq = candle_nn::ops::log_softmax(q_logits, D::Minus1)?;
    Ok((lp.exp()? * (lp - lq)?)?.sum(D::Minus1)?.to_vec1()?)
}

/// Labels of one sequence: `kl[k][t]` for the `k`-th routed layer and token `t`, and the router inputs.
#[derive(Debug, Clone)]
pub struct SequenceLabels {
    pub layers: Vec<usize>,
    /// `[layers][tokens]`, nats.
    pub kl: Vec<Vec<f32>>,
    /// `input_layernorm(x)` of each routed layer at full depth, `[tokens, hidden]` (the routers' inputs).
    pub u: Vec<Tensor>,
}

/// The hidden states entering every layer at full depth, and the full-depth KV cache of `ids`.
fn full_depth_states(model: &Model, ids: &[u32]) -> Result<(Vec<Tensor>, Tensor, flexidepth::cache::KvCache)> {
    let n = ids.len();
    let mut cache = model.new_cache(n);
    cache.reserve(n)?;
    let ctx = ForwardCtx::new(model, 0, n)?;
    let mut x = model.embed(ids)?;
    let mut xs = Vec::with_capacity(model.layers.len());
    for l in 0..model.layers.len() {
        xs.push(x.clone());
        x = model
            .run_layers(&Fused, x, l..l + 1, &ctx, Some(&mut cache), &FullDepth)?
            .hidden;
    }
    cache.set_len(n);
    Ok((xs, model.head(&Fused, &x)?, cache))
}

fn check(model: &Model, ids: &[u32], layers: &[usize]) -> Result<()> {
    if ids.is_empty() || ids.len() > model.config.max_position_embeddings {
        return Err(Error::Input(format!(
            "router labels: a sequence of {} tokens (1..={} allowed)",
            ids.len(),
            model.config.max_position_embeddings
        )));
    }
    if let Some(&l) = layers
        .iter()
        .find(|&&l| model.layers.get(l).is_none_or(|x| x.router_proj.is_none()))
    {
        return Err(Error::Input(format!("router labels: layer {l} has no adapter")));
    }
    Ok(())
}

/// The KL labels of `ids` for `layers` (each needs an attached adapter), fast path: per token, single-row passes
/// over the full-depth KV cache. Cost per token: `Σ_l (n − l)` one-row layer passes and `|layers|` head products.
pub fn skip_kl_labels(
    model: &Model,
    ids: &[u32],
    layers: &[usize],
    unit: SkipUnit,
    gate: f32,
) -> Result<SequenceLabels> {
    check(model, ids, layers)?;
    skip_step(unit)?;
    let n = model.layers.len();
    let (xs, full_logits, mut cache) = full_depth_states(model, ids)?;
    let mut kl = vec![vec![0f32; ids.len()]; layers.len()];
    let first = layers.iter().copied().min().unwrap_or(0);
    #[allow(clippy::needless_range_loop)] // t is a position as much as an index
    for t in 0..ids.len() {
        let ctx = ForwardCtx::new(model, t, 1)?;
        let p = full_logits.narrow(0, t, 1)?;
        for (k, &l) in layers.iter().enumerate() {
            let policy = SkipOne {
                layer_idx: l,
                row: 0,
                unit,
                gate,
            };
            // Writes row t's (changed) K/V at layers ≥ l; positions < t stay the full-depth ones.
            let x = model
                .run_layers(&Fused, xs[l].narrow(0, t, 1)?, l..n, &ctx, Some(&mut cache), &policy)?
                .hidden;
            kl[k][t] = kl_rows(&p, &model.head(&Fused, &x)?)?[0].max(0.0);
        }
        // Restore row t's full-depth K/V for the rows after it.
        model.run_layers(
            &Fused,
            xs[first].narrow(0, t, 1)?,
            first..n,
            &ctx,
            Some(&mut cache),
            &FullDepth,
        )?;
    }
    let u = layers
        .iter()
        .map(|&l| flexidepth::model::ops::Ops::rms_norm(&Fused, &xs[l], &model.layers[l].input_layernorm))
        .collect::<Result<_>>()?;
    Ok(SequenceLabels {
        layers: layers.to_vec(),
        kl,
        u,
    })
}

/// The same labels by brute force: for every (layer, token) a whole-sequence pass (no cache) in which only that
/// row skips only that layer. `[layers][tokens]`. For tests and tiny inputs.
pub fn skip_kl_brute_force(
    model: &Model,
    ids: &[u32],
    layers: &[usize],
    unit: SkipUnit,
    gate: f32,
) -> Result<Vec<Vec<f32>>> {
    check(model, ids, layers)?;
    let full = model
        .forward_ops(&Fused, ids, None, flexidepth::model::Logits::All, &FullDepth)?
        .logits;
    let mut out = Vec::new();
    for &l in layers {
        let mut row = Vec::new();
        for t in 0..ids.len() {
            let policy = SkipOne {
                layer_idx: l,
                row: t,
                unit,
                gate,
            };
            let q = model
                .forward_ops(&Fused, ids, None, flexidepth::model::Logits::All, &policy)?
                .logits;
            row.push(kl_rows(&full.narrow(0, t, 1)?, &q.narrow(0, t, 1)?)?[0].max(0.0));
        }
        out.push(row);
    }
    Ok(out)
}
