//! Direct Multi-Token Decoding (Luo, Wang, Yan; spec `dmtd.md`): after one full-depth pass (the cycle head), only
//! the last layers run for the next τ−1 tokens, with no verification; the skipped layers' K/V are refilled at the
//! next head. [`layout::DmtdLayout`] names the three layer groups and the cycle length, shared by decoding and
//! training; [`masked`] is the training-time forward (cyclical masking) and [`delta`] the trained low-rank deltas.

pub mod delta;
pub mod layout;
pub mod masked;

pub use layout::DmtdLayout;
