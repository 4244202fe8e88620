//! `flexidepth sweep-report`: the α sweep's table and figure, from run folders that hold `config.toml` (the
//! training config), `log.csv` (training log) and `quality.json` (`perplexity --compare-full --json`).

use anyhow::{bail, Context, Result};
use flexidepth::error::{read_to_string, write_atomic};
use flexidepth_experiments::eval::DepthQuality;
use flexidepth_experiments::plot::{stack, Axis, Scatter};
use flexidepth_train::config::TrainConfig;
use flexidepth_train::log::read_csv;
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Run folders, one per α.
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// Output folder for sweep.md and sweep.svg.
    #[arg(short = 'o', long = "output", visible_alias = "out")]
    pub out: PathBuf,
    /// Largest perplexity ratio (FlexiDepth / full depth) a shippable point may have.
    #[arg(long, default_value_t = 1.03)]
    pub max_ppl_ratio: f64,
}

struct Point {
    dir: PathBuf,
    alpha: f64,
    /// The training loss besides L_skip (lm, kl, lm+kl).
    loss: String,
    q: DepthQuality,
    train_tokens_per_s: f64,
    steps: usize,
}

fn load(dir: &Path) -> Result<Point> {
    let cfg_path = dir.join("config.toml");
    let cfg = TrainConfig::from_toml(&cfg_path, &read_to_string(&cfg_path)?)?;
    let alpha = cfg.stages.first().map(|s| s.alpha).context("config without stages")?;
    let q_path = dir.join("quality.json");
    let q: DepthQuality = serde_json::from_str(&read_to_string(&q_path)?)
        .with_context(|| format!("{}: not a quality report", q_path.display()))?;
    let log = read_csv(&dir.join("log.csv"))?;
    let last = log
        .last()
        .with_context(|| format!("{}: empty training log", dir.display()))?;
    let tokens: u64 = log
        .iter()
        .map(|r| (r.tokens_per_s * step_secs(&log, r.step)) as u64)
        .sum();
    let loss = serde_json::to_value(cfg.loss)?.as_str().unwrap_or("?").to_string();
    Ok(Point {
        dir: dir.to_path_buf(),
        alpha,
        loss,
        train_tokens_per_s: tokens as f64 / last.elapsed_s.max(1e-9),
        steps: last.step,
        q,
    })
}

/// Seconds of step `step` from the cumulative elapsed column.
fn step_secs(log: &[flexidepth_train::log::LogRow], step: usize) -> f64 {
    let i = log.iter().position(|r| r.step == step).unwrap_or(0);
    let before = if i == 0 { 0.0 } else { log[i - 1].elapsed_s };
    log[i].elapsed_s - before
}

pub fn run(args: Args) -> Result<()> {
    let mut points: Vec<Point> = args.runs.iter().map(|d| load(d)).collect::<Result<_>>()?;
    if points.is_empty() {
        bail!("no runs");
    }
    points.sort_by(|a, b| a.loss.cmp(&b.loss).then(a.alpha.total_cmp(&b.alpha)));
    let n_layers = points[0].q.num_layers;
    // The shipped point: fewest layers among those within the perplexity budget.
    let chosen = points
        .iter()
        .enumerate()
        .filter(|(_, p)| p.q.ppl_ratio <= args.max_ppl_ratio)
        .min_by(|a, b| a.1.q.mean_layers.total_cmp(&b.1.q.mean_layers))
        .map(|(i, _)| i);

    let mut md = String::new();
    md.push_str(&format!(
        "| α | loss | layers/token (of {n_layers}) | skipped | ppl full | ppl FlexiDepth | ppl ratio | KL(full ‖ FD) nats | top-1 agreement | train steps | train tokens/s | run |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n"
    ));
    for (i, p) in points.iter().enumerate() {
        let mark = if Some(i) == chosen { " **(shipped)**" } else { "" };
        md.push_str(&format!(
            "| {:e}{mark} | {} | {:.2} | {:.1}% | {:.3} | {:.3} | {:.4} | {:.4} | {:.3} | {} | {:.0} | `{}` |\n",
            p.alpha,
            p.loss,
            p.q.mean_layers,
            100.0 * (1.0 - p.q.mean_layers / n_layers as f64),
            p.q.full_ppl,
            p.q.flexi_ppl,
            p.q.ppl_ratio,
            p.q.mean_kl,
            p.q.top1_agreement,
            p.steps,
            p.train_tokens_per_s,
            p.dir.display()
        ));
    }
    let held = &points[0].q;
    md.push_str(&format!(
        "\nHeld-out text: {} windows, {} predicted positions (Persuasion from chapter 13, never in the training data); \
         policy {}; ppl ratio limit {}.\n",
        held.windows, held.n_predicted, held.policy_label(), args.max_ppl_ratio
    ));
    match chosen {
        Some(i) => md.push_str(&format!(
            "Most layers skipped within the limit: α = {:e} ({:.2} layers/token, ratio {:.4}).\n",
            points[i].alpha, points[i].q.mean_layers, points[i].q.ppl_ratio
        )),
        None => md.push_str("No point keeps perplexity within the limit.\n"),
    }

    let label = |p: &Point| {
        if p.loss == "lm" {
            format!("α={:e}", p.alpha)
        } else {
            format!("α={:e} ({})", p.alpha, p.loss)
        }
    };
    // One scatter per quality measure, x = layers per token, one labelled point per run.
    let chart = |title: &str, y: Axis, value: fn(&DepthQuality) -> f64| {
        points
            .iter()
            .fold(Scatter::new(title, Axis::new("layers per token"), y), |s, p| {
                s.with(p.q.mean_layers, value(&p.q), &label(p))
            })
    };
    let ratio = chart(
        "Quality vs depth: perplexity ratio (FlexiDepth / full)",
        Axis::log("perplexity ratio (log scale)"),
        |q| q.ppl_ratio,
    );
    let kl = chart(
        "KL(full ‖ FlexiDepth) per token",
        Axis::log("KL, nats (log scale)"),
        |q| q.mean_kl,
    );
    let agree = chart("Top-1 agreement with full depth", Axis::new("agreement"), |q| {
        q.top1_agreement
    });
    std::fs::create_dir_all(&args.out)?;
    write_atomic(&args.out.join("sweep.md"), md.as_bytes())?;
    write_atomic(
        &args.out.join("sweep.svg"),
        stack(&[ratio.to_svg(), kl.to_svg(), agree.to_svg()]).as_bytes(),
    )?;
    crate::output::out(md.trim_end_matches('\n'))?;
    eprintln!("wrote {} and sweep.svg", args.out.join("sweep.md").display());
    Ok(())
}
