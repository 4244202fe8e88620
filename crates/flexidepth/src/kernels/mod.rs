//! Our own CPU kernels for quantized matrix products, where measurements showed candle's in the way: candle 0.11
//! has no SIMD path for Q4_1 (every linear layer of the default model). Weights stay in their GGUF block format
//! (Q4_0, Q4_1, Q5_0, Q8_0, and the K-quants Q4_K, Q5_K, Q6_K); activations are quantized to 8 bits, per 32 values
//! for the 32-weight blocks and per 256 (Q8_K) for the K-quants, as ggml pairs them, and each weight row is dotted
//! with them by an AVX2 kernel (chosen at runtime, scalar fallback), rows split across threads. Several activation
//! rows (a batch of sequences) go through a rows kernel ([`rows`]) that unpacks each weight block once for all of
//! them. One activation row (decode) goes, on CPUs with AVX-512 F/BW/VL/VNNI, through the wide kernels
//! (`avx512.rs`, `avx512_k.rs`: two weight rows per 512-bit register, eight per pass, the activations laid out once
//! by [`wide`]), bit-identical to the AVX2 ones.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx2_k;
#[cfg(target_arch = "x86_64")]
mod avx2_rows;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod avx512_k;
pub mod blocks;
pub mod kquants;
pub mod rows;
pub mod vexp;
pub mod wide;

use crate::error::{Error, Result};
use blocks::{quantize_q8, Acts, BlockQ8, BlockType};
use kquants::{quantize_q8k, BlockQ8K};
use rayon::prelude::*;
use rows::{tile_ranges, ActTile, DotRowsFn};
use std::sync::OnceLock;
use wide::WideActs;

/// A dot-product kernel: one weight row (its blocks) with activations quantized for its block type.
pub type DotFn = fn(BlockType, &[u8], Acts) -> f32;

/// Four weight rows with the same activations (`None`: no multi-row kernel on this CPU).
pub type Dot4Fn = fn(BlockType, [&[u8]; 4], Acts) -> [f32; 4];

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

/// A wide one-row kernel: weight rows `first..first + out.len()` of a matrix (`data`,
/// rows of `row_bytes` bytes) · one activation row laid out by [`WideActs`], into `out`. Arguments: block type,
/// `data`, `row_bytes`, `first`, activations, `out`.
pub type DotWideFn = fn(BlockType, &[u8], usize, usize, &WideActs, &mut [f32]);

/// The wide one-row kernel this CPU runs, if any: AVX-512 F/BW/VL/VNNI, eight weight rows per pass, bit-identical
/// to the AVX2 kernels (see `avx512.rs`, and `avx512_k.rs` for the K-quants).
pub fn wide_fn() -> Option<DotWideFn> {
    static F: OnceLock<Option<DotWideFn>> = OnceLock::new();
    *F.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        if ["avx2", "fma", "f16c"]
            .into_iter()
            .chain(["avx512f", "avx512bw", "avx512vl", "avx512vnni"])
            .all(detected)
        {
            // SAFETY: the features the kernel needs were just detected.
            return Some(|t, data, row_bytes, first, x, out| unsafe {
                avx512::dot_range(t, data, row_bytes, first, x, out)
            });
        }
        None
    })
}

/// Whether this CPU has the x86 feature `name` (one of those the kernels use).
#[cfg(target_arch = "x86_64")]
fn detected(name: &str) -> bool {
    match name {
        "avx2" => std::is_x86_feature_detected!("avx2"),
        "fma" => std::is_x86_feature_detected!("fma"),
        "f16c" => std::is_x86_feature_detected!("f16c"),
        "avx512f" => std::is_x86_feature_detected!("avx512f"),
        "avx512bw" => std::is_x86_feature_detected!("avx512bw"),
        "avx512vl" => std::is_x86_feature_detected!("avx512vl"),
        "avx512vnni" => std::is_x86_feature_detected!("avx512vnni"),
        _ => false,
    }
}

/// Every rows kernel this CPU runs, slowest first: the scalar fallback, AVX2, AVX-512 VNNI (each bit-identical to
/// the others' SIMD results: see `avx2_rows.rs`), for tests and benchmarks.
pub fn rows_kernels() -> Vec<(&'static str, DotRowsFn)> {
    let mut out: Vec<(&'static str, DotRowsFn)> = vec![("scalar", rows::dot_rows_scalar)];
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("f16c")
    {
        // SAFETY: the features the kernel needs were just detected.
        out.push(("avx2", |t, row, tile, out| unsafe {
            avx2_rows::dot_rows(t, row, tile, out)
        }));
        if std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512vl")
            && std::is_x86_feature_detected!("avx512vnni")
        {
            // SAFETY: as above, and the AVX-512 features were just detected too.
            out.push(("avx512vnni", |t, row, tile, out| unsafe {
                avx2_rows::dot_rows_vnni(t, row, tile, out)
            }));
        }
    }
    out
}

/// The rows kernel this CPU runs (decided once): the last of [`rows_kernels`].
pub fn dot_rows_fn() -> DotRowsFn {
    static F: OnceLock<DotRowsFn> = OnceLock::new();
    *F.get_or_init(|| rows_kernels().last().expect("the scalar kernel is always there").1)
}

/// The kernels one product uses: one row, four weight rows, several activation rows (`None`: row by row), and the
/// wide one-row kernel that one activation row takes where there is one (`None`: `dot4`/`dot`).
#[derive(Clone, Copy)]
pub struct Kernels {
    pub dot: DotFn,
    pub dot4: Option<Dot4Fn>,
    pub rows: Option<DotRowsFn>,
    pub wide: Option<DotWideFn>,
}

impl Kernels {
    /// The fastest this CPU runs.
    pub fn detected() -> Self {
        Kernels {
            dot: dot_fn(),
            dot4: dot4_fn(),
            rows: Some(dot_rows_fn()),
            wide: wide_fn(),
        }
    }
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

/// Activations of `m` rows quantized for one block type (see [`Acts`]).
enum QuantActs {
    Q8(Vec<BlockQ8>),
    Q8K(Vec<BlockQ8K>),
}

impl QuantActs {
    /// `x: [m, cols]` quantized per row for weights of type `t` (`cols` a multiple of its block).
    fn new(t: BlockType, x: &[f32], cols: usize) -> Self {
        let nb = cols / t.block_elems();
        let m = x.len() / cols;
        if t.is_k_quant() {
            let mut q = vec![BlockQ8K::default(); m * nb];
            for (q, row) in q.chunks_mut(nb).zip(x.chunks(cols)) {
                quantize_q8k(row, q);
            }
            QuantActs::Q8K(q)
        } else {
            let mut q = vec![BlockQ8::default(); m * nb];
            for (q, row) in q.chunks_mut(nb).zip(x.chunks(cols)) {
                quantize_q8(row, q);
            }
            QuantActs::Q8(q)
        }
    }

    /// Activation row `i` (of `nb` blocks).
    fn row(&self, i: usize, nb: usize) -> Acts<'_> {
        match self {
            QuantActs::Q8(q) => Acts::Q8(&q[i * nb..(i + 1) * nb]),
            QuantActs::Q8K(q) => Acts::Q8K(&q[i * nb..(i + 1) * nb]),
        }
    }
}

/// A weight matrix `[rows, cols]` in a GGUF block format.
#[derive(Debug)]
pub struct QuantMatrix {
    pub block_type: BlockType,
    pub rows: usize,
    pub cols: usize,
    data: Vec<u8>,
}

impl QuantMatrix {
    /// `data`: `rows` rows of `cols / block_elems` blocks each, as stored in GGUF.
    ///
    /// # Errors
    /// [`Error::Input`] when `cols` is not a multiple of the type's block (32 weights, 256 for a K-quant: ggml
    /// refuses such rows too) or `data` is not the size of that many blocks.
    pub fn new(block_type: BlockType, rows: usize, cols: usize, data: Vec<u8>) -> Result<Self> {
        let qk = block_type.block_elems();
        let need = rows * (cols / qk) * block_type.block_bytes();
        if !cols.is_multiple_of(qk) || data.len() != need {
            return Err(Error::Input(format!(
                "{block_type:?} matrix [{rows}, {cols}]: {} bytes, expected {need} (columns a multiple of {qk})",
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
        self.cols / self.block_type.block_elems() * self.block_type.block_bytes()
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
    /// rows (a batch of sequences) read the weights from memory once, not `m` times. From two activation rows on,
    /// with a rows kernel, each weight row is also unpacked once per tile of activation rows ([`rows`]). Each
    /// output is the same dot product of one weight row with one activation row whatever `m` is: a row's result
    /// does not depend on the others (bit for bit, where the kernels agree: the AVX2 ones do, see `avx2_rows.rs`).
    pub fn matmul_with(&self, k: Kernels, x: &[f32], m: usize, y: &mut [f32]) {
        assert_eq!(x.len(), m * self.cols, "x must be [m, cols]");
        assert_eq!(y.len(), m * self.rows, "y must be [m, rows]");
        let t = self.block_type;
        if let Some(wide) = k.wide.filter(|_| m == 1) {
            return self.matvec_wide(wide, x, y);
        }
        let nb = self.cols / t.block_elems();
        let xq = QuantActs::new(t, x, self.cols);
        let rows_kernel = k.rows.filter(|_| m >= 2);
        let tiles: Vec<(usize, ActTile)> = match rows_kernel {
            Some(_) => tile_ranges(m)
                .into_iter()
                .map(|(s, n)| (s, ActTile::new((s..s + n).map(|i| xq.row(i, nb)).collect())))
                .collect(),
            None => vec![],
        };
        // Measured (benches/kernels.rs): four rows at once is 1.5–2.2× faster for the 4-bit types at every size,
        // but slower for Q8_0 (the sign trick costs two extra ops per row and block), so Q8_0 goes row by row.
        let dot4 = k.dot4.filter(|_| t != BlockType::Q8_0);
        let dot = k.dot;
        // Weight rows `first..first + out.len()` against one activation row.
        let rows_into = |first: usize, out: &mut [f32], xi: Acts| {
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
            let mut tile_out = [0f32; rows::MAX_TILE];
            for sub in (0..len).step_by(WEIGHT_BLOCK) {
                let n = WEIGHT_BLOCK.min(len - sub);
                match rows_kernel {
                    Some(f) => {
                        for (start, tile) in &tiles {
                            for r in sub..sub + n {
                                f(t, self.row(first + r), tile, &mut tile_out);
                                for (j, &v) in tile_out[..tile.len()].iter().enumerate() {
                                    block[(start + j) * len + r] = v;
                                }
                            }
                        }
                    }
                    None => {
                        for i in 0..m {
                            rows_into(first + sub, &mut block[i * len + sub..i * len + sub + n], xq.row(i, nb));
                        }
                    }
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

    /// `y = x · Wᵀ` for one activation row `x: [cols]` with a wide kernel, `y: [rows]`: the weight rows split
    /// across threads in multiples of eight (the kernel's rows per pass).
    fn matvec_wide(&self, wide: DotWideFn, x: &[f32], y: &mut [f32]) {
        let t = self.block_type;
        let acts = if t.is_k_quant() {
            let mut xq = vec![BlockQ8K::default(); self.cols / kquants::QK_K];
            quantize_q8k(x, &mut xq);
            WideActs::new_k(t, xq)
        } else {
            let mut xq = vec![BlockQ8::default(); self.cols / blocks::QK];
            quantize_q8(x, &mut xq);
            WideActs::new(t, &xq)
        };
        let chunk = (self.rows.div_ceil(rayon::current_num_threads() * 4).max(16) + 7) & !7;
        let rb = self.row_bytes();
        y.par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(ci, out)| wide(self.block_type, &self.data, rb, ci * chunk, &acts, out));
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
        self.matmul_with(Kernels::detected(), x, m, y)
    }
}

#[cfg(test)]
mod tests;
