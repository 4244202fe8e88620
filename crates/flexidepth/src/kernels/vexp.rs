//! `exp` over slices of f32, eight lanes at a time (AVX2 + FMA, chosen at runtime; `f32::exp` otherwise).
//!
//! The training step's loss takes `exp` of every logit twice per pass (the log-partition function forward, the
//! softmax in the backward): 2 × rows × 49,152 values for SmolLM2, 8% of the step in glibc's scalar `expf`
//! (perf record, 4 × 256 tokens). The method is Cephes' `expf` (Moshier), as most SIMD libraries use it:
//! `exp(x) = 2ⁿ · exp(r)`, `n = round(x / ln 2)`, `r = x − n ln 2` in two parts, `exp(r)` by a degree-7 polynomial;
//! the scale `2ⁿ` is applied as two powers of two so that results in the subnormal range and overflow to `+inf`
//! come out as IEEE arithmetic gives them. Error: within 2 ulp of the correctly rounded result for normal results
//! (tested against `f64::exp`), `exp(−inf) = 0`, `exp(+inf) = +inf`, NaN stays NaN.

/// `dst[i] = exp(src[i] − shift)`. Panics if the lengths differ (a programming error, not input).
pub fn exp_shifted(src: &[f32], shift: f32, dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "exp_shifted: slices of different lengths");
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the features were detected.
        unsafe { avx2::exp_shifted(src, shift, dst) };
        return;
    }
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = (s - shift).exp();
    }
}

/// `xs[i] = exp(xs[i] − shift)`, in place.
pub fn exp_shifted_inplace(xs: &mut [f32], shift: f32) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the features were detected.
        unsafe { avx2::exp_shifted_inplace(xs, shift) };
        return;
    }
    for v in xs.iter_mut() {
        *v = (*v - shift).exp();
    }
}

/// `Σ exp(src[i] − shift)`, summed in eight f32 lanes (then across them), or in order without AVX2.
pub fn sum_exp_shifted(src: &[f32], shift: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the features were detected.
        return unsafe { avx2::sum_exp_shifted(src, shift) };
    }
    src.iter().map(|&s| (s - shift).exp()).sum()
}

/// `log Σ exp(row)` (the log-partition function), max-shifted; `-inf` for an empty row or one of `-inf`s.
pub fn log_sum_exp(row: &[f32]) -> f32 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return f32::NEG_INFINITY;
    }
    max + sum_exp_shifted(row, max).ln()
}

#[cfg(target_arch = "x86_64")]
fn has_avx2_fma() -> bool {
    use std::sync::OnceLock;
    static F: OnceLock<bool> = OnceLock::new();
    *F.get_or_init(|| std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma"))
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    // Cephes expf: ln 2 split into a part exact in few bits and the rest, and the polynomial of exp(r) − 1 − r.
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const P: [f32; 6] = [
        1.987_569_1e-4,
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        0.166_666_65,
        0.5,
    ];
    /// Beyond these, exp is 0 / +inf in f32 (exp(−104) < half the smallest subnormal; exp(89) > f32::MAX).
    const X_MIN: f32 = -104.0;
    const X_MAX: f32 = 89.0;

    /// exp of eight lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn exp8(x: __m256) -> __m256 {
        let nan = _mm256_cmp_ps::<_CMP_UNORD_Q>(x, x);
        let xc = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(X_MIN)), _mm256_set1_ps(X_MAX));
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
            xc,
            _mm256_set1_ps(LOG2E),
        ));
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), xc);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
        let mut p = _mm256_set1_ps(P[0]);
        for &c in &P[1..] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let y = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0));
        // 2ⁿ as 2^(n/2) · 2^(n − n/2): both halves are normal numbers for n in [−150, 129].
        let ni = _mm256_cvtps_epi32(n);
        let n1 = _mm256_srai_epi32::<1>(ni);
        let n2 = _mm256_sub_epi32(ni, n1);
        let bias = _mm256_set1_epi32(127);
        let s1 = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(n1, bias)));
        let s2 = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(n2, bias)));
        let e = _mm256_mul_ps(_mm256_mul_ps(y, s1), s2);
        // Below X_MIN the product may round to the smallest subnormal; exp is 0 there.
        let e = _mm256_blendv_ps(
            e,
            _mm256_setzero_ps(),
            _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_set1_ps(X_MIN)),
        );
        _mm256_blendv_ps(e, x, nan)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp_shifted(src: &[f32], shift: f32, dst: &mut [f32]) {
        let s = _mm256_set1_ps(shift);
        let mut src_chunks = src.chunks_exact(8);
        let mut dst_chunks = dst.chunks_exact_mut(8);
        for (a, d) in (&mut src_chunks).zip(&mut dst_chunks) {
            // SAFETY: both chunks hold 8 f32s.
            unsafe { _mm256_storeu_ps(d.as_mut_ptr(), exp8(_mm256_sub_ps(_mm256_loadu_ps(a.as_ptr()), s))) };
        }
        let (a, d) = (src_chunks.remainder(), dst_chunks.into_remainder());
        let mut buf = [0f32; 8];
        buf[..a.len()].copy_from_slice(a);
        let mut out = [0f32; 8];
        // SAFETY: the buffers hold 8 f32s.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), exp8(_mm256_sub_ps(_mm256_loadu_ps(buf.as_ptr()), s))) };
        d.copy_from_slice(&out[..d.len()]);
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp_shifted_inplace(xs: &mut [f32], shift: f32) {
        let s = _mm256_set1_ps(shift);
        let mut chunks = xs.chunks_exact_mut(8);
        for c in &mut chunks {
            // SAFETY: the chunk holds 8 f32s.
            unsafe { _mm256_storeu_ps(c.as_mut_ptr(), exp8(_mm256_sub_ps(_mm256_loadu_ps(c.as_ptr()), s))) };
        }
        let rest = chunks.into_remainder();
        let mut buf = [0f32; 8];
        buf[..rest.len()].copy_from_slice(rest);
        // SAFETY: the buffer holds 8 f32s.
        unsafe { _mm256_storeu_ps(buf.as_mut_ptr(), exp8(_mm256_sub_ps(_mm256_loadu_ps(buf.as_ptr()), s))) };
        let n = rest.len();
        rest.copy_from_slice(&buf[..n]);
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn sum_exp_shifted(src: &[f32], shift: f32) -> f32 {
        let s = _mm256_set1_ps(shift);
        let mut acc = _mm256_setzero_ps();
        let mut chunks = src.chunks_exact(8);
        for a in &mut chunks {
            // SAFETY: the chunk holds 8 f32s.
            acc = _mm256_add_ps(acc, exp8(_mm256_sub_ps(unsafe { _mm256_loadu_ps(a.as_ptr()) }, s)));
        }
        let mut lanes = [0f32; 8];
        // SAFETY: the buffer holds 8 f32s.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc) };
        let tail: f32 = chunks.remainder().iter().map(|&v| (v - shift).exp()).sum();
        lanes.iter().sum::<f32>() + tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in units in the last place between two finite f32s of the same sign.
    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    fn reference(x: f32) -> f32 {
        (x as f64).exp() as f32
    }

    #[test]
    fn exp_is_within_two_ulp_of_the_rounded_result_over_the_whole_range() {
        // Every 997th f32 from -104 to 89 and a dense grid near 0, the shift applied as the callers do.
        let mut xs: Vec<f32> = (0..200_000).map(|i| -104.0 + i as f32 * (193.0 / 200_000.0)).collect();
        xs.extend((0..20_000).map(|i| (i as f32 - 10_000.0) * 1e-4));
        xs.extend([0.0, -0.0, 1.0, -1.0, 88.72, -87.33, -100.0, -103.9]);
        let mut out = vec![0f32; xs.len()];
        exp_shifted(&xs, 0.0, &mut out);
        for (&x, &y) in xs.iter().zip(&out) {
            let r = reference(x);
            if r.is_normal() || r == 0.0 {
                assert!(ulps(y, r) <= 2, "exp({x}) = {y}, reference {r}");
            } else if r.is_infinite() {
                assert_eq!(y, r, "exp({x})");
            } else {
                // Subnormal results: absolute error within a few of the smallest steps.
                assert!(
                    (y - r).abs() <= 4.0 * f32::from_bits(1),
                    "exp({x}) = {y:e}, reference {r:e}"
                );
            }
        }
    }

    #[test]
    fn special_values_and_ragged_lengths() {
        let xs = [
            f32::NEG_INFINITY,
            f32::INFINITY,
            f32::NAN,
            -200.0,
            200.0,
            0.5,
            -0.5,
            3.0,
            -7.25,
            11.0,
            42.0,
        ];
        for n in 0..xs.len() {
            let mut out = vec![1f32; n];
            exp_shifted(&xs[..n], 0.0, &mut out);
            let mut inplace = xs[..n].to_vec();
            exp_shifted_inplace(&mut inplace, 0.0);
            for i in 0..n {
                let r = reference(xs[i]);
                for y in [out[i], inplace[i]] {
                    if r.is_nan() {
                        assert!(y.is_nan(), "exp(NaN) = {y}");
                    } else {
                        assert!(y == r || ulps(y, r) <= 2, "exp({}) = {y}, reference {r}", xs[i]);
                    }
                }
            }
        }
        assert_eq!(sum_exp_shifted(&[], 0.0), 0.0);
    }

    #[test]
    fn the_shift_and_the_sum_follow_the_definition() {
        let row: Vec<f32> = (0..1001).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.37).collect();
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let want: f64 = row.iter().map(|&v| ((v - max) as f64).exp()).sum();
        let got = sum_exp_shifted(&row, max) as f64;
        assert!((got - want).abs() <= 1e-6 * want, "{got} vs {want}");
        let lse_want = max as f64 + want.ln();
        assert!((log_sum_exp(&row) as f64 - lse_want).abs() < 1e-5);
        assert_eq!(log_sum_exp(&[]), f32::NEG_INFINITY);
        assert_eq!(log_sum_exp(&[f32::NEG_INFINITY; 3]), f32::NEG_INFINITY);
    }
}
