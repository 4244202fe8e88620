//! Low-rank deltas (LoRA, Hu et al. 2021) of frozen projections, as trainable variables, and the ops that compute
//! with them: `y = x Wᵀ + (α / r) · (x Aᵀ) Bᵀ` with `A: [r, in]`, `B: [out, r]` (B starts at zero, so training
//! starts from the base). Used by the DMTD stages to train the decoding layers on a file budget; the trained
//! tensors are written under [`flexidepth::dmtd::delta::lora_names`] and merged by the engine at load
//! ([`flexidepth::dmtd::delta::merge_delta_file`]).

use crate::forward::Differentiable;
use candle_core::{DType, Tensor, TensorId, Var};
use flexidepth::dmtd::delta::{lora_names, target_linear};
use flexidepth::error::{Error, Result};
use flexidepth::model::attention::QueryPos;
use flexidepth::model::linear::Linear;
use flexidepth::model::norm::RmsNorm;
use flexidepth::model::ops::Ops;
use flexidepth::model::rope::Rope;
use flexidepth::model::Model;
use std::collections::{BTreeMap, HashMap};

/// Fresh deltas for `targets` of `layers` of `model` at rank `rank`, keyed by their file names: `A` drawn from
/// N(0, 1/in) (the scale of PEFT's Kaiming-uniform start), `B` zero. Seeded by `seed`.
///
/// # Errors
/// [`Error::Input`] for a rank of 0, a layer outside the model, or an unknown target.
pub fn fresh_lora(
    model: &Model,
    layers: &[usize],
    targets: &[String],
    rank: usize,
    seed: u64,
) -> Result<BTreeMap<String, Var>> {
    if rank == 0 {
        return Err(Error::Input("LoRA rank must be at least 1".into()));
    }
    let mut rng = flexidepth::rng::seeded(seed);
    let mut vars = BTreeMap::new();
    for &l in layers {
        let layer = model
            .layers
            .get(l)
            .ok_or_else(|| Error::Input(format!("layer {l} of a {}-layer model", model.layers.len())))?;
        for t in targets {
            let lin = target_linear(layer, t)?;
            let w = lin
                .dense_weight()
                .ok_or_else(|| Error::Unsupported("LoRA training needs the base's weights in f32".into()))?;
            let (out, inp) = w.dims2()?;
            let a = flexidepth::rng::normal_vec(&mut rng, rank * inp, 1.0 / (inp as f32).sqrt());
            let (na, nb) = lora_names(l, t);
            vars.insert(na, Var::from_tensor(&Tensor::from_vec(a, (rank, inp), w.device())?)?);
            vars.insert(nb, Var::zeros((out, rank), DType::F32, w.device())?);
        }
    }
    Ok(vars)
}

/// The model's ops with low-rank deltas added to some of its frozen projections, found by the identity of their
/// weight tensors; everything else is [`Differentiable`]. Gradients reach `A` and `B`, never the base.
#[derive(Debug)]
pub struct LoraOps {
    deltas: HashMap<TensorId, (Tensor, Tensor)>,
    scale: f64,
}

impl LoraOps {
    /// Ops adding `scale · B · A` of every `(layer, target)` of `vars` (named by [`lora_names`]) to `model`'s
    /// projection. A pair without both tensors is an error.
    pub fn new(
        model: &Model,
        vars: &BTreeMap<String, Var>,
        layers: &[usize],
        targets: &[String],
        scale: f64,
    ) -> Result<Self> {
        let mut deltas = HashMap::new();
        for &l in layers {
            for t in targets {
                let lin = target_linear(&model.layers[l], t)?;
                let w = lin
                    .dense_weight()
                    .ok_or_else(|| Error::Unsupported("LoRA training needs the base's weights in f32".into()))?;
                let (na, nb) = lora_names(l, t);
                let get = |n: &String| {
                    vars.get(n)
                        .map(|v| v.as_tensor().clone())
                        .ok_or_else(|| Error::MissingTensor(n.clone()))
                };
                deltas.insert(w.id(), (get(&na)?, get(&nb)?));
            }
        }
        Ok(LoraOps { deltas, scale })
    }
}

impl Ops for LoraOps {
    fn linear(&self, x: &Tensor, linear: &Linear) -> Result<Tensor> {
        let y = Differentiable.linear(x, linear)?;
        match linear.dense_weight().and_then(|w| self.deltas.get(&w.id())) {
            Some((a, b)) => {
                let low = x.broadcast_matmul(&a.t()?)?.broadcast_matmul(&b.t()?)?;
                Ok((y + (low * self.scale)?)?)
            }
            None => Ok(y),
        }
    }
    fn rms_norm(&self, x: &Tensor, norm: &RmsNorm) -> Result<Tensor> {
        Differentiable.rms_norm(x, norm)
    }
    fn softmax(&self, x: &Tensor) -> Result<Tensor> {
        Differentiable.softmax(x)
    }
    fn rope(&self, x: &Tensor, r: &Rope, pos: &QueryPos) -> Result<Tensor> {
        Differentiable.rope(x, r, pos)
    }
    fn add_mask(&self, scores: &Tensor, mask: &Tensor) -> Result<Tensor> {
        Differentiable.add_mask(scores, mask)
    }
}
