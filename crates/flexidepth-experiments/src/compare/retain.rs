//! The retain percentage of the FlexiDepth paper's method comparison (Luo, Wang, Yan; slides "Method Comparison",
//! Llama-3-8B-Instruct): for each task, a policy's score over full depth's score; retain is the mean of those ratios
//! over the tasks of a group (single-token: the log-likelihood tasks; generation: GSM8K, HumanEval, CoQA) or over
//! every task (the paper's "Retain %" column, a plain mean over its six tasks, not a mean of the groups).
//!
//! **Full-depth score of 0** (our convention; the paper and lm-evaluation-harness define none): the ratio is
//! undefined, so the task is left out of every mean it would enter and its ratio is reported as `None`; a group with
//! no task left has no retain (`None`). A 135M model scores 0 on GSM8K, so its generation group rests on CoQA (and
//! HumanEval when it passes anything).

use crate::tasks::TaskName;
use serde::{Deserialize, Serialize};

/// The score a task's retain ratio uses (one per task; the others are reported, not compared): MMLU and
/// WinoGrande `acc`, HellaSwag and ARC `acc_norm`, GSM8K `exact_match` after the flexible extraction (the last
/// number of the answer, as small models often miss the exemplars' "The answer is" format), HumanEval `pass@1`,
/// CoQA `f1`. Returns `(filter, metric)` as [`TaskName::metrics`] names them.
pub fn primary_metric(task: TaskName) -> (&'static str, &'static str) {
    match task {
        TaskName::Mmlu | TaskName::Winogrande => ("none", "acc"),
        TaskName::Hellaswag | TaskName::ArcEasy | TaskName::ArcChallenge => ("none", "acc_norm"),
        TaskName::Gsm8k => ("flexible-extract", "exact_match"),
        TaskName::Humaneval => ("create_test", "pass@1"),
        TaskName::Coqa => ("none", "f1"),
    }
}

/// The two task groups of the paper's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Group {
    /// Scored from one forward pass per choice: MMLU, HellaSwag, WinoGrande, ARC.
    SingleToken,
    /// Scored on generated text: GSM8K, HumanEval, CoQA.
    Generation,
}

/// The group a task belongs to.
pub fn group(task: TaskName) -> Group {
    if task.generates() {
        Group::Generation
    } else {
        Group::SingleToken
    }
}

/// A policy's score over full depth's; `None` when full depth scored 0 (see the module docs) or either is not a
/// finite number.
pub fn ratio(score: f64, full: f64) -> Option<f64> {
    (score.is_finite() && full.is_finite() && full != 0.0).then(|| score / full)
}

/// Retain of one policy: the per-task ratios and their means.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Retain {
    /// `(task, ratio)` in the order given; `None` where full depth scored 0.
    pub ratios: Vec<(String, Option<f64>)>,
    /// Mean ratio over the single-token tasks that have one.
    pub single_token: Option<f64>,
    /// Mean ratio over the generation tasks that have one.
    pub generation: Option<f64>,
    /// Mean ratio over every task that has one.
    pub overall: Option<f64>,
}

fn mean(xs: &[f64]) -> Option<f64> {
    (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
}

/// The retain of a policy whose primary scores are `scores` against full depth's `full`, both `(task, score)`.
/// A task of `scores` that full depth lacks gets no ratio. Ratios are fractions (1.0 = 100%).
pub fn retain(scores: &[(TaskName, f64)], full: &[(TaskName, f64)]) -> Retain {
    let ratios: Vec<(TaskName, Option<f64>)> = scores
        .iter()
        .map(|&(t, s)| {
            let f = full.iter().find(|(ft, _)| *ft == t).map(|p| p.1);
            (t, f.and_then(|f| ratio(s, f)))
        })
        .collect();
    let of = |g: Option<Group>| -> Option<f64> {
        let xs: Vec<f64> = ratios
            .iter()
            .filter(|(t, _)| match g {
                None => true,
                Some(g) => group(*t) == g,
            })
            .filter_map(|(_, r)| *r)
            .collect();
        mean(&xs)
    };
    Retain {
        single_token: of(Some(Group::SingleToken)),
        generation: of(Some(Group::Generation)),
        overall: of(None),
        ratios: ratios.into_iter().map(|(t, r)| (t.name().to_string(), r)).collect(),
    }
}

/// One row of the paper's table: a method's scores on MMLU, HellaSwag, WinoGrande, GSM8K, HumanEval, CoQA and the
/// retain % the paper prints.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PaperRow {
    /// Layers skipped of Llama-3-8B-Instruct's 32 (0 for the full model).
    pub skipped: usize,
    pub method: &'static str,
    pub scores: [f64; 6],
    /// The "Retain %" column as printed.
    pub retain_pct: f64,
}

/// The paper's tasks, in its column order.
pub const PAPER_TASKS: [TaskName; 6] = [
    TaskName::Mmlu,
    TaskName::Hellaswag,
    TaskName::Winogrande,
    TaskName::Gsm8k,
    TaskName::Humaneval,
    TaskName::Coqa,
];

/// The paper's method comparison (Llama-3-8B-Instruct, 32 layers; skip 4 = 1/8, skip 8 = 1/4), as printed in the
/// slides (`/work/shared/seed/slides.txt`, "Method Comparison"). For reference beside our tables only.
pub const PAPER: [PaperRow; 11] = [
    PaperRow {
        skipped: 0,
        method: "Vanilla",
        scores: [0.673, 0.706, 0.744, 0.679, 0.299, 0.784],
        retain_pct: 100.0,
    },
    PaperRow {
        skipped: 4,
        method: "LayerSkip",
        scores: [0.659, 0.636, 0.676, 0.004, 0.0, 0.350],
        retain_pct: 54.0,
    },
    PaperRow {
        skipped: 4,
        method: "ShortGPT",
        scores: [0.664, 0.662, 0.700, 0.536, 0.092, 0.145],
        retain_pct: 69.1,
    },
    PaperRow {
        skipped: 4,
        method: "LaCo",
        scores: [0.671, 0.693, 0.724, 0.581, 0.031, 0.778],
        retain_pct: 81.7,
    },
    PaperRow {
        skipped: 4,
        method: "MindSkip",
        scores: [0.664, 0.698, 0.722, 0.378, 0.189, 0.720],
        retain_pct: 84.2,
    },
    PaperRow {
        skipped: 4,
        method: "FlexiDepth",
        scores: [0.663, 0.724, 0.756, 0.695, 0.390, 0.810],
        retain_pct: 106.5,
    },
    PaperRow {
        skipped: 8,
        method: "LayerSkip",
        scores: [0.650, 0.525, 0.640, 0.0, 0.0, 0.049],
        retain_pct: 43.9,
    },
    PaperRow {
        skipped: 8,
        method: "ShortGPT",
        scores: [0.307, 0.462, 0.597, 0.001, 0.0, 0.005],
        retain_pct: 32.0,
    },
    PaperRow {
        skipped: 8,
        method: "LaCo",
        scores: [0.656, 0.628, 0.695, 0.065, 0.006, 0.707],
        retain_pct: 65.3,
    },
    PaperRow {
        skipped: 8,
        method: "MindSkip",
        scores: [0.602, 0.650, 0.646, 0.039, 0.024, 0.620],
        retain_pct: 60.2,
    },
    PaperRow {
        skipped: 8,
        method: "FlexiDepth",
        scores: [0.616, 0.705, 0.735, 0.662, 0.341, 0.801],
        retain_pct: 100.7,
    },
];

/// Layers of the paper's model.
pub const PAPER_LAYERS: usize = 32;

/// [`retain`] of a paper row against the paper's full model.
pub fn paper_retain(row: &PaperRow) -> Retain {
    let pairs = |s: &[f64; 6]| -> Vec<(TaskName, f64)> { PAPER_TASKS.iter().copied().zip(s.iter().copied()).collect() };
    retain(&pairs(&row.scores), &pairs(&PAPER[0].scores))
}
