//! GGUF block formats we multiply ourselves (as llama.cpp's ggml lays them out, `ggml-common.h`), the 8-bit
//! activation blocks they are multiplied with, and the scalar dot products every SIMD kernel is tested against.
//!
//! A 32-weight block (multiplied with [`BlockQ8`] activations):
//! - Q4_0: `d: f16, qs: [u8; 16]`, weight `j` is `d · (nibble_j − 8)`;
//! - Q4_1: `d: f16, m: f16, qs: [u8; 16]`, weight `j` is `d · nibble_j + m`;
//! - Q5_0: `d: f16, qh: [u8; 4], qs: [u8; 16]`, weight `j` is `d · ((nibble_j | bit_j(qh) << 4) − 16)`, `qh` read as
//!   a little-endian u32;
//! - Q8_0: `d: f16, qs: [i8; 32]`, weight `j` is `d · qs[j]`;
//!
//! where nibble `j < 16` is the low half of `qs[j]` and nibble `j ≥ 16` the high half of `qs[j − 16]`.
//! The 256-weight K-quant super-blocks (Q4_K, Q5_K, Q6_K, multiplied with [`super::kquants::BlockQ8K`]
//! activations) are described in [`super::kquants`].

use super::kquants::{self, BlockQ8K, QK_K};
use half::f16;

/// Weights per block.
pub const QK: usize = 32;

/// The block types with our own kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockType {
    Q4_0,
    Q4_1,
    Q5_0,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
}

impl BlockType {
    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            BlockType::Q4_0 => 18,
            BlockType::Q4_1 => 20,
            BlockType::Q5_0 => 22,
            BlockType::Q8_0 => 34,
            BlockType::Q4K => 144,
            BlockType::Q5K => 176,
            BlockType::Q6K => 210,
        }
    }

    /// Weights per block: [`QK`] (32), or [`QK_K`] (256) for the K-quants.
    pub fn block_elems(self) -> usize {
        if self.is_k_quant() {
            QK_K
        } else {
            QK
        }
    }

    /// A K-quant: 256-weight super-blocks, multiplied with Q8_K activations (as ggml pairs them).
    pub fn is_k_quant(self) -> bool {
        matches!(self, BlockType::Q4K | BlockType::Q5K | BlockType::Q6K)
    }

    pub fn from_ggml(t: candle_core::quantized::GgmlDType) -> Option<Self> {
        use candle_core::quantized::GgmlDType as G;
        match t {
            G::Q4_0 => Some(BlockType::Q4_0),
            G::Q4_1 => Some(BlockType::Q4_1),
            G::Q5_0 => Some(BlockType::Q5_0),
            G::Q8_0 => Some(BlockType::Q8_0),
            G::Q4K => Some(BlockType::Q4K),
            G::Q5K => Some(BlockType::Q5K),
            G::Q6K => Some(BlockType::Q6K),
            _ => None,
        }
    }
}

/// Activations as a kernel takes them: 32-value [`BlockQ8`] blocks for the 32-weight block types, 256-value
/// [`BlockQ8K`] super-blocks for the K-quants (see [`BlockType::is_k_quant`]).
#[derive(Debug, Clone, Copy)]
pub enum Acts<'a> {
    Q8(&'a [BlockQ8]),
    Q8K(&'a [BlockQ8K]),
}

/// One block of activations quantized to 8 bits: `x_j ≈ d · qs[j]`; `sum` is `Σ qs[j]` (for the offset terms of
/// Q4_0 and Q4_1).
#[derive(Debug, Clone, Copy, Default)]
#[repr(C, align(8))]
pub struct BlockQ8 {
    pub d: f32,
    pub sum: i32,
    pub qs: [i8; QK],
}

/// The 8-bit activation scale `d = max|x| / 127` of one block of `chunk`, and `1/d` (0 for an all-zero block):
/// shared by the Q8_0 and Q8_K quantizers. `f32::max` drops NaN, so a non-finite activation (corrupt weights
/// upstream) would quantize to zeros and vanish; a NaN scale instead carries it through the product to the logits,
/// where it is refused.
#[inline(always)]
pub(crate) fn q8_scale(chunk: &[f32]) -> (f32, f32) {
    let amax = chunk.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = if chunk.iter().all(|v| v.is_finite()) {
        amax / 127.0
    } else {
        f32::NAN
    };
    (d, if d > 0.0 { 1.0 / d } else { 0.0 })
}

/// Quantize `x` (a multiple of 32 long) into `out`, one block per 32 values, round-to-nearest (half away from
/// zero, [`f32::round`]).
pub fn quantize_q8(x: &[f32], out: &mut [BlockQ8]) {
    #[cfg(target_arch = "x86_64")]
    if sse41_avx2() {
        // SAFETY: the features were just detected.
        return unsafe { quantize_q8_avx2(x, out) };
    }
    quantize_q8_body(x, out)
}

/// Whether this CPU has SSE4.1 and AVX2: with them the quantizers' `round` is an instruction sequence (LLVM's
/// lowering of `f32::round`, same results) instead of a libm call per value, and their loops vectorize.
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn sse41_avx2() -> bool {
    std::is_x86_feature_detected!("sse4.1") && std::is_x86_feature_detected!("avx2")
}

/// [`quantize_q8`] compiled for SSE4.1 + AVX2 (the same code).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.1,avx2")]
unsafe fn quantize_q8_avx2(x: &[f32], out: &mut [BlockQ8]) {
    quantize_q8_body(x, out)
}

#[inline(always)]
pub(super) fn quantize_q8_body(x: &[f32], out: &mut [BlockQ8]) {
    for (chunk, block) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let (d, inv) = q8_scale(chunk);
        let mut sum = 0i32;
        for (q, &v) in block.qs.iter_mut().zip(chunk) {
            *q = (v * inv).round() as i8;
            sum += *q as i32;
        }
        block.d = d;
        block.sum = sum;
    }
}

#[inline]
pub fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Dot product of one weight row (`blocks` blocks of `t`) with quantized activations, scalar reference.
///
/// # Panics
/// When `x` is not the activation type of `t` (Q8_K for a K-quant, Q8 otherwise): [`super::QuantMatrix`] always
/// quantizes the activations for its block type.
pub fn dot_scalar(t: BlockType, row: &[u8], x: Acts) -> f32 {
    match x {
        Acts::Q8(x) if !t.is_k_quant() => dot_q8_blocks(t, row, x),
        Acts::Q8K(x) if t.is_k_quant() => kquants::dot_scalar(t, row, x),
        _ => panic!("{t:?} weights with activations quantized for another block type"),
    }
}

/// A row of 32-weight blocks · Q8 activations.
fn dot_q8_blocks(t: BlockType, row: &[u8], x: &[BlockQ8]) -> f32 {
    let bb = t.block_bytes();
    let mut acc = 0f32;
    for (b, y) in row.chunks_exact(bb).zip(x) {
        acc += match t {
            BlockType::Q4_0 | BlockType::Q4_1 => {
                let qs = if t == BlockType::Q4_0 { &b[2..18] } else { &b[4..20] };
                let isum: i32 = qs
                    .iter()
                    .zip(y.qs[..16].iter().zip(&y.qs[16..]))
                    .map(|(&q, (&lo, &hi))| (q & 0x0F) as i32 * lo as i32 + (q >> 4) as i32 * hi as i32)
                    .sum();
                let d = f16_at(b, 0);
                if t == BlockType::Q4_0 {
                    d * y.d * (isum - 8 * y.sum) as f32
                } else {
                    d * y.d * isum as f32 + f16_at(b, 2) * y.d * y.sum as f32
                }
            }
            BlockType::Q5_0 => {
                let mut q = [0u8; QK];
                q5_0_values(b, &mut q);
                let isum: i32 = q.iter().zip(&y.qs).map(|(&q, &v)| q as i32 * v as i32).sum();
                f16_at(b, 0) * y.d * (isum - 16 * y.sum) as f32
            }
            BlockType::Q8_0 => {
                let isum: i32 = (0..QK).map(|j| b[2 + j] as i8 as i32 * y.qs[j] as i32).sum();
                f16_at(b, 0) * y.d * isum as f32
            }
            BlockType::Q4K | BlockType::Q5K | BlockType::Q6K => unreachable!("K-quants take Q8_K activations"),
        };
    }
    acc
}

/// The 5-bit values (0..32, before the −16 offset) of a Q5_0 block, in weight order.
fn q5_0_values(b: &[u8], out: &mut [u8; QK]) {
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    for j in 0..16 {
        out[j] = (b[6 + j] & 0x0F) | (((qh >> j) & 1) << 4) as u8;
        out[j + 16] = (b[6 + j] >> 4) | (((qh >> (j + 16)) & 1) << 4) as u8;
    }
}

/// Dequantize one weight row (whole blocks of `t`) into `out` (used for embedding lookups and tests).
pub fn dequantize_row(t: BlockType, row: &[u8], out: &mut [f32]) {
    if t.is_k_quant() {
        return kquants::dequantize_row(t, row, out);
    }
    let bb = t.block_bytes();
    for (b, o) in row.chunks_exact(bb).zip(out.chunks_exact_mut(QK)) {
        let d = f16_at(b, 0);
        match t {
            BlockType::Q4_0 | BlockType::Q4_1 => {
                let (qs, m) = if t == BlockType::Q4_0 {
                    (&b[2..18], -8.0 * d)
                } else {
                    (&b[4..20], f16_at(b, 2))
                };
                for j in 0..16 {
                    o[j] = d * (qs[j] & 0x0F) as f32 + m;
                    o[j + 16] = d * (qs[j] >> 4) as f32 + m;
                }
            }
            BlockType::Q5_0 => {
                let mut q = [0u8; QK];
                q5_0_values(b, &mut q);
                for (o, &q) in o.iter_mut().zip(&q) {
                    *o = d * (q as i32 - 16) as f32;
                }
            }
            BlockType::Q8_0 => {
                for j in 0..QK {
                    o[j] = d * b[2 + j] as i8 as f32;
                }
            }
            BlockType::Q4K | BlockType::Q5K | BlockType::Q6K => unreachable!("handled above"),
        }
    }
}
