//! Batched decode steps (continuous batching, `Model::forward_batch`) against one sequence at a time: bit for bit
//! the same whatever else is in the batch (row-invariant ops), close to `forward_with` on tiny routed models of
//! every architecture and equal to it bit for bit on the default quantized model; a skipped row is not paid for in a
//! batch either (the default model with its shipped adapter).

mod common;

use common::tiny::{config, depth_weights, max_diff, routed_model, weights};
use flexidepth::cache::KvCache;
use flexidepth::config::Arch;
use flexidepth::depth::early_exit::EarlyExit;
use flexidepth::depth::laco::Laco;
use flexidepth::depth::shortgpt::StaticPrune;
use flexidepth::depth::{DepthMode, DepthPolicy, FlexiDepth, FullDepth, SkipUnit};
use flexidepth::generate::sampler::argmax;
use flexidepth::model::plan::{AttnStep, ExecutedPlan, FfnStep, RecordKind, RowStep};
use flexidepth::model::{BatchRow, Logits, Model, RowInvariant, WeightFormat};

const ROUTED: [usize; 2] = [1, 2];
const PROMPTS: [&[u32]; 5] = [&[3, 17, 5], &[9, 2], &[30, 12, 7, 22, 14], &[4], &[11, 11, 8, 25]];
const STEPS: usize = 4;

/// One policy of every kind the seam has (routing, FFN-only and attention-only skipping without skip K/V, forced
/// skip, pruning, early exit, full depth, a layer replaced by a merged one: LaCo's layer 2 merged into 1).
fn policies(m: &Model) -> Vec<Box<dyn DepthPolicy>> {
    vec![
        Box::new(FullDepth),
        Box::new(FlexiDepth::default()),
        Box::new(FlexiDepth {
            unit: Some(SkipUnit::Ffn),
            skip_kv: false,
            ..FlexiDepth::default()
        }),
        Box::new(FlexiDepth {
            unit: Some(SkipUnit::Attention),
            skip_threshold: Some(0.4),
            ..FlexiDepth::default()
        }),
        Box::new(FlexiDepth::with_mode(DepthMode::Skip)),
        Box::new(StaticPrune::new(vec![1])),
        Box::new(EarlyExit { exit_after: 2 }),
        Box::new(Laco::merge_once(m, 1, 1).unwrap()),
    ]
}

/// Which policy each of the ten sequences runs: rows 1 and 2 share one policy object (planned together), and so do
/// rows 8 and 9 (LaCo).
const POLICY_OF: [usize; 10] = [0, 1, 1, 2, 3, 4, 5, 6, 7, 7];

/// What a run produced: per decode step, per sequence, the logits and the executed plan.
type Steps = Vec<Vec<(Vec<f32>, ExecutedPlan)>>;

/// Prefill every sequence alone, then decode `STEPS` greedy tokens: all sequences in one batch per step
/// (`batched`), or each alone in a batch of one.
fn decode(m: &Model, policies: &[Box<dyn DepthPolicy>], batched: bool) -> Steps {
    let n = POLICY_OF.len();
    let policy = |i: usize| policies[POLICY_OF[i]].as_ref();
    let mut caches: Vec<KvCache> = (0..n).map(|_| m.new_cache(16)).collect();
    let mut next: Vec<u32> = (0..n)
        .map(|i| {
            let out = m
                .forward_with(PROMPTS[i % PROMPTS.len()], &mut caches[i], Logits::Last, policy(i))
                .unwrap();
            argmax(&out.logits.squeeze(0).unwrap().to_vec1::<f32>().unwrap())
        })
        .collect();
    let mut steps = Vec::new();
    for _ in 0..STEPS {
        let mut results = Vec::new();
        if batched {
            let mut rows: Vec<BatchRow> = caches
                .iter_mut()
                .enumerate()
                .map(|(i, cache)| BatchRow {
                    token: next[i],
                    cache,
                    policy: policy(i),
                })
                .collect();
            let out = m.forward_batch(&RowInvariant, &mut rows).unwrap();
            let logits: Vec<Vec<f32>> = out.logits.to_vec2().unwrap();
            results.extend(logits.into_iter().zip(out.plans));
        } else {
            for (i, cache) in caches.iter_mut().enumerate() {
                let mut rows = [BatchRow {
                    token: next[i],
                    cache,
                    policy: policy(i),
                }];
                let out = m.forward_batch(&RowInvariant, &mut rows).unwrap();
                let logits: Vec<f32> = out.logits.squeeze(0).unwrap().to_vec1().unwrap();
                results.push((logits, out.plans.into_iter().next().unwrap()));
            }
        }
        next = results.iter().map(|(l, _)| argmax(l)).collect();
        steps.push(results);
    }
    steps
}

/// The same sequences through `forward_with`, one token at a time.
fn decode_sequential(m: &Model, policies: &[Box<dyn DepthPolicy>]) -> Steps {
    let n = POLICY_OF.len();
    let mut steps: Steps = vec![Vec::new(); STEPS];
    for i in 0..n {
        let policy = policies[POLICY_OF[i]].as_ref();
        let mut cache = m.new_cache(16);
        let out = m
            .forward_with(PROMPTS[i % PROMPTS.len()], &mut cache, Logits::Last, policy)
            .unwrap();
        let mut next = argmax(&out.logits.squeeze(0).unwrap().to_vec1::<f32>().unwrap());
        for step in steps.iter_mut() {
            let out = m.forward_with(&[next], &mut cache, Logits::Last, policy).unwrap();
            let logits: Vec<f32> = out.logits.squeeze(0).unwrap().to_vec1().unwrap();
            next = argmax(&logits);
            step.push((logits, out.plan));
        }
    }
    steps
}

/// The run/skip decisions of a plan (gates aside).
fn decisions(plan: &ExecutedPlan) -> Vec<(usize, RecordKind)> {
    plan.layers.iter().map(|l| (l.layer_idx, l.kind.clone())).collect()
}

#[test]
fn a_row_is_the_same_alone_and_in_a_batch() {
    for arch in [Arch::Llama, Arch::Qwen2, Arch::Qwen3] {
        let c = config(arch);
        let m = routed_model(&c, &weights(&c), &depth_weights(&c, &ROUTED, 0), &ROUTED);
        let policies = policies(&m);
        let alone = decode(&m, &policies, false);
        let batched = decode(&m, &policies, true);
        assert_eq!(batched, alone, "{arch:?}");
        // The batch mixes decisions: some rows run a routed layer while others skip it.
        let kinds: Vec<RecordKind> = batched[0]
            .iter()
            .filter_map(|(_, p)| p.layers.get(1))
            .map(|l| l.kind.clone())
            .collect();
        assert!(
            kinds.len() > 3 && kinds.iter().any(|k| k != &kinds[0]),
            "{arch:?}: {kinds:?}"
        );
    }
}

#[test]
fn batched_steps_agree_with_forward_with() {
    for arch in [Arch::Llama, Arch::Qwen2, Arch::Qwen3] {
        let c = config(arch);
        let m = routed_model(&c, &weights(&c), &depth_weights(&c, &ROUTED, 0), &ROUTED);
        let policies = policies(&m);
        let batched = decode(&m, &policies, true);
        let sequential = decode_sequential(&m, &policies);
        for (step, (b, s)) in batched.iter().zip(&sequential).enumerate() {
            for (row, ((bl, bp), (sl, sp))) in b.iter().zip(s).enumerate() {
                let d = max_diff(std::slice::from_ref(bl), std::slice::from_ref(sl));
                assert!(d < 1e-4, "{arch:?} step {step} row {row}: logits differ by {d}");
                assert_eq!(decisions(bp), decisions(sp), "{arch:?} step {step} row {row}");
            }
        }
    }
}

/// The default model (GGUF blocks, our 8-bit kernels), with the shipped FlexiDepth adapter when `routed`.
fn default_model(routed: bool) -> (flexidepth::loader::ModelFiles, Model) {
    let files = flexidepth::loader::ModelFiles::open("smollm2-135m-instruct").unwrap_or_else(|e| panic!("{e}"));
    let mut m = files
        .load_model(WeightFormat::Quantized, &candle_core::Device::Cpu)
        .unwrap();
    if routed {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../adapters/smollm2-135m-instruct/flexidepth.safetensors"
        );
        flexidepth::depth::file::attach_depth_file(&mut m, std::path::Path::new(path)).unwrap();
    }
    (files, m)
}

/// Caches filled with a few prompts of the default model, and each prompt's greedy next token.
fn prefilled(files: &flexidepth::loader::ModelFiles, m: &Model, policy: &dyn DepthPolicy) -> (Vec<KvCache>, Vec<u32>) {
    let prompts = [
        "The capital of France is",
        "1, 2, 3,",
        "Once upon a time there was a",
        "def fib(n):",
        "Water boils at",
    ];
    let mut caches = Vec::new();
    let mut next = Vec::new();
    for p in prompts {
        let ids = files.tokenizer.encode(p, true).unwrap();
        let mut cache = m.new_cache(64);
        let out = m.forward_with(&ids, &mut cache, Logits::Last, policy).unwrap();
        next.push(argmax(&out.logits.squeeze(0).unwrap().to_vec1::<f32>().unwrap()));
        caches.push(cache);
    }
    (caches, next)
}

/// Each layer's packed projections multiply only the rows whose plan uses them: K/V for every row, queries and
/// `o_proj` for the rows that attend, the MLP for the rows that run it, the adapter for the others.
#[test]
fn skipped_rows_are_not_paid_for_in_a_batch() {
    let (files, m) = default_model(true);
    let policy = FlexiDepth::default();
    let (mut caches, next) = prefilled(&files, &m, &policy);
    let counts = |m: &Model| -> Vec<[u64; 4]> {
        m.layers
            .iter()
            .map(|l| {
                [
                    l.self_attn.k_proj.rows_computed(),
                    l.self_attn.q_proj.rows_computed(),
                    l.mlp.gate_proj.rows_computed(),
                    l.router_proj.as_ref().map_or(0, |a| a.gate_proj.rows_computed()),
                ]
            })
            .collect()
    };
    let start = counts(&m);
    let mut rows: Vec<BatchRow> = caches
        .iter_mut()
        .zip(&next)
        .map(|(cache, &token)| BatchRow {
            token,
            cache,
            policy: &policy,
        })
        .collect();
    let out = m.forward_batch(&RowInvariant, &mut rows).unwrap();
    let end = counts(&m);
    let mut mixed = 0;
    for (l, (s, e)) in start.iter().zip(&end).enumerate() {
        let steps: Vec<RowStep> = out.plans.iter().map(|p| p.layers[l].step(0).unwrap()).collect();
        let count = |pred: &dyn Fn(&RowStep) -> bool| steps.iter().filter(|s| pred(s)).count() as u64;
        let attend = count(&|s| s.attn == AttnStep::Run);
        let mlp = count(&|s| s.ffn == FfnStep::Mlp);
        let adapter = count(&|s| s.ffn == FfnStep::Adapter);
        assert_eq!(e[0] - s[0], steps.len() as u64, "layer {l}: k_proj");
        assert_eq!(e[1] - s[1], attend, "layer {l}: q_proj");
        assert_eq!(e[2] - s[2], mlp, "layer {l}: gate_proj");
        assert_eq!(e[3] - s[3], adapter, "layer {l}: the adapter");
        mixed += usize::from(mlp > 0 && adapter > 0);
    }
    assert!(mixed > 0, "some layer has rows that run and rows that skip");
}

/// On the default model a batched step is the single-sequence decode step, bit for bit (the 8-bit kernels are row
/// by row): a server's greedy output equals `generate`'s. With the adapter (whose small router matmuls are plain
/// f32), a sequence gets the same logits alone and in the batch.
#[test]
fn batched_decode_on_the_default_model() {
    for routed in [false, true] {
        let (files, m) = default_model(routed);
        let policy = FlexiDepth::default();
        let (mut caches, mut next) = prefilled(&files, &m, &policy);
        let (mut solo, _) = prefilled(&files, &m, &policy);
        for _ in 0..4 {
            let mut rows: Vec<BatchRow> = caches
                .iter_mut()
                .zip(&next)
                .map(|(cache, &token)| BatchRow {
                    token,
                    cache,
                    policy: &policy,
                })
                .collect();
            let batched: Vec<Vec<f32>> = m
                .forward_batch(&RowInvariant, &mut rows)
                .unwrap()
                .logits
                .to_vec2()
                .unwrap();
            for (i, cache) in solo.iter_mut().enumerate() {
                let alone: Vec<f32> = if routed {
                    let mut row = [BatchRow {
                        token: next[i],
                        cache,
                        policy: &policy,
                    }];
                    m.forward_batch(&RowInvariant, &mut row)
                        .unwrap()
                        .logits
                        .squeeze(0)
                        .unwrap()
                        .to_vec1()
                        .unwrap()
                } else {
                    let out = m.forward_with(&[next[i]], cache, Logits::Last, &policy).unwrap();
                    out.logits.squeeze(0).unwrap().to_vec1().unwrap()
                };
                assert_eq!(batched[i], alone, "routed {routed}, sequence {i}");
            }
            next = batched.iter().map(|l| argmax(l)).collect();
        }
    }
}
