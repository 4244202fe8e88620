//! Direct Multi-Token Decoding (Luo, Wang, Yan; spec `dmtd.md`): after one full-depth pass (the cycle head), only
//! the last layers run for the next τ−1 tokens, with no verification; the skipped layers' K/V are refilled at the
//! next head. [`layout::DmtdLayout`] names the three layer groups and the cycle length, shared by decoding and
//! training; [`decode::DmtdDecoder`] decodes cyclically under the [`options`] conventions; [`generate()`] is the
//! decode loop (sampling, stop conditions, streamed text, trace) on top of it; [`masked`] is the training-time
//! forward (cyclical masking) and [`delta`] the trained low-rank deltas; [`hf_keys`] reads and writes the released
//! config keys.

pub mod decode;
pub mod delta;
pub mod generate;
pub mod hf_keys;
pub mod layout;
pub mod masked;
pub mod options;

pub use decode::{DmtdDecoder, DmtdStep};
pub use generate::generate;
pub use layout::DmtdLayout;
pub use options::{DmtdOptions, History, Prefill};
