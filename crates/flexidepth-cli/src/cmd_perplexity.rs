//! `flexidepth perplexity`: mean NLL and perplexity of a text in windows (by default the first `--ctx` tokens of a
//! file, in one window); with `--compare-full`, a depth adapter's quality against the same model at full depth.

use crate::output::out;
use crate::{DepthArgs, LoadArgs};
use anyhow::{Context, Result};
use flexidepth_experiments::eval::{self, DEFAULT_MAX_TOKENS};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: LoadArgs,
    #[command(flatten)]
    pub depth: DepthArgs,
    #[command(flatten)]
    pub dmtd: crate::dmtd_args::DmtdArgs,
    /// The text file (UTF-8).
    #[arg(short = 'f', long, required_unless_present = "heldout", conflicts_with = "heldout")]
    pub file: Option<PathBuf>,
    /// Score the held-out text instead of a file: Persuasion from chapter 13 on (never in training data; needs
    /// scripts/fetch-data.sh).
    #[arg(long)]
    pub heldout: bool,
    /// Tokens per window; each window is scored from an empty cache.
    #[arg(short = 'c', long = "ctx-size", visible_aliases = ["ctx", "window"], default_value_t = 512)]
    pub ctx: usize,
    /// Which positions are scored: all positions of each window, or only its second half as llama-perplexity
    /// does (every scored token then has at least half a window of context).
    #[arg(long, value_enum, default_value_t = ScoringArg::All, conflicts_with = "stride")]
    pub scoring: ScoringArg,
    /// transformers' strided perplexity: a window every STRIDE tokens, each scoring only the tokens the previous
    /// one did not.
    #[arg(long, conflicts_with = "compare_full")]
    pub stride: Option<usize>,
    /// Tokens of the text to use, cut into windows [default: one window for -f, 4096 for --heldout].
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// Compare the depth adapter's routing (--depth-mode, --skip-threshold) with the same model at full depth:
    /// both perplexities, their ratio, KL(full ‖ flexi), top-1 agreement and layers per token.
    #[arg(long, requires = "depth")]
    pub compare_full: bool,
    /// Write the --compare-full (or --dmtd) figures to this file as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// `--scoring`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScoringArg {
    /// Every position of each window but its first.
    All,
    /// Only the second half of each window (llama-perplexity).
    SecondHalf,
}

pub fn run(args: Args) -> Result<()> {
    if args.ctx < 2 {
        anyhow::bail!("--ctx-size must be at least 2, not {}", args.ctx);
    }
    if let Some(s) = args.stride {
        if s == 0 || s > args.ctx {
            anyhow::bail!("--stride must be in 1..={} (the window), not {s}", args.ctx);
        }
    }
    if args.json.is_some() && !(args.compare_full || args.dmtd.tau.is_some()) {
        anyhow::bail!("--json writes the --compare-full or --dmtd figures; give one of them");
    }
    if args.dmtd.tau.is_some() && (args.compare_full || args.depth.depth.is_some() || args.stride.is_some()) {
        anyhow::bail!("--dmtd scores the base model (with --dmtd-weights) at full and cyclical depth; drop --depth, --compare-full and --stride");
    }
    if let Some(path) = &args.json {
        crate::output::check_output_path("--json", path)?;
    }
    if args.compare_full && args.scoring != ScoringArg::All {
        anyhow::bail!("--compare-full scores all positions; drop --scoring");
    }
    if let Some(tau) = args.dmtd.tau {
        // Each cycle offset is scored at every position of each window: a second-half scoring would be ignored,
        // and a cycle longer than the window leaves offsets with no position.
        if args.scoring != ScoringArg::All {
            anyhow::bail!("--dmtd scores every position, per cycle offset; drop --scoring");
        }
        if tau >= args.ctx {
            anyhow::bail!(
                "--dmtd {tau} needs windows of at least {} tokens (--ctx-size is {}): its last offsets would score \
                 nothing",
                tau + 1,
                args.ctx
            );
        }
    }
    let text = match &args.file {
        Some(f) => Some(flexidepth::error::read_to_string(f)?),
        None => None,
    };
    let (files, mut model) = args.model.load()?;
    // The full-depth reference of --dmtd is the base without the merged deltas: a second copy when they are given.
    let dmtd_base = match &args.dmtd.weights {
        Some(_) => Some(args.model.load()?.1),
        None => None,
    };
    let dmtd = args.dmtd.apply(&mut model, files.dmtd)?;
    let depth = args.depth.apply(&mut model)?;
    let context = model.config.max_position_embeddings;
    if args.ctx > context {
        anyhow::bail!(
            "--ctx-size {} is longer than the model's context of {context} tokens",
            args.ctx
        );
    }
    let (ids, default_max) = match &text {
        Some(t) => (files.tokenizer.encode(t, false)?, args.ctx),
        None => (
            files
                .tokenizer
                .encode(&flexidepth_experiments::corpus::heldout_text()?, false)?,
            DEFAULT_MAX_TOKENS,
        ),
    };
    let windows = eval::windows(&ids, args.ctx, args.max_tokens.unwrap_or(default_max))?;
    if windows.is_empty() {
        anyhow::bail!("the text has {} tokens; perplexity needs at least 2", ids.len());
    }
    let n_tokens: usize = windows.iter().map(Vec::len).sum();
    let n_layers = model.config.num_hidden_layers;
    let start = std::time::Instant::now();
    if let Some(layout) = &dmtd {
        crate::dmtd_args::report(
            dmtd_base.as_ref().unwrap_or(&model),
            &model,
            &windows,
            layout,
            args.json.as_ref(),
        )?;
    } else if args.compare_full {
        let q = eval::depth_quality(&model, &windows, &depth)?;
        out(format!(
            "windows: {} of up to {} tokens  positions scored: {}  policy: {}",
            q.windows,
            args.ctx,
            q.n_predicted,
            q.policy_label()
        ))?;
        out(format!(
            "full ppl: {:.4}  flexi ppl: {:.4}  ratio: {:.4}  KL(full‖flexi): {:.5} nats/token  top-1 agreement: \
             {:.4}  layers/token: {:.2} of {}",
            q.full_ppl, q.flexi_ppl, q.ppl_ratio, q.mean_kl, q.top1_agreement, q.mean_layers, q.num_layers
        ))?;
        if let Some(path) = &args.json {
            let mut bytes = serde_json::to_vec_pretty(&q)?;
            bytes.push(b'\n');
            flexidepth::error::write_atomic(path, &bytes)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
    } else {
        let scoring = match (args.stride, args.scoring) {
            (Some(stride), _) => eval::Scoring::Strided { stride },
            (None, ScoringArg::SecondHalf) => eval::Scoring::SecondHalf,
            (None, ScoringArg::All) => eval::Scoring::AllPositions,
        };
        let max = args.max_tokens.unwrap_or(default_max);
        let p = eval::perplexity_scored(&model, &ids, args.ctx, max, scoring, &depth)?;
        out(format!("scoring: {}", scoring.describe(args.ctx)))?;
        let mut line = format!(
            "tokens: {}  mean NLL: {:.5}  perplexity: {:.4}",
            p.n_tokens, p.mean_nll, p.ppl
        );
        line += &format!("  scored: {}  windows: {}", p.n_scored, p.windows);
        if !model.routed_layers().is_empty() {
            line += &format!("  layers/token: {:.2} of {}", p.mean_layers, n_layers);
        }
        out(line)?;
    }
    let secs = start.elapsed().as_secs_f64();
    let passes = if args.compare_full { 2 } else { 1 };
    eprintln!(
        "ran the model over {} tokens{} in {:.3} s, {:.1} tokens/s",
        n_tokens,
        if passes == 2 {
            " twice (full depth and routed)"
        } else {
            ""
        },
        secs,
        (passes * n_tokens) as f64 / secs
    );
    Ok(())
}
