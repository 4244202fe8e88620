//! Shared helpers of the server tests: a server on the default model (its GGUF blocks, optionally the shipped
//! FlexiDepth adapter) on an ephemeral loopback port, and an HTTP client that reads plain and streamed responses.

#![allow(dead_code)]

use flexidepth::depth::FlexiDepth;
use flexidepth::loader::ModelFiles;
use flexidepth::model::WeightFormat;
use flexidepth_serve::{Engine, ServeConfig, Server};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

pub const MODEL: &str = "smollm2-135m-instruct";

/// The shipped adapter of the default model.
pub const ADAPTER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../adapters/smollm2-135m-instruct/flexidepth.safetensors"
);

/// The default model (fetched by `scripts/fetch-models.sh`), with the adapter when `routed`.
pub fn engine(routed: bool) -> Engine {
    let files = ModelFiles::open(MODEL).unwrap_or_else(|e| panic!("{e} (scripts/fetch-models.sh fetches it)"));
    let mut model = files
        .load_model(WeightFormat::Quantized, &candle_core::Device::Cpu)
        .unwrap();
    if routed {
        flexidepth::depth::file::attach_depth_file(&mut model, std::path::Path::new(ADAPTER)).unwrap();
    }
    Engine {
        name: MODEL.into(),
        eos_token_ids: files.eos_token_ids(),
        tokenizer: Arc::new(files.tokenizer),
        sampling: files.generation.sampling(),
        depth: FlexiDepth::default(),
        model,
    }
}

/// A config on an ephemeral loopback port with a short shutdown grace.
pub fn config() -> ServeConfig {
    ServeConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        shutdown_grace: Duration::from_secs(2),
        ..ServeConfig::default()
    }
}

/// A running server and a client for it.
pub struct TestServer {
    pub server: Server,
    pub base: String,
    pub client: reqwest::Client,
}

/// Start a server on the default model with `config`.
pub fn start(routed: bool, config: ServeConfig) -> TestServer {
    let server = Server::start(engine(routed), config).unwrap();
    let base = format!("http://{}", server.addr());
    let client = reqwest::Client::builder()
        // A bound so that a broken server fails the test instead of hanging it (not a speed check).
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap();
    TestServer { server, base, client }
}

impl TestServer {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// POST `body` (JSON) to `path`: the status and the parsed JSON answer.
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let resp = self.client.post(self.url(path)).json(body).send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {text}"));
        (status, json)
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let resp = self.client.get(self.url(path)).send().await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    /// POST a streaming request: the `data:` payloads in order (`[DONE]` included as a string).
    pub async fn stream(&self, path: &str, body: &Value) -> Vec<Value> {
        let resp = self.client.post(self.url(path)).json(body).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
        assert!(ct.starts_with("text/event-stream"), "{ct}");
        sse_payloads(&resp.text().await.unwrap())
    }

    /// A gauge or counter from `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        let (_, text) = self.get("/metrics").await;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
    }

    /// Wait until `name` reads `want` (the scheduler updates gauges after each step); bounded, not a speed check.
    pub async fn wait_metric(&self, name: &str, want: f64) {
        for _ in 0..600 {
            if self.metric(name).await == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{name} never reached {want} (now {})", self.metric(name).await);
    }
}

/// The `data:` payloads of a server-sent-events body.
pub fn sse_payloads(body: &str) -> Vec<Value> {
    body.split("\n\n")
        .filter_map(|event| event.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(|d| serde_json::from_str(d).unwrap_or_else(|_| json!(d)))
        .collect()
}

/// The text of streamed chat chunks.
pub fn chat_stream_text(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"].get(0)?["delta"]["content"].as_str())
        .collect()
}

/// A chat request with one user message, greedy.
pub fn chat(content: &str, max_tokens: u64) -> Value {
    json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
    })
}
