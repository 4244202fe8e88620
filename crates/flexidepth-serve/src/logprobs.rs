//! Log-probabilities of tokens under the model's distribution (a log-softmax of the raw logits, before sampling
//! filters, as OpenAI reports them), with the most likely alternatives.

use crate::request::{TokenLogprob, TopLogprob};
use flexidepth::tokenizer::Tokenizer;

/// The largest `top_logprobs` / `logprobs` a request may ask for.
pub const MAX_TOP_LOGPROBS: usize = 20;

/// `log Σ exp(logits)`, in f64 (NaN logits count as impossible).
fn log_sum_exp(logits: &[f32]) -> f64 {
    let max = logits
        .iter()
        .copied()
        .filter(|l| !l.is_nan())
        .fold(f32::NEG_INFINITY, f32::max) as f64;
    if !max.is_finite() {
        return max;
    }
    let sum: f64 = logits
        .iter()
        .filter(|l| !l.is_nan())
        .map(|&l| (l as f64 - max).exp())
        .sum();
    max + sum.ln()
}

/// The `k` largest logits' ids, largest first (ties: lower id first).
fn top_ids(logits: &[f32], k: usize) -> Vec<u32> {
    let mut top: Vec<u32> = Vec::with_capacity(k + 1);
    let better =
        |a: u32, b: u32| logits[a as usize] > logits[b as usize] || (logits[a as usize] == logits[b as usize] && a < b);
    for id in 0..logits.len() as u32 {
        if logits[id as usize].is_nan() || (top.len() == k && !top.last().is_some_and(|&w| better(id, w))) {
            continue;
        }
        let at = top.iter().position(|&t| better(id, t)).unwrap_or(top.len());
        top.insert(at, id);
        top.truncate(k);
    }
    top
}

/// `id`'s log-probability under `logits` (one row, `[vocab]`), with the `k` most likely tokens.
pub fn token_logprob(tok: &Tokenizer, logits: &[f32], id: u32, k: usize) -> flexidepth::Result<TokenLogprob> {
    let lse = log_sum_exp(logits);
    let entry = |id: u32| -> flexidepth::Result<TopLogprob> {
        let logit = logits.get(id as usize).copied().unwrap_or(f32::NEG_INFINITY);
        Ok(TopLogprob {
            id,
            token: tok.decode(&[id], false)?,
            logprob: (logit as f64 - lse) as f32,
        })
    };
    Ok(TokenLogprob {
        token: entry(id)?,
        top: top_ids(logits, k)
            .into_iter()
            .map(entry)
            .collect::<flexidepth::Result<_>>()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_and_top_k() {
        let logits = [1.0f32, 3.0, 2.0, 3.0, f32::NAN];
        let lse = log_sum_exp(&logits);
        let want = (1f64.exp() + 2.0 * 3f64.exp() + 2f64.exp()).ln();
        assert!((lse - want).abs() < 1e-12);
        assert_eq!(top_ids(&logits, 3), vec![1, 3, 2], "ties by id; NaN never listed");
        assert_eq!(top_ids(&logits, 0), Vec::<u32>::new());
        assert_eq!(top_ids(&logits, 9), vec![1, 3, 2, 0]);
    }
}
