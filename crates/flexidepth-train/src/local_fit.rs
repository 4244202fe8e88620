//! Layer-local adapter fitting (issue 10, item 1): run the frozen model at full depth, record per routed layer the
//! adapter's input and what the skipped part adds to the residual stream, and fit each adapter to reproduce it —
//! a closed-form start followed by a few epochs of local Adam, layer by layer, in seconds to minutes.
//!
//! What is fitted, per skip unit (spec A3; `x` the layer's residual input, `h = x + attn(input_layernorm(x))`):
//!
//! ```text
//! unit   adapter input v            target T (what the skipped part adds)      skip output (released)
//! layer  post_attention_layernorm(x)  layer(x) − x = attn + mlp(post_norm(h))  x + (1 − w)·adapter(v)
//! ffn    post_attention_layernorm(h)  mlp(post_norm(h))                        h + (1 − w)·adapter(v)
//! ```
//!
//! **The `(1 − w)` factor.** A skipped row's adapter output is scaled by `1 − w`, with `w` the router's gate, which
//! is below the threshold but otherwise unknown when the adapter is fitted. We fit at a fixed *target gate*
//! `w*` ([`FitSettings::target_gate`]): `adapter(v) ≈ T / (1 − w*)`, so that a row skipped with gate `w*`
//! reproduces the layer exactly as far as the adapter can. The default `w* = 0` (a confident skip) fits
//! `adapter(v) ≈ T`; the end-to-end stage then adjusts adapters and gates jointly. The relative error
//! `‖(1 − w*)·adapter(v) − T‖² / ‖T‖²` does not depend on `w*`.
//!
//! **The fit.** The adapter is SwiGLU with the official swapped names, `up_proj(silu(gate_proj v) ⊙ down_proj v)`.
//! Closed-form start: the `m` (adapter width) neurons of the layer's own MLP with the largest mean contribution
//! `mean_t |silu(g_j·v_t)·u_j·v_t| · ‖down_{:,j}‖` on the training tokens give `gate_proj` and `down_proj` (the MLP's
//! `gate_proj` and `up_proj` rows), and `up_proj` is the ridge least-squares solution given those features
//! (`(ΦᵀΦ + λ·mean diag·I)⁻¹ ΦᵀT`, Cholesky in f64). Then Adam on all three matrices, mean squared error, with the
//! held-out error checked after every epoch; the best held-out parameters are kept.
//!
//! Tokens: sequences are consumed in the order given, each cut to the remaining budget (a prefix, so causal
//! attention is unaffected); the last `holdout` share of the collected rows (the last sequences) is held out.

use crate::forward::Differentiable;
use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::optim::{AdamW, Optimizer, ParamsAdamW};
use flexidepth::depth::SkipUnit;
use flexidepth::error::{Error, Result};
use flexidepth::model::linear::Linear;
use flexidepth::model::mlp::Mlp;
use flexidepth::model::ops::{Fused, Ops};
use flexidepth::model::plan::{AttnStep, FfnStep, LayerPlan, RowStep};
use flexidepth::model::{Adapter, ForwardCtx, Model};
use flexidepth::rng::Draw;

/// Settings of a local fit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FitSettings {
    /// Rows (tokens) collected per routed layer, training and held-out together.
    pub max_tokens: usize,
    /// Share of the collected rows held out for the reported error, in (0, 1).
    pub holdout: f64,
    /// Epochs of local Adam after the closed-form start (0: closed form only).
    pub epochs: usize,
    pub lr: f64,
    /// Rows per Adam step.
    pub batch: usize,
    /// Ridge strength, relative to the mean diagonal of `ΦᵀΦ`.
    pub ridge: f64,
    /// The gate `w*` the adapter is fitted for (see the module docs), in `[0, 1)`.
    pub target_gate: f64,
    pub seed: u64,
}

impl Default for FitSettings {
    fn default() -> Self {
        FitSettings {
            max_tokens: 8192,
            holdout: 0.2,
            epochs: 20,
            lr: 1e-3,
            batch: 256,
            ridge: 1e-4,
            target_gate: 0.0,
            seed: 42,
        }
    }
}

impl FitSettings {
    /// Refuse settings that cannot fit.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::Input(format!("local fit: {m}")));
        if self.max_tokens < 2 {
            return bad("needs at least 2 tokens");
        }
        if !(self.holdout > 0.0 && self.holdout < 1.0) {
            return bad("holdout must be in (0, 1)");
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) || self.batch == 0 {
            return bad("lr and batch must be positive");
        }
        if !(self.ridge >= 0.0 && self.ridge.is_finite()) {
            return bad("ridge must be ≥ 0");
        }
        if !(0.0..1.0).contains(&self.target_gate) {
            return bad("target_gate must be in [0, 1)");
        }
        Ok(())
    }
}

/// The recorded rows of one routed layer.
#[derive(Debug, Clone)]
pub struct LayerData {
    pub layer_idx: usize,
    /// `[rows, hidden]`: `input_layernorm(x)`, the router's input.
    pub u: Tensor,
    /// `[rows, hidden]`: the adapter's input when the row skips (see the module table).
    pub v: Tensor,
    /// `[rows, hidden]`: what the skipped part adds to the residual at full depth.
    pub target: Tensor,
    /// Rows `0..train_rows` are for fitting, the rest held out.
    pub train_rows: usize,
}

impl LayerData {
    pub fn rows(&self) -> Result<usize> {
        Ok(self.v.dim(0)?)
    }
}

/// The plan of a layer whose rows all run attention and no FFN: its output is `h = x + attn(input_layernorm(x))`.
pub fn attention_only_plan(rows: usize) -> LayerPlan {
    LayerPlan::Rows {
        steps: vec![
            RowStep {
                attn: AttnStep::Run,
                ffn: FfnStep::Skip,
            };
            rows
        ],
        gates: None,
        scale_by_gate: false,
    }
}

/// Run `model` at full depth over `seqs` (each from position 0, no cache) and record, for every layer of `layers`,
/// the rows of [`LayerData`] for skip unit `unit` (layer or FFN), up to `max_tokens` rows and with the last
/// `holdout` share held out. Inference ops; the weights may be quantized.
///
/// Errors: no layers, a layer beyond the model, an attention-only unit, no tokens.
pub fn collect(
    model: &Model,
    seqs: &[&[u32]],
    layers: &[usize],
    unit: SkipUnit,
    max_tokens: usize,
    holdout: f64,
) -> Result<Vec<LayerData>> {
    let n = model.layers.len();
    if layers.is_empty() || layers.iter().any(|&l| l >= n) {
        return Err(Error::Input(format!(
            "local fit: layers {layers:?} of a {n}-layer model"
        )));
    }
    if unit == SkipUnit::Attention {
        return Err(Error::Unsupported(
            "local fit: the attention-only unit has no adapter to fit".into(),
        ));
    }
    let last = *layers.iter().max().unwrap_or(&0);
    let mut parts: Vec<(Vec<Tensor>, Vec<Tensor>, Vec<Tensor>)> = vec![Default::default(); layers.len()];
    let mut taken = 0;
    for ids in seqs {
        if taken >= max_tokens {
            break;
        }
        let ids = &ids[..ids
            .len()
            .min(max_tokens - taken)
            .min(model.config.max_position_embeddings)];
        if ids.is_empty() {
            continue;
        }
        taken += ids.len();
        let ctx = ForwardCtx::new(model, 0, ids.len())?;
        let mut x = model.embed(ids)?;
        for layer in &model.layers[..=last] {
            let Some(k) = layers.iter().position(|&l| l == layer.layer_idx) else {
                x = layer.forward(&Fused, &x, None, &ctx, None, &LayerPlan::Full)?;
                continue;
            };
            let u = Fused.rms_norm(&x, &layer.input_layernorm)?;
            let h = layer.forward(&Fused, &x, Some(u.clone()), &ctx, None, &attention_only_plan(ids.len()))?;
            let post = Fused.rms_norm(&h, &layer.post_attention_layernorm)?;
            let mlp = layer.mlp.forward(&Fused, &post)?;
            let y = (&h + &mlp)?;
            let (v, target) = match unit {
                SkipUnit::Ffn => (post, mlp),
                _ => (Fused.rms_norm(&x, &layer.post_attention_layernorm)?, (&y - &x)?),
            };
            parts[k].0.push(u);
            parts[k].1.push(v);
            parts[k].2.push(target);
            x = y;
        }
    }
    if taken < 2 {
        return Err(Error::Input("local fit: fewer than 2 tokens to fit on".into()));
    }
    let held = ((taken as f64 * holdout).round() as usize).clamp(1, taken - 1);
    parts
        .into_iter()
        .zip(layers)
        .map(|((u, v, t), &layer_idx)| {
            Ok(LayerData {
                layer_idx,
                u: Tensor::cat(&u, 0)?,
                v: Tensor::cat(&v, 0)?,
                target: Tensor::cat(&t, 0)?,
                train_rows: taken - held,
            })
        })
        .collect()
}

/// A fitted adapter and its errors.
#[derive(Debug, Clone)]
pub struct AdapterFit {
    pub layer_idx: usize,
    /// `[m, hidden]`
    pub gate_proj: Tensor,
    /// `[m, hidden]` (official name: the branch multiplied with `silu(gate_proj v)`)
    pub down_proj: Tensor,
    /// `[hidden, m]` (official name: the output projection)
    pub up_proj: Tensor,
    /// Held-out `‖(1 − w*)·adapter(v) − T‖² / ‖T‖²` of the closed-form start.
    pub rel_err_closed_form: f64,
    /// The same of the kept (best held-out) parameters.
    pub rel_err: f64,
    /// The same on the training rows, for the kept parameters.
    pub train_rel_err: f64,
    /// Adam epochs run; `best_epoch` 0 means the closed form was kept.
    pub epochs: usize,
    pub best_epoch: usize,
    pub seconds: f64,
}

fn dense(mlp_part: &Linear, what: &str) -> Result<Tensor> {
    Ok(mlp_part
        .dense_weight()
        .ok_or_else(|| {
            Error::Unsupported(format!(
                "local fit needs the MLP's {what} in f32 (load the model in f32)"
            ))
        })?
        .clone())
}

/// `silu(v·Gᵀ) ⊙ (v·Uᵀ)`: the MLP's (or adapter's) intermediate features, `[rows, width]`.
fn features(v: &Tensor, gate: &Tensor, branch: &Tensor) -> Result<Tensor> {
    Ok((candle_nn::ops::silu(&v.matmul(&gate.t()?)?)? * v.matmul(&branch.t()?)?)?)
}

/// Fit an adapter of width `width` to `data` (see the module docs), starting from the neurons of `mlp`.
///
/// Errors: a quantized MLP, invalid settings, a width of 0.
pub fn fit_adapter(mlp: &Mlp, data: &LayerData, width: usize, s: &FitSettings) -> Result<AdapterFit> {
    s.validate()?;
    if width == 0 {
        return Err(Error::Input("local fit: adapter width 0".into()));
    }
    let t0 = std::time::Instant::now();
    let rows = data.rows()?;
    let ntr = data.train_rows;
    if ntr == 0 || ntr >= rows {
        return Err(Error::Input("local fit: needs training and held-out rows".into()));
    }
    let scale = 1.0 / (1.0 - s.target_gate);
    let v_tr = data.v.narrow(0, 0, ntr)?;
    let t_tr = (data.target.narrow(0, 0, ntr)? * scale)?;
    let v_ho = data.v.narrow(0, ntr, rows - ntr)?;
    let t_ho = (data.target.narrow(0, ntr, rows - ntr)? * scale)?;

    // Closed-form start: the most contributing MLP neurons, then ridge least squares for the output.
    let (g_all, u_all, d_all) = (
        dense(&mlp.gate_proj, "gate_proj")?,
        dense(&mlp.up_proj, "up_proj")?,
        dense(&mlp.down_proj, "down_proj")?,
    );
    let inter = g_all.dim(0)?;
    let mut importance = vec![0f64; inter];
    for start in (0..ntr).step_by(1024) {
        let len = 1024.min(ntr - start);
        let f = features(&v_tr.narrow(0, start, len)?, &g_all, &u_all)?;
        for (imp, a) in importance.iter_mut().zip(f.abs()?.sum(0)?.to_vec1::<f32>()?) {
            *imp += a as f64;
        }
    }
    let col_norms: Vec<f32> = d_all.sqr()?.sum(0)?.sqrt()?.to_vec1()?;
    let mut order: Vec<usize> = (0..inter).collect();
    order.sort_by(|&a, &b| (importance[b] * col_norms[b] as f64).total_cmp(&(importance[a] * col_norms[a] as f64)));
    let chosen: Vec<u32> = order.iter().take(width).map(|&i| i as u32).collect();
    let idx = Tensor::new(chosen.as_slice(), &Device::Cpu)?;
    let hidden = g_all.dim(1)?;
    let pad = |t: Tensor| -> Result<Tensor> {
        if width > chosen.len() {
            // An adapter wider than the MLP: the extra neurons start small and random.
            let extra =
                (Tensor::randn(0f32, 0.02, (width - chosen.len(), hidden), &Device::Cpu)?).to_dtype(DType::F32)?;
            Ok(Tensor::cat(&[t, extra], 0)?)
        } else {
            Ok(t)
        }
    };
    let gate = pad(g_all.index_select(&idx, 0)?)?;
    let branch = pad(u_all.index_select(&idx, 0)?)?;
    let out = ridge_output(&features(&v_tr, &gate, &branch)?, &t_tr, s.ridge)?;
    let rel_err_closed_form = rel_err(&v_ho, &t_ho, &gate, &branch, &out)?;

    // Local Adam on all three matrices, keeping the best held-out parameters.
    let vars = [
        Var::from_tensor(&gate)?,
        Var::from_tensor(&branch)?,
        Var::from_tensor(&out)?,
    ];
    let mut best = (rel_err_closed_form, 0usize, gate, branch, out);
    if s.epochs > 0 {
        let mut opt = AdamW::new(
            vars.to_vec(),
            ParamsAdamW {
                lr: s.lr,
                weight_decay: 0.0,
                ..Default::default()
            },
        )?;
        let adapter = Adapter {
            gate_proj: Linear::dense(vars[0].as_tensor().clone(), None),
            down_proj: Linear::dense(vars[1].as_tensor().clone(), None),
            up_proj: Linear::dense(vars[2].as_tensor().clone(), None),
        };
        let mut rng = flexidepth::rng::seeded_stream(s.seed, data.layer_idx as u64);
        let mut perm: Vec<u32> = (0..ntr as u32).collect();
        for epoch in 1..=s.epochs {
            rng.shuffle(&mut perm);
            for chunk in perm.chunks(s.batch) {
                let bi = Tensor::new(chunk, &Device::Cpu)?;
                let pred = adapter.forward(&Differentiable, &v_tr.index_select(&bi, 0)?)?;
                let loss = (pred - t_tr.index_select(&bi, 0)?)?.sqr()?.mean_all()?;
                opt.backward_step(&loss)?;
            }
            let e = rel_err(
                &v_ho,
                &t_ho,
                vars[0].as_tensor(),
                vars[1].as_tensor(),
                vars[2].as_tensor(),
            )?;
            if e < best.0 {
                best = (
                    e,
                    epoch,
                    vars[0].as_tensor().detach().copy()?,
                    vars[1].as_tensor().detach().copy()?,
                    vars[2].as_tensor().detach().copy()?,
                );
            }
        }
    }
    let (rel, best_epoch, gate, branch, out) = best;
    let train_rel_err = rel_err(&v_tr, &t_tr, &gate, &branch, &out)?;
    Ok(AdapterFit {
        layer_idx: data.layer_idx,
        gate_proj: gate,
        down_proj: branch,
        up_proj: out,
        rel_err_closed_form,
        rel_err: rel,
        train_rel_err,
        epochs: s.epochs,
        best_epoch,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// `‖adapter(v) − T‖² / ‖T‖²` (0 when the target is zero and so is the error), computed in chunks.
pub fn rel_err(v: &Tensor, target: &Tensor, gate: &Tensor, branch: &Tensor, out: &Tensor) -> Result<f64> {
    let (mut num, mut den) = (0f64, 0f64);
    let rows = v.dim(0)?;
    for start in (0..rows).step_by(1024) {
        let len = 1024.min(rows - start);
        let t = target.narrow(0, start, len)?;
        let pred = features(&v.narrow(0, start, len)?, gate, branch)?.matmul(&out.t()?)?;
        num += (pred - &t)?.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        den += t.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
    }
    Ok(if den > 0.0 {
        num / den
    } else if num > 0.0 {
        f64::INFINITY
    } else {
        0.0
    })
}

/// Per-row `‖(1 − w*)·adapter(v_t) − T_t‖²` of `data`'s rows (all of them), `[rows]` on the host.
pub fn row_errors(data: &LayerData, fit: &AdapterFit, target_gate: f64) -> Result<Vec<f32>> {
    let pred = (features(&data.v, &fit.gate_proj, &fit.down_proj)?.matmul(&fit.up_proj.t()?)? * (1.0 - target_gate))?;
    Ok((pred - &data.target)?.sqr()?.sum(D::Minus1)?.to_vec1()?)
}

/// `Wᵀ = (ΦᵀΦ + λ·mean diag(ΦᵀΦ)·I)⁻¹ ΦᵀT` for features `Φ: [rows, m]` and targets `T: [rows, hidden]`; returns the
/// output projection `W: [hidden, m]`. In f64; a Cholesky solve.
pub fn ridge_output(phi: &Tensor, target: &Tensor, ridge: f64) -> Result<Tensor> {
    let m = phi.dim(1)?;
    let hidden = target.dim(1)?;
    let phi64 = phi.to_dtype(DType::F64)?;
    let gram: Vec<Vec<f64>> = phi64.t()?.matmul(&phi64)?.to_vec2()?;
    let rhs: Vec<Vec<f64>> = phi64.t()?.matmul(&target.to_dtype(DType::F64)?)?.to_vec2()?; // [m, hidden]
    let mean_diag = (0..m).map(|i| gram[i][i]).sum::<f64>() / m as f64;
    let lambda = ridge * mean_diag.max(f64::MIN_POSITIVE) + 1e-12 * mean_diag.max(1e-30);
    let mut a = gram;
    for (i, row) in a.iter_mut().enumerate() {
        row[i] += lambda;
    }
    let l = cholesky(a)?;
    // Solve L Lᵀ X = rhs column by column.
    let mut x = vec![0f64; m * hidden];
    let mut y = vec![0f64; m];
    for c in 0..hidden {
        for i in 0..m {
            let s: f64 = (0..i).map(|k| l[i][k] * y[k]).sum();
            y[i] = (rhs[i][c] - s) / l[i][i];
        }
        for i in (0..m).rev() {
            let s: f64 = (i + 1..m).map(|k| l[k][i] * x[k * hidden + c]).sum();
            x[i * hidden + c] = (y[i] - s) / l[i][i];
        }
    }
    Ok(Tensor::from_vec(x, (m, hidden), &Device::Cpu)?
        .t()?
        .to_dtype(DType::F32)?
        .contiguous()?)
}

/// The lower Cholesky factor of a symmetric positive definite matrix.
fn cholesky(mut a: Vec<Vec<f64>>) -> Result<Vec<Vec<f64>>> {
    let n = a.len();
    for j in 0..n {
        let d = a[j][j] - (0..j).map(|k| a[j][k] * a[j][k]).sum::<f64>();
        if d <= 0.0 || !d.is_finite() {
            return Err(Error::Input(
                "local fit: the feature Gram matrix is not positive definite (raise ridge)".into(),
            ));
        }
        let d = d.sqrt();
        a[j][j] = d;
        for i in j + 1..n {
            let s = a[i][j] - (0..j).map(|k| a[i][k] * a[j][k]).sum::<f64>();
            a[i][j] = s / d;
        }
        a[j][j + 1..].iter_mut().for_each(|x| *x = 0.0);
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ridge_recovers_an_exact_linear_map() {
        let dev = Device::Cpu;
        let phi = Tensor::randn(0f32, 1., (200, 6), &dev).unwrap();
        let w = Tensor::randn(0f32, 1., (5, 6), &dev).unwrap();
        let t = phi.matmul(&w.t().unwrap()).unwrap();
        let got = ridge_output(&phi, &t, 0.0).unwrap();
        let d = (got - w)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-3, "{d}");
    }
}
