//! The `--dmtd` flags of `generate` (cyclical decoding) and `perplexity` (teacher-forced quality per cycle offset):
//! Direct Multi-Token Decoding's cycle length and layer groups, and trained deltas merged at load
//! (`--dmtd-weights`, [`flexidepth::dmtd::delta::merge_delta_file`]). Defaults come from the weights file, then
//! from the model's `config.json` when it declares a DMTD layout. [`DmtdDecodeArgs`] adds generate's conventions.

use crate::output::out;
use anyhow::{bail, Context, Result};
use flexidepth::dmtd::{DmtdLayout, DmtdOptions, History, Prefill};
use flexidepth::model::Model;
use std::path::PathBuf;

#[derive(clap::Args, Debug, Clone, Default)]
pub struct DmtdArgs {
    /// Direct Multi-Token Decoding in cycles of TAU tokens: one full-depth head, then TAU−1 tokens through the
    /// encoding and decoding layers only (no verification). TAU = 1 is plain decoding. `perplexity` scores it
    /// teacher-forced (spec B3, the cycle starting at each window's first token) per cycle offset.
    #[arg(long = "dmtd", value_name = "TAU")]
    pub tau: Option<usize>,
    /// Merge these trained DMTD deltas (a `dmtd.safetensors` from `flexidepth train`) into the model first.
    #[arg(long = "dmtd-weights", value_name = "FILE", requires = "tau")]
    pub weights: Option<PathBuf>,
    /// Decoding layers D (the last D layers, run for every token). Default: the weights file's, else the model
    /// config's `num_decoding_layers`; required otherwise.
    #[arg(long = "dmtd-decoding-layers", value_name = "D", requires = "tau")]
    pub decoding_layers: Option<usize>,
    /// Encoding layers E (the first E layers, run for every token). Default: the weights file's, else the model
    /// config's `num_encoding_layers`, else 0 (the paper).
    #[arg(long = "dmtd-encoding-layers", value_name = "E", requires = "tau")]
    pub encoding_layers: Option<usize>,
}

/// `generate`'s DMTD decoding conventions (spec B4).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct DmtdDecodeArgs {
    /// Decoding-layer input at the prompt: `plain` (thinking output, the vLLM port) or `readd` (embedding +
    /// thinking output, the HF reference).
    #[arg(long = "dmtd-prefill", default_value = "plain", requires = "tau")]
    pub prefill: Prefill,
    /// Thinking-layer history of late-only tokens: `real` (cyclical refilling, the paper) or `shadow` (no refill:
    /// prompt and heads only; an ablation that does not match training).
    #[arg(long = "dmtd-history", default_value = "real", requires = "tau")]
    pub history: History,
}

impl DmtdArgs {
    /// Merge `--dmtd-weights` into `model` (if given) and resolve the layout over the model's own declared one
    /// (`None` without `--dmtd`); notes a layout or τ other than the one the weights were trained for.
    pub fn apply(&self, model: &mut Model, declared: Option<DmtdLayout>) -> Result<Option<DmtdLayout>> {
        let Some(tau) = self.tau else { return Ok(None) };
        let trained = match &self.weights {
            Some(path) => Some(
                flexidepth::dmtd::delta::merge_delta_file(model, path)
                    .with_context(|| format!("cannot merge the DMTD weights {}", path.display()))?
                    .layout,
            ),
            None => None,
        };
        let layout = resolve(
            tau,
            self.decoding_layers,
            self.encoding_layers,
            trained.or(declared),
            model.layers.len(),
        )?;
        if let Some(t) = trained {
            if (t.num_encoding_layers, t.num_decoding_layers, t.mtp_horizon)
                != (layout.num_encoding_layers, layout.num_decoding_layers, tau)
            {
                eprintln!(
                    "note: the DMTD weights were trained for E{} D{} τ = {}; running E{} D{} τ = {tau}",
                    t.num_encoding_layers,
                    t.num_decoding_layers,
                    t.mtp_horizon,
                    layout.num_encoding_layers,
                    layout.num_decoding_layers
                );
            }
        }
        Ok(Some(layout))
    }
}

/// The layout of cycle length `tau`: D and E from the flags, else from `known` (the weights file's or the model
/// config's layout); E defaults to 0.
pub fn resolve(
    tau: usize,
    decoding: Option<usize>,
    encoding: Option<usize>,
    known: Option<DmtdLayout>,
    num_layers: usize,
) -> Result<DmtdLayout> {
    let d = match (decoding, known) {
        (Some(d), _) => d,
        (None, Some(l)) => l.num_decoding_layers,
        (None, None) => bail!(
            "--dmtd needs --dmtd-decoding-layers D: no --dmtd-weights file, and this model's config declares no \
             DMTD layout (num_decoding_layers)"
        ),
    };
    let e = encoding.or(known.map(|l| l.num_encoding_layers)).unwrap_or(0);
    Ok(DmtdLayout::new(num_layers, e, d, tau)?)
}

impl DmtdDecodeArgs {
    /// The decoding options for `layout`.
    pub fn options(&self, layout: DmtdLayout) -> DmtdOptions {
        DmtdOptions {
            layout,
            prefill: self.prefill,
            history: self.history,
        }
    }
}

/// Score `windows` under `layout` (`model` with the deltas merged, against `base` at full depth), print the
/// per-offset table, and write it as JSON to `json` if given.
pub fn report(
    base: &Model,
    model: &Model,
    windows: &[Vec<u32>],
    layout: &DmtdLayout,
    json: Option<&PathBuf>,
) -> Result<()> {
    let q = flexidepth_experiments::dmtd_quality::dmtd_quality(base, model, windows, layout)?;
    out(flexidepth_experiments::dmtd_quality::dmtd_quality_markdown(&q))?;
    if let Some(path) = json {
        let mut bytes = serde_json::to_vec_pretty(&q)?;
        bytes.push(b'\n');
        flexidepth::error::write_atomic(path, &bytes).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_come_from_the_known_layout() {
        assert!(
            resolve(3, None, None, None, 30).is_err(),
            "D is required without a layout"
        );
        let known = DmtdLayout::new(30, 1, 6, 4).unwrap();
        let l = resolve(3, None, None, Some(known), 30).unwrap();
        assert_eq!((l.num_encoding_layers, l.num_decoding_layers), (1, 6));
        assert_eq!(l.mtp_horizon, 3, "the flag's τ wins");
        let l = resolve(2, Some(4), None, Some(known), 30).unwrap();
        assert_eq!((l.num_encoding_layers, l.num_decoding_layers), (1, 4));
        assert_eq!(resolve(2, Some(4), None, None, 30).unwrap().num_encoding_layers, 0);
        assert!(resolve(0, Some(4), None, None, 30).is_err(), "τ = 0");
        assert!(resolve(2, Some(30), None, None, 30).is_err(), "no thinking layer");
    }
}
