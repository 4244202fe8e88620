//! Perplexity: mean next-token negative log-likelihood of a text, in one window, like `llama-perplexity`.

use crate::depth::DepthSettings;
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
    /// Mean layers run per scored input token (all of them for a model without routers).
    pub mean_layers: f64,
}

/// NLL of each token after the first, given the ones before it, from a forward pass over `ids`.
pub fn token_nlls(model: &Model, ids: &[u32]) -> Result<Vec<f32>> {
    Ok(token_nlls_with(model, ids, &model.depth_settings)?.0)
}

/// [`token_nlls`] with explicit depth settings; also returns the layers each input token ran.
pub fn token_nlls_with(model: &Model, ids: &[u32], depth: &DepthSettings) -> Result<(Vec<f32>, Vec<usize>)> {
    if ids.len() < 2 {
        return Err(Error::Input(format!(
            "perplexity needs at least 2 tokens, the text has {}",
            ids.len()
        )));
    }
    let mut cache = model.new_cache(ids.len());
    let inputs = &ids[..ids.len() - 1];
    let out = model.forward_with(inputs, &mut cache, Logits::All, depth)?;
    let logp = candle_nn::ops::log_softmax(&out.logits, D::Minus1)?;
    let targets = Tensor::new(&ids[1..], model.device())?.unsqueeze(1)?;
    let picked = logp.gather(&targets, 1)?.squeeze(1)?;
    let unrouted = model.config.num_hidden_layers - out.routing.len();
    let layers = (0..inputs.len())
        .map(|row| unrouted + out.routing.iter().filter(|r| r.run[row]).count())
        .collect();
    Ok((picked.neg()?.to_vec1()?, layers))
}

/// Perplexity of `ids` in one window.
pub fn perplexity(model: &Model, ids: &[u32]) -> Result<Perplexity> {
    perplexity_with(model, ids, &model.depth_settings)
}

/// [`perplexity`] with explicit depth settings.
pub fn perplexity_with(model: &Model, ids: &[u32], depth: &DepthSettings) -> Result<Perplexity> {
    let (nlls, layers) = token_nlls_with(model, ids, depth)?;
    let mean_nll = nlls.iter().map(|&x| x as f64).sum::<f64>() / nlls.len() as f64;
    Ok(Perplexity {
        n_tokens: ids.len(),
        mean_nll,
        ppl: mean_nll.exp(),
        mean_layers: layers.iter().sum::<usize>() as f64 / layers.len() as f64,
    })
}
