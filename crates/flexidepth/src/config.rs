//! One resolved [`ModelConfig`], read from an HF `config.json` or from GGUF metadata.
//!
//! Options we do not implement (rope scaling, sliding windows, non-SiLU activations) are refused here, at load,
//! so the model code never has to branch on them.

use crate::error::{Error, Result};
use serde::Deserialize;
use serde_json::{json, Value};

/// The decoder families we run. All are pre-norm RMSNorm + RoPE + SwiGLU decoders; they differ in small ways.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// `LlamaForCausalLM` (SmolLM2, Llama 2/3 without rope scaling).
    Llama,
    /// `Qwen2ForCausalLM`: biases on q/k/v projections.
    Qwen2,
    /// `Qwen3ForCausalLM`: per-head RMSNorm on q and k, explicit `head_dim`.
    Qwen3,
}

impl Arch {
    /// From `architectures[0]` of an HF `config.json`.
    pub fn from_hf(name: &str) -> Result<Self> {
        match name {
            "LlamaForCausalLM" => Ok(Arch::Llama),
            "Qwen2ForCausalLM" => Ok(Arch::Qwen2),
            "Qwen3ForCausalLM" => Ok(Arch::Qwen3),
            // The released FlexiDepth model: Llama plus routers (`routing_layers` in its config).
            "DDLlamaForCausalLM" => Ok(Arch::Llama),
            // Released DMTD checkpoints (spec B2): standard Qwen3 weights plus the layer-group keys.
            "DMTDQwen3ForCausalLM" | "MTPQwen3ForCausalLM" => Ok(Arch::Qwen3),
            other => Err(Error::UnknownArchitecture(other.to_string())),
        }
    }
    /// From `general.architecture` of a GGUF file.
    pub fn from_gguf(name: &str) -> Result<Self> {
        match name {
            "llama" => Ok(Arch::Llama),
            "qwen2" => Ok(Arch::Qwen2),
            "qwen3" => Ok(Arch::Qwen3),
            other => Err(Error::UnknownArchitecture(other.to_string())),
        }
    }
    pub fn hf_name(self) -> &'static str {
        match self {
            Arch::Llama => "LlamaForCausalLM",
            Arch::Qwen2 => "Qwen2ForCausalLM",
            Arch::Qwen3 => "Qwen3ForCausalLM",
        }
    }
    pub fn model_type(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
        }
    }
}

/// The resolved shape and hyper-parameters of a decoder.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Biases on q/k/v projections (Qwen2 always; Llama when `attention_bias` is set).
    pub attention_bias: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

/// The fields of an HF `config.json` that we read, with the defaults transformers applies when a key is absent
/// (or `null`). Unknown keys are ignored. A key of the wrong type is an error naming the key (see
/// [`HfConfig::from_json`]), never a silent default.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct HfConfig {
    /// The model class names; the first one picks the [`Arch`].
    pub architectures: Vec<String>,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Defaults to `num_attention_heads` (no grouped-query attention).
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Defaults to `hidden_size / num_attention_heads` (Qwen3 gives it explicitly).
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// Only `silu` is implemented.
    #[serde(default)]
    pub hidden_act: Option<String>,
    pub rms_norm_eps: f64,
    /// Defaults to 10 000.
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// Only absent, `null` or `rope_type: default` is implemented.
    #[serde(default)]
    pub rope_scaling: Option<Value>,
    #[serde(default)]
    pub use_sliding_window: Option<bool>,
    pub max_position_embeddings: usize,
    /// Defaults to `false`.
    #[serde(default)]
    pub tie_word_embeddings: Option<bool>,
    /// Defaults to `false` (Qwen2 has the biases whatever this says).
    #[serde(default)]
    pub attention_bias: Option<bool>,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<TokenIds>,
    /// The routed layers of the official FlexiDepth layout (`DDLlamaForCausalLM`, `model_type: ddllama`).
    #[serde(default)]
    pub routing_layers: Option<Vec<usize>>,
    /// DMTD layer groups and cycle length (spec B2; read by `crate::dmtd::hf_keys::read_layout`).
    #[serde(default)]
    pub num_encoding_layers: Option<usize>,
    #[serde(default)]
    pub num_thinking_layers: Option<usize>,
    #[serde(default)]
    pub num_decoding_layers: Option<usize>,
    #[serde(default)]
    pub mtp_horizon: Option<usize>,
}

/// One token id or a list of them (`eos_token_id` takes both forms).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    /// The ids as a list.
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            TokenIds::One(id) => vec![*id],
            TokenIds::Many(ids) => ids.clone(),
        }
    }
}

impl HfConfig {
    /// Read a parsed `config.json` document. Errors name the key: `'rope_theta': invalid type: string "x",
    /// expected f64`, `missing field 'hidden_size'`.
    pub fn from_json(cfg: &Value) -> Result<Self> {
        serde_path_to_error::deserialize(cfg).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner().to_string().replace('`', "'");
            if key == "." {
                Error::Config(inner)
            } else {
                Error::Config(format!("'{key}': {inner}"))
            }
        })
    }
}

/// The bounds every model size and number is held to before anything is sized by it: far beyond every released
/// model (the largest have ~130 layers, 256k vocabularies, 10M-token contexts), far below what would make an
/// allocation abort or a product of two sizes overflow.
#[derive(Debug, Clone)]
pub struct Limits {
    pub layers: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub context: usize,
    pub rms_norm_eps: std::ops::RangeInclusive<f64>,
    pub rope_theta: std::ops::RangeInclusive<f64>,
}

/// See [`Limits`].
pub const LIMITS: Limits = Limits {
    layers: 1024,
    hidden_size: 1 << 16,
    intermediate_size: 1 << 20,
    heads: 1024,
    head_dim: 1024,
    vocab: 1 << 22,
    context: 1 << 24,
    // As f32 (the kernels' type) the epsilon must stay a positive normal number.
    rms_norm_eps: std::ops::RangeInclusive::new(f32::MIN_POSITIVE as f64, 1.0),
    rope_theta: std::ops::RangeInclusive::new(1.0, 1e12),
};

/// `eos_token_id` may be one id or a list of ids.
pub(crate) fn token_ids(v: Option<&Value>) -> Vec<u32> {
    match v {
        // An id past u32 becomes u32::MAX, which the vocabulary check then refuses (never a silent wrap).
        Some(Value::Number(n)) => n
            .as_u64()
            .map(|x| vec![u32::try_from(x).unwrap_or(u32::MAX)])
            .unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64())
            .map(|x| u32::try_from(x).unwrap_or(u32::MAX))
            .collect(),
        _ => vec![],
    }
}

/// `value`, refused when zero, with the key named.
fn positive(key: &str, value: usize) -> Result<usize> {
    if value == 0 {
        return Err(Error::Config(format!("'{key}' must be a positive integer")));
    }
    Ok(value)
}

impl ModelConfig {
    /// Parse an HF `config.json` document (see [`HfConfig`]).
    pub fn from_hf_json(cfg: &Value) -> Result<Self> {
        Self::from_hf(&HfConfig::from_json(cfg)?)
    }

    /// Resolve the fields of an HF `config.json`: architecture, defaults, refusal of what we do not implement.
    pub fn from_hf(cfg: &HfConfig) -> Result<Self> {
        let arch_name = cfg
            .architectures
            .first()
            .ok_or_else(|| Error::Config("'architectures' must be a non-empty list of names".into()))?;
        let arch = Arch::from_hf(arch_name)?;
        if let Some(act) = &cfg.hidden_act {
            if act != "silu" {
                return Err(Error::Unsupported(format!("hidden_act '{act}' (only 'silu')")));
            }
        }
        if let Some(rs) = cfg.rope_scaling.as_ref().filter(|v| !v.is_null()) {
            let kind = rs.get("rope_type").or_else(|| rs.get("type")).and_then(|v| v.as_str());
            if kind != Some("default") {
                return Err(Error::Unsupported(format!(
                    "rope_scaling {rs} (only plain RoPE is implemented)"
                )));
            }
        }
        if cfg.use_sliding_window == Some(true) {
            return Err(Error::Unsupported("use_sliding_window = true".into()));
        }
        let hidden_size = positive("hidden_size", cfg.hidden_size)?;
        let num_attention_heads = positive("num_attention_heads", cfg.num_attention_heads)?;
        let num_key_value_heads = match cfg.num_key_value_heads {
            Some(n) => positive("num_key_value_heads", n)?,
            None => num_attention_heads,
        };
        let head_dim = match cfg.head_dim {
            Some(d) => positive("head_dim", d)?,
            None => hidden_size / num_attention_heads,
        };
        let attention_bias = match arch {
            Arch::Qwen2 => true,
            _ => cfg.attention_bias.unwrap_or(false),
        };
        let config = ModelConfig {
            arch,
            vocab_size: positive("vocab_size", cfg.vocab_size)?,
            hidden_size,
            intermediate_size: positive("intermediate_size", cfg.intermediate_size)?,
            num_hidden_layers: positive("num_hidden_layers", cfg.num_hidden_layers)?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: cfg.rms_norm_eps,
            rope_theta: cfg.rope_theta.unwrap_or(10_000.0),
            max_position_embeddings: positive("max_position_embeddings", cfg.max_position_embeddings)?,
            tie_word_embeddings: cfg.tie_word_embeddings.unwrap_or(false),
            attention_bias,
            bos_token_id: cfg.bos_token_id,
            eos_token_ids: cfg.eos_token_id.as_ref().map(TokenIds::to_vec).unwrap_or_default(),
        };
        config.validate()?;
        Ok(config)
    }

    /// Check every size against [`LIMITS`] and the relations between sizes that the kernels rely on; the errors
    /// name the HF key.
    pub fn validate(&self) -> Result<()> {
        let l = &LIMITS;
        for (key, value, max) in [
            ("vocab_size", self.vocab_size, l.vocab),
            ("hidden_size", self.hidden_size, l.hidden_size),
            ("intermediate_size", self.intermediate_size, l.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers, l.layers),
            ("num_attention_heads", self.num_attention_heads, l.heads),
            ("num_key_value_heads", self.num_key_value_heads, l.heads),
            ("head_dim", self.head_dim, l.head_dim),
            ("max_position_embeddings", self.max_position_embeddings, l.context),
        ] {
            if !(1..=max).contains(&value) {
                return Err(Error::Config(format!("'{key}' is {value}, outside 1..={max}")));
            }
        }
        if !self.num_attention_heads.is_multiple_of(self.num_key_value_heads) {
            return Err(Error::Config(format!(
                "num_attention_heads ({}) is not a multiple of num_key_value_heads ({})",
                self.num_attention_heads, self.num_key_value_heads
            )));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(Error::Config(format!(
                "head_dim ({}) must be even for RoPE",
                self.head_dim
            )));
        }
        for (key, value, range) in [
            ("rms_norm_eps", self.rms_norm_eps, &l.rms_norm_eps),
            ("rope_theta", self.rope_theta, &l.rope_theta),
        ] {
            if !(value.is_finite() && range.contains(&value)) {
                return Err(Error::Config(format!(
                    "'{key}' is {value}, outside [{:e}, {:e}]",
                    range.start(),
                    range.end()
                )));
            }
        }
        for id in self.bos_token_id.iter().chain(&self.eos_token_ids) {
            if *id as usize >= self.vocab_size {
                return Err(Error::Config(format!(
                    "token id {id} (bos_token_id / eos_token_id) is outside the vocabulary of {}",
                    self.vocab_size
                )));
            }
        }
        Ok(())
    }

    /// The HF `config.json` that describes this model (used by `convert`).
    pub fn to_hf_json(&self, torch_dtype: &str) -> Value {
        let mut v = json!({
            "architectures": [self.arch.hf_name()],
            "model_type": self.arch.model_type(),
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": null,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "torch_dtype": torch_dtype,
        });
        if self.arch == Arch::Llama {
            v["attention_bias"] = json!(self.attention_bias);
        }
        if let Some(b) = self.bos_token_id {
            v["bos_token_id"] = json!(b);
        }
        match self.eos_token_ids.as_slice() {
            [] => {}
            [one] => v["eos_token_id"] = json!(one),
            many => v["eos_token_id"] = json!(many),
        }
        v
    }

    /// Parameters of the decoder, counted from the shapes.
    pub fn num_parameters(&self) -> usize {
        let h = self.hidden_size;
        let q = self.num_attention_heads * self.head_dim;
        let kv = self.num_key_value_heads * self.head_dim;
        let mut attn = h * q + 2 * h * kv + q * h;
        if self.attention_bias {
            attn += q + 2 * kv;
        }
        if self.arch == Arch::Qwen3 {
            attn += 2 * self.head_dim;
        }
        let layer = attn + 3 * h * self.intermediate_size + 2 * h;
        let embed = self.vocab_size * h;
        let head = if self.tie_word_embeddings { 0 } else { embed };
        self.num_hidden_layers * layer + embed + head + h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn llama_json() -> Value {
        json!({"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
               "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100,
               "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 256, "eos_token_id": [2, 3]})
    }

    #[test]
    fn parses_and_round_trips() {
        let c = ModelConfig::from_hf_json(&llama_json()).unwrap();
        assert_eq!(c.head_dim, 16);
        assert_eq!(c.eos_token_ids, vec![2, 3]);
        let back = ModelConfig::from_hf_json(&c.to_hf_json("float32")).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn missing_key_is_named() {
        let mut j = llama_json();
        j.as_object_mut().unwrap().remove("hidden_size");
        let e = ModelConfig::from_hf_json(&j).unwrap_err().to_string();
        assert!(e.contains("hidden_size"), "{e}");
    }

    #[test]
    fn a_key_of_the_wrong_type_is_named_not_defaulted() {
        for (key, bad) in [
            ("rope_theta", json!("x")),
            ("tie_word_embeddings", json!("yes")),
            ("hidden_size", json!(-3)),
            ("num_key_value_heads", json!(1.5)),
            ("eos_token_id", json!("</s>")),
            ("hidden_act", json!(1)),
            ("routing_layers", json!([1, "two"])),
        ] {
            let mut j = llama_json();
            j[key] = bad;
            let e = ModelConfig::from_hf_json(&j).unwrap_err().to_string();
            assert!(e.contains(&format!("'{key}")), "{key}: {e}");
        }
        let mut j = llama_json();
        j["hidden_size"] = json!(0);
        let e = ModelConfig::from_hf_json(&j).unwrap_err().to_string();
        assert!(e.contains("'hidden_size' must be a positive integer"), "{e}");
    }

    #[test]
    fn hf_defaults_and_optional_keys() {
        let mut j = llama_json();
        for k in ["rope_theta", "num_key_value_heads", "eos_token_id"] {
            j.as_object_mut().unwrap().remove(k);
        }
        j["bos_token_id"] = Value::Null;
        j["rope_scaling"] = Value::Null;
        j["some_future_key"] = json!({"anything": 1});
        let c = ModelConfig::from_hf_json(&j).unwrap();
        assert_eq!(c.rope_theta, 10_000.0);
        assert_eq!(c.num_key_value_heads, 4);
        assert!(!c.tie_word_embeddings && !c.attention_bias);
        assert_eq!((c.bos_token_id, c.eos_token_ids.clone()), (None, vec![]));
        j["eos_token_id"] = json!(7);
        j["head_dim"] = json!(32);
        j["architectures"] = json!(["Qwen3ForCausalLM", "Other"]);
        let c = ModelConfig::from_hf_json(&j).unwrap();
        assert_eq!((c.arch, c.head_dim, c.eos_token_ids), (Arch::Qwen3, 32, vec![7]));
        j["architectures"] = json!(["Qwen2ForCausalLM"]);
        assert!(ModelConfig::from_hf_json(&j).unwrap().attention_bias);
        j["architectures"] = json!(["DDLlamaForCausalLM"]);
        j["routing_layers"] = json!([16, 17]);
        let hf = HfConfig::from_json(&j).unwrap();
        assert_eq!(hf.routing_layers, Some(vec![16, 17]));
        assert_eq!(ModelConfig::from_hf(&hf).unwrap().arch, Arch::Llama);
        j["architectures"] = json!([]);
        let e = ModelConfig::from_hf_json(&j).unwrap_err().to_string();
        assert!(e.contains("architectures"), "{e}");
    }

    #[test]
    fn unknown_architecture_and_rope_scaling_are_refused() {
        let mut j = llama_json();
        j["architectures"] = json!(["MambaForCausalLM"]);
        let e = ModelConfig::from_hf_json(&j).unwrap_err().to_string();
        assert!(e.contains("MambaForCausalLM"), "{e}");
        let mut j = llama_json();
        j["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0});
        let e = ModelConfig::from_hf_json(&j).unwrap_err().to_string();
        assert!(e.contains("rope_scaling"), "{e}");
    }
}
