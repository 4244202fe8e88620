//! The two stages that start a run before end-to-end training (issue 10): `local_fit` (adapters fitted layer by
//! layer, [`crate::local_fit`], with the replaceability table beside ShortGPT's block influence) and `router_start`
//! (routers pre-trained on skip-cost labels, [`crate::router_labels`], [`crate::router_start`]). Both update the
//! trainable variables in place, so the model they are attached to computes with the result.

use crate::config::{LabelKind, Stage};
use crate::local_fit::{collect, fit_adapter, row_errors, FitSettings};
use crate::params::{layer_param_names, DepthParams};
use crate::router_labels::skip_kl_labels;
use crate::router_start::{fit_router, soft_targets, threshold_for_share, RouterFit, RouterStartSettings};
use candle_core::Tensor;
use flexidepth::depth::shortgpt::block_influence;
use flexidepth::depth::SkipUnit;
use flexidepth::error::{Error, Result};
use flexidepth::model::Model;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

/// One row of the replaceability table.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplaceRow {
    pub layer_idx: usize,
    /// `"layer"` or `"ffn"`.
    pub unit: &'static str,
    /// Held-out relative error of the closed-form start and of the kept fit.
    pub rel_err_closed_form: f64,
    pub rel_err: f64,
    pub train_rel_err: f64,
    /// ShortGPT's block influence of the layer, `1 − mean cos(x_in, x_out)`.
    pub block_influence: f64,
    pub seconds: f64,
}

/// What a local-fit stage did.
#[derive(Debug, Clone)]
pub struct LocalFitReport {
    pub rows: Vec<ReplaceRow>,
    /// Rows (tokens) collected per layer, and how many of them were held out.
    pub tokens: usize,
    pub held_out: usize,
    pub target_gate: f64,
    pub seconds: f64,
}

fn unit_name(unit: SkipUnit) -> &'static str {
    match unit {
        SkipUnit::Ffn => "ffn",
        _ => "layer",
    }
}

/// Up to `max` tokens of `seqs` as one calibration sequence (for block influence).
fn calibration_ids(seqs: &[&[u32]], max: usize) -> Vec<u32> {
    seqs.iter().flat_map(|s| s.iter().copied()).take(max).collect()
}

/// Fit every routed layer's adapter for `unit` (and, with `stage.compare_units`, the other unit's for the table
/// only), set the variables, and report. `progress` gets a line per layer.
pub fn run_local_fit(
    model: &Model,
    params: &DepthParams,
    seqs: &[&[u32]],
    unit: SkipUnit,
    stage: &Stage,
    seed: u64,
    progress: &mut dyn FnMut(&str),
) -> Result<LocalFitReport> {
    let t0 = Instant::now();
    let s = FitSettings {
        max_tokens: stage.tokens.unwrap_or(8192),
        epochs: stage.fit_epochs.unwrap_or(20),
        lr: stage.lr.unwrap_or(1e-3),
        target_gate: stage.target_gate.unwrap_or(0.0),
        seed,
        ..FitSettings::default()
    };
    s.validate()?;
    let layers = &params.routed_layers;
    let calib = calibration_ids(seqs, 1024.min(model.config.max_position_embeddings));
    let bi = block_influence(model, &calib)?;
    let units: Vec<SkipUnit> = if stage.compare_units {
        let other = if unit == SkipUnit::Ffn {
            SkipUnit::Layer
        } else {
            SkipUnit::Ffn
        };
        vec![unit, other]
    } else {
        vec![unit]
    };
    let mut rows = Vec::new();
    let (mut tokens, mut held_out) = (0, 0);
    for (ui, &u) in units.iter().enumerate() {
        // One pass over the data for every layer (rows × hidden × 3 f32 per layer).
        let all = collect(model, seqs, layers, u, s.max_tokens, s.holdout)?;
        for (data, &l) in all.iter().zip(layers) {
            tokens = data.rows()?;
            held_out = tokens - data.train_rows;
            let width = params.layer(l)?.gate_proj.dim(0)?;
            let fit = fit_adapter(&model.layers[l].mlp, data, width, &s)?;
            if ui == 0 {
                let names = layer_param_names(l);
                for (name, t) in [
                    (&names[4], &fit.gate_proj),
                    (&names[5], &fit.down_proj),
                    (&names[6], &fit.up_proj),
                ] {
                    params
                        .vars
                        .get(name)
                        .ok_or_else(|| Error::MissingTensor(name.clone()))?
                        .set(t)?;
                }
            }
            progress(&format!(
                "local fit [{}] layer {l}: held-out relative error {:.4} (closed form {:.4}, train {:.4}), {:.1} s",
                unit_name(u),
                fit.rel_err,
                fit.rel_err_closed_form,
                fit.train_rel_err,
                fit.seconds
            ));
            rows.push(ReplaceRow {
                layer_idx: l,
                unit: unit_name(u),
                rel_err_closed_form: fit.rel_err_closed_form,
                rel_err: fit.rel_err,
                train_rel_err: fit.train_rel_err,
                block_influence: bi[l],
                seconds: fit.seconds,
            });
        }
    }
    Ok(LocalFitReport {
        rows,
        tokens,
        held_out,
        target_gate: s.target_gate,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// The replaceability table as markdown: per layer, each unit's held-out error beside block influence.
pub fn local_fit_markdown(r: &LocalFitReport) -> String {
    let mut units: Vec<&str> = r.rows.iter().map(|x| x.unit).collect();
    units.dedup();
    units.sort_unstable();
    units.dedup();
    let mut layers: Vec<usize> = r.rows.iter().map(|x| x.layer_idx).collect();
    layers.sort_unstable();
    layers.dedup();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Held-out relative error `‖(1 − w*)·adapter(v) − T‖² / ‖T‖²` of the fitted adapter (1.0 = no better than \
         skipping with a zero adapter), {} tokens per layer of which {} held out, w* = {}; block influence is \
         ShortGPT's `1 − mean cos(x_in, x_out)` at full depth.\n",
        r.tokens, r.held_out, r.target_gate
    );
    let mut head = "| layer | block influence |".to_string();
    let mut rule = "|---:|---:|".to_string();
    for u in &units {
        let _ = write!(head, " {u}: rel. error | {u}: closed form |");
        rule.push_str("---:|---:|");
    }
    let _ = writeln!(s, "{head}\n{rule}");
    for l in layers {
        let bi = r
            .rows
            .iter()
            .find(|x| x.layer_idx == l)
            .map_or(f64::NAN, |x| x.block_influence);
        let mut line = format!("| {l} | {bi:.4} |");
        for u in &units {
            match r.rows.iter().find(|x| x.layer_idx == l && x.unit == *u) {
                Some(x) => {
                    let _ = write!(line, " {:.4} | {:.4} |", x.rel_err, x.rel_err_closed_form);
                }
                None => line.push_str(" – | – |"),
            }
        }
        let _ = writeln!(s, "{line}");
    }
    s
}

/// Write `{stage}.replaceability.md` and `.csv` into `out` (atomically).
pub fn write_local_fit(out: &Path, stage: &str, r: &LocalFitReport) -> Result<()> {
    let md = out.join(format!("{stage}.replaceability.md"));
    flexidepth::error::write_atomic(&md, local_fit_markdown(r).as_bytes())?;
    let mut csv = "layer,unit,rel_err,rel_err_closed_form,train_rel_err,block_influence,seconds\n".to_string();
    for x in &r.rows {
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{},{:.3}",
            x.layer_idx, x.unit, x.rel_err, x.rel_err_closed_form, x.train_rel_err, x.block_influence, x.seconds
        );
    }
    flexidepth::error::write_atomic(&out.join(format!("{stage}.replaceability.csv")), csv.as_bytes())
}

/// What a router-start stage did.
#[derive(Debug, Clone)]
pub struct RouterStartReport {
    pub label: LabelKind,
    /// Label pairs per layer, the skip threshold τ on the labels, and the skip share asked for.
    pub tokens: usize,
    pub tau: f32,
    pub skip_share: f64,
    pub routers: Vec<RouterFit>,
    pub seconds: f64,
}

/// Label (token, layer) pairs with what skipping costs, and pre-train every router on them.
#[allow(clippy::too_many_arguments)]
pub fn run_router_start(
    model: &Model,
    params: &DepthParams,
    seqs: &[&[u32]],
    unit: SkipUnit,
    stage: &Stage,
    skip_threshold: f32,
    seed: u64,
    progress: &mut dyn FnMut(&str),
) -> Result<RouterStartReport> {
    let t0 = Instant::now();
    let label = stage.label.unwrap_or_default();
    let gate = stage.target_gate.unwrap_or(0.0);
    let layers = params.routed_layers.clone();
    let (mut us, mut costs): (Vec<Vec<Tensor>>, Vec<Vec<f32>>) =
        (vec![Vec::new(); layers.len()], vec![Vec::new(); layers.len()]);
    let mut tokens = 0;
    match label {
        LabelKind::Kl => {
            let budget = stage.tokens.unwrap_or(512);
            for ids in seqs {
                if tokens >= budget {
                    break;
                }
                let ids = &ids[..ids.len().min(budget - tokens).min(model.config.max_position_embeddings)];
                if ids.is_empty() {
                    continue;
                }
                let lab = skip_kl_labels(model, ids, &layers, unit, gate as f32)?;
                tokens += ids.len();
                for k in 0..layers.len() {
                    us[k].push(lab.u[k].clone());
                    costs[k].extend_from_slice(&lab.kl[k]);
                }
                progress(&format!("router labels (KL): {tokens}/{budget} tokens"));
            }
        }
        LabelKind::Local => {
            let s = FitSettings {
                max_tokens: stage.tokens.unwrap_or(4096),
                ..FitSettings::default()
            };
            for (k, &l) in layers.iter().enumerate() {
                let data = collect(model, seqs, &[l], unit, s.max_tokens, s.holdout)?
                    .pop()
                    .ok_or_else(|| Error::Input("router start: nothing collected".into()))?;
                let p = params.layer(l)?;
                let fit = crate::local_fit::AdapterFit {
                    layer_idx: l,
                    gate_proj: p.gate_proj.detach(),
                    down_proj: p.down_proj.detach(),
                    up_proj: p.up_proj.detach(),
                    rel_err_closed_form: 0.0,
                    rel_err: 0.0,
                    train_rel_err: 0.0,
                    epochs: 0,
                    best_epoch: 0,
                    seconds: 0.0,
                };
                let err = row_errors(&data, &fit, gate)?;
                let mean_t = data.target.sqr()?.sum_all()?.to_scalar::<f32>()? / data.rows()?.max(1) as f32;
                tokens = err.len();
                costs[k] = err.iter().map(|e| e / mean_t.max(f32::MIN_POSITIVE)).collect();
                us[k].push(data.u);
                progress(&format!("router labels (local error): layer {l}"));
            }
        }
    }
    if tokens == 0 {
        return Err(Error::Input("router start: no tokens to label".into()));
    }
    let skip_share = stage.skip_share.unwrap_or(0.2);
    let all: Vec<f32> = costs.iter().flatten().copied().collect();
    let tau = threshold_for_share(&all, skip_share)?;
    let settings = RouterStartSettings {
        epochs: stage.fit_epochs.unwrap_or(30),
        lr: stage.lr.unwrap_or(1e-3),
        batch: 256,
        skip_threshold,
        seed,
    };
    let mut routers = Vec::new();
    for (k, &l) in layers.iter().enumerate() {
        let u = Tensor::cat(&us[k], 0)?;
        let fit = fit_router(
            params,
            l,
            model.config.rms_norm_eps,
            &u,
            &soft_targets(&costs[k], tau),
            &settings,
        )?;
        progress(&format!(
            "router start layer {l}: BCE {:.4} → {:.4}, agreement {:.3}, skips {:.3}",
            fit.bce_before, fit.bce_after, fit.agreement, fit.skipped
        ));
        routers.push(fit);
    }
    Ok(RouterStartReport {
        label,
        tokens,
        tau,
        skip_share,
        routers,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// Write `{stage}.routers.md` into `out` (atomically).
pub fn write_router_start(out: &Path, stage: &str, r: &RouterStartReport) -> Result<()> {
    let mut s = format!(
        "Router start: {:?} labels on {} tokens per layer, τ = {:.3e} (skip share {}), {:.1} s.\n\n\
         | layer | BCE before | BCE after | agreement with labels | skipped |\n|---:|---:|---:|---:|---:|\n",
        r.label, r.tokens, r.tau, r.skip_share, r.seconds
    );
    for f in &r.routers {
        let _ = writeln!(
            s,
            "| {} | {:.4} | {:.4} | {:.3} | {:.3} |",
            f.layer_idx, f.bce_before, f.bce_after, f.agreement, f.skipped
        );
    }
    flexidepth::error::write_atomic(&out.join(format!("{stage}.routers.md")), s.as_bytes())
}
