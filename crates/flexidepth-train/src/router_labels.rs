//! What skipping one layer for one token costs (issue 10, item 2): the labels of the supervised router start.
//!
//! The label of (token `t`, routed layer `l`) is the KL divergence, in nats, of token `t`'s next-token
//! distribution at full depth from the one when **only row `t` skips only layer `l`** — K/V still written, the
//! adapter scaled by `1 − w*` stands in (spec A3, with the fitted adapter at the target gate `w*` of
//! [`crate::local_fit`]; every other row and layer runs unscaled). Only rows `≤ t` influence row `t`'s output and
//! rows `< t` are unchanged, so all rows' labels of one layer come from one pass in which every row attends over the
//! full-depth K/V of the rows before it and its own changed K/V ([`skip_kl_labels`]); [`skip_kl_brute_force`] runs
//! the whole sequence for every (t, l) instead and is the reference the fast path is tested against.

use candle_core::{Tensor, D};
use flexidepth::depth::{DepthPolicy, FullDepth, SkipUnit};
use flexidepth::error::{Error, Result};
use flexidepth::model::attention::QueryPos;
use flexidepth::model::layer::DecoderLayer;
use flexidepth::model::ops::{Fused, Ops};
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
        SkipUnit::Attention => Ok(RowStep {
            attn: AttnStep::KvOnly,
            ffn: FfnStep::Mlp,
        }),
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
        // Gates of 1 leave run rows' MLP unscaled (×1.0 is exact); the skipped row's adapter gets 1 − gate. The
        // attention unit has no adapter and its MLP runs unscaled: nothing is scaled.
        let mut values = vec![1f32; rows];
        values[self.row] = self.gate;
        Ok(LayerPlan::Rows {
            steps,
            gates: Some(Gates {
                tensor: Tensor::new(values.as_slice(), input.x.device())?,
                values,
            }),
            scale_by_gate: self.unit != SkipUnit::Attention,
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

fn check(model: &Model, ids: &[u32], layers: &[usize], unit: SkipUnit) -> Result<()> {
    if ids.is_empty() || ids.len() > model.config.max_position_embeddings {
        return Err(Error::Input(format!(
            "router labels: a sequence of {} tokens (1..={} allowed)",
            ids.len(),
            model.config.max_position_embeddings
        )));
    }
    if let Some(&l) = layers.iter().find(|&&l| {
        model
            .layers
            .get(l)
            .is_none_or(|x| unit != SkipUnit::Attention && x.router_proj.is_none())
    }) {
        return Err(Error::Input(format!("router labels: layer {l} has no adapter")));
    }
    Ok(())
}

/// The KL labels of `ids` for `layers` (each needs an attached adapter), fast path: for each routed layer, one
/// pass of all rows through layers `l..` in which every row is its own counterfactual — it skips layer `l` while
/// attending, at the later layers, over the full-depth K/V of the other rows and its own changed K/V
/// ([`flexidepth::model::attention::Attention::attend_own_rows`]). Equal to [`skip_kl_brute_force`] (tested); cost
/// per sequence `Σ_l (n − l)` layer passes over all rows and `|layers|` head products.
pub fn skip_kl_labels(
    model: &Model,
    ids: &[u32],
    layers: &[usize],
    unit: SkipUnit,
    gate: f32,
) -> Result<SequenceLabels> {
    check(model, ids, layers, unit)?;
    skip_step(unit)?;
    let (n, seq) = (model.layers.len(), ids.len());
    let (xs, full_logits, cache) = full_depth_states(model, ids)?;
    let ctx = ForwardCtx::new(model, 0, seq)?;
    let norm = |x: &Tensor, w| Fused.rms_norm(x, w);
    let mut kl = Vec::with_capacity(layers.len());
    for &l in layers {
        let layer = &model.layers[l];
        // The skipped layer: its K/V are the full-depth ones (its input is unchanged); the adapter, scaled by
        // 1 − gate, stands in for the whole layer or only for its FFN; the attention unit drops only the
        // attention output.
        let h = match unit {
            SkipUnit::Ffn => {
                let (k, v) = cache.view(l, seq)?;
                let u = norm(&xs[l], &layer.input_layernorm)?;
                let attn =
                    layer
                        .self_attn
                        .attend(&Fused, &u, ctx.rope, QueryPos::Contiguous(0), &k, &v, ctx.mask.as_ref())?;
                (&xs[l] + attn)?
            }
            _ => xs[l].clone(),
        };
        let v = norm(&h, &layer.post_attention_layernorm)?;
        let mut x = if unit == SkipUnit::Attention {
            // MindSkip: no attention output, the layer's own MLP unscaled.
            (&h + layer.mlp.forward(&Fused, &v)?)?
        } else {
            let adapter = layer
                .router_proj
                .as_ref()
                .ok_or_else(|| Error::Input(format!("router labels: layer {l} has no adapter")))?;
            (&h + (adapter.forward(&Fused, &v)? * (1.0 - gate as f64))?)?
        };
        // Later layers run in full; each row sees the others' full-depth K/V and its own.
        for later in &model.layers[l + 1..n] {
            let u = norm(&x, &later.input_layernorm)?;
            let (own_k, own_v) = later.self_attn.project_kv(&Fused, &u, ctx.rope, 0)?;
            let (k, v) = cache.view(later.layer_idx, seq)?;
            let attn =
                later
                    .self_attn
                    .attend_own_rows(&Fused, &u, ctx.rope, &k, &v, &own_k, &own_v, ctx.mask.as_ref())?;
            let h = (&x + attn)?;
            x = (&h + later.mlp.forward(&Fused, &norm(&h, &later.post_attention_layernorm)?)?)?;
        }
        let q = model.head(&Fused, &x)?;
        kl.push(kl_rows(&full_logits, &q)?.into_iter().map(|v| v.max(0.0)).collect());
    }
    let u = layers
        .iter()
        .map(|&l| Fused.rms_norm(&xs[l], &model.layers[l].input_layernorm))
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
    check(model, ids, layers, unit)?;
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
