//! The replaceability figure of a local fit (issue 10): per routed layer, the held-out relative error of the
//! best adapter fit (one line per skip unit) beside ShortGPT's block influence, over the layer index; and the error
//! against block influence as a labelled scatter. Rows come from `flexidepth_train::staged::LocalFitReport`.

use crate::plot::{stack, Axis, LineChart, Scatter};
use flexidepth::error::{Error, Result};
use flexidepth_train::staged::LocalFitReport;
use std::path::Path;

/// The figure as one SVG document (two stacked charts).
pub fn figure(title: &str, r: &LocalFitReport) -> String {
    let mut units: Vec<&str> = r.rows.iter().map(|x| x.unit).collect();
    units.sort_unstable();
    units.dedup();
    let mut lines = LineChart::new(
        &format!("{title}: held-out relative error of the fitted adapter, and block influence"),
        Axis::new("layer"),
        Axis::log("relative error / block influence"),
    );
    for u in &units {
        let pts = r
            .rows
            .iter()
            .filter(|x| x.unit == *u)
            .map(|x| (x.layer_idx as f64, x.rel_err))
            .collect();
        lines = lines.with(&format!("{u}: adapter error"), pts);
    }
    let mut bi: Vec<(f64, f64)> = r
        .rows
        .iter()
        .filter(|x| x.unit == units.first().copied().unwrap_or("layer"))
        .map(|x| (x.layer_idx as f64, x.block_influence))
        .collect();
    bi.sort_by(|a, b| a.0.total_cmp(&b.0));
    lines = lines.with("block influence (ShortGPT)", bi);
    let mut scatter = Scatter::new(
        &format!("{title}: adapter error against block influence (label: unit, layer)"),
        Axis::log("block influence"),
        Axis::log("held-out relative error"),
    );
    for x in &r.rows {
        scatter = scatter.with(x.block_influence, x.rel_err, &format!("{} {}", x.unit, x.layer_idx));
    }
    stack(&[lines.to_svg(), scatter.to_svg()])
}

/// Write [`figure`] to `path` atomically.
pub fn write_figure(path: &Path, title: &str, r: &LocalFitReport) -> Result<()> {
    if r.rows.is_empty() {
        return Err(Error::Input("replaceability: no rows to draw".into()));
    }
    flexidepth::error::write_atomic(path, figure(title, r).as_bytes())
}
