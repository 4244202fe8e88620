//! `flexidepth compare`'s outputs from the finished cells: the retain-% table (per-task primary scores, retain of
//! the single-token and generation groups and overall, layers and weight MB per token, decode speed-up), the
//! paper's table beside it (Llama-3-8B-Instruct, labelled as the paper's), the JSON report and the figure.

use super::grid::{Budget, Cell, Method};
use super::retain::{paper_retain, primary_metric, retain, Retain, PAPER, PAPER_LAYERS, PAPER_TASKS};
use crate::plot::{stack, Axis, LineChart};
use crate::tasks::TaskName;
use flexidepth::error::{Error, Result};
use serde::Serialize;
use std::fmt::Write as _;

/// One row of the table: a cell with its primary scores and retain against full depth.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub method: Method,
    pub skipped: usize,
    pub policy: String,
    pub threshold: Option<f32>,
    pub note: Option<String>,
    pub layers_per_token: f64,
    pub weight_mb_per_token: f64,
    /// Measured decode tokens/s over full depth's (1 for full depth itself), when timed.
    pub decode_speedup: Option<f64>,
    /// `(task, primary score)` in task order.
    pub scores: Vec<(String, f64)>,
    pub retain: Retain,
}

/// The rows of `cells` (which must hold the full-depth cell) for `tasks`, in the cells' order.
///
/// Errors: no full-depth cell, or a cell without one of the tasks.
pub fn rows(cells: &[Cell], tasks: &[TaskName]) -> Result<Vec<Row>> {
    let primaries = |c: &Cell| -> Result<Vec<(TaskName, f64)>> {
        tasks
            .iter()
            .map(|&t| {
                c.score(t.name(), primary_metric(t))
                    .map(|v| (t, v))
                    .ok_or_else(|| Error::Input(format!("cell {} has no {} score", c.key.stem(), t.name())))
            })
            .collect()
    };
    let full = cells
        .iter()
        .find(|c| c.key.method == Method::Full)
        .ok_or_else(|| Error::Input("the grid has no full-depth cell".into()))?;
    let full_scores = primaries(full)?;
    cells
        .iter()
        .map(|c| {
            let scores = primaries(c)?;
            Ok(Row {
                method: c.key.method,
                skipped: c.key.skipped,
                policy: c.policy.clone(),
                threshold: c.threshold,
                note: c.note.clone(),
                layers_per_token: c.layers_per_token(),
                weight_mb_per_token: c.bytes_per_token() / 1e6,
                decode_speedup: match c.key.method {
                    Method::Full => Some(1.0),
                    _ => c.decode.map(|d| d.speedup),
                },
                retain: retain(&scores, &full_scores),
                scores: scores.into_iter().map(|(t, v)| (t.name().to_string(), v)).collect(),
            })
        })
        .collect()
}

fn pct(x: Option<f64>) -> String {
    x.map_or("n/a".to_string(), |v| format!("{:.1}%", 100.0 * v))
}

/// Our retain table (markdown): one row per cell, grouped by budget.
pub fn table(rows: &[Row], num_layers: usize) -> String {
    let Some(first) = rows.first() else {
        return String::new();
    };
    let mut s = String::from("| skip | method | policy | layers/token | weight MB/token | decode speed-up |");
    let mut rule = String::from("|---:|---|---|---:|---:|---:|");
    for (t, _) in &first.scores {
        let _ = write!(s, " {t} |");
        rule += "---:|";
    }
    s += " single-token retain | generation retain | retain |\n";
    rule += "---:|---:|---:|\n";
    s += &rule;
    for r in rows {
        let skip = match r.method {
            Method::Full => format!("0 of {num_layers}"),
            _ => format!("{} of {num_layers}", r.skipped),
        };
        let _ = write!(
            s,
            "| {skip} | {} | `{}` | {:.2} | {:.2} | {} |",
            r.method.paper_name(),
            r.policy,
            r.layers_per_token,
            r.weight_mb_per_token,
            r.decode_speedup.map_or("–".to_string(), |v| format!("{v:.2}×"))
        );
        for (task, v) in &r.scores {
            let ratio = r.retain.ratios.iter().find(|(t, _)| t == task).and_then(|p| p.1);
            let shown = match (r.method, ratio) {
                (Method::Full, _) => format!("{v:.3}"),
                (_, Some(q)) => format!("{v:.3} ({:.0}%)", 100.0 * q),
                (_, None) => format!("{v:.3} (n/a)"),
            };
            let _ = write!(s, " {shown} |");
        }
        let _ = writeln!(
            s,
            " {} | {} | **{}** |",
            pct(r.retain.single_token),
            pct(r.retain.generation),
            pct(r.retain.overall)
        );
    }
    s
}

/// The paper's table (Llama-3-8B-Instruct, 32 layers), with the retain our rule computes from its scores beside
/// the retain it prints.
pub fn paper_table() -> String {
    let mut s = String::from("| skip (of 32) | method |");
    let mut rule = String::from("|---:|---|");
    for t in PAPER_TASKS {
        let _ = write!(s, " {} |", t.name());
        rule += "---:|";
    }
    s += " single-token retain | generation retain | retain (ours, from its scores) | retain (as printed) |\n";
    rule += "---:|---:|---:|---:|\n";
    s += &rule;
    for row in &PAPER {
        let r = paper_retain(row);
        let _ = write!(s, "| {} | {} |", row.skipped, row.method);
        for v in row.scores {
            let _ = write!(s, " {v:.3} |");
        }
        let _ = writeln!(
            s,
            " {} | {} | {} | {:.1}% |",
            pct(r.single_token),
            pct(r.generation),
            pct(r.overall),
            row.retain_pct
        );
    }
    s
}

/// Lines saying what each budget means on this model.
pub fn budget_lines(budgets: &[(Budget, usize)], num_layers: usize) -> String {
    budgets
        .iter()
        .map(|(b, k)| {
            format!(
                "- budget {} of {num_layers} layers = {:.2} → skip k = {k} layers per token (rounded to the nearest; \
                 the paper's {} of {PAPER_LAYERS})\n",
                b.text,
                b.fraction * num_layers as f64,
                (b.fraction * PAPER_LAYERS as f64).round()
            )
        })
        .collect()
}

/// The figure: overall retain % against layers skipped per token, one line per method (each from full depth's
/// 100% at 0); below it the paper's (Llama-3-8B-Instruct, from its printed retain %).
pub fn figure(title: &str, rows: &[Row], num_layers: usize) -> String {
    let order = [
        Method::LayerSkip,
        Method::ShortGpt,
        Method::Laco,
        Method::MindSkip,
        Method::FlexiDepth,
    ];
    let mut ours = LineChart::new(
        &format!("{title}: retain % vs layers skipped (of {num_layers})"),
        Axis::new("layers skipped per token (budget k)"),
        Axis::new("retain % of full depth (mean over tasks)"),
    );
    for m in order {
        let mut pts: Vec<(f64, f64)> = rows
            .iter()
            .filter(|r| r.method == m)
            .filter_map(|r| r.retain.overall.map(|v| (r.skipped as f64, 100.0 * v)))
            .collect();
        if pts.is_empty() {
            continue;
        }
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        pts.insert(0, (0.0, 100.0));
        ours = ours.with(m.paper_name(), pts);
    }
    let mut paper = LineChart::new(
        "The paper's table (Llama-3-8B-Instruct, 32 layers): retain % vs layers skipped",
        Axis::new("layers skipped per token (of 32)"),
        Axis::new("retain % (as printed)"),
    );
    for m in order {
        let mut pts: Vec<(f64, f64)> = PAPER
            .iter()
            .filter(|p| p.method == m.paper_name())
            .map(|p| (p.skipped as f64, p.retain_pct))
            .collect();
        pts.insert(0, (0.0, 100.0));
        paper = paper.with(&format!("paper: {}", m.paper_name()), pts);
    }
    stack(&[ours.to_svg(), paper.to_svg()])
}

/// The JSON report.
#[derive(Debug, Serialize)]
pub struct CompareReport<'a> {
    pub model: &'a str,
    pub num_layers: usize,
    /// `(budget, layers skipped)`.
    pub budgets: &'a [(Budget, usize)],
    pub tasks: Vec<&'static str>,
    /// `(task, filter, metric)` each task's retain uses.
    pub primary_metrics: Vec<(&'static str, &'static str, &'static str)>,
    pub rows: &'a [Row],
    pub cells: &'a [Cell],
    /// The paper's table with the retain our rule computes from its scores.
    pub paper: Vec<(super::retain::PaperRow, Retain)>,
}

impl<'a> CompareReport<'a> {
    pub fn new(
        model: &'a str,
        num_layers: usize,
        budgets: &'a [(Budget, usize)],
        tasks: &[TaskName],
        rows: &'a [Row],
        cells: &'a [Cell],
    ) -> Self {
        CompareReport {
            model,
            num_layers,
            budgets,
            tasks: tasks.iter().map(|t| t.name()).collect(),
            primary_metrics: tasks
                .iter()
                .map(|&t| {
                    let (f, m) = primary_metric(t);
                    (t.name(), f, m)
                })
                .collect(),
            rows,
            cells,
            paper: PAPER.iter().map(|p| (*p, paper_retain(p))).collect(),
        }
    }
}

/// The score of guessing on a task's primary metric: 1/choices for multiple choice (ARC: most items have 4),
/// 0 for the generation tasks (their floor).
pub fn chance(task: TaskName) -> f64 {
    match task {
        TaskName::Mmlu | TaskName::Hellaswag | TaskName::ArcEasy | TaskName::ArcChallenge => 0.25,
        TaskName::Winogrande => 0.5,
        TaskName::Gsm8k | TaskName::Humaneval | TaskName::Coqa => 0.0,
    }
}

/// Full depth's primary scores against chance: a score within two standard errors of chance (or below it) is "at
/// chance", and its retain ratios mean little.
pub fn chance_table(full: &Cell, tasks: &[TaskName]) -> String {
    let mut s = String::from("| task | metric | full depth | chance | at chance? |\n|---|---|---:|---:|---|\n");
    for &t in tasks {
        let (filter, metric) = primary_metric(t);
        let m = full
            .tasks
            .iter()
            .find(|x| x.task == t.name())
            .and_then(|x| x.metrics.iter().find(|m| m.filter == filter && m.metric == metric));
        let Some(m) = m else { continue };
        let c = chance(t);
        let se = m.stderr.unwrap_or(0.0);
        let verdict = if m.value > c + 2.0 * se {
            "no"
        } else if m.value < c - 2.0 * se {
            "**yes** (below chance)"
        } else {
            "**yes** (within 2 s.e.)"
        };
        let _ = writeln!(
            s,
            "| {} | {metric} ({filter}) | {:.3} ± {:.3} | {c:.2} | {verdict} |",
            t.name(),
            m.value,
            se
        );
    }
    s
}

/// The whole markdown report.
#[allow(clippy::too_many_arguments)]
pub fn markdown(
    title: &str,
    rows: &[Row],
    cells: &[Cell],
    budgets: &[(Budget, usize)],
    num_layers: usize,
    tasks: &[TaskName],
    limit: Option<usize>,
    seed: u64,
) -> String {
    let mut s = format!("# Method comparison: {title}\n\n");
    let items: Vec<String> = cells
        .first()
        .map(|c| c.tasks.iter().map(|t| format!("{} {}", t.task, t.n_items)).collect())
        .unwrap_or_default();
    let _ = writeln!(
        s,
        "Tasks and items per task: {} (limit {}, seed {seed}; the same items in every cell).\n",
        items.join(", "),
        limit.map_or("none".to_string(), |l| l.to_string())
    );
    s += &budget_lines(budgets, num_layers);
    let prim: Vec<String> = tasks
        .iter()
        .map(|&t| {
            let (f, m) = primary_metric(t);
            format!("{} {m} ({f})", t.name())
        })
        .collect();
    let _ = writeln!(
        s,
        "\nRetain = mean over tasks of (score / full depth's score), on each task's primary metric: {}. \
         Single-token group: mmlu, hellaswag, winogrande, arc; generation group: gsm8k, humaneval, coqa. A task \
         where full depth scores 0 has no ratio (n/a) and is left out of the means. Layers and weight MB per \
         token: every token row the model processed in the cell (head and embedding not counted). Decode \
         speed-up: median over interleaved rounds of the policy's greedy decode tokens/s over full depth's.\n",
        prim.join(", ")
    );
    s += &table(rows, num_layers);
    for r in rows.iter().filter(|r| r.note.is_some()) {
        let _ = writeln!(
            s,
            "\n- {} skip {}: {}",
            r.method.paper_name(),
            r.skipped,
            r.note.as_deref().unwrap_or_default()
        );
    }
    if let Some(full) = cells.iter().find(|c| c.key.method == Method::Full) {
        s += "\n## Full depth against chance\n\n";
        s += &chance_table(full, tasks);
    }
    s += "\n## The paper's table, for reference (Llama-3-8B-Instruct, 32 layers; not this model)\n\n";
    s += &paper_table();
    s
}
