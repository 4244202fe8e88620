//! The token embedding table: a plain tensor, or (quantized path) GGUF blocks dequantized a row at a time, so the
//! f32 table never exists in memory; a tied `lm_head` shares the same blocks.

use crate::error::Result;
use crate::kernels::QuantMatrix;
use candle_core::{Device, Tensor};
use std::sync::Arc;

#[derive(Debug)]
pub enum Embedding {
    /// `[vocab, hidden]`
    Dense(Tensor),
    Packed(Arc<QuantMatrix>),
}

impl Embedding {
    /// Rows of `ids`, `[ids, hidden]`.
    pub fn forward(&self, ids: &[u32], device: &Device) -> Result<Tensor> {
        match self {
            Embedding::Dense(t) => Ok(t.index_select(&Tensor::new(ids, device)?, 0)?),
            Embedding::Packed(q) => {
                let mut out = vec![0f32; ids.len() * q.cols];
                for (&id, row) in ids.iter().zip(out.chunks_exact_mut(q.cols)) {
                    q.dequantize_row(id as usize, row);
                }
                Ok(Tensor::from_vec(out, (ids.len(), q.cols), device)?)
            }
        }
    }

    /// Mean |x| over the first `n` rows (a cheap fingerprint of the table).
    pub fn abs_mean(&self, n: usize) -> Result<f64> {
        match self {
            Embedding::Dense(t) => {
                let n = n.min(t.dim(0)?);
                Ok(t.narrow(0, 0, n)?.abs()?.mean_all()?.to_scalar::<f32>()? as f64)
            }
            Embedding::Packed(q) => {
                let n = n.min(q.rows);
                let mut row = vec![0f32; q.cols];
                let mut sum = 0f64;
                for r in 0..n {
                    q.dequantize_row(r, &mut row);
                    sum += row.iter().map(|v| v.abs() as f64).sum::<f64>();
                }
                Ok(sum / (n * q.cols) as f64)
            }
        }
    }

    pub fn storage_bytes(&self) -> usize {
        match self {
            Embedding::Dense(t) => t.elem_count() * t.dtype().size_in_bytes(),
            Embedding::Packed(q) => q.storage_bytes(),
        }
    }
}
