//! Server counters and gauges, rendered in Prometheus' text format at `GET /metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// The server's counters (monotonic) and gauges (current values), shared by the handlers and the scheduler.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Requests received, per endpoint (in the order first seen).
    requests: Mutex<Vec<(String, u64)>>,
    /// Error responses, per HTTP status.
    errors: Mutex<Vec<(u16, u64)>>,
    pub prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    /// Layers used by the passes that produced generated tokens, summed (a float kept as f64 bits).
    layers_sum_bits: AtomicU64,
    pub decode_steps: AtomicU64,
    /// Rows of all decode steps (mean batch size = rows / steps).
    pub decode_rows: AtomicU64,
    pub prefill_chunks: AtomicU64,
    /// Requests whose client went away before they finished.
    pub cancelled: AtomicU64,
    pub queue_depth: AtomicU64,
    pub active_sequences: AtomicU64,
    /// Bytes held by the KV caches of active sequences.
    pub kv_cache_bytes: AtomicU64,
}

/// Add one to the entry of `key`.
fn bump<K: PartialEq + Clone>(list: &Mutex<Vec<(K, u64)>>, key: &K) {
    let mut list = list.lock().unwrap_or_else(|e| e.into_inner());
    match list.iter_mut().find(|(k, _)| k == key) {
        Some((_, n)) => *n += 1,
        None => list.push((key.clone(), 1)),
    }
}

impl Metrics {
    pub fn request(&self, endpoint: &str) {
        bump(&self.requests, &endpoint.to_string());
    }

    pub fn error(&self, status: u16) {
        bump(&self.errors, &status);
    }

    /// One generated token, produced by a pass that used `layers` layers.
    pub fn token(&self, layers: f64) {
        self.generated_tokens.fetch_add(1, Ordering::Relaxed);
        let mut cur = self.layers_sum_bits.load(Ordering::Relaxed);
        loop {
            let next = (f64::from_bits(cur) + layers).to_bits();
            match self
                .layers_sum_bits
                .compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(seen) => cur = seen,
            }
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: Vec<(String, String)>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        let requests = self.requests.lock().unwrap_or_else(|e| e.into_inner()).clone();
        metric(
            "flexidepth_requests_total",
            "counter",
            "HTTP requests received, by endpoint.",
            requests
                .iter()
                .map(|(e, n)| (format!("{{endpoint=\"{e}\"}}"), n.to_string()))
                .collect(),
        );
        let errors = self.errors.lock().unwrap_or_else(|e| e.into_inner()).clone();
        metric(
            "flexidepth_errors_total",
            "counter",
            "Error responses, by HTTP status.",
            errors
                .iter()
                .map(|(s, n)| (format!("{{status=\"{s}\"}}"), n.to_string()))
                .collect(),
        );
        let plain = |v: u64| vec![(String::new(), v.to_string())];
        let counters = [
            (
                "flexidepth_prompt_tokens_total",
                "Prompt tokens processed.",
                get(&self.prompt_tokens),
            ),
            (
                "flexidepth_generated_tokens_total",
                "Tokens generated.",
                get(&self.generated_tokens),
            ),
            (
                "flexidepth_decode_steps_total",
                "Batched decode steps.",
                get(&self.decode_steps),
            ),
            (
                "flexidepth_decode_rows_total",
                "Rows of all decode steps (sequences advanced).",
                get(&self.decode_rows),
            ),
            (
                "flexidepth_prefill_chunks_total",
                "Prompt chunks processed.",
                get(&self.prefill_chunks),
            ),
            (
                "flexidepth_cancelled_total",
                "Requests cancelled because the client went away.",
                get(&self.cancelled),
            ),
        ];
        for (name, help, v) in counters {
            metric(name, "counter", help, plain(v));
        }
        let gauges = [
            (
                "flexidepth_queue_depth",
                "Requests waiting for a batch slot.",
                get(&self.queue_depth),
            ),
            (
                "flexidepth_active_sequences",
                "Sequences in the running batch.",
                get(&self.active_sequences),
            ),
            (
                "flexidepth_kv_cache_bytes",
                "Bytes held by the KV caches of active sequences.",
                get(&self.kv_cache_bytes),
            ),
        ];
        for (name, help, v) in gauges {
            metric(name, "gauge", help, plain(v));
        }
        let layers = f64::from_bits(get(&self.layers_sum_bits));
        // A summary's samples are `NAME_sum` and `NAME_count` (the suffix goes where labels would).
        metric(
            "flexidepth_layers_per_token",
            "summary",
            "Layers used by the forward pass that produced each generated token.",
            vec![
                ("_sum".into(), format!("{layers}")),
                ("_count".into(), get(&self.generated_tokens).to_string()),
            ],
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_and_the_layer_summary() {
        let m = Metrics::default();
        m.request("/v1/completions");
        m.request("/v1/completions");
        m.error(429);
        m.token(20.5);
        m.token(29.5);
        m.queue_depth.store(3, Ordering::Relaxed);
        let text = m.render();
        assert!(
            text.contains("flexidepth_requests_total{endpoint=\"/v1/completions\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("flexidepth_errors_total{status=\"429\"} 1\n"), "{text}");
        assert!(text.contains("flexidepth_generated_tokens_total 2\n"), "{text}");
        assert!(text.contains("flexidepth_queue_depth 3\n"), "{text}");
        assert!(text.contains("flexidepth_layers_per_token_sum 50\n"), "{text}");
        assert!(text.contains("flexidepth_layers_per_token_count 2\n"), "{text}");
    }
}
