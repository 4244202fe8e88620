//! `flexidepth serve`: an OpenAI-compatible HTTP server (llama-server's flags where they exist) until Ctrl-C.

use crate::{DepthArgs, LoadArgs};
use anyhow::{Context, Result};
use flexidepth_serve::{Engine, ServeConfig, Server};
use std::sync::Arc;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: LoadArgs,
    #[command(flatten)]
    pub depth: DepthArgs,
    /// Address to listen on (loopback by default; 0.0.0.0 exposes the server to the network).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0: any free port, printed at start).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Require `Authorization: Bearer KEY` on every path but /health.
    #[arg(long)]
    pub api_key: Option<String>,
    /// Name clients see in /v1/models and responses [default: the -m value].
    #[arg(short = 'a', long)]
    pub alias: Option<String>,
    /// Requests waiting for a batch slot at most; more are refused with 429.
    #[arg(long, default_value_t = 64)]
    pub max_queue: usize,
    /// Sequences decoded together at most (continuous batching).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub max_batch: u64,
    /// Prompt tokens processed per scheduler step at most, so that a long prompt does not stall decoding.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub prefill_chunk: u64,
    /// Prompt tokens accepted at most [default: the context minus one].
    #[arg(long)]
    pub max_prompt: Option<usize>,
    /// max_tokens accepted at most (also caps a request that gives none).
    #[arg(long, default_value_t = 4096)]
    pub max_tokens: usize,
    /// Request bodies accepted at most, in bytes (larger: 413).
    #[arg(long, default_value_t = 2 << 20)]
    pub max_body: usize,
    /// Seconds running requests get to finish after Ctrl-C before they are cancelled.
    #[arg(long, default_value_t = 10.0)]
    pub shutdown_grace: f64,
    /// Temperature of requests that give none (0 = greedy) [default: the model's generation config].
    #[arg(long, visible_alias = "temp")]
    pub temperature: Option<f64>,
}

pub fn run(args: Args) -> Result<()> {
    if !(args.shutdown_grace.is_finite() && args.shutdown_grace >= 0.0) {
        anyhow::bail!("--shutdown-grace must be a number of seconds ≥ 0");
    }
    let addr = format!("{}:{}", args.host, args.port);
    let addr: std::net::SocketAddr = std::net::ToSocketAddrs::to_socket_addrs(&addr)
        .with_context(|| format!("cannot resolve --host {} --port {}", args.host, args.port))?
        .next()
        .with_context(|| format!("--host {} resolves to no address", args.host))?;
    let (files, mut model) = args.model.load()?;
    let depth = args.depth.apply(&mut model)?;
    let mut sampling = files.generation.sampling();
    if let Some(t) = args.temperature {
        sampling.temperature = t;
    }
    sampling.validate().map_err(|e| anyhow::anyhow!("--{e}"))?;
    let engine = Engine {
        name: args.alias.clone().unwrap_or_else(|| args.model.model.model.clone()),
        eos_token_ids: files.eos_token_ids(),
        tokenizer: Arc::new(files.tokenizer),
        sampling,
        depth,
        model,
    };
    let config = ServeConfig {
        addr,
        api_key: args.api_key.clone(),
        max_batch: args.max_batch as usize,
        max_queue: args.max_queue,
        prefill_chunk: args.prefill_chunk as usize,
        max_prompt_tokens: args.max_prompt,
        max_tokens_limit: args.max_tokens,
        max_body_bytes: args.max_body,
        shutdown_grace: Duration::from_secs_f64(args.shutdown_grace),
    };
    let (tx, rx) = std::sync::mpsc::channel();
    ctrlc::set_handler(move || {
        let _ = tx.send(());
    })
    .context("cannot install the Ctrl-C handler")?;
    let server = Server::start(engine, config).with_context(|| format!("cannot listen on {addr}"))?;
    eprintln!("listening on http://{} (Ctrl-C to stop)", server.addr());
    let _ = rx.recv();
    eprintln!("shutting down: finishing running requests");
    server.shutdown();
    eprintln!("stopped");
    Ok(())
}
