//! DMTD decoding (spec B4) on a tiny Qwen3 model: τ = 1 is plain decoding bit for bit; the thinking layers'
//! cache lags by less than τ and is gap-free (and equal to a full pass's K/V) at every head; greedy decoding at
//! τ = 2 and 3, both prefill conventions, with and without encoding layers and in the shadow ablation, matches a
//! loop-based reference that recomputes every step from scratch.

mod common;

use common::dmtd_ref::{dmtd_logits, RefDmtd};
use common::tiny::{config, model_from, weights, Weights};
use flexidepth::config::{Arch, ModelConfig};
use flexidepth::dmtd::{DmtdDecoder, DmtdLayout, DmtdOptions, History, Prefill};
use flexidepth::model::{Logits, Model};
use flexidepth::Error;

const PROMPT: [u32; 5] = [3, 17, 5, 39, 22];
const NEW: usize = 9;

fn tiny() -> (ModelConfig, Weights, Model) {
    let mut c = config(Arch::Qwen3);
    c.num_hidden_layers = 4;
    c.max_position_embeddings = 32;
    let w = weights(&c);
    let m = model_from(&c, &w);
    (c, w, m)
}

fn argmax(v: &[f32]) -> u32 {
    v.iter()
        .enumerate()
        .fold((0, f32::MIN), |b, (i, &x)| if x > b.1 { (i, x) } else { b })
        .0 as u32
}

fn options(m: &Model, e: usize, d: usize, tau: usize, prefill: Prefill, history: History) -> DmtdOptions {
    DmtdOptions {
        layout: DmtdLayout::new(m.config.num_hidden_layers, e, d, tau).unwrap(),
        prefill,
        history,
    }
}

/// Greedy DMTD decoding of `NEW` tokens: the ids fed (prompt, then generated) and the logits of every step.
fn decode(m: &Model, opts: DmtdOptions, check: &mut dyn FnMut(&DmtdDecoder, bool)) -> (Vec<u32>, Vec<Vec<f32>>) {
    let mut dec = DmtdDecoder::new(m, opts, 64).unwrap();
    let mut ids = PROMPT.to_vec();
    let mut logits = vec![dec
        .prefill(&PROMPT)
        .unwrap()
        .logits
        .squeeze(0)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()];
    for _ in 0..NEW {
        let next = argmax(logits.last().unwrap());
        ids.push(next);
        let step = dec.step(next).unwrap();
        check(&dec, step.head);
        logits.push(step.logits.squeeze(0).unwrap().to_vec1().unwrap());
    }
    (ids, logits)
}

#[test]
fn tau_one_is_plain_decoding_bit_for_bit() {
    let (_, _, m) = tiny();
    let mut cache = m.new_cache(64);
    let mut plain = vec![m.forward(&PROMPT, &mut cache, Logits::Last).unwrap()];
    let mut ids = PROMPT.to_vec();
    for _ in 0..NEW {
        let row = plain.last().unwrap().squeeze(0).unwrap().to_vec1::<f32>().unwrap();
        ids.push(argmax(&row));
        plain.push(m.forward(&[*ids.last().unwrap()], &mut cache, Logits::Last).unwrap());
    }
    let plain: Vec<Vec<f32>> = plain.iter().map(|t| t.squeeze(0).unwrap().to_vec1().unwrap()).collect();
    for e in [0, 1] {
        let (got_ids, got) = decode(
            &m,
            options(&m, e, 1, 1, Prefill::Plain, History::Real),
            &mut |_, head| assert!(head, "τ = 1: every token is a head"),
        );
        assert_eq!(got_ids, ids, "E{e}: greedy tokens");
        assert_eq!(got, plain, "E{e}: logits bit for bit");
    }
}

#[test]
fn thinking_cache_lags_less_than_tau_and_is_gap_free_at_heads() {
    let (_, _, m) = tiny();
    for tau in [2, 3, 4] {
        let opts = options(&m, 0, 2, tau, Prefill::Plain, History::Real);
        let mut heads = 0;
        let mut full_len = 0;
        let (ids, _) = decode(&m, opts, &mut |dec, head| {
            let lag = dec.len() - dec.thinking_fill();
            assert!(lag < tau, "τ {tau}: the thinking layers lag by {lag}");
            if head {
                heads += 1;
                assert_eq!(lag, 0, "τ {tau}: gap-free at a head");
                full_len = dec.len();
            }
        });
        assert_eq!(heads, NEW.div_ceil(tau), "τ {tau}: heads at local 0, τ, 2τ, ...");
        // At the last head the thinking layers' K/V equal a full-depth pass's over the same tokens: every
        // refilled row holds what its real token computes.
        let mut dec = DmtdDecoder::new(&m, opts, 64).unwrap();
        dec.prefill(&PROMPT).unwrap();
        for &id in &ids[PROMPT.len()..full_len] {
            dec.step(id).unwrap();
        }
        assert_eq!(dec.thinking_fill(), full_len);
        let mut cache = m.new_cache(64);
        m.forward(&ids[..full_len], &mut cache, Logits::Last).unwrap();
        for l in opts.layout.thinking() {
            let (k, v) = dec.cache().view(l, full_len).unwrap();
            let (k0, v0) = cache.view(l, full_len).unwrap();
            let diff = |a: &candle_core::Tensor, b: &candle_core::Tensor| {
                (a - b)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
            };
            assert!(diff(&k, &k0) < 1e-5 && diff(&v, &v0) < 1e-5, "τ {tau} layer {l}");
        }
    }
}

#[test]
fn shadow_history_holds_prompt_and_heads_only() {
    let (_, _, m) = tiny();
    let opts = options(&m, 0, 2, 3, Prefill::Plain, History::Shadow);
    let mut heads = 0;
    decode(&m, opts, &mut |dec, head| {
        heads += usize::from(head);
        assert_eq!(dec.thinking_fill(), PROMPT.len() + heads);
    });
    assert_eq!(heads, 3);
}

#[test]
fn greedy_decoding_matches_the_loop_reference() {
    let (c, w, m) = tiny();
    for (e, d) in [(0, 2), (1, 1)] {
        for tau in [2, 3] {
            for prefill in [Prefill::Plain, Prefill::Readd] {
                for history in [History::Real, History::Shadow] {
                    let opts = options(&m, e, d, tau, prefill, history);
                    let (ids, got) = decode(&m, opts, &mut |_, _| {});
                    let r = RefDmtd {
                        encoding: e,
                        decoding: d,
                        tau,
                        readd: prefill == Prefill::Readd,
                        shadow: history == History::Shadow,
                    };
                    for (k, row) in got.iter().enumerate() {
                        let n = PROMPT.len() + k;
                        let want = dmtd_logits(&c, &w, &ids[..n], PROMPT.len(), r);
                        let diff = row.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                        let label = format!("{}, step {k}", opts.label());
                        assert!(diff < 1e-4, "{label}: logits differ by {diff}");
                        assert_eq!(argmax(row), argmax(&want), "{label}: greedy token");
                    }
                }
            }
        }
    }
}

#[test]
fn the_conventions_change_the_output() {
    // The reference comparison above could pass if the switches did nothing; they must not.
    let (_, _, m) = tiny();
    let base = options(&m, 0, 2, 3, Prefill::Plain, History::Real);
    let run = |o| decode(&m, o, &mut |_, _| {}).1;
    let plain = run(base);
    assert_ne!(
        plain[0],
        run(DmtdOptions {
            prefill: Prefill::Readd,
            ..base
        })[0]
    );
    let shadow = run(DmtdOptions {
        history: History::Shadow,
        ..base
    });
    assert_eq!(
        plain[..4],
        shadow[..4],
        "no late-only token refilled before the second head"
    );
    assert_ne!(
        plain[4], shadow[4],
        "the second head sees refilled rows only with real history"
    );
}

#[test]
fn bad_sessions_are_errors() {
    let (_, _, m) = tiny();
    let opts = options(&m, 0, 2, 2, Prefill::Plain, History::Real);
    let mut dec = DmtdDecoder::new(&m, opts, 7).unwrap();
    assert!(matches!(dec.step(1), Err(Error::Input(_))), "a step before the prefill");
    assert!(matches!(
        dec.prefill(&[1; 8]),
        Err(Error::ContextOverflow { tokens: 8, context: 7 })
    ));
    dec.prefill(&PROMPT).unwrap();
    assert!(matches!(dec.prefill(&PROMPT), Err(Error::Input(_))), "a second prefill");
    assert!(
        matches!(dec.step(99), Err(Error::Input(_))),
        "an id outside the vocabulary"
    );
    dec.step(1).unwrap();
    dec.step(2).unwrap();
    assert!(
        matches!(dec.step(3), Err(Error::ContextOverflow { .. })),
        "past the session"
    );
    let other = DmtdLayout::new(30, 0, 4, 2).unwrap();
    assert!(
        DmtdDecoder::new(&m, DmtdOptions::new(other), 8).is_err(),
        "a layout of another model"
    );
}
