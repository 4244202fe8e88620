//! `flexidepth bench`: llama-bench-style prompt-processing and generation speed, one row per depth
//! configuration (full depth, FlexiDepth thresholds, all-skip, static removal of k layers), with the layers used
//! and the weights-read bound beside the measured speed-up; `dmtd:τ` rows decode with Direct Multi-Token Decoding.
//! Comma lists sweep parameters. `-b` turns the generation tests into batched decode (llama-batched-bench style,
//! [`flexidepth_experiments::bench_batched`]).

use anyhow::{Context, Result};
use flexidepth::depth::PolicySpec;
use flexidepth::loader::ModelFiles;
use flexidepth::model::{Model, WeightFormat};
use flexidepth_experiments::bench::{self, BenchRow, Stats};
use flexidepth_experiments::bench_batched;
use std::path::PathBuf;

/// `bench -o`: how the rows are printed.
#[derive(clap::ValueEnum, Debug, Clone, Copy)]
pub enum OutputFormat {
    Md,
    Csv,
    Json,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Models (comma list): GGUF files, HF folders or short names.
    #[arg(short = 'm', long, default_value = flexidepth::loader::DEFAULT_MODEL)]
    pub model: String,
    /// Prompt-processing sizes (comma list; 0 = none).
    #[arg(short = 'p', long = "n-prompt", default_value = "512")]
    pub n_prompt: String,
    /// Generation lengths (comma list; 0 = none).
    #[arg(short = 'n', long = "n-gen", default_value = "128")]
    pub n_gen: String,
    /// Context already in the cache before generation (comma list).
    #[arg(short = 'd', long = "n-depth", default_value = "0")]
    pub n_depth: String,
    /// Repetitions of each test (after one warm-up).
    #[arg(short = 'r', long, default_value_t = 5)]
    pub repetitions: usize,
    /// Weight formats (comma list): q (GGUF blocks, our kernels) or f32.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "q")]
    pub dtype: Vec<crate::DtypeArg>,
    /// Depth policies (comma list): full, flexi[:THRESHOLD] (default: the depth file's), flexi-layer[:THRESHOLD],
    /// flexi-ffn[:THRESHOLD], flexi-attn[:THRESHOLD], mindskip[:THRESHOLD] (a depth file trained for the attention
    /// unit), skip, prune:K (ShortGPT), laco:K (LaCo's merge of K layers), exit:L (early exit after L layers),
    /// dmtd:TAU[:shadow] (Direct Multi-Token Decoding in cycles of TAU, with cyclical refilling or the no-refill
    /// shadow ablation; its prompt rows are full depth, as its prefill is).
    #[arg(long, default_value = "full,flexi,skip,prune:4")]
    pub configs: String,
    /// Decoding layers D of dmtd rows (default: the model config's DMTD layout; required without one).
    #[arg(long = "dmtd-decoding-layers", value_name = "D")]
    pub dmtd_decoding_layers: Option<usize>,
    /// Encoding layers E of dmtd rows (default: the model config's, else 0).
    #[arg(long = "dmtd-encoding-layers", value_name = "E")]
    pub dmtd_encoding_layers: Option<usize>,
    /// Depth-adapter file for flexi/skip rows; without it, the model's shipped adapter (`adapters/shipped.toml`), else
    /// freshly initialised routers (seed 42).
    #[arg(long)]
    pub depth: Option<PathBuf>,
    /// Batched decode (llama-batched-bench style; comma list of batch sizes, 1..=64): each generation test runs B
    /// sequences in lockstep through the batched decode step, each prefilled with its own prompt of -d tokens (or,
    /// with -d 0, of the first -p size), and reports aggregate and per-sequence tokens/s and the ratio to batch 1.
    #[arg(short = 'b', long = "batch", value_name = "B")]
    pub batch: Option<String>,
    /// Output format (llama-bench's -o; --output is kept as a hidden alias).
    #[arg(short = 'o', long = "output-format", alias = "output", value_enum, default_value_t = OutputFormat::Md)]
    pub output: OutputFormat,
}

fn list<T: std::str::FromStr>(s: &str, what: &str) -> Result<Vec<T>>
where
    T::Err: std::fmt::Display,
{
    s.split(',')
        .map(|x| {
            x.trim()
                .parse::<T>()
                .map_err(|e| anyhow::anyhow!("bad {what} '{x}': {e}"))
        })
        .collect()
}

/// Threads: a comma list measures each count in this process, one after the other, and merges the rows.
pub fn run(args: Args, threads: Option<&str>) -> Result<()> {
    let thread_list: Vec<usize> = match threads {
        Some(t) => t.split(',').map(crate::parse_threads).collect::<Result<_>>()?,
        None => vec![candle_core::utils::get_num_threads()],
    };
    let mut rows = Vec::new();
    for t in thread_list {
        rows.extend(bench::with_threads(t, || measure(&args, t))?);
    }
    bench::fill_speedups(&mut rows);
    let text = match args.output {
        OutputFormat::Csv => bench::to_csv(&rows),
        OutputFormat::Json => bench::to_json(&rows),
        OutputFormat::Md => bench::to_markdown(&rows),
    };
    crate::output::out(text)?;
    Ok(())
}

/// Most repetitions of a test (a larger -r is a typo that would run for days).
const MAX_REPETITIONS: usize = 1000;

/// Every test must fit the model's context window: the prompt, and the depth plus the generated tokens (checked
/// before any buffer is sized by them).
fn check_sizes(tests: &[(String, usize, usize, usize)], context: usize) -> Result<()> {
    for (label, p, n, d) in tests {
        let need = p.max(&d.saturating_add(*n).saturating_add(1)).to_owned();
        if need > context {
            anyhow::bail!(
                "test {label} needs {need} positions but the model's context holds {context} (use smaller -p, -n or -d)"
            );
        }
    }
    Ok(())
}

/// The tests of one configuration: (label, prompt tokens, generated tokens, context depth).
fn tests(args: &Args) -> Result<Vec<(String, usize, usize, usize)>> {
    let mut out = Vec::new();
    for p in list::<usize>(&args.n_prompt, "prompt size")? {
        if p > 0 {
            out.push((format!("pp{p}"), p, 0, 0));
        }
    }
    for n in list::<usize>(&args.n_gen, "generation length")? {
        for d in list::<usize>(&args.n_depth, "depth")? {
            if n > 0 {
                let label = if d > 0 { format!("tg{n}@d{d}") } else { format!("tg{n}") };
                out.push((label, 0, n, d));
            }
        }
    }
    Ok(out)
}

/// One `--configs` entry: a depth policy, or DMTD with cycle length τ.
#[derive(Debug, Clone, Copy)]
enum BenchConfig {
    Policy(PolicySpec),
    Dmtd(usize, flexidepth::dmtd::History),
}

impl std::str::FromStr for BenchConfig {
    type Err = flexidepth::Error;
    fn from_str(s: &str) -> flexidepth::Result<Self> {
        match s.strip_prefix("dmtd:") {
            Some(rest) => {
                let (tau, history) = match rest.split_once(':') {
                    Some((tau, history)) => (tau, history.parse()?),
                    None => (rest, flexidepth::dmtd::History::Real),
                };
                match tau.parse::<usize>() {
                    Ok(t) if t >= 1 => Ok(BenchConfig::Dmtd(t, history)),
                    _ => Err(flexidepth::Error::Input(format!(
                        "config '{s}': the DMTD cycle length must be a whole number ≥ 1"
                    ))),
                }
            }
            None => s.parse().map(BenchConfig::Policy),
        }
    }
}

/// What one config runs: a built depth policy, or DMTD options.
enum Runner {
    Policy(Box<dyn flexidepth::depth::DepthPolicy>),
    Dmtd(flexidepth::dmtd::DmtdOptions),
}

impl Runner {
    fn label(&self) -> String {
        match self {
            Runner::Policy(p) => p.label(),
            Runner::Dmtd(o) => o.label(),
        }
    }

    /// One timed run of a test: `p` prompt tokens, or `n` generated after a context of `d`.
    fn time(&self, model: &Model, ids: &[u32], p: usize, n: usize, d: usize) -> flexidepth::Result<bench::Timed> {
        let full = flexidepth::model::plan::FullDepth;
        match (self, p > 0) {
            (Runner::Policy(policy), true) => bench::time_prompt(model, policy.as_ref(), &ids[..p]),
            (Runner::Policy(policy), false) => bench::time_generation(model, policy.as_ref(), &ids[..d.max(1)], n),
            // DMTD's prefill is a full-depth pass.
            (Runner::Dmtd(_), true) => bench::time_prompt(model, &full, &ids[..p]),
            (Runner::Dmtd(o), false) => {
                flexidepth_experiments::bench_dmtd::time_generation(model, *o, &ids[..d.max(1)], n)
            }
        }
    }
}

/// The runners of `configs` on `model` (`files` for its declared DMTD layout).
fn runners(
    args: &Args,
    configs: &[BenchConfig],
    files: &ModelFiles,
    model: &Model,
    ids: &[u32],
) -> Result<Vec<Runner>> {
    configs
        .iter()
        .map(|c| match c {
            BenchConfig::Policy(spec) => Ok(Runner::Policy(spec.build(model, &ids[..ids.len().min(256)])?)),
            BenchConfig::Dmtd(tau, history) => {
                let layout = crate::dmtd_args::resolve(
                    *tau,
                    args.dmtd_decoding_layers,
                    args.dmtd_encoding_layers,
                    files.dmtd,
                    model.config.num_hidden_layers,
                )?;
                // The prefill convention does not change a decode step's cost.
                Ok(Runner::Dmtd(flexidepth::dmtd::DmtdOptions {
                    layout,
                    prefill: flexidepth::dmtd::Prefill::default(),
                    history: *history,
                }))
            }
        })
        .collect()
}

fn measure(args: &Args, threads: usize) -> Result<Vec<BenchRow>> {
    let configs: Vec<BenchConfig> = list(&args.configs, "policy")?;
    let tests = tests(args)?;
    if !(1..=MAX_REPETITIONS).contains(&args.repetitions) {
        anyhow::bail!("-r takes 1..={MAX_REPETITIONS} repetitions, not {}", args.repetitions);
    }
    let reps = args.repetitions;
    let batches = match &args.batch {
        Some(b) => Some(flexidepth_experiments::bench_batched::parse_batch_sizes(b)?),
        None => None,
    };
    if batches.is_some() && configs.iter().any(|c| matches!(c, BenchConfig::Dmtd(..))) {
        anyhow::bail!("dmtd rows cannot be batched (-b): the batched decode step runs depth policies only");
    }
    let batch_prompt = batched_prompt_len(args)?;
    let total = args.model.split(',').count() * args.dtype.len() * configs.len() * tests.len();
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}").expect("a valid progress template"),
    );
    let mut rows = Vec::new();
    for model_name in args.model.split(',') {
        let files = ModelFiles::open(model_name).with_context(|| format!("cannot open model '{model_name}'"))?;
        check_sizes(&tests, files.config.max_position_embeddings)?;
        if batches.is_some() {
            let batched: Vec<_> = tests.iter().map(|t| (t.0.clone(), 0, t.2, batch_prompt(t.3))).collect();
            check_sizes(&batched, files.config.max_position_embeddings)?;
        }
        for &dtype in &args.dtype {
            let format: WeightFormat = dtype.format();
            let mut model = files.load_model(format, &candle_core::Device::Cpu)?;
            let needs_routers = configs
                .iter()
                .any(|c| matches!(c, BenchConfig::Policy(p) if p.needs_routers()));
            if needs_routers && model.routed_layers().is_empty() {
                attach_routers(&mut model, model_name, args.depth.as_deref())?;
            }
            let max_ctx = tests.iter().map(|t| t.1.max(t.3 + t.2 + 1)).max().unwrap_or(1);
            let max_batched = match &batches {
                Some(b) => {
                    let longest = tests.iter().map(|t| batch_prompt(t.3)).max().unwrap_or(1);
                    bench_batched::ids_needed(b.iter().copied().max().unwrap_or(1), longest)
                }
                None => 0,
            };
            let ids = bench::bench_ids(&files.tokenizer, max_ctx.max(max_batched).max(64))?;
            // Built once per model (ShortGPT's choice of layers needs forward passes over calibration tokens).
            let policies = runners(args, &configs, &files, &model, &ids)?;
            for (label, p, n, d) in &tests {
                bar.set_message(format!("{model_name} {} {label}", dtype.name()));
                if let (Some(batches), true) = (&batches, *n > 0) {
                    let run = BatchedRun {
                        model: &model,
                        ids: &ids,
                        batches,
                        prompt: batch_prompt(*d),
                        n: *n,
                        reps,
                    };
                    rows.extend(run.rows(&policies, model_name, dtype, threads)?);
                    bar.inc(configs.len() as u64);
                    continue;
                }
                // Configs interleaved inside each repetition, so machine noise lands on all of them alike.
                let mut runs: Vec<Vec<bench::Timed>> = configs.iter().map(|_| Vec::new()).collect();
                for rep in 0..=reps {
                    for (ci, policy) in policies.iter().enumerate() {
                        let timed = policy.time(&model, &ids, *p, *n, *d)?;
                        if rep > 0 {
                            runs[ci].push(timed); // repetition 0 is the warm-up
                        }
                    }
                }
                for (policy, timed) in policies.iter().zip(&runs) {
                    rows.push(bench_row(
                        model_name,
                        dtype,
                        threads,
                        policy.label(),
                        label,
                        *p,
                        *n,
                        *d,
                        reps,
                        timed,
                    ));
                    bar.inc(1);
                }
            }
        }
    }
    bar.finish_and_clear();
    Ok(rows)
}

/// One row from the timed runs of a test: tokens/s per run (`p` prompt tokens or `n` generated ones per run).
#[allow(clippy::too_many_arguments)]
fn bench_row(
    model: &str,
    dtype: crate::DtypeArg,
    threads: usize,
    config: String,
    test: &str,
    p: usize,
    n: usize,
    d: usize,
    reps: usize,
    timed: &[bench::Timed],
) -> BenchRow {
    let tokens = if p > 0 { p } else { n } as f64;
    let samples: Vec<f64> = timed.iter().map(|t| tokens / t.seconds).collect();
    let stats = Stats::of(&samples);
    let (layers, bytes) = bench::mean_costs(timed);
    BenchRow {
        engine: "flexidepth".into(),
        model: model.to_string(),
        dtype: dtype.name().to_string(),
        threads,
        config,
        test: test.to_string(),
        n_prompt: p,
        n_gen: n,
        n_depth: d,
        reps,
        mean_tps: stats.mean,
        std_tps: stats.std,
        samples_tps: samples,
        layers_per_token: layers,
        weight_bytes_per_token: bytes,
        bound_speedup: None,
        speedup: None,
        batch: None,
        per_seq_tps: None,
        batch_speedup: None,
    }
}

/// The prompt length of each batched sequence for a generation test with context depth `d`: `d`, or with `d = 0`
/// the first nonzero -p size (llama-batched-bench's prompt), else one token.
fn batched_prompt_len(args: &Args) -> Result<impl Fn(usize) -> usize> {
    let p = list::<usize>(&args.n_prompt, "prompt size")?
        .into_iter()
        .find(|&p| p > 0)
        .unwrap_or(1);
    Ok(move |d: usize| if d > 0 { d } else { p })
}

/// The batched generation tests of one model and test: every batch size and config, repetitions interleaved.
struct BatchedRun<'a> {
    model: &'a Model,
    ids: &'a [u32],
    batches: &'a [usize],
    prompt: usize,
    n: usize,
    reps: usize,
}

impl BatchedRun<'_> {
    /// `tg N@dP`: N steps after a P-token prompt (as the single-sequence rows name a context of P).
    fn label(&self) -> String {
        format!("tg{}@d{}", self.n, self.prompt)
    }

    /// One row per config and batch size: aggregate tokens/s (and per run), per sequence, and the layers and bytes
    /// per decoded token.
    fn rows(&self, runners: &[Runner], model: &str, dtype: crate::DtypeArg, threads: usize) -> Result<Vec<BenchRow>> {
        let mut rows = Vec::new();
        for (config, batch, timed) in self.measure(runners)? {
            let mut row = bench_row(
                model,
                dtype,
                threads,
                config,
                &self.label(),
                0,
                self.n,
                self.prompt,
                self.reps,
                &timed,
            );
            let b = batch as f64;
            row.batch = Some(batch);
            row.mean_tps *= b;
            row.std_tps *= b;
            row.samples_tps.iter_mut().for_each(|s| *s *= b);
            row.per_seq_tps = Some(row.mean_tps / b);
            rows.push(row);
        }
        Ok(rows)
    }

    /// (config label, batch size, timed runs) for every config and batch size; repetition 0 is a warm-up.
    fn measure(&self, runners: &[Runner]) -> Result<Vec<(String, usize, Vec<bench::Timed>)>> {
        let policies: Vec<&dyn flexidepth::depth::DepthPolicy> = runners
            .iter()
            .map(|r| match r {
                Runner::Policy(p) => Ok(p.as_ref()),
                Runner::Dmtd(_) => Err(anyhow::anyhow!("dmtd rows cannot be batched (-b)")),
            })
            .collect::<Result<_>>()?;
        let mut runs: Vec<Vec<Vec<bench::Timed>>> = self
            .batches
            .iter()
            .map(|_| policies.iter().map(|_| Vec::new()).collect())
            .collect();
        for rep in 0..=self.reps {
            for (bi, &b) in self.batches.iter().enumerate() {
                let prompts = bench_batched::batch_prompts(self.ids, b, self.prompt)?;
                for (pi, policy) in policies.iter().enumerate() {
                    let timed = bench_batched::time_batched_generation(self.model, *policy, &prompts, self.n)?;
                    if rep > 0 {
                        runs[bi][pi].push(timed);
                    }
                }
            }
        }
        let mut out = Vec::new();
        for (bi, &b) in self.batches.iter().enumerate() {
            for (pi, runner) in runners.iter().enumerate() {
                out.push((runner.label(), b, std::mem::take(&mut runs[bi][pi])));
            }
        }
        Ok(out)
    }
}

/// Routers for flexi/skip rows: the given depth file, else the adapter shipped for `model_name`
/// (`adapters/shipped.toml`), else fresh ones (seed 42).
fn attach_routers(model: &mut Model, model_name: &str, depth: Option<&std::path::Path>) -> Result<()> {
    use flexidepth::depth::{file, shipped};
    let shipped = match depth {
        Some(_) => None,
        None => shipped::shipped_depth(model_name)?,
    };
    static ONCE: std::sync::Once = std::sync::Once::new();
    if let Some(path) = depth.or(shipped.as_deref()) {
        file::attach_depth_file(model, path).with_context(|| format!("cannot attach {}", path.display()))?;
        if depth.is_none() {
            ONCE.call_once(|| eprintln!("bench: no --depth given; using the shipped adapter {}", path.display()));
        }
        return Ok(());
    }
    let (meta, tensors) = file::fresh_depth(model, None, 16, 16, 42)?;
    file::attach_tensors(model, &meta, &tensors)?;
    ONCE.call_once(|| {
        eprintln!("bench: no --depth given and no shipped adapter; using freshly initialised routers (seed 42)")
    });
    Ok(())
}
