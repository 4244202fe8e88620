//! A linear layer `y = x Wᵀ + b` whose weight is either a plain tensor or GGUF quantized blocks.

use crate::error::Result;
use crate::weights::StoredTensor;
use candle_core::quantized::QMatMul;
use candle_core::{DType, Device, Module, Tensor};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// How a layer's weight is kept in memory.
#[derive(Debug)]
pub enum LinearWeight {
    /// `[out, in]`, in the compute dtype.
    Dense(Tensor),
    /// Quantized blocks multiplied by candle's quantized kernels (activations stay f32).
    Quantized(QMatMul),
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
    pub fn dense(weight: Tensor, bias: Option<Tensor>) -> Self {
        let out_features = weight.dims()[0];
        Linear {
            weight: LinearWeight::Dense(weight),
            bias,
            out_features,
            rows_computed: AtomicU64::new(0),
        }
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
            StoredTensor::Quantized(q) if keep_quantized => {
                let out_features = q.shape().dims()[0];
                let mm = QMatMul::from_arc(Arc::new(q))?;
                Ok(Linear {
                    weight: LinearWeight::Quantized(mm),
                    bias,
                    out_features,
                    rows_computed: AtomicU64::new(0),
                })
            }
            other => Ok(Linear::dense(other.to_dense(dtype, device)?, bias)),
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
        };
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}
