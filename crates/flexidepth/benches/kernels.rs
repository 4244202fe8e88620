//! Throughput of the quantized matrix-vector kernels on the default models' shapes (decode: one activation row),
//! then several activation rows (batched decode, short prompts): row by row (one- and four-row kernels), the rows
//! kernel, and the dequantized f32 GEMM that `Linear` switches to from `PACKED_GEMM_MIN_ROWS` rows.
//! Run: `cargo bench -p flexidepth --bench kernels [-- rows|one]` (RAYON_NUM_THREADS sets the threads; `rows`:
//! only the several-rows table; `one`: only the one-row table). Prints GB/s of weights, and µs per call and per activation row.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use flexidepth::kernels::blocks::{self, BlockType};
use flexidepth::kernels::{dot4_fn, dot_fn, rows_kernels, wide_fn, DotFn, Kernels, QuantMatrix};
use std::time::Instant;

fn matrix(t: GgmlDType, rows: usize, cols: usize) -> QuantMatrix {
    let w = Tensor::randn(0f32, 0.05, (rows, cols), &Device::Cpu).unwrap();
    let q = QTensor::quantize(&w, t).unwrap();
    QuantMatrix::new(BlockType::from_ggml(t).unwrap(), rows, cols, q.data().unwrap().to_vec()).unwrap()
}

/// Best of five timings of `reps` calls of `f`, seconds per call.
fn best_of(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut best = f64::MAX;
    for _ in 0..5 {
        let start = Instant::now();
        for _ in 0..reps {
            f();
        }
        best = best.min(start.elapsed().as_secs_f64() / reps as f64);
    }
    best
}

/// Several activation rows: the row-by-row path, the rows kernel, and the dequantized f32 GEMM (dequantization
/// included, as `Linear::forward` pays it on every call).
fn several_rows() {
    let shapes = [
        ("gate/up 1536x576 Q4_1", GgmlDType::Q4_1, 1536, 576),
        ("down 576x1536 Q4_1", GgmlDType::Q4_1, 576, 1536),
        ("lm_head 49152x576 Q8_0", GgmlDType::Q8_0, 49152, 576),
        ("qwen gate/up 4864x896 Q5_0", GgmlDType::Q5_0, 4864, 896),
        ("qwen down 896x4864 Q4_K", GgmlDType::Q4K, 896, 4864),
        ("qwen down 896x4864 Q6_K", GgmlDType::Q6K, 896, 4864),
    ];
    let simd: Vec<_> = rows_kernels().into_iter().filter(|k| k.0 != "scalar").collect();
    print!("{:<30} {:>4} {:>12}", "shape", "m", "row-by-row");
    for (name, _) in &simd {
        print!(" {:>12}", format!("rows {name}"));
    }
    println!(" {:>12}   (µs per activation row)", "f32 GEMM");
    for (name, t, rows, cols) in shapes {
        let m = matrix(t, rows, cols);
        for n in [1usize, 2, 4, 8, 16, 24, 32, 48] {
            let x: Vec<f32> = (0..n * cols).map(|i| (i as f32 * 0.37).sin()).collect();
            let mut y = vec![0f32; n * rows];
            let reps = (100_000_000 / (m.storage_bytes() * n)).clamp(3, 2000);
            let by_row = Kernels {
                rows: None,
                ..Kernels::detected()
            };
            let a = best_of(reps, || m.matmul_with(by_row, &x, n, &mut y));
            let by_kernel: Vec<f64> = simd
                .iter()
                .map(|&(_, f)| {
                    let k = Kernels {
                        rows: Some(f),
                        ..Kernels::detected()
                    };
                    best_of(reps, || m.matmul_with(k, &x, n, &mut y))
                })
                .collect();
            let xt = Tensor::from_vec(x.clone(), (n, cols), &Device::Cpu).unwrap();
            let c = best_of(reps, || {
                let w = Tensor::from_vec(m.dequantize(), (rows, cols), &Device::Cpu).unwrap();
                let _ = xt.matmul(&w.t().unwrap()).unwrap();
            });
            let per = |s: f64| s * 1e6 / n as f64;
            print!("{name:<30} {n:>4} {:>12.2}", per(a));
            for r in by_kernel {
                print!(" {:>12.2}", per(r));
            }
            println!(" {:>12.2}", per(c));
        }
    }
}

fn main() {
    println!("threads: {}", rayon::current_num_threads());
    if std::env::args().any(|a| a == "rows") {
        return several_rows();
    }
    let shapes = [
        ("q_proj/o_proj 576x576 Q4_1", GgmlDType::Q4_1, 576, 576),
        ("gate/up 1536x576 Q4_1", GgmlDType::Q4_1, 1536, 576),
        ("down 576x1536 Q4_1", GgmlDType::Q4_1, 576, 1536),
        ("lm_head 49152x576 Q8_0", GgmlDType::Q8_0, 49152, 576),
        ("big 49152x576 Q4_1", GgmlDType::Q4_1, 49152, 576),
        ("mid 4096x576 Q8_0", GgmlDType::Q8_0, 4096, 576),
        // Qwen2.5-Coder-0.5B's own block types and shapes.
        ("qwen gate/up 4864x896 Q5_0", GgmlDType::Q5_0, 4864, 896),
        ("qwen down 896x4864 Q4_K", GgmlDType::Q4K, 896, 4864),
        ("qwen down 896x4864 Q6_K", GgmlDType::Q6K, 896, 4864),
        ("qwen down 896x4864 Q5_K", GgmlDType::Q5K, 896, 4864),
    ];
    for (name, t, rows, cols) in shapes {
        let m = matrix(t, rows, cols);
        let x: Vec<f32> = (0..cols).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut y = vec![0f32; rows];
        let kernels: [(&str, DotFn, bool, bool); 4] = [
            ("scalar", blocks::dot_scalar, false, false),
            ("1-row", dot_fn(), false, false),
            ("4-row", dot_fn(), true, false),
            ("wide", dot_fn(), true, true),
        ];
        for (kname, dot, four, wide) in kernels {
            if wide && wide_fn().is_none() {
                continue;
            }
            let reps = (200_000_000 / m.storage_bytes()).clamp(5, 5000);
            let k = Kernels {
                dot,
                dot4: if four { dot4_fn() } else { None },
                rows: None,
                wide: if wide { wide_fn() } else { None },
            };
            let run = |y: &mut [f32]| m.matmul_with(k, &x, 1, y);
            run(&mut y);
            let mut best = f64::MAX;
            for _ in 0..5 {
                let start = Instant::now();
                for _ in 0..reps {
                    run(&mut y);
                }
                best = best.min(start.elapsed().as_secs_f64() / reps as f64);
            }
            println!(
                "{name:<30} {kname:<7} {:>8.1} µs  {:>6.1} GB/s",
                best * 1e6,
                m.storage_bytes() as f64 / best / 1e9
            );
        }
    }
    if !std::env::args().any(|a| a == "one") {
        several_rows();
    }
}
