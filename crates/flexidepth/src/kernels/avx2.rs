//! AVX2 + FMA + F16C dot products of one quantized weight row of 32-weight blocks (Q4_0, Q4_1, Q5_0, Q8_0) with
//! 8-bit activations (the approach of ggml's `ggml_vec_dot_q4_1_q8_1`: unsigned-by-signed byte products with
//! `maddubs`, widened to i32, scaled per block). The K-quants are in `avx2_k.rs`. Only called after runtime
//! detection (see [`super::dot_fn`]).

#![allow(clippy::missing_safety_doc)]

use super::blocks::{Acts, BlockQ8, BlockType};
use std::arch::x86_64::*;

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn f16_to_f32(p: *const u8) -> f32 {
    let bits = u16::from_le_bytes([*p, *p.add(1)]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// `0x10` in byte `j` where bit `j` of Q5_0's little-endian `qh` is set (ggml's `bytes_from_bits_32`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q5_high_bits(qh: *const u8) -> __m256i {
    let x32 = std::ptr::read_unaligned(qh as *const i32);
    // Byte j gets byte j / 8 of qh, then every bit but bit j % 8 is set: all ones iff that bit was set.
    let shuf = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0);
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(x32), shuf);
    let bytes = _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
    _mm256_and_si256(_mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1)), _mm256_set1_epi8(0x10))
}

/// Q4_0 / Q4_1 / Q5_0 row · Q8 activations.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q4(t: BlockType, row: &[u8], x: &[BlockQ8]) -> f32 {
    let bb = t.block_bytes();
    let qs_at = match t {
        BlockType::Q4_0 => 2,
        BlockType::Q4_1 => 4,
        _ => 6,
    };
    debug_assert!(row.len() >= x.len() * bb);
    let mask = _mm256_set1_epi8(0x0F);
    let ones = _mm256_set1_epi16(1);
    let mut acc = _mm256_setzero_ps();
    let mut offset = 0f32;
    let base = row.as_ptr();
    for (i, y) in x.iter().enumerate() {
        let b = base.add(i * bb);
        let lo = _mm_loadu_si128(b.add(qs_at) as *const __m128i);
        let hi = _mm_srli_epi16(lo, 4);
        let mut q = _mm256_and_si256(_mm256_set_m128i(hi, lo), mask);
        if t == BlockType::Q5_0 {
            q = _mm256_or_si256(q, q5_high_bits(b.add(2)));
        }
        let yv = _mm256_loadu_si256(y.qs.as_ptr() as *const __m256i);
        let p32 = _mm256_madd_epi16(_mm256_maddubs_epi16(q, yv), ones);
        let d = f16_to_f32(b);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d * y.d), _mm256_cvtepi32_ps(p32), acc);
        // The offset terms in the four-row and rows kernels' order of operations, so that every kernel gives a
        // row the same bits.
        let ysum = y.d * y.sum as f32;
        if t == BlockType::Q4_0 {
            offset -= 8.0 * d * ysum;
        } else if t == BlockType::Q5_0 {
            offset -= 16.0 * d * ysum;
        } else {
            offset += f16_to_f32(b.add(2)) * ysum;
        }
    }
    hsum(acc) + offset
}

/// Q8_0 row · Q8 activations (signed × signed through the sign trick).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q8(row: &[u8], x: &[BlockQ8]) -> f32 {
    let bb = BlockType::Q8_0.block_bytes();
    debug_assert!(row.len() >= x.len() * bb);
    let ones = _mm256_set1_epi16(1);
    let mut acc = _mm256_setzero_ps();
    let base = row.as_ptr();
    for (i, y) in x.iter().enumerate() {
        let b = base.add(i * bb);
        let w = _mm256_loadu_si256(b.add(2) as *const __m256i);
        let yv = _mm256_loadu_si256(y.qs.as_ptr() as *const __m256i);
        let p32 = _mm256_madd_epi16(
            _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(yv, w)),
            ones,
        );
        acc = _mm256_fmadd_ps(_mm256_set1_ps(f16_to_f32(b) * y.d), _mm256_cvtepi32_ps(p32), acc);
    }
    hsum(acc)
}

/// Block-type codes for the const-generic kernels (one compiled loop per type, no branch inside).
pub(super) const Q4_0: u8 = 0;
pub(super) const Q4_1: u8 = 1;
pub(super) const Q8_0: u8 = 2;
pub(super) const Q5_0: u8 = 3;

/// The 32 quants of the Q4_0 / Q4_1 / Q5_0 block at `b` (type code `T`) as unsigned bytes, low nibbles first and
/// Q5_0's fifth bit added (`mask`: `0x0F` in every byte; the offset is left to the caller).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q4_quants<const T: u8>(b: *const u8, mask: __m256i) -> __m256i {
    let lo = _mm_loadu_si128(b.add(match T {
        Q4_0 => 2,
        Q4_1 => 4,
        _ => 6,
    }) as *const __m128i);
    let q = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(lo, 4), lo), mask);
    if T == Q5_0 {
        _mm256_or_si256(q, q5_high_bits(b.add(2)))
    } else {
        q
    }
}

/// Four weight rows (`rows[k]`, each the same length) dotted with the same activations: the activation block is
/// loaded once for four rows, and the four accumulators are independent chains the core can overlap.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot4_impl<const T: u8>(rows: [&[u8]; 4], x: &[BlockQ8]) -> [f32; 4] {
    let bb = match T {
        Q4_0 => 18,
        Q4_1 => 20,
        Q5_0 => 22,
        _ => 34,
    };
    for r in rows {
        debug_assert!(r.len() >= x.len() * bb);
    }
    let ones = _mm256_set1_epi16(1);
    let mask = _mm256_set1_epi8(0x0F);
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut offset = [0f32; 4];
    let ptrs = rows.map(|r| r.as_ptr());
    for (i, y) in x.iter().enumerate() {
        let yv = _mm256_loadu_si256(y.qs.as_ptr() as *const __m256i);
        let ysum = y.d * y.sum as f32;
        for k in 0..4 {
            let b = ptrs[k].add(i * bb);
            // d (and m for Q4_1) in one conversion: lanes 0 and 1.
            let scales = _mm_cvtph_ps(_mm_cvtsi32_si128(std::ptr::read_unaligned(b as *const i32)));
            let d = _mm_cvtss_f32(scales);
            let p32 = if T == Q8_0 {
                let w = _mm256_loadu_si256(b.add(2) as *const __m256i);
                _mm256_madd_epi16(
                    _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(yv, w)),
                    ones,
                )
            } else {
                _mm256_madd_epi16(_mm256_maddubs_epi16(q4_quants::<T>(b, mask), yv), ones)
            };
            acc[k] = _mm256_fmadd_ps(_mm256_set1_ps(d * y.d), _mm256_cvtepi32_ps(p32), acc[k]);
            if T == Q4_0 {
                offset[k] -= 8.0 * d * ysum;
            } else if T == Q5_0 {
                offset[k] -= 16.0 * d * ysum;
            } else if T == Q4_1 {
                offset[k] += _mm_cvtss_f32(_mm_movehdup_ps(scales)) * ysum;
            }
        }
    }
    [
        hsum(acc[0]) + offset[0],
        hsum(acc[1]) + offset[1],
        hsum(acc[2]) + offset[2],
        hsum(acc[3]) + offset[3],
    ]
}

/// Four weight rows with the same activations, dispatched on the block type.
///
/// # Panics
/// When `x` is not the activation type of `t` (see [`super::blocks::dot_scalar`]).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot4(t: BlockType, rows: [&[u8]; 4], x: Acts) -> [f32; 4] {
    match (t, x) {
        (BlockType::Q4_0, Acts::Q8(x)) => dot4_impl::<Q4_0>(rows, x),
        (BlockType::Q4_1, Acts::Q8(x)) => dot4_impl::<Q4_1>(rows, x),
        (BlockType::Q5_0, Acts::Q8(x)) => dot4_impl::<Q5_0>(rows, x),
        (BlockType::Q8_0, Acts::Q8(x)) => dot4_impl::<Q8_0>(rows, x),
        (_, Acts::Q8K(x)) if t.is_k_quant() => super::avx2_k::dot4(t, rows, x),
        _ => panic!("{t:?} weights with activations quantized for another block type"),
    }
}

/// Dispatch on the block type.
///
/// # Panics
/// When `x` is not the activation type of `t` (see [`super::blocks::dot_scalar`]).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot(t: BlockType, row: &[u8], x: Acts) -> f32 {
    match (t, x) {
        (BlockType::Q8_0, Acts::Q8(x)) => dot_q8(row, x),
        (BlockType::Q4_0 | BlockType::Q4_1 | BlockType::Q5_0, Acts::Q8(x)) => dot_q4(t, row, x),
        (_, Acts::Q8K(x)) if t.is_k_quant() => super::avx2_k::dot(t, row, x),
        _ => panic!("{t:?} weights with activations quantized for another block type"),
    }
}
