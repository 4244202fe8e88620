//! DMTD training (spec B3) on tiny random models: the cyclical-masking forward equals a loop over positions with a
//! KV cache; the trainer's low-rank deltas compute what the engine's merged delta file computes; bad delta files
//! are refused; a DMTD run lowers its loss and resumes exactly; (the per-offset quality: flexidepth-experiments' tests/dmtd_quality.rs).

#[path = "../../flexidepth/tests/common/mod.rs"]
mod common;

use candle_core::{Device, Tensor, Var};
use common::tiny::{config, model_from, values, weights};
use flexidepth::config::Arch;
use flexidepth::depth::file::DepthMeta;
use flexidepth::depth::FullDepth;
use flexidepth::dmtd::delta::{merge_delta_file, write_delta_file, DeltaMeta};
use flexidepth::dmtd::masked::cyclical_forward;
use flexidepth::dmtd::DmtdLayout;
use flexidepth::model::ops::Fused;
use flexidepth::model::{ForwardCtx, Model};
use flexidepth_train::config::{StageKind, TrainConfig};
use flexidepth_train::dmtd::{dmtd_batch_loss, DmtdConfig, DmtdSetup};
use flexidepth_train::loss::LossKind;
use flexidepth_train::params::DepthParams;
use flexidepth_train::{Event, Outcome, Trainer};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};

const IDS: [u32; 11] = [3, 17, 5, 39, 0, 22, 8, 11, 30, 2, 19];

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar().unwrap()
}

/// Logits `[n, vocab]` of cyclical masking computed one position at a time through the KV cache: position p runs
/// the encoding and thinking layers, then the decoding layers on `e + t` at a head (`p mod τ == 0`) and on `e`
/// elsewhere, attending to the cached K/V of every earlier position.
fn loop_reference(model: &Model, ids: &[u32], layout: &DmtdLayout) -> Tensor {
    let mut cache = model.new_cache(ids.len());
    let mut rows = Vec::new();
    for (p, &id) in ids.iter().enumerate() {
        cache.reserve(p + 1).unwrap();
        let ctx = ForwardCtx::new(model, p, 1).unwrap();
        let mut run = |x: Tensor, layers| {
            model
                .run_layers(&Fused, x, layers, &ctx, Some(&mut cache), &FullDepth)
                .unwrap()
                .hidden
        };
        let e = run(model.embed(&[id]).unwrap(), layout.encoding());
        let t = run(e.clone(), layout.thinking());
        let s0 = if layout.mtp_horizon == 1 {
            t // τ = 1: the base model (the decoder's convention)
        } else if p % layout.mtp_horizon == 0 {
            (&e + &t).unwrap()
        } else {
            e
        };
        let s = run(s0, layout.decoding());
        rows.push(model.head(&Fused, &s).unwrap());
        cache.set_len(p + 1);
    }
    Tensor::cat(&rows, 0).unwrap()
}

#[test]
fn cyclical_forward_equals_a_loop_over_positions() {
    for arch in [Arch::Llama, Arch::Qwen3] {
        let c = config(arch);
        let m = model_from(&c, &weights(&c));
        for (e, d, tau) in [(0, 1, 2), (0, 2, 3), (1, 1, 3), (0, 1, 1)] {
            let layout = DmtdLayout::new(3, e, d, tau).unwrap();
            let pass = cyclical_forward(&m, &Fused, &Fused, &[&IDS], &layout).unwrap();
            let got = m.head(&Fused, &pass.hidden).unwrap();
            let want = loop_reference(&m, &IDS, &layout);
            let diff = max_abs_diff(&got, &want);
            assert!(diff < 1e-4, "{arch:?} E{e} D{d} τ{tau}: {diff}");
            // Two sequences packed: each starts its own cycle at its first row.
            let (a, b) = (&IDS[..5], &IDS[5..]);
            let packed = cyclical_forward(&m, &Fused, &Fused, &[a, b], &layout).unwrap();
            let got = m.head(&Fused, &packed.hidden).unwrap();
            let want = Tensor::cat(&[loop_reference(&m, a, &layout), loop_reference(&m, b, &layout)], 0).unwrap();
            assert!(max_abs_diff(&got, &want) < 1e-4, "{arch:?} packed");
        }
        // τ = 1 is full depth exactly; with τ = 2 the non-head rows differ from it.
        let full = m
            .forward_ops(&Fused, &IDS, None, flexidepth::model::Logits::All, &FullDepth)
            .unwrap()
            .logits;
        let one = DmtdLayout::new(3, 0, 1, 1).unwrap();
        let pass = cyclical_forward(&m, &Fused, &Fused, &[&IDS], &one).unwrap();
        assert!(max_abs_diff(&m.head(&Fused, &pass.hidden).unwrap(), &full) < 1e-5);
        let layout = DmtdLayout::new(3, 0, 1, 2).unwrap();
        let cyc = m
            .head(
                &Fused,
                &cyclical_forward(&m, &Fused, &Fused, &[&IDS], &layout).unwrap().hidden,
            )
            .unwrap();
        let full = m
            .forward_ops(&Fused, &IDS, None, flexidepth::model::Logits::All, &FullDepth)
            .unwrap()
            .logits;
        assert!(max_abs_diff(&cyc.narrow(0, 1, 1).unwrap(), &full.narrow(0, 1, 1).unwrap()) > 1e-3);
    }
}

fn dmtd_config(tau: usize, rank: usize) -> DmtdConfig {
    DmtdConfig {
        mtp_horizon: tau,
        num_decoding_layers: 1,
        num_encoding_layers: 0,
        rank,
        lora_alpha: 8.0,
        targets: flexidepth::dmtd::delta::TARGETS.iter().map(|s| s.to_string()).collect(),
    }
}

/// Deltas with a non-zero B (a fresh B is zero and would test nothing).
fn random_deltas(m: &Model, setup: &DmtdSetup) -> BTreeMap<String, Var> {
    let vars = flexidepth_train::lora::fresh_lora(m, &setup.layers, &setup.targets, setup.rank, 3).unwrap();
    for (i, (name, v)) in vars.iter().enumerate() {
        if name.contains("lora_B") {
            let t = Tensor::from_vec(values(v.elem_count(), 50 + i as u64, 0.3), v.dims(), &Device::Cpu).unwrap();
            v.set(&t).unwrap();
        }
    }
    vars
}

fn tensors(vars: &BTreeMap<String, Var>) -> HashMap<String, Tensor> {
    vars.iter().map(|(k, v)| (k.clone(), v.as_tensor().detach())).collect()
}

#[test]
fn trained_deltas_equal_the_merged_file() {
    for arch in [Arch::Llama, Arch::Qwen2] {
        let c = config(arch);
        let m = model_from(&c, &weights(&c));
        let setup = DmtdSetup::new(&dmtd_config(2, 3), 3).unwrap();
        let vars = random_deltas(&m, &setup);
        let ops = setup.ops(&m, &vars).unwrap();
        let trained = cyclical_forward(&m, &Fused, &ops, &[&IDS], &setup.layout)
            .unwrap()
            .hidden;
        let base = cyclical_forward(&m, &Fused, &Fused, &[&IDS], &setup.layout)
            .unwrap()
            .hidden;
        assert!(max_abs_diff(&trained, &base) > 1e-3, "the deltas change nothing");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dmtd.safetensors");
        let meta = DeltaMeta::for_model(
            &m,
            "tiny",
            setup.layout,
            3,
            8.0,
            setup.layers.clone(),
            setup.targets.clone(),
        )
        .unwrap();
        write_delta_file(&path, &meta, &tensors(&vars), candle_core::DType::F32).unwrap();
        let mut merged = model_from(&c, &weights(&c));
        let read = merge_delta_file(&mut merged, &path).unwrap();
        assert_eq!(read, meta);
        let got = cyclical_forward(&merged, &Fused, &Fused, &[&IDS], &setup.layout)
            .unwrap()
            .hidden;
        let diff = max_abs_diff(&got, &trained);
        assert!(diff < 1e-4, "{arch:?}: merged vs trained {diff}");
    }
}

#[test]
fn bad_delta_files_are_refused() {
    let c = config(Arch::Llama);
    let m = model_from(&c, &weights(&c));
    let setup = DmtdSetup::new(&dmtd_config(2, 2), 3).unwrap();
    let vars = random_deltas(&m, &setup);
    let meta = DeltaMeta::for_model(
        &m,
        "tiny",
        setup.layout,
        2,
        8.0,
        setup.layers.clone(),
        setup.targets.clone(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.safetensors");
    write_delta_file(&path, &meta, &tensors(&vars), candle_core::DType::F32).unwrap();
    // Another base: a Qwen3 of other sizes.
    let other = config(Arch::Qwen3);
    let mut m2 = model_from(&other, &weights(&other));
    let err = merge_delta_file(&mut m2, &path).unwrap_err().to_string();
    assert!(err.contains("trained on 'tiny'"), "{err}");
    // A wrong shape: metadata claiming rank 3 for rank-2 tensors.
    let bad_meta = DeltaMeta {
        rank: 3,
        ..meta.clone()
    };
    write_delta_file(&path, &bad_meta, &tensors(&vars), candle_core::DType::F32).unwrap();
    let mut m3 = model_from(&c, &weights(&c));
    assert!(merge_delta_file(&mut m3, &path).is_err());
    // A missing tensor.
    let mut fewer = tensors(&vars);
    fewer.remove(&flexidepth::dmtd::delta::lora_names(2, "mlp.up_proj").0);
    write_delta_file(&path, &meta, &fewer, candle_core::DType::F32).unwrap();
    assert!(merge_delta_file(&mut m3, &path).is_err());
    // A NaN is never written.
    let mut nan = tensors(&vars);
    let name = flexidepth::dmtd::delta::lora_names(2, "self_attn.q_proj").1;
    nan.insert(name.clone(), (nan[&name].clone() * f64::NAN).unwrap());
    assert!(write_delta_file(&path, &meta, &nan, candle_core::DType::F32).is_err());
    // Not a delta file at all.
    std::fs::write(&path, b"not safetensors").unwrap();
    assert!(merge_delta_file(&mut m3, &path).is_err());
}

fn sequences() -> Vec<Vec<u32>> {
    (0..6)
        .map(|i| (0..(7 + i)).map(|j| ((i * 7 + j * 5) % 40) as u32).collect())
        .collect()
}

fn run_config(dir: &std::path::Path, steps: usize) -> TrainConfig {
    std::fs::create_dir_all(dir).unwrap();
    let data = dir.join("unused.jsonl");
    std::fs::write(&data, "{\"text\":\"x\"}\n").unwrap();
    let text = format!(
        "model = \"tiny\"\ndata = {data:?}\nout = {:?}\nlr = 0.02\nbatch_size = 2\ncheckpoint_every = 1\nloss = \"lm+kl\"\n\
         [dmtd]\nmtp_horizon = 2\nnum_decoding_layers = 1\nrank = 4\n\
         [[stage]]\nname = \"dmtd\"\nkind = \"dmtd\"\nsteps = {steps}\n",
        dir.join("run")
    );
    let c = TrainConfig::from_toml(std::path::Path::new("t.toml"), &text).unwrap();
    assert_eq!(c.stages[0].kind, StageKind::Dmtd);
    c
}

fn dmtd_trainer<'a>(m: &'a mut Model, cfg: TrainConfig) -> Trainer<'a> {
    let setup = DmtdSetup::new(cfg.dmtd.as_ref().unwrap(), 3).unwrap();
    let vars = flexidepth_train::lora::fresh_lora(m, &setup.layers, &setup.targets, setup.rank, cfg.seed).unwrap();
    let params = DepthParams {
        routed_layers: Vec::new(),
        vars,
    };
    let meta = DepthMeta::for_model(m, Vec::new(), 1, 1).unwrap();
    Trainer::new(cfg, m, params, meta, sequences()).unwrap()
}

fn train_loss(m: &Model, vars: &BTreeMap<String, Var>, cfg: &TrainConfig) -> f64 {
    let setup = DmtdSetup::new(cfg.dmtd.as_ref().unwrap(), 3).unwrap();
    let ops = setup.ops(m, vars).unwrap();
    let seqs = sequences();
    let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
    let n: usize = refs.iter().map(|s| s.len() - 1).sum();
    let l = dmtd_batch_loss(m, &ops, &setup, &refs, LossKind::LmKl, n).unwrap();
    l.objective.to_scalar::<f32>().unwrap() as f64
}

#[test]
fn a_dmtd_run_lowers_its_loss_and_resumes_exactly() {
    let c = config(Arch::Llama);
    let dir = tempfile::tempdir().unwrap();
    let stop = AtomicBool::new(false);
    let mut m = model_from(&c, &weights(&c));
    let cfg = run_config(&dir.path().join("whole"), 8);
    let mut whole = dmtd_trainer(&mut m, cfg.clone());
    let before = train_loss(&model_from(&c, &weights(&c)), &whole.params().vars, &cfg);
    assert_eq!(whole.run(&stop, &mut |_| {}).unwrap(), Outcome::Finished);
    let m_ref = model_from(&c, &weights(&c));
    let after = train_loss(&m_ref, &whole.params().vars, &cfg);
    assert!(after < before - 1e-3, "loss {before} → {after}");
    let out = cfg.out.join("dmtd.safetensors");
    let mut merged = model_from(&c, &weights(&c));
    assert_eq!(merge_delta_file(&mut merged, &out).unwrap().layout.mtp_horizon, 2);
    // The same run stopped after 3 steps and resumed.
    let split_cfg = run_config(&dir.path().join("split"), 8);
    let mut m1 = model_from(&c, &weights(&c));
    let mut first = dmtd_trainer(&mut m1, split_cfg.clone());
    let stop_early = AtomicBool::new(false);
    let outcome = first
        .run(&stop_early, &mut |e| {
            if let Event::Step(r) = e {
                if r.step == 3 {
                    stop_early.store(true, Ordering::SeqCst);
                }
            }
        })
        .unwrap();
    assert_eq!(outcome, Outcome::Interrupted);
    let mut m2 = model_from(&c, &weights(&c));
    let mut second = dmtd_trainer(&mut m2, split_cfg);
    second.resume().unwrap();
    assert_eq!(second.state().global_step, 3);
    assert_eq!(second.run(&stop, &mut |_| {}).unwrap(), Outcome::Finished);
    for (name, v) in &whole.params().vars {
        let diff = max_abs_diff(v.as_tensor(), second.params().vars[name].as_tensor());
        assert!(diff < 1e-6, "{name}: {diff}");
    }
}
