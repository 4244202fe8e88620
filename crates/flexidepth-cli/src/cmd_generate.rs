//! `flexidepth generate`: llama.cpp-style text generation with streaming output.

use crate::{DepthArgs, LoadArgs};
use anyhow::{bail, Context, Result};
use flexidepth::chat::Message;
use flexidepth::escape::process_escapes;
use flexidepth::generate::speculative::{generate_self_speculative, SpeculativeOptions};
use flexidepth::generate::{generate, GenerateOptions, SamplingParams};
use std::io::Write;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: LoadArgs,
    #[command(flatten)]
    pub depth: DepthArgs,
    #[command(flatten)]
    pub dmtd: crate::dmtd_args::DmtdArgs,
    #[command(flatten)]
    pub dmtd_decode: crate::dmtd_args::DmtdDecodeArgs,
    /// Write the depth trace (one JSON object per token: gate and decision per routed layer; under --dmtd the
    /// thinking layers, and whether the token was a cycle head) to this file.
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
    /// Raw prompt (the tokenizer's own special tokens, e.g. a BOS, are added). Taken as typed: no escapes
    /// unless -e.
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
    /// Process backslash escapes (\n \t \\ \" \uXXXX ...) in -p, --chat and --system too (llama.cpp's -e);
    /// stop strings always get them.
    #[arg(short = 'e', long)]
    pub escape: bool,
    /// Print the rendered prompt and its token ids to stderr before generating (llama.cpp's flag).
    #[arg(long)]
    pub verbose_prompt: bool,
    /// Tokens to generate at most (0: nothing, the prompt is not computed).
    #[arg(
        short = 'n',
        long = "n-predict",
        visible_alias = "max-new-tokens",
        default_value_t = 256
    )]
    pub n_predict: usize,
    /// ≥ 0; 0 = greedy.
    #[arg(long, visible_alias = "temp")]
    pub temperature: Option<f64>,
    /// Keep the k most likely tokens (0 = off).
    #[arg(long)]
    pub top_k: Option<usize>,
    /// In (0, 1]: keep the smallest set of tokens whose probability reaches p (1 = off).
    #[arg(long)]
    pub top_p: Option<f64>,
    /// In [0, 1]: drop tokens less likely than min-p times the most likely one (0 = off).
    #[arg(long)]
    pub min_p: Option<f64>,
    /// > 0: divide positive logits of recent tokens by it, multiply negative ones (1 = off).
    #[arg(long)]
    pub repeat_penalty: Option<f32>,
    /// Recent tokens the repeat penalty considers.
    #[arg(long, default_value_t = 64)]
    pub repeat_last_n: usize,
    /// Seed of the sampler (sampling with the same seed repeats exactly; greedy decoding ignores it).
    #[arg(short = 's', long, default_value_t = 42)]
    pub seed: u64,
    /// Stop when the text contains this string (repeatable; backslash escapes such as \n are processed, as
    /// llama.cpp does for its reverse prompts).
    #[arg(short = 'r', long = "stop", visible_alias = "reverse-prompt")]
    pub stop: Vec<String>,
    /// Self-speculative decoding (LayerSkip): draft with an early exit after this many layers, verify at full
    /// depth; the output equals greedy full depth (exactly in f32; on quantized weights the k+1-row verification
    /// rounds differently from one-row decoding, so a near-tie can go the other way). Greedy only.
    #[arg(long, value_name = "L", conflicts_with = "tau")]
    pub self_speculative: Option<usize>,
    /// Tokens drafted per cycle with --self-speculative.
    #[arg(long, value_name = "K", default_value_t = 4, requires = "self_speculative")]
    pub draft_tokens: usize,
}

impl Args {
    /// The sampling flags over `base`, checked against their domains.
    fn sampling(&self, base: SamplingParams) -> Result<SamplingParams> {
        let mut sampling = base;
        sampling.seed = self.seed;
        sampling.repeat_last_n = self.repeat_last_n;
        if let Some(t) = self.temperature {
            sampling.temperature = t;
        }
        if let Some(k) = self.top_k {
            sampling.top_k = k;
        }
        if let Some(p) = self.top_p {
            sampling.top_p = p;
        }
        if let Some(p) = self.min_p {
            sampling.min_p = p;
        }
        if let Some(r) = self.repeat_penalty {
            sampling.repeat_penalty = r;
        }
        sampling.validate().map_err(|e| match e {
            flexidepth::Error::InvalidParameter { name, value, domain } => {
                anyhow::anyhow!("--{} must be {domain}, not {value}", name.replace('_', "-"))
            }
            other => other.into(),
        })?;
        Ok(sampling)
    }
}

pub fn run(args: Args) -> Result<()> {
    if let Some(path) = &args.depth_map {
        // Refuse an unknown format or an unwritable path before spending time on the model.
        flexidepth_experiments::depthmap::DepthMapFormat::from_path(path)?;
        crate::output::check_output_path("--depth-map", path)?;
    }
    if let Some(path) = &args.trace {
        crate::output::check_output_path("--trace", path)?;
    }
    // Refuse sampling values out of their domain before loading anything.
    args.sampling(SamplingParams::default())?;
    if args.self_speculative.is_some() && args.temperature.is_some_and(|t| t > 0.0) {
        bail!("--self-speculative is greedy only (speculative sampling is not implemented): drop --temperature");
    }
    let typed = |s: &str| if args.escape { process_escapes(s) } else { s.to_string() };
    let stop_strings: Vec<String> = args.stop.iter().map(|s| process_escapes(s)).collect();
    if let Some(i) = stop_strings.iter().position(String::is_empty) {
        bail!("stop string {:?} is empty", args.stop[i]);
    }
    let (files, mut model) = args.model.load()?;
    let depth = args.depth.apply(&mut model)?;
    let routed = !model.routed_layers().is_empty();
    let dmtd = args
        .dmtd
        .apply(&mut model, files.dmtd)?
        .map(|l| args.dmtd_decode.options(l));
    if dmtd.is_some() && routed {
        bail!("--dmtd decodes the base model: it does not combine with routers (--depth or a FlexiDepth model)");
    }
    if !routed && dmtd.is_none() && (args.trace.is_some() || args.depth_map.is_some() || args.show_depth) {
        bail!("--trace, --depth-map and --show-depth need a model with routers (give --depth FILE) or --dmtd");
    }
    let tok = &files.tokenizer;
    let (text, prompt_ids) = if let Some(msg) = &args.chat {
        let template = tok
            .chat_template
            .as_ref()
            .context("this model has no chat template; use -p with a raw prompt")?;
        let mut messages = Vec::new();
        if let Some(s) = &args.system {
            messages.push(Message::new("system", &typed(s)));
        }
        messages.push(Message::new("user", &typed(msg)));
        let text = template.render(&messages, true)?;
        let ids = tok.encode(&text, false)?;
        (text, ids)
    } else {
        let text = match (&args.prompt, &args.file) {
            (Some(p), _) => typed(p),
            (None, Some(f)) => flexidepth::error::read_to_string(f)?,
            (None, None) => bail!("give a prompt with -p, -f or --chat"),
        };
        if text.is_empty() {
            bail!("the prompt is empty");
        }
        let ids = tok.encode(&text, true)?;
        (text, ids)
    };
    if args.verbose_prompt {
        print_verbose_prompt(tok, &text, &prompt_ids)?;
    }

    let mut sampling = args.sampling(files.generation.sampling())?;
    if args.self_speculative.is_some() {
        // Greedy, whatever the model's generation config samples with (checked above: no --temperature > 0).
        sampling.temperature = 0.0;
    }
    let opts = GenerateOptions {
        max_new_tokens: args.n_predict,
        sampling,
        eos_token_ids: files.eos_token_ids(),
        stop_strings,
        policy: std::sync::Arc::new(depth),
        trace: routed || dmtd.is_some(),
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut on_text = |piece: &str| {
        out.write_all(piece.as_bytes())
            .and_then(|_| out.flush())
            .map_err(|e| flexidepth::Error::Input(format!("cannot write to stdout: {e}")))
    };
    let mut speculative = None;
    let gen = match (dmtd, args.self_speculative) {
        (Some(d), _) => {
            eprintln!(
                "{}: thinking layers {:?} run at cycle heads only",
                d.label(),
                d.layout.thinking()
            );
            flexidepth::dmtd::generate(&model, tok, &prompt_ids, &opts, d, &mut on_text)?
        }
        (None, Some(exit_after)) => {
            let spec = SpeculativeOptions {
                exit_after,
                draft_tokens: args.draft_tokens,
            };
            let (gen, stats) = generate_self_speculative(&model, tok, &prompt_ids, &opts, spec, &mut on_text)?;
            speculative = Some(stats);
            gen
        }
        (None, None) => generate(&model, tok, &prompt_ids, &opts, &mut on_text)?,
    };
    writeln!(out).map_err(|e| anyhow::anyhow!("cannot write to stdout: {e}"))?;
    let s = &gen.stats;
    eprintln!("stop reason: {}", s.stop_reason);
    if args.n_predict == 0 {
        eprintln!("prompt: {} tokens, not computed (-n 0)", s.prompt_tokens);
    } else {
        eprintln!(
            "prompt: {} tokens in {:.3} s, {:.1} tokens/s",
            s.prompt_tokens,
            s.prefill_s,
            s.prompt_tokens_per_s()
        );
    }
    eprintln!(
        "decode: {} tokens in {:.3} s, {:.1} tokens/s",
        s.generated_tokens,
        s.decode_s,
        s.decode_tokens_per_s()
    );
    if let Some(st) = speculative {
        eprintln!(
            "self-speculative: {} cycles, {}/{} drafts accepted ({:.1}%), {:.2} layer passes per decoded token \
             (full depth: {})",
            st.cycles,
            st.accepted,
            st.drafted,
            100.0 * st.acceptance_rate(),
            st.layers_per_token(),
            model.layers.len()
        );
    }
    if let Some(trace) = &gen.trace {
        write_trace_outputs(&args, trace)?;
    }
    eprintln!("time to first token: {:.3} s", s.time_to_first_token_s);
    Ok(())
}

/// llama.cpp's `--verbose-prompt`: the text the model reads (template applied) and each token id with its text,
/// on stderr.
fn print_verbose_prompt(tok: &flexidepth::tokenizer::Tokenizer, text: &str, ids: &[u32]) -> Result<()> {
    eprintln!("prompt: {text:?}");
    eprintln!("number of tokens in prompt = {}", ids.len());
    for &id in ids {
        eprintln!("{id:>7} -> {:?}", tok.decode(&[id], false)?);
    }
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
        // Colours only for a terminal, as llama.cpp's --color; a pipe or file gets bracketed layer counts.
        let map = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            flexidepth_experiments::depthmap::to_ansi(&shown, args.trace_prompt)
        } else {
            flexidepth_experiments::depthmap::to_plain(&shown, args.trace_prompt)
        };
        eprintln!("{map}");
    }
    let heads = trace.tokens.iter().filter(|t| t.dmtd_head == Some(true)).count();
    let what = if trace.tokens.iter().any(|t| t.dmtd_head.is_some()) {
        format!("DMTD: {heads} cycle heads; thinking layers")
    } else {
        "routed layers".to_string()
    };
    eprintln!(
        "layers used: {:.2} of {} per generated token ({what} {}..={})",
        trace.mean_layers_generated(),
        trace.num_layers,
        trace.routed_layers.first().copied().unwrap_or(0),
        trace.routed_layers.last().copied().unwrap_or(0)
    );
    Ok(())
}
