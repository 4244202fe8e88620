//! AVX2 + FMA + F16C dot products of K-quant weight rows (Q4_K, Q5_K, Q6_K) with Q8_K activations, after ggml's
//! `ggml_vec_dot_q{4,5,6}_K_q8_K`: the unsigned 4/5/6-bit values times the activation bytes with `maddubs`, times
//! the integer sub-block scales with `madd`, summed in i32 over a super-block and scaled once by `d · d_y`; the
//! mins (Q4_K, Q5_K) and the −32 offset (Q6_K) come from the activations' 16-value sums. Only called after runtime
//! detection (see [`super::dot_fn`]).

#![allow(clippy::missing_safety_doc)]

use super::avx2::{f16_to_f32, hsum};
use super::blocks::BlockType;
use super::kquants::{scale_min_k4, BlockQ8K};
use std::arch::x86_64::*;

/// `Σ sc · q · y` in i32 lanes over 32 weights: `q` unsigned bytes (< 64), `y` 32 activation bytes, `sc` the
/// 16-bit scale of each pair of bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn mul_scaled(q: __m256i, y: *const i8, sc: __m256i) -> __m256i {
    let yv = _mm256_loadu_si256(y as *const __m256i);
    _mm256_madd_epi16(_mm256_maddubs_epi16(q, yv), sc)
}

/// One Q4_K (`five = false`) or Q5_K super-block at `b` · `y`: the scaled sums `Σ sc · q · y` (i32 lanes) and
/// `Σ m · Σy` over the eight sub-blocks. (`five` is a constant where this is inlined.)
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q45k_block(five: bool, b: *const u8, y: &BlockQ8K) -> (__m256i, i32) {
    let scales = std::slice::from_raw_parts(b.add(4), 12);
    let qs = b.add(if five { 48 } else { 16 });
    let mask = _mm256_set1_epi8(0x0F);
    let one = _mm256_set1_epi8(1);
    let hbits = if five {
        _mm256_loadu_si256(b.add(16) as *const __m256i)
    } else {
        _mm256_setzero_si256()
    };
    let mut sumi = _mm256_setzero_si256();
    let mut summ = 0i32;
    for i in 0..4 {
        let (sc0, m0) = scale_min_k4(2 * i, scales);
        let (sc1, m1) = scale_min_k4(2 * i + 1, scales);
        let bs = &y.bsums[4 * i..4 * i + 4];
        summ += m0 as i32 * (bs[0] as i32 + bs[1] as i32) + m1 as i32 * (bs[2] as i32 + bs[3] as i32);
        let bits = _mm256_loadu_si256(qs.add(32 * i) as *const __m256i);
        let mut lo = _mm256_and_si256(bits, mask);
        let mut hi = _mm256_and_si256(_mm256_srli_epi16(bits, 4), mask);
        if five {
            // Bit 2i (low nibbles) and 2i + 1 (high nibbles) of each qh byte, moved to bit 4.
            let h_lo = _mm256_and_si256(_mm256_srl_epi16(hbits, _mm_cvtsi32_si128(2 * i as i32)), one);
            let h_hi = _mm256_and_si256(_mm256_srl_epi16(hbits, _mm_cvtsi32_si128(2 * i as i32 + 1)), one);
            lo = _mm256_or_si256(lo, _mm256_slli_epi16(h_lo, 4));
            hi = _mm256_or_si256(hi, _mm256_slli_epi16(h_hi, 4));
        }
        let yq = y.qs.as_ptr().add(64 * i);
        sumi = _mm256_add_epi32(sumi, mul_scaled(lo, yq, _mm256_set1_epi16(sc0 as i16)));
        sumi = _mm256_add_epi32(sumi, mul_scaled(hi, yq.add(32), _mm256_set1_epi16(sc1 as i16)));
    }
    (sumi, summ)
}

/// The two low bits of each byte of `h` moved to bits 4–5.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn high2(h: __m256i, three: __m256i) -> __m256i {
    _mm256_slli_epi16(_mm256_and_si256(h, three), 4)
}

/// The 128 six-bit quants of half `n` (0 or 1) of the Q6_K super-block at `b`, as four vectors of 32 unsigned
/// bytes (weights `128n + 32k..`, `k` = 0..4; the −32 offset is left to the caller).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q6k_quants(b: *const u8, n: usize) -> [__m256i; 4] {
    let mask = _mm256_set1_epi8(0x0F);
    let three = _mm256_set1_epi8(3);
    let hbits = _mm256_loadu_si256(b.add(128 + 32 * n) as *const __m256i);
    let l0 = _mm256_loadu_si256(b.add(64 * n) as *const __m256i);
    let l1 = _mm256_loadu_si256(b.add(64 * n + 32) as *const __m256i);
    [
        _mm256_or_si256(_mm256_and_si256(l0, mask), high2(hbits, three)),
        _mm256_or_si256(_mm256_and_si256(l1, mask), high2(_mm256_srli_epi16(hbits, 2), three)),
        _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi16(l0, 4), mask),
            high2(_mm256_srli_epi16(hbits, 4), three),
        ),
        _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi16(l1, 4), mask),
            high2(_mm256_srli_epi16(hbits, 6), three),
        ),
    ]
}

/// One Q6_K super-block at `b` · `y`: `Σ sc · (q − 32) · y` in i32 lanes (the offset folded into lane 0).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6k_block(b: *const u8, y: &BlockQ8K) -> __m256i {
    let sc = std::slice::from_raw_parts(b.add(192) as *const i8, 16);
    let mut sumi = _mm256_setzero_si256();
    for n in 0..2 {
        let q = q6k_quants(b, n);
        for (k, &q) in q.iter().enumerate() {
            // Weights 128n + 32k.. take scales 8n + 2k (first 16) and 8n + 2k + 1 (next 16).
            let s = 8 * n + 2 * k;
            let scv = _mm256_set_m128i(_mm_set1_epi16(sc[s + 1] as i16), _mm_set1_epi16(sc[s] as i16));
            sumi = _mm256_add_epi32(sumi, mul_scaled(q, y.qs.as_ptr().add(128 * n + 32 * k), scv));
        }
    }
    let offset: i32 = sc.iter().zip(&y.bsums).map(|(&s, &b)| s as i32 * b as i32).sum();
    _mm256_sub_epi32(sumi, _mm256_setr_epi32(32 * offset, 0, 0, 0, 0, 0, 0, 0))
}

/// Super-block `b` · `y` added into `acc` (lanes scaled by `d · d_y`) and `corr` (the mins' term).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn block_into<const T: u8>(b: *const u8, y: &BlockQ8K, acc: &mut __m256, corr: &mut f32) {
    if T == Q6K {
        let d = f16_to_f32(b.add(208)) * y.d;
        *acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(q6k_block(b, y)), *acc);
    } else {
        let (sumi, summ) = q45k_block(T == Q5K, b, y);
        *acc = _mm256_fmadd_ps(_mm256_set1_ps(f16_to_f32(b) * y.d), _mm256_cvtepi32_ps(sumi), *acc);
        *corr -= f16_to_f32(b.add(2)) * y.d * summ as f32;
    }
}

const Q4K: u8 = 0;
const Q5K: u8 = 1;
const Q6K: u8 = 2;

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_impl<const T: u8>(row: &[u8], x: &[BlockQ8K], bb: usize) -> f32 {
    debug_assert!(row.len() >= x.len() * bb);
    let (mut acc, mut corr) = (_mm256_setzero_ps(), 0f32);
    for (i, y) in x.iter().enumerate() {
        block_into::<T>(row.as_ptr().add(i * bb), y, &mut acc, &mut corr);
    }
    hsum(acc) + corr
}

/// Four rows: each activation super-block is read once from memory for four weight rows, and the four
/// accumulators are independent chains.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot4_impl<const T: u8>(rows: [&[u8]; 4], x: &[BlockQ8K], bb: usize) -> [f32; 4] {
    for r in rows {
        debug_assert!(r.len() >= x.len() * bb);
    }
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut corr = [0f32; 4];
    let ptrs = rows.map(|r| r.as_ptr());
    for (i, y) in x.iter().enumerate() {
        for k in 0..4 {
            block_into::<T>(ptrs[k].add(i * bb), y, &mut acc[k], &mut corr[k]);
        }
    }
    [
        hsum(acc[0]) + corr[0],
        hsum(acc[1]) + corr[1],
        hsum(acc[2]) + corr[2],
        hsum(acc[3]) + corr[3],
    ]
}

/// A K-quant row · Q8_K activations. `t` must be a K-quant.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot(t: BlockType, row: &[u8], x: &[BlockQ8K]) -> f32 {
    let bb = t.block_bytes();
    match t {
        BlockType::Q4K => dot_impl::<Q4K>(row, x, bb),
        BlockType::Q5K => dot_impl::<Q5K>(row, x, bb),
        BlockType::Q6K => dot_impl::<Q6K>(row, x, bb),
        other => unreachable!("{other:?} is not a K-quant"),
    }
}

/// Four K-quant rows · the same Q8_K activations. `t` must be a K-quant.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot4(t: BlockType, rows: [&[u8]; 4], x: &[BlockQ8K]) -> [f32; 4] {
    let bb = t.block_bytes();
    match t {
        BlockType::Q4K => dot4_impl::<Q4K>(rows, x, bb),
        BlockType::Q5K => dot4_impl::<Q5K>(rows, x, bb),
        BlockType::Q6K => dot4_impl::<Q6K>(rows, x, bb),
        other => unreachable!("{other:?} is not a K-quant"),
    }
}
