//! Serving speed, measured as a client sees it: for each concurrency, that many clients each stream a few
//! completions from a running `flexidepth serve` (greedy, a fixed length), and the run reports the aggregate
//! generated tokens per second, the time to first token and the inter-token latency (p50 and p99), and the mean
//! layers per generated token the server reported. One markdown table row per concurrency on stdout.
//!
//! `cargo bench -p flexidepth-serve --bench serve_load -- --url http://127.0.0.1:8080 [--label NAME]
//! [--concurrency 1,4,16] [--requests 2] [--max-tokens 64]` (`bench/serve.sh` starts the servers and runs it).

use futures_util::StreamExt;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Story openers: raw completions that rarely end early.
const PROMPTS: [&str; 8] = [
    "Once upon a time, in a village at the edge of a great forest,",
    "The history of the printing press begins",
    "In the year 2150, the first colony on Mars",
    "The old lighthouse keeper had a secret:",
    "Photosynthesis is the process by which",
    "The recipe for a perfect loaf of bread starts with",
    "When the train stopped in the middle of the desert,",
    "The rules of chess are simple to learn:",
];

struct Options {
    url: String,
    label: String,
    concurrency: Vec<usize>,
    requests: usize,
    max_tokens: usize,
}

fn options() -> Options {
    let mut o = Options {
        url: "http://127.0.0.1:8080".into(),
        label: "server".into(),
        concurrency: vec![1, 4, 16],
        requests: 2,
        max_tokens: 64,
    };
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    for pair in args.chunks(2) {
        let value = pair.get(1).cloned().unwrap_or_default();
        let number = |v: &str| {
            v.parse::<usize>()
                .unwrap_or_else(|_| panic!("{}: not a count: {v}", pair[0]))
        };
        match pair[0].as_str() {
            "--url" => o.url = value,
            "--label" => o.label = value,
            "--concurrency" => o.concurrency = value.split(',').map(number).collect(),
            "--requests" => o.requests = number(&value),
            "--max-tokens" => o.max_tokens = number(&value),
            other => panic!("unknown option {other}"),
        }
    }
    o
}

/// One streamed request as the client saw it.
struct Timing {
    ttft: f64,
    /// Gaps between consecutive chunks that carried text.
    gaps: Vec<f64>,
    tokens: usize,
    mean_layers: f64,
}

async fn stream_one(client: &reqwest::Client, url: &str, prompt: &str, max_tokens: usize) -> Timing {
    let body = json!({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": true,
                      "stream_options": {"include_usage": true}});
    let sent = Instant::now();
    let resp = client
        .post(format!("{url}/v1/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200, "{:?}", resp.text().await);
    let mut bytes = resp.bytes_stream();
    let (mut buf, mut last, mut ttft) = (String::new(), None::<Instant>, None);
    let mut t = Timing {
        ttft: 0.0,
        gaps: vec![],
        tokens: 0,
        mean_layers: f64::NAN,
    };
    while let Some(chunk) = bytes.next().await {
        buf.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            let Some(data) = event.trim().strip_prefix("data: ") else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<Value>(data) else {
                continue;
            };
            let now = Instant::now();
            if v["choices"][0]["text"].as_str().is_some_and(|s| !s.is_empty()) {
                ttft.get_or_insert(now - sent);
                if let Some(prev) = last {
                    t.gaps.push((now - prev).as_secs_f64());
                }
                last = Some(now);
            }
            if let Some(m) = v["depth"]["mean_layers"].as_f64() {
                t.mean_layers = m;
            }
            if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
                t.tokens = n as usize;
            }
        }
    }
    t.ttft = ttft.unwrap_or_default().as_secs_f64();
    t
}

fn percentile(xs: &mut [f64], p: f64) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs.get(((xs.len().max(1) - 1) as f64 * p).round() as usize)
        .copied()
        .unwrap_or(f64::NAN)
}

async fn run(o: &Options, concurrency: usize) -> String {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(900))
        .build()
        .unwrap();
    let start = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|c| {
            let (client, url, requests, max_tokens) = (client.clone(), o.url.clone(), o.requests, o.max_tokens);
            tokio::spawn(async move {
                let mut out = Vec::new();
                for r in 0..requests {
                    let prompt = PROMPTS[(c * requests + r) % PROMPTS.len()];
                    out.push(stream_one(&client, &url, prompt, max_tokens).await);
                }
                out
            })
        })
        .collect();
    let mut timings = Vec::new();
    for t in tasks {
        timings.extend(t.await.unwrap());
    }
    let wall = start.elapsed().as_secs_f64();
    let tokens: usize = timings.iter().map(|t| t.tokens).sum();
    let layers = timings.iter().map(|t| t.mean_layers * t.tokens as f64).sum::<f64>() / tokens.max(1) as f64;
    let mut ttft: Vec<f64> = timings.iter().map(|t| t.ttft).collect();
    let mut gaps: Vec<f64> = timings.iter().flat_map(|t| t.gaps.iter().copied()).collect();
    let ms = |s: f64| s * 1000.0;
    format!(
        "| {} | {concurrency} | {} | {tokens} | {wall:.1} | {:.1} | {:.0} | {:.0} | {:.0} | {:.0} | {layers:.2} |",
        o.label,
        timings.len(),
        tokens as f64 / wall,
        ms(percentile(&mut ttft, 0.5)),
        ms(percentile(&mut ttft, 0.99)),
        ms(percentile(&mut gaps, 0.5)),
        ms(percentile(&mut gaps, 0.99)),
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let o = options();
    let client = reqwest::Client::new();
    // Warm-up: the first request pays for page faults and allocations.
    stream_one(&client, &o.url, PROMPTS[0], 8).await;
    for &c in &o.concurrency {
        println!("{}", run(&o, c).await);
    }
}
