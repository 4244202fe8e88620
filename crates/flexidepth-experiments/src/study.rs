//! The layer-usage study of the FlexiDepth paper: how many layers a generated token uses, per kind of task.
//!
//! Six tasks. Three on 100 paragraphs of the held-out novel ([`HELDOUT_NOVEL`], never in training data):
//! copy, summarize, continue. Three on 100 random lists of 5–10 integers in 10..=99: repeat, sum, product. Each
//! instance is one user message in the model's chat template (generation prompt added), decoded greedily with a
//! depth trace; a task's figure is the mean of layers used over all its generated tokens (each token weighs the
//! same, so long answers count more), with the population variance over the same tokens. The paper reports
//! (Llama-3-8B-Instruct, 32 layers) copy 22.0, summarize 28.7, continue 30.3, repeat 20.1, add 22.5, multiply 23.9.
//!
//! Prompt forms: a paragraph task reads `"{instruction}:\n\n{paragraph}"` (e.g. `Please copy this paragraph:`,
//! a blank line, the paragraph); a list task reads `"{instruction}: [12, 45, 78]"`.
//!
//! Instances are drawn with [`flexidepth::rng`] (ChaCha8, keyed by the seed), not `rand`'s `StdRng`, whose stream
//! may change between `rand` versions: the same seed must give the same paragraphs and lists for as long as the
//! study is compared. Paragraphs and lists have their own streams, so picking a subset of tasks does not change any
//! instance. (Studies committed before this generator, at commit 422e5e2 and earlier, drew with a SplitMix64.)

use crate::corpus::{paragraphs, read_novel, HELDOUT_NOVEL};
use flexidepth::chat::{ChatTemplate, Message};
use flexidepth::depth::{DepthMode, FlexiDepth, DEFAULT_SKIP_THRESHOLD};
use flexidepth::error::{Error, Result};
use flexidepth::generate::{generate, GenerateOptions};
use flexidepth::model::Model;
use flexidepth::rng::Draw;
use flexidepth::tokenizer::Tokenizer;
use flexidepth::trace::DepthTrace;
use serde::{Deserialize, Serialize};
use std::fmt::Write;

/// What a task's instances are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskKind {
    Paragraph,
    List,
}

/// One of the six tasks, with the paper's figure for it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Task {
    /// Short name, as `--tasks` takes it.
    pub name: &'static str,
    /// The paper's label for it.
    pub paper_name: &'static str,
    pub instruction: &'static str,
    pub kind: TaskKind,
    /// Mean layers used per generated token in the paper, of [`PAPER_LAYERS`].
    pub paper_layers: f64,
}

/// Layers of the paper's model (Llama-3-8B-Instruct).
pub const PAPER_LAYERS: usize = 32;

/// The six tasks, in the paper's order.
pub const TASKS: [Task; 6] = [
    Task {
        name: "copy",
        paper_name: "copy",
        instruction: "Please copy this paragraph",
        kind: TaskKind::Paragraph,
        paper_layers: 22.0,
    },
    Task {
        name: "summarize",
        paper_name: "summarize",
        instruction: "Please summarize this paragraph into a single sentence",
        kind: TaskKind::Paragraph,
        paper_layers: 28.7,
    },
    Task {
        name: "continue",
        paper_name: "continue",
        instruction: "Please continue writing this paragraph",
        kind: TaskKind::Paragraph,
        paper_layers: 30.3,
    },
    Task {
        name: "repeat",
        paper_name: "repeat",
        instruction: "Please repeat the following list for 5 times",
        kind: TaskKind::List,
        paper_layers: 20.1,
    },
    Task {
        name: "sum",
        paper_name: "add",
        instruction: "Please calculate the sum of numbers in the following list",
        kind: TaskKind::List,
        paper_layers: 22.5,
    },
    Task {
        name: "product",
        paper_name: "multiply",
        instruction: "Please calculate the product of numbers in the following list",
        kind: TaskKind::List,
        paper_layers: 23.9,
    },
];

/// Paragraph length limits, in whitespace-separated words: long enough to be a task, short enough to copy.
pub const MIN_WORDS: usize = 40;
pub const MAX_WORDS: usize = 200;
/// List lengths and values.
pub const LIST_LEN: std::ops::RangeInclusive<usize> = 5..=10;
pub const LIST_VALUES: std::ops::RangeInclusive<u32> = 10..=99;

/// Parse a comma list of task names (the paper's labels `add`, `multiply` are accepted too), in the paper's order,
/// without repeats.
pub fn parse_tasks(s: &str) -> Result<Vec<Task>> {
    let mut wanted = Vec::new();
    for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let task = TASKS
            .iter()
            .find(|t| t.name.eq_ignore_ascii_case(name) || t.paper_name.eq_ignore_ascii_case(name))
            .ok_or_else(|| {
                let names: Vec<&str> = TASKS.iter().map(|t| t.name).collect();
                Error::Input(format!("unknown task '{name}' (one of {})", names.join(", ")))
            })?;
        wanted.push(task.name);
    }
    if wanted.is_empty() {
        return Err(Error::Input("no task given".into()));
    }
    Ok(TASKS.iter().filter(|t| wanted.contains(&t.name)).copied().collect())
}

const PARAGRAPH_STREAM: u64 = 1;
const LIST_STREAM: u64 = 2;

fn word_count(s: &str) -> usize {
    s.split_whitespace().count()
}

/// `n` paragraphs of `MIN_WORDS..=MAX_WORDS` words from `candidates`, chosen with `seed`, in their original order.
/// Errors when fewer than `n` qualify.
pub fn select_paragraphs(candidates: &[String], n: usize, seed: u64) -> Result<Vec<String>> {
    let mut eligible: Vec<usize> = (0..candidates.len())
        .filter(|&i| (MIN_WORDS..=MAX_WORDS).contains(&word_count(&candidates[i])))
        .collect();
    if eligible.len() < n {
        return Err(Error::Input(format!(
            "only {} paragraphs of {MIN_WORDS}–{MAX_WORDS} words, {n} asked for",
            eligible.len()
        )));
    }
    // A partial Fisher–Yates shuffle: the first n places are a uniform sample.
    let mut rng = flexidepth::rng::seeded_stream(seed, PARAGRAPH_STREAM);
    for i in 0..n {
        let j = i + rng.below(eligible.len() - i);
        eligible.swap(i, j);
    }
    let mut chosen = eligible[..n].to_vec();
    chosen.sort_unstable();
    Ok(chosen.into_iter().map(|i| candidates[i].clone()).collect())
}

/// The study's paragraphs: from the held-out novel only (`scripts/fetch-data.sh` fetches it), with runs of spaces
/// (the text's double spaces after a full stop) made single, as prose is typed today.
pub fn study_paragraphs(n: usize, seed: u64) -> Result<Vec<String>> {
    let text = read_novel(HELDOUT_NOVEL)?;
    let all: Vec<String> = paragraphs(&text)
        .into_iter()
        .map(|p| p.text.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    select_paragraphs(&all, n, seed)
}

/// `n` lists of `LIST_LEN` integers in `LIST_VALUES`, drawn with `seed`.
pub fn random_lists(n: usize, seed: u64) -> Vec<Vec<u32>> {
    let mut rng = flexidepth::rng::seeded_stream(seed, LIST_STREAM);
    (0..n)
        .map(|_| {
            let len = rng.range(*LIST_LEN.start(), *LIST_LEN.end());
            (0..len)
                .map(|_| rng.range(*LIST_VALUES.start() as usize, *LIST_VALUES.end() as usize) as u32)
                .collect()
        })
        .collect()
}

/// `[12, 45, 78]`.
pub fn format_list(list: &[u32]) -> String {
    let items: Vec<String> = list.iter().map(u32::to_string).collect();
    format!("[{}]", items.join(", "))
}

/// The user message of one paragraph-task instance.
pub fn paragraph_prompt(task: &Task, paragraph: &str) -> String {
    format!("{}:\n\n{paragraph}", task.instruction)
}

/// The user message of one list-task instance.
pub fn list_prompt(task: &Task, list: &[u32]) -> String {
    format!("{}: {}", task.instruction, format_list(list))
}

/// The user messages of `task`, one per instance. Paragraph tasks need `paragraphs`, list tasks `lists`.
pub fn task_prompts(task: &Task, paragraphs: &[String], lists: &[Vec<u32>]) -> Vec<String> {
    match task.kind {
        TaskKind::Paragraph => paragraphs.iter().map(|p| paragraph_prompt(task, p)).collect(),
        TaskKind::List => lists.iter().map(|l| list_prompt(task, l)).collect(),
    }
}

/// Population mean and variance (divided by n, not n − 1: the tokens are the whole population measured).
/// `(NaN, NaN)` for no values.
pub fn mean_variance(values: &[f64]) -> (f64, f64) {
    if values.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|&v| (v - mean).powi(2)).sum::<f64>() / n;
    (mean, var)
}

/// One generated answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceResult {
    pub prompt: String,
    pub prompt_tokens: usize,
    /// The answer, as shown.
    pub text: String,
    /// Layers used by each generated token, in order.
    pub layers: Vec<f64>,
    pub mean_layers: f64,
}

/// One task's figures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskResult {
    pub task: String,
    pub paper_name: String,
    pub instruction: String,
    pub paper_layers: f64,
    /// `paper_layers / 32`.
    pub paper_fraction: f64,
    /// Mean layers used over every generated token of the task.
    pub mean_layers: f64,
    /// `mean_layers` over the model's layers.
    pub fraction: f64,
    /// Population variance of layers used over the same tokens.
    pub variance: f64,
    pub generated_tokens: usize,
    pub instances: Vec<InstanceResult>,
    /// The first instance's trace, for its depth map (not serialised: the per-token layers are).
    #[serde(skip)]
    pub first_trace: Option<DepthTrace>,
}

/// One pass of the study under one depth setting.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StudyRun {
    /// "dynamic", "full depth", "no skip kv", ...
    pub label: String,
    pub depth_mode: String,
    pub skip_threshold: f32,
    pub skip_kv: bool,
    pub tasks: Vec<TaskResult>,
}

/// What was run, shared by every pass.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StudySetup {
    pub model: String,
    /// Weight format in memory (`f32`, `q`).
    pub dtype: String,
    pub depth_file: Option<String>,
    pub num_layers: usize,
    pub routed_layers: Vec<usize>,
    pub instances: usize,
    pub max_new_tokens: usize,
    pub seed: u64,
    /// Wall time of every run together, in seconds.
    pub wall_s: f64,
}

/// The whole study, as written to `study.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StudyReport {
    pub setup: StudySetup,
    pub runs: Vec<StudyRun>,
}

fn mode_name(mode: DepthMode) -> &'static str {
    match mode {
        DepthMode::Dynamic => "dynamic",
        DepthMode::Run => "run",
        DepthMode::Skip => "skip",
    }
}

/// Generates answers for the study: the model, its tokenizer and template, and how to decode.
pub struct StudyRunner<'a> {
    pub model: &'a Model,
    pub tokenizer: &'a Tokenizer,
    pub template: &'a ChatTemplate,
    pub eos_token_ids: Vec<u32>,
    pub max_new_tokens: usize,
}

impl StudyRunner<'_> {
    /// One instance: greedy chat generation with a trace, the layers used by each generated token.
    pub fn run_instance(&self, prompt: &str, depth: FlexiDepth) -> Result<(InstanceResult, DepthTrace)> {
        let text = self.template.render(&[Message::new("user", prompt)], true)?;
        let ids = self.tokenizer.encode(&text, false)?;
        let mut opts = GenerateOptions::greedy(self.max_new_tokens, self.eos_token_ids.clone());
        opts.policy = std::sync::Arc::new(depth);
        opts.trace = true;
        let gen = generate(self.model, self.tokenizer, &ids, &opts, &mut |_| Ok(()))?;
        let trace = gen.trace.unwrap_or_default();
        let layers: Vec<f64> = trace
            .tokens
            .iter()
            .filter(|t| !t.prompt)
            .map(|t| t.layers_used)
            .collect();
        let (mean_layers, _) = mean_variance(&layers);
        let result = InstanceResult {
            prompt: prompt.to_string(),
            prompt_tokens: ids.len(),
            text: gen.text,
            layers,
            mean_layers,
        };
        Ok((result, trace))
    }

    /// One task over `prompts`; `progress` is called after each instance.
    pub fn run_task(
        &self,
        task: &Task,
        prompts: &[String],
        depth: FlexiDepth,
        progress: &mut dyn FnMut(),
    ) -> Result<TaskResult> {
        let mut instances = Vec::with_capacity(prompts.len());
        let mut first_trace = None;
        for prompt in prompts {
            let (inst, trace) = self.run_instance(prompt, depth)?;
            first_trace.get_or_insert(trace);
            instances.push(inst);
            progress();
        }
        let all: Vec<f64> = instances.iter().flat_map(|i| i.layers.iter().copied()).collect();
        let (mean_layers, variance) = mean_variance(&all);
        let num_layers = self.model.config.num_hidden_layers;
        Ok(TaskResult {
            task: task.name.to_string(),
            paper_name: task.paper_name.to_string(),
            instruction: task.instruction.to_string(),
            paper_layers: task.paper_layers,
            paper_fraction: task.paper_layers / PAPER_LAYERS as f64,
            mean_layers,
            fraction: mean_layers / num_layers as f64,
            variance,
            generated_tokens: all.len(),
            instances,
            first_trace,
        })
    }

    /// Every task of `tasks` under one depth setting.
    pub fn run_study(
        &self,
        label: &str,
        tasks: &[(Task, Vec<String>)],
        depth: FlexiDepth,
        progress: &mut dyn FnMut(&str),
    ) -> Result<StudyRun> {
        let mut results = Vec::with_capacity(tasks.len());
        for (task, prompts) in tasks {
            results.push(self.run_task(task, prompts, depth, &mut || progress(task.name))?);
        }
        Ok(StudyRun {
            label: label.to_string(),
            depth_mode: mode_name(depth.mode).to_string(),
            skip_threshold: depth.threshold_or(self.model.skip_threshold().unwrap_or(DEFAULT_SKIP_THRESHOLD)),
            skip_kv: depth.skip_kv,
            tasks: results,
        })
    }
}

/// The run's table: task | paper (of 32) | paper fraction | ours mean (of N layers) | ours fraction | variance |
/// generated tokens.
pub fn markdown_table(run: &StudyRun, num_layers: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| task | paper (of {PAPER_LAYERS}) | paper fraction | ours mean (of {num_layers}) | ours fraction | variance \
         | generated tokens |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|");
    for t in &run.tasks {
        let name = if t.task == t.paper_name {
            t.task.clone()
        } else {
            format!("{} ({})", t.task, t.paper_name)
        };
        let _ = writeln!(
            out,
            "| {name} | {:.1} | {:.3} | {:.2} | {:.3} | {:.2} | {} |",
            t.paper_layers, t.paper_fraction, t.mean_layers, t.fraction, t.variance, t.generated_tokens
        );
    }
    out
}

/// `study.md`: the setup, how the figures are computed, one table per run, and the depth maps.
pub fn markdown_report(report: &StudyReport, depth_maps: &[String]) -> String {
    let s = &report.setup;
    let mut out = String::from("# Layer-usage study\n\n");
    let routed = match (s.routed_layers.first(), s.routed_layers.last()) {
        (Some(a), Some(b)) => format!("routed layers {a}..={b}"),
        _ => "no routed layers".to_string(),
    };
    let _ = writeln!(
        out,
        "Model `{}` ({} layers, {routed}, {}), depth file `{}`. {} instances per task, greedy decoding of at most \
         {} new tokens, seed {}; {:.0} s for all runs.\n",
        s.model,
        s.num_layers,
        s.dtype,
        s.depth_file.as_deref().unwrap_or("none"),
        s.instances,
        s.max_new_tokens,
        s.seed,
        s.wall_s
    );
    let _ = writeln!(
        out,
        "Paragraph tasks use paragraphs of {MIN_WORDS}–{MAX_WORDS} words from *{HELDOUT_NOVEL}* (held out of \
         training data), as `{{instruction}}:\\n\\n{{paragraph}}`; list tasks use lists of {}–{} integers in {}..={}, \
         as `{{instruction}}: [12, 45, 78]`. Each prompt is one user message in the model's chat template. \
         *Mean* is layers used per generated token over all generated tokens of a task; *variance* is the \
         population variance over the same tokens. The paper's figures are for Llama-3-8B-Instruct (32 layers); \
         the fractions compare across depths.\n",
        LIST_LEN.start(),
        LIST_LEN.end(),
        LIST_VALUES.start(),
        LIST_VALUES.end()
    );
    for run in &report.runs {
        let _ = writeln!(
            out,
            "## {} (mode {}, threshold {}, skipped tokens write K/V: {})\n",
            run.label, run.depth_mode, run.skip_threshold, run.skip_kv
        );
        out.push_str(&markdown_table(run, s.num_layers));
        out.push('\n');
    }
    if !depth_maps.is_empty() {
        out.push_str("## Depth maps\n\nThe first instance of each task, generated tokens only:\n\n");
        for m in depth_maps {
            let _ = writeln!(out, "- [{m}]({m})");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(n: usize, tag: usize) -> String {
        vec![format!("w{tag}"); n].join(" ")
    }

    #[test]
    fn paragraphs_are_seeded_in_limits_and_from_the_input() {
        let candidates: Vec<String> = (0..300).map(|i| words(10 + i, i)).collect();
        let a = select_paragraphs(&candidates, 50, 42).unwrap();
        assert_eq!(
            a,
            select_paragraphs(&candidates, 50, 42).unwrap(),
            "same seed, same paragraphs"
        );
        assert_ne!(a, select_paragraphs(&candidates, 50, 43).unwrap());
        assert_eq!(a.len(), 50);
        for p in &a {
            assert!(candidates.contains(p), "only the given paragraphs");
            assert!((MIN_WORDS..=MAX_WORDS).contains(&word_count(p)), "{}", word_count(p));
        }
        let mut sorted = a.clone();
        sorted.sort_by_key(|p| word_count(p));
        assert_eq!(a, sorted, "kept in the novel's order");
        let mut dedup = a.clone();
        dedup.dedup();
        assert_eq!(dedup.len(), 50, "no paragraph twice");
        // 161 candidates have 40..=200 words.
        assert!(select_paragraphs(&candidates, 161, 1).is_ok());
        assert!(matches!(select_paragraphs(&candidates, 162, 1), Err(Error::Input(_))));
    }

    #[test]
    fn lists_are_seeded_and_in_range() {
        let a = random_lists(100, 42);
        assert_eq!(a, random_lists(100, 42));
        assert_ne!(a, random_lists(100, 7));
        assert_eq!(a[..10], random_lists(10, 42)[..], "a prefix of a longer draw");
        let mut lens = std::collections::BTreeSet::new();
        for l in &a {
            assert!(LIST_LEN.contains(&l.len()), "{l:?}");
            assert!(l.iter().all(|v| LIST_VALUES.contains(v)), "{l:?}");
            lens.insert(l.len());
        }
        assert_eq!(lens.len(), 6, "every length 5..=10 occurs in 100 draws");
        let all: Vec<u32> = a.concat();
        assert!(all.contains(&10) && all.contains(&99), "both ends occur");
    }

    #[test]
    fn prompts_have_the_papers_forms() {
        let tasks = parse_tasks("copy,repeat").unwrap();
        assert_eq!(
            paragraph_prompt(&tasks[0], "It was dark."),
            "Please copy this paragraph:\n\nIt was dark."
        );
        assert_eq!(
            list_prompt(&tasks[1], &[12, 45, 78]),
            "Please repeat the following list for 5 times: [12, 45, 78]"
        );
        let ps = task_prompts(&TASKS[5], &[], &[vec![10, 11]]);
        assert_eq!(
            ps,
            vec!["Please calculate the product of numbers in the following list: [10, 11]"]
        );
    }

    #[test]
    fn task_lists_parse_in_paper_order() {
        let names = |s| parse_tasks(s).unwrap().iter().map(|t| t.name).collect::<Vec<_>>();
        assert_eq!(names("product, sum,copy,sum"), vec!["copy", "sum", "product"]);
        assert_eq!(names("add,multiply"), vec!["sum", "product"]);
        assert_eq!(names("copy,summarize,continue,repeat,sum,product").len(), 6);
        assert!(parse_tasks("copy,divide").is_err());
        assert!(parse_tasks(" , ").is_err());
    }

    #[test]
    fn mean_and_population_variance() {
        let (m, v) = mean_variance(&[20.0, 22.0, 24.0, 30.0]);
        assert!((m - 24.0).abs() < 1e-12);
        // (16 + 4 + 0 + 36) / 4
        assert!((v - 14.0).abs() < 1e-12);
        assert_eq!(mean_variance(&[30.0, 30.0, 30.0]), (30.0, 0.0));
        assert!(mean_variance(&[]).0.is_nan());
    }

    fn result(task: &Task, mean: f64) -> TaskResult {
        TaskResult {
            task: task.name.into(),
            paper_name: task.paper_name.into(),
            instruction: task.instruction.into(),
            paper_layers: task.paper_layers,
            paper_fraction: task.paper_layers / 32.0,
            mean_layers: mean,
            fraction: mean / 30.0,
            variance: 1.5,
            generated_tokens: 12,
            instances: vec![],
            first_trace: None,
        }
    }

    #[test]
    fn table_has_a_row_per_task() {
        let run = StudyRun {
            label: "dynamic".into(),
            depth_mode: "dynamic".into(),
            skip_threshold: 0.5,
            skip_kv: true,
            tasks: TASKS.iter().map(|t| result(t, 24.0)).collect(),
        };
        let table = markdown_table(&run, 30);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 2 + 6);
        assert!(lines[0].contains("paper (of 32)") && lines[0].contains("ours mean (of 30)"));
        let cols = lines[0].matches('|').count();
        assert!(lines.iter().all(|l| l.matches('|').count() == cols), "{table}");
        assert_eq!(lines[2], "| copy | 22.0 | 0.688 | 24.00 | 0.800 | 1.50 | 12 |");
        assert!(lines[6].starts_with("| sum (add) | 22.5 |"));
        let report = StudyReport {
            setup: StudySetup {
                model: "m".into(),
                dtype: "f32".into(),
                depth_file: None,
                num_layers: 30,
                routed_layers: vec![15, 29],
                instances: 2,
                max_new_tokens: 4,
                seed: 42,
                wall_s: 1.0,
            },
            runs: vec![run],
        };
        let md = markdown_report(&report, &["depthmap-copy.svg".into()]);
        assert!(md.contains("routed layers 15..=29") && md.contains("## dynamic") && md.contains(&table));
        let json = serde_json::to_string(&report).unwrap();
        let back: StudyReport = serde_json::from_str(&json).unwrap();
        assert_eq!(back.runs[0].tasks.len(), 6);
    }
}
