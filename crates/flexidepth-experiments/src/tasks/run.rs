//! Running a task's items through [`Lm`] and scoring them: one [`ItemRecord`] per item (prompt, output, scores),
//! then the task's metrics with their standard errors ([`TaskResult`]).

use super::humaneval::{self, Limits, Outcome};
use super::lm::{Cost, GenRequest, Lm};
use super::metrics::{self, acc_and_norm, coqa_scores, exact_match, gsm8k_extract};
use super::{Item, Kind, TaskName};
use flexidepth::chat::{ChatTemplate, Message};
use flexidepth::error::{Error, Result};
use std::collections::BTreeMap;

/// How items are run.
#[derive(Clone, Copy)]
pub struct RunOptions<'a> {
    /// `--chat`: each context or prompt becomes one user message in the model's chat template, with the
    /// generation prompt (the harness's `--apply_chat_template`).
    pub chat: Option<&'a ChatTemplate>,
    /// `--confirm-run-unsafe-code`: HumanEval may execute model-written programs.
    pub confirm_run_unsafe_code: bool,
    pub limits: Limits,
    /// `--batch-size`: generation requests decoded together (1: one at a time, as before batching existed).
    pub batch_size: usize,
}

/// One scored item, as the JSON output records it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ItemRecord {
    pub id: String,
    /// The context or prompt given to the model (for partial scoring, the option contexts joined by a line).
    pub prompt: String,
    /// What the model produced: the choices' log-likelihoods, or the generated text and its filtered answers.
    pub output: serde_json::Value,
    /// `"{metric},{filter}"` → score, as the harness's JSON keys them.
    pub scores: BTreeMap<String, f64>,
}

/// One row of the results table.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MetricRow {
    pub filter: String,
    pub metric: String,
    pub value: f64,
    /// The harness's `mean_stderr`; `None` for a single item.
    pub stderr: Option<f64>,
}

/// A task's results.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TaskResult {
    pub task: TaskName,
    pub version: String,
    pub n_shot: usize,
    pub n_items: usize,
    pub metrics: Vec<MetricRow>,
    /// Every token row the model processed for the task, with the layers and weight bytes it used.
    pub cost: Cost,
    pub layers_per_token: f64,
    pub weight_bytes_per_token: f64,
    pub wall_s: f64,
    pub items: Vec<ItemRecord>,
}

fn wrap(chat: Option<&ChatTemplate>, text: &str) -> Result<String> {
    match chat {
        Some(t) => t.render(&[Message::new("user", text)], true),
        None => Ok(text.to_string()),
    }
}

/// Score one item (see [`Kind`] for each rule).
///
/// Errors: HumanEval without `confirm_run_unsafe_code`; the model's errors (a context longer than its window).
pub fn score_item(lm: &mut Lm, item: &Item, opts: &RunOptions) -> Result<ItemRecord> {
    let key = |m: &str, f: &str| format!("{m},{f}");
    let mut scores = BTreeMap::new();
    let (prompt, output) = match &item.kind {
        Kind::Choice { context, choices, gold } => {
            let context = wrap(opts.chat, context)?;
            let conts: Vec<String> = choices.iter().map(|c| format!(" {c}")).collect();
            let lls: Vec<f64> = lm.choices(&context, &conts)?.iter().map(|l| l.logprob).collect();
            let (acc, norm) = acc_and_norm(&lls, choices, *gold);
            scores.insert(key("acc", "none"), acc);
            scores.insert(key("acc_norm", "none"), norm);
            (context, serde_json::json!({ "logliks": lls, "gold": gold }))
        }
        Kind::Partial {
            contexts,
            continuation,
            gold,
        } => {
            let mut lls = Vec::with_capacity(contexts.len());
            let mut shown = Vec::new();
            for c in contexts {
                let c = wrap(opts.chat, c)?;
                lls.push(lm.choices(&c, &[format!(" {continuation}")])?[0].logprob);
                shown.push(c);
            }
            scores.insert(key("acc", "none"), (metrics::argmax(&lls) == *gold) as u8 as f64);
            (
                shown.join("\n"),
                serde_json::json!({ "continuation": continuation, "logliks": lls, "gold": gold }),
            )
        }
        Kind::Gsm8k { .. } | Kind::Coqa { .. } | Kind::HumanEval { .. } => {
            let req = generation_request(item, opts)?.expect("a generation kind");
            let text = lm.generate_until(&req.prompt, &req.stops, req.max_new_tokens)?;
            return score_generation(item, req.prompt, text, opts);
        }
    };
    Ok(ItemRecord {
        id: item.id.clone(),
        prompt,
        output,
        scores,
    })
}

/// The `generate_until` request of a generation item (GSM8K, CoQA, HumanEval), `None` for a log-likelihood one.
///
/// Errors: HumanEval without `confirm_run_unsafe_code`; a chat template that fails to render.
pub fn generation_request(item: &Item, opts: &RunOptions) -> Result<Option<GenRequest>> {
    let stops = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let (prompt, stops, max_new_tokens) = match &item.kind {
        Kind::Choice { .. } | Kind::Partial { .. } => return Ok(None),
        Kind::Gsm8k { prompt, .. } => (prompt, stops(&super::gsm8k::STOPS), super::gsm8k::MAX_NEW_TOKENS),
        Kind::Coqa { prompt, .. } => (prompt, stops(&super::coqa::STOPS), super::coqa::MAX_NEW_TOKENS),
        Kind::HumanEval { prompt, .. } => {
            if !opts.confirm_run_unsafe_code {
                return Err(Error::Input(
                    "humaneval runs model-written code: pass --confirm-run-unsafe-code to allow it".into(),
                ));
            }
            (prompt, stops(&humaneval::STOPS), humaneval::MAX_NEW_TOKENS)
        }
    };
    Ok(Some(GenRequest {
        prompt: wrap(opts.chat, prompt)?,
        stops,
        max_new_tokens,
    }))
}

/// Score a generation item from the text generated for its request (`prompt`: the text the model was given).
///
/// Errors: a log-likelihood item; HumanEval's program could not be run.
pub fn score_generation(item: &Item, prompt: String, text: String, opts: &RunOptions) -> Result<ItemRecord> {
    let key = |m: &str, f: &str| format!("{m},{f}");
    let mut scores = BTreeMap::new();
    let output = match &item.kind {
        Kind::Choice { .. } | Kind::Partial { .. } => {
            return Err(Error::Input(format!("item {} is not a generation item", item.id)))
        }
        Kind::Gsm8k { answer, .. } => {
            let (strict, flexible) = gsm8k_extract(&text);
            let ignore = metrics::gsm8k_ignore();
            scores.insert(
                key("exact_match", "strict-match"),
                exact_match(&strict, answer, &ignore, true),
            );
            scores.insert(
                key("exact_match", "flexible-extract"),
                exact_match(&flexible, answer, &ignore, true),
            );
            serde_json::json!({ "text": text, "strict-match": strict, "flexible-extract": flexible, "gold": answer })
        }
        Kind::Coqa { golds, .. } => {
            let pred = text.trim().split('\n').next().unwrap_or("").to_string();
            let (em, f1) = coqa_scores(golds, &pred);
            scores.insert(key("em", "none"), em);
            scores.insert(key("f1", "none"), f1);
            serde_json::json!({ "text": text, "prediction": pred, "golds": golds })
        }
        Kind::HumanEval {
            prompt: code_prompt,
            test,
            entry_point,
        } => {
            // The program is the task's own prompt (not the chat-wrapped text) and the completion.
            let program = humaneval::program(code_prompt, &text, test, entry_point);
            let outcome = humaneval::run_program(&program, opts.limits)?;
            scores.insert(key("pass@1", "create_test"), (outcome == Outcome::Passed) as u8 as f64);
            serde_json::json!({ "completion": text, "outcome": outcome })
        }
    };
    Ok(ItemRecord {
        id: item.id.clone(),
        prompt,
        output,
        scores,
    })
}

/// Run `items` of `task` (already subset), calling `progress` after each, and aggregate its metrics (the mean and
/// `mean_stderr` of each item score).
pub fn run_task(
    lm: &mut Lm,
    task: TaskName,
    n_shot: usize,
    items: &[Item],
    opts: &RunOptions,
    progress: &mut dyn FnMut(),
) -> Result<TaskResult> {
    let start = std::time::Instant::now();
    let before = lm.cost;
    let records = score_items(lm, items, opts, progress)?;
    let metrics = task
        .metrics()
        .iter()
        .map(|(filter, metric)| {
            let xs: Vec<f64> = records
                .iter()
                .map(|r| r.scores.get(&format!("{metric},{filter}")).copied().unwrap_or(f64::NAN))
                .collect();
            MetricRow {
                filter: filter.to_string(),
                metric: metric.to_string(),
                value: metrics::mean(&xs),
                stderr: metrics::mean_stderr(&xs),
            }
        })
        .collect();
    let cost = Cost {
        tokens: lm.cost.tokens - before.tokens,
        layers: lm.cost.layers - before.layers,
        weight_bytes: lm.cost.weight_bytes - before.weight_bytes,
    };
    Ok(TaskResult {
        task,
        version: task.version().to_string(),
        n_shot,
        n_items: items.len(),
        metrics,
        cost,
        layers_per_token: cost.layers_per_token(),
        weight_bytes_per_token: cost.bytes_per_token(),
        wall_s: start.elapsed().as_secs_f64(),
        items: records,
    })
}

/// Every item's record, in order. With `batch_size` > 1 the generation items are generated together
/// ([`Lm::generate_batch`]) and scored as they come back; the log-likelihood items are scored one by one (each
/// already shares its context across its choices).
fn score_items(lm: &mut Lm, items: &[Item], opts: &RunOptions, progress: &mut dyn FnMut()) -> Result<Vec<ItemRecord>> {
    let mut records: Vec<Option<ItemRecord>> = vec![None; items.len()];
    let mut batched: Vec<(usize, GenRequest)> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match generation_request(item, opts)? {
            Some(req) if opts.batch_size > 1 => batched.push((i, req)),
            _ => {
                records[i] = Some(score_item(lm, item, opts)?);
                progress();
            }
        }
    }
    if !batched.is_empty() {
        let requests: Vec<GenRequest> = batched.iter().map(|(_, r)| r.clone()).collect();
        let texts = lm.generate_batch(&requests, opts.batch_size, &mut |_| progress())?;
        for ((i, req), text) in batched.into_iter().zip(texts) {
            records[i] = Some(score_generation(&items[i], req.prompt, text, opts)?);
        }
    }
    Ok(records.into_iter().map(|r| r.expect("every item scored")).collect())
}

/// [`run_task`] for each task in order; `progress` hears the task after each item.
///
/// Errors: the first task that fails, named.
pub fn run_tasks(
    lm: &mut Lm,
    tasks: &[super::LoadedTask],
    opts: &RunOptions,
    progress: &mut dyn FnMut(TaskName),
) -> Result<Vec<TaskResult>> {
    tasks
        .iter()
        .map(|t| {
            run_task(lm, t.task, t.shots, &t.items, opts, &mut || progress(t.task))
                .map_err(|e| Error::Input(format!("{} failed: {e}", t.task.name())))
        })
        .collect()
}
