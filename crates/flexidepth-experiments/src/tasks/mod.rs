//! Benchmarks as lm-evaluation-harness defines them (prompt, target delimiter, few-shot, metric, filter), run on
//! a model under a depth policy: `flexidepth eval`. One file per task family; [`lm`] runs the two request types,
//! [`metrics`] holds the scoring rules, [`report`] the table and JSON.
//!
//! Each task names the harness task and version it mirrors ([`TaskName::version`]).

pub mod coqa;
pub mod data;
pub mod gsm8k;
pub mod humaneval;
pub mod lm;
pub mod metrics;
pub mod multiple_choice;
pub mod report;
pub mod run;

use flexidepth::error::{Error, Result};

/// One item of a task: an id and what to compute.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub id: String,
    pub kind: Kind,
}

/// The request an item makes and what it is scored against.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// Log-likelihood multiple choice: each choice (after the target delimiter `" "`) continues the shared context;
    /// scored by `acc` and `acc_norm`.
    Choice {
        context: String,
        choices: Vec<String>,
        gold: usize,
    },
    /// Partial scoring (WinoGrande): one context per option, the same continuation after each; scored by `acc`.
    Partial {
        contexts: Vec<String>,
        continuation: String,
        gold: usize,
    },
    /// GSM8K: greedy chain of thought, exact match of the extracted answer.
    Gsm8k { prompt: String, answer: String },
    /// CoQA: greedy answer, em and f1 against the gold answers.
    Coqa { prompt: String, golds: Vec<String> },
    /// HumanEval: greedy completion, run against the tests.
    HumanEval {
        prompt: String,
        test: String,
        entry_point: String,
    },
}

/// The tasks `flexidepth eval` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskName {
    Mmlu,
    Hellaswag,
    Winogrande,
    ArcEasy,
    ArcChallenge,
    Gsm8k,
    Humaneval,
    Coqa,
}

impl TaskName {
    pub const ALL: [TaskName; 8] = [
        TaskName::Mmlu,
        TaskName::Hellaswag,
        TaskName::Winogrande,
        TaskName::ArcEasy,
        TaskName::ArcChallenge,
        TaskName::Gsm8k,
        TaskName::Humaneval,
        TaskName::Coqa,
    ];

    pub fn name(self) -> &'static str {
        match self {
            TaskName::Mmlu => "mmlu",
            TaskName::Hellaswag => "hellaswag",
            TaskName::Winogrande => "winogrande",
            TaskName::ArcEasy => "arc_easy",
            TaskName::ArcChallenge => "arc_challenge",
            TaskName::Gsm8k => "gsm8k",
            TaskName::Humaneval => "humaneval",
            TaskName::Coqa => "coqa",
        }
    }

    /// The lm-evaluation-harness (0.4.x) task mirrored and its `metadata.version` (the table's Version column).
    pub fn version(self) -> &'static str {
        match self {
            TaskName::Mmlu => "mmlu 1.0",
            TaskName::Hellaswag => "hellaswag 1.0",
            TaskName::Winogrande => "winogrande 1.0",
            TaskName::ArcEasy => "arc_easy 1.0",
            TaskName::ArcChallenge => "arc_challenge 1.0",
            TaskName::Gsm8k => "gsm8k_cot 3.0",
            TaskName::Humaneval => "humaneval 1.0",
            TaskName::Coqa => "coqa 3.0",
        }
    }

    /// The harness's default few-shot count (MMLU: 5, the usual setting; the harness's own default is 0).
    pub fn default_shots(self) -> usize {
        match self {
            TaskName::Mmlu => 5,
            TaskName::Gsm8k => 8,
            _ => 0,
        }
    }

    /// Whether the offline data has few-shot examples for the task (MMLU's dev split, GSM8K's exemplars).
    pub fn has_fewshot_source(self) -> bool {
        matches!(self, TaskName::Mmlu | TaskName::Gsm8k)
    }

    /// Whether the task generates (and so takes minutes per item on a CPU) rather than scores choices.
    pub fn generates(self) -> bool {
        matches!(self, TaskName::Gsm8k | TaskName::Humaneval | TaskName::Coqa)
    }

    /// The (filter, metric) pairs the task reports, in table order.
    pub fn metrics(self) -> &'static [(&'static str, &'static str)] {
        match self {
            TaskName::Mmlu | TaskName::Winogrande => &[("none", "acc")],
            TaskName::Hellaswag | TaskName::ArcEasy | TaskName::ArcChallenge => {
                &[("none", "acc"), ("none", "acc_norm")]
            }
            TaskName::Gsm8k => &[("strict-match", "exact_match"), ("flexible-extract", "exact_match")],
            TaskName::Humaneval => &[("create_test", "pass@1")],
            TaskName::Coqa => &[("none", "em"), ("none", "f1")],
        }
    }

    /// Every item of the task with `shots` few-shot examples.
    pub fn load(self, shots: usize) -> Result<Vec<Item>> {
        if shots > 0 && !self.has_fewshot_source() {
            return Err(Error::Input(format!(
                "{} has no few-shot examples in the offline data (only its evaluation split); use --num-fewshot 0",
                self.name()
            )));
        }
        match self {
            TaskName::Mmlu => multiple_choice::mmlu(shots),
            TaskName::Hellaswag => multiple_choice::hellaswag(),
            TaskName::Winogrande => multiple_choice::winogrande(),
            TaskName::ArcEasy => multiple_choice::arc("ARC-Easy"),
            TaskName::ArcChallenge => multiple_choice::arc("ARC-Challenge"),
            TaskName::Gsm8k => gsm8k::gsm8k(shots),
            TaskName::Humaneval => humaneval::humaneval(),
            TaskName::Coqa => coqa::coqa(),
        }
    }
}

impl std::str::FromStr for TaskName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        TaskName::ALL.into_iter().find(|t| t.name() == s).ok_or_else(|| {
            let names: Vec<&str> = TaskName::ALL.iter().map(|t| t.name()).collect();
            Error::Input(format!("unknown task '{s}' (known: {})", names.join(", ")))
        })
    }
}

/// A seeded subset of `n` items' indices, in their original order: `limit` of them drawn without replacement
/// (all when `limit` is `None` or not below `n`).
pub fn subset(n: usize, limit: Option<usize>, seed: u64) -> Vec<usize> {
    use flexidepth::rng::Draw;
    let mut idx: Vec<usize> = (0..n).collect();
    match limit {
        Some(k) if k < n => {
            flexidepth::rng::seeded(seed).shuffle(&mut idx);
            idx.truncate(k);
            idx.sort_unstable();
            idx
        }
        _ => idx,
    }
}

/// Parse a comma list's task names, each once, in the order first given (`mmlu,mmlu` runs MMLU once); also returns
/// the names given more than once, for a note.
///
/// Errors: an unknown name, or no task.
pub fn parse_tasks(names: &[String]) -> Result<(Vec<TaskName>, Vec<String>)> {
    let mut tasks: Vec<TaskName> = Vec::new();
    let mut repeated = Vec::new();
    for n in names {
        let t: TaskName = n.trim().parse()?;
        if tasks.contains(&t) {
            repeated.push(t.name().to_string());
        } else {
            tasks.push(t);
        }
    }
    if tasks.is_empty() {
        return Err(Error::Input("no task given".into()));
    }
    Ok((tasks, repeated))
}

/// A task with its few-shot count and its (subset of) items, ready to run.
#[derive(Debug, Clone)]
pub struct LoadedTask {
    pub task: TaskName,
    pub shots: usize,
    pub items: Vec<Item>,
}

/// Load each task's items (`num_fewshot`, else the task's default shots) and take the seeded `--limit` subset
/// ([`subset`]).
///
/// Errors: a missing data file, few-shot examples a task has no source for.
pub fn load_tasks(
    tasks: &[TaskName],
    num_fewshot: Option<usize>,
    limit: Option<usize>,
    seed: u64,
) -> Result<Vec<LoadedTask>> {
    tasks
        .iter()
        .map(|&task| {
            let shots = num_fewshot.unwrap_or(task.default_shots());
            let all = task
                .load(shots)
                .map_err(|e| Error::Input(format!("cannot load {}: {e}", task.name())))?;
            let items = subset(all.len(), limit, seed)
                .into_iter()
                .map(|i| all[i].clone())
                .collect();
            Ok(LoadedTask { task, shots, items })
        })
        .collect()
}
