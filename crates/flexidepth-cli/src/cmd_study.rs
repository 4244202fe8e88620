//! `flexidepth study`: the paper's layer-usage experiment (layers used per generated token, per task), written as
//! `study.md`, `study.json` and one depth map per task.

use crate::{DepthArgs, LoadArgs};
use anyhow::{bail, Context, Result};
use flexidepth::depth::{DepthMode, FlexiDepth};
use flexidepth::error::write_atomic;
use flexidepth_experiments::study::{self, StudyReport, StudyRunner, StudySetup, TaskKind};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: LoadArgs,
    #[command(flatten)]
    pub depth: DepthArgs,
    /// Instances per task (paragraphs of the held-out novel, random lists).
    #[arg(long, default_value_t = 100)]
    pub instances: usize,
    /// Tokens to generate at most per instance.
    #[arg(
        short = 'n',
        long = "n-predict",
        visible_alias = "max-new-tokens",
        default_value_t = 64
    )]
    pub max_new_tokens: usize,
    /// Picks the paragraphs and draws the lists (decoding is greedy).
    #[arg(short = 's', long, default_value_t = 42)]
    pub seed: u64,
    /// Comma list of tasks: copy, summarize, continue (paragraphs), repeat, sum, product (lists).
    #[arg(long, default_value = "copy,summarize,continue,repeat,sum,product")]
    pub tasks: String,
    /// Also run at full depth (every layer) and with skipped tokens writing no K/V: one table each.
    #[arg(long)]
    pub control: bool,
    /// Output folder for study.md, study.json and depthmap-<task>.svg.
    #[arg(short = 'o', long = "output", visible_alias = "out")]
    pub out: PathBuf,
}

/// The label of the run with the settings as given.
fn label(s: &FlexiDepth) -> String {
    let mode = match s.mode {
        DepthMode::Dynamic => "dynamic",
        DepthMode::Run => "full depth",
        DepthMode::Skip => "every routed layer skipped",
    };
    if s.skip_kv {
        mode.to_string()
    } else {
        format!("{mode}, no skip kv")
    }
}

/// The runs: as given, then with `--control` full depth and no-skip-kv (unless the given settings are one of them).
fn runs(given: FlexiDepth, control: bool) -> Vec<(String, FlexiDepth)> {
    let mut out = vec![(label(&given), given)];
    if control {
        for (name, s) in [
            (
                "full depth (control)",
                FlexiDepth {
                    mode: DepthMode::Run,
                    ..given
                },
            ),
            (
                "no skip kv (control)",
                FlexiDepth {
                    skip_kv: false,
                    ..given
                },
            ),
        ] {
            if !out.iter().any(|(_, o)| *o == s) {
                out.push((name.to_string(), s));
            }
        }
    }
    out
}

pub fn run(args: Args) -> Result<()> {
    if args.instances == 0 || args.max_new_tokens == 0 {
        bail!("--instances and --max-new-tokens must be at least 1");
    }
    // Far more than the paper's 100; a larger count is a typo that would allocate and run for months.
    if args.instances > 100_000 {
        bail!("--instances takes at most 100000, not {}", args.instances);
    }
    let tasks = study::parse_tasks(&args.tasks)?;
    // The instances first: a missing novel should fail before the weights load.
    let paragraphs = if tasks.iter().any(|t| t.kind == TaskKind::Paragraph) {
        study::study_paragraphs(args.instances, args.seed)?
    } else {
        Vec::new()
    };
    let lists = study::random_lists(args.instances, args.seed);
    let prompts: Vec<_> = tasks
        .iter()
        .map(|t| (*t, study::task_prompts(t, &paragraphs, &lists)))
        .collect();
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;

    let (files, mut model) = args.model.load()?;
    let given = args.depth.apply(&mut model)?;
    if model.routed_layers().is_empty() {
        bail!("the study measures routed layers: give --depth FILE (or a model in the FlexiDepth layout)");
    }
    let template = files
        .tokenizer
        .chat_template
        .as_ref()
        .context("this model has no chat template; the study's prompts are chat messages")?;
    let runner = StudyRunner {
        model: &model,
        tokenizer: &files.tokenizer,
        template,
        eos_token_ids: files.eos_token_ids(),
        max_new_tokens: args.max_new_tokens,
    };

    let runs = runs(given, args.control);
    let total = runs.len() * tasks.len() * args.instances;
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed_precise}, eta {eta}]")
            .expect("a valid progress template"),
    );
    let start = Instant::now();
    let mut results = Vec::with_capacity(runs.len());
    for (name, settings) in &runs {
        let run = runner.run_study(name, &prompts, *settings, &mut |task| {
            bar.set_message(format!("{name}: {task}"));
            bar.inc(1);
        })?;
        results.push(run);
    }
    bar.finish_and_clear();
    let wall_s = start.elapsed().as_secs_f64();

    let report = StudyReport {
        setup: StudySetup {
            model: args.model.model.model.clone(),
            dtype: args
                .model
                .dtype
                .unwrap_or_else(|| crate::DtypeArg::default_for(&files.path))
                .name()
                .to_string(),
            depth_file: args.depth.depth.as_ref().map(|p| p.display().to_string()),
            num_layers: model.config.num_hidden_layers,
            routed_layers: model.routed_layers(),
            instances: args.instances,
            max_new_tokens: args.max_new_tokens,
            seed: args.seed,
            wall_s,
        },
        runs: results,
    };
    let maps = write_depth_maps(&args.out, &report)?;
    let md = study::markdown_report(&report, &maps);
    write(&args.out.join("study.md"), md.as_bytes())?;
    let json = serde_json::to_string_pretty(&report).context("cannot serialise the study")?;
    write(&args.out.join("study.json"), json.as_bytes())?;

    for run in &report.runs {
        crate::output::out(format!("{}\n", run.label))?;
        crate::output::out(study::markdown_table(run, report.setup.num_layers))?;
    }
    let tokens: usize = report
        .runs
        .iter()
        .flat_map(|r| &r.tasks)
        .map(|t| t.generated_tokens)
        .sum();
    eprintln!(
        "{} generations, {tokens} generated tokens in {wall_s:.1} s; wrote {}",
        total,
        args.out.display()
    );
    Ok(())
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

/// `depthmap-<task>.svg` of the first run's first instance per task, generated tokens only (a paragraph prompt
/// would fill the map); returns the file names.
fn write_depth_maps(dir: &Path, report: &StudyReport) -> Result<Vec<String>> {
    let mut names = Vec::new();
    let Some(run) = report.runs.first() else {
        return Ok(names);
    };
    for t in &run.tasks {
        if let Some(trace) = &t.first_trace {
            let mut shown = trace.clone();
            shown.tokens.retain(|tok| !tok.prompt);
            let name = format!("depthmap-{}.svg", t.task);
            let path = dir.join(&name);
            flexidepth_experiments::depthmap::write_depth_map(&path, &shown, false)
                .with_context(|| format!("cannot write {}", path.display()))?;
            names.push(name);
        }
    }
    Ok(names)
}
