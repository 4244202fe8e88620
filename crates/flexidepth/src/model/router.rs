//! The FlexiDepth router of one layer (`model.layers.{i}.router`), in the released code's order:
//! `logit = W_head · W_dec · tanh(RMSNorm_r(W_enc · u))` with `u = input_layernorm(x)` (spec A3; the paper's
//! formula puts tanh before the norm, but the released checkpoint was trained with this order).

use super::linear::Linear;
use super::norm::RmsNorm;
use super::ops::Ops;
use crate::error::Result;
use candle_core::Tensor;

#[derive(Debug)]
pub struct Router {
    /// `[bottleneck, hidden]` (W_down)
    pub router_enc: Linear,
    /// `[bottleneck]`
    pub router_norm: RmsNorm,
    /// `[hidden, bottleneck]` (W_up)
    pub router_dec: Linear,
    /// `[1, hidden]` (W_r)
    pub router_head: Linear,
    /// The threshold this router was trained with (from its depth file; [`super::plan::DEFAULT_SKIP_THRESHOLD`] otherwise): a row
    /// runs the layer iff its gate is above it, unless a policy overrides it.
    pub skip_threshold: f32,
    /// What a row this router skips leaves out (from its depth file; [`super::plan::SkipUnit::Layer`] otherwise).
    pub skip_unit: super::plan::SkipUnit,
    /// How the gate weighs run and skipped rows (from its depth file; released otherwise).
    pub gate_scaling: super::plan::GateScaling,
}

impl Router {
    /// Router logits of `u: [rows, hidden]`, `[rows]`.
    pub fn logits(&self, ops: &dyn Ops, u: &Tensor) -> Result<Tensor> {
        let z = ops
            .rms_norm(&ops.linear(u, &self.router_enc)?, &self.router_norm)?
            .tanh()?;
        Ok(ops
            .linear(&ops.linear(&z, &self.router_dec)?, &self.router_head)?
            .squeeze(1)?)
    }

    /// Gates `w = sigmoid(logit)`, `[rows]`.
    pub fn gates(&self, ops: &dyn Ops, u: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::sigmoid(&self.logits(ops, u)?)?)
    }
}
