//! Depth policies on the seam, each against the loop-based reference on tiny models (prefill, then cached decode):
//! static removal (ShortGPT), early exit, FFN-only and attention-only skipping, and the executed plan's accounting;
//! ShortGPT's block influence against a direct computation; a depth file's threshold as the default.

mod common;

use common::tiny::{
    config, depth_weights, max_diff, model_from, reference, reference_with, routed_model, to_tensors, weights,
    RefDepth, RefExtra, RefUnit,
};
use flexidepth::config::Arch;
use flexidepth::depth::early_exit::EarlyExit;
use flexidepth::depth::file::{attach_depth_file, write_depth_file, DepthMeta};
use flexidepth::depth::shortgpt::{block_influence, StaticPrune};
use flexidepth::depth::{DepthPolicy, FlexiDepth, FullDepth, GateScaling, PolicySpec, SkipUnit};
use flexidepth::model::{Logits, Model};

const IDS: [u32; 11] = [3, 17, 5, 39, 0, 22, 8, 11, 30, 2, 19];
const ROUTED: [usize; 2] = [1, 2];
const ARCHS: [Arch; 3] = [Arch::Llama, Arch::Qwen2, Arch::Qwen3];

/// Prefill 6 tokens, decode the rest one at a time: the logits of every position, and the layers each used.
fn run(m: &Model, policy: &dyn DepthPolicy) -> (Vec<Vec<f32>>, Vec<f64>, flexidepth::cache::KvCache) {
    let bytes = m.layer_bytes();
    let mut cache = m.new_cache(IDS.len());
    let out = m.forward_with(&IDS[..6], &mut cache, Logits::All, policy).unwrap();
    let mut logits: Vec<Vec<f32>> = out.logits.to_vec2().unwrap();
    let mut layers: Vec<f64> = (0..6).map(|r| out.plan.layers_used(r, &bytes)).collect();
    for &id in &IDS[6..] {
        let out = m.forward_with(&[id], &mut cache, Logits::Last, policy).unwrap();
        logits.extend(out.logits.to_vec2::<f32>().unwrap());
        layers.push(out.plan.layers_used(0, &bytes));
    }
    (logits, layers, cache)
}

#[test]
fn static_removal_matches_the_reference_and_writes_no_kv() {
    for arch in ARCHS {
        let c = config(arch);
        let w = weights(&c);
        let m = model_from(&c, &w);
        for removed in [vec![1], vec![0, 2]] {
            let want = reference_with(
                &c,
                &w,
                &IDS,
                None,
                &RefExtra {
                    removed: removed.clone(),
                    ..RefExtra::default()
                },
            );
            let (logits, layers, cache) = run(&m, &StaticPrune::new(removed.clone()));
            let d = max_diff(&logits, &want.logits);
            assert!(d < 1e-4, "{arch:?} removed {removed:?}: logits differ by {d}");
            let used = (c.num_hidden_layers - removed.len()) as f64;
            assert!(layers.iter().all(|&l| l == used), "{arch:?}: layers used {layers:?}");
            for &l in &removed {
                let (k, v) = cache.view(l, IDS.len()).unwrap();
                let written = |t: candle_core::Tensor| t.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                assert_eq!((written(k), written(v)), (0.0, 0.0), "a removed layer writes no K/V");
            }
        }
    }
}

#[test]
fn early_exit_matches_the_reference() {
    for arch in ARCHS {
        let c = config(arch);
        let w = weights(&c);
        let m = model_from(&c, &w);
        for exit_after in 1..c.num_hidden_layers {
            let want = reference_with(
                &c,
                &w,
                &IDS,
                None,
                &RefExtra {
                    exit_after: Some(exit_after),
                    ..RefExtra::default()
                },
            );
            let (logits, layers, _) = run(&m, &EarlyExit { exit_after });
            let d = max_diff(&logits, &want.logits);
            assert!(d < 1e-4, "{arch:?} exit after {exit_after}: logits differ by {d}");
            assert!(layers.iter().all(|&l| l == exit_after as f64));
        }
        // Exiting after every layer is the full model.
        let full = run(&m, &FullDepth).0;
        let all = run(
            &m,
            &EarlyExit {
                exit_after: c.num_hidden_layers,
            },
        )
        .0;
        assert_eq!(all, full);
    }
}

#[test]
fn ffn_only_and_attention_only_skipping_match_the_reference() {
    for arch in ARCHS {
        let c = config(arch);
        let (base, depth) = (weights(&c), depth_weights(&c, &ROUTED, 0));
        let mut all = base.clone();
        all.extend(depth.clone());
        let m = routed_model(&c, &base, &depth, &ROUTED);
        let bytes = m.layer_bytes();
        for (unit, ref_unit) in [(SkipUnit::Ffn, RefUnit::Ffn), (SkipUnit::Attention, RefUnit::Attention)] {
            let depth_ref = RefDepth {
                threshold: 0.5,
                force: None,
                skip_kv: true,
            };
            let want = reference_with(
                &c,
                &all,
                &IDS,
                Some(depth_ref),
                &RefExtra {
                    unit: ref_unit,
                    ..RefExtra::default()
                },
            );
            let policy = FlexiDepth {
                unit: Some(unit),
                skip_threshold: Some(0.5),
                ..FlexiDepth::default()
            };
            let (logits, layers, _) = run(&m, &policy);
            let d = max_diff(&logits, &want.logits);
            assert!(d < 1e-4, "{arch:?} {unit:?}: logits differ by {d}");
            // A partial skip counts the share of the layer's bytes its skipped half does not read.
            for (pos, &used) in layers.iter().enumerate() {
                let mut want_used = 1.0; // layer 0 is not routed
                for (li, &l) in ROUTED.iter().enumerate() {
                    let b = bytes[l];
                    let run = want.decisions[li][pos].1;
                    let skipped = match unit {
                        SkipUnit::Ffn => b.mlp,
                        _ => b.q_o,
                    };
                    want_used += if run {
                        1.0
                    } else {
                        1.0 - skipped as f64 / b.base() as f64
                    };
                }
                assert!(
                    (used - want_used).abs() < 1e-9,
                    "{arch:?} {unit:?} pos {pos}: {used} vs {want_used}"
                );
            }
            let skipped = want.decisions.iter().flatten().filter(|d| !d.1).count();
            assert!(skipped > 2, "{arch:?}: some rows must skip ({skipped})");
        }
    }
}

/// Hard gates (ours, departing from the release): the gate only decides, for each skip unit; with every row run
/// the model is the base model bit for bit.
#[test]
fn hard_gates_only_decide() {
    for arch in ARCHS {
        let c = config(arch);
        let (base, depth) = (weights(&c), depth_weights(&c, &ROUTED, 0));
        let mut all = base.clone();
        all.extend(depth.clone());
        let m = routed_model(&c, &base, &depth, &ROUTED);
        for (unit, ref_unit) in [(SkipUnit::Layer, RefUnit::Layer), (SkipUnit::Ffn, RefUnit::Ffn)] {
            let want = reference_with(
                &c,
                &all,
                &IDS,
                Some(RefDepth {
                    threshold: 0.5,
                    force: None,
                    skip_kv: true,
                }),
                &RefExtra {
                    unit: ref_unit,
                    hard: true,
                    ..RefExtra::default()
                },
            );
            let hard = FlexiDepth {
                unit: Some(unit),
                skip_threshold: Some(0.5),
                gate_scaling: Some(GateScaling::Hard),
                ..FlexiDepth::default()
            };
            let (logits, _, _) = run(&m, &hard);
            let d = max_diff(&logits, &want.logits);
            assert!(d < 1e-4, "{arch:?} {unit:?}: logits differ by {d}");
            let released = FlexiDepth {
                gate_scaling: Some(GateScaling::Released),
                ..hard
            };
            assert!(
                max_diff(&run(&m, &released).0, &want.logits) > 1e-3,
                "{arch:?} {unit:?}: scaling must matter"
            );
            let skipped = want.decisions.iter().flatten().filter(|d| !d.1).count();
            assert!(skipped > 2, "{arch:?}: some rows must skip ({skipped})");
        }
        // Every row runs: exactly the base model.
        let all_run = FlexiDepth {
            skip_threshold: Some(0.0),
            gate_scaling: Some(GateScaling::Hard),
            ..FlexiDepth::default()
        };
        assert_eq!(run(&m, &all_run).0, run(&m, &FullDepth).0, "{arch:?}");
    }
}

#[test]
fn block_influence_matches_its_definition_and_shortgpt_removes_the_lowest() {
    let c = config(Arch::Qwen2);
    let w = weights(&c);
    let m = model_from(&c, &w);
    let bi = block_influence(&m, &IDS).unwrap();
    // Direct: the hidden states entering and leaving each layer, cosine per token in f64.
    let hidden = |layers: usize| {
        m.run_layers(
            &flexidepth::model::ops::Fused,
            m.embed(&IDS).unwrap(),
            0..layers,
            &flexidepth::model::ForwardCtx::new(&m, 0, IDS.len()).unwrap(),
            None,
            &FullDepth,
        )
        .unwrap()
        .hidden
        .to_vec2::<f32>()
        .unwrap()
    };
    for (l, &got) in bi.iter().enumerate() {
        let (x, y) = (hidden(l), hidden(l + 1));
        let cos: f64 = x
            .iter()
            .zip(&y)
            .map(|(a, b)| {
                let dot: f64 = a.iter().zip(b).map(|(p, q)| (*p as f64) * (*q as f64)).sum();
                let na: f64 = a.iter().map(|p| (*p as f64).powi(2)).sum::<f64>().sqrt();
                let nb: f64 = b.iter().map(|q| (*q as f64).powi(2)).sum::<f64>().sqrt();
                dot / (na * nb)
            })
            .sum::<f64>()
            / x.len() as f64;
        assert!((got - (1.0 - cos)).abs() < 1e-5, "layer {l}: {got} vs {}", 1.0 - cos);
    }
    let lowest = (0..bi.len()).min_by(|&a, &b| bi[a].total_cmp(&bi[b])).unwrap();
    assert_eq!(StaticPrune::shortgpt(&m, &IDS, 1).unwrap().removed, vec![lowest]);
    assert!(StaticPrune::shortgpt(&m, &IDS, 3).is_err(), "at least one layer stays");
    // By name, as bench and eval build it.
    let p = "prune:1".parse::<PolicySpec>().unwrap().build(&m, &IDS).unwrap();
    assert_eq!(p.label(), "prune:1");
    assert!(
        "flexi".parse::<PolicySpec>().unwrap().build(&m, &IDS).is_err(),
        "no routers"
    );
}

/// A depth file's stored threshold is the default at inference (the flag only overrides it).
#[test]
fn the_depth_files_threshold_is_the_default() {
    let c = config(Arch::Llama);
    let (base, depth) = (weights(&c), depth_weights(&c, &ROUTED, 0));
    let mut all = base.clone();
    all.extend(depth.clone());
    // A threshold between the gates, so that it decides differently from 0.5.
    let gates: Vec<f32> = reference(
        &c,
        &all,
        &IDS,
        Some(RefDepth {
            threshold: 0.5,
            force: None,
            skip_kv: true,
        }),
    )
    .decisions
    .iter()
    .flatten()
    .map(|d| d.0)
    .collect();
    let mut sorted = gates.clone();
    sorted.sort_by(f32::total_cmp);
    let threshold = sorted[sorted.len() / 2];
    let differs = gates.iter().filter(|&&g| (g > threshold) != (g > 0.5)).count();
    assert!(differs > 0, "the chosen threshold must change some decisions");

    let mut m = model_from(&c, &base);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trained.safetensors");
    let mut meta = DepthMeta::for_model(&m, ROUTED.to_vec(), 4, 4).unwrap();
    meta.skip_threshold = threshold;
    write_depth_file(&path, &meta, &to_tensors(&depth), candle_core::DType::F32).unwrap();
    let read = attach_depth_file(&mut m, &path).unwrap();
    assert_eq!(read.skip_threshold, threshold);
    assert_eq!(m.skip_threshold(), Some(threshold));

    let policy_label = |p: &dyn DepthPolicy| p.label();
    let built = "flexi".parse::<PolicySpec>().unwrap().build(&m, &IDS).unwrap();
    assert_eq!(policy_label(built.as_ref()), format!("flexi:{threshold}"));
    for (policy, want_threshold) in [
        (FlexiDepth::default(), threshold),
        (
            FlexiDepth {
                skip_threshold: Some(0.5),
                ..FlexiDepth::default()
            },
            0.5,
        ),
    ] {
        let want = reference(
            &c,
            &all,
            &IDS,
            Some(RefDepth {
                threshold: want_threshold,
                force: None,
                skip_kv: true,
            }),
        );
        let mut cache = m.new_cache(IDS.len());
        let out = m.forward_with(&IDS, &mut cache, Logits::All, &policy).unwrap();
        let decisions: Vec<Vec<bool>> = out.routing().into_iter().map(|r| r.run).collect();
        let want_decisions: Vec<Vec<bool>> = want.decisions.iter().map(|l| l.iter().map(|d| d.1).collect()).collect();
        assert_eq!(decisions, want_decisions, "threshold {want_threshold}");
        let d = max_diff(&out.logits.to_vec2::<f32>().unwrap(), &want.logits);
        assert!(d < 1e-4, "threshold {want_threshold}: logits differ by {d}");
    }
}

/// A depth file's stored skip unit is the default at inference too; files written before it existed (the shipped
/// adapter) were trained for whole layers.
#[test]
fn the_depth_files_skip_unit_is_the_default() {
    let c = config(Arch::Qwen2);
    let (base, depth) = (weights(&c), depth_weights(&c, &ROUTED, 0));
    let mut m = model_from(&c, &base);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ffn.safetensors");
    let mut meta = DepthMeta::for_model(&m, ROUTED.to_vec(), 4, 4).unwrap();
    meta.skip_unit = SkipUnit::Ffn;
    meta.gate_scaling = GateScaling::Hard;
    write_depth_file(&path, &meta, &to_tensors(&depth), candle_core::DType::F32).unwrap();
    assert_eq!(attach_depth_file(&mut m, &path).unwrap().skip_unit, SkipUnit::Ffn);
    assert_eq!(m.skip_unit(), Some(SkipUnit::Ffn));
    assert_eq!(m.gate_scaling(), Some(GateScaling::Hard));
    let logits = |p: &FlexiDepth| {
        let mut cache = m.new_cache(IDS.len());
        m.forward_with(&IDS, &mut cache, Logits::All, p)
            .unwrap()
            .logits
            .to_vec2::<f32>()
            .unwrap()
    };
    let with = |unit| FlexiDepth {
        unit: Some(unit),
        ..FlexiDepth::default()
    };
    assert_eq!(logits(&FlexiDepth::default()), logits(&with(SkipUnit::Ffn)));
    let released = FlexiDepth {
        gate_scaling: Some(GateScaling::Released),
        ..FlexiDepth::default()
    };
    assert_ne!(
        logits(&FlexiDepth::default()),
        logits(&released),
        "the file's hard gates are the default"
    );
    assert_ne!(logits(&FlexiDepth::default()), logits(&with(SkipUnit::Layer)));
    let built = "flexi".parse::<PolicySpec>().unwrap().build(&m, &IDS).unwrap();
    assert_eq!(built.label(), "flexi-ffn:0.5");

    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../adapters/smollm2-135m-instruct/flexidepth.safetensors");
    let meta = flexidepth::depth::file::read_depth_meta(&shipped).unwrap();
    assert_eq!(meta.skip_unit, SkipUnit::Layer);
}
