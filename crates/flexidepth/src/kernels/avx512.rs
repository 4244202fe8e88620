//! AVX-512 (F, BW, VL, VNNI) one-row kernels for the 32-weight blocks (Q4_0, Q4_1, Q5_0, Q8_0): one activation row
//! against several weight rows, two rows per 512-bit register and four such pairs per pass (eight weight rows), the
//! byte products of a block in one `vpdpbusd`. The activations come rearranged by [`super::wide::WideActs`].
//!
//! Each weight row gets, bit for bit, what the AVX2 kernels (`avx2.rs`) give it: a pair's register holds in each
//! lane the i32 sum the AVX2 kernel holds in the same lane for that row (exact integer sums of the same four
//! weights), the scale `d · d_y` is the same f32 product, each lane is accumulated by the same `fma` chain block
//! after block, the lanes are summed in `hsum`'s order, and the offset terms are accumulated as the AVX2 kernels do
//! (`offset − (8d)·(d_y Σy)` etc., multiply then add). The tests (`tests.rs`) check this. Only called after runtime
//! detection (see [`super::wide_fn`]).

#![allow(clippy::missing_safety_doc)]

use super::avx2::{Q4_0, Q4_1, Q5_0, Q8_0};
use super::blocks::BlockType;
use super::wide::WideActs;
use std::arch::x86_64::*;
use std::ptr::read_unaligned;

/// Pairs of weight rows per pass (eight rows: four accumulators, each activation block loaded once for all).
pub(super) const PAIRS: usize = 4;

/// The 64 bytes of one block of two weight rows `p0`, `p1` (type code `T`), in the order of
/// [`super::wide`]: 4-bit types `[r0 lo, r1 lo, r0 hi, r1 hi]` as unsigned values (Q5_0 with its fifth bit, the
/// offsets left to the caller); Q8_0 `[r0, r1]` as `w + 128`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn pair_bytes<const T: u8>(p0: *const u8, p1: *const u8, mask: __m512i) -> __m512i {
    if T == Q8_0 {
        let w0 = _mm256_loadu_si256(p0.add(2) as *const __m256i);
        let w1 = _mm256_loadu_si256(p1.add(2) as *const __m256i);
        let w = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(w0), w1);
        return _mm512_xor_si512(w, _mm512_set1_epi8(-128));
    }
    let at = match T {
        Q4_0 => 2,
        Q4_1 => 4,
        _ => 6,
    };
    let lo = _mm_loadu_si128(p0.add(at) as *const __m128i);
    let both = _mm256_inserti128_si256::<1>(
        _mm256_castsi128_si256(lo),
        _mm_loadu_si128(p1.add(at) as *const __m128i),
    );
    let q = _mm512_and_si512(
        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(both), _mm256_srli_epi16::<4>(both)),
        mask,
    );
    if T == Q5_0 {
        // Bit j of qh is weight j's fifth bit: weights 0..16 of both rows first, then 16..32.
        let h0 = read_unaligned(p0.add(2) as *const u32) as u64;
        let h1 = read_unaligned(p1.add(2) as *const u32) as u64;
        let k = (h0 & 0xFFFF) | (h1 & 0xFFFF) << 16 | (h0 >> 16) << 32 | (h1 >> 16) << 48;
        _mm512_mask_add_epi8(q, k, q, _mm512_set1_epi8(0x10))
    } else {
        q
    }
}

/// Lane 0 and lane 4 of `s` (two rows' `[a0, a1, a2, a3]`) summed as `hsum` sums its four lanes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn hsum_halves(s: __m256) -> [f32; 2] {
    let t = _mm256_add_ps(s, _mm256_permute_ps::<0b11_10_11_10>(s));
    let u = _mm256_add_ps(t, _mm256_movehdup_ps(t));
    let mut out = [0f32; 8];
    _mm256_storeu_ps(out.as_mut_ptr(), u);
    [out[0], out[4]]
}

/// The two rows' sums of a pair's accumulator, each as `avx2::hsum` sums that row's eight lanes: `[r0 lanes 0..8,
/// r1 lanes 0..8]` when `halves` (Q8_0, the K-quants), else the 4-bit types' `[r0 0..4, r1 0..4, r0 4..8, r1 4..8]`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn hsum_pair(halves: bool, acc: __m512) -> [f32; 2] {
    // Into [r0 lanes 0..4, r1 lanes 0..4, r0 lanes 4..8, r1 lanes 4..8].
    let a = if halves {
        _mm512_shuffle_f32x4::<0b11_01_10_00>(acc, acc)
    } else {
        acc
    };
    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(a)));
    hsum_halves(_mm256_add_ps(_mm512_castps512_ps256(a), hi))
}

/// `P` pairs of weight rows (pointers to their first block) · the activations: each row's dot product.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn pairs<const T: u8, const P: usize>(rows: [[*const u8; 2]; P], x: &WideActs, bb: usize) -> [[f32; 2]; P] {
    let mask = _mm512_set1_epi8(0x0F);
    // Lane i of a pair's scale vector: the scale of the row whose bytes sit in lane i (see `pair_bytes`).
    let idx = if T == Q8_0 {
        _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2)
    } else {
        _mm512_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2, 0, 0, 0, 0, 2, 2, 2, 2)
    };
    let mut acc = [_mm512_setzero_ps(); P];
    let mut offset = [_mm_setzero_ps(); P];
    for i in 0..x.blocks() {
        let y = _mm512_load_si512(x.ys.as_ptr().add(i) as *const _);
        let start = if T == Q8_0 {
            _mm512_load_si512(x.q8_start.as_ptr().add(i) as *const _)
        } else {
            _mm512_setzero_si512()
        };
        let yd = _mm_set1_ps(*x.d.get_unchecked(i));
        let ysum = _mm_set1_ps(*x.dsum.get_unchecked(i));
        for p in 0..P {
            let (p0, p1) = (rows[p][0].add(i * bb), rows[p][1].add(i * bb));
            // [d0, m0, d1, m1]: both rows' f16 scales (m only in Q4_1; other lanes unused).
            let hdr = _mm_insert_epi32::<1>(
                _mm_cvtsi32_si128(read_unaligned(p0 as *const i32)),
                read_unaligned(p1 as *const i32),
            );
            let h = _mm_cvtph_ps(hdr);
            let scale = _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(_mm_mul_ps(h, yd)));
            let prod = _mm512_dpbusd_epi32(start, pair_bytes::<T>(p0, p1, mask), y);
            acc[p] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(prod), acc[p]);
            if T == Q4_0 {
                offset[p] = _mm_sub_ps(offset[p], _mm_mul_ps(_mm_mul_ps(_mm_set1_ps(8.0), h), ysum));
            } else if T == Q5_0 {
                offset[p] = _mm_sub_ps(offset[p], _mm_mul_ps(_mm_mul_ps(_mm_set1_ps(16.0), h), ysum));
            } else if T == Q4_1 {
                offset[p] = _mm_add_ps(offset[p], _mm_mul_ps(h, ysum));
            }
        }
    }
    let mut out = [[0f32; 2]; P];
    for p in 0..P {
        let s = hsum_pair(T == Q8_0, acc[p]);
        let mut o = [0f32; 4];
        _mm_storeu_ps(o.as_mut_ptr(), offset[p]);
        out[p] = match T {
            // Q8_0 has no offset term (and `x + 0.0` would turn a −0.0 into +0.0).
            Q8_0 => s,
            Q4_1 => [s[0] + o[1], s[1] + o[3]],
            _ => [s[0] + o[0], s[1] + o[2]],
        };
    }
    out
}

/// Weight rows `first..first + out.len()` (rows of `row_bytes` in `data`) · `x`, eight rows per pass, then pairs
/// (an odd last row paired with itself).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn range_impl<const T: u8>(data: &[u8], row_bytes: usize, first: usize, x: &WideActs, out: &mut [f32]) {
    let bb = match T {
        Q4_0 => 18,
        Q4_1 => 20,
        Q5_0 => 22,
        _ => 34,
    };
    assert!(x.blocks() * bb == row_bytes && (first + out.len()) * row_bytes <= data.len());
    let base = data.as_ptr().add(first * row_bytes);
    let n = out.len();
    let mut r = 0;
    while r + 2 * PAIRS <= n {
        let rows = std::array::from_fn(|p| [base.add((r + 2 * p) * row_bytes), base.add((r + 2 * p + 1) * row_bytes)]);
        let v = pairs::<T, PAIRS>(rows, x, bb);
        for (p, v) in v.iter().enumerate() {
            out[r + 2 * p..r + 2 * p + 2].copy_from_slice(v);
        }
        r += 2 * PAIRS;
    }
    while r < n {
        let second = (r + 1).min(n - 1);
        let [v] = pairs::<T, 1>([[base.add(r * row_bytes), base.add(second * row_bytes)]], x, bb);
        out[r] = v[0];
        if second > r {
            out[second] = v[1];
        }
        r += 2;
    }
}

/// Weight rows `first..first + out.len()` of a matrix (`data`, rows of `row_bytes`) · one row of activations laid
/// out for `t`, into `out` (the K-quants in `avx512_k.rs`).
///
/// # Panics
/// When `x` was laid out for another block type or row length, or the rows lie outside `data`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn dot_range(t: BlockType, data: &[u8], row_bytes: usize, first: usize, x: &WideActs, out: &mut [f32]) {
    assert_eq!(x.block_type, t, "activations laid out for another block type");
    match t {
        BlockType::Q4_0 => range_impl::<Q4_0>(data, row_bytes, first, x, out),
        BlockType::Q4_1 => range_impl::<Q4_1>(data, row_bytes, first, x, out),
        BlockType::Q5_0 => range_impl::<Q5_0>(data, row_bytes, first, x, out),
        BlockType::Q8_0 => range_impl::<Q8_0>(data, row_bytes, first, x, out),
        _ => super::avx512_k::dot_range(t, data, row_bytes, first, x, out),
    }
}
