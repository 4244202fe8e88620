//! `coqa`: lm-evaluation-harness `coqa` (version 3.0): each story's last question after the conversation so far —
//! `{story}\n\n` then `Q: {q}\n\nA: {a}\n\n` per earlier turn, then `Q: {q}\n\nA:` — greedy until `\nQ:`; the
//! prediction is the first line of the stripped output, scored by `em` and `f1` against the turn's gold answers
//! (de-duplicated case-insensitively; [`super::metrics::coqa_scores`]).
//!
//! The data: oe-eval's `coqa/bpb_0shot` request file (one request per turn of the 500 validation stories, each doc
//! with the whole conversation in `previous_qa`); the harness's item is the last turn of each story.

use super::data::{doc_str, read_request_docs};
use super::{Item, Kind};
use flexidepth::error::{Error, Result};
use std::collections::BTreeMap;

/// The harness's stop sequence.
pub const STOPS: [&str; 1] = ["\nQ:"];
/// The harness's default `max_gen_toks`.
pub const MAX_NEW_TOKENS: usize = 256;

/// The harness's prompt: the story, the earlier turns, the last question.
pub fn prompt(story: &str, turns: &[(String, String)]) -> String {
    let mut s = format!("{story}\n\n");
    for (i, (q, a)) in turns.iter().enumerate() {
        if i + 1 == turns.len() {
            s += &format!("Q: {q}\n\nA:");
        } else {
            s += &format!("Q: {q}\n\nA: {a}\n\n");
        }
    }
    s
}

/// Gold answers with case-insensitive repeats dropped, first kept (harness `doc_to_target`).
pub fn unique_answers(answers: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for a in answers {
        if !out.iter().any(|o| o.to_lowercase() == a.to_lowercase()) {
            out.push(a.clone());
        }
    }
    out
}

/// CoQA's items: the last turn of each story.
pub fn coqa() -> Result<Vec<Item>> {
    // story id -> (turn, doc) of its latest turn
    let mut last: BTreeMap<String, (usize, serde_json::Value)> = BTreeMap::new();
    for doc in read_request_docs("coqa", "bpb_0shot")? {
        let id = doc_str(&doc, "id")?.to_string();
        let (story, turn) = id
            .rsplit_once("_turn")
            .and_then(|(s, t)| Some((s.to_string(), t.parse::<usize>().ok()?)))
            .ok_or_else(|| Error::Input(format!("CoQA id '{id}' is not <story>_turn<N>")))?;
        if !matches!(last.get(&story), Some((t, _)) if *t >= turn) {
            last.insert(story, (turn, doc));
        }
    }
    let strs = |v: &serde_json::Value, what: &str| -> Result<Vec<String>> {
        v.as_array()
            .map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect())
            .ok_or_else(|| Error::Input(format!("a CoQA doc's {what} is not a list of strings")))
    };
    last.into_iter()
        .map(|(story_id, (turn, doc))| {
            let qa = doc
                .get("previous_qa")
                .and_then(|v| v.as_array())
                .ok_or_else(|| Error::Input("a CoQA doc has no previous_qa".into()))?;
            let turns: Vec<(String, String)> = qa[..(turn + 1).min(qa.len())]
                .iter()
                .map(|t| {
                    let get = |k: &str| t.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
                    (get("question"), get("answer"))
                })
                .collect();
            if turns.len() != turn + 1 || turns[turn].0 != doc_str(&doc, "question")? {
                return Err(Error::Input(format!(
                    "CoQA story {story_id}: the conversation does not match turn {turn}"
                )));
            }
            Ok(Item {
                id: format!("coqa/{story_id}"),
                kind: Kind::Coqa {
                    prompt: prompt(doc_str(&doc, "story")?, &turns),
                    golds: unique_answers(&strs(
                        doc.get("answers").unwrap_or(&serde_json::Value::Null),
                        "answers",
                    )?),
                },
            })
        })
        .collect()
}
