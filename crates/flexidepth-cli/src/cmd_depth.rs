//! `flexidepth depth`: create FlexiDepth depth adapters.

use crate::ModelArgs;
use anyhow::{Context, Result};
use flexidepth::depth::file::{fresh_depth, write_depth_file};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub command: DepthCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum DepthCommand {
    /// Write freshly initialised routers and adapters for a model (N(0, 0.02) weights, zero adapter output).
    Init(InitArgs),
}

#[derive(clap::Args, Debug)]
pub struct InitArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Output depth-adapter file (.safetensors).
    #[arg(short = 'o', long, visible_alias = "out")]
    pub output: PathBuf,
    /// Layers to route, `A..B` (end exclusive) or `A..=B`; default the later half.
    #[arg(long)]
    pub routed_layers: Option<String>,
    #[arg(short = 's', long, default_value_t = 42)]
    pub seed: u64,
    /// hidden / router bottleneck width.
    #[arg(long, default_value_t = 16)]
    pub router_reduction: usize,
    /// intermediate / adapter width.
    #[arg(long, default_value_t = 16)]
    pub proj_reduction: usize,
    /// Storage type of the written tensors (llama.cpp's convert calls it --outtype; --dtype is kept as a hidden
    /// alias).
    #[arg(long, value_enum, alias = "dtype", default_value_t = crate::OutType::F32)]
    pub outtype: crate::OutType,
}

pub fn run(args: Args) -> Result<()> {
    match args.command {
        DepthCommand::Init(a) => init(a),
    }
}

fn init(args: InitArgs) -> Result<()> {
    let dtype = args.outtype.dtype();
    let files = args.model.open()?;
    let model = files.load_model(flexidepth::model::WeightFormat::F32, &candle_core::Device::Cpu)?;
    let layers = args
        .routed_layers
        .as_deref()
        .map(|s| flexidepth::depth::parse_layer_range(s, model.config.num_hidden_layers))
        .transpose()?;
    let (meta, tensors) = fresh_depth(&model, layers, args.router_reduction, args.proj_reduction, args.seed)?;
    let layers = meta.routed_layers.clone();
    write_depth_file(&args.output, &meta, &tensors, dtype)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    let params: usize = tensors.values().map(|t| t.elem_count()).sum();
    eprintln!(
        "wrote {}: routed layers {}..={}, {} parameters ({:.2} M)",
        args.output.display(),
        layers[0],
        layers[layers.len() - 1],
        params,
        params as f64 / 1e6
    );
    Ok(())
}
