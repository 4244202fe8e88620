//! LaCo (Yang et al., "LaCo: Large Language Model Pruning via Layer Collapse", 2024): rear layers collapse into an
//! earlier one by Reserving-Differences-while-Seeking-Common (RDSC) layer merge,
//!
//! ```text
//! θ*_l = θ_l + Σ_{k=1}^{m} (θ_{l+k} − θ_l)        (every parameter of the layer: projections, biases, norms)
//! ```
//!
//! and layers `l+1..=l+m` are removed. Which merges are kept follows the paper's Algorithm 1: from the top of the
//! layer range down, merge `C` layers into layer `l`; keep the merge iff the mean cosine similarity of the merged
//! model's representations (the last layer's hidden states, per calibration token) with the original's exceeds
//! the threshold `T`, then move `I` layers down; otherwise move one layer down.
//!
//! Ours, named as such: `laco:K` asks for exactly `K` removed layers, so a merge takes at most the layers still to
//! remove (`m = min(C − 1, K − removed)`), the search stops when `K` are removed, and a sweep that ends short of `K`
//! is repeated with `T` lowered by [`LacoSettings::threshold_step`]. Merged weights are dense: f32 for an f32
//! model, Q8_0 blocks for a quantized one (the rest of the model keeps its own blocks); bytes read per token are
//! still counted as the original layer's.
//!
//! As a depth policy the original model is untouched: a merged layer is a [`LayerPlan::Replaced`] (writing K/V
//! under its own index), the collapsed layers are [`LayerPlan::Absent`].

use crate::error::{Error, Result};
use crate::model::attention::Attention;
use crate::model::layer::DecoderLayer;
use crate::model::linear::{Linear, LinearWeight};
use crate::model::mlp::Mlp;
use crate::model::norm::RmsNorm;
use crate::model::ops::Fused;
use crate::model::plan::{DepthPolicy, FullDepth, LayerInput, LayerPlan};
use crate::model::{ForwardCtx, Model, WeightFormat};
use candle_core::quantized::QMatMul;
use candle_core::{DType, Tensor};
use std::collections::HashMap;
use std::sync::Arc;

/// The knobs of Algorithm 1, with the paper's Llama2-7B values (`C = 4`, `I = 2`, `T = 0.65`, range from layer
/// 5 of 32 to the top) scaled to the model's depth by [`LacoSettings::for_layers`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LacoSettings {
    /// `C`: layers merged into one by a merge (≥ 2).
    pub merge_layers: usize,
    /// Merges start at layers in `lowest..highest` (the paper's `[L, H]`; `highest` exclusive).
    pub lowest: usize,
    pub highest: usize,
    /// `I`: layers moved down after a kept merge.
    pub interval: usize,
    /// `T`: a merge is kept iff the mean cosine similarity exceeds it.
    pub threshold: f64,
    /// How much `T` drops for each further sweep when a sweep removed fewer layers than asked (ours).
    pub threshold_step: f64,
}

impl LacoSettings {
    /// The paper's Llama2-7B settings scaled to `num_layers`: `C = 4`, `I = 2`, `T = 0.65`, merges from layer
    /// `⌊5·n/32⌋` up.
    pub fn for_layers(num_layers: usize) -> Self {
        LacoSettings {
            merge_layers: 4,
            lowest: num_layers * 5 / 32,
            highest: num_layers,
            interval: 2,
            threshold: 0.65,
            threshold_step: 0.05,
        }
    }
}

/// One kept merge: `layers[1..]` collapsed into `layers[0]` (original indices; a merged layer may itself hold
/// earlier merges).
#[derive(Debug, Clone, PartialEq)]
pub struct Merge {
    pub layers: Vec<usize>,
    /// Mean cosine similarity of the last hidden states with the original model's after this merge.
    pub similarity: f64,
    /// The threshold it passed.
    pub threshold: f64,
}

/// A layer's parameters as dense f32 tensors, in a fixed order (`None` where the architecture has none).
#[derive(Debug, Clone)]
pub struct LayerParams(Vec<Option<Tensor>>);

/// The dense f32 `[out, in]` weight of `linear`, whatever its storage.
pub fn dense_weight(linear: &Linear) -> Result<Tensor> {
    Ok(match &linear.weight {
        LinearWeight::Dense(w) => w.to_dtype(DType::F32)?,
        LinearWeight::Quantized(QMatMul::QTensor(q)) => q.dequantize(&q.device())?,
        LinearWeight::Quantized(QMatMul::Tensor(w)) | LinearWeight::Quantized(QMatMul::TensorF16(w)) => {
            w.to_dtype(DType::F32)?
        }
        LinearWeight::Packed(m) => Tensor::from_vec(m.dequantize(), (m.rows, m.cols), &candle_core::Device::Cpu)?,
    })
}

impl LayerParams {
    /// Every parameter of `layer` (routers and adapters are not part of the base layer and are left out).
    pub fn of(layer: &DecoderLayer) -> Result<Self> {
        let a = &layer.self_attn;
        let m = &layer.mlp;
        let bias = |l: &Linear| l.bias.clone();
        Ok(LayerParams(vec![
            Some(layer.input_layernorm.weight.clone()),
            Some(layer.post_attention_layernorm.weight.clone()),
            Some(dense_weight(&a.q_proj)?),
            Some(dense_weight(&a.k_proj)?),
            Some(dense_weight(&a.v_proj)?),
            Some(dense_weight(&a.o_proj)?),
            bias(&a.q_proj),
            bias(&a.k_proj),
            bias(&a.v_proj),
            a.q_norm.as_ref().map(|n| n.weight.clone()),
            a.k_norm.as_ref().map(|n| n.weight.clone()),
            Some(dense_weight(&m.gate_proj)?),
            Some(dense_weight(&m.up_proj)?),
            Some(dense_weight(&m.down_proj)?),
        ]))
    }

    /// RDSC: `θ_base + Σ_k (θ_k − θ_base)` over `rear`.
    pub fn merge(base: &LayerParams, rear: &[LayerParams]) -> Result<Self> {
        let mut out = Vec::with_capacity(base.0.len());
        for (i, b) in base.0.iter().enumerate() {
            out.push(match b {
                None => None,
                Some(b) => {
                    let mut acc = b.clone();
                    for r in rear {
                        let t = r.0[i]
                            .as_ref()
                            .ok_or_else(|| Error::Input("LaCo: layers of different shapes".into()))?;
                        acc = (acc + (t - b)?)?;
                    }
                    Some(acc)
                }
            });
        }
        Ok(LayerParams(out))
    }

    /// The q_proj weight `[heads · head_dim, hidden]` (for inspection and tests).
    pub fn q_proj(&self) -> Option<&Tensor> {
        self.0[2].as_ref()
    }

    /// A layer with these parameters in `template`'s place (its index, heads, epsilons); linear weights as Q8_0
    /// blocks when `format` is quantized.
    pub fn to_layer(&self, template: &DecoderLayer, format: WeightFormat) -> Result<DecoderLayer> {
        let p = |i: usize| -> Result<Tensor> {
            self.0[i]
                .clone()
                .ok_or_else(|| Error::Input("LaCo: a merged layer lacks a parameter".into()))
        };
        let linear = |w: usize, b: Option<usize>| -> Result<Linear> {
            let l = Linear::dense(p(w)?, b.and_then(|b| self.0[b].clone()));
            if format == WeightFormat::Quantized {
                l.into_q8()
            } else {
                Ok(l)
            }
        };
        let a = &template.self_attn;
        let eps = template.input_layernorm.eps;
        let norm = |i: usize, like: &Option<RmsNorm>| -> Result<Option<RmsNorm>> {
            like.as_ref().map(|n| Ok(RmsNorm::new(p(i)?, n.eps))).transpose()
        };
        Ok(DecoderLayer {
            layer_idx: template.layer_idx,
            input_layernorm: RmsNorm::new(p(0)?, eps),
            post_attention_layernorm: RmsNorm::new(p(1)?, template.post_attention_layernorm.eps),
            self_attn: Attention {
                q_proj: linear(2, Some(6))?,
                k_proj: linear(3, Some(7))?,
                v_proj: linear(4, Some(8))?,
                o_proj: linear(5, None)?,
                q_norm: norm(9, &a.q_norm)?,
                k_norm: norm(10, &a.k_norm)?,
                num_heads: a.num_heads,
                num_kv_heads: a.num_kv_heads,
                head_dim: a.head_dim,
            },
            mlp: Mlp {
                gate_proj: linear(11, None)?,
                up_proj: linear(12, None)?,
                down_proj: linear(13, None)?,
            },
            router: None,
            router_proj: None,
        })
    }
}

/// One layer of the collapsed model: an original layer index (its K/V slot), and its merged parameters if any.
#[derive(Debug, Clone)]
struct Slot {
    layer_idx: usize,
    merged: Option<(Arc<LayerParams>, Arc<DecoderLayer>)>,
}

/// The LaCo policy: merged layers replaced, collapsed layers absent, the rest as they are.
#[derive(Debug, Clone)]
pub struct Laco {
    /// Sorted original indices of the collapsed (removed) layers.
    pub removed: Vec<usize>,
    /// Merged layers by original index.
    pub merged: Vec<(usize, Arc<DecoderLayer>)>,
    /// The kept merges, in the order they were made.
    pub merges: Vec<Merge>,
}

impl DepthPolicy for Laco {
    fn plan(&self, layer: &DecoderLayer, _input: &LayerInput) -> Result<LayerPlan> {
        if self.removed.binary_search(&layer.layer_idx).is_ok() {
            return Ok(LayerPlan::Absent);
        }
        Ok(match self.merged.iter().find(|(l, _)| *l == layer.layer_idx) {
            Some((_, merged)) => LayerPlan::Replaced(merged.clone()),
            None => LayerPlan::Full,
        })
    }

    fn label(&self) -> String {
        format!("laco:{}", self.removed.len())
    }
}

impl Laco {
    fn from_slots(model: &Model, slots: &[Slot], merges: Vec<Merge>) -> Self {
        let kept: Vec<usize> = slots.iter().map(|s| s.layer_idx).collect();
        Laco {
            removed: (0..model.layers.len()).filter(|l| !kept.contains(l)).collect(),
            merged: slots
                .iter()
                .filter_map(|s| s.merged.as_ref().map(|(_, d)| (s.layer_idx, d.clone())))
                .collect(),
            merges,
        }
    }

    /// Merge the original layers `into + 1..=into + count` into layer `into` (one RDSC merge, no search): the
    /// policy of that single collapse. Errors: a range outside the model, `count == 0`.
    pub fn merge_once(model: &Model, into: usize, count: usize) -> Result<Self> {
        let n = model.layers.len();
        if count == 0 || into + count >= n {
            return Err(Error::Input(format!(
                "LaCo: cannot merge {count} layers after layer {into} of a {n}-layer model"
            )));
        }
        let slots: Vec<Slot> = (0..n)
            .map(|l| Slot {
                layer_idx: l,
                merged: None,
            })
            .collect();
        let slots = merge_slots(model, &slots, into, count)?;
        Ok(Laco::from_slots(model, &slots, vec![]))
    }

    /// Algorithm 1 (with the `K`-layer stopping rule above): remove exactly `k` layers of `model`, judged on the
    /// calibration tokens `ids`. Errors: `k` not below the layer count, a range that cannot hold a merge, empty
    /// calibration.
    pub fn search(model: &Model, ids: &[u32], k: usize, s: &LacoSettings) -> Result<Self> {
        Self::search_with_progress(model, ids, k, s, &mut |_| {})
    }

    /// [`Laco::search`], telling `progress` about each merge tried (layers, similarity, kept or not; a merge of a
    /// large model takes seconds).
    pub fn search_with_progress(
        model: &Model,
        ids: &[u32],
        k: usize,
        s: &LacoSettings,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Self> {
        let n = model.layers.len();
        if k >= n {
            return Err(Error::Input(format!(
                "cannot remove {k} of the model's {n} layers (at least one must stay)"
            )));
        }
        if s.merge_layers < 2 || s.interval == 0 || s.lowest >= s.highest || s.highest > n {
            return Err(Error::Input(format!("LaCo: bad settings {s:?} for a {n}-layer model")));
        }
        let reference = last_hidden(model, ids, &FullDepth)?;
        let mut slots: Vec<Slot> = (0..n)
            .map(|l| Slot {
                layer_idx: l,
                merged: None,
            })
            .collect();
        let mut merges = Vec::new();
        let mut threshold = s.threshold;
        let mut removed = 0;
        // Similarities of the candidates tried on the current slots, by (position, layers merged): a sweep that
        // keeps nothing is repeated at a lower threshold on the same slots, and would recompute the same values
        // (on SmolLM2 about ten sweeps of identical forward passes). Cleared when a merge is kept.
        let mut tried: HashMap<(usize, usize), f64> = HashMap::new();
        while removed < k {
            let before = removed;
            // Positions in the current (collapsed) model; `highest` shrinks as layers go.
            let mut l = (s.highest - (n - slots.len())).saturating_sub(s.merge_layers) as isize;
            while l >= s.lowest as isize && removed < k {
                let count = (s.merge_layers - 1).min(k - removed);
                let at = (l as usize).min(slots.len() - 1 - count);
                let fresh = !tried.contains_key(&(at, count));
                if fresh {
                    let candidate = merge_slots(model, &slots, at, count)?;
                    let policy = Laco::from_slots(model, &candidate, vec![]);
                    tried.insert(
                        (at, count),
                        mean_cosine(&reference, &last_hidden(model, ids, &policy)?)?,
                    );
                }
                let sim = tried[&(at, count)];
                // Every candidate computed, and a reused one when it is kept.
                if fresh || sim > threshold {
                    let kept = if sim > threshold { count } else { 0 };
                    progress(&merge_line(&slots[at..=at + count], sim, threshold, removed + kept, k));
                }
                if sim > threshold {
                    let candidate = merge_slots(model, &slots, at, count)?;
                    let layers = slots[at..=at + count].iter().map(|x| x.layer_idx).collect();
                    merges.push(Merge {
                        layers,
                        similarity: sim,
                        threshold,
                    });
                    slots = candidate;
                    tried.clear();
                    removed += count;
                    l = at as isize - s.interval as isize;
                } else {
                    l -= 1;
                }
            }
            if removed == before {
                threshold -= s.threshold_step;
                if threshold <= -1.0 {
                    return Err(Error::Input(format!(
                        "LaCo: no merge in layers {}..{} removes more layers",
                        s.lowest, s.highest
                    )));
                }
                progress(&format!(
                    "LaCo: no merge kept in this sweep; threshold lowered to {threshold:.4} (similarities reused)"
                ));
            }
        }
        Ok(Laco::from_slots(model, &slots, merges))
    }
}

/// The progress line of one candidate merge of `slots[1..]` into `slots[0]`.
fn merge_line(slots: &[Slot], sim: f64, threshold: f64, removed: usize, k: usize) -> String {
    format!(
        "LaCo: merge layers {}..={} into layer {}: similarity {sim:.4} vs threshold {threshold:.4}, {} ({removed} \
         of {k} layers removed)",
        slots[1].layer_idx,
        slots[slots.len() - 1].layer_idx,
        slots[0].layer_idx,
        if sim > threshold { "kept" } else { "rejected" },
    )
}

/// `slots` with slots `at + 1..=at + count` merged into slot `at` (each slot's current parameters).
fn merge_slots(model: &Model, slots: &[Slot], at: usize, count: usize) -> Result<Vec<Slot>> {
    let params = |s: &Slot| -> Result<LayerParams> {
        match &s.merged {
            Some((p, _)) => Ok((**p).clone()),
            None => LayerParams::of(&model.layers[s.layer_idx]),
        }
    };
    let base = params(&slots[at])?;
    let rear = slots[at + 1..=at + count]
        .iter()
        .map(params)
        .collect::<Result<Vec<_>>>()?;
    let merged = LayerParams::merge(&base, &rear)?;
    let layer = merged.to_layer(&model.layers[slots[at].layer_idx], model.format)?;
    let mut out: Vec<Slot> = slots[..at].to_vec();
    out.push(Slot {
        layer_idx: slots[at].layer_idx,
        merged: Some((Arc::new(merged), Arc::new(layer))),
    });
    out.extend_from_slice(&slots[at + count + 1..]);
    Ok(out)
}

/// The last decoder layer's output `[tokens, hidden]` on `ids` under `policy` (no cache, before the final norm).
pub fn last_hidden(model: &Model, ids: &[u32], policy: &dyn DepthPolicy) -> Result<Tensor> {
    let ctx = ForwardCtx::new(model, 0, ids.len())?;
    let x = model.embed(ids)?;
    Ok(model
        .run_layers(&Fused, x, 0..model.layers.len(), &ctx, None, policy)?
        .hidden)
}

/// Mean over rows of the cosine similarity of `a` and `b`, both `[rows, hidden]`.
fn mean_cosine(a: &Tensor, b: &Tensor) -> Result<f64> {
    let dot = (a * b)?.sum(1)?;
    let norms = (a.sqr()?.sum(1)?.sqrt()? * b.sqr()?.sum(1)?.sqrt()?)?;
    Ok((dot / norms)?.mean_all()?.to_scalar::<f32>()? as f64)
}
