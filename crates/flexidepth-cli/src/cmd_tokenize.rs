//! `flexidepth tokenize`: the token ids of a text, as a JSON array.

use crate::ModelArgs;
use anyhow::Result;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(short = 'p', long)]
    pub prompt: String,
}

pub fn run(args: Args) -> Result<()> {
    let files = args.model.open()?;
    let ids = files.tokenizer.encode(&args.prompt, false)?;
    crate::output::out(serde_json::to_string(&ids)?)?;
    Ok(())
}
