//! The skip frontier (issue 10, item 6): quality against layers (and weight bytes) read per token for a FlexiDepth
//! adapter beside static removal of the same number of layers in ShortGPT's block-influence order.
//!
//! A FlexiDepth point is reached by tuning one `skip_threshold` on **tuning text** (Persuasion chapters
//! [`TUNE_CHAPTERS`], never trained on and disjoint from the held-out text) until the policy uses the budget's
//! layers per token there, or until its perplexity ratio to full depth reaches a target; the point is then
//! measured on the held-out windows with [`depth_quality`]. The threshold is never chosen on held-out text.

use crate::corpus::{paragraphs, read_novel, HELDOUT_FROM_CHAPTER, HELDOUT_NOVEL};
use crate::eval::{depth_quality_vs, DepthQuality, FullReference};
use crate::plot::{stack, Axis, LineChart};
use flexidepth::depth::shortgpt::StaticPrune;
use flexidepth::depth::{DepthPolicy, FlexiDepth, PolicySpec};
use flexidepth::error::{Error, Result};
use flexidepth::model::{Logits, Model};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// Chapters of [`HELDOUT_NOVEL`] that thresholds are tuned on: after its opening (the layer-usage study's
/// favourite) and before the held-out text ([`HELDOUT_FROM_CHAPTER`]).
pub const TUNE_CHAPTERS: std::ops::Range<usize> = 4..HELDOUT_FROM_CHAPTER;

/// The tuning text: the paragraphs of [`TUNE_CHAPTERS`], joined with `"\n"`.
pub fn tuning_text() -> Result<String> {
    let ps: Vec<String> = paragraphs(&read_novel(HELDOUT_NOVEL)?)
        .into_iter()
        .filter(|p| TUNE_CHAPTERS.contains(&p.chapter))
        .map(|p| p.text)
        .collect();
    Ok(ps.join("\n"))
}

/// Mean layers used per position of `windows` under `policy` (one pass per window from an empty cache).
pub fn mean_layers(model: &Model, windows: &[Vec<u32>], policy: &dyn DepthPolicy) -> Result<f64> {
    let bytes = model.layer_bytes();
    let (mut layers, mut rows) = (0.0f64, 0usize);
    for ids in windows {
        let mut cache = model.new_cache(ids.len());
        let out = model.forward_with(ids, &mut cache, Logits::Last, policy)?;
        layers += (0..ids.len()).map(|r| out.plan.layers_used(r, &bytes)).sum::<f64>();
        rows += ids.len();
    }
    if rows == 0 {
        return Err(Error::Input("frontier: no tuning tokens".into()));
    }
    Ok(layers / rows as f64)
}

/// What a threshold is tuned to on the tuning text.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TuneTarget {
    /// Mean layers used per token (e.g. `30 − 4` for a budget of 4 skipped layers).
    Layers(f64),
    /// The largest skip whose perplexity ratio to full depth stays at or below this.
    PplRatio(f64),
}

/// A tuned threshold and what it gave on the tuning text.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Tuned {
    pub skip_threshold: f32,
    /// Mean layers per token on the tuning text.
    pub layers: f64,
    /// Perplexity ratio on the tuning text (tuning by ratio only).
    pub ppl_ratio: Option<f64>,
}

/// Bisect `policy`'s threshold in `[0, 1]` (higher skips more) on `tuning` (its windows, and full depth's
/// log-probabilities on them for a ratio target) for `target`, `iters` halvings.
/// `Layers`: the threshold whose mean layers are closest to the target from above (never fewer layers than asked
/// by more than the last step's change). `PplRatio`: the highest threshold whose ratio is `≤` the target.
pub fn tune_threshold(
    model: &Model,
    tuning: &FullReference,
    policy: FlexiDepth,
    target: TuneTarget,
    iters: usize,
) -> Result<Tuned> {
    let at = |t: f32| FlexiDepth {
        skip_threshold: Some(t),
        ..policy
    };
    let (mut lo, mut hi) = (0f32, 1f32);
    // `lo` always satisfies the target (threshold 0 runs every row: full-depth layers, ratio ≈ 1).
    let mut best = Tuned {
        skip_threshold: 0.0,
        layers: mean_layers(model, tuning.windows(), &at(0.0))?,
        ppl_ratio: None,
    };
    for _ in 0..iters {
        let mid = 0.5 * (lo + hi);
        let (ok, layers, ratio) = match target {
            TuneTarget::Layers(want) => {
                let l = mean_layers(model, tuning.windows(), &at(mid))?;
                (l >= want, l, None)
            }
            TuneTarget::PplRatio(max) => {
                let q = depth_quality_vs(model, tuning, &at(mid))?;
                (q.ppl_ratio <= max, q.mean_layers, Some(q.ppl_ratio))
            }
        };
        if ok {
            lo = mid;
            best = Tuned {
                skip_threshold: mid,
                layers,
                ppl_ratio: ratio,
            };
        } else {
            hi = mid;
        }
    }
    Ok(best)
}

/// One measured point of the frontier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrontierPoint {
    /// `flexi-layer`, `flexi-ffn`, … or `shortgpt`.
    pub method: String,
    /// Layers skipped per token asked for (a budget); `None` for a point tuned by perplexity ratio (the ship
    /// point).
    pub budget: Option<f64>,
    /// The tuned threshold (FlexiDepth points).
    pub tuned: Option<Tuned>,
    /// Quality on the held-out windows.
    pub heldout: DepthQuality,
}

/// FlexiDepth at `budgets` layers skipped per token, each threshold tuned on `tuning`, measured on `heldout`.
#[allow(clippy::too_many_arguments)]
pub fn flexi_points(
    model: &Model,
    method: &str,
    policy: FlexiDepth,
    budgets: &[f64],
    tuning: &FullReference,
    heldout: &FullReference,
    iters: usize,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<FrontierPoint>> {
    let n = model.config.num_hidden_layers as f64;
    let mut out = Vec::new();
    for &b in budgets {
        let tuned = tune_threshold(model, tuning, policy, TuneTarget::Layers(n - b), iters)?;
        let p = FlexiDepth {
            skip_threshold: Some(tuned.skip_threshold),
            ..policy
        };
        let heldout = depth_quality_vs(model, heldout, &p)?;
        if tuned.layers > n - b + 0.5 {
            // Even skipping every routed row it can does not reach the budget (few routed layers, FFN-only unit).
            progress(&format!(
                "{method} budget {b}: not reached — at most {:.2} layers skipped per token on the tuning text",
                n - tuned.layers
            ));
        }
        progress(&format!(
            "{method} budget {b}: threshold {:.5} ({:.2} layers on tuning text) → held-out {:.2} layers, ppl ratio {:.4}",
            tuned.skip_threshold, tuned.layers, heldout.mean_layers, heldout.ppl_ratio
        ));
        out.push(FrontierPoint {
            method: method.into(),
            budget: Some(b),
            tuned: Some(tuned),
            heldout,
        });
    }
    Ok(out)
}

/// ShortGPT's static removal of each budget's layers (block influence measured on `calibration`), on `heldout`.
/// Fractional budgets are skipped (static removal removes whole layers).
pub fn shortgpt_points(
    model: &Model,
    budgets: &[f64],
    calibration: &[u32],
    heldout: &FullReference,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<FrontierPoint>> {
    let mut out = Vec::new();
    for &b in budgets.iter().filter(|b| b.fract() == 0.0 && **b >= 1.0) {
        let p = StaticPrune::shortgpt(model, calibration, b as usize)?;
        let heldout = depth_quality_vs(model, heldout, &p)?;
        progress(&format!(
            "shortgpt remove {b} (layers {:?}): held-out ppl ratio {:.4}",
            p.removed, heldout.ppl_ratio
        ));
        out.push(FrontierPoint {
            method: "shortgpt".into(),
            budget: Some(b),
            tuned: None,
            heldout,
        });
    }
    Ok(out)
}

/// Depth policies named by spec without routers (LaCo's `laco:K`, early exit `exit:L`, ShortGPT's `prune:K`), each
/// built on `calibration` and measured on `heldout`. The budget is the layers the policy removes (`K`, or
/// `layers − L`); the method is the spec's name (`laco`, `exit`, `prune`).
///
/// Errors: a spec that needs routers, or one the model cannot take (see [`PolicySpec::build`]).
pub fn spec_points(
    model: &Model,
    specs: &[PolicySpec],
    calibration: &[u32],
    heldout: &FullReference,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<FrontierPoint>> {
    let n = model.layers.len();
    let mut out = Vec::new();
    for spec in specs {
        if spec.needs_routers() {
            return Err(Error::Input(format!(
                "frontier: '{spec}' is a routing policy; give its depth file with --depth instead"
            )));
        }
        let budget = match *spec {
            PolicySpec::Laco(k) | PolicySpec::Prune(k) => Some(k as f64),
            PolicySpec::Exit(l) => Some(n.saturating_sub(l) as f64),
            _ => None,
        };
        let policy = spec.build(model, calibration)?;
        let heldout = depth_quality_vs(model, heldout, policy.as_ref())?;
        progress(&format!(
            "{spec}: held-out {:.2} layers/token, ppl ratio {:.4}",
            heldout.mean_layers, heldout.ppl_ratio
        ));
        let name = spec.to_string();
        out.push(FrontierPoint {
            method: name.split(':').next().unwrap_or(&name).to_string(),
            budget,
            tuned: None,
            heldout,
        });
    }
    Ok(out)
}

/// The frontier as a markdown table, one row per point.
pub fn markdown(points: &[FrontierPoint]) -> String {
    let mut s = String::from(
        "| method | budget (layers skipped) | threshold | layers/token (tuning) | layers/token (held-out) | \
         weight MB/token | ppl ratio | KL(full ‖ method) nats | top-1 agreement |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for p in points {
        let q = &p.heldout;
        let (t, tl) = match &p.tuned {
            Some(t) => (format!("{:.5}", t.skip_threshold), format!("{:.2}", t.layers)),
            None => ("–".into(), "–".into()),
        };
        let budget = p.budget.map_or("ship".to_string(), |b| b.to_string());
        let _ = writeln!(
            s,
            "| {} | {budget} | {t} | {tl} | {:.2} / {} | {:.2} | {:.4} | {:.4} | {:.3} |",
            p.method,
            q.mean_layers,
            q.num_layers,
            q.mean_weight_bytes / 1e6,
            q.ppl_ratio,
            q.mean_kl,
            q.top1_agreement
        );
    }
    s
}

/// The frontier figure: held-out perplexity ratio against layers skipped per token, and against the share of the
/// layers' weight bytes read, one line per method.
pub fn figure(title: &str, points: &[FrontierPoint]) -> String {
    let mut methods: Vec<&str> = points.iter().map(|p| p.method.as_str()).collect();
    methods.sort_unstable();
    methods.dedup();
    let mut by_layers = LineChart::new(
        &format!("{title}: held-out perplexity ratio vs layers skipped per token"),
        Axis::new("layers skipped per token"),
        Axis::log("perplexity ratio to full depth"),
    );
    let mut by_bytes = LineChart::new(
        &format!("{title}: held-out perplexity ratio vs layer weight bytes read per token"),
        Axis::new("share of full depth's layer weight bytes read"),
        Axis::log("perplexity ratio to full depth"),
    );
    for m in methods {
        let mut pts: Vec<&FrontierPoint> = points.iter().filter(|p| p.method == m).collect();
        pts.sort_by(|a, b| b.heldout.mean_layers.total_cmp(&a.heldout.mean_layers));
        let skipped = |p: &FrontierPoint| p.heldout.num_layers as f64 - p.heldout.mean_layers;
        by_layers = by_layers.with(m, pts.iter().map(|p| (skipped(p), p.heldout.ppl_ratio)).collect());
        let share = |p: &FrontierPoint| p.heldout.mean_weight_bytes / p.heldout.full_weight_bytes.max(1.0);
        by_bytes = by_bytes.with(m, pts.iter().map(|p| (share(p), p.heldout.ppl_ratio)).collect());
    }
    stack(&[by_layers.to_svg(), by_bytes.to_svg()])
}
