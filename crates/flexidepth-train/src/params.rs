//! The trainable FlexiDepth parameters: one candle `Var` per router/adapter tensor, keyed by the official
//! checkpoint names (`model.layers.{i}.router.router_enc.weight`, `model.layers.{i}.router_proj.up_proj.weight`, …),
//! so that they are written to and read from depth-adapter files without renaming.

use candle_core::{Tensor, Var};
use flexidepth::error::{Error, Result};
use std::collections::{BTreeMap, HashMap};

/// The tensor names of one routed layer, in a fixed order.
pub fn layer_param_names(layer_idx: usize) -> [String; 7] {
    let p = format!("model.layers.{layer_idx}");
    [
        format!("{p}.router.router_enc.weight"),
        format!("{p}.router.router_norm.weight"),
        format!("{p}.router.router_dec.weight"),
        format!("{p}.router.router_head.weight"),
        format!("{p}.router_proj.gate_proj.weight"),
        format!("{p}.router_proj.down_proj.weight"),
        format!("{p}.router_proj.up_proj.weight"),
    ]
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
            for (name, t, want) in [
                ("router_proj.down_proj", lp.down_proj, [narrow, hidden]),
                ("router_proj.up_proj", lp.up_proj, [hidden, narrow]),
            ] {
                if t.dims() != want {
                    return Err(Error::Shape {
                        name: format!("model.layers.{l}.{name}.weight"),
                        expected: want.to_vec(),
                        found: t.dims().to_vec(),
                    });
                }
            }
        }
        Ok(DepthParams {
            routed_layers: routed_layers.to_vec(),
            vars,
        })
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
