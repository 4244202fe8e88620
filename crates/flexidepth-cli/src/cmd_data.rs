//! `flexidepth data`: build the seeded self-distillation training set (JSONL) from the Austen novels and the KJV.

use crate::ModelArgs;
use anyhow::{bail, Context, Result};
use flexidepth::model::WeightFormat;
use flexidepth_experiments::dataset::{self, select::Corpus, Answerer, DataConfig, Sample};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The base model that answers the prompts (loaded with quantized weights).
    #[command(flatten)]
    pub model: ModelArgs,
    /// The JSONL file to write (replaced atomically when the build is complete).
    #[arg(short = 'o', long, visible_alias = "out")]
    pub output: PathBuf,
    /// Instruction samples to generate (those the model answers with nothing are dropped).
    #[arg(long, default_value_t = 480)]
    pub instructions: usize,
    /// Plain-text samples.
    #[arg(long, default_value_t = 320)]
    pub texts: usize,
    /// Fixes every pick and the order: the same seed and model give the same file.
    #[arg(short = 's', long, default_value_t = 42)]
    pub seed: u64,
    /// Tokens an answer may have at most.
    #[arg(
        short = 'n',
        long = "n-predict",
        visible_alias = "max-new-tokens",
        default_value_t = 128
    )]
    pub max_new_tokens: usize,
    /// Words a plain-text sample aims at (cut at paragraph or verse boundaries).
    #[arg(long, default_value_t = 200)]
    pub text_words: usize,
}

pub fn run(args: Args) -> Result<()> {
    // Bounds far above any training set here, checked before anything is sized by them.
    const MAX_SAMPLES: usize = 1 << 20;
    if args.instructions > MAX_SAMPLES || args.texts > MAX_SAMPLES || args.text_words > MAX_SAMPLES {
        bail!("--instructions, --texts and --text-words take at most {MAX_SAMPLES}");
    }
    if args.instructions + args.texts == 0 {
        bail!("nothing to build: --instructions and --texts are both 0");
    }
    if args.max_new_tokens == 0 || args.text_words == 0 {
        bail!("--max-new-tokens and --text-words must be positive");
    }
    // Refuse an unwritable destination before spending minutes on generation.
    let parent = match args.output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !parent.is_dir() {
        bail!("the output folder {} does not exist", parent.display());
    }

    let corpus = Corpus::load().context("cannot read the training corpora")?;
    let cfg = DataConfig {
        instructions: args.instructions,
        texts: args.texts,
        seed: args.seed,
        text_words: args.text_words,
    };
    let plan = dataset::plan(&corpus, &cfg)?;

    let files = args.model.open()?;
    let model = files
        .load_model(WeightFormat::Quantized, &crate::device()?)
        .with_context(|| format!("cannot load the weights of '{}'", args.model.model))?;
    let answerer = Answerer::new(&files, &model, args.max_new_tokens)?;

    let bar = indicatif::ProgressBar::new(plan.instructions.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} answers  {msg}  [{elapsed_precise} < {eta}]")
            .expect("a valid progress template"),
    );
    let start = Instant::now();
    let (mut generated, mut tokens, mut empty) = (0usize, 0usize, 0usize);
    let mut answered = Vec::with_capacity(plan.instructions.len());
    for inst in &plan.instructions {
        let a = answerer
            .answer(&inst.prompt)
            .with_context(|| format!("cannot answer a prompt from {}", inst.source))?;
        generated += a.generated_tokens;
        match inst.answered(&a.text) {
            Some(s) => {
                tokens += a.prompt_tokens + a.generated_tokens;
                answered.push(s);
            }
            None => empty += 1,
        }
        bar.inc(1);
        let rate = format!(
            "{:.1} generated tokens/s",
            generated as f64 / start.elapsed().as_secs_f64().max(1e-9)
        );
        // A log file (nohup, CI) gets no bar: a line every tenth of the way instead.
        let done = bar.position() as usize;
        if bar.is_hidden() && (done * 10 / plan.instructions.len()) != ((done - 1) * 10 / plan.instructions.len()) {
            eprintln!("{done}/{} answers, {rate}", plan.instructions.len());
        }
        bar.set_message(rate);
    }
    bar.finish_and_clear();
    let gen_s = start.elapsed().as_secs_f64();
    for s in &plan.texts {
        if let Sample::Text { text, .. } = s {
            tokens += files.tokenizer.encode(text, false)?.len();
        }
    }

    let samples = dataset::assemble(answered, plan.texts, args.seed);
    flexidepth::error::write_atomic(&args.output, dataset::to_jsonl(&samples)?.as_bytes())
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    summarize(&args, &samples, empty, tokens, generated, gen_s);
    Ok(())
}

/// Counts per task and per source (novel, or the KJV as one), words and tokens, on stderr.
fn summarize(args: &Args, samples: &[Sample], empty: usize, tokens: usize, generated: usize, gen_s: f64) {
    let mut tasks: BTreeMap<&str, usize> = BTreeMap::new();
    let mut sources: BTreeMap<String, usize> = BTreeMap::new();
    for s in samples {
        *tasks.entry(s.task().name()).or_default() += 1;
        let source = s
            .source()
            .splitn(3, ':')
            .take(if s.source().starts_with("kjv:") { 1 } else { 2 });
        *sources.entry(source.collect::<Vec<_>>().join(":")).or_default() += 1;
    }
    let join = |m: Vec<(String, usize)>| m.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ");
    let chat = samples.iter().filter(|s| matches!(s, Sample::Chat { .. })).count();
    eprintln!(
        "wrote {} samples ({chat} chat, {} text) to {}",
        samples.len(),
        samples.len() - chat,
        args.output.display()
    );
    if empty > 0 {
        eprintln!("dropped {empty} prompts the model answered with nothing");
    }
    eprintln!(
        "by task: {}",
        join(tasks.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
    );
    eprintln!("by source: {}", join(sources.into_iter().collect()));
    let words: usize = samples.iter().map(Sample::words).sum();
    eprintln!("{words} words, about {tokens} tokens (chat: templated prompt + answer)");
    eprintln!(
        "generated {generated} tokens in {gen_s:.1} s ({:.1} tokens/s)",
        generated as f64 / gen_s.max(1e-9)
    );
}
