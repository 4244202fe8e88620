//! The FlexiDepth router of one layer (`model.layers.{i}.router`), in the released code's order:
//! `logit = W_head · W_dec · tanh(RMSNorm_r(W_enc · u))` with `u = input_layernorm(x)` (spec A3; the paper's
//! formula puts tanh before the norm, but the released checkpoint was trained with this order).

use crate::error::Result;
use crate::model::linear::Linear;
use crate::model::norm::RmsNorm;
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
}

impl Router {
    /// Router logits of `u: [rows, hidden]`, `[rows]`.
    pub fn logits(&self, u: &Tensor) -> Result<Tensor> {
        let z = self.router_norm.forward(&self.router_enc.forward(u)?)?.tanh()?;
        Ok(self.router_head.forward(&self.router_dec.forward(&z)?)?.squeeze(1)?)
    }

    /// Gates `w = sigmoid(logit)`, `[rows]`.
    pub fn gates(&self, u: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::sigmoid(&self.logits(u)?)?)
    }
}
