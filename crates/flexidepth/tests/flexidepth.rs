//! FlexiDepth inference (spec A3) against the loop-based reference: routed prefill with mixed decisions and
//! cached decode, forced modes, the no-skip-KV ablation, skipped tokens' K/V, the work a skipped layer does not do,
//! depth files and the official `ddllama` layout; and on SmolLM2, forced run equals the base model bit for bit.

mod common;

use common::tiny::{
    config, depth_weights, max_diff, model_from, reference, routed_model, to_tensors, weights, RefDepth, Weights,
};
use flexidepth::config::Arch;
use flexidepth::depth::file::{attach_depth_file, init_tensors, write_depth_file, DepthMeta};
use flexidepth::depth::{DepthMode, FlexiDepth, SkipUnit};
use flexidepth::model::{Logits, Model};
use std::path::Path;

const IDS: [u32; 11] = [3, 17, 5, 39, 0, 22, 8, 11, 30, 2, 19];
const ROUTED: [usize; 2] = [1, 2];

fn settings(mode: DepthMode, skip_kv: bool) -> FlexiDepth {
    FlexiDepth {
        mode,
        skip_threshold: Some(0.5),
        skip_kv,
        unit: Some(SkipUnit::Layer),
        gate_scaling: None,
    }
}

/// Per routed layer, per position: (gate, run).
type Decisions = Vec<Vec<(f32, bool)>>;

/// Prefill 7 tokens, then decode the rest one by one; logits, decisions and the cache.
fn run_engine(m: &Model, s: &FlexiDepth) -> (Vec<Vec<f32>>, Decisions, flexidepth::cache::KvCache) {
    let mut cache = m.new_cache(IDS.len());
    let out = m.forward_with(&IDS[..7], &mut cache, Logits::All, s).unwrap();
    let mut logits: Vec<Vec<f32>> = out.logits.to_vec2().unwrap();
    let mut decisions: Decisions = out
        .routing()
        .iter()
        .map(|r| r.gates.iter().copied().zip(r.run.iter().copied()).collect())
        .collect();
    for &id in &IDS[7..] {
        let out = m.forward_with(&[id], &mut cache, Logits::Last, s).unwrap();
        logits.extend(out.logits.to_vec2::<f32>().unwrap());
        for (d, r) in decisions.iter_mut().zip(&out.routing()) {
            d.push((r.gates[0], r.run[0]));
        }
    }
    (logits, decisions, cache)
}

fn check_mode(arch: Arch, mode: DepthMode, skip_kv: bool) {
    let c = config(arch);
    let (base, depth) = (weights(&c), depth_weights(&c, &ROUTED, 0));
    let mut all = base.clone();
    all.extend(depth.clone());
    let m = routed_model(&c, &base, &depth, &ROUTED);
    let force = match mode {
        DepthMode::Dynamic => None,
        DepthMode::Run => Some(true),
        DepthMode::Skip => Some(false),
    };
    let want = reference(
        &c,
        &all,
        &IDS,
        Some(RefDepth {
            threshold: 0.5,
            force,
            skip_kv,
        }),
    );
    let (logits, decisions, cache) = run_engine(&m, &settings(mode, skip_kv));
    for (got, want) in decisions.iter().zip(&want.decisions) {
        for ((g, r), (wg, wr)) in got.iter().zip(want) {
            assert!((g - wg).abs() < 1e-5, "{arch:?} {mode:?}: gate {g} vs {wg}");
            assert_eq!(r, wr, "{arch:?} {mode:?}: decision");
        }
    }
    if mode == DepthMode::Dynamic {
        let runs = decisions.iter().flatten().filter(|d| d.1).count();
        assert!(
            runs > 3 && runs < decisions.len() * IDS.len() - 3,
            "{arch:?}: decisions should be mixed ({runs} run)"
        );
    }
    let diff = max_diff(&logits, &want.logits);
    assert!(
        diff < 1e-4,
        "{arch:?} {mode:?} skip_kv={skip_kv}: max logit diff {diff}"
    );
    // Every position's key is in the cache at every layer, skipped or not, equal to what the layer computes.
    for (layer_idx, want_keys) in want.keys.iter().enumerate() {
        let (k, _) = cache.view(layer_idx, IDS.len()).unwrap();
        let k: Vec<Vec<Vec<f32>>> = k.to_vec3().unwrap(); // [kv_head][pos][d]
        for (pos, heads) in want_keys.iter().enumerate() {
            for (kvh, key) in heads.iter().enumerate() {
                let d = key
                    .iter()
                    .zip(&k[kvh][pos])
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(
                    d < 1e-4,
                    "{arch:?} layer {layer_idx} pos {pos}: cached key differs by {d}"
                );
            }
        }
    }
    // The ablation hides exactly the skipped positions of each routed layer; the released behaviour hides none.
    for (li, &layer_idx) in ROUTED.iter().enumerate() {
        let hidden = cache
            .hidden(layer_idx, IDS.len())
            .map(|h| h.to_vec())
            .unwrap_or_default();
        let skipped: Vec<usize> = (0..IDS.len()).filter(|&p| !decisions[li][p].1).collect();
        let hidden_pos: Vec<usize> = (0..hidden.len()).filter(|&p| hidden[p]).collect();
        if skip_kv {
            assert!(hidden_pos.is_empty());
        } else {
            assert_eq!(hidden_pos, skipped, "layer {layer_idx}");
        }
    }
}

#[test]
fn dynamic_routing_matches_the_reference_for_every_architecture() {
    for arch in [Arch::Llama, Arch::Qwen2, Arch::Qwen3] {
        check_mode(arch, DepthMode::Dynamic, true);
    }
}

#[test]
fn forced_modes_and_no_skip_kv_match_the_reference() {
    check_mode(Arch::Llama, DepthMode::Run, true);
    check_mode(Arch::Llama, DepthMode::Skip, true);
    check_mode(Arch::Qwen2, DepthMode::Dynamic, false);
    check_mode(Arch::Qwen3, DepthMode::Skip, false);
}

/// Forced run is the base model exactly: same logits bit for bit as the model without routers.
#[test]
fn forced_run_equals_the_base_model_bit_for_bit_on_smollm2() {
    let files = flexidepth::loader::ModelFiles::open("smollm2-135m-instruct").unwrap();
    let mut m = files
        .load_model(flexidepth::model::WeightFormat::F32, &candle_core::Device::Cpu)
        .unwrap();
    let prompt = files
        .tokenizer
        .encode("The capital of France is Paris, and the capital of Italy is", false)
        .unwrap();
    let run = |m: &Model, policy: &dyn flexidepth::depth::DepthPolicy| {
        let mut cache = m.new_cache(prompt.len() + 1);
        let mut l: Vec<Vec<f32>> = m
            .forward_with(&prompt, &mut cache, Logits::All, policy)
            .unwrap()
            .logits
            .to_vec2()
            .unwrap();
        l.extend(
            m.forward_with(&[260], &mut cache, Logits::Last, policy)
                .unwrap()
                .logits
                .to_vec2::<f32>()
                .unwrap(),
        );
        l
    };
    let want = run(&m, &flexidepth::depth::FullDepth);
    let layers: Vec<usize> = (15..30).collect();
    let t = init_tensors(&m.config, &layers, 16, 16, 7).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.safetensors");
    let meta = DepthMeta::for_model(&m, layers.clone(), 16, 16).unwrap();
    write_depth_file(&path, &meta, &t, candle_core::DType::F32).unwrap();
    attach_depth_file(&mut m, &path).unwrap();
    assert_eq!(m.routed_layers(), layers);
    assert_eq!(
        run(&m, &settings(DepthMode::Run, true)),
        want,
        "forced run must equal the base model bit for bit"
    );
    assert_eq!(
        run(&m, &flexidepth::depth::FullDepth),
        want,
        "full depth ignores attached routers"
    );
    // Dynamic mode with fresh routers does skip, and changes the output.
    assert_ne!(run(&m, &settings(DepthMode::Dynamic, true)), want);
}

/// Rows computed by each projection: the trace of work done.
fn work(m: &Model, layer_idx: usize) -> [u64; 6] {
    let l = &m.layers[layer_idx];
    let a = l.router_proj.as_ref().unwrap();
    [
        l.self_attn.q_proj.rows_computed(),
        l.self_attn.k_proj.rows_computed(),
        l.self_attn.o_proj.rows_computed(),
        l.mlp.gate_proj.rows_computed() + l.mlp.up_proj.rows_computed() + l.mlp.down_proj.rows_computed(),
        a.gate_proj.rows_computed() + a.down_proj.rows_computed() + a.up_proj.rows_computed(),
        l.router.as_ref().unwrap().router_enc.rows_computed(),
    ]
}

/// A skipped token computes its K/V, the router and the adapter, and nothing else of the layer: no q_proj, no
/// o_proj, no MLP. In a prefill with mixed decisions, each group is computed once for its own rows.
#[test]
fn skipped_layers_are_not_paid_for() {
    let c = config(Arch::Llama);
    let m = routed_model(&c, &weights(&c), &depth_weights(&c, &ROUTED, 0), &ROUTED);
    let mut cache = m.new_cache(IDS.len());
    let before: Vec<[u64; 6]> = ROUTED.iter().map(|&l| work(&m, l)).collect();
    let out = m
        .forward_with(&IDS[..7], &mut cache, Logits::Last, &settings(DepthMode::Dynamic, true))
        .unwrap();
    for (i, &l) in ROUTED.iter().enumerate() {
        let d: Vec<u64> = work(&m, l).iter().zip(&before[i]).map(|(a, b)| a - b).collect();
        let runs = out.routing()[i].run.iter().filter(|r| **r).count() as u64;
        assert!(
            runs > 0 && runs < 7,
            "layer {l}: mixed decisions needed ({runs} of 7 run)"
        );
        assert_eq!(
            d,
            vec![runs, 7, runs, 3 * runs, 3 * (7 - runs), 7],
            "layer {l}: rows per projection"
        );
    }
    let before: Vec<[u64; 6]> = ROUTED.iter().map(|&l| work(&m, l)).collect();
    m.forward_with(&[IDS[7]], &mut cache, Logits::Last, &settings(DepthMode::Skip, true))
        .unwrap();
    for (i, &l) in ROUTED.iter().enumerate() {
        let d: Vec<u64> = work(&m, l).iter().zip(&before[i]).map(|(a, b)| a - b).collect();
        assert_eq!(d, vec![0, 1, 0, 0, 3, 1], "layer {l}: a skipped decode step");
    }
}

fn write_depth(m: &Model, depth: &Weights, dir: &Path) -> std::path::PathBuf {
    let path = dir.join("depth.safetensors");
    let meta = DepthMeta::for_model(m, ROUTED.to_vec(), 4, 4).unwrap();
    write_depth_file(&path, &meta, &to_tensors(depth), candle_core::DType::F32).unwrap();
    path
}

#[test]
fn depth_file_round_trips_and_bad_files_are_refused() {
    let c = config(Arch::Qwen2);
    let (base, depth) = (weights(&c), depth_weights(&c, &ROUTED, 3));
    let dir = tempfile::tempdir().unwrap();
    let want = run_engine(&routed_model(&c, &base, &depth, &ROUTED), &FlexiDepth::default()).0;
    let mut m = model_from(&c, &base);
    let path = write_depth(&m, &depth, dir.path());
    let meta = attach_depth_file(&mut m, &path).unwrap();
    assert_eq!(meta.routed_layers, ROUTED.to_vec());
    assert_eq!(run_engine(&m, &FlexiDepth::default()).0, want);

    // Llama-style adapter names (up/down the other way round) are recognised by shape.
    let swapped: Weights = depth
        .iter()
        .map(|(n, s, v)| {
            let n = if n.ends_with("router_proj.up_proj.weight") {
                n.replace("up_proj", "down_proj")
            } else if n.ends_with("router_proj.down_proj.weight") {
                n.replace("down_proj", "up_proj")
            } else {
                n.clone()
            };
            (n, s.clone(), v.clone())
        })
        .collect();
    let mut m2 = model_from(&c, &base);
    let path2 = write_depth(&m2, &swapped, dir.path());
    attach_depth_file(&mut m2, &path2).unwrap();
    assert_eq!(run_engine(&m2, &FlexiDepth::default()).0, want);

    // Wrong base: another architecture, or the same shape with other weights.
    let other = config(Arch::Llama);
    let mut m3 = model_from(&other, &weights(&other));
    let e = attach_depth_file(&mut m3, &path).unwrap_err().to_string();
    assert!(
        e.contains("made for Qwen2ForCausalLM") && e.contains("LlamaForCausalLM"),
        "{e}"
    );
    let mut scaled = base.clone();
    scaled[0].2.iter_mut().for_each(|x| *x *= 3.0);
    let mut m4 = model_from(&c, &scaled);
    let e = attach_depth_file(&mut m4, &path).unwrap_err().to_string();
    assert!(e.contains("another Qwen2ForCausalLM"), "{e}");

    // Wrong shapes and missing tensors are named.
    let mut bad = depth.clone();
    let k = bad
        .iter()
        .position(|(n, _, _)| n == "model.layers.2.router.router_dec.weight")
        .unwrap();
    bad[k].1 = vec![c.hidden_size, 3];
    bad[k].2.truncate(c.hidden_size * 3);
    let mut m5 = model_from(&c, &base);
    let path5 = write_depth(&m5, &bad, dir.path());
    let e = attach_depth_file(&mut m5, &path5).unwrap_err().to_string();
    assert!(
        e.contains("model.layers.2.router.router_dec.weight") && e.contains("expected shape"),
        "{e}"
    );
    let mut missing = depth.clone();
    missing.retain(|(n, _, _)| n != "model.layers.1.router_proj.gate_proj.weight");
    let path6 = write_depth(&m5, &missing, dir.path());
    let e = attach_depth_file(&mut m5, &path6).unwrap_err().to_string();
    assert!(e.contains("model.layers.1.router_proj.gate_proj.weight"), "{e}");
    assert!(m5.routed_layers().is_empty(), "a refused file attaches nothing");

    // A safetensors file that is not a depth adapter.
    let plain = dir.path().join("plain.safetensors");
    candle_core::safetensors::save(&to_tensors(&depth), &plain).unwrap();
    let e = attach_depth_file(&mut m5, &plain).unwrap_err().to_string();
    assert!(e.contains("not a depth-adapter file"), "{e}");
}

/// SmolLM2 + a depth file written by `convert --depth` in the official layout (`ddllama`, `routing_layers`,
/// router tensors inside `model.safetensors`) loads directly with the same routing and logits, and converting that
/// folder again keeps its routers.
#[test]
fn official_layout_loads_and_round_trips_through_convert() {
    use flexidepth::convert::{convert_to_hf, convert_with_depth, ConvertDtype};
    use flexidepth::loader::ModelFiles;
    let files = ModelFiles::open("smollm2-135m-instruct").unwrap();
    let mut m = files
        .load_model(flexidepth::model::WeightFormat::F32, &candle_core::Device::Cpu)
        .unwrap();
    let layers: Vec<usize> = (20..30).collect();
    let dir = tempfile::tempdir().unwrap();
    let depth_path = dir.path().join("d.safetensors");
    let meta = DepthMeta::for_model(&m, layers.clone(), 16, 16).unwrap();
    let t = init_tensors(&m.config, &layers, 16, 16, 5).unwrap();
    write_depth_file(&depth_path, &meta, &t, candle_core::DType::F32).unwrap();
    attach_depth_file(&mut m, &depth_path).unwrap();
    let prompt = files
        .tokenizer
        .encode("It is a truth universally acknowledged, that a", false)
        .unwrap();
    let run = |m: &Model| {
        let mut cache = m.new_cache(prompt.len());
        let out = m
            .forward_with(&prompt, &mut cache, Logits::All, &FlexiDepth::default())
            .unwrap();
        (out.logits.to_vec2::<f32>().unwrap(), out.routing())
    };
    let (want_logits, want_routing) = run(&m);
    assert!(
        want_routing.iter().any(|r| r.run.contains(&false)),
        "fresh routers skip something"
    );

    let official = dir.path().join("official");
    convert_with_depth(&files, Some(&depth_path), &official, ConvertDtype::F32).unwrap();
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(official.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["model_type"], "ddllama");
    assert_eq!(cfg["architectures"][0], "DDLlamaForCausalLM");
    assert_eq!(cfg["routing_layers"], serde_json::json!(layers));
    let loaded = ModelFiles::open(official.to_str().unwrap()).unwrap();
    assert!(loaded.weights.contains("model.layers.25.router_proj.up_proj.weight"));
    assert_eq!(
        loaded
            .weights
            .describe("model.layers.25.router_proj.up_proj.weight")
            .unwrap()
            .0,
        vec![576, 96]
    );
    let m2 = loaded
        .load_model(flexidepth::model::WeightFormat::F32, &candle_core::Device::Cpu)
        .unwrap();
    assert_eq!(m2.routed_layers(), layers);
    let (logits, routing) = run(&m2);
    assert_eq!(routing, want_routing);
    assert!(max_diff(&logits, &want_logits) < 1e-5);

    let again = dir.path().join("again");
    convert_to_hf(&loaded, &again, ConvertDtype::F32).unwrap();
    let m3 = ModelFiles::open(again.to_str().unwrap())
        .unwrap()
        .load_model(flexidepth::model::WeightFormat::F32, &candle_core::Device::Cpu)
        .unwrap();
    assert_eq!(run(&m3).1, want_routing);
}
