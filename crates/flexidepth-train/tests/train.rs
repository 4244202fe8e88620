//! Training (spec A4) on tiny random models: the training forward equals the inference forward, the loss equals
//! hand-computed values, gradients reach routers and adapters (checked against finite differences) and never the
//! base, gradient accumulation is exact, and a stopped run resumes to the same result as an unbroken one.

#[path = "../../flexidepth/tests/common/mod.rs"]
mod common;

use candle_core::{Device, Tensor};
use common::tiny::{config, depth_weights, model_from, to_tensors, weights};
use flexidepth::config::{Arch, ModelConfig};
use flexidepth::depth::file::{load_parts, DepthMeta};
use flexidepth::depth::{DepthMode, FlexiDepth, Routing, SkipUnit};
use flexidepth::model::{Logits, Model};
use flexidepth::weights::{SafetensorsFiles, WeightSource};
use flexidepth_train::config::{Stage, TrainConfig};
use flexidepth_train::loss::{kl_sum, lm_sum, sequence_loss, skip_sum, LossKind, Objective};
use flexidepth_train::params::DepthParams;
use flexidepth_train::{forward, step_grads, Event, Outcome, Trainer};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

const IDS: [u32; 11] = [3, 17, 5, 39, 0, 22, 8, 11, 30, 2, 19];
const ROUTED: [usize; 2] = [1, 2];

/// A tiny model whose routers and adapters are the trainable parameters ([`DepthParams::attach`]).
fn setup(arch: Arch) -> (ModelConfig, Model, DepthParams) {
    let c = config(arch);
    let mut m = model_from(&c, &weights(&c));
    let depth = to_tensors(&depth_weights(&c, &ROUTED, 0));
    let params = DepthParams::from_tensors(&ROUTED, &depth).unwrap();
    params.attach(&mut m, flexidepth::depth::Routing::default()).unwrap();
    (c, m, params)
}

/// The same tiny model with the same routers loaded for inference from a depth file (no variables).
fn inference_model(arch: Arch) -> Model {
    let c = config(arch);
    let mut m = model_from(&c, &weights(&c));
    let depth = to_tensors(&depth_weights(&c, &ROUTED, 0));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("depth.safetensors");
    candle_core::safetensors::save(&depth, &path).unwrap();
    let src = WeightSource::Safetensors(SafetensorsFiles::open(vec![path]).unwrap());
    m.attach_depth(
        load_parts(&src, &c, &ROUTED, &Device::Cpu).unwrap(),
        flexidepth::depth::Routing::default(),
    )
    .unwrap();
    m
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar().unwrap()
}

fn obj(alpha: f64, kind: LossKind) -> Objective {
    Objective {
        kind,
        alpha,
        routing: Routing::default(),
    }
}

/// One layer code for both: the training pass (differentiable ops, trainable routers) equals the inference pass
/// (fused ops, routers read from a file) for every trainable skip unit and every architecture, and so do the layers
/// used per token (one accounting).
#[test]
fn training_forward_equals_the_inference_forward() {
    for arch in [Arch::Llama, Arch::Qwen2, Arch::Qwen3] {
        for unit in [SkipUnit::Layer, SkipUnit::Ffn, SkipUnit::Attention] {
            let (_, m, params) = setup(arch);
            assert!(params.is_attached_to(&m));
            let inf_model = inference_model(arch);
            assert!(!params.is_attached_to(&inf_model));
            let mut cache = inf_model.new_cache(IDS.len());
            let policy = FlexiDepth {
                unit: Some(unit),
                ..FlexiDepth::default()
            };
            let inf = inf_model.forward_with(&IDS, &mut cache, Logits::All, &policy).unwrap();
            let tr = forward::forward(
                &m,
                &IDS,
                Routing {
                    skip_unit: unit,
                    ..Routing::default()
                },
            )
            .unwrap();
            let d = max_abs_diff(&inf.logits, &tr.logits(&m).unwrap());
            assert!(d < 1e-4, "{arch:?} {unit:?}: logits differ by {d}");
            let bytes = inf_model.layer_bytes();
            let inf_layers: f64 = (0..IDS.len()).map(|r| inf.plan.layers_used(r, &bytes)).sum();
            assert!(
                (inf_layers - tr.layers_sum).abs() < 1e-9,
                "{arch:?} {unit:?}: layers used"
            );
            let mut mixed = (false, false);
            for (r, (g, rows)) in inf.routing().iter().zip(tr.gates.iter().zip(&tr.rows_run)) {
                let g: Vec<f32> = g.to_vec1().unwrap();
                for (a, b) in r.gates.iter().zip(&g) {
                    assert!((a - b).abs() < 1e-5, "{arch:?}: gate {a} vs {b}");
                }
                assert_eq!(*rows, r.run.iter().filter(|&&x| x).count());
                mixed.0 |= r.run.iter().any(|&x| x);
                mixed.1 |= r.run.iter().any(|&x| !x);
            }
            assert!(mixed.0 && mixed.1, "{arch:?}: the test needs both decisions");
        }
    }
}

#[test]
fn loss_terms_match_hand_computed_values() {
    let dev = Device::Cpu;
    let logits = Tensor::new(&[[1.0f32, 2.0, 0.0], [0.0, 0.0, 3.0]], &dev).unwrap();
    let lse = |r: [f64; 3]| r.iter().map(|x| x.exp()).sum::<f64>().ln();
    // targets 1 and 2: −(2 − lse(1,2,0)) − (3 − lse(0,0,3))
    let want = -(2.0 - lse([1.0, 2.0, 0.0])) - (3.0 - lse([0.0, 0.0, 3.0]));
    let got = lm_sum(&logits, &[1, 2]).unwrap().to_scalar::<f32>().unwrap() as f64;
    assert!((got - want).abs() < 1e-5, "{got} vs {want}");

    // Two layers, two tokens: per-token gate sums 0.8 and 1.2 → 0.64 + 1.44.
    let gates = [
        Tensor::new(&[0.2f32, 0.6], &dev).unwrap(),
        Tensor::new(&[0.6f32, 0.6], &dev).unwrap(),
    ];
    let got = skip_sum(&gates).unwrap().to_scalar::<f32>().unwrap();
    assert!((got - 2.08).abs() < 1e-6, "{got}");

    // KL of a two-way distribution p = softmax(0, ln 3) = (1/4, 3/4) against q = (1/2, 1/2).
    let teacher = Tensor::new(&[[0.0f32, 3f32.ln()]], &dev).unwrap();
    let student = Tensor::new(&[[5.0f32, 5.0]], &dev).unwrap();
    let want = 0.25 * (0.25f64 / 0.5).ln() + 0.75 * (0.75f64 / 0.5).ln();
    let got = kl_sum(&teacher, &student).unwrap().to_scalar::<f32>().unwrap() as f64;
    assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    assert!(kl_sum(&teacher, &teacher).unwrap().to_scalar::<f32>().unwrap().abs() < 1e-6);

    // A sequence's objective is (L_lm sum + α · L_skip sum) / step tokens, from its own forward pass.
    let (_, m, _params) = setup(Arch::Llama);
    let tr = forward::forward(&m, &IDS[..10], Routing::default()).unwrap();
    let lm = lm_sum(&tr.logits(&m).unwrap(), &IDS[1..])
        .unwrap()
        .to_scalar::<f32>()
        .unwrap() as f64;
    let skip = skip_sum(&tr.gates).unwrap().to_scalar::<f32>().unwrap() as f64;
    let l = sequence_loss(&m, &IDS, &obj(0.01, LossKind::Lm), 25).unwrap();
    let got = l.objective.to_scalar::<f32>().unwrap() as f64;
    assert!((got - (lm + 0.01 * skip) / 25.0).abs() < 1e-5, "{got}");
    assert_eq!(l.tokens, 10);
    // Distillation against the model's own full depth: with every routed layer forced to run unscaled the
    // teacher equals the student, so here (gate-scaled, some skipped) KL is positive.
    let l = sequence_loss(&m, &IDS, &obj(0.0, LossKind::Kl), 10).unwrap();
    assert!(l.kl_sum > 0.0 && l.lm_sum == 0.0);
}

#[test]
fn gradients_reach_routers_and_adapters_and_never_the_base() {
    for arch in [Arch::Llama, Arch::Qwen3] {
        let (_, m, params) = setup(arch);
        let l = sequence_loss(&m, &IDS, &obj(0.05, LossKind::LmKl), 10).unwrap();
        let store = l.objective.backward().unwrap();
        let step = step_grads(&m, &params, &[&IDS], &obj(0.05, LossKind::LmKl)).unwrap();
        let rows_run = forward::forward(&m, &IDS[..10], Routing::default()).unwrap().rows_run;
        let mut adapters_trained = 0;
        for name in params.vars.keys() {
            // The step's gradients: an adapter outside the graph gets an explicit zero.
            let g = step
                .grads
                .get(name)
                .unwrap_or_else(|| panic!("{arch:?}: no gradient for {name}"));
            let norm: f32 = g.sqr().unwrap().sum_all().unwrap().to_scalar().unwrap();
            let layer = if name.contains("layers.1.") { 0 } else { 1 };
            if name.contains("router_proj") && rows_run[layer] == 10 {
                // No token skipped this layer: its adapter took no part, so its gradient is exactly zero.
                assert_eq!(norm, 0.0, "{arch:?}: {name}");
            } else {
                assert!(norm > 0.0, "{arch:?}: zero gradient for {name}");
                adapters_trained += name.contains("router_proj") as usize;
            }
        }
        assert!(
            adapters_trained >= 3,
            "{arch:?}: the test needs a layer with skipped tokens"
        );
        // Every base tensor: embeddings (the tied lm_head), norms, projections and biases.
        let mut base: Vec<&Tensor> = vec![&m.norm.weight];
        base.extend(m.lm_head.dense_weight());
        for layer in &m.layers {
            base.push(&layer.input_layernorm.weight);
            base.push(&layer.post_attention_layernorm.weight);
            let a = &layer.self_attn;
            for lin in [&a.q_proj, &a.k_proj, &a.v_proj, &a.o_proj] {
                base.extend(lin.dense_weight());
                base.extend(lin.bias.as_ref());
            }
            base.extend(a.q_norm.as_ref().map(|n| &n.weight));
            for lin in [&layer.mlp.gate_proj, &layer.mlp.up_proj, &layer.mlp.down_proj] {
                base.extend(lin.dense_weight());
            }
        }
        for t in base {
            assert!(
                store.get(t).is_none(),
                "{arch:?}: a base tensor {:?} got a gradient",
                t.shape()
            );
        }
    }
}

#[test]
fn gradients_match_finite_differences() {
    let (_, m, params) = setup(Arch::Qwen2);
    let o = obj(0.05, LossKind::Lm);
    // The model computes with the variables themselves, so a perturbed variable is seen by the next pass.
    let loss_at = || -> f64 {
        let l = sequence_loss(&m, &IDS, &o, 10).unwrap();
        l.objective.to_scalar::<f32>().unwrap() as f64
    };
    let base_decisions = forward::forward(&m, &IDS[..10], Routing::default()).unwrap().rows_run;
    let g = step_grads(&m, &params, &[&IDS], &o).unwrap();
    let mut checked = 0;
    for name in [
        "model.layers.1.router.router_head.weight",
        "model.layers.2.router.router_enc.weight",
        "model.layers.1.router_proj.up_proj.weight",
        "model.layers.2.router_proj.gate_proj.weight",
    ] {
        let var = &params.vars[name];
        let grad: Vec<f32> = g.grads[name].flatten_all().unwrap().to_vec1().unwrap();
        // The entry with the largest gradient, for a good signal-to-rounding ratio in f32.
        let (k, &gk) = grad
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
            .unwrap();
        let orig = var.as_tensor().clone().copy().unwrap();
        let shape = orig.shape().clone();
        let at = |delta: f32| -> f64 {
            let mut v: Vec<f32> = orig.flatten_all().unwrap().to_vec1().unwrap();
            v[k] += delta;
            var.set(&Tensor::from_vec(v, shape.clone(), &Device::Cpu).unwrap())
                .unwrap();
            let rows = forward::forward(&m, &IDS[..10], Routing::default()).unwrap().rows_run;
            assert_eq!(rows, base_decisions, "a decision flipped; pick a smaller step");
            loss_at()
        };
        let h = 2e-3;
        let fd = (at(h) - at(-h)) / (2.0 * h as f64);
        var.set(&orig).unwrap();
        let err = (fd - gk as f64).abs();
        assert!(
            err < 2e-2 * gk.abs() as f64 + 2e-4,
            "{name}[{k}]: backward {gk} vs finite difference {fd}"
        );
        checked += 1;
    }
    assert_eq!(checked, 4);
}

#[test]
fn accumulation_normalises_both_terms_over_the_whole_step() {
    let (_, m, params) = setup(Arch::Llama);
    let (a, b): (&[u32], &[u32]) = (&IDS, &IDS[2..8]);
    let o = obj(0.05, LossKind::Lm);
    // Reference: one graph for the whole step's objective, (Σ L_lm + α Σ L_skip) / all tokens.
    let n = (a.len() - 1) + (b.len() - 1);
    let la = sequence_loss(&m, a, &o, n).unwrap();
    let lb = sequence_loss(&m, b, &o, n).unwrap();
    let whole = (&la.objective + &lb.objective).unwrap();
    let want_loss = (la.lm_sum + lb.lm_sum + 0.05 * (la.skip_sum + lb.skip_sum)) / n as f64;
    assert!((whole.to_scalar::<f32>().unwrap() as f64 - want_loss).abs() < 1e-5);
    let store = whole.backward().unwrap();
    // Accumulated: one backward per sequence, summed.
    let acc = step_grads(&m, &params, &[a, b], &o).unwrap();
    assert!((acc.loss - want_loss).abs() < 1e-5);
    for (name, var) in &params.vars {
        let d = max_abs_diff(store.get(var.as_tensor()).unwrap(), &acc.grads[name]);
        assert!(d < 1e-6, "{name}: {d}");
    }
}

/// Three sequences of different lengths and contents (the tiny models route them with both decisions).
const BATCH: [&[u32]; 3] = [&IDS, &[9, 4, 33, 12, 27, 6, 15], &[1, 38, 20, 14, 25]];

/// Packing sequences into one pass (block-diagonal attention, positions restarting per sequence) gives each
/// sequence the logits, gates and decisions of its own pass.
#[test]
fn the_packed_forward_equals_one_forward_per_sequence() {
    for arch in [Arch::Llama, Arch::Qwen2, Arch::Qwen3] {
        for unit in [SkipUnit::Layer, SkipUnit::Ffn, SkipUnit::Attention] {
            let (_, m, _) = setup(arch);
            let routing = Routing {
                skip_unit: unit,
                ..Routing::default()
            };
            let packed = forward::forward_packed(&m, &BATCH, routing).unwrap();
            assert_eq!(packed.lens, vec![11, 7, 5]);
            let singles: Vec<_> = BATCH
                .iter()
                .map(|ids| forward::forward(&m, ids, routing).unwrap())
                .collect();
            let logits = Tensor::cat(&singles.iter().map(|s| s.logits(&m).unwrap()).collect::<Vec<_>>(), 0).unwrap();
            let d = max_abs_diff(&packed.logits(&m).unwrap(), &logits);
            assert!(d < 1e-5, "{arch:?} {unit:?}: logits differ by {d}");
            for (l, g) in packed.gates.iter().enumerate() {
                let want = Tensor::cat(&singles.iter().map(|s| s.gates[l].clone()).collect::<Vec<_>>(), 0).unwrap();
                assert!(
                    max_abs_diff(g, &want) < 1e-6,
                    "{arch:?} {unit:?}: gates of routed layer {l}"
                );
                let run: usize = singles.iter().map(|s| s.rows_run[l]).sum();
                assert_eq!(
                    packed.rows_run[l], run,
                    "{arch:?} {unit:?}: decisions of routed layer {l}"
                );
            }
            let layers: f64 = singles.iter().map(|s| s.layers_sum).sum();
            assert!((packed.layers_sum - layers).abs() < 1e-9);
            let skipped: usize = packed.rows_run.iter().map(|r| 23 - r).sum();
            assert!(
                skipped > 0 && skipped < 23 * packed.rows_run.len(),
                "{arch:?}: the test needs both decisions"
            );
            // The teacher continues the packed prefix as it continues each sequence's own.
            let first = packed.first_routed;
            let teacher = forward::teacher_logits(&m, packed.prefix.clone(), first, &packed.lens).unwrap();
            let want: Vec<Tensor> = singles
                .iter()
                .map(|s| forward::teacher_logits(&m, s.prefix.clone(), first, &s.lens).unwrap())
                .collect();
            assert!(max_abs_diff(&teacher, &Tensor::cat(&want, 0).unwrap()) < 1e-5);
        }
    }
}

/// The batched training step (sequences packed into one pass, one backward) equals the per-sequence step: the
/// same objective, logged terms and gradients, for every loss, skip unit and gate scaling.
#[test]
fn the_packed_step_equals_the_per_sequence_step() {
    use flexidepth::depth::GateScaling;
    for arch in [Arch::Llama, Arch::Qwen3] {
        for (unit, scaling) in [
            (SkipUnit::Layer, GateScaling::Released),
            (SkipUnit::Ffn, GateScaling::Released),
            (SkipUnit::Layer, GateScaling::Hard),
        ] {
            let (_, m, params) = setup(arch);
            let o = Objective {
                kind: LossKind::LmKl,
                alpha: 0.05,
                routing: Routing {
                    skip_unit: unit,
                    gate_scaling: scaling,
                    ..Routing::default()
                },
            };
            let one = step_grads(&m, &params, &BATCH, &o).unwrap();
            for batch in [2, 3] {
                let packed = flexidepth_train::step_grads_packed(&m, &params, &BATCH, &o, batch).unwrap();
                let what = format!("{arch:?} {unit:?} {scaling:?} batch {batch}");
                assert_eq!(packed.tokens, one.tokens);
                for (a, b, term) in [
                    (packed.loss, one.loss, "loss"),
                    (packed.lm, one.lm, "lm"),
                    (packed.kl, one.kl, "kl"),
                    (packed.skip, one.skip, "skip"),
                ] {
                    assert!((a - b).abs() < 1e-5 * b.abs().max(1.0), "{what}: {term} {a} vs {b}");
                }
                assert!((packed.layers - one.layers).abs() < 1e-9, "{what}: layers");
                assert_eq!(packed.grads.len(), one.grads.len());
                for (name, g) in &one.grads {
                    let scale: f32 = g.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
                    let d = max_abs_diff(&packed.grads[name], g);
                    assert!(
                        d <= 1e-4 * scale + 1e-7,
                        "{what}: {name} differs by {d} (max |g| {scale})"
                    );
                }
            }
        }
    }
}

fn write_data(dir: &std::path::Path) -> std::path::PathBuf {
    // Token strings of the tiny test tokenizer do not matter: the trainer is given token ids directly.
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join("unused.jsonl");
    std::fs::write(&p, "{\"text\":\"x\"}\n").unwrap();
    p
}

fn tiny_config(dir: &std::path::Path, batch: usize, accum: usize) -> TrainConfig {
    TrainConfig {
        model: "tiny".into(),
        data: write_data(dir),
        out: dir.join("run"),
        init: None,
        routed_layers: None,
        router_reduction: 4,
        proj_reduction: 4,
        seed: 7,
        max_len: 16,
        batch_size: batch,
        grad_accum: accum,
        lr: 1e-2,
        warmup_ratio: 0.03,
        max_grad_norm: 1.0,
        adam: Default::default(),
        loss: LossKind::LmKl,
        skip_threshold: 0.5,
        skip_unit: Default::default(),
        gate_scaling: Default::default(),
        log_every: 1,
        checkpoint_every: 2,
        save_dtype: "f32".into(),
        dmtd: None,
        stages: vec![
            Stage {
                name: "one".into(),
                alpha: 0.05,
                steps: Some(4),
                lr: None,
                ..Stage::train("", 0.0)
            },
            Stage {
                name: "two".into(),
                alpha: 0.01,
                steps: Some(3),
                lr: Some(5e-3),
                ..Stage::train("", 0.0)
            },
        ],
    }
}

fn sequences() -> Vec<Vec<u32>> {
    (0..6)
        .map(|i| (0..(6 + i)).map(|j| ((i * 7 + j * 5) % 40) as u32).collect())
        .collect()
}

fn trainer<'a>(m: &'a mut Model, c: &ModelConfig, cfg: TrainConfig) -> Trainer<'a> {
    let depth = to_tensors(&depth_weights(c, &ROUTED, 0));
    let params = DepthParams::from_tensors(&ROUTED, &depth).unwrap();
    let meta = DepthMeta::for_model(m, ROUTED.to_vec(), 4, 4).unwrap();
    Trainer::new(cfg, m, params, meta, sequences()).unwrap()
}

fn values(t: &Trainer) -> HashMap<String, Vec<f32>> {
    t.params()
        .tensors()
        .into_iter()
        .map(|(k, v)| (k, v.flatten_all().unwrap().to_vec1().unwrap()))
        .collect()
}

#[test]
fn batch_2b_equals_batch_b_with_accumulation_2() {
    // One frozen base per trainer: a trainer makes its parameters the model's routers.
    let ((c, mut ma, _), (_, mut mb, _)) = (setup(Arch::Qwen2), setup(Arch::Qwen2));
    let dir = tempfile::tempdir().unwrap();
    let stop = AtomicBool::new(false);
    let mut a = trainer(&mut ma, &c, tiny_config(&dir.path().join("a"), 2, 1));
    let mut b = trainer(&mut mb, &c, tiny_config(&dir.path().join("b"), 1, 2));
    assert_eq!(a.run(&stop, &mut |_| {}).unwrap(), Outcome::Finished);
    assert_eq!(b.run(&stop, &mut |_| {}).unwrap(), Outcome::Finished);
    let (va, vb) = (values(&a), values(&b));
    for (k, x) in &va {
        let d = x.iter().zip(&vb[k]).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
        assert!(d < 1e-6, "{k}: {d}");
    }
    assert_eq!(a.log().len(), 7);
    for (ra, rb) in a.log().iter().zip(b.log()) {
        assert!((ra.loss - rb.loss).abs() < 1e-6 && (ra.layers - rb.layers).abs() < 1e-9);
    }
    // Training moved the parameters, and the run wrote its outputs.
    let start = to_tensors(&depth_weights(&c, &ROUTED, 0));
    let moved = va.iter().any(|(k, v)| {
        let s: Vec<f32> = start[k].flatten_all().unwrap().to_vec1().unwrap();
        s.iter().zip(v).any(|(p, q)| p != q)
    });
    assert!(moved);
    for f in [
        "depth.safetensors",
        "one.safetensors",
        "two.safetensors",
        "log.csv",
        "checkpoint.safetensors",
    ] {
        assert!(dir.path().join("a/run").join(f).exists(), "{f}");
    }
}

#[test]
fn an_interrupted_run_resumes_to_the_same_result() {
    let (c, mut m_whole, _) = setup(Arch::Llama);
    let (mut m_first, mut m_second, mut m_other) = (setup(Arch::Llama).1, setup(Arch::Llama).1, setup(Arch::Llama).1);
    let dir = tempfile::tempdir().unwrap();
    let never = AtomicBool::new(false);
    let mut whole = trainer(&mut m_whole, &c, tiny_config(&dir.path().join("whole"), 2, 1));
    whole.run(&never, &mut |_| {}).unwrap();

    // Stop after step 5 (inside the second stage, between checkpoints), as Ctrl-C would.
    let cfg = tiny_config(&dir.path().join("split"), 2, 1);
    let stop = AtomicBool::new(false);
    let mut first = trainer(&mut m_first, &c, cfg.clone());
    let outcome = first
        .run(&stop, &mut |e| {
            if let Event::Step(row) = e {
                if row.step == 5 {
                    stop.store(true, Ordering::SeqCst);
                }
            }
        })
        .unwrap();
    assert_eq!(outcome, Outcome::Interrupted);
    assert_eq!(first.state().global_step, 5);
    drop(first);

    // A new process: fresh parameters from the same start, then the checkpoint.
    let mut second = trainer(&mut m_second, &c, cfg);
    second.resume().unwrap();
    assert_eq!(second.state().global_step, 5);
    assert_eq!(second.log().len(), 5);
    assert_eq!(second.run(&never, &mut |_| {}).unwrap(), Outcome::Finished);
    assert_eq!(
        values(&second),
        values(&whole),
        "resumed run differs from the unbroken one"
    );
    let losses = |t: &Trainer| t.log().iter().map(|r| r.loss).collect::<Vec<_>>();
    assert_eq!(losses(&second), losses(&whole));

    // A checkpoint from another config is refused.
    let mut other_cfg = tiny_config(&dir.path().join("split"), 2, 1);
    other_cfg.lr = 3e-3;
    let mut other = trainer(&mut m_other, &c, other_cfg);
    assert!(other.resume().unwrap_err().to_string().contains("different config"));
}

#[test]
fn forced_full_depth_matches_the_teacher() {
    // With every routed layer run and unscaled, the model is the base: KL against the teacher is zero. This pins the
    // teacher path (layers above the first routed one, from the shared prefix).
    let (_, m, _) = setup(Arch::Qwen3);
    let first = 1;
    let prefix = forward::forward(&m, &IDS, Routing::default()).unwrap().prefix;
    let teacher = forward::teacher_logits(&m, prefix, first, &[IDS.len()]).unwrap();
    let mut cache = m.new_cache(IDS.len());
    let run = FlexiDepth::with_mode(DepthMode::Run);
    let base = m.forward_with(&IDS, &mut cache, Logits::All, &run).unwrap();
    assert!(max_abs_diff(&teacher, &base.logits) < 1e-5);
}

/// The staged recipe (local fit → router start → end-to-end) runs from one config, writes its reports, and a run
/// stopped after the local fit resumes to exactly the unbroken run's result.
#[test]
fn the_staged_recipe_runs_and_resumes_exactly() {
    use flexidepth_train::config::{LabelKind, StageKind};
    let staged = |dir: &std::path::Path| {
        let mut cfg = tiny_config(dir, 2, 1);
        cfg.stages = vec![
            Stage {
                kind: StageKind::LocalFit,
                tokens: Some(40),
                fit_epochs: Some(2),
                compare_units: true,
                ..Stage::train("fit", 0.0)
            },
            Stage {
                kind: StageKind::RouterStart,
                label: Some(LabelKind::Local),
                tokens: Some(40),
                fit_epochs: Some(3),
                ..Stage::train("routers", 0.0)
            },
            Stage {
                steps: Some(2),
                ..Stage::train("e2e", 0.01)
            },
        ];
        cfg
    };
    let dir = tempfile::tempdir().unwrap();
    let (c, mut ma, _) = setup(Arch::Llama);
    let mut a = trainer(&mut ma, &c, staged(&dir.path().join("a")));
    let before = values(&a);
    let stop = AtomicBool::new(false);
    let mut fits = 0;
    assert_eq!(
        a.run(&stop, &mut |e| {
            if let Event::LocalFit { report, .. } = e {
                fits += report.rows.len();
            }
        })
        .unwrap(),
        Outcome::Finished
    );
    assert_eq!(fits, 2 * ROUTED.len(), "both units reported");
    let after = values(&a);
    let adapter = "model.layers.1.router_proj.up_proj.weight";
    let router = "model.layers.1.router.router_head.weight";
    assert_ne!(before[adapter], after[adapter], "the local fit changed the adapter");
    assert_ne!(before[router], after[router], "the router start changed the router");
    let out = dir.path().join("a/run");
    for f in [
        "fit.replaceability.md",
        "fit.replaceability.csv",
        "routers.routers.md",
        "fit.safetensors",
        "depth.safetensors",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    assert_eq!(a.state().global_step, 2);

    let (_, mut mb, _) = setup(Arch::Llama);
    let mut b = trainer(&mut mb, &c, staged(&dir.path().join("b")));
    let stop = AtomicBool::new(false);
    let outcome = b
        .run(&stop, &mut |e| {
            if let Event::Checkpoint { .. } = e {
                stop.store(true, Ordering::SeqCst);
            }
        })
        .unwrap();
    assert_eq!(outcome, Outcome::Interrupted);
    assert_eq!(b.state().stage, 1, "stopped after the local fit");
    let (_, mut mc, _) = setup(Arch::Llama);
    let mut resumed = trainer(&mut mc, &c, staged(&dir.path().join("b")));
    resumed.resume().unwrap();
    let stop = AtomicBool::new(false);
    assert_eq!(resumed.run(&stop, &mut |_| {}).unwrap(), Outcome::Finished);
    assert_eq!(values(&resumed), after, "resumed run equals the unbroken one");
}
