//! `flexidepth eval`'s outputs: lm-evaluation-harness's markdown results table, the cost table (layers and weight
//! bytes per token under the policy, wall time), and the JSON report with every item.

use super::run::TaskResult;

/// The whole run, as the JSON output writes it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EvalReport {
    pub model: String,
    /// The depth policy's label (`full`, `flexi:0.5`, ...).
    pub policy: String,
    /// The depth file attached, if any.
    pub depth_file: Option<String>,
    pub limit: Option<usize>,
    pub seed: u64,
    pub chat: bool,
    /// Generation requests decoded together (`--batch-size`).
    pub batch_size: usize,
    pub num_layers: usize,
    /// Weight bytes of all layers at full depth, per token (what `weight_bytes_per_token` is a share of).
    pub full_weight_bytes_per_token: f64,
    /// Seconds spent building the policy before the first task (ShortGPT's influence pass, LaCo's merges, a
    /// threshold's tuning); not part of any task's wall time.
    pub policy_setup_s: f64,
    pub results: Vec<TaskResult>,
}

/// A score as the harness prints it (4 decimals); `N/A` for a missing standard error.
fn fmt(x: Option<f64>) -> String {
    match x {
        Some(v) if v.is_finite() => format!("{v:.4}"),
        _ => "N/A".to_string(),
    }
}

/// The harness's results table: `|Tasks|Version|Filter|n-shot|Metric| |Value| |Stderr|`, one row per metric, the
/// task named on its first row only.
pub fn results_table(results: &[TaskResult]) -> String {
    let mut s = String::from("|Tasks|Version|Filter|n-shot|Metric| |Value| |Stderr|\n");
    s += "|---|---|---|---:|---|---|---:|---|---:|\n";
    for r in results {
        for (i, m) in r.metrics.iter().enumerate() {
            let (task, version, shots) = if i == 0 {
                (r.task.name().to_string(), r.version.clone(), r.n_shot.to_string())
            } else {
                (String::new(), String::new(), String::new())
            };
            s += &format!(
                "|{task}|{version}|{}|{shots}|{}|↑|{}|±|{}|\n",
                m.filter,
                m.metric,
                fmt(Some(m.value)),
                fmt(m.stderr)
            );
        }
    }
    s
}

/// Cost per task under the policy: items, tokens processed, layers per token (of `num_layers`), layer weight MB
/// per token (and its share of full depth's), wall time.
pub fn cost_table(results: &[TaskResult], num_layers: usize, full_bytes: f64) -> String {
    let mut s = String::from("|Tasks|Items|Tokens|Layers/token|Weight MB/token|of full|Wall s|\n");
    s += "|---|---:|---:|---:|---:|---:|---:|\n";
    for r in results {
        s += &format!(
            "|{}|{}|{}|{:.2} of {num_layers}|{:.2}|{:.1}%|{:.1}|\n",
            r.task.name(),
            r.n_items,
            r.cost.tokens,
            r.layers_per_token,
            r.weight_bytes_per_token / 1e6,
            100.0 * r.weight_bytes_per_token / full_bytes.max(1.0),
            r.wall_s
        );
    }
    s
}
