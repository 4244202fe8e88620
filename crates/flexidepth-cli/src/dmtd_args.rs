//! The `--dmtd` flags of `generate`: Direct Multi-Token Decoding's cycle length, layer groups and conventions,
//! with defaults from the model's `config.json` when it declares a DMTD layout.

use anyhow::{bail, Result};
use flexidepth::dmtd::{DmtdLayout, DmtdOptions, History, Prefill};

#[derive(clap::Args, Debug, Clone, Default)]
pub struct DmtdArgs {
    /// Decode with Direct Multi-Token Decoding in cycles of TAU tokens: one full-depth head, then TAU−1 tokens
    /// through the encoding and decoding layers only (no verification). TAU = 1 is plain decoding.
    #[arg(long = "dmtd", value_name = "TAU")]
    pub tau: Option<usize>,
    /// Decoding layers D (the last D layers, run for every token). Default: the model config's
    /// `num_decoding_layers`; required for a model without DMTD keys.
    #[arg(long = "dmtd-decoding-layers", value_name = "D", requires = "tau")]
    pub decoding_layers: Option<usize>,
    /// Encoding layers E (the first E layers, run for every token). Default: the model config's
    /// `num_encoding_layers`, else 0 (the paper).
    #[arg(long = "dmtd-encoding-layers", value_name = "E", requires = "tau")]
    pub encoding_layers: Option<usize>,
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
    /// The DMTD options the flags ask for (`None` without `--dmtd`), over the model's own layout `declared`.
    pub fn options(&self, num_layers: usize, declared: Option<DmtdLayout>) -> Result<Option<DmtdOptions>> {
        let Some(tau) = self.tau else { return Ok(None) };
        let d = match (self.decoding_layers, declared) {
            (Some(d), _) => d,
            (None, Some(l)) => l.num_decoding_layers,
            (None, None) => bail!(
                "--dmtd needs --dmtd-decoding-layers D: this model's config declares no DMTD layout \
                 (num_decoding_layers)"
            ),
        };
        let e = self
            .encoding_layers
            .or(declared.map(|l| l.num_encoding_layers))
            .unwrap_or(0);
        let layout = DmtdLayout::new(num_layers, e, d, tau)?;
        Ok(Some(DmtdOptions {
            layout,
            prefill: self.prefill,
            history: self.history,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_come_from_the_declared_layout() {
        let args = DmtdArgs {
            tau: Some(3),
            ..Default::default()
        };
        assert!(args.options(30, None).is_err(), "D is required without DMTD keys");
        let declared = DmtdLayout::new(30, 1, 6, 4).unwrap();
        let o = args.options(30, Some(declared)).unwrap().unwrap();
        assert_eq!((o.layout.num_encoding_layers, o.layout.num_decoding_layers), (1, 6));
        assert_eq!(o.layout.mtp_horizon, 3, "the flag's τ wins");
        let args = DmtdArgs {
            tau: Some(0),
            decoding_layers: Some(4),
            ..Default::default()
        };
        assert!(args.options(30, None).is_err(), "τ = 0");
        assert!(DmtdArgs::default().options(30, None).unwrap().is_none());
    }
}
