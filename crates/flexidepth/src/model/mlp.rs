//! The SwiGLU feed-forward block: `down(silu(gate(x)) · up(x))`.

use super::linear::Linear;
use super::ops::Ops;
use crate::error::Result;
use candle_core::Tensor;

#[derive(Debug)]
pub struct Mlp {
    /// `[intermediate, hidden]`
    pub gate_proj: Linear,
    /// `[intermediate, hidden]`
    pub up_proj: Linear,
    /// `[hidden, intermediate]`
    pub down_proj: Linear,
}

impl Mlp {
    /// `x: [rows, hidden]` → `[rows, hidden]`.
    pub fn forward(&self, ops: &dyn Ops, x: &Tensor) -> Result<Tensor> {
        let gate = candle_nn::ops::silu(&ops.linear(x, &self.gate_proj)?)?;
        let up = ops.linear(x, &self.up_proj)?;
        ops.linear(&(gate * up)?, &self.down_proj)
    }
}
