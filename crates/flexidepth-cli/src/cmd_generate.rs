//! `flexidepth generate`: llama.cpp-style text generation with streaming output.

use crate::{DepthArgs, LoadArgs};
use anyhow::{bail, Context, Result};
use flexidepth::chat::Message;
use flexidepth::generate::{generate, GenerateOptions};
use std::io::Write;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: LoadArgs,
    #[command(flatten)]
    pub depth: DepthArgs,
    /// Write the depth trace (one JSON object per token: gate and decision per routed layer) to this file.
    #[arg(long)]
    pub trace: Option<std::path::PathBuf>,
    /// Write a depth map; the extension picks the format: .html, .svg or .txt (ANSI colours).
    #[arg(long)]
    pub depth_map: Option<std::path::PathBuf>,
    /// Print the generated text shaded by layers used to stderr (24-bit colour terminals).
    #[arg(long)]
    pub show_depth: bool,
    /// Include the prompt's tokens in the trace and depth maps.
    #[arg(long)]
    pub trace_prompt: bool,
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
    if let Some(path) = &args.depth_map {
        // Refuse an unknown format before spending time on the model.
        flexidepth_experiments::depthmap::DepthMapFormat::from_path(path)?;
    }
    let (files, mut model) = args.model.load()?;
    let depth = args.depth.apply(&mut model)?;
    let routed = !model.routed_layers().is_empty();
    if !routed && (args.trace.is_some() || args.depth_map.is_some() || args.show_depth) {
        bail!("--trace, --depth-map and --show-depth need a model with routers: give --depth FILE");
    }
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
            (None, Some(f)) => flexidepth::error::read_to_string(f)?,
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
        policy: std::sync::Arc::new(depth),
        trace: routed,
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
    if let Some(trace) = &gen.trace {
        write_trace_outputs(&args, trace)?;
    }
    eprintln!("time to first token: {:.3} s", s.time_to_first_token_s);
    Ok(())
}

/// The trace file, depth map and terminal rendering that the flags ask for, plus the mean depth on stderr.
fn write_trace_outputs(args: &Args, trace: &flexidepth::trace::DepthTrace) -> Result<()> {
    let mut shown = trace.clone();
    if !args.trace_prompt {
        shown.tokens.retain(|t| !t.prompt);
    }
    if let Some(path) = &args.trace {
        flexidepth::error::write_atomic(path, shown.to_jsonl().as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &args.depth_map {
        flexidepth_experiments::depthmap::write_depth_map(path, &shown, args.trace_prompt)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if args.show_depth {
        eprintln!(
            "{}",
            flexidepth_experiments::depthmap::to_ansi(&shown, args.trace_prompt)
        );
    }
    eprintln!(
        "layers used: {:.2} of {} per generated token (routed layers {}..={})",
        trace.mean_layers_generated(),
        trace.num_layers,
        trace.routed_layers.first().copied().unwrap_or(0),
        trace.routed_layers.last().copied().unwrap_or(0)
    );
    Ok(())
}
