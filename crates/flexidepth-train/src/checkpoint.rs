//! Checkpoints: one safetensors file holding the trainable tensors (official names), the AdamW moments
//! (`adam_m.*`, `adam_v.*`) and, in its metadata, where the run stands and a SHA-256 of the tensors (safetensors
//! has no checksum of its own: flipped bytes would resume silently). Written atomically (temp file + rename), so
//! a run killed at any moment leaves the previous checkpoint whole. A checkpoint whose checksum does not match, or
//! that holds a NaN or an infinity, is refused.

use super::optim::AdamW;
use super::params::DepthParams;
use candle_core::{Device, Tensor};
use flexidepth::error::{Error, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;

/// Where a run stands: with the config and the seeded data order, enough to continue exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct RunState {
    /// Stage being trained (== number of stages when the run is complete).
    pub stage: usize,
    /// Optimizer steps done in that stage (the data position follows from it).
    pub stage_step: usize,
    /// Optimizer steps done in the whole run.
    pub global_step: usize,
    /// Tokens trained on so far.
    pub tokens_seen: u64,
    /// Training wall time so far, seconds.
    pub elapsed_s: f64,
    /// Fingerprint of the config the run was started with.
    pub config_hash: String,
}

/// The metadata key of the run state (JSON).
pub const STATE_KEY: &str = "flexidepth.train-state";

/// Write a checkpoint of `params`, the optimizer and `state` to `path`.
pub fn save(path: &Path, params: &DepthParams, opt: &AdamW, state: &RunState) -> Result<()> {
    let mut tensors: Vec<(String, Tensor)> = params.tensors().into_iter().collect();
    tensors.extend(opt.state_tensors());
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, t) in &tensors {
        flexidepth::finite::check_finite(&format!("checkpoint tensor '{name}'"), t)?;
    }
    let state_json = serde_json::to_string(&CheckpointMeta {
        state: state.clone(),
        optimizer_steps: opt.steps,
        tensors_sha256: Some(checksum(
            tensors.iter().map(|(n, t)| (n.as_str(), t as &dyn safetensors::View)),
        )),
    })
    .map_err(|e| Error::Input(format!("cannot serialise the run state: {e}")))?;
    let meta = HashMap::from([(STATE_KEY.to_string(), state_json)]);
    let bytes = safetensors::serialize(tensors, Some(meta))
        .map_err(|e| Error::Input(format!("cannot serialise {}: {e}", path.display())))?;
    flexidepth::error::write_atomic(path, &bytes)
}

#[derive(Serialize, Deserialize)]
struct CheckpointMeta {
    state: RunState,
    optimizer_steps: u64,
    /// SHA-256 of the tensors (see [`checksum`]); absent only in files of older versions, which are refused.
    #[serde(default)]
    tensors_sha256: Option<String>,
}

/// SHA-256 over the tensors in name order: each one's name, dtype, shape and bytes, length-prefixed.
pub fn checksum<'a>(tensors: impl Iterator<Item = (&'a str, &'a dyn safetensors::View)>) -> String {
    let mut sorted: Vec<_> = tensors.collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let mut h = Sha256::new();
    for (name, t) in sorted {
        let data = t.data();
        let desc = format!("{name}|{:?}|{:?}|{}", t.dtype(), t.shape(), data.len());
        h.update((desc.len() as u64).to_le_bytes());
        h.update(desc.as_bytes());
        h.update(&data);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// A checkpoint read back: the run state, the optimizer's step count, and every tensor by name.
pub struct Checkpoint {
    pub state: RunState,
    pub optimizer_steps: u64,
    pub tensors: HashMap<String, Tensor>,
}

pub fn load(path: &Path) -> Result<Checkpoint> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| Error::bad_file(path, format!("not a readable checkpoint: {e}")))?;
    let json = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(STATE_KEY))
        .ok_or_else(|| Error::bad_file(path, "not a flexidepth training checkpoint (no run state)"))?;
    let meta: CheckpointMeta =
        serde_json::from_str(json).map_err(|e| Error::bad_file(path, format!("bad run state: {e}")))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::bad_file(path, format!("not a readable checkpoint: {e}")))?;
    let views = st.tensors();
    let found = checksum(views.iter().map(|(n, v)| (n.as_str(), v as &dyn safetensors::View)));
    match &meta.tensors_sha256 {
        Some(want) if *want == found => {}
        Some(_) => {
            return Err(Error::bad_file(
                path,
                "the checkpoint's tensors do not match its checksum (a damaged file); resume from a copy or start over",
            ))
        }
        None => {
            return Err(Error::bad_file(
                path,
                "the checkpoint has no checksum (written by an older version)",
            ))
        }
    }
    let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).map_err(|e| Error::bad_file(path, e))?;
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    for name in names {
        flexidepth::finite::check_finite(&format!("tensor '{name}'"), &tensors[name])
            .map_err(|e| Error::bad_file(path, e))?;
    }
    Ok(Checkpoint {
        state: meta.state,
        optimizer_steps: meta.optimizer_steps,
        tensors,
    })
}
