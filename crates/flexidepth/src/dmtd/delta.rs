//! Trained DMTD weights on disk: low-rank deltas (LoRA, Hu et al. 2021: `W' = W + (α / r) · B · A`) of the
//! projections of some layers (the decoding layers, spec B3's "trainable" part on a CPU budget), in one safetensors
//! file with metadata naming the base model, the layout E/T/D and τ they were trained for, and the rank.
//!
//! Tensor names follow PEFT's, without its `base_model.model.` prefix: `model.layers.{i}.self_attn.q_proj.lora_A.weight`
//! (`[r, in]`) and `….lora_B.weight` (`[out, r]`). [`merge_delta_file`] adds them into a loaded model once, so
//! decoding and evaluation run the ordinary layer code.

use super::DmtdLayout;
use crate::depth::file::{base_fingerprint, embed_abs_mean};
use crate::error::{Error, Result};
use crate::model::layer::DecoderLayer;
use crate::model::linear::{Linear, LinearWeight};
use crate::model::Model;
use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// The `format` metadata value of a DMTD delta file.
pub const FORMAT: &str = "flexidepth.dmtd-lora.v1";

/// The projections a delta may target, by their HF names within a layer.
pub const TARGETS: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

/// The projection `target` (one of [`TARGETS`]) of `layer`.
///
/// # Errors
/// [`Error::Input`] for a name not in [`TARGETS`].
pub fn target_linear<'a>(layer: &'a DecoderLayer, target: &str) -> Result<&'a Linear> {
    Ok(match target {
        "self_attn.q_proj" => &layer.self_attn.q_proj,
        "self_attn.k_proj" => &layer.self_attn.k_proj,
        "self_attn.v_proj" => &layer.self_attn.v_proj,
        "self_attn.o_proj" => &layer.self_attn.o_proj,
        "mlp.gate_proj" => &layer.mlp.gate_proj,
        "mlp.up_proj" => &layer.mlp.up_proj,
        "mlp.down_proj" => &layer.mlp.down_proj,
        other => return Err(unknown_target(other)),
    })
}

fn target_linear_mut<'a>(layer: &'a mut DecoderLayer, target: &str) -> Result<&'a mut Linear> {
    Ok(match target {
        "self_attn.q_proj" => &mut layer.self_attn.q_proj,
        "self_attn.k_proj" => &mut layer.self_attn.k_proj,
        "self_attn.v_proj" => &mut layer.self_attn.v_proj,
        "self_attn.o_proj" => &mut layer.self_attn.o_proj,
        "mlp.gate_proj" => &mut layer.mlp.gate_proj,
        "mlp.up_proj" => &mut layer.mlp.up_proj,
        "mlp.down_proj" => &mut layer.mlp.down_proj,
        other => return Err(unknown_target(other)),
    })
}

fn unknown_target(t: &str) -> Error {
    Error::Input(format!(
        "unknown DMTD delta target '{t}' (one of {})",
        TARGETS.join(", ")
    ))
}

/// `(lora_A, lora_B)` tensor names of `target` in layer `layer_idx`.
pub fn lora_names(layer_idx: usize, target: &str) -> (String, String) {
    let base = format!("model.layers.{layer_idx}.{target}");
    (format!("{base}.lora_A.weight"), format!("{base}.lora_B.weight"))
}

/// What a DMTD delta file says about itself.
#[derive(Debug, Clone, PartialEq)]
pub struct DeltaMeta {
    /// The base model's name as given when training (informative; the fingerprint decides).
    pub base_model: String,
    pub base_fingerprint: String,
    /// Mean |embedding| of the base: tells two same-shaped bases apart (tolerant to quantization).
    pub embed_abs_mean: f64,
    pub num_hidden_layers: usize,
    pub layout: DmtdLayout,
    /// LoRA rank r and scale numerator α (the delta is `(α / r) · B · A`).
    pub rank: usize,
    pub lora_alpha: f64,
    /// Layers that carry deltas, ascending.
    pub layers: Vec<usize>,
    /// Projections that carry deltas (names from [`TARGETS`]).
    pub targets: Vec<String>,
}

impl DeltaMeta {
    /// The metadata for deltas trained on `model` under `layout`.
    ///
    /// # Errors
    /// [`Error::Input`] for a rank of 0, a layer outside the model or an unknown target.
    pub fn for_model(
        model: &Model,
        base_model: &str,
        layout: DmtdLayout,
        rank: usize,
        lora_alpha: f64,
        layers: Vec<usize>,
        targets: Vec<String>,
    ) -> Result<Self> {
        let meta = DeltaMeta {
            base_model: base_model.to_string(),
            base_fingerprint: base_fingerprint(&model.config),
            embed_abs_mean: embed_abs_mean(model)?,
            num_hidden_layers: model.config.num_hidden_layers,
            layout,
            rank,
            lora_alpha,
            layers,
            targets,
        };
        meta.validate()?;
        Ok(meta)
    }

    /// `α / r`.
    pub fn scale(&self) -> f64 {
        self.lora_alpha / self.rank as f64
    }

    fn validate(&self) -> Result<()> {
        if self.rank == 0 || !(self.lora_alpha.is_finite() && self.lora_alpha > 0.0) {
            return Err(Error::Input(format!(
                "DMTD deltas need a rank ≥ 1 and a positive alpha (rank {}, alpha {})",
                self.rank, self.lora_alpha
            )));
        }
        if self.layout.num_layers() != self.num_hidden_layers {
            return Err(Error::Input("the DMTD layout does not tile the base's layers".into()));
        }
        if let Some(l) = self.layers.iter().find(|&&l| l >= self.num_hidden_layers) {
            return Err(Error::Input(format!(
                "DMTD delta for layer {l} of a {}-layer model",
                self.num_hidden_layers
            )));
        }
        for t in &self.targets {
            if !TARGETS.contains(&t.as_str()) {
                return Err(unknown_target(t));
            }
        }
        Ok(())
    }

    /// The safetensors metadata: [`FORMAT`] under `format`, every field as text (the layout under the released
    /// config key names).
    pub fn to_map(&self) -> BTreeMap<String, String> {
        let join = |v: Vec<String>| v.join(",");
        BTreeMap::from([
            ("format".into(), FORMAT.into()),
            ("base_model".into(), self.base_model.clone()),
            ("base_fingerprint".into(), self.base_fingerprint.clone()),
            ("embed_abs_mean".into(), self.embed_abs_mean.to_string()),
            ("num_hidden_layers".into(), self.num_hidden_layers.to_string()),
            (
                "num_encoding_layers".into(),
                self.layout.num_encoding_layers.to_string(),
            ),
            (
                "num_thinking_layers".into(),
                self.layout.num_thinking_layers.to_string(),
            ),
            (
                "num_decoding_layers".into(),
                self.layout.num_decoding_layers.to_string(),
            ),
            ("mtp_horizon".into(), self.layout.mtp_horizon.to_string()),
            ("lora_rank".into(), self.rank.to_string()),
            ("lora_alpha".into(), self.lora_alpha.to_string()),
            (
                "layers".into(),
                join(self.layers.iter().map(usize::to_string).collect()),
            ),
            ("targets".into(), join(self.targets.clone())),
        ])
    }

    /// Read the metadata of the delta file `path` (errors name the key).
    pub fn from_map(path: &Path, m: &HashMap<String, String>) -> Result<Self> {
        let get = |k: &str| {
            m.get(k)
                .ok_or_else(|| Error::bad_file(path, format!("DMTD delta metadata has no '{k}'")))
        };
        match m.get("format") {
            Some(f) if f == FORMAT => {}
            other => {
                return Err(Error::bad_file(
                    path,
                    format!("not a DMTD delta file (format '{}')", other.map_or("", |s| s.as_str())),
                ))
            }
        }
        fn num<T: std::str::FromStr>(path: &Path, k: &str, v: &str) -> Result<T> {
            v.trim()
                .parse()
                .map_err(|_| Error::bad_file(path, format!("DMTD delta metadata '{k}': not a number: '{v}'")))
        }
        let n = |k: &str| -> Result<usize> { num(path, k, get(k)?) };
        let num_hidden_layers = n("num_hidden_layers")?;
        let layout = DmtdLayout::new(
            num_hidden_layers,
            n("num_encoding_layers")?,
            n("num_decoding_layers")?,
            n("mtp_horizon")?,
        )
        .map_err(|e| Error::bad_file(path, e))?;
        if layout.num_thinking_layers != n("num_thinking_layers")? {
            return Err(Error::bad_file(path, "E + T + D is not num_hidden_layers"));
        }
        let list = |k: &str| -> Result<Vec<String>> {
            Ok(get(k)?
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect())
        };
        let meta = DeltaMeta {
            base_model: get("base_model")?.clone(),
            base_fingerprint: get("base_fingerprint")?.clone(),
            embed_abs_mean: num(path, "embed_abs_mean", get("embed_abs_mean")?)?,
            num_hidden_layers,
            layout,
            rank: n("lora_rank")?,
            lora_alpha: num(path, "lora_alpha", get("lora_alpha")?)?,
            layers: list("layers")?
                .iter()
                .map(|s| num(path, "layers", s))
                .collect::<Result<_>>()?,
            targets: list("targets")?,
        };
        meta.validate().map_err(|e| Error::bad_file(path, e))?;
        Ok(meta)
    }

    /// Refuse a base this file was not trained on (architecture and sizes, then the embedding's scale).
    pub fn check_base(&self, model: &Model) -> Result<()> {
        let c = &model.config;
        if self.base_fingerprint != base_fingerprint(c) {
            return Err(Error::Input(format!(
                "these DMTD weights were trained on '{}' ({} layers), but the model is a {} with {} layers, hidden {}",
                self.base_model,
                self.num_hidden_layers,
                c.arch.hf_name(),
                c.num_hidden_layers,
                c.hidden_size
            )));
        }
        let ours = embed_abs_mean(model)?;
        if (ours / self.embed_abs_mean - 1.0).abs() > 0.05 {
            return Err(Error::Input(format!(
                "these DMTD weights were trained on another model of the same shape, '{}' (embedding mean |x| {:.5}, \
                 this model {ours:.5})",
                self.base_model, self.embed_abs_mean
            )));
        }
        Ok(())
    }
}

/// Write a DMTD delta file atomically: `tensors` (named by [`lora_names`]) stored as `dtype`, with `meta`.
///
/// # Errors
/// [`Error::Input`] when a tensor holds a NaN or an infinity.
pub fn write_delta_file(path: &Path, meta: &DeltaMeta, tensors: &HashMap<String, Tensor>, dtype: DType) -> Result<()> {
    let mut converted = Vec::with_capacity(tensors.len());
    for (k, t) in tensors {
        if crate::finite::count_non_finite(t)? > 0 {
            return Err(Error::Input(format!(
                "DMTD delta '{k}' is not finite; not writing {}",
                path.display()
            )));
        }
        converted.push((k.clone(), t.to_dtype(dtype)?));
    }
    let bytes = crate::depth::file::serialize_sorted(converted, &meta.to_map())
        .map_err(|e| Error::Input(format!("cannot serialise {}: {e}", path.display())))?;
    crate::error::write_atomic(path, &bytes)
}

/// The metadata and tensors (f32) of the delta file `path`.
pub fn read_delta_file(path: &Path) -> Result<(DeltaMeta, HashMap<String, Tensor>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| Error::bad_file(path, format!("not a readable safetensors file: {e}")))?;
    let map = header
        .metadata()
        .as_ref()
        .ok_or_else(|| Error::bad_file(path, "not a DMTD delta file (no metadata)"))?;
    let meta = DeltaMeta::from_map(path, map)?;
    let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
        .map_err(|e| Error::bad_file(path, e))?
        .into_iter()
        .map(|(k, t)| Ok((k, t.to_dtype(DType::F32)?)))
        .collect::<Result<_>>()?;
    Ok((meta, tensors))
}

/// Check `tensors` against `meta` and `model`: every (layer, target) pair has `lora_A: [r, in]` and
/// `lora_B: [out, r]`, all finite, and nothing else is in the file.
pub fn check_deltas(path: &Path, meta: &DeltaMeta, tensors: &HashMap<String, Tensor>, model: &Model) -> Result<()> {
    let mut expected = 0;
    for &l in &meta.layers {
        for t in &meta.targets {
            let lin = target_linear(&model.layers[l], t)?;
            let (out, inp) = (lin.out_features(), model_in_features(model, t));
            let (a, b) = lora_names(l, t);
            for (name, want) in [(&a, [meta.rank, inp]), (&b, [out, meta.rank])] {
                let x = tensors.get(name).ok_or_else(|| Error::MissingTensor(name.clone()))?;
                if x.dims() != want {
                    return Err(Error::Shape {
                        name: name.clone(),
                        expected: want.to_vec(),
                        found: x.dims().to_vec(),
                    });
                }
                if crate::finite::count_non_finite(x)? > 0 {
                    return Err(Error::bad_file(path, format!("'{name}' holds a NaN or an infinity")));
                }
            }
            expected += 2;
        }
    }
    if tensors.len() != expected {
        return Err(Error::bad_file(
            path,
            format!("{} tensors where the metadata names {expected}", tensors.len()),
        ));
    }
    Ok(())
}

/// Input width of projection `target` (the MLP's down_proj reads the intermediate size).
fn model_in_features(model: &Model, target: &str) -> usize {
    match target {
        "mlp.down_proj" => model.config.intermediate_size,
        "self_attn.o_proj" => model.config.num_attention_heads * model.config.head_dim,
        _ => model.config.hidden_size,
    }
}

/// Read the DMTD delta file `path`, check it against `model` (base, shapes, finiteness) and merge it:
/// every target weight becomes `W + (α / r) · B · A`. A dense weight stays dense in its dtype; a quantized one is
/// dequantized, merged, and stored back in Q8_0 blocks (dense f32 where its rows are not whole blocks). Returns the
/// metadata (the layout and τ the deltas were trained for).
///
/// # Errors
/// [`Error::Input`] for another base model; [`Error::BadModelFile`], [`Error::Shape`], [`Error::MissingTensor`] for a
/// malformed file.
pub fn merge_delta_file(model: &mut Model, path: &Path) -> Result<DeltaMeta> {
    let (meta, tensors) = read_delta_file(path)?;
    meta.check_base(model)?;
    check_deltas(path, &meta, &tensors, model)?;
    let scale = meta.scale();
    for &l in &meta.layers {
        for t in &meta.targets {
            let (a, b) = lora_names(l, t);
            let delta = (tensors[&b].matmul(&tensors[&a])? * scale)?;
            let lin = target_linear_mut(&mut model.layers[l], t)?;
            *lin = merged(lin, &delta)?;
        }
    }
    Ok(meta)
}

/// `lin` with `delta: [out, in]` (f32) added to its weight.
fn merged(lin: &Linear, delta: &Tensor) -> Result<Linear> {
    let bias = lin.bias.clone();
    let (w, requantize) = match &lin.weight {
        LinearWeight::Dense(w) => (w.clone(), false),
        LinearWeight::Packed(q) => (
            Tensor::from_vec(q.dequantize(), (q.rows, q.cols), delta.device())?,
            true,
        ),
        LinearWeight::Quantized(candle_core::quantized::QMatMul::QTensor(q)) => (q.dequantize(delta.device())?, true),
        LinearWeight::Quantized(candle_core::quantized::QMatMul::Tensor(w))
        | LinearWeight::Quantized(candle_core::quantized::QMatMul::TensorF16(w)) => (w.clone(), false),
    };
    let dtype = w.dtype();
    let sum = (w.to_dtype(DType::F32)? + delta.to_device(w.device())?)?;
    let out = Linear::dense(sum.to_dtype(if requantize { DType::F32 } else { dtype })?, bias);
    if requantize {
        out.into_q8()
    } else {
        Ok(out)
    }
}
