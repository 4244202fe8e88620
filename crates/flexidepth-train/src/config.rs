//! A training run's settings, from a TOML file (`[[stage]]` tables for the stages) with command-line overrides.
//! The effective config is saved beside the outputs, so that `--resume` continues with exactly the same one.

use super::loss::LossKind;
use super::optim::AdamWConfig;
use flexidepth::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What a stage does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum StageKind {
    /// End-to-end training (`L_lm`/KL + α·`L_skip`) with AdamW: the paper's stages.
    #[default]
    #[serde(rename = "train")]
    Train,
    /// Layer-local adapter fitting on full-depth activations ([`crate::local_fit`]).
    #[serde(rename = "local_fit")]
    LocalFit,
    /// Supervised router pre-training on skip-cost labels ([`crate::router_start`]).
    #[serde(rename = "router_start")]
    RouterStart,
    /// DMTD cyclical-masking training of low-rank deltas on the decoding layers (spec B3, [`crate::dmtd`]); the
    /// run's `[dmtd]` table gives the layout, τ and rank, its `loss` the objective (`lm`, `kl` or `lm+kl`).
    #[serde(rename = "dmtd")]
    Dmtd,
}

impl StageKind {
    /// Whether the stage runs optimizer steps (`train`, `dmtd`) rather than one local block.
    pub fn is_optimizer_stage(self) -> bool {
        matches!(self, StageKind::Train | StageKind::Dmtd)
    }
}

/// The skip-cost label of a router-start stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum LabelKind {
    /// KL at the token's output when only that layer is skipped for that token ([`crate::router_labels`]).
    #[default]
    #[serde(rename = "kl")]
    Kl,
    /// The row's local replacement error `‖(1 − w*)·adapter(v) − T‖²`, relative to the layer's mean `‖T‖²`.
    #[serde(rename = "local")]
    Local,
}

/// What a skipped row leaves out, as written in a config (`skip_unit = "layer" | "ffn" | "attention"`; the
/// attention unit is MindSkip's: no adapter, so only router stages apply).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum SkipUnitName {
    #[default]
    #[serde(rename = "layer")]
    Layer,
    #[serde(rename = "ffn")]
    Ffn,
    #[serde(rename = "attention")]
    Attention,
}

impl SkipUnitName {
    pub fn unit(self) -> flexidepth::depth::SkipUnit {
        match self {
            SkipUnitName::Layer => flexidepth::depth::SkipUnit::Layer,
            SkipUnitName::Ffn => flexidepth::depth::SkipUnit::Ffn,
            SkipUnitName::Attention => flexidepth::depth::SkipUnit::Attention,
        }
    }
    fn is_layer(&self) -> bool {
        *self == SkipUnitName::Layer
    }
}

/// How the gate weighs rows in training and in the files written, as written in a config
/// (`gate_scaling = "released" | "hard"`; see [`flexidepth::depth::GateScaling`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum GateScalingName {
    #[default]
    #[serde(rename = "released")]
    Released,
    #[serde(rename = "hard")]
    Hard,
}

impl GateScalingName {
    pub fn scaling(self) -> flexidepth::depth::GateScaling {
        match self {
            GateScalingName::Released => flexidepth::depth::GateScaling::Released,
            GateScalingName::Hard => flexidepth::depth::GateScaling::Hard,
        }
    }
    fn is_released(&self) -> bool {
        *self == GateScalingName::Released
    }
}

/// One stage: its own α, length, learning rate, and a fresh optimizer and schedule (the official recipe runs its
/// two stages as two separate trainings). A `local_fit` or `router_start` stage runs as one unit (resumed from its
/// start if interrupted); the fields marked as theirs are ignored by `train` stages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    pub name: String,
    #[serde(default, skip_serializing_if = "is_train")]
    pub kind: StageKind,
    /// Weight of `L_skip` (train stages).
    #[serde(default)]
    pub alpha: f64,
    /// local_fit / router_start: tokens collected (default 8192 for a local fit, 512 for KL labels).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<usize>,
    /// local_fit / router_start: epochs of local Adam (default 20 / 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fit_epochs: Option<usize>,
    /// local_fit / router_start: the gate `w*` adapters are fitted for and labels are computed at (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_gate: Option<f64>,
    /// local_fit: also fit the other skip unit, for the replaceability table (its adapters are not kept).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub compare_units: bool,
    /// router_start: the label (default kl).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<LabelKind>,
    /// router_start: share of (token, layer) pairs labelled as skips (default 0.2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_share: Option<f64>,
    /// Optimizer steps; when absent, `epochs` passes over the data.
    pub steps: Option<usize>,
    #[serde(default = "one")]
    pub epochs: f64,
    /// Peak learning rate; the run's `lr` when absent.
    pub lr: Option<f64>,
}

fn one() -> f64 {
    1.0
}

impl Stage {
    /// An end-to-end stage of one epoch with weight `alpha` of `L_skip`, every other field at its default.
    pub fn train(name: &str, alpha: f64) -> Self {
        Stage {
            name: name.into(),
            kind: StageKind::Train,
            alpha,
            tokens: None,
            fit_epochs: None,
            target_gate: None,
            compare_units: false,
            label: None,
            skip_share: None,
            steps: None,
            epochs: 1.0,
            lr: None,
        }
    }
}

fn is_train(k: &StageKind) -> bool {
    *k == StageKind::Train
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// The frozen base (a name known to `scripts/fetch-models.sh`, a GGUF file or an HF folder).
    #[serde(default = "default_model")]
    pub model: String,
    /// JSONL data set (see `train::data`).
    pub data: PathBuf,
    /// Output folder: final and per-stage depth files, checkpoint, log, plot.
    pub out: PathBuf,
    /// Start from this depth-adapter file instead of a fresh initialisation.
    pub init: Option<PathBuf>,
    /// Routed layers for a fresh initialisation, `A..B`; default the later half.
    pub routed_layers: Option<String>,
    #[serde(default = "sixteen")]
    pub router_reduction: usize,
    #[serde(default = "sixteen")]
    pub proj_reduction: usize,
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Longer samples are dropped, not truncated.
    #[serde(default = "default_max_len")]
    pub max_len: usize,
    /// Sequences per micro-batch.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    #[serde(default = "one_usize")]
    pub grad_accum: usize,
    #[serde(default = "default_lr")]
    pub lr: f64,
    #[serde(default = "default_warmup")]
    pub warmup_ratio: f64,
    #[serde(default = "one")]
    pub max_grad_norm: f64,
    #[serde(default)]
    pub adam: AdamWConfigToml,
    #[serde(default = "default_loss")]
    pub loss: LossKind,
    /// Routing threshold used in the training forward (run iff `w > skip_threshold`), stored in the depth files
    /// the run writes (their default at inference). Older configs name it `threshold`.
    #[serde(default = "default_skip_threshold", alias = "threshold")]
    pub skip_threshold: f32,
    /// What a skipped row leaves out: `layer` (the paper) or `ffn` (attention kept, the adapter replaces the MLP).
    #[serde(default, skip_serializing_if = "SkipUnitName::is_layer")]
    pub skip_unit: SkipUnitName,
    /// `released` (the paper: run rows' MLP scaled by `w`, skipped rows' adapter by `1 − w`) or `hard` (ours, departs
    /// from the release: the gate only decides; the routers then learn from `L_skip` and the router start only).
    #[serde(default, skip_serializing_if = "GateScalingName::is_released")]
    pub gate_scaling: GateScalingName,
    #[serde(default = "one_usize")]
    pub log_every: usize,
    /// Checkpoint every this many optimizer steps (0: only at stage ends and on interruption).
    #[serde(default = "default_ckpt")]
    pub checkpoint_every: usize,
    /// Storage dtype of the written depth files: f32, f16 or bf16.
    #[serde(default = "default_save_dtype")]
    pub save_dtype: String,
    /// The layout, τ and deltas of `kind = "dmtd"` stages (required by them, refused without them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dmtd: Option<crate::dmtd::DmtdConfig>,
    #[serde(rename = "stage")]
    pub stages: Vec<Stage>,
}

/// AdamW settings as written in TOML (`[adam]`), defaults from the official recipe.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdamWConfigToml {
    #[serde(default = "b1")]
    pub beta1: f64,
    #[serde(default = "b2")]
    pub beta2: f64,
    #[serde(default = "eps")]
    pub eps: f64,
    #[serde(default)]
    pub weight_decay: f64,
}

impl Default for AdamWConfigToml {
    fn default() -> Self {
        let d = AdamWConfig::default();
        AdamWConfigToml {
            beta1: d.beta1,
            beta2: d.beta2,
            eps: d.eps,
            weight_decay: d.weight_decay,
        }
    }
}

impl From<AdamWConfigToml> for AdamWConfig {
    fn from(c: AdamWConfigToml) -> Self {
        AdamWConfig {
            beta1: c.beta1,
            beta2: c.beta2,
            eps: c.eps,
            weight_decay: c.weight_decay,
        }
    }
}

fn default_model() -> String {
    "smollm2-135m-instruct".into()
}
fn sixteen() -> usize {
    16
}
fn default_seed() -> u64 {
    42
}
fn default_max_len() -> usize {
    2048
}
fn default_batch() -> usize {
    4
}
fn one_usize() -> usize {
    1
}
fn default_lr() -> f64 {
    1e-4
}
fn default_warmup() -> f64 {
    0.03
}
fn default_loss() -> LossKind {
    LossKind::Lm
}
fn default_skip_threshold() -> f32 {
    flexidepth::depth::DEFAULT_SKIP_THRESHOLD
}
fn default_ckpt() -> usize {
    50
}
fn default_save_dtype() -> String {
    "f32".into()
}
fn b1() -> f64 {
    0.9
}
fn b2() -> f64 {
    0.95
}
fn eps() -> f64 {
    1e-8
}

impl TrainConfig {
    /// Parse TOML; errors name the file.
    pub fn from_toml(path: &Path, text: &str) -> Result<Self> {
        let c: TrainConfig = toml::from_str(text).map_err(|e| Error::bad_file(path, format!("invalid config: {e}")))?;
        Ok(c)
    }

    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self).map_err(|e| Error::Input(format!("cannot write the config: {e}")))
    }

    /// The routing of the training forward and of the depth files the run writes.
    pub fn routing(&self) -> flexidepth::depth::Routing {
        flexidepth::depth::Routing {
            skip_threshold: self.skip_threshold,
            skip_unit: self.skip_unit.unit(),
            gate_scaling: self.gate_scaling.scaling(),
        }
    }

    /// Refuse settings that cannot train or can only diverge, before any work: every hyper-parameter in its
    /// domain (finite, and e.g. `adam.beta1` in [0, 1)), every count within bounds, stage names usable as file
    /// names. Errors name the key.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Input(format!("training config: {m}")));
        if self.stages.is_empty() {
            return bad("no [[stage]]".into());
        }
        for (key, n, max) in [
            ("batch_size", self.batch_size, MAX_SEQUENCES_PER_STEP),
            ("grad_accum", self.grad_accum, MAX_SEQUENCES_PER_STEP),
            ("router_reduction", self.router_reduction, usize::MAX),
            ("proj_reduction", self.proj_reduction, usize::MAX),
        ] {
            if !(1..=max).contains(&n) {
                return bad(format!("{key} must be in 1..={max}, not {n}"));
            }
        }
        if self
            .batch_size
            .checked_mul(self.grad_accum)
            .is_none_or(|n| n > MAX_SEQUENCES_PER_STEP)
        {
            return bad(format!(
                "batch_size × grad_accum must be at most {MAX_SEQUENCES_PER_STEP} sequences per step"
            ));
        }
        if !(2..=flexidepth::config::LIMITS.context).contains(&self.max_len) {
            return bad(format!(
                "max_len must be in 2..={}, not {}",
                flexidepth::config::LIMITS.context,
                self.max_len
            ));
        }
        if let Some(r) = &self.routed_layers {
            flexidepth::depth::layer_range_bounds(r)
                .map_err(|e| Error::Input(format!("training config: routed_layers: {e}")))?;
        }
        let a = &self.adam;
        for (key, x, ok, domain) in [
            ("lr", self.lr, self.lr > 0.0, "> 0"),
            (
                "warmup_ratio",
                self.warmup_ratio,
                (0.0..1.0).contains(&self.warmup_ratio),
                "in [0, 1)",
            ),
            (
                "max_grad_norm",
                self.max_grad_norm,
                self.max_grad_norm >= 0.0,
                "≥ 0 (0 = no clipping)",
            ),
            ("adam.beta1", a.beta1, (0.0..1.0).contains(&a.beta1), "in [0, 1)"),
            ("adam.beta2", a.beta2, (0.0..1.0).contains(&a.beta2), "in [0, 1)"),
            ("adam.eps", a.eps, a.eps > 0.0, "> 0"),
            ("adam.weight_decay", a.weight_decay, a.weight_decay >= 0.0, "≥ 0"),
            (
                "skip_threshold",
                f64::from(self.skip_threshold),
                (0.0..=1.0).contains(&self.skip_threshold),
                "in [0, 1]",
            ),
        ] {
            if !(x.is_finite() && ok) {
                return bad(format!("{key} must be a finite number {domain}, not {x}"));
            }
        }
        if !["f32", "f16", "bf16"].contains(&self.save_dtype.as_str()) {
            return bad(format!("save_dtype '{}' (use f32, f16 or bf16)", self.save_dtype));
        }
        let dmtd_stages = self.stages.iter().filter(|s| s.kind == StageKind::Dmtd).count();
        match (&self.dmtd, dmtd_stages) {
            (None, 0) => {}
            (Some(d), n) if n == self.stages.len() => d.validate()?,
            (None, _) => return bad("a kind = \"dmtd\" stage needs a [dmtd] table".into()),
            (Some(_), 0) => return bad("a [dmtd] table without a kind = \"dmtd\" stage".into()),
            (Some(_), _) => {
                return bad("a run trains either DMTD deltas or FlexiDepth routers: do not mix stage kinds".into())
            }
        }
        let mut names = std::collections::HashSet::new();
        for s in &self.stages {
            check_stage(s)?;
            let adapter_stage = s.kind == StageKind::LocalFit || s.label == Some(LabelKind::Local);
            if self.skip_unit == SkipUnitName::Attention && adapter_stage {
                return bad(format!(
                    "stage '{}' fits or scores an adapter, but the attention unit (MindSkip) has none \
                     (use router_start with label = \"kl\", or train)",
                    s.name
                ));
            }
            if !names.insert(s.name.as_str()) {
                return bad(format!(
                    "two stages are named '{}' (their files would overwrite each other)",
                    s.name
                ));
            }
        }
        Ok(())
    }

    /// Sequences consumed per optimizer step.
    pub fn sequences_per_step(&self) -> usize {
        self.batch_size * self.grad_accum
    }

    /// Optimizer steps of stage `i` over `n_sequences` (an incomplete last batch is dropped, as
    /// `dataloader_drop_last`), at most [`MAX_STAGE_STEPS`].
    pub fn stage_steps(&self, i: usize, n_sequences: usize) -> usize {
        let s = &self.stages[i];
        s.steps
            .unwrap_or_else(|| ((s.epochs * n_sequences as f64) / self.sequences_per_step() as f64).floor() as usize)
            .clamp(1, MAX_STAGE_STEPS)
    }
}

/// Most sequences one optimizer step may take (`batch_size × grad_accum`): far above any real batch, far below what
/// would make the step's list of sequences an allocation failure.
pub const MAX_SEQUENCES_PER_STEP: usize = 1 << 16;
/// Most optimizer steps a stage may take, however given (`steps`, or `epochs` over the data).
pub const MAX_STAGE_STEPS: usize = 100_000_000;
/// Longest stage name: it names files (`{name}.safetensors`, `{name}.replaceability.svg`), well within the 255
/// bytes a file name may have.
pub const MAX_STAGE_NAME: usize = 64;

/// One stage's fields in their domains (see [`TrainConfig::validate`]).
fn check_stage(s: &Stage) -> Result<()> {
    let bad = |m: String| Err(Error::Input(format!("training config: stage '{}': {m}", s.name)));
    if s.name.is_empty()
        || s.name.len() > MAX_STAGE_NAME
        || !s
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(Error::Input(format!(
            "training config: stage name '{}' must be 1 to {MAX_STAGE_NAME} letters, digits, - or _",
            s.name
        )));
    }
    if !(s.alpha >= 0.0 && s.alpha.is_finite()) {
        return bad(format!("alpha must be a finite number ≥ 0, not {}", s.alpha));
    }
    if let Some(lr) = s.lr {
        if !(lr > 0.0 && lr.is_finite()) {
            return bad(format!("lr must be a finite number > 0, not {lr}"));
        }
    }
    if let Some(g) = s.target_gate {
        if !(0.0..1.0).contains(&g) {
            return bad("target_gate must be in [0, 1)".into());
        }
    }
    if let Some(share) = s.skip_share {
        if !(share > 0.0 && share < 1.0) {
            return bad("skip_share must be in (0, 1)".into());
        }
    }
    if s.tokens == Some(0) || (s.tokens == Some(1) && s.kind == StageKind::LocalFit) {
        return bad("needs at least 2 tokens".into());
    }
    if s.fit_epochs.is_some_and(|e| !(1..=MAX_FIT_EPOCHS).contains(&e)) {
        return bad(format!("fit_epochs must be in 1..={MAX_FIT_EPOCHS}"));
    }
    if s.steps.is_some_and(|n| !(1..=MAX_STAGE_STEPS).contains(&n)) {
        return bad(format!("steps must be in 1..={MAX_STAGE_STEPS}"));
    }
    if !(s.epochs > 0.0 && s.epochs <= MAX_EPOCHS) {
        return bad(format!(
            "epochs must be a number in (0, {MAX_EPOCHS}], not {}",
            s.epochs
        ));
    }
    Ok(())
}

/// Most passes over the data a stage may take.
const MAX_EPOCHS: f64 = 1e6;
/// Most epochs of a local fit.
const MAX_FIT_EPOCHS: usize = 100_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stages_and_defaults_and_round_trips() {
        let text = r#"
data = "d.jsonl"
out = "runs/x"
lr = 1e-3
[[stage]]
name = "align"
alpha = 1e-4
[[stage]]
name = "anneal"
alpha = 1e-5
steps = 10
lr = 5e-4
"#;
        let c = TrainConfig::from_toml(Path::new("c.toml"), text).unwrap();
        c.validate().unwrap();
        assert_eq!(c.stages.len(), 2);
        assert_eq!(c.adam.beta2, 0.95);
        assert_eq!(c.loss, LossKind::Lm);
        assert_eq!(c.stage_steps(0, 41), 10); // 41 sequences / 4 per step, last partial batch dropped
        assert_eq!(c.stage_steps(1, 41), 10);
        let again = TrainConfig::from_toml(Path::new("c.toml"), &c.to_toml().unwrap()).unwrap();
        assert_eq!(again, c);
        // Defaults of the new fields are not written, so older runs' config hashes (resume) are unchanged.
        let toml = c.to_toml().unwrap();
        assert!(!toml.contains("kind") && !toml.contains("skip_unit"), "{toml}");
        let e = TrainConfig::from_toml(
            Path::new("c.toml"),
            "data='x'\nout='y'\nbogus=1\n[[stage]]\nname='a'\nalpha=0",
        )
        .unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
    }

    #[test]
    fn attention_unit_takes_router_stages_only() {
        let text = "data = 'd.jsonl'\nout = 'o'\nskip_unit = 'attention'\ngate_scaling = 'hard'\n\
                    [[stage]]\nname = 'routers'\nkind = 'router_start'\nlabel = 'kl'\n";
        let c = TrainConfig::from_toml(Path::new("c.toml"), text).unwrap();
        c.validate().unwrap();
        assert_eq!(c.skip_unit.unit(), flexidepth::depth::SkipUnit::Attention);
        let local = text.replace("label = 'kl'", "label = 'local'");
        let e = TrainConfig::from_toml(Path::new("c.toml"), &local)
            .and_then(|c| c.validate())
            .unwrap_err();
        assert!(e.to_string().contains("attention unit"), "{e}");
    }

    #[test]
    fn parses_the_staged_recipe() {
        let text = r#"
data = "d.jsonl"
out = "runs/x"
skip_unit = "ffn"
gate_scaling = "hard"
[[stage]]
name = "fit"
kind = "local_fit"
tokens = 4096
fit_epochs = 5
target_gate = 0.1
compare_units = true
[[stage]]
name = "routers"
kind = "router_start"
label = "local"
skip_share = 0.3
[[stage]]
name = "align"
alpha = 1e-4
"#;
        let c = TrainConfig::from_toml(Path::new("c.toml"), text).unwrap();
        c.validate().unwrap();
        assert_eq!(c.skip_unit, SkipUnitName::Ffn);
        assert_eq!(c.skip_unit.unit(), flexidepth::depth::SkipUnit::Ffn);
        assert_eq!(c.routing().gate_scaling, flexidepth::depth::GateScaling::Hard);
        let kinds: Vec<StageKind> = c.stages.iter().map(|s| s.kind).collect();
        assert_eq!(kinds, [StageKind::LocalFit, StageKind::RouterStart, StageKind::Train]);
        assert_eq!(c.stages[0].tokens, Some(4096));
        assert_eq!(c.stages[0].fit_epochs, Some(5));
        assert_eq!(c.stages[0].target_gate, Some(0.1));
        assert!(c.stages[0].compare_units);
        assert_eq!(c.stages[1].label, Some(LabelKind::Local));
        assert_eq!(c.stages[1].skip_share, Some(0.3));
        assert_eq!(c.stages[0].alpha, 0.0);
        let again = TrainConfig::from_toml(Path::new("c.toml"), &c.to_toml().unwrap()).unwrap();
        assert_eq!(again, c);
        for bad in [
            text.replace("skip_unit = \"ffn\"", "skip_unit = \"attn\""),
            // The example's local_fit stage has no adapter to fit under the attention unit.
            text.replace("skip_unit = \"ffn\"", "skip_unit = \"attention\""),
            text.replace("gate_scaling = \"hard\"", "gate_scaling = \"soft\""),
            text.replace("kind = \"local_fit\"", "kind = \"magic\""),
            text.replace("target_gate = 0.1", "target_gate = 1.0"),
            text.replace("skip_share = 0.3", "skip_share = 0.0"),
        ] {
            let r = TrainConfig::from_toml(Path::new("c.toml"), &bad).and_then(|c| c.validate());
            assert!(r.is_err(), "accepted: {bad}");
        }
    }
}
