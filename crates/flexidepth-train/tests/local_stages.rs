//! The stages before end-to-end training (issue 10) on tiny models: a layer an adapter can represent exactly is
//! fitted to near-zero error (and a layer it cannot is not), the fast skip-cost labels equal a brute-force
//! computation, and the staged recipe runs from one config.

#[path = "../../flexidepth/tests/common/mod.rs"]
mod common;

use candle_core::Tensor;
use common::tiny::{config, depth_weights, model_from, to_tensors, weights, Weights};
use flexidepth::config::{Arch, ModelConfig};
use flexidepth::depth::{DepthMode, FlexiDepth, FullDepth, SkipUnit};
use flexidepth::model::ops::Fused;
use flexidepth::model::{Logits, Model};
use flexidepth_train::config::{LabelKind, Stage, StageKind};
use flexidepth_train::local_fit::{collect, fit_adapter, FitSettings};
use flexidepth_train::params::DepthParams;
use flexidepth_train::router_labels::{skip_kl_brute_force, skip_kl_labels};
use flexidepth_train::staged::{run_local_fit, run_router_start};

/// Adapter width of `depth_weights` (intermediate / 4).
const WIDTH: usize = 12;

fn sequences(n: usize, len: usize) -> Vec<Vec<u32>> {
    (0..n)
        .map(|s| (0..len).map(|t| ((s * 7 + t * 13 + s * t) % 40) as u32).collect())
        .collect()
}

fn set(w: &mut Weights, name: &str, f: impl Fn(usize, &mut f32)) {
    let (_, _, v) = w.iter_mut().find(|(n, _, _)| n == name).unwrap();
    v.iter_mut().enumerate().for_each(|(i, x)| f(i, x));
}

/// Tiny Llama weights in which layer `l`'s MLP uses only its first `WIDTH` neurons (the other down_proj columns
/// are zero), and, with `no_attention`, whose attention adds nothing (`o_proj = 0`, so `h = x`).
fn representable(c: &ModelConfig, l: usize, no_attention: bool) -> Weights {
    let mut w = weights(c);
    let i = c.intermediate_size;
    set(&mut w, &format!("model.layers.{l}.mlp.down_proj.weight"), |k, x| {
        if k % i >= WIDTH {
            *x = 0.0
        }
    });
    if no_attention {
        set(&mut w, &format!("model.layers.{l}.self_attn.o_proj.weight"), |_, x| {
            *x = 0.0
        });
    }
    w
}

fn fit_err(model: &Model, l: usize, unit: SkipUnit) -> f64 {
    let seqs = sequences(10, 16);
    let refs: Vec<&[u32]> = seqs.iter().map(|s| s.as_slice()).collect();
    let data = collect(model, &refs, &[l], unit, 160, 0.25).unwrap().pop().unwrap();
    assert_eq!((data.rows().unwrap(), data.train_rows), (160, 120));
    let s = FitSettings {
        epochs: 0,
        ridge: 1e-10,
        ..FitSettings::default()
    };
    fit_adapter(&model.layers[l].mlp, &data, WIDTH, &s).unwrap().rel_err
}

#[test]
fn an_exactly_representable_layer_is_fitted_to_near_zero_error() {
    let c = config(Arch::Llama);
    // Whole-layer unit: exact when the attention adds nothing and the MLP has WIDTH neurons.
    let m = model_from(&c, &representable(&c, 2, true));
    let e = fit_err(&m, 2, SkipUnit::Layer);
    assert!(e < 1e-6, "layer unit, representable layer: {e}");
    // FFN unit: exact with the attention intact (the adapter stands in for the MLP only).
    let m = model_from(&c, &representable(&c, 1, false));
    let e = fit_err(&m, 1, SkipUnit::Ffn);
    assert!(e < 1e-6, "ffn unit, representable MLP: {e}");
    // Controls: the attention is not representable by a function of post_norm(x), nor a 48-neuron MLP by 12.
    let e = fit_err(&m, 1, SkipUnit::Layer);
    assert!(e > 1e-3, "layer unit with attention: {e}");
    let m = model_from(&c, &weights(&c));
    let e = fit_err(&m, 1, SkipUnit::Ffn);
    assert!(e > 1e-3, "a full-width MLP: {e}");
}

/// The local-fit stage sets the adapter variables: with the router's gate fixed at 0.5 (a zero head) and the fit
/// made for w* = 0.5, skipping the representable layer for every token reproduces the full-depth model.
#[test]
fn the_local_fit_stage_installs_adapters_that_replace_the_layer() {
    let c = config(Arch::Llama);
    let mut m = model_from(&c, &representable(&c, 2, true));
    let mut depth = to_tensors(&depth_weights(&c, &[2], 0));
    depth.insert(
        "model.layers.2.router.router_head.weight".into(),
        Tensor::zeros((1, c.hidden_size), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap(),
    );
    let params = DepthParams::from_tensors(&[2], &depth).unwrap();
    params.attach(&mut m, flexidepth::depth::Routing::default()).unwrap();
    let seqs = sequences(10, 16);
    let refs: Vec<&[u32]> = seqs.iter().map(|s| s.as_slice()).collect();
    let stage = Stage {
        kind: StageKind::LocalFit,
        tokens: Some(160),
        fit_epochs: Some(2),
        target_gate: Some(0.5),
        compare_units: true,
        ..Stage::train("fit", 0.0)
    };
    let r = run_local_fit(&m, &params, &refs, SkipUnit::Layer, &stage, 1, &mut |_| {}).unwrap();
    assert_eq!(r.rows.len(), 2);
    assert!(r.rows[0].rel_err < 1e-5, "{:?}", r.rows[0]);
    assert!(r.rows[0].block_influence > 0.0);
    let ids = &seqs[0];
    let full = m
        .forward_ops(&Fused, ids, None, Logits::All, &FullDepth)
        .unwrap()
        .logits;
    let skip = FlexiDepth {
        skip_threshold: Some(0.5),
        ..FlexiDepth::with_mode(DepthMode::Skip)
    };
    let out = m.forward_ops(&Fused, ids, None, Logits::All, &skip).unwrap();
    assert!(out.routing()[0].run.iter().all(|r| !r), "every row skipped");
    let d = (out.logits - full)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(d < 1e-3, "skipping the replaced layer changes logits by {d}");
}

#[test]
fn skip_cost_labels_equal_the_brute_force_computation() {
    // Routed layers [0, 1] leave a layer after the last routed one (the fast path must restore row t's K/V there).
    for routed in [[1usize, 2], [0, 1]] {
        for arch in [Arch::Llama, Arch::Qwen3] {
            for unit in [SkipUnit::Layer, SkipUnit::Ffn, SkipUnit::Attention] {
                let c = config(arch);
                let mut m = model_from(&c, &weights(&c));
                let depth = to_tensors(&depth_weights(&c, &routed, 0));
                let params = DepthParams::from_tensors(&routed, &depth).unwrap();
                params.attach(&mut m, flexidepth::depth::Routing::default()).unwrap();
                let ids = &sequences(3, 9)[2];
                for gate in [0.0f32, 0.3] {
                    let fast = skip_kl_labels(&m, ids, &routed, unit, gate).unwrap();
                    let brute = skip_kl_brute_force(&m, ids, &routed, unit, gate).unwrap();
                    let mut max_label = 0f32;
                    for (a, b) in fast.kl.iter().flatten().zip(brute.iter().flatten()) {
                        let ok = (a - b).abs() <= 1e-4 + 1e-3 * b.abs();
                        assert!(ok, "{routed:?} {arch:?} {unit:?} gate {gate}: {a} vs {b}");
                        max_label = max_label.max(*b);
                    }
                    assert!(max_label > 1e-3, "{arch:?} {unit:?}: labels must not be trivially zero");
                    assert_eq!(fast.u[0].dims(), &[ids.len(), c.hidden_size]);
                }
            }
        }
    }
}

#[test]
fn the_router_start_moves_routers_towards_the_labels() {
    let c = config(Arch::Llama);
    let mut m = model_from(&c, &weights(&c));
    let depth = to_tensors(&depth_weights(&c, &[1, 2], 0));
    let params = DepthParams::from_tensors(&[1, 2], &depth).unwrap();
    params.attach(&mut m, flexidepth::depth::Routing::default()).unwrap();
    let seqs = sequences(6, 16);
    let refs: Vec<&[u32]> = seqs.iter().map(|s| s.as_slice()).collect();
    for label in [LabelKind::Kl, LabelKind::Local] {
        let stage = Stage {
            kind: StageKind::RouterStart,
            label: Some(label),
            tokens: Some(64),
            fit_epochs: Some(40),
            skip_share: Some(0.3),
            lr: Some(1e-2),
            ..Stage::train("routers", 0.0)
        };
        let r = run_router_start(&m, &params, &refs, SkipUnit::Layer, &stage, 0.5, 3, &mut |_| {}).unwrap();
        for f in &r.routers {
            assert!(f.bce_after < f.bce_before, "{label:?}: {f:?}");
            assert!(f.skipped > 0.0 && f.skipped < 1.0, "{label:?}: {f:?}");
        }
    }
}
