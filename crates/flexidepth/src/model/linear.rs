//! A linear layer `y = x Wᵀ + b` whose weight is either a plain tensor or GGUF quantized blocks.

use crate::error::Result;
use crate::kernels::blocks::BlockType;
use crate::kernels::QuantMatrix;
use crate::weights::StoredTensor;
use candle_core::quantized::QMatMul;
use candle_core::{DType, Device, Module, Tensor};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Rows from which a packed layer multiplies through a dequantized f32 copy (see [`Linear::forward`]).
///
/// Measured with the rows kernels (`cargo bench -p flexidepth --bench kernels -- rows`, 2 threads, 2026-12-01, on
/// a shared machine at load average 12–13, so single figures are noisy), µs per activation row, rows kernel
/// (AVX-512 VNNI) against dequantize + f32 GEMM, at 16 / 32 / 48 rows: SmolLM2 gate/up 1536×576 Q4_1
/// 36.7 / 35.5 / 32.8 vs 74.3 / 77.3 / 41.0; down 576×1536 Q4_1 37.9 / 36.1 / 37.3 vs 98.6 / 62.4 / 46.9; lm_head
/// 49152×576 Q8_0 4692 / 1845 / 3315 vs 26842 / 7778 / 7959; Qwen2.5 gate/up 4864×896 Q5_0 499 / 539 / 451 vs
/// 1081 / 1375 / 831; down 896×4864 Q4_K 324 / 510 / 687 vs 654 / 1034 / 1039; Q6_K 171 / 506 / 661 vs
/// 413 / 1033 / 280. The packed path wins everywhere up to 32 rows; at 48 the Q6_K GEMM won: the switch is at 48.
/// (Before the rows kernels, with one dot product per row and weight row, it was at 16.)
pub const PACKED_GEMM_MIN_ROWS: usize = 48;

/// How a layer's weight is kept in memory.
#[derive(Debug)]
pub enum LinearWeight {
    /// `[out, in]`, in the compute dtype.
    Dense(Tensor),
    /// Quantized blocks multiplied by candle's quantized kernels (activations stay f32).
    Quantized(QMatMul),
    /// GGUF blocks with our own kernels (Q4_0, Q4_1, Q5_0, Q8_0, Q4_K, Q5_K, Q6_K; [`crate::kernels`]).
    Packed(Arc<QuantMatrix>),
}

/// `y = x Wᵀ + b` on `x: [tokens, in]`.
#[derive(Debug)]
pub struct Linear {
    pub weight: LinearWeight,
    pub bias: Option<Tensor>,
    out_features: usize,
    /// Rows multiplied so far: the trace of work done, which tests use to prove that skipped layers are not paid for.
    rows_computed: AtomicU64,
}

impl Linear {
    fn new(weight: LinearWeight, bias: Option<Tensor>, out_features: usize) -> Self {
        Linear {
            weight,
            bias,
            out_features,
            rows_computed: AtomicU64::new(0),
        }
    }

    pub fn dense(weight: Tensor, bias: Option<Tensor>) -> Self {
        let out_features = weight.dims()[0];
        Linear::new(LinearWeight::Dense(weight), bias, out_features)
    }

    /// Build from a stored tensor: kept quantized when `keep_quantized` and the storage is quantized.
    pub fn from_stored(
        w: StoredTensor,
        bias: Option<Tensor>,
        dtype: DType,
        keep_quantized: bool,
        device: &Device,
    ) -> Result<Self> {
        match w {
            StoredTensor::Blocks(raw) if keep_quantized && device.is_cpu() => match raw.into_matrix()? {
                Some(matrix) => Ok(Linear::packed(Arc::new(matrix), bias)),
                None => Err(crate::Error::Unsupported(
                    "a quantized weight that is not a matrix of whole blocks".into(),
                )),
            },
            StoredTensor::Blocks(raw) if keep_quantized => {
                // On an accelerator candle's quantized kernels do the work.
                let q = raw.to_qtensor(device)?;
                let out_features = q.shape().dims()[0];
                let mm = QMatMul::from_arc(Arc::new(q))?;
                Ok(Linear::new(LinearWeight::Quantized(mm), bias, out_features))
            }
            other => Ok(Linear::dense(other.to_dense(dtype, device)?, bias)),
        }
    }

    /// A layer over packed blocks (shared, e.g. a tied embedding).
    pub fn packed(matrix: Arc<QuantMatrix>, bias: Option<Tensor>) -> Self {
        let out_features = matrix.rows;
        Linear::new(LinearWeight::Packed(matrix), bias, out_features)
    }

    /// The same layer with its weight in Q8_0 blocks, when its rows are whole blocks (small trainable layers
    /// such as FlexiDepth adapters, in the quantized path); unchanged otherwise.
    pub fn into_q8(self) -> Result<Self> {
        match &self.weight {
            LinearWeight::Dense(w) if w.dim(1)?.is_multiple_of(crate::kernels::blocks::QK) => {
                let q = candle_core::quantized::QTensor::quantize(
                    &w.to_dtype(candle_core::DType::F32)?,
                    candle_core::quantized::GgmlDType::Q8_0,
                )?;
                match packed(&q)? {
                    Some(m) => Ok(Linear::packed(Arc::new(m), self.bias)),
                    None => Ok(self),
                }
            }
            _ => Ok(self),
        }
    }

    /// Bytes of weights one multiplication reads (the memory-bound cost of a decode step).
    pub fn weight_bytes(&self) -> usize {
        match &self.weight {
            LinearWeight::Dense(w) => w.elem_count() * w.dtype().size_in_bytes(),
            LinearWeight::Quantized(QMatMul::QTensor(q)) => q.storage_size_in_bytes(),
            LinearWeight::Quantized(QMatMul::Tensor(w)) | LinearWeight::Quantized(QMatMul::TensorF16(w)) => {
                w.elem_count() * w.dtype().size_in_bytes()
            }
            LinearWeight::Packed(m) => m.storage_bytes(),
        }
    }

    /// The `[out, in]` weight when it is held as a plain tensor.
    pub fn dense_weight(&self) -> Option<&Tensor> {
        match &self.weight {
            LinearWeight::Dense(w) => Some(w),
            _ => None,
        }
    }

    pub fn out_features(&self) -> usize {
        self.out_features
    }

    /// Rows this layer has multiplied since it was built.
    pub fn rows_computed(&self) -> u64 {
        self.rows_computed.load(Ordering::Relaxed)
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let rows = x.dims().iter().rev().skip(1).product::<usize>() as u64;
        self.rows_computed.fetch_add(rows, Ordering::Relaxed);
        let y = match &self.weight {
            LinearWeight::Dense(w) => x.matmul(&w.t()?)?,
            LinearWeight::Quantized(q) => q.forward(x)?,
            // A batch of many rows is compute-bound: dequantizing the weights once and using the f32 GEMM beats
            // the int8 rows kernels from some size on (see `PACKED_GEMM_MIN_ROWS` for the figures).
            LinearWeight::Packed(q) if x.dim(0)? >= PACKED_GEMM_MIN_ROWS => {
                let w = Tensor::from_vec(q.dequantize(), (q.rows, q.cols), x.device())?;
                x.matmul(&w.t()?)?
            }
            LinearWeight::Packed(q) => {
                let (m, _) = x.dims2()?;
                let xs: Vec<f32> = x.flatten_all()?.to_vec1()?;
                let mut y = vec![0f32; m * q.rows];
                q.matmul(&xs, m, &mut y);
                Tensor::from_vec(y, (m, q.rows), x.device())?
            }
        };
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

/// The block type's own matrix, when our kernels cover it and the tensor lives on the CPU.
pub(crate) fn packed(q: &candle_core::quantized::QTensor) -> Result<Option<QuantMatrix>> {
    let Some(t) = BlockType::from_ggml(q.dtype()) else {
        return Ok(None);
    };
    if !q.device().is_cpu() {
        return Ok(None);
    }
    let (rows, cols) = q.shape().dims2()?;
    Ok(Some(QuantMatrix::new(t, rows, cols, q.data()?.into_owned())?))
}
