//! Depth policies: the ways of choosing, per token and layer, how much of the model runs. Each implements
//! [`DepthPolicy`] (the seam is [`crate::model::plan`]) in a file of its own:
//!
//! - [`FullDepth`]: every layer, routers ignored (the base model);
//! - [`flexidepth::FlexiDepth`]: per-token routing by trained routers (Luo, Wang, Yan, COLM 2025), skipping the
//!   whole layer (released), only its FFN, or only its attention ([`flexidepth::SkipUnit`]);
//! - [`shortgpt::StaticPrune`]: layers removed outright, e.g. ShortGPT's lowest block influence (Men et al. 2024);
//! - [`early_exit::EarlyExit`]: final norm and head after a layer (LayerSkip-style, Elhoushi et al. 2024).
//!
//! [`spec::PolicySpec`] names them on command lines and in tables (`full`, `flexi:0.5`, `prune:4`, ...), and
//! [`file`] reads and writes FlexiDepth's router/adapter files.

pub mod early_exit;
pub mod file;
pub mod flexidepth;
pub mod shortgpt;
pub mod spec;

pub use crate::model::plan::{DepthPolicy, FullDepth, GateScaling, Routing, DEFAULT_SKIP_THRESHOLD};
pub use crate::model::{Adapter, Router};
pub use flexidepth::{DepthMode, FlexiDepth, SkipUnit};
pub use spec::PolicySpec;

use crate::error::{Error, Result};

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
    let end = if inclusive {
        b.checked_add(1).ok_or_else(bad)?
    } else {
        b
    };
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
