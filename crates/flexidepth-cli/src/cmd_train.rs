//! `flexidepth train`: train FlexiDepth routers and adapters on a frozen base, from a TOML config with
//! command-line overrides; `--resume` continues the run in `--out` exactly where its checkpoint left it.

use anyhow::{bail, Context, Result};
use flexidepth::depth::file::{fresh_depth, read_depth_tensors};
use flexidepth::depth::parse_layer_range;
use flexidepth::loader::ModelFiles;
use flexidepth::model::WeightFormat;
use flexidepth_train::config::{Stage, TrainConfig};
use flexidepth_train::data::{parse_jsonl, tokenize};
use flexidepth_train::params::DepthParams;
use flexidepth_train::{Event, Outcome, Trainer};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// `--loss`: the training objective besides L_skip.
#[derive(clap::ValueEnum, Debug, Clone, Copy)]
pub enum LossArg {
    /// Cross-entropy on the data.
    Lm,
    /// Distil the full-depth model's logits.
    Kl,
    /// Both, summed.
    #[value(name = "lm+kl")]
    LmKl,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// TOML config (see configs/); flags below override it. Without one: a single stage over the data.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Continue the run in --out from its checkpoint, with the config saved there (no other settings allowed).
    #[arg(long, requires = "out")]
    pub resume: bool,
    /// Output folder: depth.safetensors, one file per stage, checkpoint, log.csv, curves.svg, config.toml.
    #[arg(short = 'o', long = "output", visible_alias = "out")]
    pub out: Option<PathBuf>,
    /// The frozen base model.
    #[arg(short = 'm', long)]
    pub model: Option<String>,
    /// JSONL data set (`flexidepth data` makes one).
    #[arg(short = 'd', long)]
    pub data: Option<PathBuf>,
    /// Start from this depth-adapter file instead of a fresh initialisation.
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Routed layers of a fresh initialisation, `A..B`; default the later half.
    #[arg(long)]
    pub routed_layers: Option<String>,
    /// α (weight of L_skip) for every stage.
    #[arg(long)]
    pub alpha: Option<f64>,
    /// Optimizer steps of every stage.
    #[arg(long)]
    pub steps: Option<usize>,
    /// Passes over the data of every stage (when no steps are set).
    #[arg(long)]
    pub epochs: Option<f64>,
    /// Peak learning rate (every stage).
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long)]
    pub batch_size: Option<usize>,
    #[arg(long)]
    pub grad_accum: Option<usize>,
    /// Longer sequences are dropped (and counted), never truncated.
    #[arg(long)]
    pub max_len: Option<usize>,
    #[arg(short = 's', long)]
    pub seed: Option<u64>,
    /// lm (cross-entropy on the data), kl (distil the full-depth model) or lm+kl.
    #[arg(long, value_enum)]
    pub loss: Option<LossArg>,
    /// Routing threshold of the training forward, stored in the written depth files (their default at inference).
    #[arg(long, alias = "threshold")]
    pub skip_threshold: Option<f32>,
    #[arg(long)]
    pub checkpoint_every: Option<usize>,
    #[arg(long)]
    pub log_every: Option<usize>,
    /// Storage type of the written depth files (config key save_dtype; --save-dtype is kept as a hidden alias).
    #[arg(long, value_enum, alias = "save-dtype")]
    pub outtype: Option<crate::OutType>,
}

impl Args {
    fn has_overrides(&self) -> bool {
        self.config.is_some()
            || self.model.is_some()
            || self.data.is_some()
            || self.init.is_some()
            || self.routed_layers.is_some()
            || self.alpha.is_some()
            || self.steps.is_some()
            || self.epochs.is_some()
            || self.lr.is_some()
            || self.batch_size.is_some()
            || self.grad_accum.is_some()
            || self.max_len.is_some()
            || self.seed.is_some()
            || self.loss.is_some()
            || self.skip_threshold.is_some()
            || self.checkpoint_every.is_some()
            || self.log_every.is_some()
            || self.outtype.is_some()
    }
}

fn saved_config_path(out: &Path) -> PathBuf {
    out.join("config.toml")
}

/// The effective config: the file (or defaults), then the flags.
fn build_config(args: &Args) -> Result<TrainConfig> {
    let mut c = match &args.config {
        Some(path) => {
            let text = flexidepth::error::read_to_string(path)
                .with_context(|| format!("cannot read the config file {}", path.display()))?;
            TrainConfig::from_toml(path, &text)?
        }
        None => {
            let data = args.data.clone().context("give --data FILE (or a --config)")?;
            let out = args.out.clone().context("give --out DIR (or a --config)")?;
            TrainConfig::from_toml(
                Path::new("<defaults>"),
                &format!(
                    "data = {:?}\nout = {:?}\n[[stage]]\nname = \"train\"\nalpha = 1e-4\n",
                    data.display().to_string(),
                    out.display().to_string()
                ),
            )?
        }
    };
    macro_rules! set {
        ($field:ident) => {
            if let Some(v) = &args.$field {
                c.$field = v.clone();
            }
        };
    }
    set!(model);
    set!(data);
    set!(out);
    set!(max_len);
    set!(batch_size);
    set!(grad_accum);
    set!(lr);
    set!(seed);
    set!(skip_threshold);
    set!(checkpoint_every);
    set!(log_every);
    if let Some(t) = args.outtype {
        c.save_dtype = t.name().to_string();
    }
    if args.init.is_some() {
        c.init = args.init.clone();
    }
    if args.routed_layers.is_some() {
        c.routed_layers = args.routed_layers.clone();
    }
    if let Some(l) = args.loss {
        c.loss = match l {
            LossArg::Lm => flexidepth_train::loss::LossKind::Lm,
            LossArg::Kl => flexidepth_train::loss::LossKind::Kl,
            LossArg::LmKl => flexidepth_train::loss::LossKind::LmKl,
        };
    }
    for s in &mut c.stages {
        override_stage(s, args);
    }
    c.validate()?;
    Ok(c)
}

fn override_stage(s: &mut Stage, args: &Args) {
    if let Some(a) = args.alpha {
        s.alpha = a;
    }
    if let Some(n) = args.steps {
        s.steps = Some(n);
    }
    if let Some(e) = args.epochs {
        s.epochs = e;
        if args.steps.is_none() {
            s.steps = None;
        }
    }
    if args.lr.is_some() {
        s.lr = None;
    }
}

pub fn run(args: Args) -> Result<()> {
    let config = if args.resume {
        if args.has_overrides() {
            bail!("--resume continues with the config saved in the run folder; give only --out (and -t)");
        }
        let out = args.out.clone().context("--resume needs --out")?;
        let path = saved_config_path(&out);
        let text = flexidepth::error::read_to_string(&path)
            .with_context(|| format!("no run to resume in {}", out.display()))?;
        let mut c = TrainConfig::from_toml(&path, &text)?;
        c.out = out;
        c.validate()?;
        c
    } else {
        build_config(&args)?
    };
    let ckpt = config.out.join("checkpoint.safetensors");
    if !args.resume && ckpt.exists() {
        bail!(
            "{} already holds a run (checkpoint.safetensors); continue it with --resume --out {0}, or choose another --out",
            config.out.display()
        );
    }
    if args.resume && !ckpt.exists() {
        bail!(
            "{} has no checkpoint to resume from (the run stopped before its first one): start it again without \
             --resume, with the same --out",
            config.out.display()
        );
    }
    // The data and the output folder before the model loads: a bad path fails in a second, not after the load,
    // and bad data leaves no folder behind.
    if config.out.exists() && !config.out.is_dir() {
        bail!("the output {} is a file, not a folder", config.out.display());
    }
    let text = flexidepth::error::read_to_string(&config.data)
        .with_context(|| format!("cannot read the data file {}", config.data.display()))?;
    let samples = parse_jsonl(&config.data, &text)?;
    std::fs::create_dir_all(&config.out).with_context(|| format!("cannot create {}", config.out.display()))?;
    if !args.resume {
        flexidepth::error::write_atomic(&saved_config_path(&config.out), config.to_toml()?.as_bytes())
            .with_context(|| format!("cannot write to the output folder {}", config.out.display()))?;
    }
    let files = ModelFiles::open(&config.model).with_context(|| format!("cannot open model '{}'", config.model))?;
    let data = tokenize(&samples, &files.tokenizer, config.max_len)?;
    eprintln!(
        "data: {} samples, {} sequences, {} tokens; dropped {} longer than max_len {}, {} too short",
        samples.len(),
        data.sequences.len(),
        data.tokens(),
        data.dropped_long,
        config.max_len,
        data.dropped_short
    );
    if config.max_len > files.config.max_position_embeddings {
        bail!(
            "max_len {} is longer than the model's context ({} positions)",
            config.max_len,
            files.config.max_position_embeddings
        );
    }
    let mut model = files.load_model(WeightFormat::F32, &candle_core::Device::Cpu)?;

    let (params, meta) = match &config.dmtd {
        Some(d) => dmtd_params(&config, d, &model)?,
        None => depth_params(&config, &model)?,
    };
    // Optimizer steps: the local stages (adapter fit, router start) run as one block each and take none.
    let total_steps: usize = (0..config.stages.len())
        .filter(|&i| config.stages[i].kind.is_optimizer_stage())
        .map(|i| config.stage_steps(i, data.sequences.len()))
        .sum();
    let mut trainer = Trainer::new(config, &mut model, params, meta, data.sequences)?;
    train_loop(&mut trainer, args.resume, total_steps)
}

/// Fresh low-rank deltas of the decoding layers for a DMTD run (B zero: training starts from the base).
fn dmtd_params(
    config: &TrainConfig,
    d: &flexidepth_train::dmtd::DmtdConfig,
    model: &flexidepth::model::Model,
) -> Result<(DepthParams, flexidepth::depth::file::DepthMeta)> {
    if config.init.is_some() {
        bail!("a DMTD run starts from fresh deltas; drop init");
    }
    let setup = flexidepth_train::dmtd::DmtdSetup::new(d, model.layers.len())?;
    let vars = flexidepth_train::lora::fresh_lora(model, &setup.layers, &setup.targets, setup.rank, config.seed)?;
    let params = DepthParams {
        routed_layers: Vec::new(),
        vars,
    };
    eprintln!(
        "training {} parameters (rank-{} deltas of {} in layers {:?}) for DMTD τ = {} on a frozen {}-layer base",
        params.num_params(),
        setup.rank,
        setup.targets.join(", "),
        setup.layers,
        setup.layout.mtp_horizon,
        model.config.num_hidden_layers
    );
    let meta = flexidepth::depth::file::DepthMeta::for_model(model, Vec::new(), 1, 1)?;
    Ok((params, meta))
}

/// Routers and adapters of a FlexiDepth run: from `init` or freshly initialised.
fn depth_params(
    config: &TrainConfig,
    model: &flexidepth::model::Model,
) -> Result<(DepthParams, flexidepth::depth::file::DepthMeta)> {
    let (tensors, meta) = match &config.init {
        Some(path) => {
            let (meta, tensors) = read_depth_tensors(path)?;
            meta.check_base(model)?;
            flexidepth::depth::check::check_depth(path, &meta, &tensors, &model.config)?;
            (tensors, meta)
        }
        None => {
            let n = model.config.num_hidden_layers;
            let layers = config
                .routed_layers
                .as_deref()
                .map(|s| parse_layer_range(s, n))
                .transpose()?;
            let (meta, tensors) = fresh_depth(
                model,
                layers,
                config.router_reduction,
                config.proj_reduction,
                config.seed,
            )?;
            (tensors, meta)
        }
    };
    let params = DepthParams::from_tensors(&meta.routed_layers, &tensors)?;
    eprintln!(
        "training {} parameters (routers and adapters of layers {:?}) on a frozen {}-layer base",
        params.num_params(),
        meta.routed_layers,
        model.config.num_hidden_layers
    );
    Ok((params, meta))
}

/// Run (or resume) `trainer` with a progress bar, the Ctrl-C handler and the curves.
fn train_loop(trainer: &mut Trainer, resume: bool, total_steps: usize) -> Result<()> {
    if resume {
        trainer.resume()?;
        eprintln!("resumed at step {}", trainer.state().global_step);
    }

    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        // First Ctrl-C: finish the step, checkpoint, exit. A second one aborts at once (the last checkpoint stays).
        ctrlc::set_handler(move || {
            if stop.swap(true, Ordering::SeqCst) {
                flexidepth::tmpfiles::exit_interrupted();
            }
            eprintln!("\ninterrupted: checkpointing after this step (Ctrl-C again to abort)");
        })
        .context("cannot install the Ctrl-C handler")?;
    }
    let bar = ProgressBar::new(total_steps as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed} / ~{eta} left)")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar.set_position(trainer.state().global_step as u64);
    let log_lines_every = (total_steps / 20).max(1);
    let curves_path = trainer.config.out.join("curves.svg");
    let mut curves_error = None;
    let outcome = trainer.run(&stop, &mut |e| match e {
        Event::Stage { index, name, steps, .. } => {
            bar.set_prefix(format!("stage {} '{name}' ({steps} steps)", index + 1));
        }
        Event::Step(r) => {
            let msg = format!(
                "loss {:.4} lm {:.4} kl {:.4} L_skip {:.1} layers {:.2} {:.0} tok/s",
                r.loss, r.lm, r.kl, r.skip, r.layers, r.tokens_per_s
            );
            if bar.is_hidden() && r.step.is_multiple_of(log_lines_every) {
                // No terminal (nohup, CI): a plain line now and then instead of the bar.
                eprintln!("step {}/{total_steps} [{}] {msg}", r.step, r.stage);
            }
            bar.set_position(r.step as u64);
            bar.set_message(msg);
        }
        Event::Checkpoint { .. } => {}
        Event::Note(line) if bar.is_hidden() => eprintln!("{line}"),
        Event::Note(line) => bar.println(line),
        Event::LocalFit { name, report } => {
            let path = curves_path.with_file_name(format!("{name}.replaceability.svg"));
            if let Err(e) = flexidepth_experiments::replaceability::write_figure(&path, name, report) {
                curves_error = Some(e);
            }
            let line = format!(
                "local fit '{name}': {} layers in {:.1} s; table and figure in {}",
                report.rows.len(),
                report.seconds,
                path.with_extension("md").display()
            );
            if bar.is_hidden() {
                eprintln!("{line}");
            } else {
                bar.println(line);
            }
        }
        Event::Log(rows) => {
            // Redrawn with every log write, so an interrupted run has its curves too.
            if let Err(e) = flexidepth_experiments::curves::write_training_curves(&curves_path, rows) {
                curves_error = Some(e);
            }
        }
    })?;
    bar.finish();
    if let Some(e) = curves_error {
        return Err(e).context("cannot write the training curves");
    }
    let s = trainer.state();
    let out = &trainer.config.out;
    if s.global_step > 0 {
        eprintln!(
            "{} steps, {} tokens in {:.1} s of training: {:.1} tokens/s",
            s.global_step,
            s.tokens_seen,
            s.elapsed_s,
            s.tokens_seen as f64 / s.elapsed_s.max(1e-9)
        );
    } else {
        // Only local stages (local fit, router start): their own lines above give tokens and time.
        eprintln!("no gradient steps (local stages only), {:.1} s", s.elapsed_s);
    }
    match outcome {
        Outcome::Finished => eprintln!(
            "wrote {} (log {}, curves {})",
            out.join(trainer.final_file_name()).display(),
            out.join("log.csv").display(),
            out.join("curves.svg").display()
        ),
        Outcome::Interrupted => {
            eprintln!(
                "checkpoint written at step {}; continue with: flexidepth train --resume --out {}",
                s.global_step,
                out.display()
            );
            // Like a shell's Ctrl-C (128 + SIGINT), so that scripts see the run did not finish.
            std::process::exit(130);
        }
    }
    Ok(())
}
