//! Batch-invariant inference ops: a row's result never depends on the other rows of the call, bit for bit, so a
//! sequence decoded in a batch of others gets exactly the tokens it gets alone (what a server promises its clients).
//!
//! [`super::ops::Fused`] is not: a packed linear switches from the 8-bit dot kernel to a dequantized f32 GEMM at
//! [`PACKED_GEMM_MIN_ROWS`] rows, and candle's f32 matmul (the `gemm` crate) picks its kernel and blocking from the
//! shape — a matrix-vector path for one row, small-matrix kernels below 256 outputs, a depth blocking that changes
//! with the row count below 64 — each rounding differently. [`RowInvariant`] keeps every packed call under the
//! switch (the 8-bit kernel is a dot product per row: its rows are independent by construction) and gives every
//! plain matmul blocks of exactly [`DENSE_BLOCK`] rows, zero-padded, so that every row takes the same path. Norms,
//! softmax and rope are row-wise already.

use super::attention::QueryPos;
use super::linear::{Linear, LinearWeight, PACKED_GEMM_MIN_ROWS};
use super::norm::RmsNorm;
use super::ops::{Fused, Ops};
use super::rope::Rope;
use crate::error::Result;
use candle_core::Tensor;

/// Inference ops whose per-row results do not depend on how many rows a call has (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct RowInvariant;

/// Most rows one packed call takes: below the GEMM switch.
const MAX_PACKED_ROWS: usize = PACKED_GEMM_MIN_ROWS - 1;

/// Rows of every plain matmul call. The padding is cheap: a decode step is bound by reading the weights, not by
/// multiplying them.
pub const DENSE_BLOCK: usize = 16;

impl Ops for RowInvariant {
    fn linear(&self, x: &Tensor, linear: &Linear) -> Result<Tensor> {
        let rows = x.dim(0)?;
        match &linear.weight {
            LinearWeight::Packed(_) if rows > MAX_PACKED_ROWS => {
                // Even chunks (48 rows: 24 + 24, not 47 + 1), each read of the weights shared by as many rows as can.
                let chunks = rows.div_ceil(MAX_PACKED_ROWS);
                let size = rows.div_ceil(chunks);
                let parts = (0..rows)
                    .step_by(size)
                    .map(|start| linear.forward(&x.narrow(0, start, size.min(rows - start))?))
                    .collect::<Result<Vec<_>>>()?;
                Ok(Tensor::cat(&parts, 0)?)
            }
            LinearWeight::Packed(_) => linear.forward(x),
            _ => {
                let parts = (0..rows)
                    .step_by(DENSE_BLOCK)
                    .map(|start| {
                        let n = DENSE_BLOCK.min(rows - start);
                        let block = x.narrow(0, start, n)?;
                        let block = if n < DENSE_BLOCK {
                            let pad = Tensor::zeros((DENSE_BLOCK - n, x.dim(1)?), x.dtype(), x.device())?;
                            Tensor::cat(&[&block, &pad], 0)?
                        } else {
                            block
                        };
                        Ok(linear.forward(&block)?.narrow(0, 0, n)?)
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(Tensor::cat(&parts, 0)?)
            }
        }
    }
    fn rms_norm(&self, x: &Tensor, norm: &RmsNorm) -> Result<Tensor> {
        Fused.rms_norm(x, norm)
    }
    fn softmax(&self, x: &Tensor) -> Result<Tensor> {
        Fused.softmax(x)
    }
    fn rope(&self, x: &Tensor, rope: &Rope, pos: &QueryPos) -> Result<Tensor> {
        Fused.rope(x, rope, pos)
    }
    fn add_mask(&self, scores: &Tensor, mask: &Tensor) -> Result<Tensor> {
        Fused.add_mask(scores, mask)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::Device;

    /// Every row of every call size from 1 to 40 equals that row computed alone, for plain weights of the shapes
    /// where `gemm` switches paths (few outputs, short and long rows) and a packed weight.
    #[test]
    fn rows_do_not_depend_on_the_batch() {
        let dev = Device::Cpu;
        let w = Tensor::rand(-1f32, 1., (96, 64), &dev).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q4_1).unwrap();
        let packed = super::super::linear::packed(&q).unwrap().expect("Q4_1 is packed");
        let dense =
            |rows: usize, cols: usize| Linear::dense(Tensor::rand(-1f32, 1., (rows, cols), &dev).unwrap(), None);
        let layers = [
            dense(96, 64),
            dense(16, 64),
            dense(1, 64),
            dense(48, 600),
            dense(100, 600),
            Linear::packed(std::sync::Arc::new(packed), None),
        ];
        for layer in &layers {
            let cols = match &layer.weight {
                LinearWeight::Dense(w) => w.dim(1).unwrap(),
                _ => 64,
            };
            let x = Tensor::rand(-1f32, 1., (40, cols), &dev).unwrap();
            let alone: Vec<Vec<f32>> = (0..40)
                .map(|r| {
                    let y = RowInvariant.linear(&x.narrow(0, r, 1).unwrap(), layer).unwrap();
                    y.squeeze(0).unwrap().to_vec1().unwrap()
                })
                .collect();
            for m in 1..=40 {
                let y: Vec<Vec<f32>> = RowInvariant
                    .linear(&x.narrow(0, 0, m).unwrap(), layer)
                    .unwrap()
                    .to_vec2()
                    .unwrap();
                for (r, row) in y.iter().enumerate() {
                    assert_eq!(row, &alone[r], "{m} rows, row {r}");
                }
            }
        }
    }
}
