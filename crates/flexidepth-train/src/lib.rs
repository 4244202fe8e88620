//! Training FlexiDepth routers and adapters on a frozen base (spec A4).
//!
//! The base is loaded in f32 as plain tensors, never variables, and the layers below the first routed one run
//! outside the autograd graph; only the routers and adapters ([`params::DepthParams`]) are `Var`s. The objective
//! is `L = L_lm + α · L_skip` ([`loss`]), every term summed over tokens and divided by the tokens of the whole
//! optimizer step, so gradient accumulation needs no manual correction. The loop ([`Trainer`]) runs the stages of
//! a [`config::TrainConfig`] with AdamW, a cosine schedule with warm-up and clipping ([`optim`]), logs every step,
//! and checkpoints atomically ([`checkpoint`]) so that `--resume` continues exactly.

pub mod checkpoint;
pub mod config;
pub mod data;
pub mod dmtd;
pub mod forward;
pub mod local_fit;
pub mod log;
pub mod lora;
pub mod loss;
pub mod ops;
pub mod optim;
pub mod params;
pub mod router_labels;
pub mod router_start;
pub mod staged;

use candle_core::{DType, Tensor};
use checkpoint::RunState;
use config::TrainConfig;
use flexidepth::depth::file::{write_depth_file, DepthMeta};
use flexidepth::error::{Error, Result};
use flexidepth::model::Model;
use log::LogRow;
use loss::{batch_loss, Objective};
use optim::{clip_grad_norm, cosine_lr, warmup_steps, AdamW};
use params::DepthParams;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// What the loop reports as it goes.
pub enum Event<'a> {
    /// A stage begins (or resumes at `done` of `steps`).
    Stage {
        index: usize,
        name: &'a str,
        steps: usize,
        done: usize,
    },
    /// An optimizer step finished.
    Step(&'a LogRow),
    /// A checkpoint was written.
    Checkpoint { path: &'a std::path::Path, step: usize },
    /// `log.csv` was rewritten with these rows (a reporter may redraw its curves from them).
    Log(&'a [LogRow]),
    /// A progress line of a local-fit or router-start stage.
    Note(&'a str),
    /// A local-fit stage finished (its tables are written; a reporter may draw the figure).
    LocalFit {
        name: &'a str,
        report: &'a staged::LocalFitReport,
    },
}

/// How [`Trainer::run`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Finished,
    /// Stopped on request (Ctrl-C) after checkpointing.
    Interrupted,
}

/// Gradients and statistics of one optimizer step's sequences.
#[derive(Debug)]
pub struct StepGrads {
    pub grads: BTreeMap<String, Tensor>,
    /// Step objective (sum of the normalised per-sequence objectives).
    pub loss: f64,
    pub lm: f64,
    pub kl: f64,
    pub skip: f64,
    pub layers: f64,
    /// Tokens scored.
    pub tokens: usize,
}

/// Run candle's element-wise ops on the calling thread (`CANDLE_NUM_THREADS=1`, unless it is set): call first
/// thing in `main`, before any tensor op. Matmuls keep every thread (`RAYON_NUM_THREADS`). candle splits each large
/// element-wise op over a barrier pool whose threads spin at every op; a training step has thousands of them,
/// memory-bound, and on 2 cores shared with other work the spinning cost more than the second thread gave (the
/// step measured 1.3–1.6× faster without it: bench/RESULTS.md).
pub fn single_threaded_elementwise() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // Called before any other thread exists (the first thing main does).
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

/// Rows (tokens) one packed pass holds at most: bounds a pass's memory (its logits alone are `rows × vocab` floats,
/// 200 MB for 1,024 rows of SmolLM2). A longer sequence runs alone.
pub const MAX_PACKED_ROWS: usize = 2048;

/// Forward and backward every sequence of one optimizer step, one at a time, summing their gradients. Each
/// sequence's objective is already divided by the tokens of the whole step, so the sum is the gradient of the
/// step's objective however the sequences are split into micro-batches.
pub fn step_grads(model: &Model, params: &DepthParams, seqs: &[&[u32]], obj: &Objective) -> Result<StepGrads> {
    step_grads_packed(model, params, seqs, obj, 1)
}

/// [`step_grads`] with the sequences packed `batch` at a time into one forward and backward pass
/// ([`forward::forward_packed`]; at most [`MAX_PACKED_ROWS`] rows a pass): the same gradients (within float
/// rounding), with every matmul over the rows of a whole batch.
pub fn step_grads_packed(
    model: &Model,
    params: &DepthParams,
    seqs: &[&[u32]],
    obj: &Objective,
    batch: usize,
) -> Result<StepGrads> {
    let step_tokens: usize = seqs.iter().map(|s| s.len().saturating_sub(1)).sum();
    if step_tokens == 0 {
        return Err(Error::Input("a training step without tokens".into()));
    }
    if !params.is_attached_to(model) {
        return Err(Error::Input(
            "the trainable parameters are not the model's routers and adapters (DepthParams::attach first)".into(),
        ));
    }
    accumulate_grads(params, seqs, batch, &|pass, step_tokens| {
        batch_loss(model, pass, obj, step_tokens)
    })
}

/// The gradients of a DMTD step ([`dmtd::dmtd_batch_loss`]) of the deltas `params` (their `vars`, by file name),
/// packed `batch` sequences a pass as [`step_grads_packed`].
pub fn dmtd_step_grads(
    model: &Model,
    params: &DepthParams,
    setup: &dmtd::DmtdSetup,
    seqs: &[&[u32]],
    kind: loss::LossKind,
    batch: usize,
) -> Result<StepGrads> {
    let ops = setup.ops(model, &params.vars)?;
    accumulate_grads(params, seqs, batch, &|pass, step_tokens| {
        dmtd::dmtd_batch_loss(model, &ops, setup, pass, kind, step_tokens)
    })
}

/// The loss of one packed pass, given its sequences and the scored tokens of the whole step.
type PassLoss<'a> = dyn Fn(&[&[u32]], usize) -> Result<loss::SequenceLoss> + 'a;

/// Forward and backward the passes of a step (`loss` of a pass and the step's scored tokens), summing the
/// gradients of `params`.
fn accumulate_grads(params: &DepthParams, seqs: &[&[u32]], batch: usize, loss: &PassLoss) -> Result<StepGrads> {
    let step_tokens: usize = seqs.iter().map(|s| s.len().saturating_sub(1)).sum();
    if step_tokens == 0 {
        return Err(Error::Input("a training step without tokens".into()));
    }
    let mut out = StepGrads {
        grads: BTreeMap::new(),
        loss: 0.0,
        lm: 0.0,
        kl: 0.0,
        skip: 0.0,
        layers: 0.0,
        tokens: step_tokens,
    };
    for pass in packed_passes(seqs, batch.max(1), MAX_PACKED_ROWS) {
        let l = loss(pass, step_tokens)?;
        let store = l.objective.backward()?;
        for (name, var) in &params.vars {
            if let Some(g) = store.get(var.as_tensor()) {
                let sum = match out.grads.remove(name) {
                    Some(acc) => (acc + g)?,
                    None => g.clone(),
                };
                out.grads.insert(name.clone(), sum);
            }
        }
        out.loss += l.objective.to_scalar::<f32>()? as f64;
        out.lm += l.lm_sum;
        out.kl += l.kl_sum;
        out.skip += l.skip_sum;
        out.layers += l.layers_sum;
    }
    // A tensor outside this step's graph (the adapter of a layer no token skipped) gets a zero gradient, as the
    // official dense implementation (adapter computed for every row, masked) gives it: AdamW's moments then decay
    // exactly as there.
    for (name, var) in &params.vars {
        if !out.grads.contains_key(name) {
            out.grads.insert(name.clone(), var.as_tensor().zeros_like()?);
        }
    }
    let n = step_tokens as f64;
    out.lm /= n;
    out.kl /= n;
    out.skip /= n;
    out.layers /= n;
    Ok(out)
}

/// The passes of a step: consecutive runs of at most `batch` sequences and (unless one sequence alone is longer)
/// `max_rows` rows.
fn packed_passes<'s>(seqs: &'s [&'s [u32]], batch: usize, max_rows: usize) -> Vec<&'s [&'s [u32]]> {
    let mut passes = Vec::new();
    let (mut start, mut rows) = (0, 0);
    for (i, s) in seqs.iter().enumerate() {
        if i > start && (i - start == batch || rows + s.len() > max_rows) {
            passes.push(&seqs[start..i]);
            (start, rows) = (i, 0);
        }
        rows += s.len();
    }
    if start < seqs.len() {
        passes.push(&seqs[start..]);
    }
    passes
}

/// A training run over tokenized data.
pub struct Trainer<'a> {
    pub config: TrainConfig,
    model: &'a Model,
    params: DepthParams,
    meta: DepthMeta,
    /// The layout and deltas of a DMTD run (`[dmtd]`); `params` are then its low-rank deltas.
    dmtd: Option<dmtd::DmtdSetup>,
    sequences: Vec<Vec<u32>>,
    opt: AdamW,
    state: RunState,
    log: Vec<LogRow>,
}

impl<'a> Trainer<'a> {
    /// A fresh run. `params` become `model`'s routers and adapters ([`DepthParams::attach`]); `meta` describes the
    /// depth files it writes (base, routed layers, reductions).
    pub fn new(
        config: TrainConfig,
        model: &'a mut Model,
        params: DepthParams,
        meta: DepthMeta,
        sequences: Vec<Vec<u32>>,
    ) -> Result<Self> {
        config.validate()?;
        let dmtd = match &config.dmtd {
            Some(d) => {
                let setup = dmtd::DmtdSetup::new(d, model.layers.len())?;
                setup.ops(model, &params.vars)?; // every delta is there
                Some(setup)
            }
            None => {
                params.attach(model, config.routing())?;
                None
            }
        };
        let model: &'a Model = model;
        if sequences.is_empty() {
            return Err(Error::Input("the training data set is empty".into()));
        }
        let opt = AdamW::new(config.adam.into());
        let state = RunState {
            config_hash: config_hash(&config)?,
            ..RunState::default()
        };
        Ok(Trainer {
            config,
            model,
            params,
            meta,
            dmtd,
            sequences,
            opt,
            state,
            log: Vec::new(),
        })
    }

    pub fn params(&self) -> &DepthParams {
        &self.params
    }

    pub fn state(&self) -> &RunState {
        &self.state
    }

    pub fn log(&self) -> &[LogRow] {
        &self.log
    }

    pub fn checkpoint_path(&self) -> PathBuf {
        self.config.out.join("checkpoint.safetensors")
    }

    /// Continue from the checkpoint in the output folder: parameters, optimizer moments, schedule and data position,
    /// and the log up to the checkpoint.
    pub fn resume(&mut self) -> Result<()> {
        let path = self.checkpoint_path();
        let ck = checkpoint::load(&path)?;
        if ck.state.config_hash != self.state.config_hash {
            return Err(Error::Input(format!(
                "{} was written by a run with a different config; resume with the config saved in {}",
                path.display(),
                self.config.out.display()
            )));
        }
        for (name, var) in &self.params.vars {
            let t = ck
                .tensors
                .get(name)
                .ok_or_else(|| Error::bad_file(&path, format!("checkpoint has no '{name}'")))?;
            if t.dims() != var.dims() {
                return Err(Error::bad_file(
                    &path,
                    format!("checkpoint '{name}' has the wrong shape"),
                ));
            }
            var.set(t)?;
        }
        check_resume_state(&self.config, self.sequences.len(), &ck.state, ck.optimizer_steps)
            .map_err(|e| Error::bad_file(&path, e))?;
        self.opt.load_state(ck.optimizer_steps, &ck.tensors)?;
        if ck.state.stage_step == 0 {
            // At a stage's start the uninterrupted run has fresh moments (the checkpoint holds the last stage's).
            self.opt = AdamW::new(self.config.adam.into());
        }
        self.state = ck.state;
        let csv = self.config.out.join("log.csv");
        if csv.exists() {
            let rows = log::read_csv(&csv)?;
            self.log = rows.into_iter().filter(|r| r.step <= self.state.global_step).collect();
        }
        Ok(())
    }

    /// Train every remaining stage. Checks `stop` after each step: when set, checkpoints and returns
    /// [`Outcome::Interrupted`].
    pub fn run(&mut self, stop: &AtomicBool, on: &mut dyn FnMut(Event)) -> Result<Outcome> {
        std::fs::create_dir_all(&self.config.out).map_err(|e| Error::io(&self.config.out, e))?;
        let n = self.sequences.len();
        let per_step = self.config.sequences_per_step();
        while self.state.stage < self.config.stages.len() {
            let si = self.state.stage;
            let stage = self.config.stages[si].clone();
            let total = self.config.stage_steps(si, n);
            let warmup = warmup_steps(total, self.config.warmup_ratio);
            let base_lr = stage.lr.unwrap_or(self.config.lr);
            on(Event::Stage {
                index: si,
                name: &stage.name,
                steps: total,
                done: self.state.stage_step,
            });
            if !stage.kind.is_optimizer_stage() {
                if self.run_local_stage(si, &stage, stop, on)? == Outcome::Interrupted {
                    return Ok(Outcome::Interrupted);
                }
                continue;
            }
            let obj = Objective {
                kind: self.config.loss,
                alpha: stage.alpha,
                routing: self.config.routing(),
            };
            while self.state.stage_step < total {
                let step = self.state.stage_step;
                // The data is one endless stream of seeded epoch orders; step s takes items s·B … (s+1)·B − 1.
                let seqs: Vec<&[u32]> = (step * per_step..(step + 1) * per_step)
                    .map(|i| {
                        let order = data::epoch_order(n, self.config.seed, si, i / n);
                        self.sequences[order[i % n]].as_slice()
                    })
                    .collect();
                let t0 = Instant::now();
                let lr = cosine_lr(base_lr, step, total, warmup);
                let mut g = match &self.dmtd {
                    Some(setup) => dmtd_step_grads(
                        self.model,
                        &self.params,
                        setup,
                        &seqs,
                        self.config.loss,
                        self.config.batch_size,
                    )?,
                    None => step_grads_packed(self.model, &self.params, &seqs, &obj, self.config.batch_size)?,
                };
                let grad_norm = clip_grad_norm(&mut g.grads, self.config.max_grad_norm)?;
                // Stop at the first non-finite number, before it reaches the parameters (or, if the update makes
                // one, before anything is written): the last checkpoint stays the last good state.
                let at = || format!("stage '{}' step {}", stage.name, step + 1);
                if !(g.loss.is_finite() && grad_norm.is_finite()) {
                    return Err(diverged(format!(
                        "{}: the loss is {} and the gradient norm {grad_norm}",
                        at(),
                        g.loss
                    )));
                }
                self.opt.step(&self.params, &g.grads, lr)?;
                self.check_params_finite(&at())?;
                let secs = t0.elapsed().as_secs_f64();
                let seq_tokens: usize = seqs.iter().map(|s| s.len()).sum();
                self.state.stage_step += 1;
                self.state.global_step += 1;
                self.state.tokens_seen += seq_tokens as u64;
                self.state.elapsed_s += secs;
                let row = LogRow {
                    step: self.state.global_step,
                    stage: stage.name.clone(),
                    stage_step: self.state.stage_step,
                    lr,
                    loss: g.loss,
                    lm: g.lm,
                    kl: g.kl,
                    skip: g.skip,
                    layers: g.layers,
                    grad_norm,
                    tokens_per_s: seq_tokens as f64 / secs,
                    elapsed_s: self.state.elapsed_s,
                };
                on(Event::Step(&row));
                let log_now = self.state.global_step.is_multiple_of(self.config.log_every.max(1));
                self.log.push(row);
                let stage_done = self.state.stage_step == total;
                let every = self.config.checkpoint_every;
                let interrupted = stop.load(Ordering::SeqCst);
                if log_now || stage_done || interrupted {
                    self.write_log()?;
                    on(Event::Log(&self.log));
                }
                if stage_done {
                    let path = self.config.out.join(format!("{}.safetensors", stage.name));
                    self.write_depth(&path)?;
                    self.state.stage += 1;
                    self.state.stage_step = 0;
                }
                if stage_done || interrupted || (every > 0 && self.state.global_step.is_multiple_of(every)) {
                    let path = self.checkpoint_path();
                    checkpoint::save(&path, &self.params, &self.opt, &self.state)?;
                    on(Event::Checkpoint {
                        path: &path,
                        step: self.state.global_step,
                    });
                }
                if interrupted {
                    return Ok(Outcome::Interrupted);
                }
                if stage_done {
                    break;
                }
            }
            // A new stage starts from fresh optimizer moments, as the official recipe's separate runs do.
            self.opt = AdamW::new(self.config.adam.into());
        }
        self.write_depth(&self.config.out.join(self.final_file_name()))?;
        self.write_log()?;
        on(Event::Log(&self.log));
        Ok(Outcome::Finished)
    }

    /// Run a `local_fit` or `router_start` stage as one unit over the stage's seeded order of the data, then write
    /// its depth file and reports and checkpoint past it (an interrupted one restarts from its beginning).
    fn run_local_stage(
        &mut self,
        si: usize,
        stage: &config::Stage,
        stop: &AtomicBool,
        on: &mut dyn FnMut(Event),
    ) -> Result<Outcome> {
        on(Event::Stage {
            index: si,
            name: &stage.name,
            steps: 1,
            done: 0,
        });
        let t0 = Instant::now();
        let order = data::epoch_order(self.sequences.len(), self.config.seed, si, 0);
        let seqs: Vec<&[u32]> = order.iter().map(|&i| self.sequences[i].as_slice()).collect();
        let unit = self.config.skip_unit.unit();
        let out = self.config.out.clone();
        let mut note = |m: &str| on(Event::Note(m));
        match stage.kind {
            config::StageKind::LocalFit => {
                let r = staged::run_local_fit(
                    self.model,
                    &self.params,
                    &seqs,
                    unit,
                    stage,
                    self.config.seed,
                    &mut note,
                )?;
                staged::write_local_fit(&out, &stage.name, &r)?;
                on(Event::LocalFit {
                    name: &stage.name,
                    report: &r,
                });
            }
            config::StageKind::RouterStart => {
                let r = staged::run_router_start(
                    self.model,
                    &self.params,
                    &seqs,
                    unit,
                    stage,
                    self.config.skip_threshold,
                    self.config.seed,
                    &mut note,
                )?;
                staged::write_router_start(&out, &stage.name, &r)?;
            }
            config::StageKind::Train | config::StageKind::Dmtd => {
                return Err(Error::Input("a train stage is not a local stage".into()));
            }
        }
        self.state.elapsed_s += t0.elapsed().as_secs_f64();
        self.write_depth(&out.join(format!("{}.safetensors", stage.name)))?;
        self.state.stage += 1;
        self.state.stage_step = 0;
        let path = self.checkpoint_path();
        checkpoint::save(&path, &self.params, &self.opt, &self.state)?;
        on(Event::Checkpoint {
            path: &path,
            step: self.state.global_step,
        });
        Ok(if stop.load(Ordering::SeqCst) {
            Outcome::Interrupted
        } else {
            Outcome::Finished
        })
    }

    /// Refuse parameters holding a NaN or an infinity (`at` says where the run stands).
    fn check_params_finite(&self, at: &str) -> Result<()> {
        for (name, t) in self.params.tensors() {
            if flexidepth::finite::count_non_finite(&t)? > 0 {
                return Err(diverged(format!("{at}: parameter '{name}' is no longer finite")));
            }
        }
        Ok(())
    }

    /// The file a finished run writes: `depth.safetensors` (FlexiDepth) or `dmtd.safetensors` (DMTD deltas).
    pub fn final_file_name(&self) -> &'static str {
        if self.dmtd.is_some() {
            "dmtd.safetensors"
        } else {
            "depth.safetensors"
        }
    }

    /// Write the current routers and adapters as a depth-adapter file (a DMTD run: its deltas as a DMTD delta
    /// file, [`flexidepth::dmtd::delta`]) in the configured dtype (never one holding a NaN or an infinity).
    pub fn write_depth(&self, path: &std::path::Path) -> Result<()> {
        self.check_params_finite(&format!("writing {}", path.display()))?;
        let dtype = match self.config.save_dtype.as_str() {
            "f16" => DType::F16,
            "bf16" => DType::BF16,
            _ => DType::F32,
        };
        if let Some(setup) = &self.dmtd {
            let meta = flexidepth::dmtd::delta::DeltaMeta::for_model(
                self.model,
                &self.config.model,
                setup.layout,
                setup.rank,
                setup.lora_alpha,
                setup.layers.clone(),
                setup.targets.clone(),
            )?;
            return flexidepth::dmtd::delta::write_delta_file(path, &meta, &self.params.tensors(), dtype);
        }
        let mut meta = self.meta.clone();
        let routing = self.config.routing();
        meta.skip_threshold = routing.skip_threshold;
        meta.skip_unit = routing.skip_unit;
        meta.gate_scaling = routing.gate_scaling;
        write_depth_file(path, &meta, &self.params.tensors(), dtype)
    }

    fn write_log(&self) -> Result<()> {
        log::write_csv(&self.config.out.join("log.csv"), &self.log)
    }
}

/// The error of a run that produced a NaN or an infinity.
fn diverged(msg: String) -> Error {
    Error::Input(format!(
        "training diverged at {msg}; nothing further was written (the last checkpoint is the last good state). \
         Lower lr, or check the data and the depth file"
    ))
}

/// Refuse a run state that does not fit `config` over `n_sequences` sequences: a stage or step out of range would
/// spin forever or mark an unfinished run as done.
fn check_resume_state(config: &TrainConfig, n_sequences: usize, s: &RunState, optimizer_steps: u64) -> Result<()> {
    let bad = |m: String| {
        Err(Error::Input(format!(
            "the run state is inconsistent with the config: {m}"
        )))
    };
    let n_stages = config.stages.len();
    if s.stage > n_stages {
        return bad(format!("stage {} of a run with {n_stages} stages", s.stage));
    }
    let steps = |i: usize| match config.stages[i].kind {
        config::StageKind::Train | config::StageKind::Dmtd => config.stage_steps(i, n_sequences),
        // A local stage runs as one unit: it is either ahead of the state or behind it.
        _ => 0,
    };
    let current = if s.stage < n_stages { steps(s.stage) } else { 0 };
    if s.stage_step > 0 && s.stage_step >= current {
        return bad(format!(
            "step {} of stage {}, which has {current} steps",
            s.stage_step, s.stage
        ));
    }
    let before: usize = (0..s.stage).map(steps).sum();
    if s.global_step != before + s.stage_step {
        return bad(format!(
            "global step {} where the stages before and the current step make {}",
            s.global_step,
            before + s.stage_step
        ));
    }
    if s.stage_step > 0 && optimizer_steps != s.stage_step as u64 {
        return bad(format!(
            "{optimizer_steps} optimizer steps at step {} of the stage",
            s.stage_step
        ));
    }
    if !(s.elapsed_s.is_finite() && s.elapsed_s >= 0.0) {
        return bad(format!("elapsed time {}", s.elapsed_s));
    }
    Ok(())
}

/// A fingerprint of everything in the config that changes the result (the output folder may move): FNV-1a of
/// its TOML, stable across builds.
fn config_hash(c: &TrainConfig) -> Result<String> {
    let mut c = c.clone();
    c.out = PathBuf::new();
    let hash = c.to_toml()?.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    });
    Ok(format!("{hash:016x}"))
}
