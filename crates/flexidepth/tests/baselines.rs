//! The pruning and early-exit baselines of issue 11 against simple references on tiny models: LaCo's merged
//! weights against a hand computation and its forward against a dense model built with those weights;
//! self-speculative decoding's greedy output against greedy full depth (tiny models and SmolLM2); MindSkip's
//! executed rows.

mod common;

use common::tiny::{config, depth_weights, max_diff, model_from, to_tensors, weights, Weights};
use flexidepth::config::{Arch, ModelConfig};
use flexidepth::depth::file::{attach_depth_file, write_depth_file, DepthMeta};
use flexidepth::depth::laco::{dense_weight, Laco, LacoSettings};
use flexidepth::depth::{DepthPolicy, FlexiDepth, FullDepth, PolicySpec, SkipUnit};
use flexidepth::generate::speculative::{generate_self_speculative, SpeculativeOptions};
use flexidepth::generate::{generate, GenerateOptions};
use flexidepth::model::plan::{AttnStep, FfnStep, RecordKind, RowStep};
use flexidepth::model::{Logits, Model};
use std::sync::Arc;

const IDS: [u32; 11] = [3, 17, 5, 39, 0, 22, 8, 11, 30, 2, 19];
const ARCHS: [Arch; 3] = [Arch::Llama, Arch::Qwen2, Arch::Qwen3];

/// Prefill 6 tokens, decode the rest one at a time: the logits of every position.
fn run(m: &Model, policy: &dyn DepthPolicy) -> Vec<Vec<f32>> {
    let mut cache = m.new_cache(IDS.len());
    let out = m.forward_with(&IDS[..6], &mut cache, Logits::All, policy).unwrap();
    let mut logits: Vec<Vec<f32>> = out.logits.to_vec2().unwrap();
    for &id in &IDS[6..] {
        let out = m.forward_with(&[id], &mut cache, Logits::Last, policy).unwrap();
        logits.extend(out.logits.to_vec2::<f32>().unwrap());
    }
    logits
}

/// The tensor `name` of `w`.
fn get<'a>(w: &'a Weights, name: &str) -> &'a [f32] {
    &w.iter().find(|(n, _, _)| n == name).unwrap().2
}

/// By hand: `θ_into + Σ_k (θ_{into+k} − θ_into)` for one parameter `suffix` (e.g. `self_attn.q_proj.weight`).
fn hand_merge(w: &Weights, into: usize, count: usize, suffix: &str) -> Vec<f32> {
    let base = get(w, &format!("model.layers.{into}.{suffix}"));
    let mut out = base.to_vec();
    for k in 1..=count {
        let rear = get(w, &format!("model.layers.{}.{suffix}", into + k));
        for (o, (r, b)) in out.iter_mut().zip(rear.iter().zip(base)) {
            *o += r - b;
        }
    }
    out
}

/// A dense checkpoint whose layer `into` holds the hand-merged weights and whose layers `into+1..=into+count` are
/// gone (the later ones renumbered), with its config.
fn collapsed_checkpoint(c: &ModelConfig, w: &Weights, into: usize, count: usize) -> (ModelConfig, Weights) {
    let mut out = Weights::new();
    for (name, shape, v) in w {
        let Some(rest) = name.strip_prefix("model.layers.") else {
            out.push((name.clone(), shape.clone(), v.clone()));
            continue;
        };
        let (idx, suffix) = rest.split_once('.').unwrap();
        let idx: usize = idx.parse().unwrap();
        let (new_idx, value) = if idx == into {
            (idx, hand_merge(w, into, count, suffix))
        } else if idx > into && idx <= into + count {
            continue;
        } else if idx > into + count {
            (idx - count, v.clone())
        } else {
            (idx, v.clone())
        };
        out.push((format!("model.layers.{new_idx}.{suffix}"), shape.clone(), value));
    }
    let mut c2 = c.clone();
    c2.num_hidden_layers -= count;
    (c2, out)
}

fn flat(t: &candle_core::Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn laco_merged_weights_equal_the_hand_computation() {
    for arch in ARCHS {
        let c = config(arch);
        let w = weights(&c);
        let m = model_from(&c, &w);
        for (into, count) in [(0, 1), (1, 1), (0, 2)] {
            let laco = Laco::merge_once(&m, into, count).unwrap();
            assert_eq!(laco.removed, ((into + 1)..=(into + count)).collect::<Vec<_>>());
            let (idx, merged) = &laco.merged[0];
            assert_eq!(*idx, into);
            let a = &merged.self_attn;
            let mut checks = vec![
                ("self_attn.q_proj.weight", flat(&dense_weight(&a.q_proj).unwrap())),
                ("self_attn.o_proj.weight", flat(&dense_weight(&a.o_proj).unwrap())),
                (
                    "mlp.down_proj.weight",
                    flat(&dense_weight(&merged.mlp.down_proj).unwrap()),
                ),
                ("input_layernorm.weight", flat(&merged.input_layernorm.weight)),
            ];
            if c.attention_bias {
                checks.push(("self_attn.k_proj.bias", flat(a.k_proj.bias.as_ref().unwrap())));
            }
            if arch == Arch::Qwen3 {
                checks.push(("self_attn.q_norm.weight", flat(&a.q_norm.as_ref().unwrap().weight)));
            }
            for (suffix, got) in checks {
                let want = hand_merge(&w, into, count, suffix);
                let d = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                assert!(d < 1e-6, "{arch:?} merge {count} into {into}: {suffix} differs by {d}");
            }
        }
    }
}

#[test]
fn laco_forward_equals_a_dense_model_with_the_merged_weights() {
    for arch in ARCHS {
        let c = config(arch);
        let w = weights(&c);
        let m = model_from(&c, &w);
        for (into, count) in [(0, 1), (1, 1), (0, 2)] {
            let laco = Laco::merge_once(&m, into, count).unwrap();
            let (c2, w2) = collapsed_checkpoint(&c, &w, into, count);
            let reference = model_from(&c2, &w2);
            let got = run(&m, &laco);
            let want = run(&reference, &FullDepth);
            let d = max_diff(&got, &want);
            assert!(d < 1e-4, "{arch:?} merge {count} into {into}: logits differ by {d}");
            // Not the base model: the merge changes the output.
            assert!(max_diff(&got, &run(&m, &FullDepth)) > 1e-3);
        }
    }
}

#[test]
fn laco_search_removes_exactly_k_layers_and_records_its_merges() {
    let c = config(Arch::Qwen2);
    let m = model_from(&c, &weights(&c));
    for k in [1, 2] {
        let s = LacoSettings::for_layers(3);
        let laco = Laco::search(&m, &IDS, k, &s).unwrap();
        assert_eq!(laco.removed.len(), k, "{laco:?}");
        let merged: usize = laco.merges.iter().map(|x| x.layers.len() - 1).sum();
        assert_eq!(merged, k);
        for x in &laco.merges {
            assert!(x.similarity > x.threshold, "{x:?}");
        }
        let built = format!("laco:{k}")
            .parse::<PolicySpec>()
            .unwrap()
            .build(&m, &IDS)
            .unwrap();
        assert_eq!(built.label(), format!("laco:{k}"));
    }
    assert!("laco:3".parse::<PolicySpec>().unwrap().build(&m, &IDS).is_err());
}

#[test]
fn laco_search_reports_every_merge_it_tries() {
    let c = config(Arch::Qwen2);
    let m = model_from(&c, &weights(&c));
    let mut lines = Vec::new();
    let spec = "laco:2".parse::<PolicySpec>().unwrap();
    let built = spec
        .build_with_progress(&m, &IDS, &mut |l| lines.push(l.to_string()))
        .unwrap();
    let quiet = Laco::search(&m, &IDS, 2, &LacoSettings::for_layers(3)).unwrap();
    // One line per candidate merge, kept or rejected; as many kept as the search kept.
    let kept = lines.iter().filter(|l| l.contains(", kept")).count();
    assert_eq!(kept, quiet.merges.len(), "{lines:?}");
    assert!(lines.iter().all(|l| l.starts_with("LaCo: ")), "{lines:?}");
    assert!(lines.last().unwrap().contains("(2 of 2 layers removed)"), "{lines:?}");
    assert_eq!(built.label(), "laco:2");
}

/// Sweeps that keep nothing only lower the threshold: starting too high and stepping down gives the merges of
/// starting at the first threshold that keeps one, and computes each candidate's similarity once.
#[test]
fn laco_search_lowering_the_threshold_equals_starting_low() {
    let c = config(Arch::Qwen2);
    let m = model_from(&c, &weights(&c));
    let low = LacoSettings {
        threshold: -0.9,
        threshold_step: 0.5,
        ..LacoSettings::for_layers(3)
    };
    let direct = Laco::search(&m, &IDS, 1, &low).unwrap();
    // 1.1 is above any cosine similarity: the sweeps at 1.1, 0.6, 0.1, −0.4 may keep nothing; −0.9 keeps.
    let high = LacoSettings { threshold: 1.1, ..low };
    let mut lines = Vec::new();
    let stepped = Laco::search_with_progress(&m, &IDS, 1, &high, &mut |l| lines.push(l.to_string())).unwrap();
    assert_eq!(stepped.removed, direct.removed, "{lines:?}");
    assert_eq!(stepped.merges.len(), 1);
    assert_eq!(stepped.merges[0].layers, direct.merges[0].layers);
    assert_eq!(stepped.merges[0].similarity, direct.merges[0].similarity);
    let lowered = lines.iter().filter(|l| l.contains("threshold lowered")).count();
    assert!(lowered >= 1, "{lines:?}");
    assert!((stepped.merges[0].threshold - (1.1 - 0.5 * lowered as f64)).abs() < 1e-9);
    // One line per distinct candidate (computed once), plus the kept one when it was computed in an earlier sweep.
    let tried: Vec<&String> = lines.iter().filter(|l| l.contains(", rejected")).collect();
    let mut distinct = tried.clone();
    distinct.sort();
    distinct.dedup_by(|a, b| a.split(':').nth(1) == b.split(':').nth(1));
    assert_eq!(tried.len(), distinct.len(), "a candidate computed twice: {lines:?}");
}

/// Greedy options without stop tokens, full depth.
fn greedy(n: usize) -> GenerateOptions {
    GenerateOptions {
        policy: Arc::new(FullDepth),
        ..GenerateOptions::greedy(n, vec![])
    }
}

fn smol_tokenizer() -> &'static flexidepth::tokenizer::Tokenizer {
    &common::model("smollm2-135m-instruct").0.tokenizer
}

#[test]
fn self_speculative_output_equals_greedy_full_depth_on_tiny_models() {
    let tok = smol_tokenizer();
    for arch in ARCHS {
        let c = config(arch);
        let mut w = weights(&c);
        for identity_last in [false, true] {
            if identity_last {
                // The last layer adds nothing: a draft exiting before it is always right.
                for (name, _, v) in w.iter_mut() {
                    if name.starts_with("model.layers.2.") && (name.contains("o_proj") || name.contains("down_proj")) {
                        v.iter_mut().for_each(|x| *x = 0.0);
                    }
                }
            }
            let m = model_from(&c, &w);
            let prompt = &IDS[..4];
            let want = generate(&m, tok, prompt, &greedy(11), &mut |_| Ok(())).unwrap();
            for (exit_after, draft_tokens) in [(1, 1), (2, 3), (2, 5)] {
                let spec = SpeculativeOptions {
                    exit_after,
                    draft_tokens,
                };
                let (got, stats) =
                    generate_self_speculative(&m, tok, prompt, &greedy(11), spec, &mut |_| Ok(())).unwrap();
                assert_eq!(got.ids, want.ids, "{arch:?} L={exit_after} k={draft_tokens}");
                assert_eq!(got.text, want.text);
                assert_eq!(stats.decoded, 10);
                if identity_last && exit_after == 2 {
                    assert_eq!(stats.accepted, stats.drafted, "{stats:?}");
                    assert!(stats.layers_per_token() < 3.0, "{stats:?}");
                }
            }
        }
    }
    let m = model_from(&config(Arch::Llama), &weights(&config(Arch::Llama)));
    let spec = |exit_after| SpeculativeOptions {
        exit_after,
        draft_tokens: 2,
    };
    for bad in [0, 3] {
        assert!(generate_self_speculative(&m, tok, &IDS[..4], &greedy(4), spec(bad), &mut |_| Ok(())).is_err());
    }
    let mut sampled = greedy(4);
    sampled.sampling.temperature = 0.7;
    let e = generate_self_speculative(&m, tok, &IDS[..4], &sampled, spec(1), &mut |_| Ok(())).unwrap_err();
    assert!(e.to_string().contains("greedy only"), "{e}");
}

#[test]
fn self_speculative_output_equals_greedy_full_depth_on_smollm2() {
    let (files, m) = common::model("smollm2-135m-instruct");
    let tok = &files.tokenizer;
    for prompt in ["It is a truth universally acknowledged, that", "def fibonacci(n):"] {
        let ids = tok.encode(prompt, true).unwrap();
        let want = generate(m, tok, &ids, &greedy(16), &mut |_| Ok(())).unwrap();
        let spec = SpeculativeOptions {
            exit_after: 20,
            draft_tokens: 4,
        };
        let (got, stats) = generate_self_speculative(m, tok, &ids, &greedy(16), spec, &mut |_| Ok(())).unwrap();
        assert_eq!(got.text, want.text, "{prompt:?}");
        assert_eq!(got.ids, want.ids);
        assert!(stats.drafted > 0 && stats.cycles > 0, "{stats:?}");
    }
}

#[test]
fn mindskip_rows_skip_only_attention() {
    let c = config(Arch::Llama);
    let routed = [1usize, 2];
    let depth = to_tensors(&depth_weights(&c, &routed, 0));
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for unit in [SkipUnit::Attention, SkipUnit::Layer] {
        let m = model_from(&c, &weights(&c));
        let path = dir.path().join(format!("{unit}.safetensors"));
        let mut meta = DepthMeta::for_model(&m, routed.to_vec(), 4, 4).unwrap();
        meta.skip_unit = unit;
        write_depth_file(&path, &meta, &depth, candle_core::DType::F32).unwrap();
        files.push(path);
    }
    let mut m = model_from(&c, &weights(&c));
    attach_depth_file(&mut m, &files[0]).unwrap();
    let policy = "mindskip:0.5".parse::<PolicySpec>().unwrap().build(&m, &IDS).unwrap();
    let mut cache = m.new_cache(IDS.len());
    let out = m.forward_with(&IDS, &mut cache, Logits::All, policy.as_ref()).unwrap();
    let mut skipped = 0;
    for rec in out.plan.routed() {
        let RecordKind::Rows(steps) = &rec.kind else {
            panic!("a routed layer without rows: {rec:?}")
        };
        for (step, gate) in steps.iter().zip(rec.gates.as_ref().unwrap()) {
            let want = if *gate > 0.5 {
                RowStep::RUN
            } else {
                skipped += 1;
                RowStep {
                    attn: AttnStep::KvOnly,
                    ffn: FfnStep::Mlp,
                }
            };
            assert_eq!(*step, want, "layer {} gate {gate}", rec.layer_idx);
        }
    }
    assert!(
        skipped > 0 && skipped < IDS.len() * routed.len(),
        "{skipped} rows skipped"
    );
    // The same as FlexiDepth with the attention unit, spelled out.
    let explicit = FlexiDepth {
        unit: Some(SkipUnit::Attention),
        skip_threshold: Some(0.5),
        ..FlexiDepth::default()
    };
    let mut cache = m.new_cache(IDS.len());
    let want = m.forward_with(&IDS, &mut cache, Logits::All, &explicit).unwrap();
    let d = max_diff(&out.logits.to_vec2().unwrap(), &want.logits.to_vec2().unwrap());
    assert_eq!(d, 0.0);
    // A file trained for whole layers is not a MindSkip file.
    let mut other = model_from(&c, &weights(&c));
    attach_depth_file(&mut other, &files[1]).unwrap();
    let e = "mindskip"
        .parse::<PolicySpec>()
        .unwrap()
        .build(&other, &IDS)
        .unwrap_err();
    assert!(e.to_string().contains("attention unit"), "{e}");
}

/// A pass of several rows at a later position equals one row at a time (what verification relies on).
#[test]
fn rows_at_a_later_position_equal_one_row_at_a_time() {
    for arch in ARCHS {
        let c = config(arch);
        let m = model_from(&c, &weights(&c));
        let mut a = m.new_cache(IDS.len());
        let mut b = m.new_cache(IDS.len());
        m.forward(&IDS[..4], &mut a, Logits::All).unwrap();
        m.forward(&IDS[..4], &mut b, Logits::All).unwrap();
        let many: Vec<Vec<f32>> = m.forward(&IDS[4..8], &mut a, Logits::All).unwrap().to_vec2().unwrap();
        let mut one = Vec::new();
        for &id in &IDS[4..8] {
            one.extend(m.forward(&[id], &mut b, Logits::All).unwrap().to_vec2::<f32>().unwrap());
        }
        let d = max_diff(&many, &one);
        assert!(d < 1e-4, "{arch:?}: {d}");
        // After an early-exit draft and a rollback, the same rows give the same logits.
        let mut cc = m.new_cache(IDS.len());
        m.forward(&IDS[..4], &mut cc, Logits::All).unwrap();
        let exit = flexidepth::depth::early_exit::EarlyExit { exit_after: 1 };
        for &id in &IDS[4..7] {
            m.forward_with(&[id], &mut cc, Logits::Last, &exit).unwrap();
        }
        cc.truncate(4);
        let again: Vec<Vec<f32>> = m.forward(&IDS[4..8], &mut cc, Logits::All).unwrap().to_vec2().unwrap();
        let d = max_diff(&many, &again);
        assert!(d < 1e-4, "{arch:?} after a draft: {d}");
    }
}
