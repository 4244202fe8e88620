//! Depth policies: the ways of choosing, per token and layer, how much of the model runs. Each implements
//! [`DepthPolicy`] (the seam is [`crate::model::plan`]) in a file of its own:
//!
//! - [`FullDepth`]: every layer, routers ignored (the base model);
//! - [`flexidepth::FlexiDepth`]: per-token routing by trained routers (Luo, Wang, Yan, COLM 2025), skipping the
//!   whole layer (released), only its FFN, or only its attention ([`flexidepth::SkipUnit`]);
//! - [`shortgpt::StaticPrune`]: layers removed outright, e.g. ShortGPT's lowest block influence (Men et al. 2024);
//! - [`early_exit::EarlyExit`]: final norm and head after a layer (LayerSkip-style, Elhoushi et al. 2024), and
//!   self-speculative decoding on it ([`crate::generate::speculative`]) (draft with the early exit, verify at full depth);
//! - [`laco::Laco`]: rear layers merged into earlier ones (LaCo, Yang et al. 2024);
//! - MindSkip: FlexiDepth's attention-only unit (`mindskip` in [`spec::PolicySpec`]; He et al. 2024).
//!
//! [`spec::PolicySpec`] names them on command lines and in tables (`full`, `flexi:0.5`, `prune:4`, ...), and
//! [`file`] reads and writes FlexiDepth's router/adapter files ([`check`] vets them before use); [`shipped`] finds
//! the adapter this repository ships for a model.

pub mod check;
pub mod early_exit;
pub mod file;
pub mod flexidepth;
pub mod laco;
pub mod shipped;
pub mod shortgpt;
pub mod spec;

pub use crate::model::plan::{DepthPolicy, FullDepth, GateScaling, Routing, DEFAULT_SKIP_THRESHOLD};
pub use crate::model::{Adapter, Router};
pub use flexidepth::{DepthMode, FlexiDepth, SkipUnit};
pub use spec::PolicySpec;

use crate::error::{Error, Result};

/// Parse `A..B` (end exclusive) or `A..=B` into layer indices of a model with `num_layers` layers (checked before
/// the list is built, so `0..99999999999999` is an error, not an allocation).
pub fn parse_layer_range(s: &str, num_layers: usize) -> Result<Vec<usize>> {
    let (a, end) = layer_range_bounds(s)?;
    if end > num_layers {
        return Err(Error::Input(format!(
            "layer range '{s}': layer {num_layers} does not exist (the model has {num_layers} layers, 0..{num_layers})"
        )));
    }
    Ok((a..end).collect())
}

/// The bounds `(start, end)` (end exclusive) of a layer range `A..B` or `A..=B`, checked for syntax and order.
pub fn layer_range_bounds(s: &str) -> Result<(usize, usize)> {
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
    Ok((a, end))
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
        assert_eq!(parse_layer_range("15..18", 30).unwrap(), vec![15, 16, 17]);
        assert_eq!(parse_layer_range("15..=17", 30).unwrap(), vec![15, 16, 17]);
        assert!(parse_layer_range("5..5", 30).is_err());
        assert!(parse_layer_range("x..3", 30).is_err());
        let e = parse_layer_range("0..99999999999999", 30).unwrap_err().to_string();
        assert!(e.contains("layer 30 does not exist"), "{e}");
        assert!(parse_layer_range("0..=18446744073709551615", 30).is_err());
        assert_eq!(default_routed_layers(30), (15..30).collect::<Vec<_>>());
        assert_eq!(default_routed_layers(32), (16..32).collect::<Vec<_>>());
    }
}
