//! Writing an HF folder (`config.json`, `model.safetensors`, tokenizer files, `generation_config.json`) from any
//! model we can open, typically a GGUF file: weights are dequantized and llama's q/k permutation is undone.

use crate::error::{write_atomic, Error, Result};
use crate::loader::ModelFiles;
use candle_core::{DType, Device};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;

/// Storage dtype of the written weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvertDtype {
    F32,
    Bf16,
}

impl std::str::FromStr for ConvertDtype {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(ConvertDtype::F32),
            "bf16" => Ok(ConvertDtype::Bf16),
            other => Err(Error::Input(format!("unknown dtype '{other}' (use f32 or bf16)"))),
        }
    }
}

/// Write `files` as an HF folder in `out_dir` (created if needed; files are replaced atomically). A model in the
/// official FlexiDepth layout keeps its routers and `routing_layers`; a DMTD checkpoint keeps its layer-group keys.
pub fn convert_to_hf(files: &ModelFiles, out_dir: &Path, dtype: ConvertDtype) -> Result<()> {
    convert_with_depth(files, None, out_dir, dtype)
}

/// Like [`convert_to_hf`], adding the router and adapter tensors of a depth-adapter file: the official FlexiDepth
/// layout (`model_type: ddllama`, `routing_layers`, router tensors inside `model.safetensors`).
pub fn convert_with_depth(
    files: &ModelFiles,
    depth_file: Option<&Path>,
    out_dir: &Path,
    dtype: ConvertDtype,
) -> Result<()> {
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    let (dt, torch_dtype) = match dtype {
        ConvertDtype::F32 => (DType::F32, "float32"),
        ConvertDtype::Bf16 => (DType::BF16, "bfloat16"),
    };
    let device = Device::Cpu;
    let mut tensors = BTreeMap::new();
    for name in files.weights.names() {
        if files.config.tie_word_embeddings && name == "lm_head.weight" {
            continue;
        }
        let (shape, _) = files
            .weights
            .describe(&name)
            .ok_or_else(|| Error::MissingTensor(name.clone()))?;
        let t = files.weights.dense(&name, &shape, DType::F32, &device)?.to_dtype(dt)?;
        tensors.insert(name, t);
    }
    let mut routing_layers = files.routing_layers.clone();
    if let Some(path) = depth_file {
        let (meta, depth) = crate::depth::file::read_depth_tensors(path)?;
        if meta.base_fingerprint != crate::depth::file::base_fingerprint(&files.config) {
            return Err(Error::Input(format!(
                "{}: made for a {} with {} layers, not this model",
                path.display(),
                meta.base_architecture,
                meta.num_hidden_layers
            )));
        }
        crate::depth::check::check_depth(path, &meta, &depth, &files.config)?;
        for (name, t) in depth {
            tensors.insert(name, t.to_dtype(dt)?);
        }
        routing_layers = Some(meta.routed_layers);
    }
    crate::weights::st_write::write_safetensors(&out_dir.join("model.safetensors"), &tensors)?;

    let pretty = |v: &serde_json::Value| serde_json::to_vec_pretty(v).expect("a JSON value always serialises");
    let mut config = files.config.to_hf_json(torch_dtype);
    if let Some(layers) = routing_layers {
        // The released FlexiDepth model is a Llama ("ddllama"); other bases keep their names and gain the key.
        if files.config.arch == crate::config::Arch::Llama {
            config["architectures"] = json!(["DDLlamaForCausalLM"]);
            config["model_type"] = json!("ddllama");
        }
        config["routing_layers"] = json!(layers);
    }
    if let Some(layout) = &files.dmtd {
        crate::dmtd::hf_keys::write_keys(&mut config, files.config.arch, layout);
    }
    write_atomic(&out_dir.join("config.json"), &pretty(&config))?;
    write_atomic(&out_dir.join("tokenizer.json"), &pretty(&files.tokenizer.to_json()?))?;
    write_atomic(
        &out_dir.join("tokenizer_config.json"),
        &pretty(&files.tokenizer.config_json()),
    )?;
    let eos = files.eos_token_ids();
    let mut gen = json!({ "do_sample": files.generation.do_sample.unwrap_or(false) });
    if !eos.is_empty() {
        gen["eos_token_id"] = json!(eos);
    }
    if let Some(b) = files.config.bos_token_id {
        gen["bos_token_id"] = json!(b);
    }
    for (key, val) in [
        ("temperature", files.generation.temperature),
        ("top_p", files.generation.top_p),
        ("min_p", files.generation.min_p),
    ] {
        if let Some(v) = val {
            gen[key] = json!(v);
        }
    }
    if let Some(k) = files.generation.top_k {
        gen["top_k"] = json!(k);
    }
    write_atomic(&out_dir.join("generation_config.json"), &pretty(&gen))?;
    Ok(())
}
