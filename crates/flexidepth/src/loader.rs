//! Finding and opening a model: a GGUF file, an HF folder, or a short name of a default model in the cache.

use crate::config::{HfConfig, ModelConfig};
use crate::error::{Error, Result};
use crate::generate::SamplingParams;
use crate::model::{Model, WeightFormat};
use crate::tokenizer::Tokenizer;
use crate::weights::{GgufFile, SafetensorsFiles, WeightSource};
use candle_core::Device;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The default models: short name, cached file name.
pub const KNOWN_MODELS: &[(&str, &str)] = &[
    ("smollm2-135m-instruct", "smollm2-135m-instruct.Q4_1.gguf"),
    ("qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-0.5b-instruct.gguf"),
];

/// The default model of the CLI.
pub const DEFAULT_MODEL: &str = "smollm2-135m-instruct";

/// Where fetched models live: `$FLEXIDEPTH_CACHE`, else `~/.cache/flexidepth`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("FLEXIDEPTH_CACHE") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("flexidepth")
}

/// What a model argument points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelPath {
    Gguf(PathBuf),
    HfDir(PathBuf),
}

impl std::fmt::Display for ModelPath {
    /// `GGUF file <path>` or `HF folder <path>`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModelPath::Gguf(p) => write!(f, "GGUF file {}", p.display()),
            ModelPath::HfDir(p) => write!(f, "HF folder {}", p.display()),
        }
    }
}

/// Resolve `-m`: a short name, a GGUF path or an HF folder.
pub fn resolve(spec: &str) -> Result<ModelPath> {
    if let Some((name, file)) = KNOWN_MODELS.iter().find(|(n, _)| *n == spec) {
        let path = cache_dir().join(file);
        if !path.exists() {
            return Err(Error::Input(format!(
                "model '{name}' is not in the cache ({}); fetch it with: scripts/fetch-models.sh {name}",
                path.display()
            )));
        }
        return Ok(ModelPath::Gguf(path));
    }
    let path = PathBuf::from(spec);
    if path.is_dir() {
        return Ok(ModelPath::HfDir(path));
    }
    if path.is_file() {
        return Ok(ModelPath::Gguf(path));
    }
    let known: Vec<&str> = KNOWN_MODELS.iter().map(|(n, _)| *n).collect();
    Err(Error::Input(format!(
        "model '{spec}' not found: give a GGUF file, an HF folder, or one of {}",
        known.join(", ")
    )))
}

/// Sampling and stopping defaults from `generation_config.json`.
#[derive(Debug, Clone, Default)]
pub struct GenerationDefaults {
    pub do_sample: Option<bool>,
    pub temperature: Option<f64>,
    pub top_k: Option<usize>,
    pub top_p: Option<f64>,
    pub min_p: Option<f64>,
    pub repetition_penalty: Option<f32>,
    pub eos_token_ids: Vec<u32>,
}

impl GenerationDefaults {
    /// Read a `generation_config.json` document. A key that is present (not `null`) must have its type: a
    /// `"temperature": "hot"` is an error naming the key, not a silently ignored default.
    pub fn from_json(v: &Value) -> Result<Self> {
        fn get<T>(v: &Value, key: &str, want: &str, f: impl Fn(&Value) -> Option<T>) -> Result<Option<T>> {
            match v.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(x) => f(x)
                    .map(Some)
                    .ok_or_else(|| Error::Config(format!("'{key}' must be {want}, not {x}"))),
            }
        }
        let ids_ok = match v.get("eos_token_id") {
            None | Some(Value::Null) => true,
            Some(Value::Array(a)) => a.iter().all(Value::is_u64),
            Some(x) => x.is_u64(),
        };
        if !ids_ok {
            return Err(Error::Config(
                "'eos_token_id' must be a token id or a list of them".into(),
            ));
        }
        Ok(GenerationDefaults {
            do_sample: get(v, "do_sample", "a boolean", Value::as_bool)?,
            temperature: get(v, "temperature", "a number", Value::as_f64)?,
            top_k: get(v, "top_k", "a count", |x| {
                x.as_u64().and_then(|k| usize::try_from(k).ok())
            })?,
            top_p: get(v, "top_p", "a number", Value::as_f64)?,
            min_p: get(v, "min_p", "a number", Value::as_f64)?,
            repetition_penalty: get(v, "repetition_penalty", "a number", |x| x.as_f64().map(|p| p as f32))?,
            eos_token_ids: crate::config::token_ids(v.get("eos_token_id")),
        })
    }

    /// Refuse defaults no generation could use: sampling values outside their domains, end ids outside the
    /// vocabulary.
    pub fn check(&self, vocab_size: usize) -> Result<()> {
        // The raw value too: `do_sample: false` would hide a temperature no sampling could use.
        if let Some(t) = self.temperature.filter(|t| !(t.is_finite() && *t >= 0.0)) {
            return Err(Error::Config(format!(
                "'temperature' {t} in generation_config.json must be a number ≥ 0"
            )));
        }
        self.sampling().validate()?;
        if let Some(id) = self.eos_token_ids.iter().find(|&&id| id as usize >= vocab_size) {
            return Err(Error::Config(format!(
                "'eos_token_id' {id} is outside the vocabulary of {vocab_size}"
            )));
        }
        Ok(())
    }

    /// The sampling parameters these defaults imply (`do_sample: false` means greedy).
    pub fn sampling(&self) -> SamplingParams {
        let mut p = SamplingParams::default();
        if let Some(t) = self.temperature {
            p.temperature = t;
        }
        if self.do_sample == Some(false) {
            p.temperature = 0.0;
        }
        if let Some(k) = self.top_k {
            p.top_k = k;
        }
        if let Some(x) = self.top_p {
            p.top_p = x;
        }
        if let Some(x) = self.min_p {
            p.min_p = x;
        }
        if let Some(x) = self.repetition_penalty {
            p.repeat_penalty = x;
        }
        p
    }
}

/// An opened model: config, weights (not yet materialised), tokenizer and generation defaults.
pub struct ModelFiles {
    pub path: ModelPath,
    pub config: ModelConfig,
    pub weights: WeightSource,
    pub tokenizer: Tokenizer,
    pub generation: GenerationDefaults,
    /// Routed layers of a model in the official FlexiDepth layout (`routing_layers` in `config.json`), whose
    /// router tensors sit in the model's own weights.
    pub routing_layers: Option<Vec<usize>>,
    /// The DMTD layout a `config.json` declares (`num_encoding_layers`, ..., `mtp_horizon`; spec B2): the
    /// defaults of `generate --dmtd`.
    pub dmtd: Option<crate::dmtd::DmtdLayout>,
}

fn read_json(path: &Path) -> Result<Value> {
    let text = crate::error::read_to_string(path)?;
    serde_json::from_str(&text).map_err(|e| Error::bad_file(path, format!("invalid JSON: {e}")))
}

impl ModelFiles {
    /// Open the model named by `spec` (see [`resolve`]).
    pub fn open(spec: &str) -> Result<Self> {
        Self::open_path(resolve(spec)?)
    }

    pub fn open_path(path: ModelPath) -> Result<Self> {
        match &path {
            ModelPath::Gguf(p) => {
                let mut gguf = GgufFile::open(p)?;
                let config = gguf.config()?;
                let vocab = config.vocab_size;
                let tokenizer = Tokenizer::from_gguf(&gguf, vocab)?;
                gguf.drop_tokenizer_arrays();
                return_freed_memory();
                // llama.cpp's end-of-generation set starts from the EOS, EOT and EOM ids of the metadata.
                let mut eos_token_ids = config.eos_token_ids.clone();
                for key in ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
                    eos_token_ids.extend(gguf.meta_token_id(key, vocab)?);
                }
                let generation = GenerationDefaults {
                    eos_token_ids,
                    ..Default::default()
                };
                Ok(ModelFiles {
                    path,
                    config,
                    weights: WeightSource::Gguf(gguf),
                    tokenizer,
                    generation,
                    routing_layers: None,
                    dmtd: None,
                })
            }
            ModelPath::HfDir(dir) => {
                let cfg_path = dir.join("config.json");
                let cfg_json = read_json(&cfg_path)?;
                let hf = HfConfig::from_json(&cfg_json).and_then(|hf| {
                    let dmtd = crate::dmtd::hf_keys::read_layout(&hf)?;
                    Ok((ModelConfig::from_hf(&hf)?, hf.routing_layers, dmtd))
                });
                let (config, routing_layers, dmtd) = hf.map_err(|e| match e {
                    Error::Config(m) => Error::Config(format!("{}: {m}", cfg_path.display())),
                    other => other,
                })?;
                let weights = WeightSource::Safetensors(SafetensorsFiles::open_dir(dir)?);
                crate::weights::layout::check_layer_count(&weights.names(), &config)
                    .map_err(|e| Error::bad_file(&cfg_path, e))?;
                let tokenizer = Tokenizer::from_hf_dir(dir)?;
                let gen_path = dir.join("generation_config.json");
                let mut generation = if gen_path.exists() {
                    GenerationDefaults::from_json(&read_json(&gen_path)?).map_err(|e| Error::bad_file(&gen_path, e))?
                } else {
                    GenerationDefaults::default()
                };
                if generation.eos_token_ids.is_empty() {
                    generation.eos_token_ids = config.eos_token_ids.clone();
                }
                generation
                    .check(config.vocab_size)
                    .map_err(|e| Error::bad_file(&gen_path, e))?;
                Ok(ModelFiles {
                    path,
                    config,
                    weights,
                    tokenizer,
                    generation,
                    routing_layers,
                    dmtd,
                })
            }
        }
    }

    /// Materialise the model's weights (with its routers, for the official FlexiDepth layout).
    pub fn load_model(&self, format: WeightFormat, device: &Device) -> Result<Model> {
        let mut model = Model::load(&self.config, &self.weights, format, device)?;
        if let Some(layers) = &self.routing_layers {
            let parts = crate::depth::file::load_parts(&self.weights, &self.config, layers, device)?;
            // The official layout has no threshold field: the released model hard-codes 0.5 (spec A3).
            model.attach_depth(parts, crate::depth::Routing::default())?;
        }
        self.weights.release_pages();
        return_freed_memory();
        Ok(model)
    }

    /// The end-of-generation set, ascending: the ids `generation_config.json` names (one id or its list form),
    /// else `config.json`'s; for GGUF the EOS, EOT and EOM ids of the metadata; the tokenizer's EOS token; and
    /// every special token of the vocabulary that marks an end of text or turn
    /// ([`crate::tokenizer::END_OF_GENERATION_TEXTS`], as llama.cpp builds its `special_eog_ids`). Qwen2.5's GGUF
    /// names only `<|im_end|>` but its generation config ends on `<|endoftext|>` too; both are in the set.
    pub fn eos_token_ids(&self) -> Vec<u32> {
        let mut ids = self.generation.eos_token_ids.clone();
        ids.extend(&self.config.eos_token_ids);
        ids.extend(
            self.tokenizer
                .eos_token
                .as_deref()
                .and_then(|t| self.tokenizer.token_to_id(t)),
        );
        ids.extend(self.tokenizer.end_of_generation_ids());
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}

/// Hand memory freed while loading (tokenizer construction, transient copies) back to the OS. glibc keeps freed
/// small allocations in its arenas, where they would count against the process for its whole life.
fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> i32;
        }
        // SAFETY: malloc_trim only releases free heap memory; it has no preconditions.
        unsafe {
            malloc_trim(0);
        }
    }
}
