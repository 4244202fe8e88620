//! Where a model's tensors come from: a GGUF file or HF safetensors (single or sharded), addressed by HF names.
//!
//! Every tensor is shape-checked against what the config implies before it is used, so a wrong checkpoint is a
//! clear error at load and never a panic in a matmul.

pub mod gguf;
mod gguf_header;
pub mod layout;
pub mod names;
pub mod st_write;

use crate::error::{Error, Result};
use candle_core::safetensors::{Load, MmapedSafetensors};
use candle_core::{DType, Device, Tensor};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use gguf::{GgufFile, RawTensor};

/// A tensor as stored: GGUF blocks (any GGUF type, F32 included) or a plain tensor (safetensors).
pub enum StoredTensor {
    Blocks(RawTensor),
    Dense(Tensor),
}

impl StoredTensor {
    pub fn shape(&self) -> Vec<usize> {
        match self {
            StoredTensor::Blocks(b) => b.dims.clone(),
            StoredTensor::Dense(t) => t.dims().to_vec(),
        }
    }
    /// As a plain tensor of `dtype` (dequantizing blocks).
    pub fn to_dense(&self, dtype: DType, device: &Device) -> Result<Tensor> {
        Ok(match self {
            StoredTensor::Blocks(b) => b.to_qtensor(device)?.dequantize(device)?.to_dtype(dtype)?,
            StoredTensor::Dense(t) => t.to_dtype(dtype)?.to_device(device)?,
        })
    }
}

/// HF safetensors, memory-mapped; several shards act as one.
pub struct SafetensorsFiles {
    files: Vec<PathBuf>,
    st: MmapedSafetensors,
}

impl SafetensorsFiles {
    /// Open `model.safetensors`, or the shards listed in `model.safetensors.index.json`, in `dir`.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let files = if single.exists() {
            vec![single]
        } else if index.exists() {
            let text = crate::error::read_to_string(&index)?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| Error::bad_file(&index, format!("invalid JSON: {e}")))?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| Error::bad_file(&index, "no 'weight_map' object"))?;
            let mut shards: Vec<String> = map.values().filter_map(|s| s.as_str().map(String::from)).collect();
            shards.sort();
            shards.dedup();
            shards.iter().map(|s| dir.join(s)).collect()
        } else {
            return Err(Error::Input(format!(
                "{}: no model.safetensors or model.safetensors.index.json",
                dir.display()
            )));
        };
        for f in &files {
            if !f.exists() {
                return Err(Error::io(f, std::io::Error::from(std::io::ErrorKind::NotFound)));
            }
        }
        Self::open(files)
    }

    pub fn open(files: Vec<PathBuf>) -> Result<Self> {
        // SAFETY: read-only memory maps of files we do not modify while they are open.
        let st = unsafe { MmapedSafetensors::multi(&files) }.map_err(|e| {
            Error::bad_file(
                files.first().cloned().unwrap_or_default(),
                format!("not a readable safetensors file: {e}"),
            )
        })?;
        Ok(SafetensorsFiles { files, st })
    }

    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.st.tensors().into_iter().map(|(n, _)| n).collect();
        v.sort();
        v
    }

    /// The first file (the one errors name).
    pub fn path(&self) -> PathBuf {
        self.files.first().cloned().unwrap_or_default()
    }
}

/// The weights of one model, by HF tensor name.
pub enum WeightSource {
    Gguf(GgufFile),
    Safetensors(SafetensorsFiles),
}

impl WeightSource {
    /// HF names of all tensors available.
    pub fn names(&self) -> Vec<String> {
        match self {
            WeightSource::Gguf(g) => g.hf_names(),
            WeightSource::Safetensors(s) => s.names(),
        }
    }

    /// The file the weights come from (the first shard), for error messages.
    pub fn path(&self) -> PathBuf {
        match self {
            WeightSource::Gguf(g) => g.path().to_path_buf(),
            WeightSource::Safetensors(s) => s.path(),
        }
    }

    /// Drop memory-mapped pages that loading touched (see [`GgufFile::release_pages`]); safetensors maps are left
    /// alone (dense tensors may still point into them).
    pub fn release_pages(&self) {
        if let WeightSource::Gguf(g) = self {
            g.release_pages();
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        match self {
            WeightSource::Gguf(g) => g.info(name).is_some(),
            WeightSource::Safetensors(s) => s.st.get(name).is_ok(),
        }
    }

    /// Shape and storage type (`Q4_1`, `F32`, `BF16`, ...) of a tensor, without reading its data.
    pub fn describe(&self, name: &str) -> Option<(Vec<usize>, String)> {
        match self {
            WeightSource::Gguf(g) => g.info(name).map(|(s, t)| (s, ggml_name(&format!("{t:?}")))),
            WeightSource::Safetensors(s) => {
                s.st.get(name)
                    .ok()
                    .map(|v| (v.shape().to_vec(), format!("{:?}", v.dtype())))
            }
        }
    }

    /// Storage types per tensor kind (`q_proj: Q4_1`, `down_proj: Q4_K+Q6_K`, ...), for `info`.
    pub fn dtype_summary(&self) -> BTreeMap<String, String> {
        let mut out: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
        for n in self.names() {
            if let Some((_, t)) = self.describe(&n) {
                out.entry(names::tensor_kind(&n).to_string()).or_default().insert(t);
            }
        }
        out.into_iter()
            .map(|(k, v)| (k, v.into_iter().collect::<Vec<_>>().join("+")))
            .collect()
    }

    /// Read a tensor as stored, checking its shape. A missing tensor is an error naming it.
    pub fn stored(&self, name: &str, shape: &[usize], device: &Device) -> Result<StoredTensor> {
        let check = |found: Vec<usize>| -> Result<()> {
            if found != shape {
                return Err(Error::Shape {
                    name: name.to_string(),
                    expected: shape.to_vec(),
                    found,
                });
            }
            Ok(())
        };
        match self {
            WeightSource::Gguf(g) => {
                let (found, _) = g.info(name).ok_or_else(|| Error::MissingTensor(name.to_string()))?;
                check(found)?;
                let raw = g.raw(name)?.ok_or_else(|| Error::MissingTensor(name.to_string()))?;
                Ok(StoredTensor::Blocks(raw))
            }
            WeightSource::Safetensors(s) => {
                let view = s.st.get(name).map_err(|_| Error::MissingTensor(name.to_string()))?;
                check(view.shape().to_vec())?;
                let t = view
                    .load(device)
                    .map_err(|e| Error::bad_file(s.path(), format!("tensor '{name}': {e}")))?;
                Ok(StoredTensor::Dense(t))
            }
        }
    }

    /// Read a tensor as a plain tensor of `dtype`, checking its shape.
    pub fn dense(&self, name: &str, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        self.stored(name, shape, device)?.to_dense(dtype, device)
    }

    /// Like [`Self::dense`], but `None` when the tensor is absent.
    pub fn dense_opt(&self, name: &str, shape: &[usize], dtype: DType, device: &Device) -> Result<Option<Tensor>> {
        if !self.contains(name) {
            return Ok(None);
        }
        self.dense(name, shape, dtype, device).map(Some)
    }
}

/// ggml's name of a block type (`Q4_K`) from candle's Debug name of it (`Q4K`); other names unchanged.
fn ggml_name(debug: &str) -> String {
    match debug.strip_suffix('K') {
        Some(q) if q.starts_with('Q') && !q.contains('_') => format!("{q}_K"),
        _ => debug.to_string(),
    }
}

#[cfg(test)]
mod ggml_name_tests {
    #[test]
    fn k_quants_get_ggml_names() {
        use candle_core::quantized::GgmlDType;
        for (t, want) in [
            (GgmlDType::Q4K, "Q4_K"),
            (GgmlDType::Q6K, "Q6_K"),
            (GgmlDType::Q8K, "Q8_K"),
            (GgmlDType::Q5_0, "Q5_0"),
            (GgmlDType::F32, "F32"),
        ] {
            assert_eq!(super::ggml_name(&format!("{t:?}")), want);
        }
    }
}
