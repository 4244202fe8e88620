//! Perplexity: mean next-token negative log-likelihood of a text, in one window, like `llama-perplexity`.

use crate::error::{Error, Result};
use crate::model::{Logits, Model};
use candle_core::{Tensor, D};

/// The result of [`perplexity`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Perplexity {
    /// Tokens in the window; `n_tokens - 1` of them are predicted.
    pub n_tokens: usize,
    pub mean_nll: f64,
    pub ppl: f64,
}

/// NLL of each token after the first, given the ones before it, from a forward pass over `ids`.
pub fn token_nlls(model: &Model, ids: &[u32]) -> Result<Vec<f32>> {
    if ids.len() < 2 {
        return Err(Error::Input(format!(
            "perplexity needs at least 2 tokens, the text has {}",
            ids.len()
        )));
    }
    let mut cache = model.new_cache(ids.len());
    let logits = model.forward(&ids[..ids.len() - 1], &mut cache, Logits::All)?;
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let targets = Tensor::new(&ids[1..], model.device())?.unsqueeze(1)?;
    let picked = logp.gather(&targets, 1)?.squeeze(1)?;
    Ok(picked.neg()?.to_vec1()?)
}

/// Perplexity of `ids` in one window.
pub fn perplexity(model: &Model, ids: &[u32]) -> Result<Perplexity> {
    let nlls = token_nlls(model, ids)?;
    let mean_nll = nlls.iter().map(|&x| x as f64).sum::<f64>() / nlls.len() as f64;
    Ok(Perplexity {
        n_tokens: ids.len(),
        mean_nll,
        ppl: mean_nll.exp(),
    })
}
