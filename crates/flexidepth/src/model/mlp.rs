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
        // gate and up in one call (one parallel region in decode).
        let gate_up = ops.linear_many(x, &[&self.gate_proj, &self.up_proj])?;
        ops.linear(&(candle_nn::ops::silu(&gate_up[0])? * &gate_up[1])?, &self.down_proj)
    }
}
