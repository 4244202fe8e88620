//! Checkpoints: one safetensors file holding the trainable tensors (official names), the AdamW moments
//! (`adam_m.*`, `adam_v.*`) and, in its metadata, where the run stands. Written atomically (temp file + rename), so
//! a run killed at any moment leaves the previous checkpoint whole.

use super::optim::AdamW;
use super::params::DepthParams;
use candle_core::{Device, Tensor};
use flexidepth::error::{Error, Result};
use serde::{Deserialize, Serialize};
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

const STATE_KEY: &str = "flexidepth.train-state";

/// Write a checkpoint of `params`, the optimizer and `state` to `path`.
pub fn save(path: &Path, params: &DepthParams, opt: &AdamW, state: &RunState) -> Result<()> {
    let mut tensors: Vec<(String, Tensor)> = params.tensors().into_iter().collect();
    tensors.extend(opt.state_tensors());
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let state_json = serde_json::to_string(&CheckpointMeta {
        state: state.clone(),
        optimizer_steps: opt.steps,
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
    let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).map_err(|e| Error::bad_file(path, e))?;
    Ok(Checkpoint {
        state: meta.state,
        optimizer_steps: meta.optimizer_steps,
        tensors,
    })
}
