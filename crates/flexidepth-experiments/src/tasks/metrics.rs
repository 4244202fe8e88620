//! Scoring rules of lm-evaluation-harness (0.4.x), each as the harness computes it: multiple-choice `acc` and
//! `acc_norm`, `exact_match` with its options, GSM8K's answer filters, SQuAD's answer normalisation with CoQA's
//! `em`/`f1`, and the standard error of a mean.

use regex::Regex;
use std::collections::HashMap;
use std::sync::OnceLock;

/// A regex compiled once per process.
pub(crate) fn cached(cell: &'static OnceLock<Regex>, pattern: &str) -> &'static Regex {
    cell.get_or_init(|| Regex::new(pattern).expect("a valid regex"))
}

/// The harness's `mean` aggregation.
pub fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len().max(1) as f64
}

/// The harness's `mean_stderr`: sample standard deviation (n − 1) over √n; `None` for fewer than 2 values.
pub fn mean_stderr(xs: &[f64]) -> Option<f64> {
    let n = xs.len();
    if n < 2 {
        return None;
    }
    let m = mean(xs);
    let var = xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1) as f64;
    Some((var / n as f64).sqrt())
}

/// First index of the largest value (numpy's `argmax`; NaN never wins).
pub fn argmax(xs: &[f64]) -> usize {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best
}

/// Multiple-choice `acc` and `acc_norm` of one item (harness `ConfigurableTask.process_results`): `acc` is whether
/// the largest log-likelihood is the gold choice's; `acc_norm` divides each log-likelihood by its choice's length
/// in characters (`len(choice)`, without the target delimiter) first.
pub fn acc_and_norm(logliks: &[f64], choices: &[String], gold: usize) -> (f64, f64) {
    let acc = (argmax(logliks) == gold) as u8 as f64;
    let normed: Vec<f64> = logliks
        .iter()
        .zip(choices)
        .map(|(ll, c)| ll / c.chars().count() as f64)
        .collect();
    (acc, (argmax(&normed) == gold) as u8 as f64)
}

/// The harness's `exact_match` (HF `evaluate`'s): each regex of `ignore` is removed from both strings, then
/// optionally case is folded; 1.0 when equal.
pub fn exact_match(prediction: &str, reference: &str, ignore: &[Regex], ignore_case: bool) -> f64 {
    let clean = |s: &str| {
        let mut s = s.to_string();
        for r in ignore {
            s = r.replace_all(&s, "").into_owned();
        }
        if ignore_case {
            s = s.to_lowercase();
        }
        s
    };
    (clean(prediction) == clean(reference)) as u8 as f64
}

/// The `regexes_to_ignore` of the harness's GSM8K tasks: `,`, `$`, everything up to `#### `, a final `.`.
pub fn gsm8k_ignore() -> Vec<Regex> {
    [",", r"\$", r"(?s).*#### ", r"\.$"]
        .iter()
        .map(|r| Regex::new(r).expect("a valid regex"))
        .collect()
}

/// The harness's fallback of a filter that finds nothing.
pub const INVALID: &str = "[invalid]";

/// The harness's `regex` filter: the first match of `pattern`; with a capture group, the group's text (with
/// several alternatives, `group_select` picks among the match's non-empty groups: `-1` the last match of the
/// text, as `re.findall(...)[group_select]`); no match gives `"[invalid]"`.
pub fn regex_filter(text: &str, pattern: &Regex, group_select: i64) -> String {
    let matches: Vec<String> = pattern
        .captures_iter(text)
        .map(|c| {
            // `re.findall` returns the groups of a match; with several groups, the filter takes the first non-empty.
            if c.len() == 1 {
                c[0].to_string()
            } else {
                (1..c.len())
                    .filter_map(|i| c.get(i).map(|m| m.as_str()))
                    .find(|s| !s.is_empty())
                    .unwrap_or(INVALID)
                    .to_string()
            }
        })
        .collect();
    let idx = if group_select < 0 {
        matches.len() as i64 + group_select
    } else {
        group_select
    };
    if idx < 0 || idx as usize >= matches.len() {
        return INVALID.to_string();
    }
    matches[idx as usize].trim().to_string()
}

/// GSM8K-CoT's two filters of a generation: `strict-match` (`The answer is (\-?[0-9\.\,]+).`, first match) and
/// `flexible-extract` (`(-?[$0-9.,]{2,})|(-?[0-9]+)`, last match).
pub fn gsm8k_extract(text: &str) -> (String, String) {
    static STRICT: OnceLock<Regex> = OnceLock::new();
    static FLEXIBLE: OnceLock<Regex> = OnceLock::new();
    let strict = cached(&STRICT, r"The answer is (\-?[0-9\.\,]+).");
    let flexible = cached(&FLEXIBLE, r"(-?[$0-9.,]{2,})|(-?[0-9]+)");
    (regex_filter(text, strict, 0), regex_filter(text, flexible, -1))
}

/// SQuAD's `normalize_answer`: lower case, punctuation removed, the articles a/an/the removed, whitespace collapsed.
pub fn normalize_answer(s: &str) -> String {
    let lower = s.to_lowercase();
    // Python's `string.punctuation`: the ASCII punctuation characters.
    let no_punct: String = lower.chars().filter(|c| !c.is_ascii_punctuation()).collect();
    static ARTICLES: OnceLock<Regex> = OnceLock::new();
    let articles = cached(&ARTICLES, r"\b(a|an|the)\b");
    let no_articles = articles.replace_all(&no_punct, " ");
    no_articles.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// SQuAD's `compute_exact`.
pub fn squad_exact(gold: &str, pred: &str) -> f64 {
    (normalize_answer(gold) == normalize_answer(pred)) as u8 as f64
}

/// SQuAD's `compute_f1`: token-overlap F1 of the normalised answers (1 when both are empty, 0 when one is).
pub fn squad_f1(gold: &str, pred: &str) -> f64 {
    let g: Vec<String> = normalize_answer(gold)
        .split(' ')
        .filter(|t| !t.is_empty())
        .map(String::from)
        .collect();
    let p: Vec<String> = normalize_answer(pred)
        .split(' ')
        .filter(|t| !t.is_empty())
        .map(String::from)
        .collect();
    if g.is_empty() || p.is_empty() {
        return (g == p) as u8 as f64;
    }
    let mut counts: HashMap<&str, i64> = HashMap::new();
    for t in &g {
        *counts.entry(t).or_default() += 1;
    }
    let mut same = 0;
    for t in &p {
        if let Some(c) = counts.get_mut(t.as_str()) {
            if *c > 0 {
                *c -= 1;
                same += 1;
            }
        }
    }
    if same == 0 {
        return 0.0;
    }
    let precision = same as f64 / p.len() as f64;
    let recall = same as f64 / g.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

/// CoQA's `compute_scores` (harness `coqa/utils.py`): with several gold answers, each is left out in turn and the
/// prediction's best score against the others is averaged; with one, the score against it. Returns (em, f1).
pub fn coqa_scores(golds: &[String], pred: &str) -> (f64, f64) {
    if golds.is_empty() {
        return (0.0, 0.0);
    }
    let best = |set: &mut dyn Iterator<Item = &String>, f: fn(&str, &str) -> f64| {
        set.map(|g| f(g, pred)).fold(f64::NEG_INFINITY, f64::max)
    };
    if golds.len() == 1 {
        return (squad_exact(&golds[0], pred), squad_f1(&golds[0], pred));
    }
    let (mut em, mut f1) = (0.0, 0.0);
    for i in 0..golds.len() {
        let others = || golds.iter().enumerate().filter(move |(j, _)| *j != i).map(|(_, g)| g);
        em += best(&mut others(), squad_exact);
        f1 += best(&mut others(), squad_f1);
    }
    (em / golds.len() as f64, f1 / golds.len() as f64)
}
