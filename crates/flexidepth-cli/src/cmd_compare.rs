//! `flexidepth compare`: the FlexiDepth paper's method comparison on this model. For each budget (a fraction of the
//! layers, "skip k layers" with `k = round(budget × layers)`): FlexiDepth with the shipped adapter and MindSkip
//! (thresholds tuned to `k` layers per token on tuning text, as `frontier` does), ShortGPT's removal of `k` layers,
//! LaCo's merge of `k` layers and early exit after `L − k` layers, each one eval of the task list, beside full
//! depth; the retain-% table beside the paper's, a JSON report and a figure. Each finished cell is written to the
//! output folder, so a rerun with the same arguments continues where a killed one stopped.

use crate::cmd_eval::TaskArgs;
use crate::LoadArgs;
use anyhow::{Context, Result};
use flexidepth::depth::file::attach_depth_file;
use flexidepth::depth::{shipped, DepthPolicy, FlexiDepth, PolicySpec, SkipUnit};
use flexidepth::model::plan::FullDepth;
use flexidepth::model::Model;
use flexidepth::tokenizer::Tokenizer;
use flexidepth_experiments::bench;
use flexidepth_experiments::compare::grid::{self, Budget, Cell, CellKey, DecodeTiming, GridDir, Method};
use flexidepth_experiments::compare::report;
use flexidepth_experiments::eval::{self, FullReference};
use flexidepth_experiments::frontier::{self, TuneTarget};
use flexidepth_experiments::tasks::{self, lm::Lm, run, LoadedTask, TaskName};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: LoadArgs,
    /// Budgets: fractions of the layers skipped per token, comma list (`1/8,1/4` are the paper's 4 and 8 of 32);
    /// each is `k = round(budget × layers)` layers.
    #[arg(long, value_delimiter = ',', required = true)]
    pub budgets: Vec<String>,
    /// Comma-separated tasks (see `eval`); humaneval needs --confirm-run-unsafe-code.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "mmlu,hellaswag,winogrande,arc_easy,arc_challenge,gsm8k,coqa"
    )]
    pub tasks: Vec<String>,
    #[command(flatten)]
    pub task: TaskArgs,
    /// The FlexiDepth depth file [default: the model's shipped adapter, `adapters/shipped.toml`].
    #[arg(long)]
    pub depth: Option<PathBuf>,
    /// The MindSkip depth file (attention-only routers) [default: `adapters/<model>/mindskip/flexidepth.safetensors`
    /// when it exists; without one the MindSkip rows are left out, with a note].
    #[arg(long)]
    pub mindskip: Option<PathBuf>,
    /// Bisection steps of each tuned threshold.
    #[arg(long, default_value_t = 10)]
    pub iters: usize,
    /// Tuning-text tokens (Persuasion chapters 4–12, windows of 512) for the thresholds; the first 1024 of them
    /// are ShortGPT's and LaCo's calibration.
    #[arg(long, default_value_t = 1024)]
    pub tune_tokens: usize,
    /// Greedy decode steps of each decode timing (after a 64-token context).
    #[arg(long, default_value_t = 32)]
    pub decode_tokens: usize,
    /// Interleaved rounds (full depth, then the policy) of the decode timing; 0 leaves the speed-up out.
    #[arg(long, default_value_t = 3)]
    pub decode_rounds: usize,
    /// The methods to run beside full depth (comma list of layerskip, shortgpt, laco, mindskip, flexidepth). Not
    /// part of the grid's arguments: a later run with more methods adds their cells to the same folder.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "layerskip,shortgpt,laco,mindskip,flexidepth"
    )]
    pub methods: Vec<String>,
    /// Run no cell: write the tables, JSON and figure from the cells finished so far (by an earlier run, or by
    /// one still running on the same folder), naming the cells not yet finished.
    #[arg(long)]
    pub report_only: bool,
    /// Output folder: args.json, cells/, compare.md, compare.json, compare.svg.
    #[arg(short = 'o', long)]
    pub out: PathBuf,
}

/// What every cell needs.
struct Ctx<'a> {
    model: Model,
    tokenizer: &'a Tokenizer,
    model_name: String,
    tasks: Vec<LoadedTask>,
    opts: run::RunOptions<'a>,
    depth: Option<PathBuf>,
    mindskip: Option<PathBuf>,
    tuning_windows: Vec<Vec<u32>>,
    /// Full depth on the tuning windows, computed the first time a threshold is tuned.
    tuning: Option<FullReference>,
    calibration: Vec<u32>,
    args: &'a Args,
}

/// A policy ready for a cell, with what its table row says about it.
struct Built {
    policy: Box<dyn DepthPolicy>,
    threshold: Option<f32>,
    tuning_layers: Option<f64>,
    note: Option<String>,
}

fn check_args(args: &Args) -> Result<(Vec<Budget>, Vec<TaskName>)> {
    let budgets: Vec<Budget> = args
        .budgets
        .iter()
        .map(|b| b.parse::<Budget>())
        .collect::<flexidepth::Result<_>>()?;
    for (i, a) in budgets.iter().enumerate() {
        if let Some(b) = budgets[..i].iter().find(|b| b.fraction == a.fraction) {
            anyhow::bail!(
                "budget {} is given twice (as '{}' and '{}'): give each budget once",
                a.text,
                b.text,
                a.text
            );
        }
    }
    let task_names = args.task.check("compare", &args.tasks)?;
    if args.iters == 0 || args.iters > 30 {
        anyhow::bail!("--iters must be in 1..=30");
    }
    if args.tune_tokens < 16 {
        anyhow::bail!("--tune-tokens must be at least 16");
    }
    if args.decode_rounds > 0 && args.decode_tokens == 0 {
        anyhow::bail!("--decode-tokens must be at least 1 (or --decode-rounds 0 to leave the timing out)");
    }
    Ok((budgets, task_names))
}

/// The depth file for a method: the flag, else the shipped one; `None` with the reason printed.
fn adapter(flag: Option<&Path>, shipped: Result<Option<PathBuf>>, what: &str) -> Result<Option<PathBuf>> {
    if let Some(p) = flag {
        if !p.is_file() {
            anyhow::bail!("{what} depth file {} does not exist", p.display());
        }
        return Ok(Some(p.to_path_buf()));
    }
    let found = shipped?;
    if found.is_none() {
        eprintln!("compare: no {what} adapter shipped for this model (and none given): its rows are left out");
    }
    Ok(found)
}

/// `--methods`, each once. Errors: an unknown name.
fn parse_methods(names: &[String]) -> Result<Vec<Method>> {
    let all = [
        Method::LayerSkip,
        Method::ShortGpt,
        Method::Laco,
        Method::MindSkip,
        Method::FlexiDepth,
    ];
    let mut out = Vec::new();
    for n in names {
        let m = all
            .into_iter()
            .find(|m| m.name() == n.trim())
            .with_context(|| format!("unknown method '{n}' (layerskip, shortgpt, laco, mindskip, flexidepth)"))?;
        if !out.contains(&m) {
            out.push(m);
        }
    }
    Ok(out)
}

/// Path and size of a file, for args.json.
fn file_id(p: &Option<PathBuf>) -> serde_json::Value {
    match p {
        Some(p) => serde_json::json!({
            "path": p.display().to_string(),
            "bytes": std::fs::metadata(p).map(|m| m.len()).unwrap_or(0),
        }),
        None => serde_json::Value::Null,
    }
}

pub fn run(args: Args) -> Result<()> {
    let (budgets, task_names) = check_args(&args)?;
    if args.out.exists() && !args.out.is_dir() {
        anyhow::bail!("-o {} is a file, not a folder", args.out.display());
    }
    parse_methods(&args.methods)?;
    let loaded = tasks::load_tasks(&task_names, args.task.num_fewshot, args.task.limit, args.task.seed)?;
    let model_name = args.model.model.model.clone();
    let depth = adapter(
        args.depth.as_deref(),
        shipped::shipped_depth(&model_name).map_err(Into::into),
        "FlexiDepth",
    )?;
    let mindskip_default = shipped::adapters_dir()
        .join(&model_name)
        .join("mindskip/flexidepth.safetensors");
    let mindskip = adapter(
        args.mindskip.as_deref(),
        Ok(mindskip_default.is_file().then_some(mindskip_default)),
        "MindSkip",
    )?;
    let (files, model) = args.model.load()?;
    let n = model.config.num_hidden_layers;
    let ks: Vec<(Budget, usize)> = budgets
        .into_iter()
        .map(|b| b.skipped_layers(n).map(|k| (b, k)))
        .collect::<flexidepth::Result<_>>()?;
    for (i, (a, k)) in ks.iter().enumerate() {
        if let Some((b, _)) = ks[..i].iter().find(|(_, kb)| kb == k) {
            anyhow::bail!(
                "budgets {} and {} both skip {k} of {n} layers: give each budget once",
                b.text,
                a.text
            );
        }
    }
    eprintln!("{}", report::budget_lines(&ks, n).trim_end());
    let skipped: Vec<usize> = ks.iter().map(|p| p.1).collect();
    let manifest = grid_args(&args, &model, &skipped, &task_names, &depth, &mindskip);
    let grid_dir = GridDir::open(&args.out, &manifest)?;
    let mut methods = parse_methods(&args.methods)?;
    methods.retain(|m| match m {
        Method::MindSkip => mindskip.is_some(),
        Method::FlexiDepth => depth.is_some(),
        _ => true,
    });
    let cells = grid::grid_cells(&skipped, &methods);
    let tune_ids = files.tokenizer.encode(&frontier::tuning_text()?, false)?;
    let tuning_windows = eval::windows(&tune_ids, 512, args.tune_tokens)?;
    let mut ctx = Ctx {
        model,
        tokenizer: &files.tokenizer,
        model_name: model_name.clone(),
        tasks: loaded,
        opts: args.task.run_options(&files.tokenizer)?,
        depth,
        mindskip,
        calibration: tuning_windows.iter().flatten().copied().take(1024).collect(),
        tuning_windows,
        tuning: None,
        args: &args,
    };
    let t0 = std::time::Instant::now();
    let (earlier, missing) = grid_dir.finished(&cells)?;
    let to_run = missing.len();
    let (done, missing) = match args.report_only {
        true => (earlier, missing),
        false => (
            grid::run_grid(
                &grid_dir,
                &cells,
                &mut |key| run_cell(&mut ctx, key, &cells).map_err(|e| flexidepth::Error::Input(format!("{e:#}"))),
                &mut |m| eprintln!("compare: {m}"),
            )?,
            Vec::new(),
        ),
    };
    write_outputs(&ctx, &grid_dir, &ks, &task_names, &done, &missing)?;
    if !args.report_only {
        eprintln!(
            "compare: {to_run} of {} cells run in {:.1} s ({} finished earlier)",
            cells.len(),
            t0.elapsed().as_secs_f64(),
            cells.len() - to_run
        );
    }
    Ok(())
}

/// Everything a cell's result depends on, for `args.json` (not `--methods`: it only chooses which cells run).
fn grid_args(
    args: &Args,
    model: &Model,
    skipped: &[usize],
    task_names: &[TaskName],
    depth: &Option<PathBuf>,
    mindskip: &Option<PathBuf>,
) -> serde_json::Value {
    let n = model.config.num_hidden_layers;
    serde_json::json!({
        "grid": 1,
        "model": args.model.model.model,
        "dtype": format!("{:?}", model.format),
        "num_layers": n,
        "skipped": skipped,
        "tasks": task_names.iter().map(|t| t.name()).collect::<Vec<_>>(),
        "limit": args.task.limit,
        "seed": args.task.seed,
        "num_fewshot": args.task.num_fewshot,
        "chat": args.task.chat,
        "code_timeout": args.task.code_timeout,
        "depth": file_id(depth),
        "mindskip": file_id(mindskip),
        "iters": args.iters,
        "tune_tokens": args.tune_tokens,
        "decode_tokens": args.decode_tokens,
        "decode_rounds": args.decode_rounds,
    })
}

/// Attach `path` (after detaching whatever was there) and tune its threshold to `n − k` layers per token on the
/// tuning text, as `frontier` does.
fn tuned(ctx: &mut Ctx, path: &Path, k: usize, attention: bool) -> Result<Built> {
    ctx.model.detach_depth();
    let meta = attach_depth_file(&mut ctx.model, path)
        .with_context(|| format!("cannot attach the depth adapter {}", path.display()))?;
    if attention && meta.skip_unit != SkipUnit::Attention {
        anyhow::bail!(
            "{} is not a MindSkip file: its routers were trained for the {} unit, not attention",
            path.display(),
            meta.skip_unit
        );
    }
    if ctx.tuning.is_none() {
        ctx.tuning = Some(FullReference::new(&ctx.model, &ctx.tuning_windows)?);
    }
    let reference = ctx.tuning.as_ref().expect("computed above");
    let policy = FlexiDepth {
        unit: Some(meta.skip_unit),
        gate_scaling: Some(meta.gate_scaling),
        ..FlexiDepth::default()
    };
    let n = ctx.model.config.num_hidden_layers as f64;
    let want = n - k as f64;
    let t = frontier::tune_threshold(&ctx.model, reference, policy, TuneTarget::Layers(want), ctx.args.iters)?;
    let note = (t.layers > want + 0.5).then(|| {
        format!(
            "budget not reached: at most {:.2} layers skipped per token on the tuning text ({} unit, {} routed \
             layers)",
            n - t.layers,
            meta.skip_unit,
            meta.routed_layers.len()
        )
    });
    eprintln!(
        "compare: {} tuned to {want} layers/token: threshold {:.5} ({:.2} layers/token on the tuning text)",
        path.display(),
        t.skip_threshold,
        t.layers
    );
    Ok(Built {
        policy: Box::new(FlexiDepth {
            skip_threshold: Some(t.skip_threshold),
            ..policy
        }),
        threshold: Some(t.skip_threshold),
        tuning_layers: Some(t.layers),
        note,
    })
}

fn build(ctx: &mut Ctx, key: &CellKey) -> Result<Built> {
    let n = ctx.model.config.num_hidden_layers;
    let k = key.skipped;
    let spec = match key.method {
        Method::FlexiDepth => {
            let path = ctx.depth.clone().context("no FlexiDepth adapter")?;
            return tuned(ctx, &path, k, false);
        }
        Method::MindSkip => {
            let path = ctx.mindskip.clone().context("no MindSkip adapter")?;
            return tuned(ctx, &path, k, true);
        }
        Method::Full => PolicySpec::Full,
        Method::LayerSkip => PolicySpec::Exit(n - k),
        Method::ShortGpt => PolicySpec::Prune(k),
        Method::Laco => PolicySpec::Laco(k),
    };
    // The static baselines run on the base model (no router bytes counted).
    ctx.model.detach_depth();
    let policy = spec.build_with_progress(&ctx.model, &ctx.calibration, &mut |m| eprintln!("compare: {m}"))?;
    Ok(Built {
        policy,
        threshold: None,
        tuning_layers: None,
        note: None,
    })
}

/// `rounds` interleaved decode timings of full depth and `policy` (see [`DecodeTiming`]).
fn time_decode(
    model: &Model,
    tokenizer: &Tokenizer,
    policy: &dyn DepthPolicy,
    rounds: usize,
    n: usize,
) -> Result<DecodeTiming> {
    let context = bench::bench_ids(tokenizer, 64)?;
    let (mut full, mut pol, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let f = n as f64 / bench::time_generation(model, &FullDepth, &context, n)?.seconds;
        let p = n as f64 / bench::time_generation(model, policy, &context, n)?.seconds;
        full.push(f);
        pol.push(p);
        ratio.push(p / f);
    }
    Ok(DecodeTiming {
        rounds,
        tokens: n,
        full_tps: bench::median(&full),
        policy_tps: bench::median(&pol),
        speedup: bench::median(&ratio),
    })
}

fn run_cell(ctx: &mut Ctx, key: &CellKey, cells: &[CellKey]) -> Result<(Cell, Vec<u8>)> {
    let setup = std::time::Instant::now();
    let built = build(ctx, key)?;
    let setup_s = setup.elapsed().as_secs_f64();
    let label = built.policy.label();
    let total: usize = ctx.tasks.iter().map(|t| t.items.len()).sum();
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed_precise}, eta {eta}]")
            .expect("a valid progress template"),
    );
    let at = cells.iter().position(|c| c == key).map_or(0, |i| i + 1);
    let mut lm = Lm::new(&ctx.model, ctx.tokenizer, built.policy.as_ref());
    let results = run::run_tasks(&mut lm, &ctx.tasks, &ctx.opts, &mut |t| {
        bar.set_message(format!(
            "cell {at}/{} {} ({label}): {}",
            cells.len(),
            key.stem(),
            t.name()
        ));
        bar.inc(1)
    })?;
    bar.finish_and_clear();
    let decode = match (key.method, ctx.args.decode_rounds) {
        (Method::Full, _) | (_, 0) => None,
        (_, rounds) => Some(time_decode(
            &ctx.model,
            ctx.tokenizer,
            built.policy.as_ref(),
            rounds,
            ctx.args.decode_tokens,
        )?),
    };
    let full_bytes: f64 = ctx.model.layer_bytes().iter().map(|b| b.base() as f64).sum();
    let items = tasks::report::EvalReport {
        model: ctx.model_name.clone(),
        policy: label.clone(),
        depth_file: match key.method {
            Method::FlexiDepth => ctx.depth.as_ref().map(|p| p.display().to_string()),
            Method::MindSkip => ctx.mindskip.as_ref().map(|p| p.display().to_string()),
            _ => None,
        },
        limit: ctx.args.task.limit,
        seed: ctx.args.task.seed,
        chat: ctx.args.task.chat,
        batch_size: ctx.opts.batch_size,
        num_layers: ctx.model.config.num_hidden_layers,
        full_weight_bytes_per_token: full_bytes,
        policy_setup_s: setup_s,
        results: results.clone(),
    };
    let mut items = serde_json::to_vec_pretty(&items)?;
    items.push(b'\n');
    let cell = Cell {
        key: *key,
        policy: label,
        threshold: built.threshold,
        tuning_layers: built.tuning_layers,
        note: built.note,
        setup_s,
        tasks: results.iter().map(grid::TaskScore::from).collect(),
        decode,
        batch_size: ctx.opts.batch_size,
    };
    Ok((cell, items))
}

/// compare.md, compare.json and compare.svg from the finished `cells`; `missing` (cells not finished, under
/// `--report-only`) is named at the top of compare.md.
fn write_outputs(
    ctx: &Ctx,
    dir: &GridDir,
    ks: &[(Budget, usize)],
    tasks: &[TaskName],
    cells: &[Cell],
    missing: &[CellKey],
) -> Result<()> {
    let n = ctx.model.config.num_hidden_layers;
    let rows = report::rows(cells, tasks)?;
    let title = format!("{} ({} layers)", ctx.model_name, n);
    let (limit, seed) = (ctx.args.task.limit, ctx.args.task.seed);
    let mut md = report::markdown(&title, &rows, cells, ks, n, tasks, limit, seed);
    if !missing.is_empty() {
        let names: Vec<String> = missing.iter().map(CellKey::stem).collect();
        let line = format!(
            "**Partial grid**: {} of {} cells finished; not yet run: {}.",
            cells.len(),
            cells.len() + missing.len(),
            names.join(", ")
        );
        eprintln!("compare: {line}");
        md = format!("{line}\n\n{md}");
    }
    let mut sizes: Vec<usize> = cells.iter().map(|c| c.batch_size).collect();
    sizes.sort_unstable();
    sizes.dedup();
    if sizes.len() > 1 {
        // Batched steps round differently from one-at-a-time decoding (see `eval --batch-size`).
        md.push_str(&format!(
            "\nNote: the cells ran generation at different --batch-size values ({sizes:?}; each cell's is in \
             compare.json).\n"
        ));
    }
    println!("{md}");
    flexidepth::error::write_atomic(&dir.dir().join("compare.md"), md.as_bytes())?;
    let rep = report::CompareReport::new(&ctx.model_name, n, ks, tasks, &rows, cells);
    let mut json = serde_json::to_vec_pretty(&rep)?;
    json.push(b'\n');
    flexidepth::error::write_atomic(&dir.dir().join("compare.json"), &json)?;
    flexidepth::error::write_atomic(
        &dir.dir().join("compare.svg"),
        report::figure(&title, &rows, n).as_bytes(),
    )?;
    eprintln!("wrote {}/compare.{{md,json,svg}}", dir.dir().display());
    Ok(())
}
