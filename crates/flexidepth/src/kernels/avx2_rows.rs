//! AVX2 + FMA + F16C rows kernels (see [`super::rows`]): one weight row against a tile of up to eight activation
//! rows, the weight block unpacked once per tile. Each row's float operations are those of the one- and four-row
//! kernels (`avx2.rs`, `avx2_k.rs`), in their order, so a row gets the same bits in a tile as alone; the block's
//! integer sums are exact whatever their order. A second set, for CPUs with AVX-512 VNNI, takes the 32-weight
//! blocks' byte products in one `vpdpbusd` (the same exact i32 sums, on ymm registers). Only called after runtime
//! detection (see [`super::dot_rows_fn`]).

#![allow(clippy::missing_safety_doc)]

use super::avx2::{f16_to_f32, hsum, q4_quants};
use super::avx2_k::{mul_scaled, q6k_quants};
use super::blocks::{Acts, BlockQ8, BlockType};
use super::kquants::{scale_min_k4, BlockQ8K};
use super::rows::{ActTile, MAX_TILE};
use std::arch::x86_64::*;

/// Block-type codes for the const-generic kernels (the 32-weight ones shared with the one-row kernels).
use super::avx2::{Q4_0, Q4_1, Q5_0, Q8_0};
const Q4K: u8 = 4;
const Q5K: u8 = 5;
const Q6K: u8 = 6;

/// Lane `j` of `v` for each row of a tile, as scalars (broadcast from memory by the kernels' `set1`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn lanes(v: __m256) -> [f32; MAX_TILE] {
    let mut out = [0f32; MAX_TILE];
    _mm256_storeu_ps(out.as_mut_ptr(), v);
    out
}

/// `Σ q·y` over each 4 bytes into i32 lanes, `q` unsigned and `y` signed bytes: `maddubs` (pairs, in i16) then
/// `madd` by ones. No pair saturates for our values (at most 2 · 128 · 127 < 2¹⁵), so this is the exact sum.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn udot_avx2(q: __m256i, y: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(q, y), _mm256_set1_epi16(1))
}

/// The same exact sums in one VNNI instruction (`vpdpbusd`): the same i32 lanes as [`udot_avx2`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
unsafe fn udot_vnni(q: __m256i, y: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(_mm256_setzero_si256(), q, y)
}

/// One Q4_K (`five = false`) or Q5_K super-block at `b` · each row's block `ys[j]`: per row the scaled sums
/// `Σ sc · q · y` (i32 lanes) and `Σ m · Σy`, as `avx2_k`'s one-row block.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q45k_block_rows<const M: usize>(five: bool, b: *const u8, ys: [&BlockQ8K; M]) -> ([__m256i; M], [i32; M]) {
    let scales = std::slice::from_raw_parts(b.add(4), 12);
    let qs = b.add(if five { 48 } else { 16 });
    let mask = _mm256_set1_epi8(0x0F);
    let one = _mm256_set1_epi8(1);
    let hbits = if five {
        _mm256_loadu_si256(b.add(16) as *const __m256i)
    } else {
        _mm256_setzero_si256()
    };
    let mut sumi = [_mm256_setzero_si256(); M];
    let mut summ = [0i32; M];
    for i in 0..4 {
        let (sc0, m0) = scale_min_k4(2 * i, scales);
        let (sc1, m1) = scale_min_k4(2 * i + 1, scales);
        for j in 0..M {
            let bs = &ys[j].bsums[4 * i..4 * i + 4];
            summ[j] += m0 as i32 * (bs[0] as i32 + bs[1] as i32) + m1 as i32 * (bs[2] as i32 + bs[3] as i32);
        }
        let bits = _mm256_loadu_si256(qs.add(32 * i) as *const __m256i);
        let mut lo = _mm256_and_si256(bits, mask);
        let mut hi = _mm256_and_si256(_mm256_srli_epi16(bits, 4), mask);
        if five {
            let h_lo = _mm256_and_si256(_mm256_srl_epi16(hbits, _mm_cvtsi32_si128(2 * i as i32)), one);
            let h_hi = _mm256_and_si256(_mm256_srl_epi16(hbits, _mm_cvtsi32_si128(2 * i as i32 + 1)), one);
            lo = _mm256_or_si256(lo, _mm256_slli_epi16(h_lo, 4));
            hi = _mm256_or_si256(hi, _mm256_slli_epi16(h_hi, 4));
        }
        let (s0, s1) = (_mm256_set1_epi16(sc0 as i16), _mm256_set1_epi16(sc1 as i16));
        for j in 0..M {
            let yq = ys[j].qs.as_ptr().add(64 * i);
            sumi[j] = _mm256_add_epi32(sumi[j], mul_scaled(lo, yq, s0));
            sumi[j] = _mm256_add_epi32(sumi[j], mul_scaled(hi, yq.add(32), s1));
        }
    }
    (sumi, summ)
}

/// One Q6_K super-block at `b` · each row's block: `Σ sc · (q − 32) · y` in i32 lanes (the offset in lane 0).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6k_block_rows<const M: usize>(b: *const u8, ys: [&BlockQ8K; M]) -> [__m256i; M] {
    let sc = std::slice::from_raw_parts(b.add(192) as *const i8, 16);
    let mut sumi = [_mm256_setzero_si256(); M];
    for n in 0..2 {
        let q = q6k_quants(b, n);
        for (k, &q) in q.iter().enumerate() {
            let s = 8 * n + 2 * k;
            let scv = _mm256_set_m128i(_mm_set1_epi16(sc[s + 1] as i16), _mm_set1_epi16(sc[s] as i16));
            for j in 0..M {
                let y = ys[j].qs.as_ptr().add(128 * n + 32 * k);
                sumi[j] = _mm256_add_epi32(sumi[j], mul_scaled(q, y, scv));
            }
        }
    }
    for j in 0..M {
        let offset: i32 = sc.iter().zip(&ys[j].bsums).map(|(&s, &b)| s as i32 * b as i32).sum();
        sumi[j] = _mm256_sub_epi32(sumi[j], _mm256_setr_epi32(32 * offset, 0, 0, 0, 0, 0, 0, 0));
    }
    sumi
}

/// A K-quant row · `M` rows of Q8_K activations.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn k_rows<const T: u8, const M: usize>(row: &[u8], x: [&[BlockQ8K]; M], tile: &ActTile, out: &mut [f32]) {
    let bb = match T {
        Q4K => 144,
        Q5K => 176,
        _ => 210,
    };
    let nb = tile.d.len();
    assert!(row.len() >= nb * bb && out.len() >= M && x.iter().all(|x| x.len() >= nb));
    let mut acc = [_mm256_setzero_ps(); M];
    let mut corr = _mm256_setzero_ps();
    for (i, yd) in tile.d.iter().enumerate() {
        let b = row.as_ptr().add(i * bb);
        let yd = _mm256_loadu_ps(yd.as_ptr());
        let ys: [&BlockQ8K; M] = std::array::from_fn(|j| &x[j][i]);
        if T == Q6K {
            let dy = lanes(_mm256_mul_ps(_mm256_set1_ps(f16_to_f32(b.add(208))), yd));
            let sumi = q6k_block_rows(b, ys);
            for j in 0..M {
                acc[j] = _mm256_fmadd_ps(_mm256_set1_ps(dy[j]), _mm256_cvtepi32_ps(sumi[j]), acc[j]);
            }
        } else {
            let (sumi, summ) = q45k_block_rows(T == Q5K, b, ys);
            let dy = lanes(_mm256_mul_ps(_mm256_set1_ps(f16_to_f32(b)), yd));
            for j in 0..M {
                acc[j] = _mm256_fmadd_ps(_mm256_set1_ps(dy[j]), _mm256_cvtepi32_ps(sumi[j]), acc[j]);
            }
            let mut sm = [0i32; MAX_TILE];
            sm[..M].copy_from_slice(&summ);
            let mins = _mm256_mul_ps(_mm256_set1_ps(f16_to_f32(b.add(2))), yd);
            let sm = _mm256_cvtepi32_ps(_mm256_loadu_si256(sm.as_ptr() as *const __m256i));
            corr = _mm256_sub_ps(corr, _mm256_mul_ps(mins, sm));
        }
    }
    let corr = lanes(corr);
    for j in 0..M {
        out[j] = hsum(acc[j]) + corr[j];
    }
}

/// The tile's rows as Q8 (`Some`) or Q8_K (`None` there) slices.
fn q8_rows<'a, const M: usize>(tile: &ActTile<'a>) -> Option<[&'a [BlockQ8]; M]> {
    let mut out: [&[BlockQ8]; M] = [&[]; M];
    for (o, r) in out.iter_mut().zip(&tile.rows) {
        match r {
            Acts::Q8(x) => *o = x,
            Acts::Q8K(_) => return None,
        }
    }
    Some(out)
}

fn q8k_rows<'a, const M: usize>(tile: &ActTile<'a>) -> Option<[&'a [BlockQ8K]; M]> {
    let mut out: [&[BlockQ8K]; M] = [&[]; M];
    for (o, r) in out.iter_mut().zip(&tile.rows) {
        match r {
            Acts::Q8K(x) => *o = x,
            Acts::Q8(_) => return None,
        }
    }
    Some(out)
}

fn wrong_acts(t: BlockType) -> ! {
    panic!("{t:?} weights with activations quantized for another block type")
}

/// The rows kernels of one instruction set: `$features`, with `$udot` for the byte products of the 32-weight
/// blocks (the K-quants' scaled products stay on `madd`).
macro_rules! rows_kernels {
    ($features:literal, $udot:ident, $q32_rows:ident, $rows_m:ident, $dot_rows:ident) => {
        /// A row of 32-weight blocks · `M` rows of Q8 activations.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn $q32_rows<const T: u8, const M: usize>(
            row: &[u8],
            x: [&[BlockQ8]; M],
            tile: &ActTile,
            out: &mut [f32],
        ) {
            let bb = match T {
                Q4_0 => 18,
                Q4_1 => 20,
                Q5_0 => 22,
                _ => 34,
            };
            let nb = tile.d.len();
            assert!(row.len() >= nb * bb && out.len() >= M && x.iter().all(|x| x.len() >= nb));
            let mask = _mm256_set1_epi8(0x0F);
            let mut acc = [_mm256_setzero_ps(); M];
            let mut offset = _mm256_setzero_ps();
            let base = row.as_ptr();
            for i in 0..nb {
                let b = base.add(i * bb);
                // d (and m for Q4_1) in one conversion: lanes 0 and 1.
                let scales = _mm_cvtph_ps(_mm_cvtsi32_si128(std::ptr::read_unaligned(b as *const i32)));
                let d = _mm_cvtss_f32(scales);
                // Lane j: d · d_j, the scale of row j's block product.
                let dy = lanes(_mm256_mul_ps(
                    _mm256_set1_ps(d),
                    _mm256_loadu_ps(tile.d[i].as_ptr()),
                ));
                let ysum = _mm256_loadu_ps(tile.dsum[i].as_ptr());
                if T == Q4_0 {
                    offset = _mm256_sub_ps(offset, _mm256_mul_ps(_mm256_set1_ps(8.0 * d), ysum));
                } else if T == Q5_0 {
                    offset = _mm256_sub_ps(offset, _mm256_mul_ps(_mm256_set1_ps(16.0 * d), ysum));
                } else if T == Q4_1 {
                    let m = _mm_cvtss_f32(_mm_movehdup_ps(scales));
                    offset = _mm256_add_ps(offset, _mm256_mul_ps(_mm256_set1_ps(m), ysum));
                }
                if T == Q8_0 {
                    let w = _mm256_loadu_si256(b.add(2) as *const __m256i);
                    let wabs = _mm256_sign_epi8(w, w);
                    for j in 0..M {
                        let yv = _mm256_loadu_si256(x[j].get_unchecked(i).qs.as_ptr() as *const __m256i);
                        let p32 = $udot(wabs, _mm256_sign_epi8(yv, w));
                        acc[j] = _mm256_fmadd_ps(_mm256_set1_ps(dy[j]), _mm256_cvtepi32_ps(p32), acc[j]);
                    }
                } else {
                    let q = q4_quants::<T>(b, mask);
                    for j in 0..M {
                        let yv = _mm256_loadu_si256(x[j].get_unchecked(i).qs.as_ptr() as *const __m256i);
                        let p32 = $udot(q, yv);
                        acc[j] = _mm256_fmadd_ps(_mm256_set1_ps(dy[j]), _mm256_cvtepi32_ps(p32), acc[j]);
                    }
                }
            }
            let offset = lanes(offset);
            for j in 0..M {
                // Q8_0 has no offset term (and `x + 0.0` would turn a −0.0 into +0.0).
                out[j] = if T == Q8_0 {
                    hsum(acc[j])
                } else {
                    hsum(acc[j]) + offset[j]
                };
            }
        }

        /// `M` rows, dispatched on the block type.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn $rows_m<const M: usize>(t: BlockType, row: &[u8], tile: &ActTile, out: &mut [f32]) {
            if t.is_k_quant() {
                let x = q8k_rows::<M>(tile).unwrap_or_else(|| wrong_acts(t));
                match t {
                    BlockType::Q4K => k_rows::<Q4K, M>(row, x, tile, out),
                    BlockType::Q5K => k_rows::<Q5K, M>(row, x, tile, out),
                    _ => k_rows::<Q6K, M>(row, x, tile, out),
                }
            } else {
                let x = q8_rows::<M>(tile).unwrap_or_else(|| wrong_acts(t));
                match t {
                    BlockType::Q4_0 => $q32_rows::<Q4_0, M>(row, x, tile, out),
                    BlockType::Q4_1 => $q32_rows::<Q4_1, M>(row, x, tile, out),
                    BlockType::Q5_0 => $q32_rows::<Q5_0, M>(row, x, tile, out),
                    _ => $q32_rows::<Q8_0, M>(row, x, tile, out),
                }
            }
        }

        /// One weight row · every row of `tile`, into `out[..tile.len()]`.
        ///
        /// # Panics
        /// When the tile's activations are not the type `t` is multiplied with, or `out` is shorter than the tile.
        #[target_feature(enable = $features)]
        pub unsafe fn $dot_rows(t: BlockType, row: &[u8], tile: &ActTile, out: &mut [f32]) {
            match tile.len() {
                1 => $rows_m::<1>(t, row, tile, out),
                2 => $rows_m::<2>(t, row, tile, out),
                3 => $rows_m::<3>(t, row, tile, out),
                4 => $rows_m::<4>(t, row, tile, out),
                5 => $rows_m::<5>(t, row, tile, out),
                6 => $rows_m::<6>(t, row, tile, out),
                7 => $rows_m::<7>(t, row, tile, out),
                _ => $rows_m::<8>(t, row, tile, out),
            }
        }
    };
}

rows_kernels!("avx2,fma,f16c", udot_avx2, q32_rows_avx2, rows_m_avx2, dot_rows);
rows_kernels!(
    "avx2,fma,f16c,avx512f,avx512vl,avx512vnni",
    udot_vnni,
    q32_rows_vnni,
    rows_m_vnni,
    dot_rows_vnni
);
