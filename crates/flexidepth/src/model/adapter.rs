//! The FlexiDepth adapter (`model.layers.{i}.router_proj`): a SwiGLU MLP with a narrow intermediate width that
//! replaces a skipped layer's FFN.
//!
//! The official checkpoint's `up_proj`/`down_proj` names are swapped relative to Llama's MLP: `down_proj` is the
//! `[narrow, hidden]` branch multiplied with `silu(gate_proj)`, `up_proj` the `[hidden, narrow]` output. We keep the
//! official names (so files interoperate) and the loader tells the two apart by shape, never by name.

use super::linear::Linear;
use super::ops::Ops;
use crate::error::Result;
use candle_core::Tensor;

#[derive(Debug)]
pub struct Adapter {
    /// `[narrow, hidden]`
    pub gate_proj: Linear,
    /// `[narrow, hidden]`: despite its name, the branch multiplied with `silu(gate_proj(v))`.
    pub down_proj: Linear,
    /// `[hidden, narrow]`: despite its name, the output projection.
    pub up_proj: Linear,
}

impl Adapter {
    /// `up_proj(silu(gate_proj(v)) · down_proj(v))` on `v: [rows, hidden]`.
    pub fn forward(&self, ops: &dyn Ops, v: &Tensor) -> Result<Tensor> {
        let gate = candle_nn::ops::silu(&ops.linear(v, &self.gate_proj)?)?;
        ops.linear(&(gate * ops.linear(v, &self.down_proj)?)?, &self.up_proj)
    }
}
