//! The training objective `L = L_lm + α · L_skip` (spec A4), optionally with distillation against the frozen
//! full-depth model, as sums over tokens: a step divides every term by the tokens of the whole step (all its
//! micro-batches), so gradient accumulation is exact for both terms alike.

use super::forward::{forward, teacher_logits, TrainForward};
use super::ops::{log_softmax, softmax};
use candle_core::Tensor;
use flexidepth::depth::Routing;
use flexidepth::error::{Error, Result};
use flexidepth::model::Model;

/// What trains the model besides `L_skip`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum LossKind {
    /// Next-token cross-entropy on the data (the paper's `L_lm`).
    #[serde(rename = "lm")]
    Lm,
    /// KL(full-depth model ‖ FlexiDepth model) per token: distillation from the frozen teacher.
    #[serde(rename = "kl")]
    Kl,
    /// Both, summed.
    #[serde(rename = "lm+kl")]
    LmKl,
}

impl std::str::FromStr for LossKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "lm" => Ok(LossKind::Lm),
            "kl" => Ok(LossKind::Kl),
            "lm+kl" => Ok(LossKind::LmKl),
            other => Err(Error::Input(format!("unknown loss '{other}' (use lm, kl or lm+kl)"))),
        }
    }
}

/// `Σ_t −log p(target_t)` of `logits: [T, vocab]`.
pub fn lm_sum(logits: &Tensor, targets: &[u32]) -> Result<Tensor> {
    let idx = Tensor::new(targets, logits.device())?.unsqueeze(1)?;
    Ok(log_softmax(logits)?.gather(&idx, 1)?.sum_all()?.neg()?)
}

/// `Σ_t KL(teacher_t ‖ student_t)` in nats; the teacher's logits carry no graph.
pub fn kl_sum(teacher_logits: &Tensor, logits: &Tensor) -> Result<Tensor> {
    let log_t = log_softmax(&teacher_logits.detach())?;
    let p_t = softmax(&teacher_logits.detach())?;
    Ok((p_t * (log_t - log_softmax(logits)?)?)?.sum_all()?)
}

/// `Σ_t (Σ_l w_{t,l})²` over the continuous gates (one `[T]` tensor per routed layer).
pub fn skip_sum(gates: &[Tensor]) -> Result<Tensor> {
    let per_token = Tensor::stack(gates, 0)?.sum(0)?;
    Ok(per_token.sqr()?.sum_all()?)
}

/// One sequence's contribution to a step.
#[derive(Debug)]
pub struct SequenceLoss {
    /// `(weighted loss sums) / step_tokens`, in the graph: its gradients add up to the step's gradient.
    pub objective: Tensor,
    /// Unnormalised sums, for logging.
    pub lm_sum: f64,
    pub kl_sum: f64,
    pub skip_sum: f64,
    /// Tokens scored (`ids.len() − 1`).
    pub tokens: usize,
    /// Layers run, summed over the scored tokens (unrouted layers count fully).
    pub layers_sum: f64,
}

/// How a step weighs the terms.
#[derive(Debug, Clone, Copy)]
pub struct Objective {
    pub kind: LossKind,
    pub alpha: f64,
    /// Threshold, skip unit and gate scaling of the training forward.
    pub routing: Routing,
}

/// Forward one sequence and build its share of the step objective, normalised by `step_tokens`.
pub fn sequence_loss(model: &Model, ids: &[u32], obj: &Objective, step_tokens: usize) -> Result<SequenceLoss> {
    if ids.len() < 2 {
        return Err(Error::Input("a training sequence needs at least 2 tokens".into()));
    }
    let inputs = &ids[..ids.len() - 1];
    let targets = &ids[1..];
    let TrainForward {
        logits,
        gates,
        layers_sum,
        prefix,
        first_routed,
        ..
    } = forward(model, inputs, obj.routing)?;
    let tokens = targets.len();
    let zero = || Tensor::zeros((), candle_core::DType::F32, logits.device());
    let lm = match obj.kind {
        LossKind::Lm | LossKind::LmKl => lm_sum(&logits, targets)?,
        LossKind::Kl => zero()?,
    };
    let kl = match obj.kind {
        LossKind::Kl | LossKind::LmKl => kl_sum(&teacher_logits(model, prefix, first_routed)?, &logits)?,
        LossKind::Lm => zero()?,
    };
    let skip = if gates.is_empty() { zero()? } else { skip_sum(&gates)? };
    let objective = (((&lm + &kl)? + (&skip * obj.alpha)?)? / step_tokens as f64)?;
    Ok(SequenceLoss {
        objective,
        lm_sum: lm.to_scalar::<f32>()? as f64,
        kl_sum: kl.to_scalar::<f32>()? as f64,
        skip_sum: skip.to_scalar::<f32>()? as f64,
        tokens,
        layers_sum,
    })
}
