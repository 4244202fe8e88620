//! The grid of `flexidepth compare`: budgets ("skip k layers"), the methods compared at each, one cell per
//! (method, budget), and the output folder that makes a grid resumable. Every finished cell is written atomically
//! to `DIR/cells/<cell>.json` (its summary, read back on a rerun) beside `DIR/cells/<cell>.items.json` (every
//! item's prompt, output and scores); `DIR/args.json` holds the arguments the grid was started with, and a rerun
//! with other arguments is refused instead of mixing two grids.

use flexidepth::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A budget: the fraction of the model's layers skipped per token, written `1/8` or `0.125`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Budget {
    /// As the user wrote it (trimmed).
    pub text: String,
    /// In `(0, 1]`.
    pub fraction: f64,
}

impl std::str::FromStr for Budget {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let text = s.trim();
        let bad = |why: &str| Error::Input(format!("bad budget '{text}': {why}"));
        let number = |x: &str| -> Result<f64> {
            x.trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| bad("expected a fraction of the layers such as 1/8 or 0.125"))
        };
        let fraction = match text.split_once('/') {
            Some((a, b)) => {
                let (a, b) = (number(a)?, number(b)?);
                if b == 0.0 {
                    return Err(bad("division by zero"));
                }
                a / b
            }
            None => number(text)?,
        };
        if fraction <= 0.0 {
            return Err(bad("a budget skips some layers: it must be above 0"));
        }
        if fraction > 1.0 {
            return Err(bad("a budget is a fraction of the layers: it must be at most 1"));
        }
        Ok(Budget {
            text: text.to_string(),
            fraction,
        })
    }
}

impl Budget {
    /// Layers skipped per token on a model of `num_layers`: `round(fraction × num_layers)` (halves away from zero:
    /// 1/4 of 30 = 7.5 → 8).
    ///
    /// Errors: a budget that rounds to 0 layers, or to all of them (nothing would run).
    pub fn skipped_layers(&self, num_layers: usize) -> Result<usize> {
        let exact = self.fraction * num_layers as f64;
        let k = exact.round() as usize;
        if k == 0 {
            return Err(Error::Input(format!(
                "budget {} of {num_layers} layers is {exact:.2} layers, which rounds to 0: use a larger budget",
                self.text
            )));
        }
        if k >= num_layers {
            return Err(Error::Input(format!(
                "budget {} of {num_layers} layers skips {k}: at least one layer must run",
                self.text
            )));
        }
        Ok(k)
    }
}

/// The methods of the paper's comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// The base model (once per grid).
    Full,
    /// LayerSkip-style early exit after `L − k` layers (the final norm and head after it; no LayerSkip training).
    LayerSkip,
    /// ShortGPT: the `k` layers of lowest block influence removed.
    ShortGpt,
    /// LaCo: `k` layers merged into earlier ones.
    Laco,
    /// MindSkip: attention-only routers, threshold tuned to `k` layers per token.
    MindSkip,
    /// FlexiDepth: the shipped routers and adapters, threshold tuned to `k` layers per token.
    FlexiDepth,
}

impl Method {
    /// The short name used in file names and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Method::Full => "full",
            Method::LayerSkip => "layerskip",
            Method::ShortGpt => "shortgpt",
            Method::Laco => "laco",
            Method::MindSkip => "mindskip",
            Method::FlexiDepth => "flexidepth",
        }
    }

    /// The name the paper's table gives the method.
    pub fn paper_name(self) -> &'static str {
        match self {
            Method::Full => "Vanilla",
            Method::LayerSkip => "LayerSkip",
            Method::ShortGpt => "ShortGPT",
            Method::Laco => "LaCo",
            Method::MindSkip => "MindSkip",
            Method::FlexiDepth => "FlexiDepth",
        }
    }
}

/// One cell: a method at a number of skipped layers (0 for full depth).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CellKey {
    pub method: Method,
    pub skipped: usize,
}

impl CellKey {
    /// `full`, or `<method>-skip<k>`: the cell's file stem.
    pub fn stem(&self) -> String {
        match self.method {
            Method::Full => "full".into(),
            m => format!("{}-skip{}", m.name(), self.skipped),
        }
    }
}

/// The cells of a grid in run order: full depth, then per budget the paper's rows (those in `methods`, in the
/// paper's order). `skipped` is deduplicated, keeping its order.
pub fn grid_cells(skipped: &[usize], methods: &[Method]) -> Vec<CellKey> {
    let mut out = vec![CellKey {
        method: Method::Full,
        skipped: 0,
    }];
    let order = [
        Method::LayerSkip,
        Method::ShortGpt,
        Method::Laco,
        Method::MindSkip,
        Method::FlexiDepth,
    ];
    for (i, &k) in skipped.iter().enumerate() {
        if skipped[..i].contains(&k) {
            continue;
        }
        out.extend(
            order
                .iter()
                .filter(|m| methods.contains(m))
                .map(|&method| CellKey { method, skipped: k }),
        );
    }
    out
}

/// One metric of one task, as eval reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricScore {
    pub filter: String,
    pub metric: String,
    pub value: f64,
    pub stderr: Option<f64>,
}

/// One task's result in a cell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskScore {
    pub task: String,
    pub n_items: usize,
    pub metrics: Vec<MetricScore>,
    /// Token rows the model processed for the task, Σ layers used and Σ layer weight bytes read over them.
    pub tokens: usize,
    pub layers: f64,
    pub weight_bytes: f64,
    pub wall_s: f64,
}

/// A short decode timing of the cell's policy against full depth, interleaved (full, policy, full, policy, ...).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DecodeTiming {
    pub rounds: usize,
    /// Greedy decode steps per run, after a prefilled context.
    pub tokens: usize,
    /// Median tokens/s of full depth and of the policy.
    pub full_tps: f64,
    pub policy_tps: f64,
    /// Median over rounds of policy tokens/s over the same round's full-depth tokens/s.
    pub speedup: f64,
}

/// A finished cell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    pub key: CellKey,
    /// The policy's label (`exit:26`, `prune:4`, `flexi-ffn:0.61`, ...).
    pub policy: String,
    /// For tuned methods, the threshold and the layers per token it gave on the tuning text.
    pub threshold: Option<f32>,
    pub tuning_layers: Option<f64>,
    /// Anything the table should say about the cell (a budget not reached, ...).
    pub note: Option<String>,
    /// Seconds to build the policy (ShortGPT's influence, LaCo's merges, a threshold's tuning).
    pub setup_s: f64,
    pub tasks: Vec<TaskScore>,
    pub decode: Option<DecodeTiming>,
    /// Generation requests decoded together (`--batch-size`; not part of the grid's arguments, so recorded per
    /// cell; cells written before batching existed ran one at a time).
    #[serde(default = "one")]
    pub batch_size: usize,
}

fn one() -> usize {
    1
}

impl Cell {
    fn sums(&self) -> (usize, f64, f64) {
        self.tasks.iter().fold((0, 0.0, 0.0), |(t, l, b), s| {
            (t + s.tokens, l + s.layers, b + s.weight_bytes)
        })
    }

    /// Mean layers used per processed token over all tasks (token-weighted).
    pub fn layers_per_token(&self) -> f64 {
        let (t, l, _) = self.sums();
        l / t.max(1) as f64
    }

    /// Mean layer weight bytes read per processed token over all tasks (token-weighted; head and embedding not
    /// counted, as in eval).
    pub fn bytes_per_token(&self) -> f64 {
        let (t, _, b) = self.sums();
        b / t.max(1) as f64
    }

    /// The value of `(filter, metric)` for `task`, if the cell has it.
    pub fn score(&self, task: &str, (filter, metric): (&str, &str)) -> Option<f64> {
        let t = self.tasks.iter().find(|t| t.task == task)?;
        t.metrics
            .iter()
            .find(|m| m.filter == filter && m.metric == metric)
            .map(|m| m.value)
    }
}

/// The output folder of a grid.
pub struct GridDir {
    dir: PathBuf,
}

/// `DIR/args.json`.
pub const ARGS_FILE: &str = "args.json";

impl GridDir {
    /// Open (or start) the grid in `dir` for the arguments `args` (any JSON object naming everything a cell's
    /// result depends on). A folder started with other arguments is refused, naming each difference.
    ///
    /// Errors: the folder cannot be created, its `args.json` is unreadable, or its arguments differ.
    pub fn open(dir: &Path, args: &serde_json::Value) -> Result<Self> {
        let cells = dir.join("cells");
        std::fs::create_dir_all(&cells).map_err(|e| Error::io(&cells, e))?;
        let path = dir.join(ARGS_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let old: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
                    Error::Input(format!(
                        "{} is not JSON ({e}); remove it or use another folder",
                        path.display()
                    ))
                })?;
                let diffs = differences(&old, args);
                if !diffs.is_empty() {
                    return Err(Error::Input(format!(
                        "{} holds a grid started with other arguments ({}); rerun with the same arguments to \
                         resume it, or give another output folder",
                        dir.display(),
                        diffs.join("; ")
                    )));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut bytes = serde_json::to_vec_pretty(args).map_err(|e| Error::Input(e.to_string()))?;
                bytes.push(b'\n');
                flexidepth::error::write_atomic(&path, &bytes)?;
            }
            Err(e) => return Err(Error::io(&path, e)),
        }
        Ok(GridDir { dir: dir.to_path_buf() })
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn cell_path(&self, key: &CellKey) -> PathBuf {
        self.dir.join("cells").join(format!("{}.json", key.stem()))
    }

    /// The finished cell `key`, if an earlier run wrote it.
    ///
    /// Errors: the file exists but is not a cell (written by something else): remove it to rerun the cell.
    pub fn load(&self, key: &CellKey) -> Result<Option<Cell>> {
        let path = self.cell_path(key);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(&path, e)),
        };
        let cell: Cell = serde_json::from_slice(&bytes).map_err(|e| {
            Error::Input(format!(
                "{} is not a finished cell ({e}); remove it to rerun the cell",
                path.display()
            ))
        })?;
        if cell.key != *key {
            return Err(Error::Input(format!(
                "{} holds cell {:?}, not {key:?}",
                path.display(),
                cell.key
            )));
        }
        Ok(Some(cell))
    }

    /// The cells of `cells` an earlier (or a concurrent) run finished, in order, and the keys of the others.
    ///
    /// Errors: as [`GridDir::load`].
    pub fn finished(&self, cells: &[CellKey]) -> Result<(Vec<Cell>, Vec<CellKey>)> {
        let (mut done, mut missing) = (Vec::new(), Vec::new());
        for key in cells {
            match self.load(key)? {
                Some(cell) => done.push(cell),
                None => missing.push(*key),
            }
        }
        Ok((done, missing))
    }

    /// Write a finished cell: its items first, then its summary (whose presence marks the cell done), each
    /// atomically.
    pub fn save(&self, cell: &Cell, items_json: &[u8]) -> Result<()> {
        let items = self.dir.join("cells").join(format!("{}.items.json", cell.key.stem()));
        flexidepth::error::write_atomic(&items, items_json)?;
        let mut bytes = serde_json::to_vec_pretty(cell).map_err(|e| Error::Input(e.to_string()))?;
        bytes.push(b'\n');
        flexidepth::error::write_atomic(&self.cell_path(&cell.key), &bytes)
    }
}

/// `field: was A, now B` for each top-level field of two JSON objects that differs.
fn differences(old: &serde_json::Value, new: &serde_json::Value) -> Vec<String> {
    let empty = serde_json::Map::new();
    let (a, b) = (old.as_object().unwrap_or(&empty), new.as_object().unwrap_or(&empty));
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    let show = |v: Option<&serde_json::Value>| v.map_or("absent".to_string(), |v| v.to_string());
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| format!("{k}: was {}, now {}", show(a.get(k)), show(b.get(k))))
        .collect()
}

/// Computes one cell: the finished cell and its items JSON.
pub type CellRunner<'a> = dyn FnMut(&CellKey) -> Result<(Cell, Vec<u8>)> + 'a;

/// Run the grid: every cell of `cells` in order, skipping those `grid` already holds; `run` computes a cell and
/// returns it with its items JSON; `progress` hears one line per cell. Returns every cell (earlier and new), in
/// the order of `cells`.
pub fn run_grid(
    grid: &GridDir,
    cells: &[CellKey],
    run: &mut CellRunner,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<Cell>> {
    let mut out = Vec::with_capacity(cells.len());
    for (i, key) in cells.iter().enumerate() {
        let at = format!("cell {}/{} {}", i + 1, cells.len(), key.stem());
        if let Some(done) = grid.load(key)? {
            progress(&format!("{at}: finished in an earlier run, kept"));
            out.push(done);
            continue;
        }
        progress(&format!("{at}: running"));
        let start = std::time::Instant::now();
        let (cell, items) = run(key)?;
        grid.save(&cell, &items)?;
        progress(&format!(
            "{at}: done in {:.1} s ({})",
            start.elapsed().as_secs_f64(),
            cell.policy
        ));
        out.push(cell);
    }
    Ok(out)
}

impl From<&crate::tasks::run::TaskResult> for TaskScore {
    fn from(r: &crate::tasks::run::TaskResult) -> Self {
        TaskScore {
            task: r.task.name().to_string(),
            n_items: r.n_items,
            metrics: r
                .metrics
                .iter()
                .map(|m| MetricScore {
                    filter: m.filter.clone(),
                    metric: m.metric.clone(),
                    value: m.value,
                    stderr: m.stderr,
                })
                .collect(),
            tokens: r.cost.tokens,
            layers: r.cost.layers,
            weight_bytes: r.cost.weight_bytes,
            wall_s: r.wall_s,
        }
    }
}
