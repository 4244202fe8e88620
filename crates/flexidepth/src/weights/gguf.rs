//! GGUF files: the header parsed and checked from a memory map ([`super::gguf_header`]), every metadata key the
//! model reads checked for its type and range ([`GgufFile::config`]), tensor bytes read from the same map.
//!
//! llama.cpp's converter permutes the rows of `attn_q`/`attn_k` for the `llama` architecture so that its RoPE
//! kernel can rotate adjacent pairs. We undo that on the raw rows at load (rows are independent runs of quant
//! blocks, so this works for every block type), and the model always uses HF's half-split RoPE.

use crate::config::{Arch, ModelConfig};
use crate::error::{Error, Result};
use crate::kernels::blocks::BlockType;
use crate::kernels::QuantMatrix;
use crate::weights::{gguf_header, names};
use candle_core::quantized::{ggml_file::qtensor_from_ggml, gguf_file, GgmlDType, QTensor};
use candle_core::Device;
use std::path::{Path, PathBuf};

/// An opened GGUF file.
pub struct GgufFile {
    path: PathBuf,
    mmap: memmap2::Mmap,
    content: gguf_file::Content,
    arch_name: String,
}

impl GgufFile {
    /// Open and check a GGUF file: its header ([`super::gguf_header`]'s rules) and `general.architecture`. The
    /// model's own keys are checked by [`GgufFile::config`].
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read-only; a file changed under us while running is outside what we can guard.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let content =
            gguf_header::parse(&mmap).map_err(|e| Error::bad_file(path, format!("not a readable GGUF file: {e}")))?;
        let arch_name = match content.metadata.get("general.architecture") {
            Some(gguf_file::Value::String(s)) => s.clone(),
            Some(other) => {
                return Err(Error::bad_file(
                    path,
                    format!(
                        "GGUF metadata 'general.architecture' must be a string, not {}",
                        describe(other)
                    ),
                ))
            }
            None => return Err(Error::bad_file(path, "GGUF metadata has no 'general.architecture'")),
        };
        Ok(GgufFile {
            path: path.to_path_buf(),
            mmap,
            content,
            arch_name,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Let the kernel drop the mapped file's pages from this process (they are clean and re-read on demand).
    /// Called once the weights live in their own buffers: each tensor's pages are already released as it is
    /// copied, this catches the header and metadata pages.
    pub fn release_pages(&self) {
        // SAFETY: a read-only private file mapping: dropped pages are read back from the file if touched again.
        let _ = unsafe { self.mmap.unchecked_advise(memmap2::UncheckedAdvice::DontNeed) };
    }

    pub fn metadata(&self) -> &std::collections::HashMap<String, gguf_file::Value> {
        &self.content.metadata
    }

    pub fn arch(&self) -> Result<Arch> {
        Arch::from_gguf(&self.arch_name)
    }

    /// Drop the mapped pages covering `start..start + len` (rounded out to whole pages).
    fn release_range(&self, start: usize, len: usize) {
        let page = 4096;
        let first = start / page * page;
        // SAFETY: a read-only private file mapping: dropped pages are read back from the file if touched again.
        let _ = unsafe {
            self.mmap
                .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, first, start + len - first)
        };
    }

    /// Forget the vocabulary arrays once the tokenizer is built from them (tens of MB of small strings).
    pub fn drop_tokenizer_arrays(&mut self) {
        self.content
            .metadata
            .retain(|k, v| !(k.starts_with("tokenizer.ggml.") && matches!(v, gguf_file::Value::Array(_))));
    }

    pub(crate) fn meta(&self, key: &str) -> Option<&gguf_file::Value> {
        self.content.metadata.get(key)
    }

    fn bad(&self, msg: String) -> Error {
        Error::bad_file(&self.path, msg)
    }

    /// A count under `{arch}.{key}`: any integer type, in `1..=max`. `None` when absent; a value of another type
    /// or out of range is an error naming the key.
    fn meta_count(&self, key: &str, max: usize) -> Result<Option<usize>> {
        let full = format!("{}.{key}", self.arch_name);
        let Some(v) = self.meta(&full) else { return Ok(None) };
        let n = int_value(v).ok_or_else(|| {
            self.bad(format!(
                "GGUF metadata '{full}' must be an integer, not {}",
                describe(v)
            ))
        })?;
        if !(1..=max as i128).contains(&n) {
            return Err(self.bad(format!("GGUF metadata '{full}' is {n}, outside 1..={max}")));
        }
        Ok(Some(n as usize))
    }

    /// A required count (see [`Self::meta_count`]).
    fn meta_count_req(&self, key: &str, max: usize) -> Result<usize> {
        self.meta_count(key, max)?
            .ok_or_else(|| self.bad(format!("GGUF metadata is missing '{}.{key}'", self.arch_name)))
    }

    /// A float under `{arch}.{key}` (stored as f32 or f64), finite and in `range`; `None` when absent.
    fn meta_float(&self, key: &str, range: std::ops::RangeInclusive<f64>) -> Result<Option<f64>> {
        let full = format!("{}.{key}", self.arch_name);
        let x = match self.meta(&full) {
            None => return Ok(None),
            // GGUF stores these as f32: take the shortest decimal that round-trips (1e-5, not 9.999999747e-6),
            // so a converted config.json says what the original one said.
            Some(gguf_file::Value::F32(x)) => x.to_string().parse().unwrap_or(f64::from(*x)),
            Some(gguf_file::Value::F64(x)) => *x,
            Some(other) => {
                return Err(self.bad(format!(
                    "GGUF metadata '{full}' must be a float, not {}",
                    describe(other)
                )))
            }
        };
        if !(x.is_finite() && range.contains(&x)) {
            return Err(self.bad(format!(
                "GGUF metadata '{full}' is {x}, outside [{}, {}]",
                range.start(),
                range.end()
            )));
        }
        Ok(Some(x))
    }

    /// A token id under `key` (any integer type), below `vocab`; `None` when absent.
    pub(crate) fn meta_token_id(&self, key: &str, vocab: usize) -> Result<Option<u32>> {
        let Some(v) = self.meta(key) else { return Ok(None) };
        match int_value(v) {
            Some(id) if (0..vocab as i128).contains(&id) => Ok(Some(id as u32)),
            Some(id) => Err(self.bad(format!(
                "GGUF metadata '{key}' is {id}, not a token id of the vocabulary of {vocab}"
            ))),
            None => Err(self.bad(format!("GGUF metadata '{key}' must be an integer, not {}", describe(v)))),
        }
    }

    /// The model config from the metadata (`{arch}.block_count`, `{arch}.embedding_length`, ...). Every key must
    /// be of its type and in range, and `block_count` must be the number of blocks the file holds tensors for
    /// (checked before anything is sized by it).
    pub fn config(&self) -> Result<ModelConfig> {
        let arch = self.arch()?;
        let lim = &crate::config::LIMITS;
        match self.meta(&format!("{}.rope.scaling.type", self.arch_name)) {
            None => {}
            Some(gguf_file::Value::String(kind)) if kind == "none" => {}
            Some(gguf_file::Value::String(kind)) => {
                return Err(Error::Unsupported(format!("GGUF rope scaling '{kind}'")))
            }
            Some(other) => {
                return Err(self.bad(format!(
                    "GGUF metadata '{}.rope.scaling.type' must be a string, not {}",
                    self.arch_name,
                    describe(other)
                )))
            }
        }
        let hidden_size = self.meta_count_req("embedding_length", lim.hidden_size)?;
        let num_attention_heads = self.meta_count_req("attention.head_count", lim.heads)?;
        let num_key_value_heads = self
            .meta_count("attention.head_count_kv", lim.heads)?
            .unwrap_or(num_attention_heads);
        let head_dim = match self.meta_count("attention.key_length", lim.head_dim)? {
            Some(d) => d,
            None => hidden_size / num_attention_heads,
        };
        let embed = self
            .content
            .tensor_infos
            .get("token_embd.weight")
            .ok_or_else(|| Error::MissingTensor("token_embd.weight".into()))?;
        let &[vocab_size, _] = embed.shape.dims() else {
            return Err(self.bad(format!(
                "tensor 'token_embd.weight' has shape {:?}, not [vocab, hidden]",
                embed.shape.dims()
            )));
        };
        let num_hidden_layers = self.meta_count_req("block_count", lim.layers)?;
        let blocks = self.blocks_present();
        if num_hidden_layers != blocks {
            return Err(self.bad(format!(
                "GGUF metadata '{}.block_count' is {num_hidden_layers}, but the file holds tensors for {blocks} blocks",
                self.arch_name
            )));
        }
        let tie = !self.content.tensor_infos.contains_key("output.weight");
        let eos = self.meta_token_id("tokenizer.ggml.eos_token_id", vocab_size)?;
        let config = ModelConfig {
            arch,
            vocab_size,
            hidden_size,
            intermediate_size: self.meta_count_req("feed_forward_length", lim.intermediate_size)?,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: self
                .meta_float("attention.layer_norm_rms_epsilon", lim.rms_norm_eps.clone())?
                .unwrap_or(1e-6),
            rope_theta: self
                .meta_float("rope.freq_base", lim.rope_theta.clone())?
                .unwrap_or(10_000.0),
            max_position_embeddings: self.meta_count("context_length", lim.context)?.unwrap_or(4096),
            tie_word_embeddings: tie,
            attention_bias: self.content.tensor_infos.contains_key("blk.0.attn_q.bias"),
            bos_token_id: self.meta_token_id("tokenizer.ggml.bos_token_id", vocab_size)?,
            eos_token_ids: eos.into_iter().collect(),
        };
        config.validate()?;
        self.check_layout(&config)?;
        Ok(config)
    }

    /// One more than the highest `blk.N` index among the tensors (0 without blocks).
    fn blocks_present(&self) -> usize {
        self.content
            .tensor_infos
            .keys()
            .filter_map(|n| n.strip_prefix("blk.")?.split_once('.')?.0.parse::<usize>().ok())
            .max()
            .map_or(0, |m| m.saturating_add(1))
    }

    /// As llama.cpp's loader: every tensor the architecture needs is present with its shape, and every tensor in
    /// the file is one of them.
    fn check_layout(&self, config: &ModelConfig) -> Result<()> {
        let expected: std::collections::HashMap<String, Vec<usize>> =
            crate::weights::layout::expected_tensors(config).into_iter().collect();
        for (hf, shape) in &expected {
            match self.info(hf) {
                None => {
                    return Err(Error::MissingTensor(
                        names::hf_to_gguf(hf).unwrap_or_else(|| hf.clone()),
                    ))
                }
                Some((found, _)) if &found != shape => {
                    return Err(Error::Shape {
                        name: hf.clone(),
                        expected: shape.clone(),
                        found,
                    })
                }
                Some(_) => {}
            }
        }
        let mut unused: Vec<&String> = self
            .content
            .tensor_infos
            .keys()
            .filter(|g| names::gguf_to_hf(g).is_none_or(|hf| !expected.contains_key(&hf)))
            .collect();
        if !unused.is_empty() {
            unused.sort();
            return Err(self.bad(format!(
                "{} tensor(s) the {} architecture does not use (first: '{}')",
                unused.len(),
                self.arch_name,
                unused[0]
            )));
        }
        Ok(())
    }

    /// HF names of all tensors the name table knows.
    pub fn hf_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .content
            .tensor_infos
            .keys()
            .filter_map(|g| names::gguf_to_hf(g))
            .collect();
        v.sort();
        v
    }

    /// Shape and block type of a tensor by HF name.
    pub fn info(&self, hf_name: &str) -> Option<(Vec<usize>, GgmlDType)> {
        let g = names::hf_to_gguf(hf_name)?;
        let info = self.content.tensor_infos.get(&g)?;
        Some((info.shape.dims().to_vec(), info.ggml_dtype))
    }

    /// A tensor's bytes by HF name, in its stored block format, with llama's q/k row permutation undone. The
    /// file's pages for it are released afterwards, so loading never holds the model twice.
    pub fn raw(&self, hf_name: &str) -> Result<Option<RawTensor>> {
        let Some(g) = names::hf_to_gguf(hf_name) else {
            return Ok(None);
        };
        let Some(info) = self.content.tensor_infos.get(&g) else {
            return Ok(None);
        };
        let dims = info.shape.dims().to_vec();
        let n = byte_len(info.ggml_dtype, info.shape.elem_count());
        let start = (self.content.tensor_data_offset + info.offset) as usize;
        let raw = &self.mmap[start..start + n];
        let permuted_heads = if self.arch_name == "llama" {
            if g.ends_with("attn_q.weight") || g.ends_with("attn_q.bias") {
                self.meta_count("attention.head_count", usize::MAX)?
            } else if g.ends_with("attn_k.weight") || g.ends_with("attn_k.bias") {
                match self.meta_count("attention.head_count_kv", usize::MAX)? {
                    Some(n) => Some(n),
                    None => self.meta_count("attention.head_count", usize::MAX)?,
                }
            } else {
                None
            }
        } else {
            None
        };
        let bytes = match permuted_heads {
            Some(n_head) => {
                let rows = dims[0];
                let bytes = unpermute_rows(raw, rows, n / rows, n_head)
                    .map_err(|m| Error::bad_file(&self.path, format!("tensor '{g}': {m}")))?;
                self.release_range(start, n);
                bytes
            }
            None => {
                // Copy in slices, releasing each slice's pages behind us, so a large tensor is never resident
                // twice (mapped and copied).
                let mut bytes = Vec::with_capacity(n);
                for (k, piece) in raw.chunks(4 << 20).enumerate() {
                    bytes.extend_from_slice(piece);
                    self.release_range(start + k * (4 << 20), piece.len());
                }
                bytes
            }
        };
        Ok(Some(RawTensor {
            dtype: info.ggml_dtype,
            dims,
            bytes,
        }))
    }
}

/// A tensor's bytes in a GGUF block format, `dims` outermost first (`[rows, cols]` for a matrix).
pub struct RawTensor {
    pub dtype: GgmlDType,
    pub dims: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl RawTensor {
    /// Blocks our kernels multiply: the tensor itself, as stored, when its type has a kernel (Q4_0, Q4_1, Q5_0,
    /// Q8_0, Q4_K, Q5_K, Q6_K), else re-quantized to Q8_0 (near-lossless from the other 2–6-bit types). `None` for a
    /// non-matrix.
    pub fn into_matrix(self) -> Result<Option<QuantMatrix>> {
        let &[rows, cols] = &self.dims[..] else { return Ok(None) };
        if let Some(t) = BlockType::from_ggml(self.dtype) {
            return QuantMatrix::new(t, rows, cols, self.bytes).map(Some);
        }
        if !cols.is_multiple_of(crate::kernels::blocks::QK) {
            return Ok(None);
        }
        // A slab of rows at a time, so a large table never exists in f32 all at once.
        let row_bytes = self.bytes.len() / rows.max(1);
        let slab = 1024;
        let mut out = Vec::with_capacity(rows * cols / crate::kernels::blocks::QK * BlockType::Q8_0.block_bytes());
        for r0 in (0..rows).step_by(slab) {
            let r1 = (r0 + slab).min(rows);
            let part = qtensor_from_ggml(
                self.dtype,
                &self.bytes[r0 * row_bytes..r1 * row_bytes],
                vec![r1 - r0, cols],
                &Device::Cpu,
            )?;
            let q8 = QTensor::quantize(&part.dequantize(&Device::Cpu)?, GgmlDType::Q8_0)?;
            out.extend_from_slice(&q8.data()?);
        }
        QuantMatrix::new(BlockType::Q8_0, rows, cols, out).map(Some)
    }

    /// As a candle quantized tensor (a copy).
    pub fn to_qtensor(&self, device: &Device) -> Result<QTensor> {
        Ok(qtensor_from_ggml(self.dtype, &self.bytes, self.dims.clone(), device)?)
    }
}

/// An integer metadata value of any width (`None` for another type).
fn int_value(v: &gguf_file::Value) -> Option<i128> {
    use gguf_file::Value as V;
    Some(match v {
        V::U8(x) => i128::from(*x),
        V::I8(x) => i128::from(*x),
        V::U16(x) => i128::from(*x),
        V::I16(x) => i128::from(*x),
        V::U32(x) => i128::from(*x),
        V::I32(x) => i128::from(*x),
        V::U64(x) => i128::from(*x),
        V::I64(x) => i128::from(*x),
        _ => return None,
    })
}

/// A metadata value's type and, for a scalar, its value, for error messages.
pub(crate) fn describe(v: &gguf_file::Value) -> String {
    match v {
        gguf_file::Value::String(s) => format!("the string {:?}", s.chars().take(40).collect::<String>()),
        gguf_file::Value::Array(a) => format!("an array of {} values", a.len()),
        other => format!("{other:?}"),
    }
}

/// Bytes taken by `elems` elements of a block type.
pub(crate) fn byte_len(dtype: GgmlDType, elems: usize) -> usize {
    elems / dtype.block_size() * dtype.type_size()
}

/// Undo llama.cpp's `reshape(n_head, 2, hd/2, in).swapaxes(1, 2)` on whole rows:
/// GGUF row `h*hd + 2*i + j` holds HF row `h*hd + j*hd/2 + i`.
pub(crate) fn unpermute_rows(
    raw: &[u8],
    rows: usize,
    row_bytes: usize,
    n_head: usize,
) -> std::result::Result<Vec<u8>, String> {
    if n_head == 0 || !rows.is_multiple_of(n_head) || !(rows / n_head).is_multiple_of(2) {
        return Err(format!("{rows} rows cannot be split into {n_head} heads of even size"));
    }
    let hd = rows / n_head;
    let mut out = vec![0u8; raw.len()];
    for h in 0..n_head {
        for i in 0..hd / 2 {
            for j in 0..2 {
                let src = h * hd + 2 * i + j;
                let dst = h * hd + j * (hd / 2) + i;
                out[dst * row_bytes..(dst + 1) * row_bytes]
                    .copy_from_slice(&raw[src * row_bytes..(src + 1) * row_bytes]);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_the_converter_permutation() {
        // 2 heads of hd 4, 1 byte per row: HF rows 0..8; the converter's permutation per head is [0,2,1,3].
        let hf: Vec<u8> = (0..8).collect();
        let gguf = [0u8, 2, 1, 3, 4, 6, 5, 7];
        assert_eq!(unpermute_rows(&gguf, 8, 1, 2).unwrap(), hf);
        assert!(unpermute_rows(&gguf, 8, 1, 3).is_err());
    }
}
