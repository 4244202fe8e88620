//! The log-likelihood multiple-choice tasks, read from the HF arrow files ([`super::data`]):
//!
//! - `mmlu`: lm-evaluation-harness `mmlu` (the 57 `mmlu_<subject>` tasks of the default template, version 1.0) on
//!   `hails/mmlu_no_train` test; few-shot examples are the first `k` of the subject's dev split (`first_n`); the
//!   group's `acc` is the size-weighted mean, i.e. the mean over items.
//! - `hellaswag`: harness `hellaswag` (version 1.0) on validation, with its `preprocess`.
//! - `arc_easy`, `arc_challenge`: harness `arc_easy` / `arc_challenge` (version 1.0); the harness scores the test
//!   split, the offline data has validation only, so validation is scored.
//! - `winogrande`: harness `winogrande` (version 1.0) on winogrande_xl validation: partial scoring, one context per
//!   option (the sentence up to the blank with the option filled in), the shared continuation the rest of the
//!   sentence.

use super::data::{integers, read_arrow, string_lists, strings, struct_string_lists};
use super::{Item, Kind};
use flexidepth::error::{Error, Result};

/// Python's `str.capitalize`: the first character upper case, the rest lower case.
pub fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars.flat_map(char::to_lowercase)).collect(),
        None => String::new(),
    }
}

/// The harness's HellaSwag `preprocess`: strip, " [title]" to ". ", `[...]` removed, double spaces made single.
pub fn hellaswag_preprocess(text: &str) -> String {
    let t = text.trim().replace(" [title]", ". ");
    static BRACKETS: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let brackets = super::metrics::cached(&BRACKETS, r"\[.*?\]");
    brackets.replace_all(&t, "").replace("  ", " ")
}

/// HellaSwag's items: query `preprocess(activity_label + ": " + ctx_a + " " + capitalize(ctx_b))`, the preprocessed
/// endings as choices, gold `int(label)`.
pub fn hellaswag() -> Result<Vec<Item>> {
    let mut items = Vec::new();
    for b in read_arrow("hellaswag/none", "validation")? {
        let (act, a, bb) = (
            strings(&b, "activity_label")?,
            strings(&b, "ctx_a")?,
            strings(&b, "ctx_b")?,
        );
        let (endings, labels) = (string_lists(&b, "endings")?, strings(&b, "label")?);
        for i in 0..b.num_rows() {
            let query = hellaswag_preprocess(&format!("{}: {} {}", act[i], a[i], capitalize(&bb[i])));
            let gold = parse_gold(&labels[i], endings[i].len())?;
            items.push(Item {
                id: format!("hellaswag/{}", items.len()),
                kind: Kind::Choice {
                    context: query,
                    choices: endings[i].iter().map(|e| hellaswag_preprocess(e)).collect(),
                    gold,
                },
            });
        }
    }
    Ok(items)
}

fn parse_gold(label: &str, n: usize) -> Result<usize> {
    label
        .trim()
        .parse::<usize>()
        .ok()
        .filter(|&g| g < n)
        .ok_or_else(|| Error::Input(format!("gold label '{label}' is not one of {n} choices")))
}

/// ARC's items (`ARC-Easy` or `ARC-Challenge`): `Question: {question}\nAnswer:`, the choice texts, gold the index of
/// `answerKey` among the labels.
pub fn arc(config: &str) -> Result<Vec<Item>> {
    let mut items = Vec::new();
    for b in read_arrow(&format!("ai2_arc/{config}"), "validation")? {
        let (ids, qs, keys) = (strings(&b, "id")?, strings(&b, "question")?, strings(&b, "answerKey")?);
        let texts = struct_string_lists(&b, "choices", "text")?;
        let labels = struct_string_lists(&b, "choices", "label")?;
        for i in 0..b.num_rows() {
            let gold = labels[i]
                .iter()
                .position(|l| *l == keys[i])
                .ok_or_else(|| Error::Input(format!("ARC item {}: answer key not among the labels", ids[i])))?;
            items.push(Item {
                id: ids[i].clone(),
                kind: Kind::Choice {
                    context: format!("Question: {}\nAnswer:", qs[i]),
                    choices: texts[i].clone(),
                    gold,
                },
            });
        }
    }
    Ok(items)
}

/// WinoGrande's items: contexts `sentence[:blank] + option`, continuation `sentence[blank + 1:].strip()`, gold
/// `answer − 1`.
pub fn winogrande() -> Result<Vec<Item>> {
    let mut items = Vec::new();
    for b in read_arrow("winogrande/winogrande_xl", "validation")? {
        let (s, o1, o2, ans) = (
            strings(&b, "sentence")?,
            strings(&b, "option1")?,
            strings(&b, "option2")?,
            strings(&b, "answer")?,
        );
        for i in 0..b.num_rows() {
            items.push(winogrande_item(items.len(), &s[i], &o1[i], &o2[i], &ans[i])?);
        }
    }
    Ok(items)
}

/// One WinoGrande item (see [`winogrande`]); `answer` is "1" or "2".
pub fn winogrande_item(n: usize, sentence: &str, option1: &str, option2: &str, answer: &str) -> Result<Item> {
    let blank = sentence
        .find('_')
        .ok_or_else(|| Error::Input(format!("WinoGrande sentence without a blank: {sentence}")))?;
    let gold = match answer {
        "1" => 0,
        "2" => 1,
        other => return Err(Error::Input(format!("WinoGrande answer '{other}' is not 1 or 2"))),
    };
    let prefix = &sentence[..blank];
    Ok(Item {
        id: format!("winogrande/{n}"),
        kind: Kind::Partial {
            contexts: vec![format!("{prefix}{option1}"), format!("{prefix}{option2}")],
            continuation: sentence[blank + 1..].trim().to_string(),
            gold,
        },
    })
}

/// The 57 MMLU subjects (folders of `hails/mmlu_no_train`), sorted.
fn mmlu_subjects() -> Result<Vec<String>> {
    let dir = super::data::eval_dir().join("hf_datasets/hails/mmlu_no_train");
    let mut subjects: Vec<String> = std::fs::read_dir(&dir)
        .map_err(|_| {
            Error::Input(format!(
                "evaluation data {} is missing; fetch it with scripts/fetch-eval-data.sh",
                dir.display()
            ))
        })?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    subjects.sort();
    Ok(subjects)
}

/// One MMLU question as the default template writes it (`question.strip()`, lettered choices, `Answer:`).
pub fn mmlu_question(question: &str, choices: &[String]) -> String {
    let mut s = question.trim().to_string();
    for (letter, c) in ["A", "B", "C", "D"].iter().zip(choices) {
        s += &format!("\n{letter}. {c}");
    }
    s + "\nAnswer:"
}

/// MMLU's items over every subject's test split, each with the description and the first `shots` dev examples
/// (`{question} {letter}\n\n` each).
///
/// Errors: `shots` above the 5 dev examples a subject has.
pub fn mmlu(shots: usize) -> Result<Vec<Item>> {
    const LETTERS: [&str; 4] = ["A", "B", "C", "D"];
    let mut items = Vec::new();
    for subject in mmlu_subjects()? {
        let path = format!("hails/mmlu_no_train/{subject}");
        let mut prefix = format!(
            "The following are multiple choice questions (with answers) about {}.\n\n",
            subject.replace('_', " ")
        );
        let dev = rows(&read_arrow(&path, "dev")?)?;
        if shots > dev.len() {
            return Err(Error::Input(format!(
                "mmlu has {} dev examples per subject for few-shot, not {shots}",
                dev.len()
            )));
        }
        for (q, c, a) in &dev[..shots] {
            prefix += &format!("{} {}\n\n", mmlu_question(q, c), LETTERS[*a]);
        }
        for (i, (q, c, a)) in rows(&read_arrow(&path, "test")?)?.into_iter().enumerate() {
            items.push(Item {
                id: format!("mmlu_{subject}/{i}"),
                kind: Kind::Choice {
                    context: format!("{prefix}{}", mmlu_question(&q, &c)),
                    choices: LETTERS.iter().map(|l| l.to_string()).collect(),
                    gold: a,
                },
            });
        }
    }
    Ok(items)
}

/// (question, choices, answer index) of MMLU record batches.
fn rows(batches: &[arrow_array::RecordBatch]) -> Result<Vec<(String, Vec<String>, usize)>> {
    let mut out = Vec::new();
    for b in batches {
        let (q, c, a) = (
            strings(b, "question")?,
            string_lists(b, "choices")?,
            integers(b, "answer")?,
        );
        for i in 0..b.num_rows() {
            if c[i].len() != 4 || !(0..4).contains(&a[i]) {
                return Err(Error::Input(format!(
                    "MMLU item '{}' is not 4 choices with an answer",
                    q[i]
                )));
            }
            out.push((q[i].clone(), c[i].clone(), a[i] as usize));
        }
    }
    Ok(out)
}
