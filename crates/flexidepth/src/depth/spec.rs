//! Depth policies by name, as command lines and result tables write them:
//!
//! | spec | policy |
//! |---|---|
//! | `full` | [`FullDepth`]: the base model |
//! | `flexi`, `flexi:T` | [`FlexiDepth`] at the depth file's threshold (or `T`) and skip unit |
//! | `flexi-layer[:T]`, `flexi-ffn[:T]`, `flexi-attn[:T]` | FlexiDepth skipping the whole layer, only the FFN, or only the attention |
//! | `skip` | every routed layer skipped |
//! | `prune:K` | [`StaticPrune`]: ShortGPT's `K` layers of lowest block influence removed |
//! | `exit:L` | [`EarlyExit`] after `L` layers |
//! | `laco:K` | [`Laco`]: `K` layers collapsed into earlier ones (LaCo's Algorithm 1 on the calibration tokens) |
//! | `mindskip`, `mindskip:T` | FlexiDepth with the attention unit, on a MindSkip depth file (attention-only routers) |

use super::early_exit::EarlyExit;
use super::flexidepth::{DepthMode, FlexiDepth, SkipUnit};
use super::laco::{Laco, LacoSettings};
use super::shortgpt::StaticPrune;
use crate::error::{Error, Result};
use crate::model::plan::{DepthPolicy, FullDepth};
use crate::model::Model;

/// A depth policy named by its parameters (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PolicySpec {
    Full,
    /// `unit` and `skip_threshold` default to the depth file's.
    Flexi {
        unit: Option<SkipUnit>,
        skip_threshold: Option<f32>,
    },
    Skip,
    Prune(usize),
    Exit(usize),
    Laco(usize),
    /// FlexiDepth's attention unit on a depth file trained for it; the threshold defaults to the file's.
    MindSkip(Option<f32>),
}

impl std::str::FromStr for PolicySpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::Input(format!(
                "unknown depth policy '{s}' (full, flexi[:THRESHOLD], flexi-layer[:THRESHOLD], \
                 flexi-ffn[:THRESHOLD], flexi-attn[:THRESHOLD], skip, prune:K, exit:L, laco:K, mindskip[:THRESHOLD])"
            ))
        };
        let (name, arg) = match s.split_once(':') {
            Some((n, a)) => (n, Some(a)),
            None => (s, None),
        };
        let threshold = |a: Option<&str>| -> Result<Option<f32>> {
            a.map(|t| match t.parse::<f32>() {
                Ok(t) if t.is_finite() && (0.0..=1.0).contains(&t) => Ok(t),
                _ => Err(Error::Input(format!(
                    "depth policy '{s}': the threshold must be a number in [0, 1]"
                ))),
            })
            .transpose()
        };
        let count = |a: Option<&str>| -> Result<usize> { a.and_then(|k| k.parse().ok()).ok_or_else(bad) };
        let flexi = |unit: Option<SkipUnit>| -> Result<PolicySpec> {
            Ok(PolicySpec::Flexi {
                unit,
                skip_threshold: threshold(arg)?,
            })
        };
        match (name, arg) {
            ("full", None) => Ok(PolicySpec::Full),
            ("skip", None) => Ok(PolicySpec::Skip),
            ("flexi", _) => flexi(None),
            ("flexi-layer", _) => flexi(Some(SkipUnit::Layer)),
            ("flexi-ffn", _) => flexi(Some(SkipUnit::Ffn)),
            ("flexi-attn", _) => flexi(Some(SkipUnit::Attention)),
            ("prune", _) => Ok(PolicySpec::Prune(count(arg)?)),
            ("exit", _) => Ok(PolicySpec::Exit(count(arg)?)),
            ("laco", _) => Ok(PolicySpec::Laco(count(arg)?)),
            ("mindskip", _) => Ok(PolicySpec::MindSkip(threshold(arg)?)),
            _ => Err(bad()),
        }
    }
}

impl std::fmt::Display for PolicySpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PolicySpec::Full => write!(f, "full"),
            PolicySpec::Skip => write!(f, "skip"),
            PolicySpec::Flexi { unit, skip_threshold } => {
                let name = match unit {
                    None => "flexi",
                    Some(SkipUnit::Layer) => "flexi-layer",
                    Some(SkipUnit::Ffn) => "flexi-ffn",
                    Some(SkipUnit::Attention) => "flexi-attn",
                };
                match skip_threshold {
                    Some(t) => write!(f, "{name}:{t}"),
                    None => write!(f, "{name}"),
                }
            }
            PolicySpec::Prune(k) => write!(f, "prune:{k}"),
            PolicySpec::Exit(l) => write!(f, "exit:{l}"),
            PolicySpec::Laco(k) => write!(f, "laco:{k}"),
            PolicySpec::MindSkip(Some(t)) => write!(f, "mindskip:{t}"),
            PolicySpec::MindSkip(None) => write!(f, "mindskip"),
        }
    }
}

impl PolicySpec {
    /// Whether the policy needs routers on the model.
    pub fn needs_routers(&self) -> bool {
        matches!(
            self,
            PolicySpec::Flexi { .. } | PolicySpec::Skip | PolicySpec::MindSkip(_)
        )
    }

    /// The policy for `model`; ShortGPT's choice of layers and LaCo's merges are measured on the calibration tokens
    /// `calibration`; a FlexiDepth policy without a threshold gets the one its routers were trained with.
    ///
    /// Errors: a routing policy on a model without routers, `mindskip` on routers not trained for the attention
    /// unit, an exit, pruning or collapse beyond the model's layers.
    pub fn build(&self, model: &Model, calibration: &[u32]) -> Result<Box<dyn DepthPolicy>> {
        self.build_with_progress(model, calibration, &mut |_| {})
    }

    /// [`PolicySpec::build`], telling `progress` what a slow build does (LaCo's merges, one line each).
    pub fn build_with_progress(
        &self,
        model: &Model,
        calibration: &[u32],
        progress: &mut dyn FnMut(&str),
    ) -> Result<Box<dyn DepthPolicy>> {
        if self.needs_routers() && model.routed_layers().is_empty() {
            return Err(Error::Input(format!(
                "depth policy '{self}' needs a model with routers (attach a depth file)"
            )));
        }
        let n = model.layers.len();
        Ok(match *self {
            PolicySpec::Full => Box::new(FullDepth),
            PolicySpec::Skip => Box::new(FlexiDepth::with_mode(DepthMode::Skip)),
            // Threshold and unit are resolved here (the depth file's unless given), so that labels say which ran.
            PolicySpec::Flexi { unit, skip_threshold } => Box::new(FlexiDepth {
                unit: unit.or(model.skip_unit()),
                skip_threshold: skip_threshold.or(model.skip_threshold()),
                gate_scaling: model.gate_scaling(),
                ..FlexiDepth::default()
            }),
            PolicySpec::Prune(k) => Box::new(StaticPrune::shortgpt(model, calibration, k)?),
            PolicySpec::Exit(l) if l == 0 || l > n => {
                return Err(Error::Input(format!(
                    "cannot exit after {l} layers: the model has {n} (use 1..={n})"
                )))
            }
            PolicySpec::Exit(l) => Box::new(EarlyExit { exit_after: l }),
            PolicySpec::Laco(k) => Box::new(Laco::search_with_progress(
                model,
                calibration,
                k,
                &LacoSettings::for_layers(n),
                progress,
            )?),
            PolicySpec::MindSkip(_) if model.skip_unit() != Some(SkipUnit::Attention) => {
                return Err(Error::Input(format!(
                    "depth policy '{self}' needs routers trained for the attention unit (a MindSkip depth file); \
                     these were trained for the {} unit",
                    model.skip_unit().unwrap_or_default()
                )))
            }
            PolicySpec::MindSkip(t) => Box::new(FlexiDepth {
                unit: Some(SkipUnit::Attention),
                skip_threshold: t.or(model.skip_threshold()),
                gate_scaling: model.gate_scaling(),
                ..FlexiDepth::default()
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_print_back() {
        for s in [
            "full",
            "skip",
            "flexi",
            "flexi:0.55",
            "flexi-ffn",
            "flexi-attn:0.3",
            "prune:4",
            "exit:12",
            "laco:2",
            "mindskip",
            "mindskip:0.4",
        ] {
            assert_eq!(s.parse::<PolicySpec>().unwrap().to_string(), s);
        }
        for bad in [
            "",
            "flexi:x",
            "flexi:NaN",
            "flexi:2",
            "prune",
            "prune:-1",
            "exit:a",
            "ful",
            "full:1",
            "laco",
            "laco:x",
            "mindskip:1.5",
        ] {
            assert!(bad.parse::<PolicySpec>().is_err(), "{bad}");
        }
    }
}
