//! `flexidepth eval`: benchmark scores as lm-evaluation-harness defines them (MMLU, HellaSwag, WinoGrande,
//! ARC-Easy/Challenge, GSM8K, HumanEval, CoQA) under a depth policy, with each metric's standard error, the layers
//! and weight bytes per token the policy used, and the wall time; the harness's table on stdout, every item in the
//! JSON file.

use crate::output::out;
use crate::{DepthArgs, LoadArgs};
use anyhow::{Context, Result};
use flexidepth::depth::PolicySpec;
use flexidepth::tokenizer::Tokenizer;
use flexidepth_experiments::tasks::{self, humaneval::Limits, lm::Lm, report, run, TaskName};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: LoadArgs,
    #[command(flatten)]
    pub depth: DepthArgs,
    /// A depth policy by name (full, flexi[:T], skip, prune:K, exit:L, ...; see `bench -c`) instead of the depth
    /// file's routing; flexi and skip need --depth.
    #[arg(long)]
    pub policy: Option<String>,
    /// Comma-separated tasks: mmlu, hellaswag, winogrande, arc_easy, arc_challenge, gsm8k, humaneval, coqa.
    #[arg(long, value_delimiter = ',', required = true)]
    pub tasks: Vec<String>,
    #[command(flatten)]
    pub task: TaskArgs,
    /// Write the report (every item's prompt, output and scores) to this JSON file.
    #[arg(short = 'o', long)]
    pub output: Option<PathBuf>,
}

/// The task options `eval` and `compare` share (the task list itself is each command's: required by `eval`, with
/// the paper's default by `compare`).
#[derive(clap::Args, Debug)]
pub struct TaskArgs {
    /// Score a seeded random subset of this many items per task (all items when absent; the same items for every
    /// policy).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Seed of the --limit subset.
    #[arg(long, default_value_t = 1234)]
    pub seed: u64,
    /// Few-shot examples for every task [default: each task's, 5 for mmlu, 8 for gsm8k, else 0]; only mmlu (dev
    /// split, at most 5) and gsm8k (at most 8 exemplars) have few-shot examples offline.
    #[arg(long)]
    pub num_fewshot: Option<usize>,
    /// Wrap each context or prompt in the model's chat template as one user message (the harness's
    /// --apply_chat_template).
    #[arg(long)]
    pub chat: bool,
    /// Allow humaneval to execute the model's programs (in a separate python3 process with time, memory and file
    /// limits).
    #[arg(long)]
    pub confirm_run_unsafe_code: bool,
    /// Wall-clock seconds a humaneval program may run.
    #[arg(long, default_value_t = 3.0)]
    pub code_timeout: f64,
    /// Generation requests (gsm8k, humaneval, coqa) decoded together, one batched decode step for all (the
    /// harness's --batch_size). Greedy outputs can differ from batch 1 where two logits nearly tie (batched steps
    /// round differently); log-likelihood tasks are scored item by item at any size. At most 64.
    #[arg(long, default_value_t = 1)]
    pub batch_size: usize,
}

impl TaskArgs {
    /// The task list (duplicates dropped, with a note from `command`) after the checks: humaneval needs the
    /// opt-in, `--limit` ≥ 1, `--code-timeout` in (0, 600] seconds, `--batch-size` in 1..=64.
    pub(crate) fn check(&self, command: &str, names: &[String]) -> Result<Vec<TaskName>> {
        let (tasks, repeated) = tasks::parse_tasks(names)?;
        if !repeated.is_empty() {
            eprintln!("{command}: {} given more than once, run once", repeated.join(", "));
        }
        if tasks.contains(&TaskName::Humaneval) && !self.confirm_run_unsafe_code {
            anyhow::bail!("humaneval runs model-written code: pass --confirm-run-unsafe-code to allow it");
        }
        if self.limit == Some(0) {
            anyhow::bail!("--limit must be at least 1");
        }
        if !(self.code_timeout.is_finite() && self.code_timeout > 0.0 && self.code_timeout <= 600.0) {
            anyhow::bail!("--code-timeout must be in (0, 600] seconds, not {}", self.code_timeout);
        }
        if !(1..=64).contains(&self.batch_size) {
            anyhow::bail!("--batch-size must be in 1..=64, not {}", self.batch_size);
        }
        Ok(tasks)
    }

    /// How the items run, with the model's chat template under `--chat`. Errors: `--chat` without a template.
    pub(crate) fn run_options<'t>(&self, tokenizer: &'t Tokenizer) -> Result<run::RunOptions<'t>> {
        let chat = match self.chat {
            true => Some(
                tokenizer
                    .chat_template
                    .as_ref()
                    .context("--chat: this model has no chat template")?,
            ),
            false => None,
        };
        Ok(run::RunOptions {
            chat,
            confirm_run_unsafe_code: self.confirm_run_unsafe_code,
            limits: Limits {
                timeout: std::time::Duration::from_secs_f64(self.code_timeout),
                ..Limits::default()
            },
            batch_size: self.batch_size,
        })
    }
}

pub fn run(args: Args) -> Result<()> {
    let tasks = args.task.check("eval", &args.tasks)?;
    if let Some(path) = &args.output {
        crate::output::check_output_path("-o", path)?;
    }
    let spec: Option<PolicySpec> = args.policy.as_deref().map(str::parse).transpose()?;
    // Load the items first: a missing data file is reported before the model loads.
    let loaded = tasks::load_tasks(&tasks, args.task.num_fewshot, args.task.limit, args.task.seed)?;
    let (files, mut model) = args.model.load()?;
    let flexi = args.depth.apply(&mut model)?;
    let calibration = flexidepth_experiments::bench::bench_ids(&files.tokenizer, 256)?;
    // Building a policy can take long (ShortGPT's influence pass, LaCo's merges): timed and reported apart from
    // the tasks' wall time.
    let setup = std::time::Instant::now();
    let policy: Box<dyn flexidepth::depth::DepthPolicy> = match spec {
        Some(s) => s.build_with_progress(&model, &calibration, &mut |m| eprintln!("{m}"))?,
        // Without routers the FlexiDepth policy is the base model: say so in the tables.
        None if model.routed_layers().is_empty() => Box::new(flexidepth::model::plan::FullDepth),
        None => Box::new(flexi),
    };
    let setup_s = setup.elapsed().as_secs_f64();
    if setup_s >= 1.0 {
        eprintln!("policy {} built in {setup_s:.1} s", policy.label());
    }
    let opts = args.task.run_options(&files.tokenizer)?;
    let mut lm = Lm::new(&model, &files.tokenizer, policy.as_ref());
    let total: usize = loaded.iter().map(|t| t.items.len()).sum();
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed_precise}, eta {eta}]")
            .expect("a valid progress template"),
    );
    let label = policy.label();
    let results = run::run_tasks(&mut lm, &loaded, &opts, &mut |t| {
        bar.set_message(format!("{} ({label})", t.name()));
        bar.inc(1)
    })?;
    bar.finish_and_clear();
    let n_layers = model.config.num_hidden_layers;
    let full_bytes: f64 = model.layer_bytes().iter().map(|b| b.base() as f64).sum();
    out(format!(
        "model: {}  policy: {} (built in {setup_s:.1} s)  limit: {}  seed: {}  batch size: {}",
        args.model.model.model,
        policy.label(),
        args.task.limit.map_or("all".to_string(), |l| l.to_string()),
        args.task.seed,
        args.task.batch_size
    ))?;
    out(report::results_table(&results))?;
    out(report::cost_table(&results, n_layers, full_bytes))?;
    if let Some(path) = &args.output {
        let rep = report::EvalReport {
            model: args.model.model.model.clone(),
            policy: policy.label(),
            depth_file: args.depth.depth.as_ref().map(|p| p.display().to_string()),
            limit: args.task.limit,
            seed: args.task.seed,
            chat: args.task.chat,
            batch_size: args.task.batch_size,
            num_layers: n_layers,
            full_weight_bytes_per_token: full_bytes,
            policy_setup_s: setup_s,
            results,
        };
        let mut bytes = serde_json::to_vec_pretty(&rep)?;
        bytes.push(b'\n');
        flexidepth::error::write_atomic(path, &bytes).with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
