//! Depth traces: for each token, the gate and the run/skip decision at every routed layer, and the number of layers
//! it used. Written as JSON lines by `generate --trace`, and drawn as depth maps by [`crate::depthmap`].

use serde::{Deserialize, Serialize};

/// One routed layer's verdict for one token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerDecision {
    pub layer_idx: usize,
    /// The router's gate `w = sigmoid(logit)`.
    pub gate: f32,
    /// Whether the token ran the full layer (`false`: skipped, adapter instead of FFN).
    pub run: bool,
}

/// One token's path through the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenDepth {
    pub pos: usize,
    pub token_id: u32,
    /// The token's text (as it reads in the output; may be empty for special tokens).
    pub text: String,
    /// A prompt token (`true`) or a generated one.
    pub prompt: bool,
    /// Layers used (`crate::model::plan::ExecutedPlan::layers_used`): 1 per layer run in full, 0 per layer skipped
    /// or absent, the share of the layer's weight bytes read for a partial (FFN-only, attention-only) skip.
    pub layers_used: f64,
    /// One entry per routed layer, in layer order (under DMTD: the thinking layers, run at heads only).
    pub routed: Vec<LayerDecision>,
    /// Under DMTD (`generate --dmtd`), whether a generated token was a cycle head; absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dmtd_head: Option<bool>,
}

/// The depth trace of a generation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DepthTrace {
    /// Layers of the model.
    pub num_layers: usize,
    /// Indices of the routed layers (0-based).
    pub routed_layers: Vec<usize>,
    pub tokens: Vec<TokenDepth>,
}

impl DepthTrace {
    /// Mean layers used over the generated tokens (or over all tokens when none was generated).
    pub fn mean_layers_generated(&self) -> f64 {
        let gen: Vec<&TokenDepth> = self.tokens.iter().filter(|t| !t.prompt).collect();
        let pick: Vec<&TokenDepth> = if gen.is_empty() {
            self.tokens.iter().collect()
        } else {
            gen
        };
        if pick.is_empty() {
            return self.num_layers as f64;
        }
        pick.iter().map(|t| t.layers_used).sum::<f64>() / pick.len() as f64
    }

    /// The fewest layers a token can use (every routed layer skipped).
    pub fn min_layers(&self) -> usize {
        self.num_layers - self.routed_layers.len()
    }

    /// One JSON object per token, newline-terminated.
    pub fn to_jsonl(&self) -> String {
        let mut out = String::new();
        for t in &self.tokens {
            out.push_str(&serde_json::to_string(t).expect("a trace always serialises"));
            out.push('\n');
        }
        out
    }
}
