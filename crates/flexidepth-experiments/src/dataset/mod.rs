//! Training data for the depth adapters: seeded instruction prompts about Austen paragraphs and KJV passages,
//! answered by the base model itself (self-distillation: the adapters learn to skip layers without moving the
//! model's own outputs), plus plain-text samples of both corpora.
//!
//! The build is reproducible: the seed fixes every pick and the final order, and greedy decoding fixes the
//! answers, so the same seed and model give a byte-identical JSONL file. The held-out rule of [`crate::corpus`]
//! is applied at every pick ([`select`]), and no integer-list task exists ([`tasks`]), so nothing of the
//! layer-usage study or the evaluations is trained on.

pub mod select;
pub mod tasks;

use flexidepth::chat::{ChatTemplate, Message};
use flexidepth::error::{Error, Result};
use flexidepth::generate::{generate, GenerateOptions};
use flexidepth::loader::ModelFiles;
use flexidepth::model::Model;
use flexidepth::rng::Draw;
use flexidepth::tokenizer::Tokenizer;
use select::{Corpus, Passage, Rng};
use serde::{Deserialize, Serialize};
pub use tasks::Task;

/// How much data, and from which seed.
#[derive(Debug, Clone)]
pub struct DataConfig {
    /// Instruction samples to ask for (those with an empty answer are dropped).
    pub instructions: usize,
    /// Plain-text samples.
    pub texts: usize,
    pub seed: u64,
    /// Words a plain-text sample aims at.
    pub text_words: usize,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            instructions: 480,
            texts: 320,
            seed: 42,
            text_words: 200,
        }
    }
}

/// One line of the JSONL file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Sample {
    Chat {
        messages: Vec<Message>,
        source: String,
        task: Task,
    },
    Text {
        text: String,
        source: String,
        task: Task,
    },
}

impl Sample {
    pub fn source(&self) -> &str {
        match self {
            Sample::Chat { source, .. } | Sample::Text { source, .. } => source,
        }
    }
    pub fn task(&self) -> Task {
        match self {
            Sample::Chat { task, .. } | Sample::Text { task, .. } => *task,
        }
    }
    /// Whitespace-separated words of everything in the sample.
    pub fn words(&self) -> usize {
        match self {
            Sample::Chat { messages, .. } => messages.iter().map(|m| select::words(&m.content)).sum(),
            Sample::Text { text, .. } => select::words(text),
        }
    }
}

/// A prompt waiting for the model's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    pub task: Task,
    pub source: String,
    pub prompt: String,
}

impl Instruction {
    /// The chat sample with `answer`; `None` when the answer is blank (nothing to learn from).
    pub fn answered(&self, answer: &str) -> Option<Sample> {
        let answer = answer.trim();
        (!answer.is_empty()).then(|| Sample::Chat {
            messages: vec![Message::new("user", &self.prompt), Message::new("assistant", answer)],
            source: self.source.clone(),
            task: self.task,
        })
    }
}

/// Everything chosen before the model runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub instructions: Vec<Instruction>,
    pub texts: Vec<Sample>,
}

/// Seed streams, so that changing one count does not reshuffle the other picks.
const STREAM_INSTRUCTIONS: u64 = 1;
const STREAM_TEXTS: u64 = 2;
const STREAM_ORDER: u64 = 3;

fn stream(seed: u64, k: u64) -> Rng {
    flexidepth::rng::seeded_stream(seed, k)
}

/// Pick the passages and tasks. Two thirds of the instructions ask about Austen (the study's domain), a third
/// about the KJV; plain text is half and half.
pub fn plan(corpus: &Corpus, cfg: &DataConfig) -> Result<Plan> {
    let mut rng = stream(cfg.seed, STREAM_INSTRUCTIONS);
    let n_kjv = cfg.instructions / 3;
    let mut passages = select::austen_passages(corpus, cfg.instructions - n_kjv, &mut rng)?;
    passages.extend(select::kjv_passages(corpus, n_kjv, &mut rng)?);
    rng.shuffle(&mut passages);
    let instructions = passages
        .into_iter()
        .map(|p| {
            let task = tasks::INSTRUCTION_TASKS[rng.below(tasks::INSTRUCTION_TASKS.len())];
            let variant = rng.below(tasks::variants(task));
            Instruction {
                task,
                prompt: task.prompt(p.unit, variant, &p.text),
                source: p.source,
            }
        })
        .collect();

    let mut rng = stream(cfg.seed, STREAM_TEXTS);
    let n_kjv = cfg.texts / 2;
    let mut texts = select::austen_texts(corpus, cfg.texts - n_kjv, cfg.text_words, &mut rng)?;
    texts.extend(select::kjv_texts(corpus, n_kjv, cfg.text_words, &mut rng)?);
    let texts = texts
        .into_iter()
        .map(|p: Passage| Sample::Text {
            text: p.text,
            source: p.source,
            task: Task::Text,
        })
        .collect();
    Ok(Plan { instructions, texts })
}

/// The answered instructions and the plain texts, in the seed's order.
pub fn assemble(answered: Vec<Sample>, texts: Vec<Sample>, seed: u64) -> Vec<Sample> {
    let mut all = answered;
    all.extend(texts);
    stream(seed, STREAM_ORDER).shuffle(&mut all);
    all
}

/// One compact JSON object per line.
pub fn to_jsonl(samples: &[Sample]) -> Result<String> {
    let mut out = String::new();
    for s in samples {
        out.push_str(&serde_json::to_string(s).map_err(|e| Error::Input(format!("cannot write a sample: {e}")))?);
        out.push('\n');
    }
    Ok(out)
}

/// The base model answering prompts: greedy, through its chat template, with the generation prompt appended.
pub struct Answerer<'a> {
    model: &'a Model,
    tokenizer: &'a Tokenizer,
    template: &'a ChatTemplate,
    opts: GenerateOptions,
}

/// A model answer and what it cost.
#[derive(Debug, Clone)]
pub struct Answer {
    pub text: String,
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
}

impl<'a> Answerer<'a> {
    pub fn new(files: &'a ModelFiles, model: &'a Model, max_new_tokens: usize) -> Result<Self> {
        let template = files.tokenizer.chat_template.as_ref().ok_or_else(|| {
            Error::Input("this model has no chat template; the data builder needs a chat model".into())
        })?;
        Ok(Answerer {
            model,
            tokenizer: &files.tokenizer,
            template,
            opts: GenerateOptions::greedy(max_new_tokens, files.eos_token_ids()),
        })
    }

    pub fn answer(&self, prompt: &str) -> Result<Answer> {
        let text = self.template.render(&[Message::new("user", prompt)], true)?;
        let ids = self.tokenizer.encode(&text, false)?;
        let gen = generate(self.model, self.tokenizer, &ids, &self.opts, &mut |_| Ok(()))?;
        Ok(Answer {
            text: gen.text,
            prompt_tokens: ids.len(),
            generated_tokens: gen.stats.generated_tokens,
        })
    }
}

#[cfg(test)]
mod tests;
