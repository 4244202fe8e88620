//! The `--dmtd` flags of `perplexity`: teacher-forced quality of cyclical (DMTD) decoding per cycle offset, with
//! trained deltas merged at load (`--dmtd-weights`, [`flexidepth::dmtd::delta::merge_delta_file`]).

use crate::output::out;
use anyhow::{bail, Context, Result};
use flexidepth::dmtd::DmtdLayout;
use flexidepth::model::Model;
use std::path::PathBuf;

#[derive(clap::Args, Debug, Clone)]
pub struct DmtdArgs {
    /// Score cyclical decoding with cycle length TAU (spec B3, teacher-forced; the cycle starts at each window's
    /// first token) against full depth: perplexity, KL and top-1 agreement per cycle offset.
    #[arg(long, value_name = "TAU")]
    pub dmtd: Option<usize>,
    /// Merge these trained DMTD deltas (a `dmtd.safetensors` from `flexidepth train`) into the model first.
    #[arg(long, value_name = "FILE")]
    pub dmtd_weights: Option<PathBuf>,
    /// Decoding layers D (the last D) [default: the weights file's, else required].
    #[arg(long, value_name = "D")]
    pub dmtd_decoding_layers: Option<usize>,
    /// Encoding layers E [default: the weights file's, else 0].
    #[arg(long, value_name = "E")]
    pub dmtd_encoding_layers: Option<usize>,
}

impl DmtdArgs {
    /// Whether any DMTD flag was given.
    pub fn any(&self) -> bool {
        self.dmtd.is_some()
            || self.dmtd_weights.is_some()
            || self.dmtd_decoding_layers.is_some()
            || self.dmtd_encoding_layers.is_some()
    }

    /// Merge `--dmtd-weights` into `model` (if given) and resolve the layout; notes a layout or τ other than the
    /// one the weights were trained for.
    pub fn apply(&self, model: &mut Model) -> Result<DmtdLayout> {
        let tau = self
            .dmtd
            .context("--dmtd-weights and --dmtd-*-layers need --dmtd TAU")?;
        let trained = match &self.dmtd_weights {
            Some(path) => Some(
                flexidepth::dmtd::delta::merge_delta_file(model, path)
                    .with_context(|| format!("cannot merge the DMTD weights {}", path.display()))?
                    .layout,
            ),
            None => None,
        };
        let d = match (self.dmtd_decoding_layers, trained) {
            (Some(d), _) => d,
            (None, Some(l)) => l.num_decoding_layers,
            (None, None) => bail!("give --dmtd-decoding-layers D (or --dmtd-weights FILE, whose D is used)"),
        };
        let e = self
            .dmtd_encoding_layers
            .or(trained.map(|l| l.num_encoding_layers))
            .unwrap_or(0);
        let layout = DmtdLayout::new(model.layers.len(), e, d, tau)?;
        if let Some(t) = trained {
            if (t.num_encoding_layers, t.num_decoding_layers, t.mtp_horizon) != (e, d, tau) {
                eprintln!(
                    "note: the DMTD weights were trained for E{} D{} τ = {}; scoring E{e} D{d} τ = {tau}",
                    t.num_encoding_layers, t.num_decoding_layers, t.mtp_horizon
                );
            }
        }
        Ok(layout)
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
