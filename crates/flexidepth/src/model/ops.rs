//! The few ops whose implementation differs between inference and training, so that one layer code serves both.
//!
//! Inference ([`Fused`]) uses candle's fused kernels (`rms_norm`, `softmax_last_dim`, `rope`) and our quantized
//! linear kernels. Those fused kernels have no backward, and a plain matmul's backward also computes the gradient of
//! a frozen weight; the trainer (`flexidepth-train`'s `Differentiable`) implements this trait with ops that pass
//! gradients to their input and never to a frozen constant. Everything else in the layer (matmuls of activations,
//! `silu`, `tanh`, `sigmoid`, gathers and scatters of rows) is plain candle and differentiable as it is.

use super::attention::QueryPos;
use super::linear::Linear;
use super::norm::RmsNorm;
use super::rope::Rope;
use crate::error::Result;
use candle_core::Tensor;

/// Ops of the layer math that inference and training compute differently.
pub trait Ops: Sync {
    /// `x · Wᵀ + b` on `x: [rows, in]`.
    fn linear(&self, x: &Tensor, linear: &Linear) -> Result<Tensor>;
    /// RMSNorm over the last dimension.
    fn rms_norm(&self, x: &Tensor, norm: &RmsNorm) -> Result<Tensor>;
    /// Softmax over the last dimension.
    fn softmax(&self, x: &Tensor) -> Result<Tensor>;
    /// Rotary embedding of `x: [heads, rows, head_dim]` at `pos`.
    fn rope(&self, x: &Tensor, rope: &Rope, pos: &QueryPos) -> Result<Tensor>;
    /// `scores + mask` with a constant additive mask broadcast over the leading dimensions.
    fn add_mask(&self, scores: &Tensor, mask: &Tensor) -> Result<Tensor>;
}

/// The inference ops: fused kernels, no autograd.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fused;

impl Ops for Fused {
    fn linear(&self, x: &Tensor, linear: &Linear) -> Result<Tensor> {
        linear.forward(x)
    }
    fn rms_norm(&self, x: &Tensor, norm: &RmsNorm) -> Result<Tensor> {
        norm.forward(x)
    }
    fn softmax(&self, x: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::softmax_last_dim(x)?)
    }
    fn rope(&self, x: &Tensor, rope: &Rope, pos: &QueryPos) -> Result<Tensor> {
        match pos {
            QueryPos::Contiguous(start) => rope.apply(x, *start),
            QueryPos::Rows(idx) => rope.apply_rows(x, idx),
        }
    }
    fn add_mask(&self, scores: &Tensor, mask: &Tensor) -> Result<Tensor> {
        Ok(scores.broadcast_add(mask)?)
    }
}
