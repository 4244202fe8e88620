//! Early exit (LayerSkip-style; Elhoushi et al., ACL 2024): the final norm and the output head follow layer
//! `exit_after − 1`, and no later layer runs (nor writes K/V). LayerSkip trains the model for it; applied to an
//! untrained model it is the plain early-exit baseline.

use crate::error::Result;
use crate::model::layer::DecoderLayer;
use crate::model::plan::{DepthPolicy, LayerInput, LayerPlan};

/// Run layers `0..exit_after`, then exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EarlyExit {
    /// Layers run (the exit follows layer `exit_after − 1`).
    pub exit_after: usize,
}

impl DepthPolicy for EarlyExit {
    fn plan(&self, layer: &DecoderLayer, _input: &LayerInput) -> Result<LayerPlan> {
        Ok(if layer.layer_idx < self.exit_after {
            LayerPlan::Full
        } else {
            LayerPlan::Exit
        })
    }

    fn label(&self) -> String {
        format!("exit:{}", self.exit_after)
    }
}
