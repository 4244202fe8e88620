//! AVX-512 (F, BW, VL) one-row kernels for the K-quants (Q4_K, Q5_K, Q6_K) · Q8_K activations: two weight rows per
//! 512-bit register (`[r0's 32 bytes, r1's 32 bytes]` against the same 32 activation bytes, broadcast), four pairs
//! per pass, as `avx512.rs` does for the 32-weight blocks.
//!
//! Each row's eight i32 lanes are those of `avx2_k.rs` (the same `maddubs` and `madd` by the sub-block scales, on
//! twice the width), scaled by the same `d · d_y`, accumulated by the same `fma` chain, summed in `hsum`'s order,
//! with the mins' term accumulated as there: every row gets the AVX2 kernels' bits (tested in `tests.rs`).

#![allow(clippy::missing_safety_doc)]

use super::avx512::{hsum_pair, PAIRS};
use super::blocks::BlockType;
use super::kquants::{scale_min_k4, BlockQ8K};
use super::wide::WideActs;
use std::arch::x86_64::*;
use std::ptr::read_unaligned;

const Q4K: u8 = 0;
const Q5K: u8 = 1;
const Q6K: u8 = 2;

/// The i16-lane indices that spread one scale per row over its half of a pair's register: for Q4_K / Q5_K sub-block
/// `j` (of `[r0 sc0..8, r1 sc0..8]`), and for Q6_K the scales `s`, `s + 1` of each row's two 16-weight halves (of
/// `[r0 sc0..16, r1 sc0..16]`).
struct ScaleIdx {
    k45: [__m512i; 8],
    k6: [__m512i; 16],
}

impl ScaleIdx {
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    unsafe fn new() -> Self {
        let k45 = std::array::from_fn(|j| {
            let l: [i16; 32] = std::array::from_fn(|i| (j + 8 * (i / 16)) as i16);
            _mm512_loadu_si512(l.as_ptr() as *const _)
        });
        let k6 = std::array::from_fn(|s| {
            let l: [i16; 32] = std::array::from_fn(|i| (s + (i / 8) % 2 + 16 * (i / 16)) as i16);
            _mm512_loadu_si512(l.as_ptr() as *const _)
        });
        ScaleIdx { k45, k6 }
    }
}

/// `[32 bytes at p0, 32 bytes at p1]`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn pair_load(p0: *const u8, p1: *const u8) -> __m512i {
    let lo = _mm256_loadu_si256(p0 as *const __m256i);
    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), _mm256_loadu_si256(p1 as *const __m256i))
}

/// `Σ sc · q · y` in i32 lanes: 32 activation bytes at `y` (both rows), `q` unsigned bytes (< 64), `sc` the scale of
/// each pair of bytes (`avx2_k::mul_scaled` on both rows).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn mul_scaled(q: __m512i, y: *const i8, sc: __m512i) -> __m512i {
    let yv = _mm512_broadcast_i64x4(_mm256_loadu_si256(y as *const __m256i));
    _mm512_madd_epi16(_mm512_maddubs_epi16(q, yv), sc)
}

/// One Q4_K (`five = false`) or Q5_K super-block of two rows at `b` · `y`: the scaled sums (i32 lanes, row `r` in
/// half `r`) and each row's `Σ m · Σy`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn q45k_pair(five: bool, b: [*const u8; 2], y: &BlockQ8K, idx: &ScaleIdx) -> (__m512i, [i32; 2]) {
    let mut sc = [0i16; 16];
    let mut summ = [0i32; 2];
    for (r, &b) in b.iter().enumerate() {
        let scales = std::slice::from_raw_parts(b.add(4), 12);
        for i in 0..4 {
            let (sc0, m0) = scale_min_k4(2 * i, scales);
            let (sc1, m1) = scale_min_k4(2 * i + 1, scales);
            let bs = &y.bsums[4 * i..4 * i + 4];
            summ[r] += m0 as i32 * (bs[0] as i32 + bs[1] as i32) + m1 as i32 * (bs[2] as i32 + bs[3] as i32);
            sc[8 * r + 2 * i] = sc0 as i16;
            sc[8 * r + 2 * i + 1] = sc1 as i16;
        }
    }
    let scv = _mm512_castsi256_si512(_mm256_loadu_si256(sc.as_ptr() as *const __m256i));
    let qs = if five { 48 } else { 16 };
    let mask = _mm512_set1_epi8(0x0F);
    let one = _mm512_set1_epi8(1);
    let hbits = if five {
        pair_load(b[0].add(16), b[1].add(16))
    } else {
        _mm512_setzero_si512()
    };
    let mut sumi = _mm512_setzero_si512();
    for i in 0..4 {
        let bits = pair_load(b[0].add(qs + 32 * i), b[1].add(qs + 32 * i));
        let mut lo = _mm512_and_si512(bits, mask);
        let mut hi = _mm512_and_si512(_mm512_srli_epi16::<4>(bits), mask);
        if five {
            let h_lo = _mm512_and_si512(_mm512_srl_epi16(hbits, _mm_cvtsi32_si128(2 * i as i32)), one);
            let h_hi = _mm512_and_si512(_mm512_srl_epi16(hbits, _mm_cvtsi32_si128(2 * i as i32 + 1)), one);
            lo = _mm512_or_si512(lo, _mm512_slli_epi16::<4>(h_lo));
            hi = _mm512_or_si512(hi, _mm512_slli_epi16::<4>(h_hi));
        }
        let yq = y.qs.as_ptr().add(64 * i);
        let s0 = _mm512_permutexvar_epi16(idx.k45[2 * i], scv);
        let s1 = _mm512_permutexvar_epi16(idx.k45[2 * i + 1], scv);
        sumi = _mm512_add_epi32(sumi, mul_scaled(lo, yq, s0));
        sumi = _mm512_add_epi32(sumi, mul_scaled(hi, yq.add(32), s1));
    }
    (sumi, summ)
}

/// The two low bits of each byte of `h` moved to bits 4–5.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn high2(h: __m512i) -> __m512i {
    _mm512_slli_epi16::<4>(_mm512_and_si512(h, _mm512_set1_epi8(3)))
}

/// One Q6_K super-block of two rows at `b` · `y`: `Σ sc · (q − 32) · y` in i32 lanes (row `r` in half `r`, each
/// row's offset in its first lane, as `avx2_k`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn q6k_pair(b: [*const u8; 2], y: &BlockQ8K, idx: &ScaleIdx) -> __m512i {
    let sc8 = _mm256_inserti128_si256::<1>(
        _mm256_castsi128_si256(_mm_loadu_si128(b[0].add(192) as *const __m128i)),
        _mm_loadu_si128(b[1].add(192) as *const __m128i),
    );
    let sc = _mm512_cvtepi8_epi16(sc8);
    let mask = _mm512_set1_epi8(0x0F);
    let mut sumi = _mm512_setzero_si512();
    for n in 0..2 {
        let hbits = pair_load(b[0].add(128 + 32 * n), b[1].add(128 + 32 * n));
        let l0 = pair_load(b[0].add(64 * n), b[1].add(64 * n));
        let l1 = pair_load(b[0].add(64 * n + 32), b[1].add(64 * n + 32));
        let q = [
            _mm512_or_si512(_mm512_and_si512(l0, mask), high2(hbits)),
            _mm512_or_si512(_mm512_and_si512(l1, mask), high2(_mm512_srli_epi16::<2>(hbits))),
            _mm512_or_si512(
                _mm512_and_si512(_mm512_srli_epi16::<4>(l0), mask),
                high2(_mm512_srli_epi16::<4>(hbits)),
            ),
            _mm512_or_si512(
                _mm512_and_si512(_mm512_srli_epi16::<4>(l1), mask),
                high2(_mm512_srli_epi16::<6>(hbits)),
            ),
        ];
        for (k, &q) in q.iter().enumerate() {
            let scv = _mm512_permutexvar_epi16(idx.k6[8 * n + 2 * k], sc);
            sumi = _mm512_add_epi32(sumi, mul_scaled(q, y.qs.as_ptr().add(128 * n + 32 * k), scv));
        }
    }
    let offset = |b: *const u8| -> i32 {
        let sc = std::slice::from_raw_parts(b.add(192) as *const i8, 16);
        sc.iter().zip(&y.bsums).map(|(&s, &b)| s as i32 * b as i32).sum()
    };
    let (o0, o1) = (32 * offset(b[0]), 32 * offset(b[1]));
    _mm512_sub_epi32(
        sumi,
        _mm512_setr_epi32(o0, 0, 0, 0, 0, 0, 0, 0, o1, 0, 0, 0, 0, 0, 0, 0),
    )
}

/// `P` pairs of weight rows (pointers to their first super-block) · `x`: each row's dot product.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn pairs<const T: u8, const P: usize>(
    rows: [[*const u8; 2]; P],
    x: &[BlockQ8K],
    bb: usize,
    idx: &ScaleIdx,
) -> [[f32; 2]; P] {
    // Lanes 0..8 take row 0's scale, 8..16 row 1's: lanes 0 and 2 of `[d0, dmin0, d1, dmin1]` (Q4_K, Q5_K) or
    // lanes 0 and 1 of `[d0, d1]` (Q6_K).
    let didx = if T == Q6K {
        _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1)
    } else {
        _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2)
    };
    let mut acc = [_mm512_setzero_ps(); P];
    let mut corr = [_mm_setzero_ps(); P];
    for (i, y) in x.iter().enumerate() {
        let yd = _mm_set1_ps(y.d);
        for p in 0..P {
            let b = [rows[p][0].add(i * bb), rows[p][1].add(i * bb)];
            if T == Q6K {
                let d = |b: *const u8| read_unaligned(b.add(208) as *const u16) as i32;
                let dy = _mm_mul_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(d(b[0]) | d(b[1]) << 16)), yd);
                let scale = _mm512_permutexvar_ps(didx, _mm512_castps128_ps512(dy));
                acc[p] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(q6k_pair(b, y, idx)), acc[p]);
            } else {
                let (sumi, summ) = q45k_pair(T == Q5K, b, y, idx);
                let hdr = _mm_insert_epi32::<1>(
                    _mm_cvtsi32_si128(read_unaligned(b[0] as *const i32)),
                    read_unaligned(b[1] as *const i32),
                );
                let dy = _mm_mul_ps(_mm_cvtph_ps(hdr), yd);
                let scale = _mm512_permutexvar_ps(didx, _mm512_castps128_ps512(dy));
                acc[p] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(sumi), acc[p]);
                // Lanes 1 and 3: corr − (dmin · d_y) · Σ m · Σy, as `avx2_k`.
                let sm = _mm_cvtepi32_ps(_mm_setr_epi32(0, summ[0], 0, summ[1]));
                corr[p] = _mm_sub_ps(corr[p], _mm_mul_ps(dy, sm));
            }
        }
    }
    let mut out = [[0f32; 2]; P];
    for p in 0..P {
        let s = hsum_pair(true, acc[p]);
        let mut c = [0f32; 4];
        _mm_storeu_ps(c.as_mut_ptr(), corr[p]);
        // Q6_K adds its zero correction too, as `avx2_k` does.
        out[p] = [s[0] + c[1], s[1] + c[3]];
    }
    out
}

/// Weight rows `first..first + out.len()` · `x`, eight rows per pass, then pairs (an odd last row paired with
/// itself).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn range_impl<const T: u8>(data: &[u8], row_bytes: usize, first: usize, x: &[BlockQ8K], out: &mut [f32]) {
    let bb = match T {
        Q4K => 144,
        Q5K => 176,
        _ => 210,
    };
    assert!(x.len() * bb == row_bytes && (first + out.len()) * row_bytes <= data.len());
    let idx = ScaleIdx::new();
    let base = data.as_ptr().add(first * row_bytes);
    let n = out.len();
    let mut r = 0;
    while r + 2 * PAIRS <= n {
        let rows = std::array::from_fn(|p| [base.add((r + 2 * p) * row_bytes), base.add((r + 2 * p + 1) * row_bytes)]);
        let v = pairs::<T, PAIRS>(rows, x, bb, &idx);
        for (p, v) in v.iter().enumerate() {
            out[r + 2 * p..r + 2 * p + 2].copy_from_slice(v);
        }
        r += 2 * PAIRS;
    }
    while r < n {
        let second = (r + 1).min(n - 1);
        let [v] = pairs::<T, 1>([[base.add(r * row_bytes), base.add(second * row_bytes)]], x, bb, &idx);
        out[r] = v[0];
        if second > r {
            out[second] = v[1];
        }
        r += 2;
    }
}

/// K-quant weight rows `first..first + out.len()` (rows of `row_bytes` in `data`) · the Q8_K activations of `x`.
///
/// # Panics
/// When `t` is not a K-quant, or as [`super::avx512::dot_range`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub unsafe fn dot_range(t: BlockType, data: &[u8], row_bytes: usize, first: usize, x: &WideActs, out: &mut [f32]) {
    let q = &x.q8k;
    match t {
        BlockType::Q4K => range_impl::<Q4K>(data, row_bytes, first, q, out),
        BlockType::Q5K => range_impl::<Q5K>(data, row_bytes, first, q, out),
        BlockType::Q6K => range_impl::<Q6K>(data, row_bytes, first, q, out),
        other => unreachable!("{other:?} is not a K-quant"),
    }
}
