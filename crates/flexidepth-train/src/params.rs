//! The trainable FlexiDepth parameters: one candle `Var` per router/adapter tensor, keyed by the official
//! checkpoint names (`model.layers.{i}.router.router_enc.weight`, `model.layers.{i}.router_proj.up_proj.weight`, …),
//! so that they are written to and read from depth-adapter files without renaming.

use candle_core::{Tensor, Var};
use flexidepth::depth::Routing;
use flexidepth::error::{Error, Result};
use flexidepth::model::keys::LayerKey;
use flexidepth::model::linear::Linear;
use flexidepth::model::norm::RmsNorm;
use flexidepth::model::{Adapter, Model, Router};
use std::collections::{BTreeMap, HashMap};

/// The tensor names of one routed layer, in [`LayerKey::DEPTH`]'s order.
pub fn layer_param_names(layer_idx: usize) -> [String; 7] {
    LayerKey::DEPTH.map(|k| k.weight(layer_idx))
}

/// Routers and adapters of the routed layers, as trainable variables.
#[derive(Debug)]
pub struct DepthParams {
    pub routed_layers: Vec<usize>,
    /// Sorted by name, so that every pass over the parameters (optimizer, clipping, checkpoints) has one order.
    pub vars: BTreeMap<String, Var>,
}

/// One routed layer's parameters, borrowed.
pub struct LayerParams<'a> {
    /// `[bottleneck, hidden]`
    pub router_enc: &'a Tensor,
    /// `[bottleneck]`
    pub router_norm: &'a Tensor,
    /// `[hidden, bottleneck]`
    pub router_dec: &'a Tensor,
    /// `[1, hidden]`
    pub router_head: &'a Tensor,
    /// `[narrow, hidden]`
    pub gate_proj: &'a Tensor,
    /// `[narrow, hidden]`: the branch multiplied with `silu(gate_proj)` (official name, see `depth::adapter`).
    pub down_proj: &'a Tensor,
    /// `[hidden, narrow]`: the output projection (official name).
    pub up_proj: &'a Tensor,
}

impl DepthParams {
    /// Variables initialised from `tensors` (a depth file's or `depth::file::init_tensors`' output). Every tensor of
    /// every routed layer must be present; adapter shapes are checked so that a swapped pair is caught here.
    pub fn from_tensors(routed_layers: &[usize], tensors: &HashMap<String, Tensor>) -> Result<Self> {
        let mut vars = BTreeMap::new();
        for &l in routed_layers {
            for name in layer_param_names(l) {
                let t = tensors.get(&name).ok_or_else(|| Error::MissingTensor(name.clone()))?;
                let t = t.to_dtype(candle_core::DType::F32)?.contiguous()?;
                vars.insert(name, Var::from_tensor(&t)?);
            }
            let lp = layer_params_of(&vars, l)?;
            let (narrow, hidden) = lp.gate_proj.dims2()?;
            for (key, t, want) in [
                (LayerKey::AdapterDownProj, lp.down_proj, [narrow, hidden]),
                (LayerKey::AdapterUpProj, lp.up_proj, [hidden, narrow]),
            ] {
                if t.dims() != want {
                    return Err(Error::Shape {
                        name: key.weight(l),
                        expected: want.to_vec(),
                        found: t.dims().to_vec(),
                    });
                }
            }
        }
        let mut routed_layers = routed_layers.to_vec();
        routed_layers.sort_unstable();
        routed_layers.dedup();
        Ok(DepthParams { routed_layers, vars })
    }

    /// The parameters of routed layer `layer_idx`.
    pub fn layer(&self, layer_idx: usize) -> Result<LayerParams<'_>> {
        layer_params_of(&self.vars, layer_idx)
    }

    /// Current values, detached (for writing a depth file or a checkpoint).
    pub fn tensors(&self) -> HashMap<String, Tensor> {
        self.vars
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
            .collect()
    }

    pub fn num_params(&self) -> usize {
        self.vars.values().map(|v| v.elem_count()).sum()
    }

    /// Make these variables `model`'s routers and adapters (replacing any attached ones), trained with `routing`
    /// (threshold, skip unit, gate scaling): the inference layer code then computes with them, the optimizer's in-place updates are
    /// seen by the model, and gradients reach them. The model must hold its weights densely (f32).
    pub fn attach(&self, model: &mut Model, routing: Routing) -> Result<()> {
        let eps = model.config.rms_norm_eps;
        let dense = |t: &Tensor| Linear::dense(t.clone(), None);
        let mut parts = Vec::with_capacity(self.routed_layers.len());
        for &l in &self.routed_layers {
            let p = self.layer(l)?;
            parts.push((
                l,
                Router {
                    router_enc: dense(p.router_enc),
                    router_norm: RmsNorm::new(p.router_norm.clone(), eps),
                    router_dec: dense(p.router_dec),
                    router_head: dense(p.router_head),
                    skip_threshold: routing.skip_threshold,
                    skip_unit: routing.skip_unit,
                    gate_scaling: routing.gate_scaling,
                },
                Adapter {
                    gate_proj: dense(p.gate_proj),
                    down_proj: dense(p.down_proj),
                    up_proj: dense(p.up_proj),
                },
            ));
        }
        if model.format != flexidepth::model::WeightFormat::F32 {
            return Err(Error::Unsupported(
                "training needs the base model's weights in f32".into(),
            ));
        }
        model.detach_depth();
        model.attach_depth(parts, routing)
    }

    /// Whether `model`'s routers and adapters are exactly these variables (see [`DepthParams::attach`]).
    pub fn is_attached_to(&self, model: &Model) -> bool {
        let same = |lin: &Linear, t: &Tensor| lin.dense_weight().is_some_and(|w| w.id() == t.id());
        model.routed_layers() == self.routed_layers
            && self.routed_layers.iter().all(|&l| {
                let (Ok(p), Some(r), Some(a)) = (
                    self.layer(l),
                    model.layers[l].router.as_ref(),
                    model.layers[l].router_proj.as_ref(),
                ) else {
                    return false;
                };
                same(&r.router_enc, p.router_enc)
                    && r.router_norm.weight.id() == p.router_norm.id()
                    && same(&r.router_dec, p.router_dec)
                    && same(&r.router_head, p.router_head)
                    && same(&a.gate_proj, p.gate_proj)
                    && same(&a.down_proj, p.down_proj)
                    && same(&a.up_proj, p.up_proj)
            })
    }
}

fn layer_params_of(vars: &BTreeMap<String, Var>, layer_idx: usize) -> Result<LayerParams<'_>> {
    let names = layer_param_names(layer_idx);
    let get = |i: usize| {
        vars.get(&names[i])
            .map(|v| v.as_tensor())
            .ok_or_else(|| Error::MissingTensor(names[i].clone()))
    };
    Ok(LayerParams {
        router_enc: get(0)?,
        router_norm: get(1)?,
        router_dec: get(2)?,
        router_head: get(3)?,
        gate_proj: get(4)?,
        down_proj: get(5)?,
        up_proj: get(6)?,
    })
}
