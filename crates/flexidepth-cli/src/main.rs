//! `flexidepth`: the command-line tool. Text goes to stdout, statistics and progress to stderr.

mod cmd_bench;
mod cmd_convert;
mod cmd_data;
mod cmd_depth;
mod cmd_generate;
mod cmd_info;
mod cmd_perplexity;
mod cmd_study;
mod cmd_sweep;
mod cmd_tokenize;
mod cmd_train;

use clap::{Parser, Subcommand};

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
}

/// Model selection shared by every command.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// A GGUF file, an HF folder, or a default model's short name
    /// (smollm2-135m-instruct, qwen2.5-coder-0.5b-instruct).
    #[arg(short = 'm', long = "model", default_value = flexidepth::loader::DEFAULT_MODEL)]
    pub model: String,
}

/// Model selection plus how to hold the weights, for the commands that compute.
#[derive(clap::Args, Debug, Clone)]
pub struct LoadArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Weight format in memory: f32 (dequantized reference path) or q (keep GGUF quantized blocks).
    #[arg(long, default_value = "f32")]
    pub dtype: String,
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
        let format: flexidepth::model::WeightFormat = self.dtype.parse()?;
        let files = self.model.open()?;
        let start = std::time::Instant::now();
        let model = files
            .load_model(format, &device()?)
            .with_context(|| format!("cannot load the weights of '{}'", self.model.model))?;
        eprintln!(
            "loaded {} ({} layers, {}) in {:.2} s",
            self.model.model,
            files.config.num_hidden_layers,
            self.dtype,
            start.elapsed().as_secs_f64()
        );
        Ok((files, model))
    }
}

/// FlexiDepth options shared by the commands that compute.
#[derive(clap::Args, Debug, Clone)]
pub struct DepthArgs {
    /// A depth-adapter file (routers and adapters) to attach to the model.
    #[arg(long = "depth")]
    pub depth: Option<std::path::PathBuf>,
    /// dynamic (trained routing), run (every layer, exactly the base model) or skip (every routed layer skipped).
    #[arg(long, default_value = "dynamic")]
    pub depth_mode: String,
    /// Run a routed layer iff its gate is above this; default: the threshold stored in the depth file (0.5 as
    /// released). Higher skips more.
    #[arg(long)]
    pub skip_threshold: Option<f32>,
    /// Skipped tokens write no K/V (the paper's "no KV cache" ablation).
    #[arg(long)]
    pub no_skip_kv: bool,
}

impl DepthArgs {
    /// Attach the depth file (if any) and return the policy to run with, its threshold resolved (the flag, else
    /// the depth file's).
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
            mode: self.depth_mode.parse()?,
            skip_threshold: Some(threshold),
            skip_kv: !self.no_skip_kv,
            unit: flexidepth::depth::SkipUnit::Layer,
        };
        if model.routed_layers().is_empty() && (self.depth_mode != "dynamic" || self.no_skip_kv) {
            anyhow::bail!("--depth-mode and --no-skip-kv need a model with routers: give --depth FILE");
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

/// Size the thread pools. candle's and ours read `RAYON_NUM_THREADS`; when it is unset, candle re-counts the
/// physical cores (by reading /proc/cpuinfo) on every matmul, so it is always set here, once.
fn set_threads(threads: Option<&str>, is_bench: bool) -> anyhow::Result<()> {
    let n = match threads {
        Some(t) if is_bench && t.contains(',') => return Ok(()), // bench runs one process per value
        Some(t) => t
            .parse()
            .ok()
            .filter(|&n: &usize| n > 0)
            .ok_or_else(|| anyhow::anyhow!("-t takes a positive number of threads, not '{t}'"))?,
        None => candle_core::utils::get_num_threads(),
    };
    // Nothing has started a thread pool yet: this is the first thing main does.
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    let is_bench = matches!(cli.command, Command::Bench(_));
    if let Err(e) = set_threads(cli.threads.as_deref(), is_bench) {
        eprintln!("error: {e:#}");
        std::process::exit(2);
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
        Command::Tokenize(a) => cmd_tokenize::run(a),
        Command::Info(a) => cmd_info::run(a),
        Command::Convert(a) => cmd_convert::run(a),
        Command::Depth(a) => cmd_depth::run(a),
        Command::Bench(a) => cmd_bench::run(a, cli.threads.as_deref()),
        Command::Study(a) => cmd_study::run(*a),
        Command::Train(a) => cmd_train::run(*a),
        Command::SweepReport(a) => cmd_sweep::run(a),
        Command::Data(a) => cmd_data::run(a),
    });
    if let Err(e) = res {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
