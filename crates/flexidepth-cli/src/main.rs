//! `flexidepth`: the command-line tool. Text goes to stdout, statistics and progress to stderr.

// First, so that its `eprintln!` is the one every module below uses.
#[macro_use]
mod output;
mod cmd_bench;
mod cmd_compare;
mod cmd_convert;
mod cmd_data;
mod cmd_depth;
mod cmd_eval;
mod cmd_frontier;
mod cmd_generate;
mod cmd_info;
mod cmd_perplexity;
mod cmd_serve;
mod cmd_study;
mod cmd_sweep;
mod cmd_tokenize;
mod cmd_train;
mod dmtd_args;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "flexidepth",
    version,
    about = "Adaptive-depth LLM inference (FlexiDepth, DMTD) on candle"
)]
struct Cli {
    /// Threads for the computation (default: the physical cores); `bench` takes a comma list.
    #[arg(short = 't', long, global = true)]
    threads: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt or a chat message.
    Generate(Box<cmd_generate::Args>),
    /// Perplexity of the first tokens of a text file.
    Perplexity(cmd_perplexity::Args),
    /// Benchmark scores as lm-evaluation-harness defines them (mmlu, hellaswag, winogrande, arc, gsm8k, humaneval,
    /// coqa) under a depth policy, with standard errors, layers and weight bytes per token, and wall time.
    Eval(Box<cmd_eval::Args>),
    /// The paper's method comparison: full depth, FlexiDepth (threshold tuned to the budget), early exit, ShortGPT,
    /// LaCo and MindSkip at "skip k layers" budgets, each an eval of the tasks; the retain-% table beside the
    /// paper's, JSON and a figure. Resumable: finished cells are kept in the output folder.
    Compare(Box<cmd_compare::Args>),
    /// Print the token ids of a text as a JSON array (no special tokens added).
    Tokenize(cmd_tokenize::Args),
    /// Describe a model: architecture, sizes, storage types, parameter count.
    Info(cmd_info::Args),
    /// Write an HF folder (config.json, model.safetensors, tokenizer files) from a model.
    Convert(cmd_convert::Args),
    /// FlexiDepth depth adapters (routers and adapters): create them.
    Depth(cmd_depth::Args),
    /// Measure prompt-processing and generation speed per depth configuration (like llama-bench).
    Bench(cmd_bench::Args),
    /// The paper's layer-usage study: layers used per generated token on copy, summarize, continue, repeat, sum
    /// and product tasks, as tables, JSON and depth maps.
    Study(Box<cmd_study::Args>),
    /// Train FlexiDepth routers and adapters on a frozen base (L = L_lm + α·L_skip), with checkpoints and --resume.
    Train(Box<cmd_train::Args>),
    /// The α sweep's table and figure from training run folders (config.toml, log.csv, quality.json).
    SweepReport(cmd_sweep::Args),
    /// Build the training set: seeded prompts about Austen and KJV passages answered by the model, plus plain text.
    Data(cmd_data::Args),
    /// Held-out quality against layers and weight bytes per token: depth adapters (thresholds tuned to budgets on
    /// tuning text) beside ShortGPT's static removal; optionally each adapter's ship point.
    Frontier(Box<cmd_frontier::Args>),
    /// Serve the model over HTTP with OpenAI's API (chat, completions, streaming), the layers each token used, and
    /// continuous batching.
    Serve(Box<cmd_serve::Args>),
}

/// Model selection shared by every command.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// A GGUF file, an HF folder, or a default model's short name
    /// (smollm2-135m-instruct, qwen2.5-coder-0.5b-instruct).
    #[arg(short = 'm', long = "model", default_value = flexidepth::loader::DEFAULT_MODEL)]
    pub model: String,
}

/// `--dtype`: the weight format the model computes with (the same meaning in every command).
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DtypeArg {
    /// Dequantize everything to f32: the reference path.
    F32,
    /// Keep a GGUF file's own quantized blocks and multiply them with our kernels (as llama.cpp does).
    #[value(alias = "quantized")]
    Q,
}

impl DtypeArg {
    /// The default for a model: its own blocks for a GGUF file, f32 for an HF folder (which has no blocks).
    pub fn default_for(path: &flexidepth::loader::ModelPath) -> Self {
        match path {
            flexidepth::loader::ModelPath::Gguf(_) => DtypeArg::Q,
            flexidepth::loader::ModelPath::HfDir(_) => DtypeArg::F32,
        }
    }

    pub fn format(self) -> flexidepth::model::WeightFormat {
        match self {
            DtypeArg::F32 => flexidepth::model::WeightFormat::F32,
            DtypeArg::Q => flexidepth::model::WeightFormat::Quantized,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DtypeArg::F32 => "f32",
            DtypeArg::Q => "q",
        }
    }
}

/// Model selection plus how to hold the weights, for the commands that compute.
#[derive(clap::Args, Debug, Clone)]
pub struct LoadArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Weight format to compute with [default: q for a GGUF file (its own quantized blocks), f32 for an HF folder].
    #[arg(long, value_enum)]
    pub dtype: Option<DtypeArg>,
}

impl ModelArgs {
    pub fn open(&self) -> anyhow::Result<flexidepth::loader::ModelFiles> {
        use anyhow::Context;
        flexidepth::loader::ModelFiles::open(&self.model).with_context(|| format!("cannot open model '{}'", self.model))
    }
}

impl LoadArgs {
    pub fn load(&self) -> anyhow::Result<(flexidepth::loader::ModelFiles, flexidepth::model::Model)> {
        use anyhow::Context;
        let files = self.model.open()?;
        let dtype = self.dtype.unwrap_or_else(|| DtypeArg::default_for(&files.path));
        let start = std::time::Instant::now();
        let model = files
            .load_model(dtype.format(), &device()?)
            .with_context(|| format!("cannot load the weights of '{}'", self.model.model))?;
        eprintln!(
            "loaded {} ({} layers, {}) in {:.2} s",
            self.model.model,
            files.config.num_hidden_layers,
            dtype.name(),
            start.elapsed().as_secs_f64()
        );
        Ok((files, model))
    }
}

/// `--outtype`: the storage type of written tensors (`depth init`, `train`).
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutType {
    F32,
    F16,
    Bf16,
}

impl OutType {
    pub fn dtype(self) -> candle_core::DType {
        match self {
            OutType::F32 => candle_core::DType::F32,
            OutType::F16 => candle_core::DType::F16,
            OutType::Bf16 => candle_core::DType::BF16,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            OutType::F32 => "f32",
            OutType::F16 => "f16",
            OutType::Bf16 => "bf16",
        }
    }
}

/// `--depth-mode`: how routed layers decide.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DepthModeArg {
    /// Trained routing: run a layer iff its gate is above the threshold.
    Dynamic,
    /// Every layer, unscaled: exactly the base model.
    Run,
    /// Every routed layer skipped.
    Skip,
}

impl From<DepthModeArg> for flexidepth::depth::DepthMode {
    fn from(m: DepthModeArg) -> Self {
        match m {
            DepthModeArg::Dynamic => flexidepth::depth::DepthMode::Dynamic,
            DepthModeArg::Run => flexidepth::depth::DepthMode::Run,
            DepthModeArg::Skip => flexidepth::depth::DepthMode::Skip,
        }
    }
}

/// FlexiDepth options shared by the commands that compute.
#[derive(clap::Args, Debug, Clone)]
pub struct DepthArgs {
    /// A depth-adapter file (routers and adapters) to attach to the model.
    #[arg(long = "depth")]
    pub depth: Option<std::path::PathBuf>,
    /// How routed layers decide.
    #[arg(long, value_enum, default_value_t = DepthModeArg::Dynamic)]
    pub depth_mode: DepthModeArg,
    /// Run a routed layer iff its gate is above this; default: the threshold stored in the depth file (0.5 as
    /// released). Higher skips more.
    #[arg(long)]
    pub skip_threshold: Option<f32>,
    /// What a skipped token leaves out: the whole layer (the paper), only the FFN, or only the attention;
    /// default: the unit stored in the depth file.
    #[arg(long, value_enum)]
    pub skip_unit: Option<SkipUnitArg>,
    /// Skipped tokens write no K/V (the paper's "no KV cache" ablation).
    #[arg(long)]
    pub no_skip_kv: bool,
    /// How the gate weighs rows: `released` scales a run row's FFN by the gate w and a skipped row's adapter by
    /// 1 − w (the paper); `hard` (ours, departs from the release) only decides: run rows are the base layer,
    /// skipped rows add the adapter unscaled. Default: the rule stored in the depth file.
    #[arg(long, value_enum)]
    pub gate_scaling: Option<GateScalingArg>,
}

/// `--gate-scaling` values.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateScalingArg {
    Released,
    Hard,
}

impl From<GateScalingArg> for flexidepth::depth::GateScaling {
    fn from(g: GateScalingArg) -> Self {
        match g {
            GateScalingArg::Released => flexidepth::depth::GateScaling::Released,
            GateScalingArg::Hard => flexidepth::depth::GateScaling::Hard,
        }
    }
}

/// `--skip-unit` values.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipUnitArg {
    Layer,
    Ffn,
    Attention,
}

impl From<SkipUnitArg> for flexidepth::depth::SkipUnit {
    fn from(u: SkipUnitArg) -> Self {
        match u {
            SkipUnitArg::Layer => flexidepth::depth::SkipUnit::Layer,
            SkipUnitArg::Ffn => flexidepth::depth::SkipUnit::Ffn,
            SkipUnitArg::Attention => flexidepth::depth::SkipUnit::Attention,
        }
    }
}

impl DepthArgs {
    /// Attach the depth file (if any) and return the policy to run with, its threshold and skip unit resolved (the
    /// flag, else the depth file's).
    pub fn apply(&self, model: &mut flexidepth::model::Model) -> anyhow::Result<flexidepth::depth::FlexiDepth> {
        use anyhow::Context;
        if let Some(t) = self.skip_threshold {
            if !(0.0..=1.0).contains(&t) {
                anyhow::bail!("--skip-threshold must be a number in [0, 1], got {t}");
            }
        }
        if let Some(path) = &self.depth {
            let meta = flexidepth::depth::file::attach_depth_file(model, path)
                .with_context(|| format!("cannot attach the depth adapter {}", path.display()))?;
            eprintln!(
                "depth adapter {}: routed layers {}..={}",
                path.display(),
                meta.routed_layers.first().copied().unwrap_or(0),
                meta.routed_layers.last().copied().unwrap_or(0)
            );
        }
        let threshold = self
            .skip_threshold
            .or(model.skip_threshold())
            .unwrap_or(flexidepth::depth::DEFAULT_SKIP_THRESHOLD);
        let policy = flexidepth::depth::FlexiDepth {
            mode: self.depth_mode.into(),
            skip_threshold: Some(threshold),
            skip_kv: !self.no_skip_kv,
            unit: Some(self.skip_unit.map(Into::into).or(model.skip_unit()).unwrap_or_default()),
            gate_scaling: Some(
                self.gate_scaling
                    .map(Into::into)
                    .or(model.gate_scaling())
                    .unwrap_or_default(),
            ),
        };
        if model.routed_layers().is_empty() {
            let given: Vec<&str> = [
                (self.depth_mode != DepthModeArg::Dynamic, "--depth-mode"),
                (self.skip_threshold.is_some(), "--skip-threshold"),
                (self.skip_unit.is_some(), "--skip-unit"),
                (self.gate_scaling.is_some(), "--gate-scaling"),
                (self.no_skip_kv, "--no-skip-kv"),
            ]
            .into_iter()
            .filter_map(|(on, flag)| on.then_some(flag))
            .collect();
            if !given.is_empty() {
                anyhow::bail!(
                    "{} need(s) a model with routers: give --depth FILE",
                    given.join(" and ")
                );
            }
        }
        Ok(policy)
    }
}

/// The compute device: the first CUDA GPU when built with `--features cuda`, else the CPU.
pub fn device() -> anyhow::Result<candle_core::Device> {
    #[cfg(feature = "cuda")]
    {
        Ok(candle_core::Device::new_cuda(0)?)
    }
    #[cfg(not(feature = "cuda"))]
    {
        Ok(candle_core::Device::Cpu)
    }
}

/// More threads than any machine this runs on has cores (a larger value is a typo, and would start that many).
pub const MAX_THREADS: usize = 1024;

/// A thread count given with `-t`: in `1..=MAX_THREADS`.
pub fn parse_threads(t: &str) -> anyhow::Result<usize> {
    t.trim()
        .parse()
        .ok()
        .filter(|&n: &usize| (1..=MAX_THREADS).contains(&n))
        .ok_or_else(|| anyhow::anyhow!("-t takes a number of threads in 1..={MAX_THREADS}, not '{t}'"))
}

/// Size the thread pools. candle's and ours read `RAYON_NUM_THREADS`; when it is unset, candle re-counts the
/// physical cores (by reading /proc/cpuinfo) on every matmul, so it is always set here, once.
fn set_threads(threads: Option<&str>, is_bench: bool) -> anyhow::Result<()> {
    let n = match threads {
        Some(t) if is_bench && t.contains(',') => return Ok(()), // bench sizes a pool per value
        Some(t) => parse_threads(t)?,
        None => candle_core::utils::get_num_threads(),
    };
    // Nothing has started a thread pool yet: this is the first thing main does.
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    Ok(())
}

/// Let every flag that takes a value accept one that starts with `-` (`-p "->"`, `--chat "-5 + 3 = ?"`,
/// `--seed -1`), as llama.cpp's `-p` takes the next argument whatever it is; positional arguments are left alone.
fn hyphen_values(cmd: clap::Command) -> clap::Command {
    let cmd = cmd.mut_args(|a| {
        if !a.is_positional() && a.get_action().takes_values() {
            a.allow_hyphen_values(true)
        } else {
            a
        }
    });
    let names: Vec<String> = cmd.get_subcommands().map(|s| s.get_name().to_string()).collect();
    names.into_iter().fold(cmd, |c, n| c.mut_subcommand(n, hyphen_values))
}

/// The command line definition: the derived parser with [`hyphen_values`] applied.
fn cli_command() -> clap::Command {
    hyphen_values(Cli::command())
}

fn main() {
    let parsed = cli_command().try_get_matches().and_then(|m| Cli::from_arg_matches(&m));
    let cli = match parsed {
        Ok(c) => c,
        Err(e) => {
            // clap's `exit` ignores a failed write: `--help > /dev/full` would exit 0 having printed nothing.
            use std::io::Write;
            if e.use_stderr() {
                e.exit();
            }
            let mut out = std::io::stdout();
            let text = if std::io::IsTerminal::is_terminal(&out) {
                e.render().ansi().to_string()
            } else {
                e.render().to_string()
            };
            if let Err(err) = out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
                let _ = writeln!(std::io::stderr(), "error: cannot write to stdout: {err}");
                std::process::exit(1);
            }
            std::process::exit(e.exit_code())
        }
    };
    let is_bench = matches!(cli.command, Command::Bench(_));
    if let Err(e) = set_threads(cli.threads.as_deref(), is_bench) {
        eprintln!("error: {e:#}");
        std::process::exit(2);
    }
    // Ctrl-C removes the temp files of unfinished atomic writes (a half-written model.safetensors) before exiting;
    // `train` and `serve` install their own handlers (train checkpoints first, serve drains its requests).
    if !matches!(cli.command, Command::Train(_) | Command::Serve(_)) {
        if let Err(e) = ctrlc::set_handler(|| flexidepth::tmpfiles::exit_interrupted()) {
            eprintln!("error: cannot install the Ctrl-C handler: {e}");
            std::process::exit(1);
        }
    }
    if matches!(cli.command, Command::Train(_)) {
        flexidepth_train::single_threaded_elementwise();
    }
    // Run the command on a worker of the compute pool: parallel kernels called from a pool thread are picked up
    // by spinning siblings, instead of parking the caller on a latch and waking a sleeping worker per matmul.
    let pool = match rayon::ThreadPoolBuilder::new()
        .num_threads(candle_core::utils::get_num_threads())
        .build()
    {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: cannot start the thread pool: {e}");
            std::process::exit(1);
        }
    };
    let res = pool.install(|| match cli.command {
        Command::Generate(a) => cmd_generate::run(*a),
        Command::Perplexity(a) => cmd_perplexity::run(a),
        Command::Eval(a) => cmd_eval::run(*a),
        Command::Compare(a) => cmd_compare::run(*a),
        Command::Tokenize(a) => cmd_tokenize::run(a),
        Command::Info(a) => cmd_info::run(a),
        Command::Convert(a) => cmd_convert::run(a),
        Command::Depth(a) => cmd_depth::run(a),
        Command::Bench(a) => cmd_bench::run(a, cli.threads.as_deref()),
        Command::Study(a) => cmd_study::run(*a),
        Command::Train(a) => cmd_train::run(*a),
        Command::SweepReport(a) => cmd_sweep::run(a),
        Command::Data(a) => cmd_data::run(a),
        Command::Frontier(a) => cmd_frontier::run(*a),
        Command::Serve(a) => cmd_serve::run(*a),
    });
    if let Err(e) = res {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every value-taking flag of every command, given a value that starts with `-`, is not read as a flag.
    #[test]
    fn every_flag_that_takes_a_value_accepts_a_leading_hyphen() {
        fn walk(cmd: &clap::Command, path: Vec<String>, checked: &mut usize) {
            for arg in cmd.get_arguments() {
                if arg.is_positional() || !arg.get_action().takes_values() {
                    continue;
                }
                assert!(arg.is_allow_hyphen_values_set(), "{path:?} --{:?}", arg.get_long());
                let flag = match (arg.get_long(), arg.get_short()) {
                    (Some(l), _) => format!("--{l}"),
                    (None, Some(s)) => format!("-{s}"),
                    _ => continue,
                };
                let mut argv = vec!["flexidepth".to_string()];
                argv.extend(path.iter().cloned());
                argv.extend([flag.clone(), "-5".to_string()]);
                if let Err(e) = cli_command().try_get_matches_from(&argv) {
                    let kind = e.kind();
                    assert!(
                        !matches!(kind, clap::error::ErrorKind::UnknownArgument),
                        "{argv:?}: {e}"
                    );
                    assert!(!e.to_string().contains("a value is required"), "{argv:?}: {e}");
                }
                *checked += 1;
            }
            for sub in cmd.get_subcommands() {
                let mut p = path.clone();
                p.push(sub.get_name().to_string());
                walk(sub, p, checked);
            }
        }
        let mut checked = 0;
        walk(&cli_command(), vec![], &mut checked);
        assert!(checked > 60, "{checked}");
    }

    #[test]
    fn free_text_that_starts_with_a_hyphen_is_a_value() {
        for argv in [
            vec!["tokenize", "-p", "->"],
            vec!["generate", "-p", "- milk"],
            vec!["generate", "--chat", "-5 + 3 = ?"],
            vec!["generate", "-p", "x", "--stop", "-", "-r", "--", "--top-p", "-0.5"],
            vec!["generate", "-p", "-n", "-n", "3"],
        ] {
            let full: Vec<&str> = std::iter::once("flexidepth").chain(argv.iter().copied()).collect();
            assert!(cli_command().try_get_matches_from(&full).is_ok(), "{argv:?}");
        }
    }

    #[test]
    fn enum_flags_are_checked_by_the_parser() {
        for argv in [
            vec!["generate", "-p", "x", "--dtype", "f64"],
            vec!["generate", "-p", "x", "--depth-mode", "sometimes"],
            vec!["bench", "-o", "xml"],
            vec!["train", "--loss", "mse"],
            vec!["convert", "-o", "/tmp/x", "--outtype", "q4"],
        ] {
            let full: Vec<&str> = std::iter::once("flexidepth").chain(argv.iter().copied()).collect();
            let e = cli_command().try_get_matches_from(&full).unwrap_err();
            assert_eq!(e.kind(), clap::error::ErrorKind::InvalidValue, "{argv:?}: {e}");
        }
    }

    /// Split a README command line as a shell would (double and single quotes, no expansions).
    fn shell_words(line: &str) -> Vec<String> {
        let (mut words, mut cur, mut quote, mut any) = (Vec::new(), String::new(), None, false);
        for c in line.chars() {
            match (quote, c) {
                (None, '"' | '\'') => {
                    quote = Some(c);
                    any = true;
                }
                (Some(q), c) if c == q => quote = None,
                (None, ' ') => {
                    if any {
                        words.push(std::mem::take(&mut cur));
                    }
                    any = false;
                }
                _ => {
                    cur.push(c);
                    any = true;
                }
            }
        }
        if any {
            words.push(cur);
        }
        words
    }

    /// Every `$fd ...` example of the README parses with today's flags (optional `[...]` parts included, `...`
    /// placeholders skipped); the ones that show behaviour are run by the integration tests.
    #[test]
    fn readme_examples_parse() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
        let mut lines = Vec::new();
        let mut pending = String::new();
        for raw in readme.lines() {
            let l = raw.trim_end();
            if !pending.is_empty() {
                pending.push(' ');
                pending.push_str(l.trim_start().trim_end_matches('\\'));
                if !l.ends_with('\\') {
                    lines.push(std::mem::take(&mut pending));
                }
                continue;
            }
            if let Some(rest) = l.strip_prefix("$fd ") {
                let rest = rest.split(" # ").next().unwrap().trim_end();
                if l.ends_with('\\') {
                    pending = rest.trim_end_matches('\\').to_string();
                } else {
                    lines.push(rest.to_string());
                }
            }
        }
        assert!(lines.len() > 20, "{}", lines.len());
        let mut checked = 0;
        for line in &lines {
            if line.contains("...") {
                continue;
            }
            let line = line.split("   #").next().unwrap();
            let mut words = vec!["flexidepth".to_string()];
            for w in shell_words(line) {
                let w = w.trim_start_matches('[').trim_end_matches(']').to_string();
                // `[--loss lm|kl|lm+kl]`: the first choice.
                words.push(w.split('|').next().unwrap().to_string());
            }
            if let Err(e) = cli_command().try_get_matches_from(&words) {
                panic!("README: $fd {line}\n{e}");
            }
            checked += 1;
        }
        assert!(checked > 15, "{checked}");
    }
}
