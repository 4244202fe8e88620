//! `flexidepth generate`: llama.cpp-style text generation with streaming output.

use crate::LoadArgs;
use anyhow::{bail, Context, Result};
use flexidepth::chat::Message;
use flexidepth::generate::{generate, GenerateOptions};
use std::io::Write;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: LoadArgs,
    /// Raw prompt (the tokenizer's own special tokens, e.g. a BOS, are added).
    #[arg(short = 'p', long, conflicts_with_all = ["chat", "file"])]
    pub prompt: Option<String>,
    /// Read the raw prompt from a file.
    #[arg(short = 'f', long, conflicts_with = "chat")]
    pub file: Option<std::path::PathBuf>,
    /// A user message, wrapped in the model's chat template.
    #[arg(long)]
    pub chat: Option<String>,
    /// System message for --chat (the template's default when absent).
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
    /// Tokens to generate at most.
    #[arg(short = 'n', long = "n-predict", default_value_t = 256)]
    pub n_predict: usize,
    /// 0 = greedy.
    #[arg(long)]
    pub temperature: Option<f64>,
    #[arg(long)]
    pub top_k: Option<usize>,
    #[arg(long)]
    pub top_p: Option<f64>,
    #[arg(long)]
    pub min_p: Option<f64>,
    #[arg(long)]
    pub repeat_penalty: Option<f32>,
    /// Recent tokens the repeat penalty considers.
    #[arg(long, default_value_t = 64)]
    pub repeat_last_n: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Stop when the text contains this string (repeatable).
    #[arg(long = "stop")]
    pub stop: Vec<String>,
}

pub fn run(args: Args) -> Result<()> {
    let (files, model) = args.model.load()?;
    let tok = &files.tokenizer;
    let prompt_ids = if let Some(msg) = &args.chat {
        let template = tok
            .chat_template
            .as_ref()
            .context("this model has no chat template; use -p with a raw prompt")?;
        let mut messages = Vec::new();
        if let Some(s) = &args.system {
            messages.push(Message::new("system", s));
        }
        messages.push(Message::new("user", msg));
        let text = template.render(&messages, true)?;
        tok.encode(&text, false)?
    } else {
        let text = match (&args.prompt, &args.file) {
            (Some(p), _) => p.clone(),
            (None, Some(f)) => {
                let bytes =
                    std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))?;
                String::from_utf8(bytes).map_err(|e| {
                    anyhow::anyhow!(
                        "{}: not valid UTF-8 at byte {}",
                        f.display(),
                        e.utf8_error().valid_up_to()
                    )
                })?
            }
            (None, None) => bail!("give a prompt with -p, -f or --chat"),
        };
        if text.is_empty() {
            bail!("the prompt is empty");
        }
        tok.encode(&text, true)?
    };

    let mut sampling = files.generation.sampling();
    sampling.seed = args.seed;
    sampling.repeat_last_n = args.repeat_last_n;
    if let Some(t) = args.temperature {
        sampling.temperature = t;
    }
    if let Some(k) = args.top_k {
        sampling.top_k = k;
    }
    if let Some(p) = args.top_p {
        sampling.top_p = p;
    }
    if let Some(p) = args.min_p {
        sampling.min_p = p;
    }
    if let Some(r) = args.repeat_penalty {
        sampling.repeat_penalty = r;
    }
    let opts = GenerateOptions {
        max_new_tokens: args.n_predict,
        sampling,
        eos_token_ids: files.eos_token_ids(),
        stop_strings: args.stop.clone(),
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let gen = generate(&model, tok, &prompt_ids, &opts, &mut |piece| {
        out.write_all(piece.as_bytes())
            .and_then(|_| out.flush())
            .map_err(|e| flexidepth::Error::Input(format!("cannot write to stdout: {e}")))
    })?;
    writeln!(out)?;
    let s = &gen.stats;
    eprintln!("stop reason: {:?}", s.stop_reason);
    eprintln!(
        "prompt: {} tokens in {:.3} s, {:.1} tokens/s",
        s.prompt_tokens,
        s.prefill_s,
        s.prompt_tokens_per_s()
    );
    eprintln!(
        "decode: {} tokens in {:.3} s, {:.1} tokens/s",
        s.generated_tokens,
        s.decode_s,
        s.decode_tokens_per_s()
    );
    eprintln!("time to first token: {:.3} s", s.time_to_first_token_s);
    Ok(())
}
