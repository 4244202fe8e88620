//! Training refuses what can only fail or diverge, before any work (hyper-parameters out of their domains, stage
//! names that cannot be file names), stops at the first non-finite number without writing it, and resumes only
//! from a checkpoint whose tensors match their checksum, are finite, and whose state fits the config.

#[path = "../../flexidepth/tests/common/mod.rs"]
mod common;

use common::tiny::{config, depth_weights, model_from, to_tensors, weights};
use flexidepth::config::{Arch, ModelConfig};
use flexidepth::depth::file::DepthMeta;
use flexidepth::model::Model;
use flexidepth_train::checkpoint::{checksum, STATE_KEY};
use flexidepth_train::config::{Stage, TrainConfig};
use flexidepth_train::loss::LossKind;
use flexidepth_train::params::DepthParams;
use flexidepth_train::{Event, Outcome, Trainer};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

const ROUTED: [usize; 2] = [1, 2];

fn base_config(dir: &Path) -> TrainConfig {
    std::fs::create_dir_all(dir).unwrap();
    let data = dir.join("unused.jsonl");
    std::fs::write(&data, "{\"text\":\"x\"}\n").unwrap();
    TrainConfig {
        model: "tiny".into(),
        data,
        out: dir.join("run"),
        init: None,
        routed_layers: None,
        router_reduction: 4,
        proj_reduction: 4,
        seed: 7,
        max_len: 16,
        batch_size: 2,
        grad_accum: 1,
        lr: 1e-2,
        warmup_ratio: 0.0,
        max_grad_norm: 1.0,
        adam: Default::default(),
        loss: LossKind::Lm,
        skip_threshold: 0.5,
        skip_unit: Default::default(),
        gate_scaling: Default::default(),
        log_every: 1,
        checkpoint_every: 1,
        save_dtype: "f32".into(),
        dmtd: None,
        stages: vec![
            Stage {
                steps: Some(2),
                ..Stage::train("one", 0.05)
            },
            Stage {
                steps: Some(2),
                ..Stage::train("two", 0.01)
            },
        ],
    }
}

fn sequences() -> Vec<Vec<u32>> {
    (0..4)
        .map(|i| (0..(6 + i)).map(|j| ((i * 7 + j * 5) % 40) as u32).collect())
        .collect()
}

fn model() -> (ModelConfig, Model) {
    let c = config(Arch::Llama);
    let m = model_from(&c, &weights(&c));
    (c, m)
}

fn trainer_with(m: &mut Model, cfg: TrainConfig, depth: HashMap<String, candle_core::Tensor>) -> Trainer<'_> {
    let params = DepthParams::from_tensors(&ROUTED, &depth).unwrap();
    let meta = DepthMeta::for_model(m, ROUTED.to_vec(), 4, 4).unwrap();
    Trainer::new(cfg, m, params, meta, sequences()).unwrap()
}

fn trainer<'a>(m: &'a mut Model, c: &ModelConfig, cfg: TrainConfig) -> Trainer<'a> {
    trainer_with(m, cfg, to_tensors(&depth_weights(c, &ROUTED, 0)))
}

fn values(t: &Trainer) -> Vec<(String, Vec<f32>)> {
    let mut v: Vec<_> = t
        .params()
        .tensors()
        .into_iter()
        .map(|(k, v)| (k, v.flatten_all().unwrap().to_vec1().unwrap()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn hyper_parameters_out_of_their_domains_are_refused_up_front() {
    let dir = tempfile::tempdir().unwrap();
    type Mutation = Box<dyn Fn(&mut TrainConfig)>;
    let cases: Vec<(&str, Mutation)> = vec![
        ("adam.beta1", Box::new(|c| c.adam.beta1 = 1.0)),
        ("adam.beta2", Box::new(|c| c.adam.beta2 = f64::NAN)),
        ("adam.eps", Box::new(|c| c.adam.eps = 0.0)),
        ("adam.weight_decay", Box::new(|c| c.adam.weight_decay = f64::INFINITY)),
        ("max_grad_norm", Box::new(|c| c.max_grad_norm = -1.0)),
        ("skip_threshold", Box::new(|c| c.skip_threshold = f32::NAN)),
        ("lr must be", Box::new(|c| c.stages[1].lr = Some(f64::NAN))),
        ("epochs", Box::new(|c| c.stages[0].epochs = f64::NAN)),
        ("epochs", Box::new(|c| c.stages[0].epochs = f64::INFINITY)),
        ("steps", Box::new(|c| c.stages[0].steps = Some(usize::MAX))),
        ("batch_size", Box::new(|c| c.batch_size = usize::MAX)),
        ("batch_size × grad_accum", Box::new(|c| c.grad_accum = 1 << 16)),
        ("max_len", Box::new(|c| c.max_len = usize::MAX)),
        ("routed_layers", Box::new(|c| c.routed_layers = Some("9..x".into()))),
        ("1 to 64", Box::new(|c| c.stages[0].name = "s".repeat(300))),
        ("two stages are named", Box::new(|c| c.stages[1].name = "one".into())),
    ];
    for (want, mutate) in cases {
        let mut c = base_config(dir.path());
        mutate(&mut c);
        let e = c
            .validate()
            .err()
            .unwrap_or_else(|| panic!("accepted: {want}"))
            .to_string();
        assert!(e.contains(want), "{want}: {e}");
    }
    assert!(base_config(dir.path()).validate().is_ok());
}

/// A router that computes NaN: the run stops at its first step with an error naming it, and writes no adapter and
/// no checkpoint.
#[test]
fn a_non_finite_loss_stops_the_run_and_nothing_non_finite_is_written() {
    let (c, mut m) = model();
    let dir = tempfile::tempdir().unwrap();
    let cfg = base_config(dir.path());
    let mut depth = to_tensors(&depth_weights(&c, &ROUTED, 0));
    let head = "model.layers.1.router.router_head.weight";
    let n = depth[head].elem_count();
    depth.insert(
        head.into(),
        candle_core::Tensor::from_vec(vec![f32::NAN; n], depth[head].dims(), &candle_core::Device::Cpu).unwrap(),
    );
    let mut t = trainer_with(&mut m, cfg.clone(), depth);
    let e = t.run(&AtomicBool::new(false), &mut |_| {}).unwrap_err().to_string();
    assert!(e.contains("training diverged at stage 'one' step 1"), "{e}");
    for f in ["one.safetensors", "depth.safetensors", "checkpoint.safetensors"] {
        assert!(!cfg.out.join(f).exists(), "{f} was written");
    }
    assert!(t.write_depth(&cfg.out.join("x.safetensors")).is_err());
}

/// Stop a run after `step`, as Ctrl-C would; its checkpoint is left in `cfg.out`.
fn interrupted_run(cfg: &TrainConfig, step: usize) {
    let (c, mut m) = model();
    let mut t = trainer(&mut m, &c, cfg.clone());
    let stop = AtomicBool::new(false);
    let outcome = t
        .run(&stop, &mut |e| {
            if let Event::Step(row) = e {
                if row.step == step {
                    stop.store(true, Ordering::SeqCst);
                }
            }
        })
        .unwrap();
    assert_eq!(outcome, Outcome::Interrupted);
}

fn resume_error(cfg: &TrainConfig) -> String {
    let (c, mut m) = model();
    let mut t = trainer(&mut m, &c, cfg.clone());
    t.resume().unwrap_err().to_string()
}

/// Rewrite the checkpoint with `edit` applied to its tensors and run-state JSON; `fix_checksum` recomputes the
/// checksum (a deliberate edit), else the old one stays (damage).
fn rewrite_checkpoint(
    path: &Path,
    fix_checksum: bool,
    edit: impl Fn(&mut HashMap<String, candle_core::Tensor>, &mut serde_json::Value),
) {
    let bytes = std::fs::read(path).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut state: serde_json::Value = serde_json::from_str(&header.metadata().as_ref().unwrap()[STATE_KEY]).unwrap();
    let mut tensors = candle_core::safetensors::load_buffer(&bytes, &candle_core::Device::Cpu).unwrap();
    edit(&mut tensors, &mut state);
    if fix_checksum {
        let views: Vec<(&str, &dyn safetensors::View)> = tensors
            .iter()
            .map(|(k, t)| (k.as_str(), t as &dyn safetensors::View))
            .collect();
        state["tensors_sha256"] = serde_json::json!(checksum(views.into_iter()));
    }
    let meta = HashMap::from([(STATE_KEY.to_string(), state.to_string())]);
    std::fs::write(path, safetensors::serialize(&tensors, Some(meta)).unwrap()).unwrap();
}

#[test]
fn damaged_and_inconsistent_checkpoints_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = base_config(dir.path());
    interrupted_run(&cfg, 1);
    let ckpt = cfg.out.join("checkpoint.safetensors");
    let good = std::fs::read(&ckpt).unwrap();

    // One flipped byte in a tensor's data.
    let mut flipped = good.clone();
    let last = flipped.len() - 3;
    flipped[last] ^= 0x40;
    std::fs::write(&ckpt, &flipped).unwrap();
    assert!(resume_error(&cfg).contains("checksum"));

    // A NaN moment, with a matching checksum.
    std::fs::write(&ckpt, &good).unwrap();
    rewrite_checkpoint(&ckpt, true, |t, _| {
        let k = t.keys().find(|k| k.starts_with("adam_v.")).unwrap().clone();
        t.insert(k.clone(), (&t[&k] * f64::NAN).unwrap());
    });
    let e = resume_error(&cfg);
    assert!(e.contains("non-finite") && e.contains("adam_v."), "{e}");

    // Run states out of range: a step past the stage (used to spin forever), a stage past the last (used to mark
    // the run as done), a global step that does not add up.
    for (key, value, want) in [
        ("stage_step", 1_000_000_000u64, "step 1000000000 of stage 0"),
        ("stage", 99, "stage 99 of a run with 2 stages"),
        ("global_step", 7, "global step 7"),
    ] {
        std::fs::write(&ckpt, &good).unwrap();
        rewrite_checkpoint(&ckpt, false, |_, s| s["state"][key] = serde_json::json!(value));
        let e = resume_error(&cfg);
        assert!(e.contains(want), "{key}: {e}");
    }
    std::fs::write(&ckpt, &good).unwrap();
    let (c, mut m) = model();
    assert!(trainer(&mut m, &c, cfg.clone()).resume().is_ok());
}

/// A run stopped right at the end of a stage resumes to exactly the unbroken run's result (the next stage starts
/// from fresh optimizer moments, not the checkpoint's).
#[test]
fn a_run_stopped_at_a_stage_boundary_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (c, mut m) = model();
    let mut whole = trainer(&mut m, &c, base_config(&dir.path().join("whole")));
    assert_eq!(
        whole.run(&AtomicBool::new(false), &mut |_| {}).unwrap(),
        Outcome::Finished
    );
    let cfg = base_config(&dir.path().join("split"));
    interrupted_run(&cfg, 2);
    let (_, mut m2) = model();
    let mut resumed = trainer(&mut m2, &c, cfg);
    resumed.resume().unwrap();
    assert_eq!(resumed.state().stage, 1);
    assert_eq!(
        resumed.run(&AtomicBool::new(false), &mut |_| {}).unwrap(),
        Outcome::Finished
    );
    assert_eq!(values(&resumed), values(&whole));
}
