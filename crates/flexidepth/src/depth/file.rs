//! FlexiDepth weights on disk.
//!
//! - Our **depth-adapter file**: one safetensors file holding only router and adapter tensors under the official
//!   key names, with metadata saying which base model it belongs to (architecture, sizes, a fingerprint), which
//!   layers it routes, the reduction factors and the threshold. It is attached to a base given as GGUF or HF folder.
//! - The **official combined layout** (`model_type: ddllama`, `routing_layers` in `config.json`, router tensors
//!   inside the model's safetensors) is read by the same [`load_parts`], from the model's own weights.

use super::{Adapter, GateScaling, Router, Routing, SkipUnit, DEFAULT_SKIP_THRESHOLD};
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::model::keys::LayerKey;
use crate::model::linear::Linear;
use crate::model::norm::RmsNorm;
use crate::model::Model;
use crate::weights::{SafetensorsFiles, WeightSource};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// The `format` metadata value of a depth-adapter file.
pub const FORMAT: &str = "flexidepth.depth-adapter.v1";

/// What a depth-adapter file says about itself.
///
/// Serde reads and writes it as the file's safetensors metadata, a map of strings: numbers in their shortest
/// round-trip text, `routed_layers` as `15,16,17`, the reduction factors under their official names
/// (`router_reduction_factor`, `proj_reduction_factor`). Unknown keys are ignored, so later versions may add some.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DepthMeta {
    /// `architectures[0]` of the base, e.g. `LlamaForCausalLM`.
    pub base_architecture: String,
    #[serde(with = "as_text")]
    pub hidden_size: usize,
    #[serde(with = "as_text")]
    pub intermediate_size: usize,
    #[serde(with = "as_text")]
    pub num_hidden_layers: usize,
    #[serde(with = "as_text")]
    pub vocab_size: usize,
    /// Hash of the base's shape (see [`base_fingerprint`]).
    pub base_fingerprint: String,
    /// Mean |embedding| of the base: tells two same-shaped bases apart, tolerant to quantization.
    #[serde(with = "as_text")]
    pub embed_abs_mean: f64,
    /// The layers that have a router and an adapter.
    #[serde(with = "layer_list")]
    pub routed_layers: Vec<usize>,
    /// hidden / router bottleneck.
    #[serde(rename = "router_reduction_factor", with = "as_text")]
    pub router_reduction: usize,
    /// intermediate / adapter width.
    #[serde(rename = "proj_reduction_factor", with = "as_text")]
    pub proj_reduction: usize,
    /// Gate threshold the adapter was trained at.
    #[serde(with = "as_text")]
    pub skip_threshold: f32,
    /// What a skipped row leaves out, as trained (`layer`, `ffn` or `attention`); files written before it existed
    /// were trained for whole layers.
    #[serde(default, with = "as_text")]
    pub skip_unit: SkipUnit,
    /// How the gate weighs run and skipped rows, as trained (`released` or `hard`, see
    /// [`crate::model::plan::GateScaling`]); files written before it existed use the released rule.
    #[serde(default, with = "as_text")]
    pub gate_scaling: GateScaling,
}

/// A value kept as its `Display` text and read back with `FromStr` (safetensors metadata holds only strings).
mod as_text {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};
    use std::fmt::Display;
    use std::str::FromStr;

    pub fn serialize<T: Display, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(value)
    }

    pub fn deserialize<'de, T: FromStr, D: Deserializer<'de>>(d: D) -> Result<T, D::Error> {
        let text = String::deserialize(d)?;
        text.parse()
            .map_err(|_| D::Error::custom(format!("'{text}' is not a {}", std::any::type_name::<T>())))
    }
}

/// Layer indices kept as `15,16,17`.
mod layer_list {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(layers: &[usize], s: S) -> Result<S::Ok, S::Error> {
        let text: Vec<String> = layers.iter().map(usize::to_string).collect();
        s.serialize_str(&text.join(","))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<usize>, D::Error> {
        let text = String::deserialize(d)?;
        text.split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.trim().parse::<usize>())
            .collect::<Result<_, _>>()
            .map_err(|_| D::Error::custom(format!("'{text}' is not a list of layer indices")))
    }
}

impl DepthMeta {
    /// The routing defaults this file fixes.
    pub fn routing(&self) -> Routing {
        Routing {
            skip_threshold: self.skip_threshold,
            skip_unit: self.skip_unit,
            gate_scaling: self.gate_scaling,
        }
    }

    /// Metadata for a new adapter of `model`.
    pub fn for_model(
        model: &Model,
        routed_layers: Vec<usize>,
        router_reduction: usize,
        proj_reduction: usize,
    ) -> Result<Self> {
        let c = &model.config;
        Ok(DepthMeta {
            base_architecture: c.arch.hf_name().to_string(),
            hidden_size: c.hidden_size,
            intermediate_size: c.intermediate_size,
            num_hidden_layers: c.num_hidden_layers,
            vocab_size: c.vocab_size,
            base_fingerprint: base_fingerprint(c),
            embed_abs_mean: embed_abs_mean(model)?,
            routed_layers,
            router_reduction,
            proj_reduction,
            skip_threshold: DEFAULT_SKIP_THRESHOLD,
            skip_unit: SkipUnit::Layer,
            gate_scaling: GateScaling::Released,
        })
    }

    /// The safetensors metadata of this adapter: [`FORMAT`] under `format`, then every field as text.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        let mut map = BTreeMap::from([("format".to_string(), FORMAT.to_string())]);
        if let Ok(Value::Object(fields)) = serde_json::to_value(self) {
            for (k, v) in fields {
                if let Value::String(text) = v {
                    map.insert(k, text);
                }
            }
        }
        map
    }

    /// Read the safetensors metadata of the depth-adapter file `path`; errors name the key.
    pub fn from_map<'a>(path: &Path, m: impl IntoIterator<Item = (&'a String, &'a String)>) -> Result<Self> {
        let fields: serde_json::Map<String, Value> = m
            .into_iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        match fields.get("format") {
            Some(Value::String(f)) if f == FORMAT => {}
            Some(other) => {
                let f = other.as_str().unwrap_or_default();
                return Err(Error::bad_file(
                    path,
                    format!("not a depth-adapter file (format '{f}')"),
                ));
            }
            None => return Err(Error::bad_file(path, "depth file metadata has no 'format'")),
        }
        serde_path_to_error::deserialize(Value::Object(fields)).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner().to_string().replace('`', "'");
            let msg = if key == "." {
                format!("depth file metadata: {inner}")
            } else {
                format!("depth file metadata '{key}': {inner}")
            };
            Error::bad_file(path, msg)
        })
    }

    /// Refuse a base model this adapter was not made for.
    pub fn check_base(&self, model: &Model) -> Result<()> {
        let c = &model.config;
        let here = format!(
            "{} ({} layers, hidden {}, vocab {})",
            c.arch.hf_name(),
            c.num_hidden_layers,
            c.hidden_size,
            c.vocab_size
        );
        let there = format!(
            "{} ({} layers, hidden {}, vocab {})",
            self.base_architecture, self.num_hidden_layers, self.hidden_size, self.vocab_size
        );
        if self.base_fingerprint != base_fingerprint(c) {
            return Err(Error::Input(format!(
                "this depth adapter was made for {there}, but the model is {here}"
            )));
        }
        let ours = embed_abs_mean(model)?;
        if (ours / self.embed_abs_mean - 1.0).abs() > 0.05 {
            return Err(Error::Input(format!(
                "this depth adapter was made for another {there} (embedding mean |x| {:.5}, this model {ours:.5})",
                self.embed_abs_mean
            )));
        }
        Ok(())
    }
}

/// A stable hash of the base model's shape: architecture and sizes (FNV-1a, 64 bits).
pub fn base_fingerprint(c: &ModelConfig) -> String {
    let desc = format!(
        "{}|{}|{}|{}|{}|{}|{}|{}|{}",
        c.arch.hf_name(),
        c.hidden_size,
        c.intermediate_size,
        c.num_hidden_layers,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.head_dim,
        c.vocab_size,
        c.rope_theta
    );
    let mut h: u64 = 0xcbf29ce484222325;
    for b in desc.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

/// Mean |x| over the first rows of the embedding table.
pub fn embed_abs_mean(model: &Model) -> Result<f64> {
    model.embed_tokens.abs_mean(2048)
}

fn linear(weights: &WeightSource, name: &str, shape: &[usize], device: &Device) -> Result<Linear> {
    Ok(Linear::dense(weights.dense(name, shape, DType::F32, device)?, None))
}

fn shape_of(weights: &WeightSource, name: &str) -> Result<Vec<usize>> {
    weights
        .describe(name)
        .map(|(s, _)| s)
        .ok_or_else(|| Error::MissingTensor(name.to_string()))
}

/// Read the router and adapter of each routed layer from `weights` (official key names), checking every shape
/// against the base `config`; the adapter's swapped `up_proj`/`down_proj` are told apart by shape. The routers'
/// threshold is [`DEFAULT_SKIP_THRESHOLD`] until [`Model::attach_depth`] gives them their file's.
pub fn load_parts(
    weights: &WeightSource,
    config: &ModelConfig,
    routed_layers: &[usize],
    device: &Device,
) -> Result<Vec<(usize, Router, Adapter)>> {
    let h = config.hidden_size;
    let mut out = Vec::new();
    for &layer_idx in routed_layers {
        if layer_idx >= config.num_hidden_layers {
            return Err(Error::Input(format!(
                "routed layer {layer_idx} does not exist (the model has {} layers)",
                config.num_hidden_layers
            )));
        }
        let key = |k: LayerKey| k.weight(layer_idx);
        let enc = key(LayerKey::RouterEnc);
        let r = *shape_of(weights, &enc)?.first().unwrap_or(&0);
        // An empty bottleneck would reach candle's norm as a division by zero.
        if r == 0 {
            return Err(Error::bad_file(
                weights.path(),
                format!("'{enc}' has an empty bottleneck"),
            ));
        }
        let router = Router {
            router_enc: linear(weights, &enc, &[r, h], device)?,
            router_norm: RmsNorm::new(
                weights.dense(&key(LayerKey::RouterNorm), &[r], DType::F32, device)?,
                config.rms_norm_eps,
            ),
            router_dec: linear(weights, &key(LayerKey::RouterDec), &[h, r], device)?,
            router_head: linear(weights, &key(LayerKey::RouterHead), &[1, h], device)?,
            skip_threshold: DEFAULT_SKIP_THRESHOLD,
            skip_unit: SkipUnit::Layer,
            gate_scaling: GateScaling::Released,
        };
        let gate = key(LayerKey::AdapterGateProj);
        let m = *shape_of(weights, &gate)?.first().unwrap_or(&0);
        if m == 0 {
            return Err(Error::bad_file(weights.path(), format!("'{gate}' has an empty width")));
        }
        let down = key(LayerKey::AdapterDownProj);
        let up = key(LayerKey::AdapterUpProj);
        let (down_shape, up_shape) = (shape_of(weights, &down)?, shape_of(weights, &up)?);
        // Official names: down_proj is the [m, h] branch, up_proj the [h, m] output. A file written with
        // Llama-style names has them the other way round; either way the shapes decide.
        let (branch, output) = if down_shape == [m, h] && up_shape == [h, m] {
            (down, up)
        } else if up_shape == [m, h] && down_shape == [h, m] {
            (up, down)
        } else {
            return Err(Error::Shape {
                name: format!("model.layers.{layer_idx}.router_proj.{{down_proj,up_proj}}.weight"),
                expected: vec![m, h, h, m],
                found: [down_shape, up_shape].concat(),
            });
        };
        let adapter = Adapter {
            gate_proj: linear(weights, &gate, &[m, h], device)?,
            down_proj: linear(weights, &branch, &[m, h], device)?,
            up_proj: linear(weights, &output, &[h, m], device)?,
        };
        out.push((layer_idx, router, adapter));
    }
    Ok(out)
}

/// The metadata of a depth-adapter file.
pub fn read_depth_meta(path: &Path) -> Result<DepthMeta> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| Error::bad_file(path, format!("not a readable safetensors file: {e}")))?;
    let map = header
        .metadata()
        .as_ref()
        .ok_or_else(|| Error::bad_file(path, "not a depth-adapter file (no metadata)"))?;
    DepthMeta::from_map(path, map)
}

/// The metadata and every tensor (f32) of a depth-adapter file.
pub fn read_depth_tensors(path: &Path) -> Result<(DepthMeta, HashMap<String, Tensor>)> {
    let meta = read_depth_meta(path)?;
    let tensors = candle_core::safetensors::load(path, &Device::Cpu)
        .map_err(|e| Error::bad_file(path, e))?
        .into_iter()
        .map(|(k, t)| Ok((k, t.to_dtype(DType::F32)?)))
        .collect::<Result<_>>()?;
    Ok((meta, tensors))
}

/// Read a depth-adapter file and attach it to `model`, refusing one made for another base and one that fails
/// [`super::check::check_depth`] (a NaN in a router, a tensor left over, metadata out of range).
pub fn attach_depth_file(model: &mut Model, path: &Path) -> Result<DepthMeta> {
    let (meta, tensors) = read_depth_tensors(path)?;
    // The base first: the other checks hold the file against this model's sizes.
    meta.check_base(model)?;
    super::check::check_depth(path, &meta, &tensors, &model.config)?;
    let weights = WeightSource::Safetensors(SafetensorsFiles::open(vec![path.to_path_buf()])?);
    let parts = load_parts(&weights, &model.config, &meta.routed_layers, &model.device().clone())
        .map_err(|e| Error::bad_file(path, e))?;
    // The threshold the routers were trained with is the default from now on (policies may override it).
    model.attach_depth(parts, meta.routing())?;
    Ok(meta)
}

/// Write a depth-adapter file atomically: `tensors` by official key name, stored as `dtype`.
pub fn write_depth_file(path: &Path, meta: &DepthMeta, tensors: &HashMap<String, Tensor>, dtype: DType) -> Result<()> {
    let converted: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(k, t)| Ok((k.clone(), t.to_dtype(dtype)?)))
        .collect::<Result<_>>()?;
    let bytes = serialize_sorted(converted, &meta.to_map())
        .map_err(|e| Error::Input(format!("cannot serialise {}: {e}", path.display())))?;
    crate::error::write_atomic(path, &bytes)
}

/// A safetensors file whose header is in a fixed order: `__metadata__` first, its keys sorted, then the tensors by
/// name. (`safetensors::serialize` takes the metadata as a `HashMap` and writes it in that map's random order, so
/// two identical adapters would differ in their header bytes.) Tensor offsets are relative to the data, which is
/// kept as written, so only the header is rebuilt.
pub(crate) fn serialize_sorted(
    tensors: Vec<(String, Tensor)>,
    metadata: &BTreeMap<String, String>,
) -> std::result::Result<Vec<u8>, String> {
    let bytes = safetensors::serialize(tensors, None).map_err(|e| e.to_string())?;
    let n = bytes
        .get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_le_bytes)
        .ok_or("no header")? as usize;
    let (header, data) = (bytes.get(8..8 + n).ok_or("short header")?, &bytes[8 + n..]);
    let tensors: BTreeMap<String, Value> = serde_json::from_slice(header).map_err(|e| e.to_string())?;
    #[derive(Serialize)]
    struct Header<'a> {
        #[serde(rename = "__metadata__")]
        metadata: &'a BTreeMap<String, String>,
        #[serde(flatten)]
        tensors: BTreeMap<String, Value>,
    }
    let mut header = serde_json::to_vec(&Header { metadata, tensors }).map_err(|e| e.to_string())?;
    header.resize(header.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + header.len() + data.len());
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(data);
    Ok(out)
}

/// Freshly initialised routers and adapters for `routed_layers` of a model shaped like `config`.
///
/// Linear weights are N(0, 0.02) (transformers' `initializer_range`, as the official recipe starts from), the
/// router norm is ones, so gates start near 0.5: a coin flip, as in the released training. The adapter's output
/// projection (`up_proj`) starts at zero, so a skipped layer initially adds nothing but its residual: skipping
/// starts out as plain layer removal rather than as random noise added to the stream.
pub fn init_tensors(
    config: &ModelConfig,
    routed_layers: &[usize],
    router_reduction: usize,
    proj_reduction: usize,
    seed: u64,
) -> Result<HashMap<String, Tensor>> {
    let h = config.hidden_size;
    let r = (h / router_reduction).max(1);
    let m = (config.intermediate_size / proj_reduction).max(1);
    let mut rng = crate::rng::seeded(seed);
    let dev = Device::Cpu;
    let mut normal = |rows: usize, cols: usize| -> Result<Tensor> {
        let v = crate::rng::normal_vec(&mut rng, rows * cols, 0.02);
        Ok(Tensor::from_vec(v, (rows, cols), &dev)?)
    };
    let mut out = HashMap::new();
    for &l in routed_layers {
        // The draw order (enc, dec, head, gate, branch) is fixed: it pins the stream of a seed.
        let key = |k: LayerKey| k.weight(l);
        out.insert(key(LayerKey::RouterEnc), normal(r, h)?);
        out.insert(key(LayerKey::RouterNorm), Tensor::ones(r, DType::F32, &dev)?);
        out.insert(key(LayerKey::RouterDec), normal(h, r)?);
        out.insert(key(LayerKey::RouterHead), normal(1, h)?);
        out.insert(key(LayerKey::AdapterGateProj), normal(m, h)?);
        out.insert(key(LayerKey::AdapterDownProj), normal(m, h)?);
        out.insert(key(LayerKey::AdapterUpProj), Tensor::zeros((h, m), DType::F32, &dev)?);
    }
    Ok(out)
}

/// A fresh depth adapter for `model`: the recipe `depth init`, `bench` and `train` share. `routed_layers` defaults
/// to the later half ([`super::default_routed_layers`]); the tensors are [`init_tensors`]' with `seed`.
///
/// Errors: a routed layer beyond the model, no routed layers, a zero reduction factor.
pub fn fresh_depth(
    model: &Model,
    routed_layers: Option<Vec<usize>>,
    router_reduction: usize,
    proj_reduction: usize,
    seed: u64,
) -> Result<(DepthMeta, HashMap<String, Tensor>)> {
    let n = model.config.num_hidden_layers;
    let layers = routed_layers.unwrap_or_else(|| super::default_routed_layers(n));
    if layers.is_empty() {
        return Err(Error::Input("no routed layers".into()));
    }
    if let Some(&bad) = layers.iter().find(|&&l| l >= n) {
        return Err(Error::Input(format!(
            "layer {bad} does not exist: the model has {n} layers"
        )));
    }
    if router_reduction == 0 || proj_reduction == 0 {
        return Err(Error::Input("reduction factors must be positive".into()));
    }
    let tensors = init_tensors(&model.config, &layers, router_reduction, proj_reduction, seed)?;
    let meta = DepthMeta::for_model(model, layers, router_reduction, proj_reduction)?;
    Ok((meta, tensors))
}

/// Attach routers and adapters given as tensors by official key name (a fresh adapter, a trainer's state) to
/// `model`, through the same checks as a depth file (they are written to a temporary file and read back).
pub fn attach_tensors(model: &mut Model, meta: &DepthMeta, tensors: &HashMap<String, Tensor>) -> Result<()> {
    let tmp = std::env::temp_dir().join(format!(
        "flexidepth-attach-{}-{:?}.safetensors",
        std::process::id(),
        std::thread::current().id()
    ));
    write_depth_file(&tmp, meta, tensors, DType::F32)?;
    let res = attach_depth_file(model, &tmp);
    let _ = std::fs::remove_file(&tmp);
    res.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> DepthMeta {
        DepthMeta {
            base_architecture: "LlamaForCausalLM".into(),
            hidden_size: 64,
            intermediate_size: 128,
            num_hidden_layers: 4,
            vocab_size: 100,
            base_fingerprint: "0123456789abcdef".into(),
            embed_abs_mean: 0.1 / 3.0,
            routed_layers: vec![2, 3],
            router_reduction: 16,
            proj_reduction: 8,
            skip_threshold: 0.55,
            skip_unit: SkipUnit::Ffn,
            gate_scaling: GateScaling::Hard,
        }
    }

    fn tiny_config() -> ModelConfig {
        ModelConfig::from_hf_json(
            &serde_json::json!({"architectures": ["LlamaForCausalLM"], "hidden_size": 64,
            "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4, "vocab_size": 100,
            "rms_norm_eps": 1e-5, "max_position_embeddings": 64}),
        )
        .unwrap()
    }

    #[test]
    fn metadata_round_trips_through_the_string_map() {
        let m = meta();
        let map = m.to_map();
        assert_eq!(map["format"], FORMAT);
        assert_eq!(map["routed_layers"], "2,3");
        assert_eq!(map["router_reduction_factor"], "16");
        assert_eq!(map["skip_threshold"], "0.55");
        assert_eq!(map["skip_unit"], "ffn");
        assert_eq!(map["gate_scaling"], "hard");
        assert_eq!(map.len(), 14);
        // A file from before the skip unit and gate scaling existed was trained for whole layers, gate-scaled.
        let mut old = map.clone();
        old.remove("skip_unit");
        old.remove("gate_scaling");
        let old = DepthMeta::from_map(Path::new("a"), &old).unwrap();
        assert_eq!(
            (old.skip_unit, old.gate_scaling),
            (SkipUnit::Layer, GateScaling::Released)
        );
        for (key, value) in [("skip_unit", "half"), ("gate_scaling", "soft")] {
            let mut bad = map.clone();
            bad.insert(key.into(), value.into());
            assert!(DepthMeta::from_map(Path::new("a"), &bad).is_err(), "{key}");
        }
        assert_eq!(DepthMeta::from_map(Path::new("a"), &map).unwrap(), m);
    }

    #[test]
    fn bad_metadata_is_named() {
        let p = Path::new("a.safetensors");
        let mut map = meta().to_map();
        map.insert("hidden_size".into(), "wide".into());
        let e = DepthMeta::from_map(p, &map).unwrap_err().to_string();
        assert!(e.contains("'hidden_size'") && e.contains("wide"), "{e}");
        let mut map = meta().to_map();
        map.insert("routed_layers".into(), "1,x".into());
        let e = DepthMeta::from_map(p, &map).unwrap_err().to_string();
        assert!(e.contains("'routed_layers'"), "{e}");
        let mut map = meta().to_map();
        map.remove("skip_threshold");
        let e = DepthMeta::from_map(p, &map).unwrap_err().to_string();
        assert!(e.contains("skip_threshold"), "{e}");
        let mut map = meta().to_map();
        map.insert("format".into(), "other".into());
        let e = DepthMeta::from_map(p, &map).unwrap_err().to_string();
        assert!(e.contains("not a depth-adapter file (format 'other')"), "{e}");
    }

    /// The adapter shipped in the repository (written before the metadata was a serde struct) reads unchanged.
    #[test]
    fn the_shipped_adapter_still_reads() {
        let p =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../adapters/smollm2-135m-instruct/flexidepth.safetensors");
        let m = read_depth_meta(&p).unwrap();
        assert_eq!(m.base_architecture, "LlamaForCausalLM");
        assert_eq!(
            (m.hidden_size, m.intermediate_size, m.num_hidden_layers, m.vocab_size),
            (576, 1536, 30, 49152)
        );
        assert_eq!(m.base_fingerprint, "8f577903fa5cd779");
        assert_eq!(m.embed_abs_mean, 0.092516);
        assert_eq!(m.routed_layers, (15..30).collect::<Vec<_>>());
        assert_eq!((m.router_reduction, m.proj_reduction, m.skip_threshold), (16, 16, 0.5));
    }

    /// Two writes of the same adapter are the same bytes (the metadata used to follow a `HashMap`'s random order),
    /// and the file reads back: metadata and tensors.
    #[test]
    fn depth_files_are_deterministic_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let tensors = init_tensors(&tiny_config(), &[2, 3], 16, 8, 1).unwrap();
        let (a, b) = (dir.path().join("a.safetensors"), dir.path().join("b.safetensors"));
        write_depth_file(&a, &meta(), &tensors, DType::F32).unwrap();
        let shuffled: HashMap<String, Tensor> = tensors.iter().map(|(k, t)| (k.clone(), t.clone())).collect();
        write_depth_file(&b, &meta(), &shuffled, DType::F32).unwrap();
        let bytes = std::fs::read(&a).unwrap();
        assert_eq!(bytes, std::fs::read(&b).unwrap());
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        assert_eq!(n % 8, 0);
        let header = std::str::from_utf8(&bytes[8..8 + n]).unwrap();
        assert!(
            header.starts_with("{\"__metadata__\":{\"base_architecture\":"),
            "{header}"
        );
        let (m, back) = read_depth_tensors(&a).unwrap();
        assert_eq!(m, meta());
        assert_eq!(back.len(), tensors.len());
        for (k, t) in &tensors {
            let diff = (t - &back[k])
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert_eq!(diff, 0.0, "{k}");
        }
    }

    #[test]
    fn fresh_tensors_are_seeded_normal_with_a_zero_output() {
        let c = tiny_config();
        let a = init_tensors(&c, &[1], 16, 8, 3).unwrap();
        let b = init_tensors(&c, &[1], 16, 8, 3).unwrap();
        let other = init_tensors(&c, &[1], 16, 8, 4).unwrap();
        let enc = "model.layers.1.router.router_enc.weight";
        let v = |m: &HashMap<String, Tensor>, k: &str| m[k].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(v(&a, enc), v(&b, enc));
        assert_ne!(v(&a, enc), v(&other, enc));
        assert_eq!(a[enc].dims(), [4, 64]);
        let gate = v(&a, "model.layers.1.router_proj.gate_proj.weight");
        let std = (gate.iter().map(|x| x * x).sum::<f32>() / gate.len() as f32).sqrt();
        assert!((std - 0.02).abs() < 0.002, "{std}");
        assert!(v(&a, "model.layers.1.router_proj.up_proj.weight")
            .iter()
            .all(|&x| x == 0.0));
        assert!(v(&a, "model.layers.1.router.router_norm.weight")
            .iter()
            .all(|&x| x == 1.0));
    }
}
