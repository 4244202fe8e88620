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
    errors: Mutex<Vec<(String, u64)>>,
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
fn bump(list: &Mutex<Vec<(String, u64)>>, key: &str) {
    let mut list = list.lock().unwrap_or_else(|e| e.into_inner());
    match list.iter_mut().find(|(k, _)| k == key) {
        Some((_, n)) => *n += 1,
        None => list.push((key.to_string(), 1)),
    }
}

impl Metrics {
    pub fn request(&self, endpoint: &str) {
        bump(&self.requests, endpoint);
    }

    pub fn error(&self, status: u16) {
        bump(&self.errors, &status.to_string());
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
        let mut out = String::new();
        let labelled = |list: &Mutex<Vec<(String, u64)>>, label: &str| -> Vec<(String, String)> {
            let list = list.lock().unwrap_or_else(|e| e.into_inner());
            list.iter()
                .map(|(k, n)| (format!("{{{label}=\"{k}\"}}"), n.to_string()))
                .collect()
        };
        write_metric(&mut out, REQUESTS, labelled(&self.requests, "endpoint"));
        write_metric(&mut out, ERRORS, labelled(&self.errors, "status"));
        for (metric, value) in self.plain() {
            write_metric(&mut out, metric, vec![(String::new(), value.to_string())]);
        }
        // A summary's samples are `NAME_sum` and `NAME_count` (the suffix goes where labels would).
        let layers = f64::from_bits(self.layers_sum_bits.load(Ordering::Relaxed));
        let count = self.generated_tokens.load(Ordering::Relaxed);
        let samples = vec![
            ("_sum".into(), format!("{layers}")),
            ("_count".into(), count.to_string()),
        ];
        write_metric(&mut out, LAYERS, samples);
        out
    }

    /// The unlabelled counters and gauges with their values.
    fn plain(&self) -> Vec<(&'static Described, u64)> {
        let values = [
            &self.prompt_tokens,
            &self.generated_tokens,
            &self.decode_steps,
            &self.decode_rows,
            &self.prefill_chunks,
            &self.cancelled,
            &self.queue_depth,
            &self.active_sequences,
            &self.kv_cache_bytes,
        ];
        PLAIN
            .iter()
            .zip(values)
            .map(|(m, v)| (m, v.load(Ordering::Relaxed)))
            .collect()
    }
}

/// A metric's name, type and help text.
struct Described {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
}

const fn described(name: &'static str, kind: &'static str, help: &'static str) -> Described {
    Described { name, kind, help }
}

const REQUESTS: &Described = &described(
    "flexidepth_requests_total",
    "counter",
    "HTTP requests received, by endpoint.",
);
const ERRORS: &Described = &described("flexidepth_errors_total", "counter", "Error responses, by HTTP status.");
const LAYERS: &Described = &described(
    "flexidepth_layers_per_token",
    "summary",
    "Layers used by the forward pass that produced each generated token.",
);

/// The unlabelled metrics, in the order of [`Metrics::plain`]'s values.
const PLAIN: [Described; 9] = [
    described("flexidepth_prompt_tokens_total", "counter", "Prompt tokens processed."),
    described("flexidepth_generated_tokens_total", "counter", "Tokens generated."),
    described("flexidepth_decode_steps_total", "counter", "Batched decode steps."),
    described(
        "flexidepth_decode_rows_total",
        "counter",
        "Rows of all decode steps (sequences advanced).",
    ),
    described("flexidepth_prefill_chunks_total", "counter", "Prompt chunks processed."),
    described(
        "flexidepth_cancelled_total",
        "counter",
        "Requests cancelled because the client went away.",
    ),
    described("flexidepth_queue_depth", "gauge", "Requests waiting for a batch slot."),
    described(
        "flexidepth_active_sequences",
        "gauge",
        "Sequences in the running batch.",
    ),
    described(
        "flexidepth_kv_cache_bytes",
        "gauge",
        "Bytes held by the KV caches of active sequences.",
    ),
];

/// `# HELP`, `# TYPE` and the samples (label set or name suffix, value) of one metric.
fn write_metric(out: &mut String, metric: &Described, samples: Vec<(String, String)>) {
    let (name, kind, help) = (metric.name, metric.kind, metric.help);
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{labels} {value}");
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
