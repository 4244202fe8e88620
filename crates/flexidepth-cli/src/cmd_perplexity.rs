//! `flexidepth perplexity`: mean NLL and perplexity over the first `--ctx` tokens of a file, in one window.

use crate::{DepthArgs, LoadArgs};
use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: LoadArgs,
    #[command(flatten)]
    pub depth: DepthArgs,
    /// The text file (UTF-8).
    #[arg(short = 'f', long)]
    pub file: PathBuf,
    /// Tokens of the file to score (the window).
    #[arg(long, default_value_t = 512)]
    pub ctx: usize,
}

pub fn run(args: Args) -> Result<()> {
    let text = flexidepth::error::read_to_string(&args.file)?;
    let (files, mut model) = args.model.load()?;
    let depth = args.depth.apply(&mut model)?;
    let mut ids = files.tokenizer.encode(&text, false)?;
    if ids.len() > args.ctx {
        ids.truncate(args.ctx);
    }
    let start = std::time::Instant::now();
    let p = flexidepth::eval::perplexity_with(&model, &ids, &depth)?;
    let secs = start.elapsed().as_secs_f64();
    let mut line = format!(
        "tokens: {}  mean NLL: {:.5}  perplexity: {:.4}",
        p.n_tokens, p.mean_nll, p.ppl
    );
    if !model.routed_layers().is_empty() {
        line += &format!(
            "  layers/token: {:.2} of {}",
            p.mean_layers, model.config.num_hidden_layers
        );
    }
    println!("{line}");
    eprintln!(
        "scored {} tokens in {:.3} s, {:.1} tokens/s",
        p.n_tokens,
        secs,
        p.n_tokens as f64 / secs
    );
    Ok(())
}
