//! Benchmarks in the manner of `llama-bench`: prompt processing (`pp P`: one forward over P tokens) and generation
//! (`tg N`: N greedy decode steps, optionally after a prefilled context of d tokens), repeated, as tokens/s with
//! mean ± standard deviation; one row per depth policy (`flexidepth::depth::PolicySpec`), with the layers each token used and the
//! weights-read bound on the speed-up over full depth (decode is memory-bound: a token can go at most as much
//! faster as it reads fewer bytes of weights).

use flexidepth::cache::KvCache;
use flexidepth::depth::DepthPolicy;
use flexidepth::error::{Error, Result};
use flexidepth::model::plan::ExecutedPlan;
use flexidepth::model::{Logits, Model};
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// Run `f` with `threads` threads: a rayon pool of that size for our kernels (and candle's gemm, which runs in the
/// current pool), and `RAYON_NUM_THREADS` for candle's own thread count (read on every call). So one process
/// measures several thread counts, as `llama-bench -t 1,2` does; the previous setting is restored afterwards.
///
/// Errors: 0 threads, or a pool that cannot be built.
pub fn with_threads<T: Send, E: Send + From<Error>>(
    threads: usize,
    f: impl FnOnce() -> std::result::Result<T, E> + Send,
) -> std::result::Result<T, E> {
    if threads == 0 {
        return Err(Error::Input("a benchmark needs at least one thread".into()).into());
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| Error::Input(format!("cannot start {threads} threads: {e}")))
        .map_err(E::from)?;
    let before = std::env::var("RAYON_NUM_THREADS").ok();
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    let out = pool.install(f);
    match before {
        Some(v) => std::env::set_var("RAYON_NUM_THREADS", v),
        None => std::env::remove_var("RAYON_NUM_THREADS"),
    }
    out
}

/// Mean and sample standard deviation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Stats {
    pub mean: f64,
    pub std: f64,
}

impl Stats {
    pub fn of(samples: &[f64]) -> Stats {
        let n = samples.len();
        if n == 0 {
            return Stats {
                mean: f64::NAN,
                std: f64::NAN,
            };
        }
        let mean = samples.iter().sum::<f64>() / n as f64;
        let std = if n > 1 {
            (samples.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
        } else {
            0.0
        };
        Stats { mean, std }
    }
}

/// The median (of finite values), for comparing interleaved runs.
pub fn median(xs: &[f64]) -> f64 {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// One measured row.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchRow {
    pub engine: String,
    pub model: String,
    pub dtype: String,
    pub threads: usize,
    pub config: String,
    /// `pp512`, `tg128`, `tg128@d512`.
    pub test: String,
    pub n_prompt: usize,
    pub n_gen: usize,
    pub n_depth: usize,
    pub reps: usize,
    pub mean_tps: f64,
    pub std_tps: f64,
    pub samples_tps: Vec<f64>,
    /// Mean layers run per processed token.
    pub layers_per_token: f64,
    /// Mean bytes of weights read per processed token (layers by their decisions, plus the head).
    pub weight_bytes_per_token: f64,
    /// Full depth's weight bytes per token over this row's: the most a memory-bound decode can speed up.
    pub bound_speedup: Option<f64>,
    /// This row's tokens/s over full depth's (same model, dtype, threads, test and batch).
    pub speedup: Option<f64>,
    /// Sequences decoded in lockstep (`bench -b`, [`crate::bench_batched`]); `None` for a single-sequence row.
    /// A batched row's `mean_tps` is the aggregate over the batch.
    #[serde(default)]
    pub batch: Option<usize>,
    /// Tokens/s per sequence of a batched row (`mean_tps` over `batch`).
    #[serde(default)]
    pub per_seq_tps: Option<f64>,
    /// A batched row's aggregate tokens/s over the batch-1 row of the same config and test.
    #[serde(default)]
    pub batch_speedup: Option<f64>,
}

/// Fill `speedup` and `bound_speedup` of every row from the `full` row of the same model, dtype, threads, test and
/// batch, and `batch_speedup` of the batched rows ([`crate::bench_batched::fill_batch_speedups`]).
pub fn fill_speedups(rows: &mut [BenchRow]) {
    crate::bench_batched::fill_batch_speedups(rows);
    let fulls: Vec<BenchRow> = rows.iter().filter(|r| r.config == "full").cloned().collect();
    for r in rows.iter_mut() {
        if let Some(f) = fulls.iter().find(|f| {
            f.model == r.model && f.dtype == r.dtype && f.threads == r.threads && f.test == r.test && f.batch == r.batch
        }) {
            r.speedup = Some(r.mean_tps / f.mean_tps);
            r.bound_speedup = Some(f.weight_bytes_per_token / r.weight_bytes_per_token);
        }
    }
}

fn opt(x: Option<f64>) -> String {
    x.map_or("-".to_string(), |v| format!("{v:.2}"))
}

/// A markdown table, one line per single-sequence row; the batched rows follow in a table of their own
/// ([`crate::bench_batched::to_markdown`]).
pub fn to_markdown(rows: &[BenchRow]) -> String {
    let batched = crate::bench_batched::to_markdown(rows);
    let rows: Vec<&BenchRow> = rows.iter().filter(|r| r.batch.is_none()).collect();
    if rows.is_empty() && !batched.is_empty() {
        return batched;
    }
    let mut out = String::from(
        "| model | dtype | threads | config | test | layers/token | MB/token | tokens/s | speed-up | bound |\n\
         |---|---|---:|---|---|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        out += &format!(
            "| {} | {} | {} | {} | {} | {:.2} | {:.1} | {:.2} ± {:.2} | {} | {} |\n",
            r.model,
            r.dtype,
            r.threads,
            r.config,
            r.test,
            r.layers_per_token,
            r.weight_bytes_per_token / 1e6,
            r.mean_tps,
            r.std_tps,
            opt(r.speedup),
            opt(r.bound_speedup)
        );
    }
    if !batched.is_empty() {
        out += "\n";
        out += &batched;
    }
    out
}

/// CSV with a header line; samples joined by `;`.
pub fn to_csv(rows: &[BenchRow]) -> String {
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in rows {
        w.serialize(CsvRow::from(r))
            .expect("rows of text and numbers always serialise");
    }
    // A header even for no rows: the writer only writes one with the first row.
    if rows.is_empty() {
        w.write_record(CSV_HEADER).expect("a header always serialises");
    }
    let bytes = w.into_inner().expect("writing to memory cannot fail");
    String::from_utf8(bytes).expect("the fields are UTF-8")
}

/// The CSV columns, in order (the fields of [`CsvRow`]).
const CSV_HEADER: [&str; 20] = [
    "engine",
    "model",
    "dtype",
    "threads",
    "config",
    "test",
    "n_prompt",
    "n_gen",
    "n_depth",
    "reps",
    "mean_tps",
    "std_tps",
    "samples_tps",
    "layers_per_token",
    "weight_bytes_per_token",
    "speedup",
    "bound_speedup",
    "batch",
    "per_seq_tps",
    "batch_speedup",
];

/// One CSV line of a [`BenchRow`]: rates and ratios with four decimals, bytes whole, the samples joined by `;`,
/// a missing ratio empty.
#[derive(Serialize)]
struct CsvRow<'a> {
    engine: &'a str,
    model: &'a str,
    dtype: &'a str,
    threads: usize,
    config: &'a str,
    test: &'a str,
    n_prompt: usize,
    n_gen: usize,
    n_depth: usize,
    reps: usize,
    mean_tps: String,
    std_tps: String,
    samples_tps: String,
    layers_per_token: String,
    weight_bytes_per_token: String,
    speedup: String,
    bound_speedup: String,
    batch: String,
    per_seq_tps: String,
    batch_speedup: String,
}

impl<'a> From<&'a BenchRow> for CsvRow<'a> {
    fn from(r: &'a BenchRow) -> Self {
        let f4 = |x: f64| format!("{x:.4}");
        let opt = |x: Option<f64>| x.map_or(String::new(), f4);
        let samples: Vec<String> = r.samples_tps.iter().map(|&s| f4(s)).collect();
        CsvRow {
            engine: &r.engine,
            model: &r.model,
            dtype: &r.dtype,
            threads: r.threads,
            config: &r.config,
            test: &r.test,
            n_prompt: r.n_prompt,
            n_gen: r.n_gen,
            n_depth: r.n_depth,
            reps: r.reps,
            mean_tps: f4(r.mean_tps),
            std_tps: f4(r.std_tps),
            samples_tps: samples.join(";"),
            layers_per_token: f4(r.layers_per_token),
            weight_bytes_per_token: format!("{:.0}", r.weight_bytes_per_token),
            speedup: opt(r.speedup),
            bound_speedup: opt(r.bound_speedup),
            batch: r.batch.map_or(String::new(), |b| b.to_string()),
            per_seq_tps: opt(r.per_seq_tps),
            batch_speedup: opt(r.batch_speedup),
        }
    }
}

/// A JSON array of the rows.
pub fn to_json(rows: &[BenchRow]) -> String {
    serde_json::to_string_pretty(rows).expect("rows always serialise")
}

/// Built-in text the benchmarks feed (our own prose; routing depends on content, so it should read like text).
pub const BENCH_TEXT: &str = "The harbour town woke slowly. Fishing boats came in with the tide, gulls circled the \
market, and the baker opened his shutters before the church bell rang seven. Anna walked down the hill with a basket \
of letters for the post office, counting the houses she passed: twelve white ones, three blue, and the old red house \
where the captain had lived until last winter. Nobody knew who would buy it. Some said a painter from the city, \
others a family with four children and a dog. By noon the square was full of voices, prices, and the smell of bread. ";

/// The first `n` token ids of [`BENCH_TEXT`] repeated as often as needed.
pub fn bench_ids(tokenizer: &flexidepth::tokenizer::Tokenizer, n: usize) -> Result<Vec<u32>> {
    let unit = tokenizer.encode(BENCH_TEXT, false)?;
    if unit.is_empty() {
        return Err(Error::Tokenizer("the benchmark text encodes to no tokens".into()));
    }
    Ok(unit.iter().cycle().take(n).copied().collect())
}

/// Layers used and weight bytes read (layers, head and one embedding row) by each row of an executed plan.
pub fn token_costs(model: &Model, plan: &ExecutedPlan) -> Vec<(f64, f64)> {
    let bytes = model.layer_bytes();
    let head = model.head_weight_bytes() as f64;
    (0..plan.rows)
        .map(|row| {
            (
                plan.layers_used(row, &bytes),
                head + plan.weight_bytes(row, &bytes) as f64,
            )
        })
        .collect()
}

/// One timed run: seconds, and the per-token (layers, bytes) of the timed tokens.
pub struct Timed {
    pub seconds: f64,
    pub costs: Vec<(f64, f64)>,
}

/// Prompt processing: one forward over `ids` from an empty cache.
pub fn time_prompt(model: &Model, policy: &dyn DepthPolicy, ids: &[u32]) -> Result<Timed> {
    let mut cache = model.new_cache(ids.len());
    let start = Instant::now();
    let out = model.forward_with(ids, &mut cache, Logits::Last, policy)?;
    let _ = out.logits.to_vec2::<f32>()?;
    let seconds = start.elapsed().as_secs_f64();
    Ok(Timed {
        seconds,
        costs: token_costs(model, &out.plan),
    })
}

/// Generation: prefill `context` (untimed), then `n` greedy decode steps.
pub fn time_generation(model: &Model, policy: &dyn DepthPolicy, context: &[u32], n: usize) -> Result<Timed> {
    let mut cache: KvCache = model.new_cache(context.len().saturating_add(n).saturating_add(1));
    let out = model.forward_with(context, &mut cache, Logits::Last, policy)?;
    let mut next = flexidepth::generate::sampler::argmax(&out.logits.squeeze(0)?.to_vec1::<f32>()?);
    let mut plans = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        let out = model.forward_with(&[next], &mut cache, Logits::Last, policy)?;
        next = flexidepth::generate::sampler::argmax(&out.logits.squeeze(0)?.to_vec1::<f32>()?);
        plans.push(out.plan);
    }
    let seconds = start.elapsed().as_secs_f64();
    // Bookkeeping after the timer: it is not part of decoding.
    let costs = plans.iter().flat_map(|p| token_costs(model, p)).collect();
    Ok(Timed { seconds, costs })
}

/// Mean layers and bytes per token over several runs.
pub fn mean_costs(runs: &[Timed]) -> (f64, f64) {
    let all: Vec<&(f64, f64)> = runs.iter().flat_map(|r| &r.costs).collect();
    let n = all.len().max(1) as f64;
    (
        all.iter().map(|c| c.0).sum::<f64>() / n,
        all.iter().map(|c| c.1).sum::<f64>() / n,
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn row(config: &str, test: &str, tps: f64, bytes: f64) -> BenchRow {
        BenchRow {
            engine: "flexidepth".into(),
            model: "m".into(),
            dtype: "q".into(),
            threads: 2,
            config: config.into(),
            test: test.into(),
            n_prompt: 0,
            n_gen: 128,
            n_depth: 0,
            reps: 3,
            mean_tps: tps,
            std_tps: 1.0,
            samples_tps: vec![tps - 1.0, tps, tps + 1.0],
            layers_per_token: 30.0,
            weight_bytes_per_token: bytes,
            bound_speedup: None,
            speedup: None,
            batch: None,
            per_seq_tps: None,
            batch_speedup: None,
        }
    }

    #[test]
    fn stats_and_median() {
        let s = Stats::of(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]);
        assert_eq!(s.mean, 5.0);
        assert!((s.std - 2.138089935).abs() < 1e-6, "sample std, n − 1: {}", s.std);
        assert_eq!(Stats::of(&[3.0]).std, 0.0);
        assert!(Stats::of(&[]).mean.is_nan());
        assert_eq!(median(&[5.0, 1.0, 3.0]), 3.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[f64::NAN, 2.0]), 2.0);
    }

    #[test]
    fn speedups_come_from_the_matching_full_row() {
        let mut rows = vec![
            row("full", "tg128", 100.0, 80e6),
            row("skip", "tg128", 150.0, 40e6),
            row("skip", "pp512", 900.0, 40e6),
        ];
        fill_speedups(&mut rows);
        assert_eq!(rows[0].speedup, Some(1.0));
        assert_eq!(rows[1].speedup, Some(1.5));
        assert_eq!(rows[1].bound_speedup, Some(2.0));
        assert_eq!(rows[2].speedup, None, "no full pp512 row to compare with");
    }

    #[test]
    fn output_formats() {
        let mut rows = vec![
            row("full", "tg128", 100.0, 80e6),
            row("flexi:0.5", "tg128", 120.0, 60e6),
        ];
        fill_speedups(&mut rows);
        let md = to_markdown(&rows);
        let lines: Vec<&str> = md.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].starts_with("| model |") && lines[1].starts_with("|---"));
        assert_eq!(
            lines[3],
            "| m | q | 2 | flexi:0.5 | tg128 | 30.00 | 60.0 | 120.00 ± 1.00 | 1.20 | 1.33 |"
        );
        let csv = to_csv(&rows);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 3);
        let header: Vec<&str> = lines[0].split(',').collect();
        let fields: Vec<&str> = lines[2].split(',').collect();
        assert_eq!(header.len(), fields.len());
        assert_eq!(
            fields[header.iter().position(|h| *h == "samples_tps").unwrap()],
            "119.0000;120.0000;121.0000"
        );
        assert_eq!(fields[header.iter().position(|h| *h == "speedup").unwrap()], "1.2000");
        let json: serde_json::Value = serde_json::from_str(&to_json(&rows)).unwrap();
        assert_eq!(json[1]["config"], "flexi:0.5");
        assert_eq!(json[1]["samples_tps"].as_array().unwrap().len(), 3);
        assert_eq!(json[0]["bound_speedup"], 1.0);
        let mut odd = row("full", "tg128", 1.0, 1.0);
        odd.model = "a,\"b\"".into();
        assert!(to_csv(&[odd]).contains("\"a,\"\"b\"\"\""));
        assert_eq!(lines[0], CSV_HEADER.join(","));
        assert_eq!(to_csv(&[]), format!("{}\n", CSV_HEADER.join(",")));
        assert_eq!(
            lines[1].split(',').nth(16),
            Some("1.0000"),
            "bound_speedup of the full row"
        );
    }
}
