//! The depth-policy seam: a [`DepthPolicy`] turns the rows entering a layer into a [`LayerPlan`], and the model
//! executes plans ([`crate::model::layer::DecoderLayer::forward`]). Full depth, FlexiDepth routing, static
//! pruning, early exit and attention-only / FFN-only skipping are all policies (`crate::depth`); what a token cost
//! — layers used, weight bytes read — is derived from the executed plan here, in one place ([`ExecutedPlan`]).
//!
//! A row's work in one layer has two halves:
//!
//! ```text
//! attention:  Run       q, attention over the cache, o_proj; its K/V written
//!             KvOnly    K/V written (later tokens attend to them), no query, attention or o_proj  (FlexiDepth skip)
//!             KvHidden  K/V written but hidden from later tokens (the paper's "no KV cache" ablation)
//! FFN:        Mlp       the layer's own MLP (scaled by the gate w when the plan carries gates)
//!             Adapter   the FlexiDepth adapter instead (scaled by 1 − w when the plan carries gates)
//!             Skip      nothing: the residual passes through
//! ```
//!
//! A whole layer can also be [`LayerPlan::Absent`] (no compute and no K/V: a pruned layer),
//! [`LayerPlan::Exit`] (this layer and every later one are not run; the final norm and head follow) or
//! [`LayerPlan::Replaced`] (another layer's weights run in its place: a merged layer).

use super::layer::DecoderLayer;
use crate::error::Result;
use candle_core::Tensor;
use std::cell::OnceCell;

/// The default gate threshold: a routed row runs its layer iff `w > DEFAULT_SKIP_THRESHOLD` (spec A3: strict `>`,
/// 0.5 hard-coded in the released model). Depth files store their own, which then takes precedence.
pub const DEFAULT_SKIP_THRESHOLD: f32 = 0.5;

/// What one row does in the attention half of a layer (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttnStep {
    Run,
    KvOnly,
    KvHidden,
}

/// What one row does in the FFN half of a layer (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FfnStep {
    Mlp,
    Adapter,
    Skip,
}

/// One row's work in one layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowStep {
    pub attn: AttnStep,
    pub ffn: FfnStep,
}

impl RowStep {
    /// The whole layer, as the base model runs it.
    pub const RUN: RowStep = RowStep {
        attn: AttnStep::Run,
        ffn: FfnStep::Mlp,
    };
    /// FlexiDepth's skip: K/V written, no attention, adapter instead of the MLP (spec A3).
    pub const SKIP: RowStep = RowStep {
        attn: AttnStep::KvOnly,
        ffn: FfnStep::Adapter,
    };

    /// Whether the row runs the whole layer.
    pub fn is_full(&self) -> bool {
        *self == RowStep::RUN
    }
}

/// What a skipped row leaves out (FlexiDepth's unit of skipping; stored in depth files as `layer`, `ffn` or
/// `attention`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SkipUnit {
    /// Attention and FFN (the paper; the adapter stands in for the FFN).
    #[default]
    Layer,
    /// The FFN only: attention runs, the adapter stands in for the MLP.
    Ffn,
    /// The attention only: K/V written, no query, attention or `o_proj`; the MLP runs unscaled.
    Attention,
}

impl SkipUnit {
    /// A skipped row's step.
    pub fn skip_step(self, skip_kv: bool) -> RowStep {
        let kv = if skip_kv { AttnStep::KvOnly } else { AttnStep::KvHidden };
        match self {
            SkipUnit::Layer => RowStep {
                attn: kv,
                ffn: FfnStep::Adapter,
            },
            SkipUnit::Ffn => RowStep {
                attn: AttnStep::Run,
                ffn: FfnStep::Adapter,
            },
            SkipUnit::Attention => RowStep {
                attn: kv,
                ffn: FfnStep::Mlp,
            },
        }
    }
}

impl std::fmt::Display for SkipUnit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SkipUnit::Layer => "layer",
            SkipUnit::Ffn => "ffn",
            SkipUnit::Attention => "attention",
        })
    }
}

impl std::str::FromStr for SkipUnit {
    type Err = crate::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "layer" => Ok(SkipUnit::Layer),
            "ffn" => Ok(SkipUnit::Ffn),
            "attention" => Ok(SkipUnit::Attention),
            other => Err(crate::Error::Input(format!(
                "unknown skip unit '{other}' (layer, ffn or attention)"
            ))),
        }
    }
}

/// How a router's gate `w` weighs what a row computes.
///
/// `Released` is the paper's and the released code's rule (spec A3): a run row's MLP output is scaled by `w`, a
/// skipped row's adapter output by `1 − w`, so that the LM loss reaches the router through every row.
/// `Hard` departs from the released semantics (ours, named as such): the gate only decides. A run row is the base
/// layer exactly and a skipped row adds the adapter unscaled (as if `w = 0`, the gate the layer-local fit targets),
/// so that routing costs nothing on the rows that run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GateScaling {
    #[default]
    Released,
    Hard,
}

impl std::fmt::Display for GateScaling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            GateScaling::Released => "released",
            GateScaling::Hard => "hard",
        })
    }
}

impl std::str::FromStr for GateScaling {
    type Err = crate::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "released" => Ok(GateScaling::Released),
            "hard" => Ok(GateScaling::Hard),
            other => Err(crate::Error::Input(format!(
                "unknown gate scaling '{other}' (released or hard)"
            ))),
        }
    }
}

/// The routing settings a depth file fixes for its routers: the defaults of every routing policy, which a policy
/// may override.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Routing {
    /// A row runs a routed layer iff its gate is above this.
    pub skip_threshold: f32,
    /// What a skipped row leaves out.
    pub skip_unit: SkipUnit,
    /// How the gate weighs run and skipped rows.
    pub gate_scaling: GateScaling,
}

impl Default for Routing {
    /// The released model's: threshold 0.5, whole layers, gate-scaled.
    fn default() -> Self {
        Routing {
            skip_threshold: DEFAULT_SKIP_THRESHOLD,
            skip_unit: SkipUnit::Layer,
            gate_scaling: GateScaling::Released,
        }
    }
}

/// A router's continuous gates for the rows of one layer.
#[derive(Debug, Clone)]
pub struct Gates {
    /// `[rows]`; in training it carries the autograd graph back to the router.
    pub tensor: Tensor,
    /// The same values on the host.
    pub values: Vec<f32>,
}

/// What a layer does with the rows of one forward pass.
#[derive(Debug, Clone)]
pub enum LayerPlan {
    /// Every row runs the layer unchanged: the base model, bit for bit.
    Full,
    /// The layer is not there: no compute and no K/V (static pruning).
    Absent,
    /// Neither this layer nor any later one runs; the pass goes to the final norm and head (early exit).
    Exit,
    /// Every row runs, unchanged, a layer of other weights in this layer's place, writing K/V under this layer's
    /// index (LaCo's merged layer, `crate::depth::laco`). Costs are counted as this layer's.
    Replaced(std::sync::Arc<DecoderLayer>),
    /// A step per row, with the router's gates when it has them.
    Rows {
        steps: Vec<RowStep>,
        gates: Option<Gates>,
        /// Scale `Mlp` rows by `w` and `Adapter` rows by `1 − w` (the released FlexiDepth semantics, spec A3).
        /// Needs `gates`.
        scale_by_gate: bool,
    },
}

/// The rows entering a layer, as a policy sees them.
pub struct LayerInput<'a> {
    /// `[rows, hidden]`, the residual stream entering the layer.
    pub x: &'a Tensor,
    /// Position of the first row.
    pub pos: usize,
    normed: OnceCell<Tensor>,
    layer: &'a DecoderLayer,
    ops: &'a dyn super::ops::Ops,
}

impl<'a> LayerInput<'a> {
    pub(crate) fn new(layer: &'a DecoderLayer, x: &'a Tensor, pos: usize, ops: &'a dyn super::ops::Ops) -> Self {
        LayerInput {
            x,
            pos,
            normed: OnceCell::new(),
            layer,
            ops,
        }
    }

    /// `input_layernorm(x)`, `[rows, hidden]`: computed once, shared by the policy (a router's input) and the layer.
    pub fn normed(&self) -> Result<&Tensor> {
        if let Some(u) = self.normed.get() {
            return Ok(u);
        }
        let u = self.ops.rms_norm(self.x, &self.layer.input_layernorm)?;
        Ok(self.normed.get_or_init(|| u))
    }

    /// The ops the pass computes with (fused for inference, differentiable for training).
    pub fn ops(&self) -> &dyn super::ops::Ops {
        self.ops
    }

    pub(crate) fn take_normed(self) -> Option<Tensor> {
        self.normed.into_inner()
    }
}

/// How depth is chosen: per layer, from the rows entering it.
///
/// Implementations are small and stateless per pass (one file each in `crate::depth`); the model calls
/// [`DepthPolicy::plan`] for every layer of every forward pass, in layer order.
pub trait DepthPolicy: std::fmt::Debug + Send + Sync {
    /// The plan for `layer` on `input`'s rows. A policy that needs the router's input calls
    /// [`LayerInput::normed`].
    fn plan(&self, layer: &DecoderLayer, input: &LayerInput) -> Result<LayerPlan>;

    /// A short label for tables and logs (`full`, `flexi:0.5`, `prune:4`, ...).
    fn label(&self) -> String;
}

/// Full depth: every layer runs every row, routers ignored (not even computed). The base model.
#[derive(Debug, Clone, Copy, Default)]
pub struct FullDepth;

impl DepthPolicy for FullDepth {
    fn plan(&self, _layer: &DecoderLayer, _input: &LayerInput) -> Result<LayerPlan> {
        Ok(LayerPlan::Full)
    }
    fn label(&self) -> String {
        "full".into()
    }
}

/// What one layer did in a forward pass.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerRecord {
    pub layer_idx: usize,
    pub kind: RecordKind,
    /// The router's gates per row, when the plan had them.
    pub gates: Option<Vec<f32>>,
}

/// The executed plan of one layer, without tensors.
#[derive(Debug, Clone, PartialEq)]
pub enum RecordKind {
    Full,
    Absent,
    Rows(Vec<RowStep>),
}

impl LayerRecord {
    /// Row `row`'s step (`None` when the layer was absent).
    pub fn step(&self, row: usize) -> Option<RowStep> {
        match &self.kind {
            RecordKind::Full => Some(RowStep::RUN),
            RecordKind::Absent => None,
            RecordKind::Rows(steps) => steps.get(row).copied(),
        }
    }
}

/// Weight bytes of the parts of one layer (decode is memory-bound: bytes read bound the speed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LayerBytes {
    /// `k_proj` + `v_proj` (read by every row that writes K/V).
    pub kv: usize,
    /// `q_proj` + `o_proj`.
    pub q_o: usize,
    /// `gate_proj` + `up_proj` + `down_proj`.
    pub mlp: usize,
    /// The router (0 on an unrouted layer).
    pub router: usize,
    /// The adapter (0 on an unrouted layer).
    pub adapter: usize,
}

impl LayerBytes {
    /// The layer's own weights, as the base model reads them.
    pub fn base(&self) -> usize {
        self.kv + self.q_o + self.mlp
    }

    /// Bytes a row with `step` reads (`None`: absent layer); `routed` adds the router, which runs whenever gates
    /// are computed.
    pub fn read(&self, step: Option<RowStep>, routed: bool) -> usize {
        let Some(s) = step else { return 0 };
        let attn = match s.attn {
            AttnStep::Run => self.kv + self.q_o,
            AttnStep::KvOnly | AttnStep::KvHidden => self.kv,
        };
        let ffn = match s.ffn {
            FfnStep::Mlp => self.mlp,
            FfnStep::Adapter => self.adapter,
            FfnStep::Skip => 0,
        };
        attn + ffn + if routed { self.router } else { 0 }
    }

    /// The share of the layer a row with `step` uses, in `[0, 1]`: 1 for the whole layer, 0 for a FlexiDepth skip
    /// or an absent layer; a partial skip (attention only, FFN only) counts the share of the base layer's weight
    /// bytes it still reads for its skipped half's counterpart, i.e. `1 − (bytes of the skipped half) / base`.
    pub fn layers_used(&self, step: Option<RowStep>) -> f64 {
        let Some(s) = step else { return 0.0 };
        let attn_run = s.attn == AttnStep::Run;
        let mlp_run = s.ffn == FfnStep::Mlp;
        match (attn_run, mlp_run) {
            (true, true) => 1.0,
            (false, false) => 0.0,
            _ => {
                let base = self.base().max(1) as f64;
                let skipped = if attn_run { self.mlp } else { self.q_o };
                1.0 - skipped as f64 / base
            }
        }
    }
}

/// The executed plans of one forward pass, with the accounting every report uses.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ExecutedPlan {
    /// Rows of the pass.
    pub rows: usize,
    /// One record per layer that was reached, in layer order (layers after an exit have none).
    pub layers: Vec<LayerRecord>,
}

impl ExecutedPlan {
    /// Layers used by `row`: each layer contributes [`LayerBytes::layers_used`] (`bytes[layer_idx]`).
    pub fn layers_used(&self, row: usize, bytes: &[LayerBytes]) -> f64 {
        self.layers
            .iter()
            .map(|l| {
                bytes
                    .get(l.layer_idx)
                    .copied()
                    .unwrap_or_default()
                    .layers_used(l.step(row))
            })
            .sum()
    }

    /// Layer weight bytes read by `row` (the head and embedding are not included).
    pub fn weight_bytes(&self, row: usize, bytes: &[LayerBytes]) -> usize {
        self.layers
            .iter()
            .map(|l| {
                let b = bytes.get(l.layer_idx).copied().unwrap_or_default();
                b.read(l.step(row), l.gates.is_some())
            })
            .sum()
    }

    /// The records of layers whose plan carried router gates (FlexiDepth's routed layers), in layer order.
    pub fn routed(&self) -> impl Iterator<Item = &LayerRecord> {
        self.layers.iter().filter(|l| l.gates.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes() -> LayerBytes {
        LayerBytes {
            kv: 10,
            q_o: 30,
            mlp: 60,
            router: 2,
            adapter: 5,
        }
    }

    #[test]
    fn cost_of_each_step() {
        let b = bytes();
        assert_eq!(b.read(Some(RowStep::RUN), false), 100);
        assert_eq!(b.read(Some(RowStep::RUN), true), 102);
        assert_eq!(b.read(Some(RowStep::SKIP), true), 10 + 5 + 2);
        assert_eq!(b.read(None, true), 0);
        let ffn_skip = RowStep {
            attn: AttnStep::Run,
            ffn: FfnStep::Adapter,
        };
        assert_eq!(b.read(Some(ffn_skip), true), 10 + 30 + 5 + 2);
        assert_eq!(b.layers_used(Some(RowStep::RUN)), 1.0);
        assert_eq!(b.layers_used(Some(RowStep::SKIP)), 0.0);
        assert_eq!(b.layers_used(None), 0.0);
        assert!((b.layers_used(Some(ffn_skip)) - 0.4).abs() < 1e-12);
        let attn_skip = RowStep {
            attn: AttnStep::KvOnly,
            ffn: FfnStep::Mlp,
        };
        assert!((b.layers_used(Some(attn_skip)) - 0.7).abs() < 1e-12);
    }

    #[test]
    fn executed_plan_accounting() {
        let b = vec![bytes(); 3];
        let plan = ExecutedPlan {
            rows: 2,
            layers: vec![
                LayerRecord {
                    layer_idx: 0,
                    kind: RecordKind::Full,
                    gates: None,
                },
                LayerRecord {
                    layer_idx: 1,
                    kind: RecordKind::Absent,
                    gates: None,
                },
                LayerRecord {
                    layer_idx: 2,
                    kind: RecordKind::Rows(vec![RowStep::RUN, RowStep::SKIP]),
                    gates: Some(vec![0.9, 0.1]),
                },
            ],
        };
        assert_eq!(plan.layers_used(0, &b), 2.0);
        assert_eq!(plan.layers_used(1, &b), 1.0);
        assert_eq!(plan.weight_bytes(0, &b), 100 + 102);
        assert_eq!(plan.weight_bytes(1, &b), 100 + 17);
        assert_eq!(plan.routed().count(), 1);
    }
}
