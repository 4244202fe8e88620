//! What the server runs: a loaded model with its tokenizer, stop tokens, sampling defaults and depth policy.

use crate::request::DepthChoice;
use flexidepth::depth::{DepthMode, DepthPolicy, FlexiDepth, FullDepth};
use flexidepth::generate::SamplingParams;
use flexidepth::model::Model;
use flexidepth::tokenizer::Tokenizer;
use std::collections::HashMap;
use std::sync::Arc;

/// A model ready to serve. The scheduler thread owns the model; the tokenizer is shared with the HTTP handlers.
pub struct Engine {
    pub model: Model,
    pub tokenizer: Arc<Tokenizer>,
    /// The name clients see in `/v1/models` and in responses.
    pub name: String,
    /// Generation ends after any of these tokens (the model's end-of-generation set).
    pub eos_token_ids: Vec<u32>,
    /// Sampling values a request does not set (the model's generation defaults).
    pub sampling: SamplingParams,
    /// The depth policy a request runs unless it overrides `depth_mode` or `skip_threshold` (its threshold and
    /// skip unit resolved).
    pub depth: FlexiDepth,
}

/// What the HTTP handlers need to know about the model (the model itself stays on the scheduler thread).
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub name: String,
    /// The context window in tokens.
    pub context: usize,
    pub num_layers: usize,
    /// Layers with a FlexiDepth router (empty: `depth_mode` and `skip_threshold` cannot be set).
    pub routed_layers: Vec<usize>,
    /// The server's depth choice, which a request's fields override.
    pub depth: DepthChoice,
    pub sampling: SamplingParams,
    pub vocab_size: usize,
}

impl Engine {
    /// The handlers' view of the model.
    pub fn info(&self) -> ModelInfo {
        ModelInfo {
            name: self.name.clone(),
            context: self.model.config.max_position_embeddings,
            num_layers: self.model.config.num_hidden_layers,
            routed_layers: self.model.routed_layers(),
            depth: DepthChoice {
                mode: self.depth.mode,
                skip_threshold: self
                    .depth
                    .skip_threshold
                    .or(self.model.skip_threshold())
                    .unwrap_or(flexidepth::depth::DEFAULT_SKIP_THRESHOLD),
            },
            sampling: self.sampling.clone(),
            vocab_size: self.model.config.vocab_size,
        }
    }
}

/// One policy object per distinct depth choice, so that the rows of requests with the same choice are planned
/// together in a batched step (the batch groups rows by policy object).
pub(crate) struct PolicyCache {
    base: FlexiDepth,
    policies: HashMap<(u8, u32), Arc<dyn DepthPolicy>>,
    /// For a model without routers: full depth, whatever the choice (and labelled so).
    full: Option<Arc<dyn DepthPolicy>>,
}

impl PolicyCache {
    pub fn new(base: FlexiDepth, routed: bool) -> Self {
        PolicyCache {
            base,
            policies: HashMap::new(),
            full: (!routed).then(|| Arc::new(FullDepth) as Arc<dyn DepthPolicy>),
        }
    }

    /// The policy of `choice`: the server's policy with the choice's mode and threshold.
    pub fn get(&mut self, choice: DepthChoice) -> Arc<dyn DepthPolicy> {
        if let Some(full) = &self.full {
            return full.clone();
        }
        let mode = match choice.mode {
            DepthMode::Dynamic => 0,
            DepthMode::Run => 1,
            DepthMode::Skip => 2,
        };
        let base = self.base;
        self.policies
            .entry((mode, choice.skip_threshold.to_bits()))
            .or_insert_with(|| {
                Arc::new(FlexiDepth {
                    mode: choice.mode,
                    skip_threshold: Some(choice.skip_threshold),
                    ..base
                })
            })
            .clone()
    }
}
