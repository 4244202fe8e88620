//! The training log: one row per optimizer step, kept as a CSV (rewritten atomically, so a resumed run can cut it
//! back to its checkpoint) and drawn as an SVG of the curves.

use flexidepth::error::{Error, Result};
use std::path::Path;

/// One optimizer step.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRow {
    /// Optimizer steps done in the run, this one included.
    pub step: usize,
    pub stage: String,
    pub stage_step: usize,
    pub lr: f64,
    /// The step's objective `L_lm (+ KL) + α · L_skip`.
    pub loss: f64,
    /// Mean next-token cross-entropy per token (0 with `--loss kl`).
    pub lm: f64,
    /// Mean KL(full ‖ FlexiDepth) per token (0 with `--loss lm`).
    pub kl: f64,
    /// `L_skip`: mean over tokens of (Σ routed gates)².
    pub skip: f64,
    /// Mean layers run per token.
    pub layers: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    pub tokens_per_s: f64,
    pub elapsed_s: f64,
}

const HEADER: &str = "step,stage,stage_step,lr,loss,lm,kl,skip,layers,grad_norm,tokens_per_s,elapsed_s";

/// Floats are written in Rust's shortest round-trip form, so a resumed run reads back exactly what it logged.
pub fn write_csv(path: &Path, rows: &[LogRow]) -> Result<()> {
    let mut s = String::from(HEADER);
    s.push('\n');
    for r in rows {
        s.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{},{}\n",
            r.step,
            r.stage,
            r.stage_step,
            r.lr,
            r.loss,
            r.lm,
            r.kl,
            r.skip,
            r.layers,
            r.grad_norm,
            r.tokens_per_s,
            r.elapsed_s
        ));
    }
    flexidepth::error::write_atomic(path, s.as_bytes())
}

pub fn read_csv(path: &Path) -> Result<Vec<LogRow>> {
    let text = flexidepth::error::read_to_string(path)?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        let bad = || Error::bad_file(path, format!("line {}: not a training log row", i + 1));
        let f: Vec<&str> = line.split(',').collect();
        if f.len() != 12 {
            return Err(bad());
        }
        let num = |k: usize| f[k].parse::<f64>().map_err(|_| bad());
        rows.push(LogRow {
            step: f[0].parse().map_err(|_| bad())?,
            stage: f[1].to_string(),
            stage_step: f[2].parse().map_err(|_| bad())?,
            lr: num(3)?,
            loss: num(4)?,
            lm: num(5)?,
            kl: num(6)?,
            skip: num(7)?,
            layers: num(8)?,
            grad_norm: num(9)?,
            tokens_per_s: num(10)?,
            elapsed_s: num(11)?,
        });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_round_trips_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let row = |step: usize| LogRow {
            step,
            stage: "align".into(),
            stage_step: step,
            lr: 1e-4 / 3.0,
            loss: 2.0 / 3.0,
            lm: 0.1,
            kl: 0.0,
            skip: 123.456789,
            layers: 25.5,
            grad_norm: 0.7,
            tokens_per_s: 321.0,
            elapsed_s: 1.5,
        };
        let rows = vec![row(1), row(2)];
        let p = dir.path().join("log.csv");
        write_csv(&p, &rows).unwrap();
        assert_eq!(read_csv(&p).unwrap(), rows);
        std::fs::write(&p, "header\n1,a,2\n").unwrap();
        assert!(read_csv(&p).unwrap_err().to_string().contains("line 2"));
    }
}
