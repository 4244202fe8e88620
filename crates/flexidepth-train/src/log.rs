//! The training log: one row per optimizer step, kept as a CSV (rewritten atomically, so a resumed run can cut it
//! back to its checkpoint) and drawn as an SVG of the curves.

use flexidepth::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One optimizer step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogRow {
    /// Optimizer steps done in the run, this one included.
    pub step: usize,
    /// The training stage's name.
    pub stage: String,
    /// Optimizer steps done in this stage, this one included.
    pub stage_step: usize,
    /// Learning rate of the step.
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
    /// Training tokens per second of the step.
    pub tokens_per_s: f64,
    /// Seconds since the run started.
    pub elapsed_s: f64,
}

/// The CSV header: [`LogRow`]'s fields in order.
const HEADER: [&str; 12] = [
    "step",
    "stage",
    "stage_step",
    "lr",
    "loss",
    "lm",
    "kl",
    "skip",
    "layers",
    "grad_norm",
    "tokens_per_s",
    "elapsed_s",
];

/// Write the log atomically. Floats are written in their shortest round-trip form, so a resumed run reads back
/// exactly what it logged.
pub fn write_csv(path: &Path, rows: &[LogRow]) -> Result<()> {
    let csv_error = |e: csv::Error| Error::Input(format!("cannot write {}: {e}", path.display()));
    let mut w = csv::WriterBuilder::new().has_headers(false).from_writer(Vec::new());
    w.write_record(HEADER).map_err(csv_error)?;
    for r in rows {
        w.serialize(r).map_err(csv_error)?;
    }
    let bytes = w
        .into_inner()
        .map_err(|e| Error::Input(format!("cannot write {}: {e}", path.display())))?;
    flexidepth::error::write_atomic(path, &bytes)
}

/// Read a log written by [`write_csv`]; a bad row is an error naming its line.
pub fn read_csv(path: &Path) -> Result<Vec<LogRow>> {
    let text = flexidepth::error::read_to_string(path)?;
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    reader
        .deserialize::<LogRow>()
        .map(|row| {
            row.map_err(|e| {
                let line = e.position().map_or(String::new(), |p| format!("line {}: ", p.line()));
                let column = match e.kind() {
                    csv::ErrorKind::Deserialize { err, .. } => err
                        .field()
                        .and_then(|i| HEADER.get(i as usize))
                        .map_or(String::new(), |name| format!(", column '{name}'")),
                    _ => String::new(),
                };
                Error::bad_file(path, format!("{line}not a training log row{column} ({e})"))
            })
        })
        .collect()
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
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(text.lines().next().unwrap(), HEADER.join(","));
        write_csv(&p, &[]).unwrap();
        assert!(read_csv(&p).unwrap().is_empty());
        std::fs::write(&p, "header\n1,a,2\n").unwrap();
        assert!(read_csv(&p).unwrap_err().to_string().contains("line 2"));
        let mut text = format!("{}\n", HEADER.join(","));
        text += "1,align,1,0,1.5,1,0,2,25,0.5,100,1.5\n";
        text += "2,align,2,0.1,x,1,0,2,25,0.5,100,3\n";
        std::fs::write(&p, text).unwrap();
        let e = read_csv(&p).unwrap_err().to_string();
        assert!(e.contains("line 3") && e.contains("column 'loss'"), "{e}");
    }

    /// The committed training log (written by the hand-made writer before the `csv` crate) still reads, and
    /// writing what was read gives back the same numbers.
    #[test]
    fn reads_the_committed_log() {
        let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../adapters/smollm2-135m-instruct/log.csv");
        let rows = read_csv(&committed).unwrap();
        assert_eq!(rows.len(), 80);
        assert_eq!(rows[0].stage, "align");
        assert_eq!(rows[1].lr, 0.0003333333333333333);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log.csv");
        write_csv(&p, &rows).unwrap();
        assert_eq!(read_csv(&p).unwrap(), rows);
    }
}
