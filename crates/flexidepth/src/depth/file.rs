//! FlexiDepth weights on disk.
//!
//! - Our **depth-adapter file**: one safetensors file holding only router and adapter tensors under the official
//!   key names, with metadata saying which base model it belongs to (architecture, sizes, a fingerprint), which
//!   layers it routes, the reduction factors and the threshold. It is attached to a base given as GGUF or HF folder.
//! - The **official combined layout** (`model_type: ddllama`, `routing_layers` in `config.json`, router tensors
//!   inside the model's safetensors) is read by the same [`load_parts`], from the model's own weights.

use super::{Adapter, Router, DEFAULT_SKIP_THRESHOLD};
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::model::keys::LayerKey;
use crate::model::linear::Linear;
use crate::model::norm::RmsNorm;
use crate::model::Model;
use crate::weights::{SafetensorsFiles, WeightSource};
use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use std::collections::HashMap;
use std::path::Path;

/// The `format` metadata value of a depth-adapter file.
pub const FORMAT: &str = "flexidepth.depth-adapter.v1";

/// What a depth-adapter file says about itself.
#[derive(Debug, Clone, PartialEq)]
pub struct DepthMeta {
    pub base_architecture: String,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub vocab_size: usize,
    /// Hash of the base's shape (see [`base_fingerprint`]).
    pub base_fingerprint: String,
    /// Mean |embedding| of the base: tells two same-shaped bases apart, tolerant to quantization.
    pub embed_abs_mean: f64,
    pub routed_layers: Vec<usize>,
    /// hidden / router bottleneck.
    pub router_reduction: usize,
    /// intermediate / adapter width.
    pub proj_reduction: usize,
    pub skip_threshold: f32,
}

impl DepthMeta {
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
        })
    }

    fn to_map(&self) -> HashMap<String, String> {
        let layers: Vec<String> = self.routed_layers.iter().map(|l| l.to_string()).collect();
        HashMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("base_architecture".to_string(), self.base_architecture.clone()),
            ("hidden_size".to_string(), self.hidden_size.to_string()),
            ("intermediate_size".to_string(), self.intermediate_size.to_string()),
            ("num_hidden_layers".to_string(), self.num_hidden_layers.to_string()),
            ("vocab_size".to_string(), self.vocab_size.to_string()),
            ("base_fingerprint".to_string(), self.base_fingerprint.clone()),
            ("embed_abs_mean".to_string(), format!("{:.6}", self.embed_abs_mean)),
            ("routed_layers".to_string(), layers.join(",")),
            ("router_reduction_factor".to_string(), self.router_reduction.to_string()),
            ("proj_reduction_factor".to_string(), self.proj_reduction.to_string()),
            ("skip_threshold".to_string(), self.skip_threshold.to_string()),
        ])
    }

    fn from_map(path: &Path, m: &HashMap<String, String>) -> Result<Self> {
        let get = |k: &str| {
            m.get(k)
                .ok_or_else(|| Error::bad_file(path, format!("depth file metadata has no '{k}'")))
        };
        let num = |k: &str| -> Result<usize> {
            get(k)?
                .parse()
                .map_err(|_| Error::bad_file(path, format!("depth file metadata '{k}' is not a number")))
        };
        if get("format")? != FORMAT {
            return Err(Error::bad_file(
                path,
                format!("not a depth-adapter file (format '{}')", get("format")?),
            ));
        }
        let routed_layers = get("routed_layers")?
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.parse::<usize>())
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|_| Error::bad_file(path, "depth file metadata 'routed_layers' is not a list of numbers"))?;
        Ok(DepthMeta {
            base_architecture: get("base_architecture")?.clone(),
            hidden_size: num("hidden_size")?,
            intermediate_size: num("intermediate_size")?,
            num_hidden_layers: num("num_hidden_layers")?,
            vocab_size: num("vocab_size")?,
            base_fingerprint: get("base_fingerprint")?.clone(),
            embed_abs_mean: get("embed_abs_mean")?
                .parse()
                .map_err(|_| Error::bad_file(path, "bad 'embed_abs_mean'"))?,
            routed_layers,
            router_reduction: num("router_reduction_factor")?,
            proj_reduction: num("proj_reduction_factor")?,
            skip_threshold: get("skip_threshold")?
                .parse()
                .map_err(|_| Error::bad_file(path, "bad 'skip_threshold'"))?,
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
        let router = Router {
            router_enc: linear(weights, &enc, &[r, h], device)?,
            router_norm: RmsNorm::new(
                weights.dense(&key(LayerKey::RouterNorm), &[r], DType::F32, device)?,
                config.rms_norm_eps,
            ),
            router_dec: linear(weights, &key(LayerKey::RouterDec), &[h, r], device)?,
            router_head: linear(weights, &key(LayerKey::RouterHead), &[1, h], device)?,
            skip_threshold: DEFAULT_SKIP_THRESHOLD,
        };
        let gate = key(LayerKey::AdapterGateProj);
        let m = *shape_of(weights, &gate)?.first().unwrap_or(&0);
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
        .clone()
        .ok_or_else(|| Error::bad_file(path, "not a depth-adapter file (no metadata)"))?;
    DepthMeta::from_map(path, &map)
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

/// Read a depth-adapter file and attach it to `model` (refusing one made for another base).
pub fn attach_depth_file(model: &mut Model, path: &Path) -> Result<DepthMeta> {
    let meta = read_depth_meta(path)?;
    meta.check_base(model)?;
    let weights = WeightSource::Safetensors(SafetensorsFiles::open(vec![path.to_path_buf()])?);
    let parts = load_parts(&weights, &model.config, &meta.routed_layers, &model.device().clone())
        .map_err(|e| Error::bad_file(path, e))?;
    // The threshold the routers were trained with is the default from now on (policies may override it).
    model.attach_depth(parts, meta.skip_threshold)?;
    Ok(meta)
}

/// Write a depth-adapter file atomically: `tensors` by official key name, stored as `dtype`.
pub fn write_depth_file(path: &Path, meta: &DepthMeta, tensors: &HashMap<String, Tensor>, dtype: DType) -> Result<()> {
    let converted: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(k, t)| Ok((k.clone(), t.to_dtype(dtype)?)))
        .collect::<Result<_>>()?;
    let bytes = safetensors::serialize(converted, Some(meta.to_map()))
        .map_err(|e| Error::Input(format!("cannot serialise {}: {e}", path.display())))?;
    crate::error::write_atomic(path, &bytes)
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
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dev = Device::Cpu;
    let mut normal = |rows: usize, cols: usize| -> Result<Tensor> {
        let v: Vec<f32> = (0..rows * cols).map(|_| 0.02 * gaussian(&mut rng)).collect();
        Ok(Tensor::from_vec(v, (rows, cols), &dev)?)
    };
    let mut out = HashMap::new();
    for &l in routed_layers {
        let p = format!("model.layers.{l}");
        out.insert(format!("{p}.router.router_enc.weight"), normal(r, h)?);
        out.insert(
            format!("{p}.router.router_norm.weight"),
            Tensor::ones(r, DType::F32, &dev)?,
        );
        out.insert(format!("{p}.router.router_dec.weight"), normal(h, r)?);
        out.insert(format!("{p}.router.router_head.weight"), normal(1, h)?);
        out.insert(format!("{p}.router_proj.gate_proj.weight"), normal(m, h)?);
        out.insert(format!("{p}.router_proj.down_proj.weight"), normal(m, h)?);
        out.insert(
            format!("{p}.router_proj.up_proj.weight"),
            Tensor::zeros((h, m), DType::F32, &dev)?,
        );
    }
    Ok(out)
}

/// A standard normal draw (Box–Muller).
fn gaussian(rng: &mut impl rand::Rng) -> f32 {
    let u1: f64 = rng.random::<f64>().max(1e-300);
    let u2: f64 = rng.random();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
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
