//! The switches of DMTD inference (spec B4.1 and B4.6): how the prompt feeds the decoding layers, and whether
//! late-only tokens are refilled into the thinking layers' cache.

use super::DmtdLayout;
use crate::error::{Error, Result};

/// What the decoding layers take as input at prompt positions (spec B4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Prefill {
    /// The plain stack: decoding input = thinking output (the vLLM port).
    #[default]
    Plain,
    /// The released HF reference: decoding input = embedding (encoding output when E > 0) + thinking output.
    Readd,
}

/// What the thinking layers' KV cache holds for generated tokens (spec B4.3, B4.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum History {
    /// Cyclical refilling (the paper): at each head the previous cycle's late-only tokens run through the thinking
    /// layers with the head, so their K/V hold every position, one cycle late.
    #[default]
    Real,
    /// The no-refill ablation: the thinking layers keep only the prompt and the heads, in contiguous cache slots,
    /// each rotated at its true position. Does not match training.
    Shadow,
}

impl std::str::FromStr for Prefill {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "plain" => Ok(Prefill::Plain),
            "readd" => Ok(Prefill::Readd),
            other => Err(Error::Input(format!(
                "unknown DMTD prefill convention '{other}' (use plain or readd)"
            ))),
        }
    }
}

impl std::str::FromStr for History {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "real" => Ok(History::Real),
            "shadow" => Ok(History::Shadow),
            other => Err(Error::Input(format!(
                "unknown DMTD history mode '{other}' (use real or shadow)"
            ))),
        }
    }
}

impl std::fmt::Display for Prefill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Prefill::Plain => "plain",
            Prefill::Readd => "readd",
        })
    }
}

impl std::fmt::Display for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            History::Real => "real",
            History::Shadow => "shadow",
        })
    }
}

/// Everything DMTD inference needs to know: the layer groups and τ, and the two conventions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmtdOptions {
    pub layout: DmtdLayout,
    pub prefill: Prefill,
    pub history: History,
}

impl DmtdOptions {
    /// `layout` with the paper's conventions (plain prefill as in the vLLM port, cyclical refilling).
    pub fn new(layout: DmtdLayout) -> Self {
        DmtdOptions {
            layout,
            prefill: Prefill::default(),
            history: History::default(),
        }
    }

    /// A short label for tables: `dmtd:τ`, with `E{E}D{D}` and non-default conventions appended.
    pub fn label(&self) -> String {
        let l = &self.layout;
        let mut s = format!(
            "dmtd:{} E{}D{}",
            l.mtp_horizon, l.num_encoding_layers, l.num_decoding_layers
        );
        if self.prefill != Prefill::Plain {
            s.push_str(&format!(" prefill={}", self.prefill));
        }
        if self.history != History::Real {
            s.push_str(&format!(" history={}", self.history));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_label() {
        assert_eq!("readd".parse::<Prefill>().unwrap(), Prefill::Readd);
        assert_eq!("shadow".parse::<History>().unwrap(), History::Shadow);
        assert!("both".parse::<Prefill>().is_err());
        assert!("fake".parse::<History>().is_err());
        let mut o = DmtdOptions::new(DmtdLayout::new(30, 0, 4, 3).unwrap());
        assert_eq!(o.label(), "dmtd:3 E0D4");
        o.history = History::Shadow;
        assert_eq!(o.label(), "dmtd:3 E0D4 history=shadow");
    }
}
