//! flexidepth's own scores on the items `bench/lm-eval-serve.sh` gives lm-evaluation-harness: a multiple-choice
//! log-likelihood task (`acc`, `acc_norm`) scored with `eval::token_nlls_with` (one forward pass per candidate), and
//! a generation task (`exact_match`) generated with `generate`, both on the engine directly, not through the server.
//! Requests are built as the harness builds them (its `_encode_pair`: trailing spaces of the context moved to the
//! continuation, the whole text tokenized and split at the context's length; no special tokens), so that its scores
//! through `flexidepth serve` can be put beside these.
//!
//! `cargo run --release -p flexidepth-experiments --example lm_eval_reference -- MC.jsonl GEN.jsonl MAX_GEN_TOKS
//! [DEPTH_FILE]` prints `{"fd_mc": {"acc", "acc_norm", "lls", "lls_full_pass"}, "fd_gen": {"exact_match",
//! "texts"}}` (`lls`: each item's candidates' log-likelihoods as eval scores them, `lls_full_pass` from a pass over
//! every token; `texts`: each item's generation), for the per-item comparison too.

use flexidepth::depth::FlexiDepth;
use flexidepth::generate::{generate, GenerateOptions};
use flexidepth::loader::ModelFiles;
use flexidepth::model::{Logits, Model, WeightFormat};
use flexidepth::tokenizer::Tokenizer;
use flexidepth_experiments::eval::token_nlls_with;
use serde_json::{json, Value};

fn read_jsonl(path: &str) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{path}: {e}")))
        .collect()
}

/// Sum of the continuation's token log-probabilities after the context, tokenized as the harness does: as
/// `eval::token_nlls_with` scores it (a pass over all tokens but the last), and from a pass over all of them (what a
/// server computes for a request that also generates a token). The two differ only where the extra row moves a
/// matrix product across the kernels' switch from 8-bit dot products to the f32 GEMM (16 rows).
fn loglikelihood(model: &Model, tok: &Tokenizer, context: &str, continuation: &str) -> (f64, f64) {
    let trimmed = context.trim_end();
    let moved = &context[trimmed.len()..];
    let whole = tok.encode(&format!("{trimmed}{moved}{continuation}"), false).unwrap();
    let ctx_len = tok.encode(trimmed, false).unwrap().len();
    let (nlls, _) = token_nlls_with(model, &whole, &FlexiDepth::default()).unwrap();
    // nlls[i] is the NLL of whole[i + 1].
    let eval = -nlls[ctx_len - 1..].iter().map(|&x| x as f64).sum::<f64>();
    let mut cache = model.new_cache(whole.len());
    let out = model
        .forward_with(&whole, &mut cache, Logits::All, &FlexiDepth::default())
        .unwrap();
    let logp: Vec<Vec<f32>> = candle_nn::ops::log_softmax(&out.logits, candle_core::D::Minus1)
        .unwrap()
        .to_vec2()
        .unwrap();
    let full = (ctx_len..whole.len())
        .map(|i| logp[i - 1][whole[i] as usize] as f64)
        .sum();
    (eval, full)
}

/// The index of the first maximum (numpy's argmax).
fn argmax(xs: &[f64]) -> usize {
    (0..xs.len()).fold(0, |best, i| if xs[i] > xs[best] { i } else { best })
}

/// The harness's exact_match with `regexes_to_ignore: [" "]`, `ignore_case`, `ignore_punctuation`.
fn normalize(s: &str) -> String {
    s.replace(' ', "")
        .to_lowercase()
        .chars()
        .filter(|c| !c.is_ascii_punctuation())
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    assert!(args.len() >= 3, "usage: MC.jsonl GEN.jsonl MAX_GEN_TOKS [DEPTH_FILE]");
    let files = ModelFiles::open(flexidepth::loader::DEFAULT_MODEL).unwrap();
    let mut model = files
        .load_model(WeightFormat::Quantized, &candle_core::Device::Cpu)
        .unwrap();
    if let Some(depth) = args.get(3) {
        flexidepth::depth::file::attach_depth_file(&mut model, std::path::Path::new(depth)).unwrap();
    }
    let tok = &files.tokenizer;
    let (mut acc, mut acc_norm, mut all_lls, mut all_full) = (0.0, 0.0, Vec::new(), Vec::new());
    let mc = read_jsonl(&args[0]);
    for doc in &mc {
        let context = format!("Question: {}\nAnswer:", doc["question"].as_str().unwrap());
        let choices: Vec<&str> = doc["choices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        let (lls, full): (Vec<f64>, Vec<f64>) = choices
            .iter()
            .map(|c| loglikelihood(&model, tok, &context, &format!(" {c}")))
            .unzip();
        let norm: Vec<f64> = lls
            .iter()
            .zip(&choices)
            .map(|(ll, c)| ll / c.chars().count() as f64)
            .collect();
        let answer = doc["answer"].as_u64().unwrap() as usize;
        acc += f64::from(u8::from(argmax(&lls) == answer));
        acc_norm += f64::from(u8::from(argmax(&norm) == answer));
        all_lls.push(lls);
        all_full.push(full);
    }
    let max_gen: usize = args[2].parse().unwrap();
    let (mut exact, mut texts) = (0.0, Vec::new());
    let gen = read_jsonl(&args[1]);
    for doc in &gen {
        let ids = tok.encode(doc["prompt"].as_str().unwrap(), false).unwrap();
        let mut opts = GenerateOptions::greedy(max_gen, files.eos_token_ids());
        opts.stop_strings = vec!["\n".into()];
        let out = generate(&model, tok, &ids, &opts, &mut |_| Ok(())).unwrap();
        exact += f64::from(u8::from(
            normalize(&out.text) == normalize(doc["target"].as_str().unwrap()),
        ));
        texts.push(out.text);
    }
    let n = |v: &Vec<Value>| v.len().max(1) as f64;
    println!(
        "{}",
        json!({
            "fd_mc": {"acc": acc / n(&mc), "acc_norm": acc_norm / n(&mc), "items": mc.len(), "lls": all_lls,
                      "lls_full_pass": all_full},
            "fd_gen": {"exact_match": exact / n(&gen), "items": gen.len(), "texts": texts},
        })
    );
}
