//! `eval::depth_quality` on a tiny random model with routers: full depth against itself is exact (KL 0, agreement
//! 1, ratio 1), and skipping settings match a plain loop over two `forward_with` calls per window.

#[path = "../../flexidepth/tests/common/mod.rs"]
mod common;

use common::tiny::{config, depth_weights, model_from, to_tensors, weights};
use flexidepth::config::Arch;
use flexidepth::depth::file::load_parts;
use flexidepth::depth::{DepthMode, FlexiDepth, SkipUnit};
use flexidepth::model::{Logits, Model};
use flexidepth::weights::{SafetensorsFiles, WeightSource};
use flexidepth_experiments::eval::{depth_quality, DepthQuality};

const ROUTED: [usize; 2] = [1, 2];

/// Two windows of different lengths, so that token weighting matters.
fn windows() -> Vec<Vec<u32>> {
    vec![vec![3, 17, 5, 39, 0, 22, 8, 11, 30, 2, 19], vec![7, 1, 33, 12, 4, 25]]
}

fn routed_model(arch: Arch) -> Model {
    let c = config(arch);
    let mut m = model_from(&c, &weights(&c));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("depth.safetensors");
    candle_core::safetensors::save(&to_tensors(&depth_weights(&c, &ROUTED, 0)), &path).unwrap();
    let src = WeightSource::Safetensors(SafetensorsFiles::open(vec![path]).unwrap());
    m.attach_depth(
        load_parts(&src, &c, &ROUTED, &candle_core::Device::Cpu).unwrap(),
        flexidepth::depth::Routing::default(),
    )
    .unwrap();
    m
}

fn settings(mode: DepthMode) -> FlexiDepth {
    FlexiDepth {
        mode,
        skip_threshold: Some(0.5),
        skip_kv: true,
        unit: Some(SkipUnit::Layer),
        gate_scaling: None,
    }
}

fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
    let lse = max + row.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
    row.iter().map(|&x| x as f64 - lse).collect()
}

fn argmax(row: &[f64]) -> usize {
    (0..row.len()).fold(0, |b, i| if row[i] > row[b] { i } else { b })
}

/// The reference: (full NLL, flexi NLL, KL, agreement, layers) summed over positions, and the position count.
fn reference(m: &Model, windows: &[Vec<u32>], s: &FlexiDepth) -> ([f64; 5], usize) {
    let full = settings(DepthMode::Run);
    let mut acc = [0.0; 5];
    let mut n = 0;
    for ids in windows {
        let inputs = &ids[..ids.len() - 1];
        let logits = |s: &FlexiDepth| {
            let mut cache = m.new_cache(inputs.len());
            let out = m.forward_with(inputs, &mut cache, Logits::All, s).unwrap();
            (out.logits.to_vec2::<f32>().unwrap(), out.routing())
        };
        let (p, _) = logits(&full);
        let (q, routing) = logits(s);
        for t in 0..inputs.len() {
            let (lp, lq) = (log_softmax(&p[t]), log_softmax(&q[t]));
            let target = ids[t + 1] as usize;
            acc[0] -= lp[target];
            acc[1] -= lq[target];
            acc[2] += lp.iter().zip(&lq).map(|(a, b)| a.exp() * (a - b)).sum::<f64>();
            acc[3] += (argmax(&lp) == argmax(&lq)) as usize as f64;
            acc[4] += (m.config.num_hidden_layers - routing.len()) as f64;
            acc[4] += routing.iter().filter(|r| r.run[t]).count() as f64;
            n += 1;
        }
    }
    (acc, n)
}

fn close(a: f64, b: f64, what: &str) {
    assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{what}: {a} vs reference {b}");
}

#[test]
fn full_depth_against_itself_is_exact() {
    let m = routed_model(Arch::Llama);
    let q = depth_quality(&m, &windows(), &settings(DepthMode::Run)).unwrap();
    assert_eq!(q.windows, 2);
    assert_eq!(q.n_predicted, 15);
    assert_eq!(q.mean_kl, 0.0);
    assert_eq!(q.top1_agreement, 1.0);
    assert_eq!(q.ppl_ratio, 1.0);
    assert_eq!(q.full_ppl, q.flexi_ppl);
    assert_eq!(q.mean_layers, 3.0);
    assert_eq!(q.policy, "flexi:run");
}

#[test]
fn skipping_matches_the_reference_loop() {
    for arch in [Arch::Llama, Arch::Qwen2, Arch::Qwen3] {
        let m = routed_model(arch);
        for mode in [DepthMode::Dynamic, DepthMode::Skip] {
            let s = settings(mode);
            let q: DepthQuality = depth_quality(&m, &windows(), &s).unwrap();
            let (r, n) = reference(&m, &windows(), &s);
            let n_f = n as f64;
            assert_eq!(q.n_predicted, n);
            close(q.full_mean_nll, r[0] / n_f, "full NLL");
            close(q.flexi_mean_nll, r[1] / n_f, "flexi NLL");
            close(q.mean_kl, r[2] / n_f, "KL");
            close(q.top1_agreement, r[3] / n_f, "agreement");
            close(q.mean_layers, r[4] / n_f, "layers");
            close(q.ppl_ratio, q.flexi_ppl / q.full_ppl, "ratio");
            assert!(q.mean_kl > 0.0, "{arch:?} {mode:?}: skipping changes the distribution");
            if mode == DepthMode::Skip {
                assert_eq!(q.mean_layers, 1.0, "only the unrouted layer runs");
            }
            let json = serde_json::to_value(&q).unwrap();
            assert_eq!(json["n_predicted"], n);
        }
    }
}

#[test]
fn bad_windows_are_errors() {
    let m = routed_model(Arch::Llama);
    let s = settings(DepthMode::Skip);
    assert!(depth_quality(&m, &[], &s).is_err());
    assert!(depth_quality(&m, &[vec![3]], &s).is_err());
    assert!(
        depth_quality(&m, &[vec![3, 99]], &s).is_err(),
        "token outside the vocabulary"
    );
}
