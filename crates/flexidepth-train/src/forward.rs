//! The differentiable forward pass of a FlexiDepth model, for training.
//!
//! The frozen layers below the first routed one run through the inference path (plain tensors, no graph). From
//! the first routed layer on, every op is differentiable and every row is computed densely, then mixed with the
//! hard decision `m = [w > threshold]` (spec A3/A4):
//!
//! ```text
//! u = input_layernorm(x);  w = sigmoid(router(u));  m = [w > threshold]   (no gradient through m)
//! h = x + m · attn(u)                           (every row writes K/V: skipped rows' keys stay visible)
//! out = h + m · w · mlp(norm(h)) + (1 − m) · (1 − w) · adapter(norm(h))
//! ```
//!
//! which equals the inference layer row for row, while gradients reach the router through `w` in both branches.
//! Unrouted layers above the first routed one run the same way with `m = 1, w = 1`.

use super::ops::{add_const, frozen_linear, rms_norm, rope, softmax};
use super::params::{DepthParams, LayerParams};
use candle_core::{DType, Tensor};
use flexidepth::error::{Error, Result};
use flexidepth::model::attention::{causal_mask, Attention};
use flexidepth::model::layer::DecoderLayer;
use flexidepth::model::norm::RmsNorm;
use flexidepth::model::Model;

/// What the training forward returns.
#[derive(Debug)]
pub struct TrainForward {
    /// `[seq, vocab]`
    pub logits: Tensor,
    /// Continuous gates `[seq]`, one per routed layer in layer order (in the graph: `L_skip` is built on them).
    pub gates: Vec<Tensor>,
    /// Rows run per routed layer (hard decisions), for the layers-used statistic.
    pub rows_run: Vec<usize>,
    /// Hidden states entering the first routed layer (no graph): the teacher continues from here.
    pub prefix: Tensor,
}

/// The first routed layer of `params` (training starts its graph there).
pub fn first_routed(params: &DepthParams) -> Result<usize> {
    params
        .routed_layers
        .iter()
        .copied()
        .min()
        .ok_or_else(|| Error::Input("no routed layers to train".into()))
}

/// Forward `ids` (one sequence) through `model` with the trainable routers and adapters of `params`.
pub fn forward(model: &Model, params: &DepthParams, ids: &[u32], threshold: f32) -> Result<TrainForward> {
    let first = first_routed(params)?;
    let prefix = model.hidden_after(ids, first)?;
    let seq = ids.len();
    let mask = causal_mask(seq, 0, model.device(), DType::F32)?;
    let (cos, sin) = model.rope().tables(0, seq)?;
    let mut x = prefix.clone();
    let mut gates = Vec::new();
    let mut rows_run = Vec::new();
    for layer in &model.layers[first..] {
        if model.pruned_layers.contains(&layer.layer_idx) {
            continue;
        }
        let u = rms_norm(&x, &layer.input_layernorm)?;
        if !params.routed_layers.contains(&layer.layer_idx) {
            let h = (&x + attention(&layer.self_attn, &u, &cos, &sin, &mask)?)?;
            x = (&h + mlp(layer, &rms_norm(&h, &layer.post_attention_layernorm)?)?)?;
            continue;
        }
        let p = params.layer(layer.layer_idx)?;
        let w = router_gates(&p, &u, model.config.rms_norm_eps)?; // [seq, 1]
        let m = w.detach().gt(threshold as f64)?.to_dtype(DType::F32)?;
        rows_run.push(m.sum_all()?.to_scalar::<f32>()? as usize);
        let attn = attention(&layer.self_attn, &u, &cos, &sin, &mask)?;
        let h = (&x + attn.broadcast_mul(&m)?)?;
        let v = rms_norm(&h, &layer.post_attention_layernorm)?;
        let run_scale = (&m * &w)?;
        let skip_scale = ((1.0 - &m)? * (1.0 - &w)?)?;
        let ffn = mlp(layer, &v)?.broadcast_mul(&run_scale)?;
        let adapted = adapter(&p, &v)?.broadcast_mul(&skip_scale)?;
        x = ((h + ffn)? + adapted)?;
        gates.push(w.squeeze(1)?);
    }
    let logits = frozen_linear(&rms_norm(&x, &model.norm)?, &model.lm_head)?;
    Ok(TrainForward {
        logits,
        gates,
        rows_run,
        prefix,
    })
}

/// `sigmoid(W_head · W_dec · tanh(RMSNorm_r(W_enc · u)))`, `[rows, 1]`: the released router order, with the
/// model's epsilon in the router norm (as `depth::file::load_parts` builds it).
fn router_gates(p: &LayerParams, u: &Tensor, eps: f64) -> Result<Tensor> {
    let norm = RmsNorm::new(p.router_norm.clone(), eps);
    let z = rms_norm(&u.matmul(&p.router_enc.t()?)?, &norm)?.tanh()?;
    let logit = z.matmul(&p.router_dec.t()?)?.matmul(&p.router_head.t()?)?;
    Ok(candle_nn::ops::sigmoid(&logit)?)
}

/// `up_proj(silu(gate_proj(v)) · down_proj(v))` with the official (swapped) names.
fn adapter(p: &LayerParams, v: &Tensor) -> Result<Tensor> {
    let gate = candle_nn::ops::silu(&v.matmul(&p.gate_proj.t()?)?)?;
    let branch = v.matmul(&p.down_proj.t()?)?;
    Ok((gate * branch)?.matmul(&p.up_proj.t()?)?)
}

fn mlp(layer: &DecoderLayer, v: &Tensor) -> Result<Tensor> {
    let m = &layer.mlp;
    let gate = candle_nn::ops::silu(&frozen_linear(v, &m.gate_proj)?)?;
    frozen_linear(&(gate * frozen_linear(v, &m.up_proj)?)?, &m.down_proj)
}

/// Causal self-attention of `u: [seq, hidden]` over itself, differentiable in `u`.
fn attention(a: &Attention, u: &Tensor, cos: &Tensor, sin: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let seq = u.dim(0)?;
    let heads = |x: Tensor, n: usize, norm: Option<&RmsNorm>| -> Result<Tensor> {
        let x = x.reshape((seq, n, a.head_dim))?;
        let x = match norm {
            Some(norm) => rms_norm(&x, norm)?,
            None => x,
        };
        Ok(x.transpose(0, 1)?.contiguous()?)
    };
    let q = rope(
        &heads(frozen_linear(u, &a.q_proj)?, a.num_heads, a.q_norm.as_ref())?,
        cos,
        sin,
    )?;
    let k = rope(
        &heads(frozen_linear(u, &a.k_proj)?, a.num_kv_heads, a.k_norm.as_ref())?,
        cos,
        sin,
    )?;
    let v = heads(frozen_linear(u, &a.v_proj)?, a.num_kv_heads, None)?;
    // Heads sharing a KV head are adjacent: fold them into the rows, as the inference path does.
    let group = a.num_heads / a.num_kv_heads;
    let q = q.reshape((a.num_kv_heads, group * seq, a.head_dim))?;
    let scale = 1.0 / (a.head_dim as f64).sqrt();
    let scores = (q.matmul(&k.t()?)? * scale)?.reshape((a.num_kv_heads, group, seq, seq))?;
    let scores = add_const(&scores, mask)?.reshape((a.num_kv_heads, group * seq, seq))?;
    let out = softmax(&scores)?.matmul(&v)?;
    let out = out
        .reshape((a.num_heads, seq, a.head_dim))?
        .transpose(0, 1)?
        .reshape((seq, a.num_heads * a.head_dim))?;
    frozen_linear(&out, &a.o_proj)
}
