//! Static layer removal, and ShortGPT's choice of what to remove (Men et al., "ShortGPT: Layers in Large Language
//! Models are More Redundant Than You Expect", 2024): a layer's block influence is `1 − mean cos(x_in, x_out)` over
//! calibration tokens; the layers that change the hidden state least are removed first. A removed layer costs
//! nothing and writes no K/V.

use crate::error::{Error, Result};
use crate::model::layer::DecoderLayer;
use crate::model::ops::Fused;
use crate::model::plan::{DepthPolicy, FullDepth, LayerInput, LayerPlan};
use crate::model::{ForwardCtx, Model};

/// Layers removed outright.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StaticPrune {
    /// Sorted layer indices.
    pub removed: Vec<usize>,
}

impl StaticPrune {
    /// Remove `layers` (any order, duplicates ignored).
    pub fn new(mut layers: Vec<usize>) -> Self {
        layers.sort_unstable();
        layers.dedup();
        StaticPrune { removed: layers }
    }

    /// ShortGPT: remove the `k` layers of lowest block influence on the calibration tokens `ids`.
    pub fn shortgpt(model: &Model, ids: &[u32], k: usize) -> Result<Self> {
        let n = model.layers.len();
        if k >= n {
            return Err(Error::Input(format!(
                "cannot remove {k} of the model's {n} layers (at least one must stay)"
            )));
        }
        let bi = block_influence(model, ids)?;
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| bi[a].total_cmp(&bi[b]));
        Ok(StaticPrune::new(order[..k].to_vec()))
    }
}

impl DepthPolicy for StaticPrune {
    fn plan(&self, layer: &DecoderLayer, _input: &LayerInput) -> Result<LayerPlan> {
        Ok(if self.removed.binary_search(&layer.layer_idx).is_ok() {
            LayerPlan::Absent
        } else {
            LayerPlan::Full
        })
    }

    fn label(&self) -> String {
        format!("prune:{}", self.removed.len())
    }
}

/// ShortGPT's block influence of every layer on `ids` at full depth: `1 − mean_t cos(x_t, layer(x)_t)`.
pub fn block_influence(model: &Model, ids: &[u32]) -> Result<Vec<f64>> {
    let mut x = model.embed(ids)?;
    let ctx = ForwardCtx::new(model, 0, ids.len())?;
    let mut out = Vec::with_capacity(model.layers.len());
    for layer_idx in 0..model.layers.len() {
        let y = model
            .run_layers(&Fused, x.clone(), layer_idx..layer_idx + 1, &ctx, None, &FullDepth)?
            .hidden;
        let dot = (&x * &y)?.sum(1)?;
        let norms = (x.sqr()?.sum(1)?.sqrt()? * y.sqr()?.sum(1)?.sqrt()?)?;
        let cos = (dot / norms)?.mean_all()?.to_scalar::<f32>()?;
        out.push(1.0 - cos as f64);
        x = y;
    }
    Ok(out)
}
