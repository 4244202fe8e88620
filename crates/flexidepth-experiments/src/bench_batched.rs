//! `bench -b`: batched decode in the manner of llama.cpp's `llama-batched-bench`. B independent sequences, each
//! prefilled (untimed) with its own prompt into its own KV cache, are decoded greedily in lockstep: one
//! [`Model::forward_batch`] step with row-invariant ops (as the server's scheduler runs it) feeds every sequence
//! one token, N times. Reported per batch size: the aggregate decode rate (B·N tokens over the time of the N
//! steps), the rate per sequence (the aggregate over B) and the aggregate's ratio to batch 1 of the same config.

use crate::bench::{self, BenchRow, Timed};
use flexidepth::cache::KvCache;
use flexidepth::depth::DepthPolicy;
use flexidepth::error::{Error, Result};
use flexidepth::generate::sampler::argmax;
use flexidepth::model::{BatchRow, Logits, Model, RowInvariant};
use std::time::Instant;

/// Largest batch `-b` takes: beyond it a step's activations no longer fit the cache the rows kernel is tiled for,
/// and it is most likely a typo.
pub const MAX_BATCH: usize = 64;

/// Tokens between the starts of consecutive sequences' prompts in the benchmark text (so each has its own).
pub const PROMPT_STRIDE: usize = 13;

/// Batch sizes from a comma list (`1,2,4,8,16`).
///
/// Errors ([`Error::Input`]): an empty or unparsable entry, 0, or more than [`MAX_BATCH`].
pub fn parse_batch_sizes(s: &str) -> Result<Vec<usize>> {
    s.split(',')
        .map(|x| match x.trim().parse::<usize>() {
            Ok(b) if (1..=MAX_BATCH).contains(&b) => Ok(b),
            Ok(b) => Err(Error::Input(format!(
                "batch size {b}: -b takes sizes from 1 to {MAX_BATCH}"
            ))),
            Err(e) => Err(Error::Input(format!(
                "bad batch size '{x}' in -b {s}: {e} (a comma list of whole numbers, e.g. 1,2,4,8,16)"
            ))),
        })
        .collect()
}

/// `batch` prompts of `len` tokens, sequence `s` starting at token `s ·` [`PROMPT_STRIDE`] of `ids`.
///
/// Errors: `ids` too short for them (see [`ids_needed`]).
pub fn batch_prompts(ids: &[u32], batch: usize, len: usize) -> Result<Vec<Vec<u32>>> {
    if ids.len() < ids_needed(batch, len) {
        return Err(Error::Input(format!(
            "{batch} prompts of {len} tokens need {} benchmark tokens, got {}",
            ids_needed(batch, len),
            ids.len()
        )));
    }
    Ok((0..batch)
        .map(|s| ids[s * PROMPT_STRIDE..s * PROMPT_STRIDE + len].to_vec())
        .collect())
}

/// Benchmark tokens [`batch_prompts`] needs.
pub fn ids_needed(batch: usize, len: usize) -> usize {
    batch.saturating_sub(1) * PROMPT_STRIDE + len
}

/// Prefill each prompt alone into its own cache (untimed), then `n` lockstep greedy steps of all of them through
/// [`Model::forward_batch`]. The costs are one entry per decoded token (B·n), from each row's executed plan.
///
/// Errors: no prompts, an empty prompt, or what the forward passes return (a policy the batch cannot run, such as
/// a layer-replacing one; a context overflow).
pub fn time_batched_generation(
    model: &Model,
    policy: &dyn DepthPolicy,
    prompts: &[Vec<u32>],
    n: usize,
) -> Result<Timed> {
    if prompts.is_empty() || prompts.iter().any(Vec::is_empty) {
        return Err(Error::Input(
            "a batched benchmark needs at least one non-empty prompt".into(),
        ));
    }
    let mut caches: Vec<KvCache> = prompts
        .iter()
        .map(|p| model.new_cache(p.len().saturating_add(n).saturating_add(1)))
        .collect();
    let mut next = Vec::with_capacity(prompts.len());
    for (p, cache) in prompts.iter().zip(caches.iter_mut()) {
        let out = model.forward_with(p, cache, Logits::Last, policy)?;
        next.push(argmax(&out.logits.squeeze(0)?.to_vec1::<f32>()?));
    }
    let mut plans = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        let mut rows: Vec<BatchRow> = caches
            .iter_mut()
            .zip(&next)
            .map(|(cache, &token)| BatchRow { token, cache, policy })
            .collect();
        let out = model.forward_batch(&RowInvariant, &mut rows)?;
        let logits: Vec<Vec<f32>> = out.logits.to_vec2()?;
        next = logits.iter().map(|l| argmax(l)).collect();
        plans.push(out.plans);
    }
    let seconds = start.elapsed().as_secs_f64();
    let costs = plans
        .iter()
        .flatten()
        .flat_map(|p| bench::token_costs(model, p))
        .collect();
    Ok(Timed { seconds, costs })
}

/// Fill `batch_speedup` of every batched row: its aggregate rate over the batch-1 row of the same model, dtype,
/// threads, config and test (none without one).
pub fn fill_batch_speedups(rows: &mut [BenchRow]) {
    let ones: Vec<(String, String, usize, String, String, f64)> = rows
        .iter()
        .filter(|r| r.batch == Some(1))
        .map(|r| {
            (
                r.model.clone(),
                r.dtype.clone(),
                r.threads,
                r.config.clone(),
                r.test.clone(),
                r.mean_tps,
            )
        })
        .collect();
    for r in rows.iter_mut().filter(|r| r.batch.is_some()) {
        r.batch_speedup = ones
            .iter()
            .find(|o| o.0 == r.model && o.1 == r.dtype && o.2 == r.threads && o.3 == r.config && o.4 == r.test)
            .map(|o| r.mean_tps / o.5);
    }
}

/// The markdown table of the batched rows (empty when there are none).
pub fn to_markdown(rows: &[BenchRow]) -> String {
    let batched: Vec<&BenchRow> = rows.iter().filter(|r| r.batch.is_some()).collect();
    if batched.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "| model | dtype | threads | config | test | B | layers/token | tokens/s (aggregate) | tokens/s per sequence \
         | × batch 1 |\n|---|---|---:|---|---|---:|---:|---:|---:|---:|\n",
    );
    let opt = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.2}"));
    for r in batched {
        out += &format!(
            "| {} | {} | {} | {} | {} | {} | {:.2} | {:.2} ± {:.2} | {} | {} |\n",
            r.model,
            r.dtype,
            r.threads,
            r.config,
            r.test,
            r.batch.unwrap_or(1),
            r.layers_per_token,
            r.mean_tps,
            r.std_tps,
            opt(r.per_seq_tps),
            opt(r.batch_speedup)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_sizes_are_checked() {
        assert_eq!(parse_batch_sizes("1,2, 4,8,16").unwrap(), vec![1, 2, 4, 8, 16]);
        for bad in ["0", "1,0", "65", "1,x", "", "1,,2", "-1", "2.5"] {
            let e = parse_batch_sizes(bad).unwrap_err().to_string();
            assert!(e.contains("batch size"), "{bad}: {e}");
        }
    }

    #[test]
    fn prompts_are_distinct_windows() {
        let ids: Vec<u32> = (0..100).collect();
        let p = batch_prompts(&ids, 3, 5).unwrap();
        assert_eq!(
            p,
            vec![vec![0, 1, 2, 3, 4], vec![13, 14, 15, 16, 17], vec![26, 27, 28, 29, 30]]
        );
        assert!(batch_prompts(&ids, 8, 10).is_err(), "7 · 13 + 10 > 100");
    }

    /// The costs hold one entry per decoded token of every sequence (whether a row decodes as it does alone is
    /// `flexidepth`'s `tests/batch.rs`); bad prompts are refused.
    #[test]
    fn batched_generation_counts_every_sequences_tokens() {
        let m = crate::bench_dmtd::tests::tiny();
        let ids: Vec<u32> = (0..64).map(|i| (i * 7 % 16) as u32).collect();
        let prompts = batch_prompts(&ids, 3, 4).unwrap();
        let full = flexidepth::model::plan::FullDepth;
        let t = time_batched_generation(&m, &full, &prompts, 5).unwrap();
        assert_eq!(t.costs.len(), 15);
        assert!(
            t.costs.iter().all(|c| c.0 == 4.0),
            "every token runs the 4 layers at full depth"
        );
        assert!(time_batched_generation(&m, &full, &[], 5).is_err());
        assert!(time_batched_generation(&m, &full, &[vec![]], 5).is_err());
    }

    #[test]
    fn ratios_come_from_batch_one() {
        let row = |batch: usize, tps: f64| BenchRow {
            batch: Some(batch),
            per_seq_tps: Some(tps / batch as f64),
            ..crate::bench::tests::row("full", "tg8", tps, 1e6)
        };
        let mut rows = vec![
            row(1, 100.0),
            row(4, 300.0),
            crate::bench::tests::row("full", "tg8", 90.0, 1e6),
        ];
        fill_batch_speedups(&mut rows);
        assert_eq!(rows[0].batch_speedup, Some(1.0));
        assert_eq!(rows[1].batch_speedup, Some(3.0));
        assert_eq!(rows[2].batch_speedup, None, "not a batched row");
        let md = to_markdown(&rows);
        assert_eq!(md.lines().count(), 4, "header, rule, two batched rows: {md}");
        assert!(md.contains("| 4 | 30.00 | 300.00 ± 1.00 | 75.00 | 3.00 |"), "{md}");
        assert_eq!(to_markdown(&rows[2..]), "");
    }
}
