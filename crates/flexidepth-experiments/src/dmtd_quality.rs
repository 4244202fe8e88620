//! Teacher-forced quality of DMTD (spec B3/B4) on held-out text: every window runs once through the
//! cyclical-masking forward ([`flexidepth::dmtd::masked`]; the cycle anchored at the window's first token), and
//! its logits are compared at every position with the full-depth model's — perplexity, KL(full ‖ DMTD) and
//! top-1 agreement, overall and **per cycle offset** (offset 0: the cycle head; offset k: the k-th token
//! produced from the decoding layers alone). The full-depth logits are the base model's own forward (without
//! any merged DMTD deltas).
//!
//! Teacher forcing scores each position given the true prefix; cyclical decoding then differs from this pass
//! only in that it feeds back its own tokens (and in the prefill convention, spec B4.1).

use candle_core::{DType, Tensor, D};
use flexidepth::depth::FullDepth;
use flexidepth::dmtd::masked::cyclical_forward;
use flexidepth::dmtd::DmtdLayout;
use flexidepth::error::{Error, Result};
use flexidepth::model::ops::Fused;
use flexidepth::model::{Logits, Model};
use serde::Serialize;
use std::fmt::Write as _;

/// The figures of one cycle offset (or of all positions).
#[derive(Debug, Clone, Default, Serialize)]
pub struct OffsetQuality {
    /// Position within the cycle, `p mod τ` (`None` for all positions).
    pub offset: Option<usize>,
    /// Positions scored.
    pub n: usize,
    pub full_ppl: f64,
    pub dmtd_ppl: f64,
    /// `dmtd_ppl / full_ppl`.
    pub ppl_ratio: f64,
    /// Mean KL(full ‖ DMTD), nats per token.
    pub mean_kl: f64,
    /// Share of positions whose arg-max token is the full model's.
    pub top1_agreement: f64,
}

/// Teacher-forced DMTD quality against full depth.
#[derive(Debug, Clone, Serialize)]
pub struct DmtdQuality {
    pub num_encoding_layers: usize,
    pub num_thinking_layers: usize,
    pub num_decoding_layers: usize,
    pub mtp_horizon: usize,
    pub windows: usize,
    pub all: OffsetQuality,
    /// One row per offset `0..τ`.
    pub offsets: Vec<OffsetQuality>,
}

#[derive(Default, Clone)]
struct Sums {
    n: usize,
    nll_full: f64,
    nll_dmtd: f64,
    kl: f64,
    agree: usize,
}

impl Sums {
    fn quality(&self, offset: Option<usize>) -> OffsetQuality {
        let n = self.n.max(1) as f64;
        let (f, d) = (self.nll_full / n, self.nll_dmtd / n);
        OffsetQuality {
            offset,
            n: self.n,
            full_ppl: f.exp(),
            dmtd_ppl: d.exp(),
            ppl_ratio: (d - f).exp(),
            mean_kl: self.kl / n,
            top1_agreement: self.agree as f64 / n,
        }
    }
}

/// Per-row `(−log p_full(target), −log p_dmtd(target), KL(full ‖ dmtd), same arg-max)` of one window.
type RowStats = (Vec<f32>, Vec<f32>, Vec<f32>, Vec<u8>);

fn window_rows(base: &Model, model: &Model, ids: &[u32], layout: &DmtdLayout) -> Result<RowStats> {
    let inputs = &ids[..ids.len() - 1];
    let targets = Tensor::new(&ids[1..], model.device())?.unsqueeze(1)?;
    let pass = cyclical_forward(model, &Fused, &Fused, &[inputs], layout)?;
    let full = base.forward_ops(&Fused, inputs, None, Logits::All, &FullDepth)?.logits;
    let logp = |logits: &Tensor| -> Result<Tensor> {
        Ok(candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32)?, D::Minus1)?)
    };
    let (lp, lq) = (logp(&full)?, logp(&model.head(&Fused, &pass.hidden)?)?);
    let nll = |l: &Tensor| -> Result<Vec<f32>> { Ok(l.gather(&targets, 1)?.squeeze(1)?.neg()?.to_vec1()?) };
    let kl: Vec<f32> = (lp.exp()? * (&lp - &lq)?)?.sum(D::Minus1)?.to_vec1()?;
    let same: Vec<u8> = lp.argmax(D::Minus1)?.eq(&lq.argmax(D::Minus1)?)?.to_vec1()?;
    Ok((nll(&lp)?, nll(&lq)?, kl, same))
}

/// Quality of `model` (the base with any DMTD deltas merged) decoded cyclically under `layout`, against `base`
/// (the unmodified model) at full depth, teacher-forced on `windows` (each scored from its own start, every
/// position but the first predicted). Without deltas, pass the same model twice.
///
/// # Errors
/// [`Error::Input`] when there is no window, a window has fewer than 2 tokens, no window has τ + 1 tokens (an offset
/// would score nothing), or the layout does not fit.
pub fn dmtd_quality(base: &Model, model: &Model, windows: &[Vec<u32>], layout: &DmtdLayout) -> Result<DmtdQuality> {
    if windows.is_empty() {
        return Err(Error::Input("DMTD quality needs at least one window".into()));
    }
    let tau = layout.mtp_horizon;
    // A window of n tokens predicts n − 1 positions: with fewer than τ, some offsets would score nothing (and
    // show a meaningless ratio of 1).
    let longest = windows.iter().map(Vec::len).max().unwrap_or(0);
    if longest < tau + 1 {
        return Err(Error::Input(format!(
            "DMTD τ = {tau} scores every cycle offset, which needs a window of at least {} tokens; the longest \
             here has {longest} (give more text, a larger --max-tokens or --ctx-size, or a smaller τ)",
            tau + 1
        )));
    }
    let (mut all, mut per) = (Sums::default(), vec![Sums::default(); tau]);
    for ids in windows {
        if ids.len() < 2 {
            return Err(Error::Input(format!(
                "every window needs at least 2 tokens, one has {}",
                ids.len()
            )));
        }
        let (nf, nd, kl, same) = window_rows(base, model, ids, layout)?;
        for p in 0..nf.len() {
            for s in [&mut all, &mut per[p % tau]] {
                s.n += 1;
                s.nll_full += nf[p] as f64;
                s.nll_dmtd += nd[p] as f64;
                s.kl += kl[p] as f64;
                s.agree += same[p] as usize;
            }
        }
    }
    Ok(DmtdQuality {
        num_encoding_layers: layout.num_encoding_layers,
        num_thinking_layers: layout.num_thinking_layers,
        num_decoding_layers: layout.num_decoding_layers,
        mtp_horizon: tau,
        windows: windows.len(),
        all: all.quality(None),
        offsets: per.iter().enumerate().map(|(k, s)| s.quality(Some(k))).collect(),
    })
}

/// The per-offset table as markdown (one row per offset, then all positions).
pub fn dmtd_quality_markdown(q: &DmtdQuality) -> String {
    let mut s = format!(
        "DMTD τ = {}, E{} T{} D{}: teacher-forced over {} windows, {} positions\n\n\
         | offset | positions | full ppl | DMTD ppl | ppl ratio | KL(full‖DMTD) | top-1 agreement |\n\
         |---:|---:|---:|---:|---:|---:|---:|\n",
        q.mtp_horizon, q.num_encoding_layers, q.num_thinking_layers, q.num_decoding_layers, q.windows, q.all.n
    );
    for o in q.offsets.iter().chain(std::iter::once(&q.all)) {
        let label = o.offset.map_or("all".to_string(), |k| k.to_string());
        let _ = writeln!(
            s,
            "| {label} | {} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} |",
            o.n, o.full_ppl, o.dmtd_ppl, o.ppl_ratio, o.mean_kl, o.top1_agreement
        );
    }
    s
}
