//! Perplexity: mean next-token negative log-likelihood of a text, in one window, like `llama-perplexity`; and the
//! quality of a FlexiDepth model against its own full depth ([`depth_quality`], or [`depth_quality_vs`] against a
//! [`FullReference`] computed once) on held-out windows.

use candle_core::{DType, Tensor, D};
use flexidepth::depth::{DepthPolicy, FlexiDepth, FullDepth};
use flexidepth::error::{Error, Result};
use flexidepth::model::{Logits, Model};
use flexidepth::tokenizer::Tokenizer;

/// The result of [`perplexity`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Perplexity {
    /// Tokens in the window; `n_tokens - 1` of them are predicted.
    pub n_tokens: usize,
    pub mean_nll: f64,
    pub ppl: f64,
    /// Mean layers used per scored input token (the executed plan's accounting; all of them at full depth).
    pub mean_layers: f64,
}

/// NLL of each token after the first, given the ones before it, from a forward pass over `ids` (FlexiDepth
/// routing at the model's threshold when it has routers, else full depth).
pub fn token_nlls(model: &Model, ids: &[u32]) -> Result<Vec<f32>> {
    Ok(token_nlls_with(model, ids, &FlexiDepth::default())?.0)
}

/// [`token_nlls`] under a depth policy; also returns the layers each input token used.
pub fn token_nlls_with(model: &Model, ids: &[u32], policy: &dyn DepthPolicy) -> Result<(Vec<f32>, Vec<f64>)> {
    if ids.len() < 2 {
        return Err(Error::Input(format!(
            "perplexity needs at least 2 tokens, the text has {}",
            ids.len()
        )));
    }
    let mut cache = model.new_cache(ids.len());
    let inputs = &ids[..ids.len() - 1];
    let out = model.forward_with(inputs, &mut cache, Logits::All, policy)?;
    let logp = candle_nn::ops::log_softmax(&out.logits, D::Minus1)?;
    let targets = Tensor::new(&ids[1..], model.device())?.unsqueeze(1)?;
    let picked = logp.gather(&targets, 1)?.squeeze(1)?;
    let bytes = model.layer_bytes();
    let layers = (0..inputs.len()).map(|row| out.plan.layers_used(row, &bytes)).collect();
    Ok((picked.neg()?.to_vec1()?, layers))
}

/// Perplexity of `ids` in one window (routing as [`token_nlls`]).
pub fn perplexity(model: &Model, ids: &[u32]) -> Result<Perplexity> {
    perplexity_with(model, ids, &FlexiDepth::default())
}

/// [`perplexity`] under a depth policy.
pub fn perplexity_with(model: &Model, ids: &[u32], policy: &dyn DepthPolicy) -> Result<Perplexity> {
    let (nlls, layers) = token_nlls_with(model, ids, policy)?;
    let mean_nll = nlls.iter().map(|&x| x as f64).sum::<f64>() / nlls.len() as f64;
    Ok(Perplexity {
        n_tokens: ids.len(),
        mean_nll,
        ppl: mean_nll.exp(),
        mean_layers: layers.iter().sum::<f64>() / layers.len() as f64,
    })
}

/// Default window length and token budget of [`heldout_windows`] (8 windows of 512).
pub const DEFAULT_WINDOW: usize = 512;
pub const DEFAULT_MAX_TOKENS: usize = 4096;

/// Cut `ids` into consecutive windows of `window` tokens, using at most `max_tokens` of them; a last window
/// shorter than 2 tokens predicts nothing and is dropped. Windows are scored independently (each from an empty
/// cache), so each one's first token is context only.
pub fn windows(ids: &[u32], window: usize, max_tokens: usize) -> Result<Vec<Vec<u32>>> {
    if window < 2 || max_tokens < 2 {
        return Err(Error::Input(format!(
            "a window needs at least 2 tokens (window {window}, max tokens {max_tokens})"
        )));
    }
    let used = &ids[..ids.len().min(max_tokens)];
    Ok(used
        .chunks(window)
        .filter(|w| w.len() >= 2)
        .map(<[u32]>::to_vec)
        .collect())
}

/// Evaluation windows of held-out text ([`crate::corpus::heldout_text`]: Persuasion from chapter 13 on, never in
/// training data), tokenized without special tokens, cut by [`windows`].
pub fn heldout_windows(tokenizer: &Tokenizer, window: usize, max_tokens: usize) -> Result<Vec<Vec<u32>>> {
    let ids = tokenizer.encode(&crate::corpus::heldout_text()?, false)?;
    windows(&ids, window, max_tokens)
}

/// [`perplexity_with`] over several windows, token-weighted (`n_tokens` counts every window's tokens).
pub fn perplexity_windows(model: &Model, windows: &[Vec<u32>], policy: &dyn DepthPolicy) -> Result<Perplexity> {
    let (mut nll, mut predicted, mut layers, mut n_tokens) = (0.0f64, 0usize, 0.0f64, 0usize);
    for w in windows {
        let (nlls, used) = token_nlls_with(model, w, policy)?;
        nll += nlls.iter().map(|&x| x as f64).sum::<f64>();
        predicted += nlls.len();
        layers += used.iter().sum::<f64>();
        n_tokens += w.len();
    }
    if predicted == 0 {
        return Err(Error::Input("perplexity needs at least one window of 2 tokens".into()));
    }
    let mean_nll = nll / predicted as f64;
    Ok(Perplexity {
        n_tokens,
        mean_nll,
        ppl: mean_nll.exp(),
        mean_layers: layers / predicted as f64,
    })
}

/// Which positions of a text a perplexity scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scoring {
    /// Consecutive windows of `window` tokens, each from an empty cache; every token of a window but its first
    /// is scored (so early tokens of a window have little context).
    AllPositions,
    /// llama.cpp's `llama-perplexity`: consecutive windows of `window` tokens, each scoring only its second half
    /// (targets at window positions `window/2 + 1 ..`), so every scored token has at least half a window of
    /// context.
    SecondHalf,
    /// transformers' strided perplexity ("Perplexity of fixed-length models"): windows of up to `window` tokens
    /// starting every `stride` tokens; each scores only the targets the previous window did not (`end −
    /// prev_end` of them), with up to `window − stride` tokens of context before them.
    Strided { stride: usize },
}

impl Scoring {
    /// A one-line description for reports, e.g. "second half of each 512-token window (llama-perplexity)".
    pub fn describe(&self, window: usize) -> String {
        match self {
            Scoring::AllPositions => format!("all positions of each {window}-token window"),
            Scoring::SecondHalf => format!("second half of each {window}-token window (llama-perplexity)"),
            Scoring::Strided { stride } => {
                format!("{window}-token windows every {stride} tokens, new targets only (transformers' strided)")
            }
        }
    }
}

/// The result of [`perplexity_scored`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoredPerplexity {
    /// Forward passes (windows) run.
    pub windows: usize,
    /// Tokens of the text the scored windows cover.
    pub n_tokens: usize,
    /// Tokens whose NLL is in the mean.
    pub n_scored: usize,
    pub mean_nll: f64,
    pub ppl: f64,
    /// Mean layers run per scored position.
    pub mean_layers: f64,
}

/// Perplexity of the first `max_tokens` of `ids` with windows of `window` tokens, scored as `scoring` says.
///
/// Errors: `window < 2`, a stride of 0 or above the window, or a text too short to score any token.
pub fn perplexity_scored(
    model: &Model,
    ids: &[u32],
    window: usize,
    max_tokens: usize,
    scoring: Scoring,
    policy: &dyn DepthPolicy,
) -> Result<ScoredPerplexity> {
    if window < 2 {
        return Err(Error::Input(format!("a window needs at least 2 tokens, not {window}")));
    }
    let ids = &ids[..ids.len().min(max_tokens)];
    // (window start, window end, first scored target index within the window)
    let mut spans: Vec<(usize, usize, usize)> = Vec::new();
    match scoring {
        Scoring::AllPositions | Scoring::SecondHalf => {
            for start in (0..ids.len()).step_by(window) {
                let end = (start + window).min(ids.len());
                let first = if scoring == Scoring::SecondHalf {
                    window / 2 + 1
                } else {
                    1
                };
                if end - start > first {
                    spans.push((start, end, first));
                }
            }
        }
        Scoring::Strided { stride } => {
            if stride == 0 || stride > window {
                return Err(Error::InvalidParameter {
                    name: "stride",
                    value: stride.to_string(),
                    domain: "in 1..=window",
                });
            }
            let mut prev_end = 0;
            let mut start = 0;
            while start < ids.len() {
                let end = (start + window).min(ids.len());
                let new_targets = end - prev_end;
                let first = (end - start - new_targets).max(1);
                if end - start > first {
                    spans.push((start, end, first));
                }
                prev_end = end;
                if end == ids.len() {
                    break;
                }
                start += stride;
            }
        }
    }
    let (mut nll, mut scored, mut layers) = (0.0f64, 0usize, 0.0f64);
    for &(start, end, first) in &spans {
        let (nlls, used) = token_nlls_with(model, &ids[start..end], policy)?;
        // nlls[i] is the NLL of target i + 1.
        nll += nlls[first - 1..].iter().map(|&x| x as f64).sum::<f64>();
        layers += used[first - 1..].iter().sum::<f64>();
        scored += nlls.len() + 1 - first;
    }
    if scored == 0 {
        return Err(Error::Input(format!(
            "no token to score: {} over the {} tokens used (a longer window or more tokens would score some)",
            scoring.describe(window),
            ids.len()
        )));
    }
    let mean_nll = nll / scored as f64;
    Ok(ScoredPerplexity {
        windows: spans.len(),
        // The tokens the windows covered (a last window too short to score anything is not run).
        n_tokens: spans.iter().map(|s| s.1).max().unwrap_or(0),
        n_scored: scored,
        mean_nll,
        ppl: mean_nll.exp(),
        mean_layers: layers / scored as f64,
    })
}

/// A depth policy against the same model at full depth, on the same windows. All means are over predicted
/// positions (token-weighted across windows).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DepthQuality {
    pub windows: usize,
    /// Positions scored: every token of a window but its first.
    pub n_predicted: usize,
    pub full_mean_nll: f64,
    pub full_ppl: f64,
    pub flexi_mean_nll: f64,
    pub flexi_ppl: f64,
    /// `flexi_ppl / full_ppl`.
    pub ppl_ratio: f64,
    /// Mean KL(full ‖ flexi) of the next-token distributions, in nats.
    pub mean_kl: f64,
    /// Fraction of positions where both settings put the same token first.
    pub top1_agreement: f64,
    /// Mean layers used per position under the compared policy, of `num_layers`.
    pub mean_layers: f64,
    pub num_layers: usize,
    /// Mean weight bytes of the layers read per position under the compared policy, and at full depth
    /// ([`flexidepth::model::plan::ExecutedPlan::weight_bytes`]; the head and embedding are not counted). Zero in
    /// reports written before they were recorded.
    #[serde(default)]
    pub mean_weight_bytes: f64,
    #[serde(default)]
    pub full_weight_bytes: f64,
    /// The compared policy's label (`flexi:0.5`, `prune:4`, ...); empty in reports written before policies
    /// (see [`DepthQuality::policy_label`]).
    #[serde(default)]
    pub policy: String,
    /// Reports written before policies had the FlexiDepth settings instead (read, never written).
    #[serde(default, skip_serializing)]
    pub depth_mode: Option<String>,
    #[serde(default, skip_serializing)]
    pub skip_threshold: Option<f32>,
}

impl DepthQuality {
    /// The compared policy, also for reports written before policies (`depth_mode` dynamic at a threshold is
    /// `flexi:T`).
    pub fn policy_label(&self) -> String {
        if !self.policy.is_empty() {
            return self.policy.clone();
        }
        match (self.depth_mode.as_deref(), self.skip_threshold) {
            (Some("dynamic"), Some(t)) => format!("flexi:{t}"),
            (Some("run"), _) => "flexi:run".into(),
            (Some("skip"), _) => "skip".into(),
            (Some(m), _) => m.to_string(),
            (None, _) => "unknown".into(),
        }
    }
}

/// Full depth's next-token log-probabilities on a set of windows, computed once and compared against any
/// number of policies ([`depth_quality_vs`]): a threshold search compares dozens of policies with one reference.
/// Holds `[len − 1, vocab]` f32 per window (Qwen2.5's 152k vocabulary: 0.6 MB per position).
pub struct FullReference {
    windows: Vec<Vec<u32>>,
    logp: Vec<Tensor>,
    /// Sum over predicted positions of the layer weight bytes full depth reads.
    read_full: f64,
}

impl FullReference {
    /// Run full depth (exactly the base model) over each window from an empty cache.
    ///
    /// # Errors
    /// [`Error::Input`] when there is no window or a window has fewer than 2 tokens.
    pub fn new(model: &Model, windows: &[Vec<u32>]) -> Result<Self> {
        if windows.is_empty() {
            return Err(Error::Input("depth quality needs at least one window".into()));
        }
        let bytes = model.layer_bytes();
        let (mut logp, mut read_full) = (Vec::with_capacity(windows.len()), 0.0f64);
        for ids in windows {
            if ids.len() < 2 {
                return Err(Error::Input(format!(
                    "every window needs at least 2 tokens, one has {}",
                    ids.len()
                )));
            }
            let (lp, plan) = window_logp(model, &ids[..ids.len() - 1], &FullDepth)?;
            read_full += (0..ids.len() - 1)
                .map(|row| plan.weight_bytes(row, &bytes) as f64)
                .sum::<f64>();
            logp.push(lp);
        }
        Ok(FullReference {
            windows: windows.to_vec(),
            logp,
            read_full,
        })
    }

    /// The windows, as given.
    pub fn windows(&self) -> &[Vec<u32>] {
        &self.windows
    }
}

/// Log-softmax (f32) of the logits of `inputs` under `policy` from an empty cache, and the executed plan.
fn window_logp(
    model: &Model,
    inputs: &[u32],
    policy: &dyn DepthPolicy,
) -> Result<(Tensor, flexidepth::model::plan::ExecutedPlan)> {
    let mut cache = model.new_cache(inputs.len());
    let out = model.forward_with(inputs, &mut cache, Logits::All, policy)?;
    let logp = candle_nn::ops::log_softmax(&out.logits.to_dtype(DType::F32)?, D::Minus1)?;
    Ok((logp, out.plan))
}

/// Compare `policy` with full depth (exactly the base model) on `windows`: both perplexities, their ratio,
/// KL(full ‖ policy) and top-1 agreement per position, and the layers used. Each window is one forward pass per
/// policy from an empty cache; log-softmax and KL are computed in f32.
pub fn depth_quality(model: &Model, windows: &[Vec<u32>], policy: &dyn DepthPolicy) -> Result<DepthQuality> {
    depth_quality_vs(model, &FullReference::new(model, windows)?, policy)
}

/// [`depth_quality`] against a full-depth reference computed once.
pub fn depth_quality_vs(model: &Model, reference: &FullReference, policy: &dyn DepthPolicy) -> Result<DepthQuality> {
    let bytes = model.layer_bytes();
    let (mut nll_full, mut nll_flexi, mut kl, mut agree) = (0.0f64, 0.0f64, 0.0f64, 0usize);
    let (mut predicted, mut layers, mut read) = (0usize, 0.0f64, 0.0f64);
    for (ids, lp) in reference.windows.iter().zip(&reference.logp) {
        let inputs = &ids[..ids.len() - 1];
        let targets = Tensor::new(&ids[1..], model.device())?.unsqueeze(1)?;
        let (lq, plan) = window_logp(model, inputs, policy)?;
        let sum = |t: Tensor| -> Result<f64> { Ok(t.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?) };
        nll_full -= sum(lp.gather(&targets, 1)?)?;
        nll_flexi -= sum(lq.gather(&targets, 1)?)?;
        kl += sum((lp.exp()? * (lp - &lq)?)?.sum(D::Minus1)?)?;
        let same = lp.argmax(D::Minus1)?.eq(&lq.argmax(D::Minus1)?)?;
        agree += same.to_dtype(DType::U32)?.sum_all()?.to_scalar::<u32>()? as usize;
        layers += (0..inputs.len()).map(|row| plan.layers_used(row, &bytes)).sum::<f64>();
        read += (0..inputs.len())
            .map(|row| plan.weight_bytes(row, &bytes) as f64)
            .sum::<f64>();
        predicted += inputs.len();
    }
    let n = predicted as f64;
    let (full_mean_nll, flexi_mean_nll) = (nll_full / n, nll_flexi / n);
    Ok(DepthQuality {
        windows: reference.windows.len(),
        n_predicted: predicted,
        full_mean_nll,
        full_ppl: full_mean_nll.exp(),
        flexi_mean_nll,
        flexi_ppl: flexi_mean_nll.exp(),
        ppl_ratio: (flexi_mean_nll - full_mean_nll).exp(),
        mean_kl: kl / n,
        top1_agreement: agree as f64 / n,
        mean_layers: layers / n,
        num_layers: model.config.num_hidden_layers,
        mean_weight_bytes: read / n,
        full_weight_bytes: reference.read_full / n,
        policy: policy.label(),
        depth_mode: None,
        skip_threshold: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_cut_and_cap() {
        let ids: Vec<u32> = (0..11).collect();
        assert_eq!(
            windows(&ids, 4, 100).unwrap(),
            vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7], vec![8, 9, 10]]
        );
        assert_eq!(windows(&ids, 4, 9).unwrap(), vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7]]);
        assert_eq!(windows(&ids, 4, 6).unwrap(), vec![vec![0, 1, 2, 3], vec![4, 5]]);
        assert!(windows(&ids, 1, 100).is_err());
        assert!(windows(&[], 4, 100).unwrap().is_empty());
    }
}
