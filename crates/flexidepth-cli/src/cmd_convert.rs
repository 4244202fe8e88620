//! `flexidepth convert`: write an HF folder from a model (typically a GGUF file).

use crate::ModelArgs;
use anyhow::{Context, Result};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Output folder (created if needed).
    #[arg(short = 'o', long)]
    pub output: PathBuf,
    /// Add this depth-adapter file's routers, writing the official FlexiDepth layout (model_type ddllama).
    #[arg(long)]
    pub depth: Option<PathBuf>,
    /// Storage dtype of the written weights: f32 or bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
}

pub fn run(args: Args) -> Result<()> {
    let dtype: flexidepth::convert::ConvertDtype = args.dtype.parse()?;
    let files = args.model.open()?;
    let start = std::time::Instant::now();
    flexidepth::convert::convert_with_depth(&files, args.depth.as_deref(), &args.output, dtype)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    eprintln!(
        "wrote {} in {:.1} s",
        args.output.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
