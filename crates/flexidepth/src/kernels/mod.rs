//! Our own CPU kernels for quantized matrix products, where measurements showed candle's in the way: candle 0.11
//! has no SIMD path for Q4_1 (every linear layer of the default model). Weights stay in their GGUF block format;
//! activations are quantized to 8 bits per 32-value block, and each weight row is dotted with them by an AVX2
//! kernel (chosen at runtime, scalar fallback), rows split across threads.

#[cfg(target_arch = "x86_64")]
mod avx2;
pub mod blocks;

use crate::error::{Error, Result};
use blocks::{quantize_q8, BlockQ8, BlockType, QK};
use rayon::prelude::*;
use std::sync::OnceLock;

/// A dot-product kernel: one weight row (its blocks) with quantized activations.
pub type DotFn = fn(BlockType, &[u8], &[BlockQ8]) -> f32;

/// Four weight rows with the same activations (`None`: no multi-row kernel on this CPU).
pub type Dot4Fn = fn(BlockType, [&[u8]; 4], &[BlockQ8]) -> [f32; 4];

/// The four-row kernel this CPU runs, if any.
pub fn dot4_fn() -> Option<Dot4Fn> {
    static F: OnceLock<Option<Dot4Fn>> = OnceLock::new();
    *F.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
        {
            // SAFETY: the features the kernel needs were just detected.
            return Some(|t, rows, x| unsafe { avx2::dot4(t, rows, x) });
        }
        None
    })
}

/// The fastest kernel this CPU runs (decided once).
pub fn dot_fn() -> DotFn {
    static F: OnceLock<DotFn> = OnceLock::new();
    *F.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
        {
            // SAFETY: the features the kernel needs were just detected.
            return |t, row, x| unsafe { avx2::dot(t, row, x) };
        }
        blocks::dot_scalar
    })
}

/// Name of the kernel [`dot_fn`] picked, for `info` and benchmarks.
pub fn kernel_name() -> &'static str {
    if dot_fn() as usize == blocks::dot_scalar as DotFn as usize {
        "scalar"
    } else {
        "avx2"
    }
}

/// Weight rows dotted with every activation row before the next ones are read (a multiple of 4, for the four-row
/// kernel; 64 rows of the default model's Q4_1 are 23 KB, in cache).
const WEIGHT_BLOCK: usize = 64;

/// A weight matrix `[rows, cols]` in a GGUF block format.
#[derive(Debug)]
pub struct QuantMatrix {
    pub block_type: BlockType,
    pub rows: usize,
    pub cols: usize,
    data: Vec<u8>,
}

impl QuantMatrix {
    pub fn new(block_type: BlockType, rows: usize, cols: usize, data: Vec<u8>) -> Result<Self> {
        let need = rows * (cols / QK) * block_type.block_bytes();
        if !cols.is_multiple_of(QK) || data.len() != need {
            return Err(Error::Input(format!(
                "{block_type:?} matrix [{rows}, {cols}]: {} bytes, expected {need} (columns a multiple of {QK})",
                data.len()
            )));
        }
        Ok(QuantMatrix {
            block_type,
            rows,
            cols,
            data,
        })
    }

    pub fn row_bytes(&self) -> usize {
        self.cols / QK * self.block_type.block_bytes()
    }

    pub fn row(&self, r: usize) -> &[u8] {
        let rb = self.row_bytes();
        &self.data[r * rb..(r + 1) * rb]
    }

    pub fn storage_bytes(&self) -> usize {
        self.data.len()
    }

    /// Row `r` as f32 (embedding lookups).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        blocks::dequantize_row(self.block_type, self.row(r), out)
    }

    /// `y = x · Wᵀ` for `x: [m, cols]` (row-major), `y: [m, rows]`, with the given kernels.
    ///
    /// The loop runs over the weights outermost: each thread takes a range of weight rows and, a block of
    /// [`WEIGHT_BLOCK`] rows at a time, dots it with every activation row while the block sits in cache — so `m`
    /// rows (a batch of sequences) read the weights from memory once, not `m` times. Each output is the same dot
    /// product of one weight row with one activation row whatever `m` is: a row's result does not depend on the
    /// others.
    pub fn matmul_with(&self, dot: DotFn, dot4: Option<Dot4Fn>, x: &[f32], m: usize, y: &mut [f32]) {
        assert_eq!(x.len(), m * self.cols, "x must be [m, cols]");
        assert_eq!(y.len(), m * self.rows, "y must be [m, rows]");
        let nb = self.cols / QK;
        let mut xq = vec![BlockQ8::default(); m * nb];
        for (q, row) in xq.chunks_mut(nb).zip(x.chunks(self.cols)) {
            quantize_q8(row, q);
        }
        let t = self.block_type;
        // Measured (benches/kernels.rs): four rows at once is 1.5–2.2× faster for the 4-bit types at every size,
        // but slower for Q8_0 (the sign trick costs two extra ops per row and block), so Q8_0 goes row by row.
        let dot4 = dot4.filter(|_| t != BlockType::Q8_0);
        // Weight rows `first..first + out.len()` against one activation row.
        let rows_into = |first: usize, out: &mut [f32], xi: &[BlockQ8]| {
            let mut k = 0;
            if let Some(dot4) = dot4 {
                while k + 4 <= out.len() {
                    let r = first + k;
                    let v = dot4(t, [self.row(r), self.row(r + 1), self.row(r + 2), self.row(r + 3)], xi);
                    out[k..k + 4].copy_from_slice(&v);
                    k += 4;
                }
            }
            for (j, o) in out.iter_mut().enumerate().skip(k) {
                *o = dot(t, self.row(first + j), xi);
            }
        };
        // Split the weight rows across threads (multiples of 4, a few chunks per thread for balance). A thread's
        // results go to its own `[m, len]` block of `blocks`, copied into `y` afterwards.
        let chunk = (self.rows.div_ceil(rayon::current_num_threads() * 4).max(16) + 3) & !3;
        let mut blocks = vec![0f32; m * self.rows];
        blocks.par_chunks_mut(chunk * m).enumerate().for_each(|(ci, block)| {
            let (first, len) = (ci * chunk, block.len() / m);
            for sub in (0..len).step_by(WEIGHT_BLOCK) {
                let n = WEIGHT_BLOCK.min(len - sub);
                for (i, xi) in xq.chunks(nb).enumerate() {
                    rows_into(first + sub, &mut block[i * len + sub..i * len + sub + n], xi);
                }
            }
        });
        for (ci, block) in blocks.chunks(chunk * m).enumerate() {
            let (first, len) = (ci * chunk, block.len() / m);
            for (i, out) in block.chunks(len).enumerate() {
                y[i * self.rows + first..i * self.rows + first + len].copy_from_slice(out);
            }
        }
    }

    /// The whole matrix as f32 `[rows, cols]` (rows dequantized in parallel).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        out.par_chunks_mut(self.cols)
            .enumerate()
            .for_each(|(r, row)| self.dequantize_row(r, row));
        out
    }

    /// `y = x · Wᵀ` with the fastest kernel.
    pub fn matmul(&self, x: &[f32], m: usize, y: &mut [f32]) {
        self.matmul_with(dot_fn(), dot4_fn(), x, m, y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};

    /// A random matrix quantized by candle (ggml's own quantizers), as our type.
    fn matrix(t: GgmlDType, rows: usize, cols: usize, seed: u64) -> (QuantMatrix, Vec<f32>) {
        let dev = Device::Cpu;
        let vals: Vec<f32> = (0..rows * cols)
            .map(|i| (((i as u64 * 2654435761 + seed * 97) % 1000) as f32 / 500.0 - 1.0) * 0.7)
            .collect();
        let w = Tensor::from_vec(vals, (rows, cols), &dev).unwrap();
        let q = QTensor::quantize(&w, t).unwrap();
        let dense: Vec<f32> = q.dequantize(&dev).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let bytes = q.data().unwrap().to_vec();
        (
            QuantMatrix::new(BlockType::from_ggml(t).unwrap(), rows, cols, bytes).unwrap(),
            dense,
        )
    }

    /// `x · Wᵀ` in f64.
    fn reference(dense: &[f32], rows: usize, cols: usize, x: &[f32], m: usize) -> Vec<f32> {
        (0..m)
            .flat_map(|i| {
                (0..rows).map(move |r| {
                    (0..cols)
                        .map(|k| x[i * cols + k] as f64 * dense[r * cols + k] as f64)
                        .sum::<f64>() as f32
                })
            })
            .collect()
    }

    #[test]
    fn dequantized_rows_match_candle() {
        for t in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0] {
            let (q, dense) = matrix(t, 5, 64, 1);
            let mut row = vec![0f32; 64];
            for r in 0..5 {
                q.dequantize_row(r, &mut row);
                assert_eq!(row, dense[r * 64..(r + 1) * 64], "{t:?} row {r}");
            }
        }
    }

    /// The activations as the kernels see them: quantized to 8 bits per block, then back to f32.
    fn through_q8(x: &[f32]) -> Vec<f32> {
        let mut q = vec![BlockQ8::default(); x.len() / QK];
        quantize_q8(x, &mut q);
        q.iter()
            .flat_map(|b| b.qs.iter().map(move |&v| b.d * v as f32))
            .collect()
    }

    /// A non-finite activation (corrupt weights upstream) is not rounded away: every kernel's product with its
    /// block is non-finite, so it reaches the logits, where it is refused.
    #[test]
    fn non_finite_activations_are_not_quantized_away() {
        for t in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0] {
            let (rows, cols) = (9, 64);
            let (q, _) = matrix(t, rows, cols, 5);
            for bad in [f32::NAN, f32::INFINITY] {
                let mut x = vec![0.25f32; cols];
                x[40] = bad;
                let kernels: [(&str, DotFn, Option<Dot4Fn>); 3] = [
                    ("scalar", blocks::dot_scalar, None),
                    ("one row", dot_fn(), None),
                    ("four rows", dot_fn(), dot4_fn()),
                ];
                for (name, dot, dot4) in kernels {
                    let mut y = vec![0f32; rows];
                    q.matmul_with(dot, dot4, &x, 1, &mut y);
                    assert!(y.iter().all(|v| v.is_nan()), "{t:?} {name} {bad}: {y:?}");
                }
            }
            // Finite activations keep finite products.
            let mut y = vec![0f32; rows];
            q.matmul_with(blocks::dot_scalar, None, &vec![0.25f32; cols], 1, &mut y);
            assert!(y.iter().all(|v| v.is_finite()), "{t:?}");
        }
    }

    /// Every kernel (scalar and the detected SIMD one), decode and prefill shapes, equals the f64 product of the
    /// dequantized weights with the 8-bit-rounded activations (float summation order aside), and stays within the
    /// rounding's reach of the plain f32 product.
    #[test]
    fn kernels_match_the_dequantized_product() {
        // Rows of 8 and of 9 blocks; 67 rows leave a remainder for the four-row kernel.
        let shapes = [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0]
            .into_iter()
            .flat_map(|t| [(t, 256), (t, 288)]);
        for (t, cols) in shapes {
            let rows = 67;
            let (q, dense) = matrix(t, rows, cols, 3);
            for m in [1, 2, 5] {
                let x: Vec<f32> = (0..m * cols)
                    .map(|i| ((i * 7919 % 997) as f32 / 498.0 - 1.0) * 2.0)
                    .collect();
                let exact = reference(&dense, rows, cols, &through_q8(&x), m);
                let plain = reference(&dense, rows, cols, &x, m);
                let scale = plain.iter().fold(0f32, |a, v| a.max(v.abs()));
                let kernels: [(&str, DotFn, Option<Dot4Fn>); 3] = [
                    ("scalar", blocks::dot_scalar, None),
                    ("one row", dot_fn(), None),
                    ("four rows", dot_fn(), dot4_fn()),
                ];
                for (name, dot, dot4) in kernels {
                    let mut y = vec![0f32; m * rows];
                    q.matmul_with(dot, dot4, &x, m, &mut y);
                    let err = y.iter().zip(&exact).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                    assert!(
                        err < 1e-5 * scale,
                        "{t:?} {name} m={m}: {err} from the exact product (scale {scale})"
                    );
                    let err = y.iter().zip(&plain).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                    assert!(
                        err < 0.03 * scale,
                        "{t:?} {name} m={m}: {err} from the f32 product (scale {scale})"
                    );
                }
            }
        }
    }

    /// A row of a multi-row product is the same, bit for bit, as that row multiplied alone.
    #[test]
    fn rows_of_a_product_equal_rows_alone() {
        for t in [GgmlDType::Q4_1, GgmlDType::Q8_0] {
            let (rows, cols) = (203, 64);
            let (q, _) = matrix(t, rows, cols, 5);
            let m = 7;
            let x: Vec<f32> = (0..m * cols)
                .map(|i| ((i * 31 % 101) as f32 / 50.0 - 1.0) * 1.5)
                .collect();
            let mut y = vec![0f32; m * rows];
            q.matmul(&x, m, &mut y);
            for i in 0..m {
                let mut alone = vec![0f32; rows];
                q.matmul(&x[i * cols..(i + 1) * cols], 1, &mut alone);
                assert_eq!(&y[i * rows..(i + 1) * rows], alone.as_slice(), "{t:?} row {i}");
            }
        }
    }

    #[test]
    fn bad_sizes_are_refused() {
        assert!(QuantMatrix::new(BlockType::Q4_1, 2, 33, vec![0; 40]).is_err());
        assert!(QuantMatrix::new(BlockType::Q4_1, 2, 32, vec![0; 39]).is_err());
    }
}
