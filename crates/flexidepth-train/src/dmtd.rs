//! The DMTD objective (spec B3): the cyclical-masking forward ([`flexidepth::dmtd::masked`]) with low-rank deltas
//! on the decoding layers ([`crate::lora`]), scored at every position by next-token cross-entropy on the data
//! (`lm`) and/or KL(full-depth model ‖ DMTD model) (`kl`). The teacher costs only the decoding layers run on the
//! thinking output `t` the pass already computed: at every position, the frozen full-depth model's own next-token
//! distribution. Sums over tokens, divided by the tokens of the whole step, as [`crate::loss`] does.

use crate::forward::Differentiable;
use crate::lora::LoraOps;
use crate::loss::{LossKind, SequenceLoss};
use crate::ops::head_loss;
use candle_core::{Tensor, Var};
use flexidepth::dmtd::masked::{cyclical_forward, full_depth_from_thinking};
use flexidepth::dmtd::DmtdLayout;
use flexidepth::error::{Error, Result};
use flexidepth::model::ops::{Fused, Ops};
use flexidepth::model::Model;
use std::collections::BTreeMap;

/// The layout, delta layers and targets a DMTD run trains, resolved against the model.
#[derive(Debug, Clone)]
pub struct DmtdSetup {
    pub layout: DmtdLayout,
    /// Layers with deltas: the decoding layers.
    pub layers: Vec<usize>,
    pub targets: Vec<String>,
    pub rank: usize,
    pub lora_alpha: f64,
}

impl DmtdSetup {
    /// Resolve `c` for a model of `num_layers` layers.
    ///
    /// # Errors
    /// [`Error::Input`] for a layout that does not fit the model.
    pub fn new(c: &DmtdConfig, num_layers: usize) -> Result<Self> {
        let layout = DmtdLayout::new(num_layers, c.num_encoding_layers, c.num_decoding_layers, c.mtp_horizon)?;
        Ok(DmtdSetup {
            layers: layout.decoding().collect(),
            layout,
            targets: c.targets.clone(),
            rank: c.rank,
            lora_alpha: c.lora_alpha,
        })
    }

    /// `α / r`.
    pub fn scale(&self) -> f64 {
        self.lora_alpha / self.rank as f64
    }

    /// The ops computing with the deltas `vars` on `model`.
    pub fn ops(&self, model: &Model, vars: &BTreeMap<String, Var>) -> Result<LoraOps> {
        LoraOps::new(model, vars, &self.layers, &self.targets, self.scale())
    }
}

/// One packed pass's share of a DMTD step: the objective (in the graph) over `seqs` (each scored at every
/// position but its last), normalised by `step_tokens`. `layers_sum` counts, per scored row, the layers cyclical
/// decoding runs for it (all at a head, E + D elsewhere).
pub fn dmtd_batch_loss(
    model: &Model,
    ops: &LoraOps,
    setup: &DmtdSetup,
    seqs: &[&[u32]],
    kind: LossKind,
    step_tokens: usize,
) -> Result<SequenceLoss> {
    if seqs.is_empty() || seqs.iter().any(|ids| ids.len() < 2) {
        return Err(Error::Input("a training sequence needs at least 2 tokens".into()));
    }
    let inputs: Vec<&[u32]> = seqs.iter().map(|ids| &ids[..ids.len() - 1]).collect();
    let targets: Vec<u32> = seqs.iter().flat_map(|ids| ids[1..].iter().copied()).collect();
    let lens: Vec<usize> = inputs.iter().map(|s| s.len()).collect();
    let pass = cyclical_forward(model, &Fused, ops, &inputs, &setup.layout)?;
    let teacher = match kind {
        LossKind::Kl | LossKind::LmKl => {
            let full = full_depth_from_thinking(model, &Fused, pass.thinking, &lens, &setup.layout)?;
            Some(model.head(&Fused, &full)?)
        }
        LossKind::Lm => None,
    };
    let lm_targets = match kind {
        LossKind::Lm | LossKind::LmKl => Some(targets.as_slice()),
        LossKind::Kl => None,
    };
    let normed = Differentiable.rms_norm(&pass.hidden, &model.norm)?;
    let terms: Tensor = head_loss(&normed, &model.lm_head, lm_targets, teacher.as_ref())?;
    let (lm, kl) = (terms.get(0)?, terms.get(1)?);
    let objective = ((&lm + &kl)? / step_tokens as f64)?;
    let (all, late) = (
        setup.layout.num_layers() as f64,
        (setup.layout.num_encoding_layers + setup.layout.num_decoding_layers) as f64,
    );
    let layers_sum = lens
        .iter()
        .flat_map(|&n| (0..n).map(|p| if setup.layout.is_head(p) { all } else { late }))
        .sum();
    Ok(SequenceLoss {
        objective,
        lm_sum: lm.to_scalar::<f32>()? as f64,
        kl_sum: kl.to_scalar::<f32>()? as f64,
        skip_sum: 0.0,
        tokens: targets.len(),
        layers_sum,
    })
}

/// The `[dmtd]` table of a training config.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DmtdConfig {
    /// τ, the cycle length trained for.
    pub mtp_horizon: usize,
    /// D, the decoding layers (the last D); they carry the deltas.
    pub num_decoding_layers: usize,
    /// E, the encoding layers (run for every token; frozen).
    #[serde(default)]
    pub num_encoding_layers: usize,
    /// LoRA rank r.
    #[serde(default = "default_rank")]
    pub rank: usize,
    /// LoRA α: the delta is `(α / r) · B · A`.
    #[serde(default = "default_lora_alpha")]
    pub lora_alpha: f64,
    /// Projections with deltas ([`flexidepth::dmtd::delta::TARGETS`]); default all seven.
    #[serde(default = "default_targets")]
    pub targets: Vec<String>,
}

fn default_rank() -> usize {
    16
}
fn default_lora_alpha() -> f64 {
    32.0
}
fn default_targets() -> Vec<String> {
    flexidepth::dmtd::delta::TARGETS.iter().map(|s| s.to_string()).collect()
}

impl DmtdConfig {
    /// Values in their domains (the layout against the model is checked by [`DmtdSetup::new`]).
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Input(format!("training config: [dmtd] {m}")));
        if self.mtp_horizon == 0 || self.num_decoding_layers == 0 {
            return bad("mtp_horizon and num_decoding_layers must be at least 1".into());
        }
        if !(1..=4096).contains(&self.rank) {
            return bad(format!("rank must be in 1..=4096, not {}", self.rank));
        }
        if !(self.lora_alpha.is_finite() && self.lora_alpha > 0.0) {
            return bad(format!(
                "lora_alpha must be a finite number > 0, not {}",
                self.lora_alpha
            ));
        }
        if self.targets.is_empty() {
            return bad("targets is empty".into());
        }
        for t in &self.targets {
            if !flexidepth::dmtd::delta::TARGETS.contains(&t.as_str()) {
                return bad(format!(
                    "unknown target '{t}' (one of {})",
                    flexidepth::dmtd::delta::TARGETS.join(", ")
                ));
            }
        }
        Ok(())
    }
}
