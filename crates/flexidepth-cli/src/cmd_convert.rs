//! `flexidepth convert`: write an HF folder from a model (typically a GGUF file).

use crate::ModelArgs;
use anyhow::{Context, Result};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Output folder (created if needed).
    #[arg(short = 'o', long, visible_alias = "out")]
    pub output: PathBuf,
    /// Add this depth-adapter file's routers, writing the official FlexiDepth layout (model_type ddllama).
    #[arg(long)]
    pub depth: Option<PathBuf>,
    /// Storage type of the written weights (llama.cpp's convert calls it --outtype; --dtype is kept as a hidden
    /// alias).
    #[arg(long, value_enum, alias = "dtype", default_value_t = ConvertType::F32)]
    pub outtype: ConvertType,
}

/// `convert --outtype`.
#[derive(clap::ValueEnum, Debug, Clone, Copy)]
pub enum ConvertType {
    F32,
    Bf16,
}

pub fn run(args: Args) -> Result<()> {
    let dtype = match args.outtype {
        ConvertType::F32 => flexidepth::convert::ConvertDtype::F32,
        ConvertType::Bf16 => flexidepth::convert::ConvertDtype::Bf16,
    };
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
