//! The kernels against the exact dequantized product, and our dequantization against candle's (ggml's), for every
//! block type, the scalar path and the SIMD kernels this CPU runs.

use super::*;
use blocks::QK;
use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use kquants::QK_K;

const ALL: [GgmlDType; 7] = [
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q8_0,
    GgmlDType::Q4K,
    GgmlDType::Q5K,
    GgmlDType::Q6K,
];

/// A random matrix quantized by candle (ggml's own quantizers), as our type, with candle's dequantization.
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

/// splitmix64: a reproducible stream of random words.
fn random_words(seed: u64) -> impl FnMut() -> u64 {
    let mut s = seed;
    move || {
        s = s.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^ (z >> 31)
    }
}

/// A matrix of random blocks (every bit of quants and packed scales random; the f16 scales finite, in ±[0, 0.01)),
/// as our type, with candle's dequantization of the same bytes.
fn random_matrix(t: GgmlDType, rows: usize, cols: usize, seed: u64) -> (QuantMatrix, Vec<f32>) {
    let bt = BlockType::from_ggml(t).unwrap();
    let n = rows * cols / bt.block_elems() * bt.block_bytes();
    let mut next = random_words(seed);
    let mut bytes: Vec<u8> = (0..n).map(|_| next() as u8).collect();
    // Where each block keeps its f16 scales.
    let f16_at: &[usize] = match bt {
        BlockType::Q4_1 | BlockType::Q4K | BlockType::Q5K => &[0, 2],
        BlockType::Q6K => &[208],
        _ => &[0],
    };
    for b in bytes.chunks_exact_mut(bt.block_bytes()) {
        for &at in f16_at {
            let v = (next() % 20_000) as f32 / 1e6 - 0.01;
            b[at..at + 2].copy_from_slice(&half::f16::from_f32(v).to_le_bytes());
        }
    }
    let q = qtensor_from_ggml(t, &bytes, vec![rows, cols], &Device::Cpu).unwrap();
    let dense: Vec<f32> = q
        .dequantize(&Device::Cpu)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    (QuantMatrix::new(bt, rows, cols, bytes).unwrap(), dense)
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

/// Our dequantization equals candle's bit for bit, on candle-quantized and on random blocks.
#[test]
fn dequantized_rows_match_candle() {
    for t in ALL {
        let cols = 512;
        for (kind, (q, dense)) in [
            ("quantized", matrix(t, 5, cols, 1)),
            ("random", random_matrix(t, 5, cols, 2)),
        ] {
            let mut row = vec![0f32; cols];
            for r in 0..5 {
                q.dequantize_row(r, &mut row);
                assert_eq!(row, dense[r * cols..(r + 1) * cols], "{t:?} {kind} row {r}");
            }
            assert_eq!(q.dequantize(), dense, "{t:?} {kind} whole matrix");
        }
    }
}

/// The activations as the kernels see them for weights of type `t`: quantized to 8 bits per block (Q8) or
/// super-block (Q8_K), then back to f32.
fn through_acts(t: BlockType, x: &[f32]) -> Vec<f32> {
    if t.is_k_quant() {
        let mut q = vec![kquants::BlockQ8K::default(); x.len() / QK_K];
        kquants::quantize_q8k(x, &mut q);
        for b in &q {
            for (g, &s) in b.qs.chunks_exact(16).zip(&b.bsums) {
                assert_eq!(
                    g.iter().map(|&v| v as i16).sum::<i16>(),
                    s,
                    "bsums are the 16-value sums"
                );
            }
        }
        q.iter()
            .flat_map(|b| b.qs.iter().map(move |&v| b.d * v as f32))
            .collect()
    } else {
        let mut q = vec![BlockQ8::default(); x.len() / QK];
        quantize_q8(x, &mut q);
        q.iter()
            .flat_map(|b| b.qs.iter().map(move |&v| b.d * v as f32))
            .collect()
    }
}

/// The scalar kernels (one row, and the rows fallback), the detected SIMD one-row kernel, the four-row kernel, and
/// every rows kernel (several activation rows per pass) this CPU runs.
fn kernels() -> Vec<(String, Kernels)> {
    let none = |dot| Kernels {
        dot,
        dot4: None,
        rows: None,
        wide: None,
    };
    let mut out = vec![
        ("scalar".to_string(), none(blocks::dot_scalar)),
        ("one row".to_string(), none(dot_fn())),
        (
            "four rows".to_string(),
            Kernels {
                dot4: dot4_fn(),
                ..none(dot_fn())
            },
        ),
    ];
    if let Some(wide) = wide_fn() {
        out.push((
            "wide".to_string(),
            Kernels {
                wide: Some(wide),
                ..none(dot_fn())
            },
        ));
    }
    for (name, rows) in rows_kernels() {
        let scalar = name == "scalar";
        let k = Kernels {
            dot: if scalar { blocks::dot_scalar } else { dot_fn() },
            dot4: if scalar { None } else { dot4_fn() },
            rows: Some(rows),
            wide: None,
        };
        out.push((format!("rows {name}"), k));
    }
    out
}

/// A non-finite activation (corrupt weights upstream) is not rounded away: every kernel's product with its
/// block is non-finite, so it reaches the logits, where it is refused.
#[test]
fn non_finite_activations_are_not_quantized_away() {
    for t in ALL {
        let (rows, cols) = (9, 256);
        let (q, _) = matrix(t, rows, cols, 5);
        for bad in [f32::NAN, f32::INFINITY] {
            let mut x = vec![0.25f32; cols];
            x[40] = bad;
            for (name, k) in kernels() {
                for m in [1, 2] {
                    let mut y = vec![0f32; m * rows];
                    q.matmul_with(k, &x.repeat(m), m, &mut y);
                    assert!(y.iter().all(|v| v.is_nan()), "{t:?} {name} {bad} m={m}: {y:?}");
                }
            }
        }
        // Finite activations keep finite products.
        let mut y = vec![0f32; rows];
        q.matmul_with(kernels()[0].1, &vec![0.25f32; cols], 1, &mut y);
        assert!(y.iter().all(|v| v.is_finite()), "{t:?}");
    }
}

/// Every kernel (scalar and the detected SIMD ones), decode and prefill shapes, equals the f64 product of the
/// dequantized weights with the 8-bit-rounded activations (float summation order aside), and stays within the
/// rounding's reach of the plain f32 product. 67 rows leave a remainder for the four-row kernel; rows of 8 and 9
/// blocks, or of 1 and 3 super-blocks; 1, 3, 5, 16 and 17 activation rows (tiles of 3, 5, 8 + 8, 6 + 6 + 5 rows
/// for the rows kernel).
#[test]
fn kernels_match_the_dequantized_product() {
    for t in ALL {
        let bt = BlockType::from_ggml(t).unwrap();
        let widths = if bt.is_k_quant() { [256, 768] } else { [256, 288] };
        for cols in widths {
            let rows = 67;
            for (kind, (q, dense)) in [
                ("quantized", matrix(t, rows, cols, 3)),
                ("random", random_matrix(t, rows, cols, 4)),
            ] {
                for m in [1, 3, 5, 16, 17] {
                    let x: Vec<f32> = (0..m * cols)
                        .map(|i| ((i * 7919 % 997) as f32 / 498.0 - 1.0) * 2.0)
                        .collect();
                    let exact = reference(&dense, rows, cols, &through_acts(bt, &x), m);
                    let plain = reference(&dense, rows, cols, &x, m);
                    let scale = plain.iter().fold(0f32, |a, v| a.max(v.abs()));
                    // Q8_K has one activation scale per 256 values, not per 32: a coarser rounding.
                    let reach = if bt.is_k_quant() { 0.06 } else { 0.03 };
                    for (name, k) in kernels() {
                        let mut y = vec![0f32; m * rows];
                        q.matmul_with(k, &x, m, &mut y);
                        let err = y.iter().zip(&exact).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                        assert!(
                            err < 1e-5 * scale,
                            "{t:?} {kind} [{rows}, {cols}] {name} m={m}: {err} from the exact product (scale {scale})"
                        );
                        let err = y.iter().zip(&plain).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                        assert!(
                            err < reach * scale,
                            "{t:?} {kind} [{rows}, {cols}] {name} m={m}: {err} from the f32 product (scale {scale})"
                        );
                    }
                }
            }
        }
    }
}

/// The SIMD kernels this CPU runs are the ones its features allow (so the tests above covered them).
#[test]
fn the_detected_kernels_are_the_cpus_own() {
    #[cfg(target_arch = "x86_64")]
    let avx2 = std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("f16c");
    #[cfg(not(target_arch = "x86_64"))]
    let avx2 = false;
    assert_eq!(kernel_name(), if avx2 { "avx2" } else { "scalar" });
    assert_eq!(dot4_fn().is_some(), avx2);
    #[cfg(target_arch = "x86_64")]
    let vnni = avx2
        && std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512vl")
        && std::is_x86_feature_detected!("avx512vnni");
    #[cfg(not(target_arch = "x86_64"))]
    let vnni = false;
    let names: Vec<&str> = rows_kernels().iter().map(|k| k.0).collect();
    let want: &[&str] = match (avx2, vnni) {
        (true, true) => &["scalar", "avx2", "avx512vnni"],
        (true, false) => &["scalar", "avx2"],
        _ => &["scalar"],
    };
    assert_eq!(names, want);
    #[cfg(target_arch = "x86_64")]
    assert_eq!(wide_fn().is_some(), vnni && std::is_x86_feature_detected!("avx512bw"));
    assert_eq!(dot_rows_fn() as usize, rows_kernels().last().unwrap().1 as usize);
}

/// A row of a multi-row product is the same, bit for bit, as that row multiplied alone (by the one-row path decode
/// takes), for every block type, kernel set and number of rows; and the SIMD kernels (one row, four rows, rows)
/// agree with each other bit for bit, so a row's result never depends on which of them the shape picked.
#[test]
fn rows_of_a_product_equal_rows_alone() {
    for t in ALL {
        let bt = BlockType::from_ggml(t).unwrap();
        let (rows, cols) = (203, if bt.is_k_quant() { 768 } else { 544 });
        let (q, _) = random_matrix(t, rows, cols, 5);
        let m = 17;
        let x: Vec<f32> = (0..m * cols)
            .map(|i| ((i * 31 % 101) as f32 / 50.0 - 1.0) * 1.5)
            .collect();
        let alone = |k: Kernels, i: usize| {
            let mut y = vec![0f32; rows];
            q.matmul_with(k, &x[i * cols..(i + 1) * cols], 1, &mut y);
            y
        };
        for (name, k) in kernels() {
            // The scalar kernels against the scalar one-row path; the SIMD ones against the detected decode path.
            let single = if name.contains("scalar") {
                kernels()[0].1
            } else {
                Kernels::detected()
            };
            for n in [2, 3, 8, 9, 16, 17] {
                let mut y = vec![0f32; n * rows];
                q.matmul_with(k, &x[..n * cols], n, &mut y);
                for i in 0..n {
                    let want = alone(single, i);
                    assert!(
                        y[i * rows..(i + 1) * rows]
                            .iter()
                            .zip(&want)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{t:?} {name}: row {i} of {n} differs from the row alone"
                    );
                }
            }
        }
    }
}

/// Sizes that are not whole blocks are refused: 32 weights, or 256 for a K-quant (as ggml refuses them).
#[test]
fn bad_sizes_are_refused() {
    assert!(QuantMatrix::new(BlockType::Q4_1, 2, 33, vec![0; 40]).is_err());
    assert!(QuantMatrix::new(BlockType::Q4_1, 2, 32, vec![0; 39]).is_err());
    // 288 columns are nine Q5_0 blocks but not whole K-quant super-blocks.
    assert!(QuantMatrix::new(BlockType::Q5_0, 2, 288, vec![0; 2 * 9 * 22]).is_ok());
    for t in [BlockType::Q4K, BlockType::Q5K, BlockType::Q6K] {
        assert!(
            QuantMatrix::new(t, 2, 288, vec![0; 2 * t.block_bytes()]).is_err(),
            "{t:?}"
        );
        assert!(
            QuantMatrix::new(t, 2, 512, vec![0; 4 * t.block_bytes() - 1]).is_err(),
            "{t:?}"
        );
        assert!(
            QuantMatrix::new(t, 2, 512, vec![0; 4 * t.block_bytes()]).is_ok(),
            "{t:?}"
        );
    }
}

/// The wide one-row kernel (where this CPU has one) gives every weight row the bits the AVX2 one- and four-row
/// kernels give it, for every block type, on every range of rows (lengths 1..=19 from several first rows: whole
/// passes of eight, pairs and an odd last row), and refuses activations laid out for another type.
#[test]
fn wide_kernel_equals_the_avx2_kernels() {
    let Some(wide) = wide_fn() else {
        return;
    };
    for t in ALL {
        let bt = BlockType::from_ggml(t).unwrap();
        let widths = if bt.is_k_quant() { [256, 768] } else { [32, 288] };
        for cols in widths {
            let (q, _) = random_matrix(t, 27, cols, 9);
            let x: Vec<f32> = (0..cols).map(|i| ((i * 13 % 61) as f32 / 30.0 - 1.0) * 1.7).collect();
            let (mut xq, mut xk) = (
                vec![BlockQ8::default(); cols / QK],
                vec![kquants::BlockQ8K::default(); cols / QK_K],
            );
            let (acts, xa) = if bt.is_k_quant() {
                kquants::quantize_q8k(&x, &mut xk);
                (wide::WideActs::new_k(bt, xk.clone()), Acts::Q8K(&xk))
            } else {
                quantize_q8(&x, &mut xq);
                (wide::WideActs::new(bt, &xq), Acts::Q8(&xq))
            };
            let alone: Vec<f32> = (0..27).map(|r| dot_fn()(bt, q.row(r), xa)).collect();
            let four: Vec<f32> = (0..24)
                .step_by(4)
                .flat_map(|r| dot4_fn().unwrap()(bt, [q.row(r), q.row(r + 1), q.row(r + 2), q.row(r + 3)], xa))
                .collect();
            assert!(alone[..24].iter().zip(&four).all(|(a, b)| a.to_bits() == b.to_bits()));
            for first in [0, 1, 5] {
                for len in 1..=(27 - first).min(19) {
                    let mut out = vec![f32::NAN; len];
                    wide(bt, &q.data, q.row_bytes(), first, &acts, &mut out);
                    for (j, v) in out.iter().enumerate() {
                        assert_eq!(
                            v.to_bits(),
                            alone[first + j].to_bits(),
                            "{t:?} cols {cols} rows {first}..{}: row {}: {v} vs {}",
                            first + len,
                            first + j,
                            alone[first + j]
                        );
                    }
                }
            }
        }
        let other = if bt == BlockType::Q8_0 {
            BlockType::Q4_1
        } else {
            BlockType::Q8_0
        };
        let (q, _) = random_matrix(t, 3, 256, 1);
        let mut xq = vec![BlockQ8::default(); 8];
        quantize_q8(&[0.5; 256], &mut xq);
        let acts = wide::WideActs::new(other, &xq);
        let refused = std::panic::catch_unwind(|| wide(bt, &q.data, q.row_bytes(), 0, &acts, &mut [0f32; 3]));
        assert!(refused.is_err(), "{t:?} with activations for {other:?}");
    }
}

/// The quantizers this CPU runs (compiled for its SIMD features where it has them) give the plain code's blocks
/// bit for bit: values exactly half-way between two integers (rounded away from zero), just below them, zero and
/// non-finite blocks, and pseudo-random ones.
#[test]
fn quantizers_equal_the_plain_code() {
    let mut next = random_words(11);
    let mut x: Vec<f32> = Vec::new();
    // A block whose scale is exactly 1 (max 127): each value is its own quantized value before rounding.
    let halves = [
        0.5f32,
        -0.5,
        1.5,
        -1.5,
        2.5,
        -2.5,
        126.5,
        -126.5,
        0.49999997,
        -0.49999997,
        2.4999998,
        0.0,
        -0.0,
    ];
    for b in 0..8 {
        let mut block: Vec<f32> = (0..QK).map(|j| halves[(j + b) % halves.len()]).collect();
        block[b] = if b % 2 == 0 { 127.0 } else { -127.0 };
        x.extend(block);
    }
    x.extend([0f32; QK]);
    let mut bad = vec![0.25f32; QK];
    bad[3] = f32::NAN;
    x.extend(bad);
    x.extend((0..QK * 30).map(|_| (next() % 2_000_001) as f32 / 1e4 - 100.0));
    x.extend((0..QK_K - x.len() % QK_K).map(|i| i as f32 * 0.3 - 7.0));
    let n = x.len() / QK;
    let (mut fast, mut plain) = (vec![BlockQ8::default(); n], vec![BlockQ8::default(); n]);
    quantize_q8(&x, &mut fast);
    blocks::quantize_q8_body(&x, &mut plain);
    for (i, (a, b)) in fast.iter().zip(&plain).enumerate() {
        assert_eq!((a.d.to_bits(), a.sum, a.qs), (b.d.to_bits(), b.sum, b.qs), "block {i}");
    }
    assert_eq!(&plain[0].qs[1..4], &[-1, 2, -2], "-0.5 and ±1.5 round away from zero");
    let n = x.len() / QK_K;
    let (mut fast, mut plain) = (
        vec![kquants::BlockQ8K::default(); n],
        vec![kquants::BlockQ8K::default(); n],
    );
    kquants::quantize_q8k(&x, &mut fast);
    kquants::quantize_q8k_body(&x, &mut plain);
    for (i, (a, b)) in fast.iter().zip(&plain).enumerate() {
        assert_eq!(
            (a.d.to_bits(), a.bsums, a.qs),
            (b.d.to_bits(), b.bsums, b.qs),
            "super-block {i}"
        );
    }
}
