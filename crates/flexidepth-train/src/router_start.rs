//! The supervised router start (issue 10, item 2): pre-train each router on labels of what skipping costs, so that
//! end-to-end training starts from informed routing instead of a coin flip.
//!
//! Labels `c ≥ 0` per (token, layer) — the KL of [`crate::router_labels`] or a local replacement error — become soft
//! run-probabilities with one threshold `τ` for all routed layers, chosen so that a share `skip_share` of the
//! (token, layer) pairs has `c ≤ τ`: `y = c / (c + τ)`, i.e. `sigmoid(ln c − ln τ)` (a pair at `τ` is a coin
//! flip, cheaper pairs lean to skipping). Each router is then fitted by binary cross-entropy on its logit
//! (the engine's own [`flexidepth::model::Router::logits`], with the router's trainable variables), with Adam.

use crate::forward::Differentiable;
use crate::params::DepthParams;
use candle_core::{Device, Tensor, Var};
use candle_nn::optim::{AdamW, Optimizer, ParamsAdamW};
use flexidepth::error::{Error, Result};
use flexidepth::model::linear::Linear;
use flexidepth::model::norm::RmsNorm;
use flexidepth::model::Router;
use flexidepth::rng::Draw;

/// `τ` such that a share `skip_share` of `costs` is `≤ τ` (the `skip_share` quantile), floored at a tiny positive
/// value so that `y` is defined.
pub fn threshold_for_share(costs: &[f32], skip_share: f64) -> Result<f32> {
    if costs.is_empty() {
        return Err(Error::Input("router start: no labels".into()));
    }
    if !(skip_share > 0.0 && skip_share < 1.0) {
        return Err(Error::Input("router start: skip_share must be in (0, 1)".into()));
    }
    let mut sorted: Vec<f32> = costs.iter().map(|c| c.max(0.0)).collect();
    sorted.sort_by(f32::total_cmp);
    let i = ((sorted.len() as f64 * skip_share).ceil() as usize).clamp(1, sorted.len()) - 1;
    Ok(sorted[i].max(1e-12))
}

/// Soft run targets `y = c / (c + τ)`.
pub fn soft_targets(costs: &[f32], tau: f32) -> Vec<f32> {
    costs.iter().map(|&c| c.max(0.0) / (c.max(0.0) + tau)).collect()
}

/// Mean binary cross-entropy of logits `z` against soft targets `y`: `mean(softplus(z) − y·z)` (stable form).
pub fn bce_with_logits(z: &Tensor, y: &Tensor) -> Result<Tensor> {
    let softplus = (z.relu()? + (z.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
    Ok((softplus - (y * z)?)?.mean_all()?)
}

/// How one router's start went.
#[derive(Debug, Clone)]
pub struct RouterFit {
    pub layer_idx: usize,
    /// Mean BCE before and after, on the rows given.
    pub bce_before: f64,
    pub bce_after: f64,
    /// Share of rows whose hard decision (`w > threshold`) agrees with `y > 0.5`, after.
    pub agreement: f64,
    /// Share of rows the router now skips (`w ≤ threshold`).
    pub skipped: f64,
}

/// Settings of the router start.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RouterStartSettings {
    pub epochs: usize,
    pub lr: f64,
    pub batch: usize,
    pub skip_threshold: f32,
    pub seed: u64,
}

/// Fit the router of `layer_idx` (its variables in `params`, updated in place) on inputs `u: [rows, hidden]`
/// (`input_layernorm(x)`) and soft targets `y` (run probabilities), by BCE on the logit.
pub fn fit_router(
    params: &DepthParams,
    layer_idx: usize,
    eps: f64,
    u: &Tensor,
    y: &[f32],
    s: &RouterStartSettings,
) -> Result<RouterFit> {
    let rows = u.dim(0)?;
    if rows == 0 || rows != y.len() {
        return Err(Error::Input(format!(
            "router start: {rows} inputs for {} targets",
            y.len()
        )));
    }
    if s.batch == 0 || !(s.lr > 0.0 && s.lr.is_finite()) {
        return Err(Error::Input("router start: lr and batch must be positive".into()));
    }
    let names = crate::params::layer_param_names(layer_idx);
    let var = |i: usize| -> Result<Var> {
        params
            .vars
            .get(&names[i])
            .cloned()
            .ok_or_else(|| Error::MissingTensor(names[i].clone()))
    };
    let vars = [var(0)?, var(1)?, var(2)?, var(3)?];
    let router = Router {
        router_enc: Linear::dense(vars[0].as_tensor().clone(), None),
        router_norm: RmsNorm::new(vars[1].as_tensor().clone(), eps),
        router_dec: Linear::dense(vars[2].as_tensor().clone(), None),
        router_head: Linear::dense(vars[3].as_tensor().clone(), None),
        skip_threshold: s.skip_threshold,
        // Only its logits are used here.
        skip_unit: flexidepth::depth::SkipUnit::Layer,
        gate_scaling: flexidepth::depth::GateScaling::Released,
    };
    let y_all = Tensor::new(y, &Device::Cpu)?;
    let eval = |router: &Router| -> Result<(f64, f64, f64)> {
        let z = router.logits(&Differentiable, u)?.detach();
        let bce = bce_with_logits(&z, &y_all)?.to_scalar::<f32>()? as f64;
        let w: Vec<f32> = candle_nn::ops::sigmoid(&z)?.to_vec1()?;
        let agree = w
            .iter()
            .zip(y)
            .filter(|(w, y)| (**w > s.skip_threshold) == (**y > 0.5))
            .count();
        let skipped = w.iter().filter(|w| **w <= s.skip_threshold).count();
        Ok((bce, agree as f64 / rows as f64, skipped as f64 / rows as f64))
    };
    let (bce_before, _, _) = eval(&router)?;
    let mut opt = AdamW::new(
        vars.to_vec(),
        ParamsAdamW {
            lr: s.lr,
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;
    let mut rng = flexidepth::rng::seeded_stream(s.seed, layer_idx as u64);
    let mut perm: Vec<u32> = (0..rows as u32).collect();
    for _ in 0..s.epochs {
        rng.shuffle(&mut perm);
        for chunk in perm.chunks(s.batch) {
            let idx = Tensor::new(chunk, &Device::Cpu)?;
            let z = router.logits(&Differentiable, &u.index_select(&idx, 0)?)?;
            opt.backward_step(&bce_with_logits(&z, &y_all.index_select(&idx, 0)?)?)?;
        }
    }
    let (bce_after, agreement, skipped) = eval(&router)?;
    Ok(RouterFit {
        layer_idx,
        bce_before,
        bce_after,
        agreement,
        skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_and_targets() {
        let c = [0.0f32, 1.0, 2.0, 3.0];
        let tau = threshold_for_share(&c, 0.5).unwrap();
        assert_eq!(tau, 1.0);
        let y = soft_targets(&c, tau);
        assert_eq!(y, vec![0.0, 0.5, 2.0 / 3.0, 0.75]);
        assert!(threshold_for_share(&c, 1.0).is_err());
        // BCE at z = 0 is ln 2 whatever the target.
        let z = Tensor::zeros(3, candle_core::DType::F32, &Device::Cpu).unwrap();
        let yt = Tensor::new(&[0f32, 0.5, 1.0], &Device::Cpu).unwrap();
        let b = bce_with_logits(&z, &yt).unwrap().to_scalar::<f32>().unwrap();
        assert!((b - std::f32::consts::LN_2).abs() < 1e-6);
    }
}
