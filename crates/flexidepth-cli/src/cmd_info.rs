//! `flexidepth info`: what a model is, without loading its weights.

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
    println!("source:            {:?}", files.path);
    println!("architecture:      {}", c.arch.hf_name());
    println!("layers:            {}", c.num_hidden_layers);
    println!("hidden size:       {}", c.hidden_size);
    println!("intermediate size: {}", c.intermediate_size);
    println!(
        "attention heads:   {} (kv heads {}, head dim {})",
        c.num_attention_heads, c.num_key_value_heads, c.head_dim
    );
    println!("vocab size:        {}", c.vocab_size);
    println!("context length:    {}", c.max_position_embeddings);
    println!("rope theta:        {}", c.rope_theta);
    println!("rms norm eps:      {}", c.rms_norm_eps);
    println!("tied embeddings:   {}", c.tie_word_embeddings);
    println!("q/k/v biases:      {}", c.attention_bias);
    println!(
        "parameters:        {} ({:.1} M)",
        c.num_parameters(),
        c.num_parameters() as f64 / 1e6
    );
    println!(
        "chat template:     {}",
        if files.tokenizer.chat_template.is_some() {
            "yes"
        } else {
            "no"
        }
    );
    println!("eos token ids:     {:?}", files.eos_token_ids());
    println!("storage types by tensor kind:");
    for (kind, dtype) in files.weights.dtype_summary() {
        println!("  {kind:<26} {dtype}");
    }
    Ok(())
}
