//! ggml's K-quants (`ggml-common.h`, `ggml-quants.c`): 256-weight super-blocks with 6- or 8-bit sub-block scales,
//! multiplied with [`BlockQ8K`] activations (one f32 scale per 256 values and the sums of each 16 values), as ggml
//! pairs them. Scalar reference dot products and dequantization; the AVX2 kernels are in `avx2_k.rs`.
//!
//! - Q4_K (144 bytes): `d: f16, dmin: f16, scales: [u8; 12], qs: [u8; 128]`. Eight 32-weight sub-blocks, each with
//!   a 6-bit scale `sc` and min `m` packed in `scales` ([`scale_min_k4`]); per 64 weights, `qs[32]` holds the first
//!   sub-block in its low nibbles and the second in its high nibbles; weight = `d·sc·q − dmin·m`.
//! - Q5_K (176 bytes): `d, dmin: f16, scales: [u8; 12], qh: [u8; 32], qs: [u8; 128]`: Q4_K's layout plus a fifth
//!   bit, bit `2i` (low nibbles) and `2i + 1` (high nibbles) of `qh[l]` for the `i`-th 64 weights.
//! - Q6_K (210 bytes): `ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16`; per 128 weights, `ql[64]` holds
//!   four runs of 32 (low nibbles of `ql[0..32]`, of `ql[32..64]`, then high nibbles), `qh[32]` their upper two bits
//!   (bits 0–1, 2–3, 4–5, 6–7); one signed scale per 16 weights; weight = `d·sc·(q − 32)`.
//!
//! A row must be whole super-blocks (a multiple of 256 weights), as ggml requires of these types.

use super::blocks::{f16_at, BlockType};

/// Weights per K-quant super-block.
pub const QK_K: usize = 256;

/// 256 activations quantized to 8 bits, ggml's `block_q8_K`: `x_j ≈ d · qs[j]`; `bsums[i]` is the sum of
/// `qs[16i..16i + 16]` (for the min and offset terms).
#[derive(Debug, Clone, Copy)]
#[repr(C, align(32))]
pub struct BlockQ8K {
    pub qs: [i8; QK_K],
    pub d: f32,
    pub bsums: [i16; QK_K / 16],
}

impl Default for BlockQ8K {
    fn default() -> Self {
        BlockQ8K {
            qs: [0; QK_K],
            d: 0.0,
            bsums: [0; QK_K / 16],
        }
    }
}

/// Quantize `x` (a multiple of 256 long) into `out`, one super-block per 256 values, round-to-nearest with scale
/// `max|x| / 127` (as [`super::blocks::quantize_q8`]; a non-finite value gives a NaN scale, so it is not rounded
/// away).
pub fn quantize_q8k(x: &[f32], out: &mut [BlockQ8K]) {
    #[cfg(target_arch = "x86_64")]
    if super::blocks::sse41_avx2() {
        // SAFETY: the features were just detected.
        return unsafe { quantize_q8k_avx2(x, out) };
    }
    quantize_q8k_body(x, out)
}

/// [`quantize_q8k`] compiled for SSE4.1 + AVX2 (the same code; see [`super::blocks::sse41_avx2`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.1,avx2")]
unsafe fn quantize_q8k_avx2(x: &[f32], out: &mut [BlockQ8K]) {
    quantize_q8k_body(x, out)
}

#[inline(always)]
pub(super) fn quantize_q8k_body(x: &[f32], out: &mut [BlockQ8K]) {
    for (chunk, block) in x.chunks_exact(QK_K).zip(out.iter_mut()) {
        let (d, inv) = super::blocks::q8_scale(chunk);
        for (q, &v) in block.qs.iter_mut().zip(chunk) {
            *q = (v * inv).round() as i8;
        }
        for (s, g) in block.bsums.iter_mut().zip(block.qs.chunks_exact(16)) {
            *s = g.iter().map(|&q| q as i16).sum();
        }
        block.d = d;
    }
}

/// Scale and min of sub-block `j` (0..8) from Q4_K / Q5_K's 12 packed bytes (ggml's `get_scale_min_k4`).
#[inline]
pub fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// The unsigned quantized values of one super-block in weight order: 0..16 (Q4_K), 0..32 (Q5_K), 0..64 (Q6_K,
/// before its −32 offset).
pub fn values(t: BlockType, b: &[u8], q: &mut [u8; QK_K]) {
    match t {
        BlockType::Q4K | BlockType::Q5K => {
            let (qh, qs) = if t == BlockType::Q5K {
                (Some(&b[16..48]), &b[48..176])
            } else {
                (None, &b[16..144])
            };
            for i in 0..4 {
                for l in 0..32 {
                    let (lo, hi) = (qs[32 * i + l] & 0x0F, qs[32 * i + l] >> 4);
                    let (hlo, hhi) = qh.map_or((0, 0), |h| ((h[l] >> (2 * i)) & 1, (h[l] >> (2 * i + 1)) & 1));
                    q[64 * i + l] = lo | (hlo << 4);
                    q[64 * i + 32 + l] = hi | (hhi << 4);
                }
            }
        }
        BlockType::Q6K => {
            for n in 0..2 {
                let (ql, qh) = (&b[64 * n..64 * n + 64], &b[128 + 32 * n..128 + 32 * n + 32]);
                let q = &mut q[128 * n..128 * n + 128];
                for l in 0..32 {
                    q[l] = (ql[l] & 0x0F) | ((qh[l] & 3) << 4);
                    q[l + 32] = (ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4);
                    q[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
                    q[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
                }
            }
        }
        other => unreachable!("{other:?} is not a K-quant"),
    }
}

/// Dot product of one super-block with one Q8_K block, scalar reference.
pub fn dot_block(t: BlockType, b: &[u8], y: &BlockQ8K) -> f32 {
    let mut q = [0u8; QK_K];
    values(t, b, &mut q);
    let mut prod = [0i32; QK_K];
    for ((p, &q), &v) in prod.iter_mut().zip(&q).zip(&y.qs) {
        *p = q as i32 * v as i32;
    }
    match t {
        BlockType::Q6K => {
            let scales = &b[192..208];
            let (mut sumi, mut offset) = (0i32, 0i32);
            for (i, &sc) in scales.iter().enumerate() {
                let sc = sc as i8 as i32;
                sumi += sc * prod[16 * i..16 * i + 16].iter().sum::<i32>();
                offset += sc * y.bsums[i] as i32;
            }
            f16_at(b, 208) * y.d * (sumi - 32 * offset) as f32
        }
        _ => {
            let (mut sumi, mut summ) = (0i32, 0i32);
            for j in 0..8 {
                let (sc, m) = scale_min_k4(j, &b[4..16]);
                sumi += sc as i32 * prod[32 * j..32 * j + 32].iter().sum::<i32>();
                summ += m as i32 * (y.bsums[2 * j] as i32 + y.bsums[2 * j + 1] as i32);
            }
            f16_at(b, 0) * y.d * sumi as f32 - f16_at(b, 2) * y.d * summ as f32
        }
    }
}

/// A row of super-blocks · Q8_K activations, scalar reference.
pub fn dot_scalar(t: BlockType, row: &[u8], x: &[BlockQ8K]) -> f32 {
    row.chunks_exact(t.block_bytes())
        .zip(x)
        .map(|(b, y)| dot_block(t, b, y))
        .sum()
}

/// Dequantize a row of super-blocks into `out`, in ggml's order of float operations (so results equal candle's).
pub fn dequantize_row(t: BlockType, row: &[u8], out: &mut [f32]) {
    let mut q = [0u8; QK_K];
    for (b, o) in row.chunks_exact(t.block_bytes()).zip(out.chunks_exact_mut(QK_K)) {
        values(t, b, &mut q);
        if t == BlockType::Q6K {
            let d = f16_at(b, 208);
            for (i, (o, q)) in o.chunks_exact_mut(16).zip(q.chunks_exact(16)).enumerate() {
                let sc = b[192 + i] as i8 as f32;
                for (o, &q) in o.iter_mut().zip(q) {
                    *o = d * sc * (q as i32 - 32) as f32;
                }
            }
        } else {
            let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
            for (j, (o, q)) in o.chunks_exact_mut(32).zip(q.chunks_exact(32)).enumerate() {
                let (sc, m) = scale_min_k4(j, &b[4..16]);
                let (d1, m1) = (d * sc as f32, dmin * m as f32);
                for (o, &q) in o.iter_mut().zip(q) {
                    *o = d1 * q as f32 - m1;
                }
            }
        }
    }
}
