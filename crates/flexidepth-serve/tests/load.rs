//! A load test: concurrent clients, each sending a series of requests of mixed lengths, endpoints, depth policies
//! and sampling, some streamed and some cancelled midway — on the default model with its shipped adapter, with
//! small batches and prompt chunks so that batches fill, requests queue and long prompts are chunked between
//! decode steps. Nothing is lost or corrupted: each finished response equals the same request run alone, and the
//! server is back to idle (no sequence, no KV cache) afterwards. Latency percentiles and throughput are printed
//! (speed is the bench's business, not asserted here).

mod common;

use common::{chat_stream_text, config, sse_payloads, start, TestServer};
use serde_json::{json, Value};
use std::time::Instant;

const CLIENTS: usize = 4;
const PER_CLIENT: usize = 4;

/// A passage long enough that its prompt takes several chunks.
const PASSAGE: &str = "It is a truth universally acknowledged, that a single man in possession of a good fortune, \
    must be in want of a wife. However little known the feelings or views of such a man may be on his first \
    entering a neighbourhood, this truth is so well fixed in the minds of the surrounding families, that he is \
    considered the rightful property of some one or other of their daughters.";

/// One request of the mix: its endpoint, body, and whether the client drops it midway.
#[derive(Clone)]
struct Spec {
    path: &'static str,
    body: Value,
    cancel: bool,
}

/// Request `k` of the mix (deterministic).
fn spec(k: usize) -> Spec {
    let max_tokens = [4, 16, 32, 48, 8][k % 5];
    let prompt = match k % 4 {
        0 => format!("Question {k}: what is {k} plus {}?", k * 3),
        1 => format!("{PASSAGE} Summarise this in one line (take {k})."),
        2 => format!("{PASSAGE} What is the passage about? ({k})"),
        _ => format!("List {k} fruits."),
    };
    let chat = !k.is_multiple_of(3);
    let mut body = if chat {
        json!({"messages": [{"role": "user", "content": prompt}]})
    } else {
        json!({"prompt": prompt})
    };
    body["max_tokens"] = json!(max_tokens);
    body["temperature"] = json!(if k % 7 == 3 { 0.8 } else { 0.0 });
    body["seed"] = json!(k);
    body["depth_tokens"] = json!(true);
    match k % 5 {
        1 => body["depth_mode"] = json!("run"),
        2 => body["depth_mode"] = json!("skip"),
        3 => body["skip_threshold"] = json!(0.3),
        4 => body["skip_threshold"] = json!(0.7),
        _ => {}
    }
    let cancel = k % 5 == 4;
    body["stream"] = json!(k % 2 == 1 || cancel);
    Spec {
        path: if chat {
            "/v1/chat/completions"
        } else {
            "/v1/completions"
        },
        body,
        cancel,
    }
}

/// What must match between runs: text, finish reason, usage and the layers of every token.
async fn run(s: &TestServer, spec: &Spec) -> Value {
    if spec.body["stream"] == json!(true) {
        let resp = s.client.post(s.url(spec.path)).json(&spec.body).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let chunks = sse_payloads(&resp.text().await.unwrap());
        assert_eq!(chunks.last(), Some(&json!("[DONE]")), "a stream ends with [DONE]");
        let text = if spec.path.contains("chat") {
            chat_stream_text(&chunks)
        } else {
            chunks
                .iter()
                .filter_map(|c| c["choices"].get(0)?["text"].as_str())
                .collect()
        };
        let last = chunks
            .iter()
            .find(|c| c["choices"][0]["finish_reason"].is_string())
            .unwrap();
        return json!({"text": text, "finish": last["choices"][0]["finish_reason"], "depth": last["depth"]});
    }
    let (status, out) = s.post(spec.path, &spec.body).await;
    assert_eq!(status, 200, "{out}");
    let choice = &out["choices"][0];
    let text = choice["message"]["content"]
        .as_str()
        .or(choice["text"].as_str())
        .unwrap();
    let depth = if spec.path.contains("chat") {
        &out["depth"]
    } else {
        &choice["depth"]
    };
    json!({"text": text, "finish": choice["finish_reason"], "depth": depth})
}

/// Start a request and drop it after its first two chunks.
async fn run_cancelled(s: &TestServer, spec: &Spec) {
    let mut resp = s.client.post(s.url(spec.path)).json(&spec.body).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    for _ in 0..2 {
        if resp.chunk().await.unwrap().is_none() {
            break;
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_clients_get_what_they_get_alone() {
    let mut cfg = config();
    cfg.max_batch = 3;
    cfg.prefill_chunk = 32;
    let s = start(true, cfg);
    let specs: Vec<Spec> = (0..CLIENTS * PER_CLIENT).map(spec).collect();
    let mut alone = Vec::new();
    for spec in &specs {
        alone.push(if spec.cancel { Value::Null } else { run(&s, spec).await });
    }
    let rss_idle = rss_kib();

    let s = std::sync::Arc::new(s);
    let start_at = Instant::now();
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (s, specs) = (s.clone(), specs.clone());
        clients.push(tokio::spawn(async move {
            let mut results = Vec::new();
            for k in (c..specs.len()).step_by(CLIENTS) {
                let t = Instant::now();
                if specs[k].cancel {
                    run_cancelled(&s, &specs[k]).await;
                    continue;
                }
                let got = run(&s, &specs[k]).await;
                results.push((k, got, t.elapsed().as_secs_f64()));
            }
            results
        }));
    }
    let mut results = Vec::new();
    for c in clients {
        results.extend(c.await.unwrap());
    }
    let wall = start_at.elapsed().as_secs_f64();

    let expected = specs.iter().filter(|s| !s.cancel).count();
    assert_eq!(results.len(), expected, "no request lost");
    for (k, got, _) in &results {
        assert_eq!(
            got, &alone[*k],
            "request {k} under load differs from the same request alone"
        );
    }
    s.wait_metric("flexidepth_active_sequences", 0.0).await;
    assert_eq!(s.metric("flexidepth_kv_cache_bytes").await, 0.0);
    assert_eq!(s.metric("flexidepth_queue_depth").await, 0.0);
    let cancelled = specs.iter().filter(|s| s.cancel).count() as f64;
    assert!(s.metric("flexidepth_cancelled_total").await <= cancelled);

    let mut latencies: Vec<f64> = results.iter().map(|r| r.2).collect();
    latencies.sort_by(f64::total_cmp);
    let tokens: f64 = results
        .iter()
        .map(|r| r.1["depth"]["generated_tokens"].as_f64().unwrap())
        .sum();
    let steps = s.metric("flexidepth_decode_steps_total").await;
    let rows = s.metric("flexidepth_decode_rows_total").await;
    eprintln!(
        "load: {} clients x {} requests ({} cancelled): {} ok in {wall:.2} s, {:.1} generated tokens/s; latency \
         p50 {:.2} s, p99 {:.2} s; mean decode batch {:.2}; RSS idle {} KiB, after {} KiB",
        CLIENTS,
        PER_CLIENT,
        cancelled,
        results.len(),
        tokens / wall,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        rows / steps.max(1.0),
        rss_idle,
        rss_kib(),
    );
}

/// The process's resident memory (Linux; 0 elsewhere), printed for the record.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:")?.trim().strip_suffix(" kB")?.parse().ok())
        })
        .unwrap_or(0)
}
