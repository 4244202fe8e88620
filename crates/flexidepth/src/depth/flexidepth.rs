//! FlexiDepth routing (Luo, Wang, Yan, COLM 2025; spec A3): a routed layer computes a gate
//! `w = sigmoid(router(input_layernorm(x)))` per token and runs iff `w > skip_threshold`; otherwise the token
//! skips — its K/V are still written, it gets no attention output, and the adapter scaled by `1 − w` replaces the
//! FFN. Run rows have their FFN scaled by `w` (the released semantics). Layers without a router run in full.
//!
//! Beyond the paper, the skip unit can be the FFN alone (the token keeps its attention; the adapter stands in for
//! the MLP) or the attention alone (MindSkip-style: K/V written, no query or attention; the MLP runs unscaled).

use crate::error::{Error, Result};
use crate::model::layer::DecoderLayer;
pub use crate::model::plan::SkipUnit;
use crate::model::plan::{DepthPolicy, GateScaling, Gates, LayerInput, LayerPlan, RowStep};

/// How routed layers decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DepthMode {
    /// The trained behaviour: run iff `w > skip_threshold`.
    Dynamic,
    /// Every token runs every layer, unscaled: exactly the base model (gates are still computed for traces).
    Run,
    /// Every token skips every routed layer.
    Skip,
}

impl std::str::FromStr for DepthMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "dynamic" => Ok(DepthMode::Dynamic),
            "run" => Ok(DepthMode::Run),
            "skip" => Ok(DepthMode::Skip),
            other => Err(Error::Input(format!(
                "unknown depth mode '{other}' (use dynamic, run or skip)"
            ))),
        }
    }
}

/// The FlexiDepth policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FlexiDepth {
    pub mode: DepthMode,
    /// Run iff `gate > skip_threshold` (strict, as released). `None`: the threshold the attached routers were
    /// trained with ([`crate::model::Model::skip_threshold`], from the depth file).
    pub skip_threshold: Option<f32>,
    /// Skipped tokens write their K/V (released behaviour). `false` reproduces the paper's "no KV cache" ablation:
    /// later tokens cannot attend to a skipped token at that layer.
    pub skip_kv: bool,
    /// What a skipped row leaves out. `None`: the unit the attached routers were trained for (from the depth file).
    pub unit: Option<SkipUnit>,
    /// How the gate weighs rows. `None`: the rule the attached routers were trained with (from the depth file).
    pub gate_scaling: Option<GateScaling>,
}

impl Default for FlexiDepth {
    /// The released behaviour at the model's own threshold.
    fn default() -> Self {
        FlexiDepth {
            mode: DepthMode::Dynamic,
            skip_threshold: None,
            skip_kv: true,
            unit: None,
            gate_scaling: None,
        }
    }
}

impl FlexiDepth {
    /// The released behaviour in `mode`.
    pub fn with_mode(mode: DepthMode) -> Self {
        FlexiDepth {
            mode,
            ..FlexiDepth::default()
        }
    }

    /// The threshold in force on `layer` (the override, else the model's; `model_threshold` is passed by callers
    /// that hold the model).
    pub fn threshold_or(&self, model_threshold: f32) -> f32 {
        self.skip_threshold.unwrap_or(model_threshold)
    }
}

impl DepthPolicy for FlexiDepth {
    fn plan(&self, layer: &DecoderLayer, input: &LayerInput) -> Result<LayerPlan> {
        let Some(router) = &layer.router else {
            return Ok(LayerPlan::Full);
        };
        let ops = input.ops();
        let tensor = router.gates(ops, input.normed()?)?;
        let values: Vec<f32> = tensor.to_vec1()?;
        let threshold = self.threshold_or(router.skip_threshold);
        let unit = self.unit.unwrap_or(router.skip_unit);
        let skip = unit.skip_step(self.skip_kv);
        let steps: Vec<RowStep> = values
            .iter()
            .map(|&w| {
                let run = match self.mode {
                    DepthMode::Dynamic => w > threshold,
                    DepthMode::Run => true,
                    DepthMode::Skip => false,
                };
                if run {
                    RowStep::RUN
                } else {
                    skip
                }
            })
            .collect();
        Ok(LayerPlan::Rows {
            steps,
            gates: Some(Gates { tensor, values }),
            // Forced run is the base model (unscaled); attention-only skipping keeps the MLP as it is; hard gates
            // only decide.
            scale_by_gate: self.mode != DepthMode::Run
                && unit != SkipUnit::Attention
                && self.gate_scaling.unwrap_or(router.gate_scaling) == GateScaling::Released,
        })
    }

    fn label(&self) -> String {
        // The paper's whole-layer skipping is plain `flexi`.
        let unit = match self.unit {
            None | Some(SkipUnit::Layer) => "",
            Some(SkipUnit::Ffn) => "-ffn",
            Some(SkipUnit::Attention) => "-attn",
        };
        match (self.mode, self.skip_threshold) {
            (DepthMode::Dynamic, Some(t)) => format!("flexi{unit}:{t}"),
            (DepthMode::Dynamic, None) => format!("flexi{unit}"),
            (DepthMode::Run, _) => "flexi:run".into(),
            (DepthMode::Skip, _) => format!("skip{unit}"),
        }
    }
}
