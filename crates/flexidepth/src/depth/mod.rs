//! FlexiDepth: per-token, per-layer skipping in the later layers of a frozen decoder (Luo, Wang, Yan, COLM 2025).
//!
//! A routed layer computes a gate `w = sigmoid(router(input_layernorm(x)))` per token. With `w > threshold` the
//! token runs the layer, its FFN output scaled by `w`; otherwise it skips: its K/V are still written to the cache,
//! it gets no attention output, and a small adapter scaled by `1 − w` replaces the FFN (spec A3). The layer code is
//! in [`crate::model::layer`]; this module holds the parts, the settings and the adapter file.

pub mod adapter;
pub mod file;
pub mod router;

pub use adapter::Adapter;
pub use router::Router;

use crate::error::{Error, Result};

/// How routed layers decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DepthMode {
    /// The trained behaviour: run iff `w > threshold`.
    Dynamic,
    /// Every token runs every layer, unscaled: exactly the base model (gates are still computed for traces).
    Run,
    /// Every token skips every routed layer (adapter scaled by `1 − w`).
    Skip,
    /// Routers are ignored entirely (not even computed): the base model, for full-depth baselines.
    Off,
}

impl std::str::FromStr for DepthMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "dynamic" => Ok(DepthMode::Dynamic),
            "run" => Ok(DepthMode::Run),
            "skip" => Ok(DepthMode::Skip),
            other => Err(Error::Input(format!(
                "unknown depth mode '{other}' (use dynamic, run or skip)"
            ))),
        }
    }
}

/// Inference-time knobs of the routed layers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DepthSettings {
    pub mode: DepthMode,
    /// Run iff `gate > skip_threshold` (strict, as released).
    pub skip_threshold: f32,
    /// Skipped tokens write their K/V (released behaviour). `false` reproduces the paper's "no KV cache" ablation:
    /// later tokens cannot attend to a skipped token at that layer.
    pub skip_kv: bool,
}

impl Default for DepthSettings {
    fn default() -> Self {
        DepthSettings {
            mode: DepthMode::Dynamic,
            skip_threshold: 0.5,
            skip_kv: true,
        }
    }
}

/// Parse `A..B` (end exclusive) or `A..=B` into layer indices.
pub fn parse_layer_range(s: &str) -> Result<Vec<usize>> {
    let bad = || Error::Input(format!("bad layer range '{s}' (use A..B, end exclusive, or A..=B)"));
    let (a, b, inclusive) = if let Some((a, b)) = s.split_once("..=") {
        (a, b, true)
    } else if let Some((a, b)) = s.split_once("..") {
        (a, b, false)
    } else {
        return Err(bad());
    };
    let a: usize = a.trim().parse().map_err(|_| bad())?;
    let b: usize = b.trim().parse().map_err(|_| bad())?;
    let end = if inclusive { b + 1 } else { b };
    if end <= a {
        return Err(bad());
    }
    Ok((a..end).collect())
}

/// The default routed layers: the later half (`n/2 .. n`), as the released model routes 16..31 of 32.
pub fn default_routed_layers(num_layers: usize) -> Vec<usize> {
    (num_layers / 2..num_layers).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_defaults() {
        assert_eq!(parse_layer_range("15..18").unwrap(), vec![15, 16, 17]);
        assert_eq!(parse_layer_range("15..=17").unwrap(), vec![15, 16, 17]);
        assert!(parse_layer_range("5..5").is_err());
        assert!(parse_layer_range("x..3").is_err());
        assert_eq!(default_routed_layers(30), (15..30).collect::<Vec<_>>());
        assert_eq!(default_routed_layers(32), (16..32).collect::<Vec<_>>());
    }
}
