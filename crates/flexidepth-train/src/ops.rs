//! Differentiable versions of the model's ops, for the training forward pass.
//!
//! The inference path uses candle's fused `rms_norm`, `softmax_last_dim` and `rope`, which have no backward
//! (gradients would silently stop there), and plain `matmul`, whose backward also computes the gradient of the
//! weight, even a frozen one. Here every op passes gradients to its input and frozen weights never get one.

use candle_core::backend::BackendStorage;
use candle_core::op::{Add, Mul};
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Storage, Tensor, D};
use flexidepth::error::Result;
use flexidepth::kernels::vexp::{exp_shifted, exp_shifted_inplace, log_sum_exp};
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
        // Computed on the storages themselves: no copy of the input or the result.
        let cpu = |t: &Tensor| -> candle_core::Result<()> {
            match &*t.storage_and_layout().0 {
                Storage::Cpu(_) => Ok(()),
                _ => Err(candle_core::Error::Msg(
                    "frozen-const: the constant is not on the CPU".into(),
                )),
            }
        };
        let with = |c: &Tensor, f: &dyn Fn(&CpuStorage, &Layout) -> candle_core::Result<CpuStorage>| {
            cpu(c)?;
            let (cs, cl) = c.storage_and_layout();
            match &*cs {
                Storage::Cpu(cs) => f(cs, cl),
                _ => unreachable!("checked above"),
            }
        };
        match self {
            ConstOp::Linear { weight, bias } => {
                let dims = layout.dims();
                let (Some(&inp), true) = (dims.last(), layout.is_contiguous()) else {
                    return Err(candle_core::Error::Msg("frozen-const: a contiguous input".into()));
                };
                let rows = layout.shape().elem_count() / inp.max(1);
                let out_features = weight.dim(0)?;
                let x_l = Layout::contiguous_with_offset((rows, inp), layout.start_offset());
                let y = with(weight, &|w, wl| {
                    storage.matmul(w, (1, rows, out_features, inp), &x_l, &wl.transpose(0, 1)?)
                })?;
                let y = match bias {
                    Some(b) => with(b, &|b, bl| {
                        y.binary_impl::<Add>(
                            b,
                            &Layout::contiguous((rows, out_features)),
                            &bl.broadcast_as((rows, out_features))?,
                        )
                    })?,
                    None => y,
                };
                let mut shape = dims.to_vec();
                if let Some(last) = shape.last_mut() {
                    *last = out_features;
                }
                Ok((y, Shape::from(shape)))
            }
            ConstOp::Mul(c) => Ok((
                with(c, &|c, cl| {
                    storage.binary_impl::<Mul>(c, layout, &cl.broadcast_as(layout.shape().clone())?)
                })?,
                layout.shape().clone(),
            )),
            ConstOp::Add(c) => Ok((
                with(c, &|c, cl| {
                    storage.binary_impl::<Add>(c, layout, &cl.broadcast_as(layout.shape().clone())?)
                })?,
                layout.shape().clone(),
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
    let x = match op {
        // The element-wise ops broadcast the constant over any layout of `x`; the matmul needs rows.
        ConstOp::Linear { .. } => x.contiguous()?,
        _ => x.clone(),
    };
    Ok(x.apply_op1_arc(std::sync::Arc::new(Box::new(op)))?)
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

/// The output head and the loss terms of a pass in one op: `x: [rows, hidden]` (final-normed hidden states) →
/// `[Σ_rows −log p(target), Σ_rows KL(teacher ‖ p)]`, with `p = softmax(x Wᵀ + b)`. Its backward gives `x` the
/// gradient `(g_lm (p − onehot) + g_kl (p − p_teacher)) W` and never `W` one.
///
/// Built from elementary ops, log-softmax over a 49k vocabulary puts a dozen `[rows, vocab]` tensors in the graph
/// (each gradient allocated, zeroed and added by candle's backward); here the logits are the only one, kept from
/// the forward and turned into their gradient in place.
struct HeadLoss {
    /// `[vocab, hidden]`, frozen.
    weight: Tensor,
    bias: Option<Tensor>,
    /// Next-token targets, one per row (`None`: no `L_lm` term).
    targets: Option<Vec<u32>>,
    /// The teacher's logits `[rows, vocab]` (`None`: no KL term).
    teacher: Option<Tensor>,
    /// What the backward needs: the logits (owned, overwritten by their gradient) and the log-partition functions.
    saved: std::sync::Mutex<Option<HeadSaved>>,
}

struct HeadSaved {
    logits: Vec<f32>,
    lse: Vec<f32>,
    teacher_lse: Vec<f32>,
}

/// The contiguous f32 values of a CPU tensor.
fn with_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> candle_core::Result<R>) -> candle_core::Result<R> {
    let t = t.contiguous()?;
    let (s, l) = t.storage_and_layout();
    match &*s {
        Storage::Cpu(c) => {
            let all = c.as_slice::<f32>()?;
            f(&all[l.start_offset()..l.start_offset() + l.shape().elem_count()])
        }
        _ => Err(candle_core::Error::Msg("head-loss runs on the CPU".into())),
    }
}

impl CustomOp1 for HeadLoss {
    fn name(&self) -> &'static str {
        "head-loss"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        use rayon::prelude::*;
        let (rows, hidden) = layout.shape().dims2()?;
        let vocab = self.weight.dim(0)?;
        let (ws, wl) = self.weight.storage_and_layout();
        let Storage::Cpu(w) = &*ws else {
            return Err(candle_core::Error::Msg("head-loss runs on the CPU".into()));
        };
        // x · Wᵀ straight from the storages (no copies).
        let logits = storage.matmul(w, (1, rows, vocab, hidden), layout, &wl.transpose(0, 1)?)?;
        drop(ws);
        let CpuStorage::F32(mut logits) = logits else {
            return Err(candle_core::Error::Msg("head-loss needs f32".into()));
        };
        if let Some(b) = &self.bias {
            with_slice(b, |b| {
                logits
                    .par_chunks_mut(vocab)
                    .for_each(|row| row.iter_mut().zip(b).for_each(|(v, b)| *v += b));
                Ok(())
            })?;
        }
        let lse: Vec<f32> = logits.par_chunks(vocab).map(log_sum_exp).collect();
        let lm: f64 = match &self.targets {
            Some(t) => t
                .iter()
                .enumerate()
                .map(|(r, &t)| (lse[r] - logits[r * vocab + t as usize]) as f64)
                .sum(),
            None => 0.0,
        };
        let (kl, teacher_lse) = match &self.teacher {
            Some(teacher) => with_slice(teacher, |t| {
                let t_lse: Vec<f32> = t.par_chunks(vocab).map(log_sum_exp).collect();
                // KL(t ‖ p) = Σ_v p_t (t_v − s_v) − lse_t + lse_s per row.
                let kl: f64 = t
                    .par_chunks(vocab)
                    .zip(logits.par_chunks(vocab))
                    .enumerate()
                    .map_init(
                        || vec![0f32; vocab],
                        |p_t, (r, (t, s))| {
                            exp_shifted(t, t_lse[r], p_t);
                            let cross: f32 = p_t
                                .iter()
                                .zip(t.iter().zip(s))
                                .map(|(&p, (&tv, &sv))| p * (tv - sv))
                                .sum();
                            (cross - t_lse[r] + lse[r]) as f64
                        },
                    )
                    .sum();
                Ok((kl, t_lse))
            })?,
            None => (0.0, Vec::new()),
        };
        *self
            .saved
            .lock()
            .map_err(|_| candle_core::Error::Msg("head-loss: poisoned".into()))? = Some(HeadSaved {
            logits,
            lse,
            teacher_lse,
        });
        Ok((CpuStorage::F32(vec![lm as f32, kl as f32]), Shape::from(2)))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        use rayon::prelude::*;
        let g: Vec<f32> = grad.to_vec1()?;
        let (g_lm, g_kl) = (g[0], g[1]);
        let saved = self
            .saved
            .lock()
            .map_err(|_| candle_core::Error::Msg("head-loss: poisoned".into()))?
            .take()
            .ok_or_else(|| candle_core::Error::Msg("head-loss: a second backward".into()))?;
        let HeadSaved {
            mut logits,
            lse,
            teacher_lse,
        } = saved;
        let vocab = self.weight.dim(0)?;
        let rows = lse.len();
        let g_p = if self.targets.is_some() { g_lm } else { 0.0 } + if self.teacher.is_some() { g_kl } else { 0.0 };
        // d/ds (Σ lm) = p − onehot; d/ds (Σ KL(t ‖ p)) = p − p_t. The logits become their gradient in place.
        logits.par_chunks_mut(vocab).enumerate().for_each(|(r, row)| {
            exp_shifted_inplace(row, lse[r]);
            row.iter_mut().for_each(|v| *v *= g_p);
        });
        if let Some(t) = &self.targets {
            for (r, &t) in t.iter().enumerate() {
                logits[r * vocab + t as usize] -= g_lm;
            }
        }
        if let Some(teacher) = &self.teacher {
            with_slice(teacher, |t| {
                logits
                    .par_chunks_mut(vocab)
                    .zip(t.par_chunks(vocab))
                    .enumerate()
                    .for_each_init(
                        || vec![0f32; vocab],
                        |p_t, (r, (row, t))| {
                            exp_shifted(t, teacher_lse[r], p_t);
                            row.iter_mut().zip(p_t.iter()).for_each(|(v, &p)| *v -= g_kl * p)
                        },
                    );
                Ok(())
            })?;
        }
        let d = Tensor::from_vec(logits, (rows, vocab), grad.device())?;
        Ok(Some(d.matmul(&self.weight)?))
    }
}

/// `[Σ −log p(target), Σ KL(teacher ‖ p)]` of `x: [rows, hidden]` (final-normed) through the frozen `head` (see
/// [`HeadLoss`]); a term without its input is 0. On a tensor outside a graph or off the CPU, computed from the
/// elementary ops.
pub fn head_loss(x: &Tensor, head: &Linear, targets: Option<&[u32]>, teacher: Option<&Tensor>) -> Result<Tensor> {
    let weight = head
        .dense_weight()
        .ok_or_else(|| flexidepth::Error::Unsupported("training needs the output head's weights in f32".into()))?
        .clone();
    let rows = x.dim(0)?;
    if targets.is_some_and(|t| t.len() != rows)
        || teacher.is_some_and(|t| t.dims() != [rows, weight.dim(0).unwrap_or(0)])
    {
        return Err(flexidepth::Error::Input(
            "head loss: targets or teacher do not match the rows".into(),
        ));
    }
    if let Some(&bad) = targets.and_then(|t| t.iter().find(|&&t| t as usize >= weight.dim(0).unwrap_or(0))) {
        return Err(flexidepth::Error::Input(format!(
            "target {bad} is outside the vocabulary"
        )));
    }
    if !x.device().is_cpu() || !x.track_op() {
        let logits = head.forward(x)?;
        let zero = Tensor::zeros((), x.dtype(), x.device())?;
        let lm = match targets {
            Some(t) => {
                let idx = Tensor::new(t, x.device())?.unsqueeze(1)?;
                log_softmax(&logits)?.gather(&idx, 1)?.sum_all()?.neg()?
            }
            None => zero.clone(),
        };
        let kl = match teacher {
            Some(t) => (softmax(t)? * (log_softmax(t)? - log_softmax(&logits)?)?)?.sum_all()?,
            None => zero,
        };
        return Ok(Tensor::stack(&[lm, kl], 0)?);
    }
    let op = HeadLoss {
        weight,
        bias: head.bias.clone(),
        targets: targets.map(<[u32]>::to_vec),
        teacher: teacher.map(Tensor::detach),
        saved: std::sync::Mutex::new(None),
    };
    Ok(x.contiguous()?.apply_op1_arc(std::sync::Arc::new(Box::new(op)))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

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

    /// The fused head and loss terms equal the elementary computation (logits, log-softmax, gather; KL from
    /// softmaxes), values and the input's gradient, and give the frozen head no gradient.
    #[test]
    fn head_loss_matches_the_elementary_ops() {
        let dev = Device::Cpu;
        let (rows, hidden, vocab) = (5, 4, 7);
        let w = Tensor::randn(0f32, 1., (vocab, hidden), &dev).unwrap();
        let b = Tensor::randn(0f32, 1., vocab, &dev).unwrap();
        let head = Linear::dense(w.clone(), Some(b.clone()));
        let teacher = Tensor::randn(0f32, 2., (rows, vocab), &dev).unwrap();
        let targets = [3u32, 0, 6, 2, 2];
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (rows, hidden), &dev).unwrap()).unwrap();
        for (t, te) in [
            (Some(&targets[..]), Some(&teacher)),
            (Some(&targets[..]), None),
            (None, Some(&teacher)),
        ] {
            let fused = head_loss(x.as_tensor(), &head, t, te).unwrap();
            let logits = x
                .as_tensor()
                .matmul(&w.t().unwrap())
                .unwrap()
                .broadcast_add(&b)
                .unwrap();
            let zero = Tensor::zeros((), candle_core::DType::F32, &dev).unwrap();
            let lm = match t {
                Some(t) => {
                    let idx = Tensor::new(t, &dev).unwrap().unsqueeze(1).unwrap();
                    log_softmax(&logits)
                        .unwrap()
                        .gather(&idx, 1)
                        .unwrap()
                        .sum_all()
                        .unwrap()
                        .neg()
                        .unwrap()
                }
                None => zero.clone(),
            };
            let kl = match te {
                Some(te) => (softmax(te).unwrap()
                    * (log_softmax(te).unwrap() - log_softmax(&logits).unwrap()).unwrap())
                .unwrap()
                .sum_all()
                .unwrap(),
                None => zero,
            };
            let want = Tensor::stack(&[&lm, &kl], 0).unwrap();
            assert!(close(&fused, &want) < 1e-4, "{fused} vs {want}");
            // A weighted sum, so both terms' gradients count.
            let weights = Tensor::new(&[0.7f32, 1.3], &dev).unwrap();
            let gf = (&fused * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            let ge = (&want * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            let (a, e) = (gf.get(x.as_tensor()).unwrap(), ge.get(x.as_tensor()).unwrap());
            assert!(close(a, e) < 1e-4, "{a} vs {e}");
            assert!(gf.get(&w).is_none() && gf.get(&b).is_none());
        }
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
