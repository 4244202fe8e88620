//! `flexidepth frontier`: held-out quality against layers and weight bytes per token for depth adapters (each
//! threshold tuned on tuning text to a budget of skipped layers) beside ShortGPT's static removal of as many layers;
//! optionally the "ship" point of each adapter (the most skipping within a perplexity ratio on the tuning text),
//! written as a depth file with that threshold stored.

use crate::{LoadArgs, OutType};
use anyhow::{Context, Result};
use flexidepth::depth::file::{attach_depth_file, read_depth_tensors, write_depth_file};
use flexidepth::depth::FlexiDepth;
use flexidepth_experiments::eval::{self, depth_quality_vs, FullReference, DEFAULT_MAX_TOKENS, DEFAULT_WINDOW};
use flexidepth_experiments::frontier::{self, FrontierPoint, TuneTarget};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: LoadArgs,
    /// Depth-adapter files to compare (each with its own stored skip unit and gate scaling); repeat the flag.
    #[arg(long = "depth", required_unless_present = "baselines")]
    pub depth: Vec<PathBuf>,
    /// Budgets: layers skipped per token (comma list). Whole numbers also get a ShortGPT point.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,6")]
    pub budgets: Vec<f64>,
    /// Also find, per adapter, the highest threshold whose perplexity ratio on the tuning text is at most this,
    /// and measure it on the held-out text (the "ship" row).
    #[arg(long)]
    pub ship_ratio: Option<f64>,
    /// Write each adapter's ship point as `<name>.ship.safetensors` in this folder (its threshold stored).
    #[arg(long, requires = "ship_ratio")]
    pub ship_dir: Option<PathBuf>,
    /// Baseline depth policies measured beside (comma list of specs without routers, e.g.
    /// `laco:1,laco:2,exit:20`); each is built on the same calibration tokens as ShortGPT.
    #[arg(long, value_delimiter = ',')]
    pub baselines: Vec<flexidepth::depth::PolicySpec>,
    /// Override the files' gate scaling (`released` or `hard`; see `generate --help`).
    #[arg(long, value_enum)]
    pub gate_scaling: Option<crate::GateScalingArg>,
    /// Storage type of the written ship files.
    #[arg(long, value_enum, default_value_t = OutType::Bf16)]
    pub outtype: OutType,
    /// Bisection steps per tuned threshold.
    #[arg(long, default_value_t = 12)]
    pub iters: usize,
    /// Tuning-text tokens (Persuasion chapters 4–12), in windows of --ctx-size.
    #[arg(long, default_value_t = 2048)]
    pub tune_tokens: usize,
    /// Held-out tokens (Persuasion from chapter 13), in windows of --ctx-size.
    #[arg(long, default_value_t = DEFAULT_MAX_TOKENS)]
    pub max_tokens: usize,
    #[arg(short = 'c', long = "ctx-size", default_value_t = DEFAULT_WINDOW)]
    pub ctx: usize,
    /// Output folder: frontier.md, frontier.json, frontier.svg.
    #[arg(short = 'o', long)]
    pub out: PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    if args.budgets.iter().any(|b| !(b.is_finite() && *b > 0.0)) {
        anyhow::bail!("--budgets must be positive numbers of layers");
    }
    if let Some(r) = args.ship_ratio {
        if !(r.is_finite() && r >= 1.0) {
            anyhow::bail!("--ship-ratio must be a perplexity ratio ≥ 1, not {r}");
        }
    }
    if args.iters == 0 || args.iters > 30 {
        anyhow::bail!("--iters must be in 1..=30");
    }
    let (files, mut model) = args.model.load()?;
    let n = model.config.num_hidden_layers as f64;
    let context = model.config.max_position_embeddings;
    if args.ctx > context {
        anyhow::bail!(
            "--ctx-size {} is longer than the model's context of {context} tokens",
            args.ctx
        );
    }
    if let Some(b) = args.budgets.iter().find(|b| **b >= n) {
        anyhow::bail!("a budget of {b} layers is not below the model's {n}");
    }
    let tok = &files.tokenizer;
    let tune_ids = tok.encode(&frontier::tuning_text()?, false)?;
    let tuning = eval::windows(&tune_ids, args.ctx, args.tune_tokens)?;
    let heldout = eval::heldout_windows(tok, args.ctx, args.max_tokens)?;
    let t0 = std::time::Instant::now();
    // Full depth's log-probabilities, once: every point and bisection step compares against them.
    let tuning = FullReference::new(&model, &tuning)?;
    let heldout = FullReference::new(&model, &heldout)?;
    let mut note = |m: &str| eprintln!("{m}");
    let mut points = Vec::new();
    for path in &args.depth {
        model.detach_depth();
        let mut meta = attach_depth_file(&mut model, path)
            .with_context(|| format!("cannot attach the depth adapter {}", path.display()))?;
        if let Some(g) = args.gate_scaling {
            meta.gate_scaling = g.into();
        }
        let name = method_name(path, &meta);
        let policy = FlexiDepth {
            gate_scaling: Some(meta.gate_scaling),
            ..FlexiDepth::default()
        };
        points.extend(frontier::flexi_points(
            &model,
            &name,
            policy,
            &args.budgets,
            &tuning,
            &heldout,
            args.iters,
            &mut note,
        )?);
        if let Some(ratio) = args.ship_ratio {
            let tuned = frontier::tune_threshold(&model, &tuning, policy, TuneTarget::PplRatio(ratio), args.iters)?;
            let p = FlexiDepth {
                skip_threshold: Some(tuned.skip_threshold),
                ..policy
            };
            let q = depth_quality_vs(&model, &heldout, &p)?;
            note(&format!(
                "{name} ship (tuning ratio ≤ {ratio}): threshold {:.5}, tuning {:.2} layers ratio {:.4} → held-out \
                 {:.2} layers, ratio {:.4}",
                tuned.skip_threshold,
                tuned.layers,
                tuned.ppl_ratio.unwrap_or(f64::NAN),
                q.mean_layers,
                q.ppl_ratio
            ));
            if let Some(dir) = &args.ship_dir {
                std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
                let out = dir.join(format!("{name}.ship.safetensors"));
                write_with_routing(path, &out, tuned.skip_threshold, meta.gate_scaling, args.outtype)?;
                note(&format!("wrote {}", out.display()));
            }
            points.push(FrontierPoint {
                method: name,
                budget: None,
                tuned: Some(tuned),
                heldout: q,
            });
        }
    }
    model.detach_depth();
    let calib: Vec<u32> = tuning.windows().iter().flatten().copied().take(1024).collect();
    points.extend(frontier::shortgpt_points(
        &model,
        &args.budgets,
        &calib,
        &heldout,
        &mut note,
    )?);
    points.extend(frontier::spec_points(
        &model,
        &args.baselines,
        &calib,
        &heldout,
        &mut note,
    )?);
    let title = format!("{} frontier", files.config.arch.hf_name());
    write_outputs(&args.out, &title, &points)?;
    println!("{}", frontier::markdown(&points));
    eprintln!(
        "frontier: {} points in {:.1} s ({} tuning windows, {} held-out windows of {} tokens)",
        points.len(),
        t0.elapsed().as_secs_f64(),
        tuning.windows().len(),
        heldout.windows().len(),
        args.ctx
    );
    Ok(())
}

/// `flexi-<unit>[-hard]`, and the file's stem so that two files of the same kind stay apart.
fn method_name(path: &Path, meta: &flexidepth::depth::file::DepthMeta) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let hard = if meta.gate_scaling == flexidepth::depth::GateScaling::Hard {
        "-hard"
    } else {
        ""
    };
    format!("flexi-{}{hard}:{stem}", meta.skip_unit)
}

/// Copy the depth file `from` to `to` with `skip_threshold` and `gate_scaling` stored as its defaults.
fn write_with_routing(
    from: &Path,
    to: &Path,
    skip_threshold: f32,
    gate_scaling: flexidepth::depth::GateScaling,
    outtype: OutType,
) -> Result<()> {
    let (mut meta, tensors) = read_depth_tensors(from)?;
    meta.skip_threshold = skip_threshold;
    meta.gate_scaling = gate_scaling;
    write_depth_file(to, &meta, &tensors, outtype.dtype())?;
    Ok(())
}

fn write_outputs(dir: &Path, title: &str, points: &[FrontierPoint]) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let md = format!(
        "{title}: held-out perplexity ratio, KL and top-1 agreement against full depth (Persuasion from chapter 13), \
         thresholds tuned on Persuasion chapters 4–12.\n\n{}",
        frontier::markdown(points)
    );
    flexidepth::error::write_atomic(&dir.join("frontier.md"), md.as_bytes())?;
    let mut json = serde_json::to_vec_pretty(points)?;
    json.push(b'\n');
    flexidepth::error::write_atomic(&dir.join("frontier.json"), &json)?;
    flexidepth::error::write_atomic(&dir.join("frontier.svg"), frontier::figure(title, points).as_bytes())?;
    Ok(())
}
