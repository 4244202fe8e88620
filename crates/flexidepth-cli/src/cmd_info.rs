//! `flexidepth info`: what a model is, without loading its weights.

use crate::output::out;
use crate::ModelArgs;
use anyhow::Result;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
}

pub fn run(args: Args) -> Result<()> {
    let files = args.model.open()?;
    let c = &files.config;
    out(format!("source:            {}", files.path))?;
    out(format!("architecture:      {}", c.arch.hf_name()))?;
    out(format!("layers:            {}", c.num_hidden_layers))?;
    out(format!("hidden size:       {}", c.hidden_size))?;
    out(format!("intermediate size: {}", c.intermediate_size))?;
    out(format!(
        "attention heads:   {} (kv heads {}, head dim {})",
        c.num_attention_heads, c.num_key_value_heads, c.head_dim
    ))?;
    out(format!("vocab size:        {}", c.vocab_size))?;
    out(format!("context length:    {}", c.max_position_embeddings))?;
    out(format!("rope theta:        {}", c.rope_theta))?;
    out(format!("rms norm eps:      {}", c.rms_norm_eps))?;
    out(format!("tied embeddings:   {}", c.tie_word_embeddings))?;
    out(format!("q/k/v biases:      {}", c.attention_bias))?;
    out(format!(
        "parameters:        {} ({:.1} M)",
        c.num_parameters(),
        c.num_parameters() as f64 / 1e6
    ))?;
    out(format!(
        "chat template:     {}",
        if files.tokenizer.chat_template.is_some() {
            "yes"
        } else {
            "no"
        }
    ))?;
    out(format!("eos token ids:     {:?}", files.eos_token_ids()))?;
    out("storage types by tensor kind:")?;
    for (kind, dtype) in files.weights.dtype_summary() {
        out(format!("  {kind:<26} {dtype}"))?;
    }
    Ok(())
}
