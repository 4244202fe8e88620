//! GGUF files: header and metadata through candle's reader, tensor bytes through a memory map.
//!
//! llama.cpp's converter permutes the rows of `attn_q`/`attn_k` for the `llama` architecture so that its RoPE
//! kernel can rotate adjacent pairs. We undo that on the raw rows at load (rows are independent runs of quant
//! blocks, so this works for every block type), and the model always uses HF's half-split RoPE.

use crate::config::{Arch, ModelConfig};
use crate::error::{Error, Result};
use crate::kernels::blocks::BlockType;
use crate::kernels::QuantMatrix;
use crate::weights::names;
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
    pub fn open(path: &Path) -> Result<Self> {
        let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let content = gguf_file::Content::read(&mut file)
            .map_err(|e| Error::bad_file(path, format!("not a readable GGUF file: {e}")))?;
        // SAFETY: the map is read-only; a file changed under us while running is outside what we can guard.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let arch_name = match content.metadata.get("general.architecture") {
            Some(gguf_file::Value::String(s)) => s.clone(),
            _ => return Err(Error::bad_file(path, "GGUF metadata has no 'general.architecture'")),
        };
        let file = GgufFile {
            path: path.to_path_buf(),
            mmap,
            content,
            arch_name,
        };
        file.check_tensor_bounds()?;
        Ok(file)
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

    /// A truncated file is found here, with the tensor that runs past the end named.
    fn check_tensor_bounds(&self) -> Result<()> {
        let len = self.mmap.len() as u64;
        for (name, info) in &self.content.tensor_infos {
            let start = self.content.tensor_data_offset.saturating_add(info.offset);
            let end = start.saturating_add(byte_len(info.ggml_dtype, info.shape.elem_count()) as u64);
            if end > len {
                return Err(Error::bad_file(
                    &self.path,
                    format!("tensor '{name}' ends at byte {end} but the file has {len} bytes (truncated download?)"),
                ));
            }
        }
        Ok(())
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

    fn meta_arch_u64(&self, key: &str) -> Result<u64> {
        let full = format!("{}.{key}", self.arch_name);
        let v = self
            .meta(&full)
            .ok_or_else(|| Error::bad_file(&self.path, format!("GGUF metadata is missing '{full}'")))?;
        v.to_u64()
            .or_else(|_| v.to_u32().map(u64::from))
            .or_else(|_| v.to_i32().map(|x| x.max(0) as u64))
            .map_err(|_| Error::bad_file(&self.path, format!("GGUF metadata '{full}' is not an integer")))
    }

    fn meta_arch_f64(&self, key: &str) -> Option<f64> {
        let v = self.meta(&format!("{}.{key}", self.arch_name))?;
        // GGUF stores these as f32: take the shortest decimal that round-trips (1e-5, not 9.999999747e-6), so a
        // converted config.json says what the original one said.
        v.to_f32()
            .map(|x| x.to_string().parse().unwrap_or(f64::from(x)))
            .or_else(|_| v.to_f64())
            .ok()
    }

    fn meta_u32(&self, key: &str) -> Option<u32> {
        let v = self.meta(key)?;
        v.to_u32().or_else(|_| v.to_i32().map(|x| x as u32)).ok()
    }

    /// The model config from the metadata (`{arch}.block_count`, `{arch}.embedding_length`, ...).
    pub fn config(&self) -> Result<ModelConfig> {
        let arch = self.arch()?;
        if let Some(gguf_file::Value::String(kind)) = self.meta(&format!("{}.rope.scaling.type", self.arch_name)) {
            if kind != "none" {
                return Err(Error::Unsupported(format!("GGUF rope scaling '{kind}'")));
            }
        }
        let hidden_size = self.meta_arch_u64("embedding_length")? as usize;
        let num_attention_heads = self.meta_arch_u64("attention.head_count")? as usize;
        let num_key_value_heads = self
            .meta_arch_u64("attention.head_count_kv")
            .map(|v| v as usize)
            .unwrap_or(num_attention_heads);
        let head_dim = self
            .meta_arch_u64("attention.key_length")
            .map(|v| v as usize)
            .unwrap_or(hidden_size / num_attention_heads.max(1));
        let embed = self
            .content
            .tensor_infos
            .get("token_embd.weight")
            .ok_or_else(|| Error::MissingTensor("token_embd.weight".into()))?;
        let vocab_size = embed.shape.dims()[0];
        let tie = !self.content.tensor_infos.contains_key("output.weight");
        let eos = self.meta_u32("tokenizer.ggml.eos_token_id");
        let config = ModelConfig {
            arch,
            vocab_size,
            hidden_size,
            intermediate_size: self.meta_arch_u64("feed_forward_length")? as usize,
            num_hidden_layers: self.meta_arch_u64("block_count")? as usize,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: self.meta_arch_f64("attention.layer_norm_rms_epsilon").unwrap_or(1e-6),
            rope_theta: self.meta_arch_f64("rope.freq_base").unwrap_or(10_000.0),
            max_position_embeddings: self.meta_arch_u64("context_length").unwrap_or(4096) as usize,
            tie_word_embeddings: tie,
            attention_bias: self.content.tensor_infos.contains_key("blk.0.attn_q.bias"),
            bos_token_id: self.meta_u32("tokenizer.ggml.bos_token_id"),
            eos_token_ids: eos.into_iter().collect(),
        };
        config.validate()?;
        Ok(config)
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
                self.meta_arch_u64("attention.head_count").ok()
            } else if g.ends_with("attn_k.weight") || g.ends_with("attn_k.bias") {
                self.meta_arch_u64("attention.head_count_kv")
                    .or_else(|_| self.meta_arch_u64("attention.head_count"))
                    .ok()
            } else {
                None
            }
        } else {
            None
        };
        let bytes = match permuted_heads {
            Some(n_head) => {
                let rows = dims[0];
                let bytes = unpermute_rows(raw, rows, n / rows, n_head as usize)
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
    /// Blocks our kernels multiply: the tensor itself when its type has a kernel, else re-quantized to Q8_0
    /// (near-lossless from the 4–6-bit K-quants and Q5_0). `None` for a non-matrix or a CPU-less device.
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
