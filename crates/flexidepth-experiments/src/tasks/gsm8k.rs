//! `gsm8k`: lm-evaluation-harness `gsm8k_cot` (version 3.0): `Q: {question}\nA:` after 8 chain-of-thought
//! exemplars (`Q: ..\nA: .. The answer is N.\n\n` each), greedy until `Q:`, `</s>` or `<|im_end|>` (the harness's
//! default of 256 new tokens), scored by `exact_match` (case folded; `,`, `$`, `.*#### ` and a final `.` ignored)
//! after two filters, `strict-match` and `flexible-extract` ([`super::metrics::gsm8k_extract`]).
//!
//! The data: oe-eval's `gsm8k/gold_bpb_5shot` request file (the 1,319 test problems). Its context holds the same 8
//! exemplars in oe-eval's wording (`Question:`/`Answer:`, `So the answer is N.`); they are rewritten to the
//! harness's (`Q:`/`A:`, `The answer is N.`).

use super::data::doc_str;
use super::{Item, Kind};
use flexidepth::error::{Error, Result};

/// The harness's stop sequences.
pub const STOPS: [&str; 3] = ["Q:", "</s>", "<|im_end|>"];
/// The harness's default `max_gen_toks`.
pub const MAX_NEW_TOKENS: usize = 256;

/// The (question, answer) exemplars in a request context of oe-eval's format (`Question: ..\nAnswer: ..` blocks
/// separated by blank lines; the last block is the test question), answers rewritten to the harness's ending.
pub fn exemplars(context: &str) -> Result<Vec<(String, String)>> {
    let blocks: Vec<&str> = context.split("\n\n").collect();
    let mut out = Vec::new();
    for b in &blocks[..blocks.len().saturating_sub(1)] {
        let (q, a) = b
            .strip_prefix("Question: ")
            .and_then(|r| r.split_once("\nAnswer: "))
            .ok_or_else(|| Error::Input(format!("a GSM8K exemplar is not 'Question: ..\\nAnswer: ..': {b:?}")))?;
        out.push((q.to_string(), a.replacen("So the answer is", "The answer is", 1)));
    }
    Ok(out)
}

/// The gold answer: the text after `####` of the GSM8K solution, stripped.
pub fn gold(answer: &str) -> String {
    answer.rsplit("####").next().unwrap_or("").trim().to_string()
}

/// GSM8K's items with `shots` (≤ 8) exemplars.
pub fn gsm8k(shots: usize) -> Result<Vec<Item>> {
    let lines = super::data::read_request_lines("gsm8k", "gold_bpb_5shot")?;
    let first = lines
        .first()
        .ok_or_else(|| Error::Input("the GSM8K request file is empty".into()))?;
    let context = first
        .pointer("/request/context")
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| Error::Input("a GSM8K request has no context".into()))?;
    let ex = exemplars(context)?;
    if shots > ex.len() {
        return Err(Error::Input(format!("gsm8k has {} exemplars, not {shots}", ex.len())));
    }
    let prefix: String = ex[..shots].iter().map(|(q, a)| format!("Q: {q}\nA: {a}\n\n")).collect();
    lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let doc = l
                .get("doc")
                .ok_or_else(|| Error::Input(format!("GSM8K request {i} has no doc")))?;
            Ok(Item {
                id: format!("gsm8k/{i}"),
                kind: Kind::Gsm8k {
                    prompt: format!("{prefix}Q: {}\nA:", doc_str(doc, "question")?),
                    answer: gold(doc_str(doc, "answer")?),
                },
            })
        })
        .collect()
}
