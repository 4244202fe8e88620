//! Training curves: the losses, `L_skip` and layers per token of a `flexidepth train` run against the optimizer
//! step, drawn from its log rows as one stacked SVG (`curves.svg` in the run folder).

use crate::plot::{stack, Axis, LineChart};
use flexidepth::error::Result;
use flexidepth_train::log::LogRow;
use std::path::Path;

/// The curves against the optimizer step: losses, `L_skip`, and layers used per token, stacked in one SVG.
pub fn write_training_curves(path: &Path, rows: &[LogRow]) -> Result<()> {
    let series = |f: fn(&LogRow) -> f64| rows.iter().map(|r| (r.step as f64, f(r))).collect::<Vec<_>>();
    let mut losses = LineChart::new("Training loss", Axis::new("optimizer step"), Axis::new("per token"))
        .with("objective", series(|r| r.loss));
    if rows.iter().any(|r| r.lm > 0.0) {
        losses = losses.with("L_lm (cross-entropy)", series(|r| r.lm));
    }
    if rows.iter().any(|r| r.kl > 0.0) {
        losses = losses.with("KL(full ‖ FlexiDepth)", series(|r| r.kl));
    }
    let skip = LineChart::new(
        "L_skip = mean over tokens of (Σ gates)²",
        Axis::new("optimizer step"),
        Axis::new("L_skip"),
    )
    .with("L_skip", series(|r| r.skip));
    let layers = LineChart::new(
        "Layers used per token",
        Axis::new("optimizer step"),
        Axis::new("layers"),
    )
    .with("layers/token", series(|r| r.layers));
    let svg = stack(&[losses.to_svg(), skip.to_svg(), layers.to_svg()]);
    flexidepth::error::write_atomic(path, svg.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_charts_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let row = |step: usize| LogRow {
            step,
            stage: "align".into(),
            stage_step: step,
            lr: 1e-4,
            loss: 2.0 / step as f64,
            lm: 0.1,
            kl: 0.0,
            skip: 123.4,
            layers: 25.5,
            grad_norm: 0.7,
            tokens_per_s: 321.0,
            elapsed_s: 1.5,
        };
        let svg = dir.path().join("curves.svg");
        write_training_curves(&svg, &[row(1), row(2)]).unwrap();
        let text = std::fs::read_to_string(svg).unwrap();
        assert!(text.contains("L_skip") && text.contains("layers/token"));
        assert!(!text.contains("KL("), "a run without KL draws no KL curve");
        assert_eq!(text.matches("<svg").count(), 4);
    }
}
