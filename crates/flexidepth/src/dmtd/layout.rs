//! The layer groups and cycle length of DMTD (spec B2), under the released config's key names.

use crate::error::{Error, Result};
use std::ops::Range;

/// How a decoder's layers split for Direct Multi-Token Decoding (spec B2): the first `num_encoding_layers` (E) run
/// for every token, the next `num_thinking_layers` (T) only at cycle heads (and on refill rows), the last
/// `num_decoding_layers` (D) for every token; a cycle is `mtp_horizon` (τ) tokens. E + T + D = the model's layers.
/// Field names are the released HF config keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmtdLayout {
    pub num_encoding_layers: usize,
    pub num_thinking_layers: usize,
    pub num_decoding_layers: usize,
    /// τ ≥ 1; τ = 1 is plain decoding (every token a head).
    pub mtp_horizon: usize,
}

impl DmtdLayout {
    /// The layout with E encoding and D decoding layers (the thinking layers are the rest) of a model with
    /// `num_layers` layers and cycle length `mtp_horizon`.
    ///
    /// # Errors
    /// [`Error::Input`] when τ is 0, D is 0, or E + D leaves no thinking layer.
    pub fn new(
        num_layers: usize,
        num_encoding_layers: usize,
        num_decoding_layers: usize,
        mtp_horizon: usize,
    ) -> Result<Self> {
        if mtp_horizon == 0 {
            return Err(Error::Input(
                "DMTD cycle length (mtp_horizon, τ) must be at least 1".into(),
            ));
        }
        if num_decoding_layers == 0 {
            return Err(Error::Input(
                "DMTD needs at least 1 decoding layer (num_decoding_layers)".into(),
            ));
        }
        let late = num_encoding_layers.checked_add(num_decoding_layers);
        if late.is_none_or(|late| late >= num_layers) {
            return Err(Error::Input(format!(
                "DMTD: {num_encoding_layers} encoding + {num_decoding_layers} decoding layers leave no thinking layer \
                 in a model with {num_layers} layers"
            )));
        }
        Ok(DmtdLayout {
            num_encoding_layers,
            num_thinking_layers: num_layers - num_encoding_layers - num_decoding_layers,
            num_decoding_layers,
            mtp_horizon,
        })
    }

    /// All layers, E + T + D.
    pub fn num_layers(&self) -> usize {
        self.num_encoding_layers + self.num_thinking_layers + self.num_decoding_layers
    }

    /// Layer indices of the encoding group (run for every token).
    pub fn encoding(&self) -> Range<usize> {
        0..self.num_encoding_layers
    }

    /// Layer indices of the thinking group (run at heads and on refill rows).
    pub fn thinking(&self) -> Range<usize> {
        self.num_encoding_layers..self.num_encoding_layers + self.num_thinking_layers
    }

    /// Layer indices of the decoding group (run for every token).
    pub fn decoding(&self) -> Range<usize> {
        self.num_encoding_layers + self.num_thinking_layers..self.num_layers()
    }

    /// Whether the token at `offset` (generated tokens: `pos − prompt_len`, spec B4.2; training: the index in the
    /// row, spec B3) is a cycle head.
    pub fn is_head(&self, offset: usize) -> bool {
        offset.is_multiple_of(self.mtp_horizon)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_tile_the_layers() {
        let l = DmtdLayout::new(30, 0, 4, 3).unwrap();
        assert_eq!((l.encoding(), l.thinking(), l.decoding()), (0..0, 0..26, 26..30));
        let l = DmtdLayout::new(36, 2, 8, 4).unwrap();
        assert_eq!((l.encoding(), l.thinking(), l.decoding()), (0..2, 2..28, 28..36));
        assert_eq!(l.num_layers(), 36);
        assert!(l.is_head(0) && !l.is_head(1) && !l.is_head(3) && l.is_head(4));
        assert!(DmtdLayout::new(30, 0, 4, 1).unwrap().is_head(7));
    }

    #[test]
    fn bad_layouts_are_errors() {
        assert!(DmtdLayout::new(30, 0, 4, 0).is_err());
        assert!(DmtdLayout::new(30, 0, 0, 2).is_err());
        assert!(DmtdLayout::new(30, 10, 20, 2).is_err());
        assert!(DmtdLayout::new(30, usize::MAX, 1, 2).is_err());
    }
}
