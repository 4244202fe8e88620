//! Throughput of the quantized matrix-vector kernels on the default models' shapes (decode: one activation row).
//! Run: `cargo bench -p flexidepth --bench kernels` (RAYON_NUM_THREADS sets the threads). Prints GB/s of weights.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use flexidepth::kernels::blocks::{self, BlockType};
use flexidepth::kernels::{dot4_fn, dot_fn, DotFn, QuantMatrix};
use std::time::Instant;

fn matrix(t: GgmlDType, rows: usize, cols: usize) -> QuantMatrix {
    let w = Tensor::randn(0f32, 0.05, (rows, cols), &Device::Cpu).unwrap();
    let q = QTensor::quantize(&w, t).unwrap();
    QuantMatrix::new(BlockType::from_ggml(t).unwrap(), rows, cols, q.data().unwrap().to_vec()).unwrap()
}

fn main() {
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
    println!("threads: {}", rayon::current_num_threads());
    for (name, t, rows, cols) in shapes {
        let m = matrix(t, rows, cols);
        let x: Vec<f32> = (0..cols).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut y = vec![0f32; rows];
        let kernels: [(&str, DotFn, bool); 3] = [
            ("scalar", blocks::dot_scalar, false),
            ("1-row", dot_fn(), false),
            ("4-row", dot_fn(), true),
        ];
        for (kname, dot, four) in kernels {
            let reps = (200_000_000 / m.storage_bytes()).clamp(5, 5000);
            let run = |y: &mut [f32]| m.matmul_with(dot, if four { dot4_fn() } else { None }, &x, 1, y);
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
}
