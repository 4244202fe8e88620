//! The teacher-forced DMTD quality per cycle offset (spec B3/B4) equals figures computed from a loop over positions
//! on a tiny random model.

#[path = "../../flexidepth/tests/common/mod.rs"]
mod common;

use candle_core::{Tensor, D};
use common::tiny::{config, model_from, weights};
use flexidepth::config::Arch;
use flexidepth::depth::FullDepth;
use flexidepth::dmtd::DmtdLayout;
use flexidepth::model::ops::Fused;
use flexidepth::model::{ForwardCtx, Model};
use flexidepth_experiments::dmtd_quality::dmtd_quality;

const IDS: [u32; 11] = [3, 17, 5, 39, 0, 22, 8, 11, 30, 2, 19];

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
        let s0 = if p % layout.mtp_horizon == 0 {
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
fn per_offset_quality_matches_the_loop() {
    let c = config(Arch::Qwen3);
    let m = model_from(&c, &weights(&c));
    let layout = DmtdLayout::new(3, 0, 1, 3).unwrap();
    let windows = vec![IDS.to_vec(), IDS[..7].to_vec()];
    let q = dmtd_quality(&m, &m, &windows, &layout).unwrap();
    assert_eq!(q.offsets.len(), 3);
    assert_eq!(q.all.n, 10 + 6);
    let (mut nll, mut n) = (vec![0f64; 3], vec![0usize; 3]);
    let (mut nll_full, mut agree) = (vec![0f64; 3], vec![0usize; 3]);
    for w in &windows {
        let inputs = &w[..w.len() - 1];
        let lq = candle_nn::ops::log_softmax(&loop_reference(&m, inputs, &layout), D::Minus1).unwrap();
        let full = m
            .forward_ops(&Fused, inputs, None, flexidepth::model::Logits::All, &FullDepth)
            .unwrap()
            .logits;
        let lp = candle_nn::ops::log_softmax(&full, D::Minus1).unwrap();
        let (lq, lp): (Vec<Vec<f32>>, Vec<Vec<f32>>) = (lq.to_vec2().unwrap(), lp.to_vec2().unwrap());
        let argmax = |v: &[f32]| (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap();
        for p in 0..inputs.len() {
            let t = w[p + 1] as usize;
            nll[p % 3] -= lq[p][t] as f64;
            nll_full[p % 3] -= lp[p][t] as f64;
            agree[p % 3] += (argmax(&lq[p]) == argmax(&lp[p])) as usize;
            n[p % 3] += 1;
        }
    }
    for k in 0..3 {
        let o = &q.offsets[k];
        assert_eq!(o.n, n[k]);
        assert!((o.dmtd_ppl.ln() - nll[k] / n[k] as f64).abs() < 1e-4, "offset {k}");
        assert!((o.full_ppl.ln() - nll_full[k] / n[k] as f64).abs() < 1e-4, "offset {k}");
        assert!(
            (o.top1_agreement - agree[k] as f64 / n[k] as f64).abs() < 1e-9,
            "offset {k}"
        );
    }
}
