//! Perplexity against the PyTorch reference (`shared/fixtures/golden-logits.json`) for both default models, and
//! the quantized compute path against the f32 one (perplexity, token-by-token NLL, top-1 agreement).

#[path = "../../flexidepth/tests/common/mod.rs"]
mod common;

use common::{golden_model, ids, model, MODELS};
use flexidepth::model::Logits;

#[test]
fn perplexity_matches_reference_within_half_a_percent() {
    let text = common::pride_passage();
    for name in MODELS {
        let (files, m) = model(name);
        let want = &golden_model(name)["ppl"];
        let n = want["n_tokens"].as_u64().unwrap() as usize;
        let mut ids = files.tokenizer.encode(&text, false).unwrap();
        ids.truncate(n);
        let p = flexidepth_experiments::eval::perplexity(m, &ids).unwrap();
        let want_ppl = want["ppl"].as_f64().unwrap();
        let want_nll = want["mean_nll"].as_f64().unwrap();
        assert!(
            (p.ppl / want_ppl - 1.0).abs() < 0.005,
            "{name}: ppl {} vs {want_ppl}",
            p.ppl
        );
        assert!(
            (p.mean_nll - want_nll).abs() < 1e-3,
            "{name}: nll {} vs {want_nll}",
            p.mean_nll
        );
    }
}

/// The quantized compute path (GGUF blocks kept in memory as stored, Q4_K/Q6_K/Q5_0 included) against the f32
/// reference, for both models: the same greedy choice at 90% of the fixture positions, perplexity within 2%.
#[test]
fn quantized_path_agrees_with_f32() {
    let text = common::pride_passage();
    for name in MODELS {
        let (files, f32_model) = model(name);
        let q = files
            .load_model(flexidepth::model::WeightFormat::Quantized, &candle_core::Device::Cpu)
            .unwrap();
        let mut passage = files.tokenizer.encode(&text, false).unwrap();
        passage.truncate(256);
        // Decode-sized steps go through the int8 kernels (prefill dequantizes), so score token by token too.
        let step_nll = |m: &flexidepth::model::Model| {
            let mut cache = m.new_cache(64);
            let mut nll = 0f64;
            for w in passage[..64].windows(2) {
                let l: Vec<f32> = m
                    .forward(&w[..1], &mut cache, Logits::Last)
                    .unwrap()
                    .squeeze(0)
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                let lse = l.iter().fold(f32::MIN, |a, &b| a.max(b));
                let z: f32 = l.iter().map(|x| (x - lse).exp()).sum::<f32>().ln() + lse;
                nll += (z - l[w[1] as usize]) as f64;
            }
            nll / 63.0
        };
        let (a, b) = (step_nll(f32_model), step_nll(&q));
        assert!((b / a - 1.0).abs() < 0.02, "{name}: token-by-token NLL {b} vs f32 {a}");
        let a = flexidepth_experiments::eval::perplexity(f32_model, &passage).unwrap();
        let b = flexidepth_experiments::eval::perplexity(&q, &passage).unwrap();
        assert!(
            (b.ppl / a.ppl - 1.0).abs() < 0.02,
            "{name}: quantized ppl {} vs f32 {}",
            b.ppl,
            a.ppl
        );
        let mut agree = 0;
        let mut total = 0;
        for case in golden_model(name)["logits"].as_array().unwrap() {
            let prompt = ids(&case["ids"]);
            // One token at a time, through the decode kernels.
            let top = |m: &flexidepth::model::Model| {
                let mut cache = m.new_cache(prompt.len());
                prompt
                    .iter()
                    .map(|&t| {
                        let l: Vec<f32> = m
                            .forward(&[t], &mut cache, Logits::Last)
                            .unwrap()
                            .squeeze(0)
                            .unwrap()
                            .to_vec1()
                            .unwrap();
                        flexidepth::generate::sampler::argmax(&l)
                    })
                    .collect::<Vec<_>>()
            };
            let (x, y) = (top(f32_model), top(&q));
            agree += x.iter().zip(&y).filter(|(a, b)| a == b).count();
            total += x.len();
        }
        assert!(
            agree as f64 >= 0.9 * total as f64,
            "{name}: top-1 agreement {agree}/{total}"
        );
    }
}
