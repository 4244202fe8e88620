//! Differentiable versions of the model's ops, for the training forward pass.
//!
//! The inference path uses candle's fused `rms_norm`, `softmax_last_dim` and `rope`, which have no backward
//! (gradients would silently stop there), and plain `matmul`, whose backward also computes the gradient of the
//! weight, even a frozen one. Here every op passes gradients to its input and frozen weights never get one.

use candle_core::backend::BackendStorage;
use candle_core::op::BackpropOp;
use candle_core::{CpuStorage, CustomOp1, Device, Layout, Shape, Storage, Tensor, D};
use flexidepth::error::Result;
use flexidepth::model::linear::Linear;
use flexidepth::model::norm::RmsNorm;

/// An op of the input and a frozen constant: its backward gives the input its gradient and never computes one
/// for the constant (plain candle ops would, for a weight, at the cost of a second matmul — for the tied lm_head as
/// much as the rest of the backward pass).
enum ConstOp {
    /// `x · Wᵀ + b` with `W: [out, in]`.
    Linear { weight: Tensor, bias: Option<Tensor> },
    /// `x ⊙ c`, `c` broadcast to `x`.
    Mul(Tensor),
    /// `x + c`, `c` broadcast to `x`.
    Add(Tensor),
}

impl ConstOp {
    fn apply(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            ConstOp::Linear { weight, bias } => {
                let y = x.matmul(&weight.t()?)?;
                match bias {
                    Some(b) => y.broadcast_add(b),
                    None => Ok(y),
                }
            }
            ConstOp::Mul(c) => x.broadcast_mul(c),
            ConstOp::Add(c) => x.broadcast_add(c),
        }
    }
}

impl CustomOp1 for ConstOp {
    fn name(&self) -> &'static str {
        "frozen-const"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        // Wrap the input as a tensor outside any graph (a copy only when it is a view), compute, unwrap.
        let x = match layout.contiguous_offsets() {
            Some((0, end)) if end == storage.as_slice::<f32>()?.len() => Tensor::from_storage(
                Storage::Cpu(storage.clone()),
                layout.shape().clone(),
                BackpropOp::none(),
                false,
            ),
            Some((start, end)) => {
                Tensor::from_slice(&storage.as_slice::<f32>()?[start..end], layout.shape(), &Device::Cpu)?
            }
            None => return Err(candle_core::Error::Msg("frozen-const needs a contiguous input".into())),
        };
        let y = self.apply(&x)?.contiguous()?;
        let shape = y.shape().clone();
        let (s, l) = y.storage_and_layout();
        match &*s {
            Storage::Cpu(c) if l.start_offset() == 0 => Ok((c.try_clone(&Layout::contiguous(&shape))?, shape)),
            _ => Err(candle_core::Error::Msg(
                "frozen-const: expected a plain CPU result".into(),
            )),
        }
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(match self {
            ConstOp::Linear { weight, .. } => grad.matmul(weight)?,
            ConstOp::Mul(c) => grad.broadcast_mul(c)?,
            ConstOp::Add(_) => grad.clone(),
        }))
    }
}

fn const_op(x: &Tensor, op: ConstOp) -> Result<Tensor> {
    if !x.device().is_cpu() || !x.track_op() {
        // Off the CPU (no custom kernel) or outside a graph, the plain op is the same computation.
        return Ok(op.apply(&x.detach())?);
    }
    Ok(x.contiguous()?.apply_op1_arc(std::sync::Arc::new(Box::new(op)))?)
}

/// A frozen base linear layer on `x: [rows, in]` (dense weights only: training loads the base in f32).
pub fn frozen_linear(x: &Tensor, linear: &Linear) -> Result<Tensor> {
    let weight = linear
        .dense_weight()
        .ok_or_else(|| {
            flexidepth::Error::Unsupported(
                "training needs the base model's weights in f32 (not quantized blocks)".into(),
            )
        })?
        .clone();
    const_op(
        x,
        ConstOp::Linear {
            weight,
            bias: linear.bias.clone(),
        },
    )
}

/// `x ⊙ c` for a constant `c` (a frozen norm weight, a rotary table).
pub fn mul_const(x: &Tensor, c: &Tensor) -> Result<Tensor> {
    const_op(x, ConstOp::Mul(c.clone()))
}

/// `x + c` for a constant `c` (the attention mask).
pub fn add_const(x: &Tensor, c: &Tensor) -> Result<Tensor> {
    const_op(x, ConstOp::Add(c.clone()))
}

/// RMSNorm from elementary ops (candle's fused one has no backward). A trainable weight (the router's) gets its
/// gradient; a frozen one does not.
pub fn rms_norm(x: &Tensor, norm: &RmsNorm) -> Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = x.broadcast_mul(&(ms + norm.eps)?.sqrt()?.recip()?)?;
    if norm.weight.is_variable() {
        Ok(normed.broadcast_mul(&norm.weight)?)
    } else {
        mul_const(&normed, &norm.weight)
    }
}

/// Softmax over the last dimension. The row maximum is subtracted as a constant (softmax does not depend on it).
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
}

/// Log-softmax over the last dimension, max-shifted as a constant.
pub fn log_softmax(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(shifted.broadcast_sub(&lse)?)
}

/// Rotary embedding (non-interleaved halves, as Llama/Qwen) of `x: [heads, seq, head_dim]` with `cos`, `sin`:
/// `[seq, head_dim / 2]`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let a = (mul_const(&x1, cos)? - mul_const(&x2, sin)?)?;
    let b = (mul_const(&x2, cos)? + mul_const(&x1, sin)?)?;
    Ok(Tensor::cat(&[a, b], D::Minus1)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    fn close(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn frozen_linear_matches_matmul_and_gives_only_the_input_gradient() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1., (5, 3), &dev).unwrap();
        let b = Tensor::randn(0f32, 1., 5, &dev).unwrap();
        let lin = Linear::dense(w.clone(), Some(b.clone()));
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (4, 3), &dev).unwrap()).unwrap();
        let y = frozen_linear(x.as_tensor(), &lin).unwrap();
        let want = x
            .as_tensor()
            .matmul(&w.t().unwrap())
            .unwrap()
            .broadcast_add(&b)
            .unwrap();
        assert!(close(&y, &want) < 1e-6);
        // d(sum(y²))/dx = 2 y W
        let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let gx = grads.get(x.as_tensor()).unwrap();
        let want_gx = (y.matmul(&w).unwrap() * 2.0).unwrap();
        assert!(close(gx, &want_gx) < 1e-5);
        assert!(grads.get(&w).is_none(), "a frozen weight must not get a gradient");
    }

    #[test]
    fn norm_softmax_and_rope_match_the_inference_ops() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1., (6, 8), &dev).unwrap();
        let norm = RmsNorm::new(Tensor::randn(0f32, 1., 8, &dev).unwrap(), 1e-5);
        assert!(close(&rms_norm(&x, &norm).unwrap(), &norm.forward(&x).unwrap()) < 1e-5);
        assert!(close(&softmax(&x).unwrap(), &candle_nn::ops::softmax_last_dim(&x).unwrap()) < 1e-6);
        let lsm = candle_nn::ops::log_softmax(&x, D::Minus1).unwrap();
        assert!(close(&log_softmax(&x).unwrap(), &lsm) < 1e-5);
        let rope_model = flexidepth::model::rope::Rope::new(8, 10_000.0, 16, candle_core::DType::F32, &dev).unwrap();
        let (cos, sin) = rope_model.tables(3, 6).unwrap();
        let h = Tensor::randn(0f32, 1., (2, 6, 8), &dev).unwrap();
        assert!(close(&rope(&h, &cos, &sin).unwrap(), &rope_model.apply(&h, 3).unwrap()) < 1e-5);
    }
}
