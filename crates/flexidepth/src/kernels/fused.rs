//! Several products of the same activation row in one parallel region (a decode step's k and v projections, or
//! gate and up): the weight rows of all the matrices are split into tasks together, so the threads are woken once
//! instead of once per matrix, and a thread that finishes one matrix's rows goes on with another's.

use super::wide::WideActs;
use super::{wide_chunk, Kernels, QuantMatrix};
use rayon::prelude::*;

/// `ys[i] = x · W_iᵀ` for one activation row `x: [cols]` and matrices `ws[i]: [rows_i, cols]`, `ys[i]: [rows_i]`.
///
/// With a wide kernel (`k.wide`) all the products run in one parallel region, each row through the same kernel
/// as [`QuantMatrix::matmul_with`] takes it alone (the same bits); without one, one product after the other.
/// Activations are quantized once per block type among `ws`.
///
/// # Panics
/// When `ws` and `ys` differ in length or a matrix's shape does not match `x` and its `ys[i]`.
pub fn matvec_many(k: Kernels, ws: &[&QuantMatrix], x: &[f32], ys: &mut [Vec<f32>]) {
    assert_eq!(ws.len(), ys.len(), "one output per matrix");
    for (w, y) in ws.iter().zip(ys.iter()) {
        assert!(w.cols == x.len() && w.rows == y.len(), "x must be [cols], y [rows]");
    }
    let Some(wide) = k.wide else {
        for (w, y) in ws.iter().zip(ys.iter_mut()) {
            w.matmul_with(k, x, 1, y);
        }
        return;
    };
    let mut acts: Vec<WideActs> = vec![];
    let act_of: Vec<usize> = ws
        .iter()
        .map(|w| match acts.iter().position(|a| a.block_type == w.block_type) {
            Some(i) => i,
            None => {
                acts.push(WideActs::quantize(w.block_type, x));
                acts.len() - 1
            }
        })
        .collect();
    let mut tasks: Vec<(usize, usize, &mut [f32])> = vec![];
    for (i, (w, y)) in ws.iter().zip(ys.iter_mut()).enumerate() {
        let chunk = wide_chunk(w.rows);
        tasks.extend(y.chunks_mut(chunk).enumerate().map(|(ci, out)| (i, ci * chunk, out)));
    }
    tasks.into_par_iter().for_each(|(i, first, out)| {
        let w = ws[i];
        wide(w.block_type, &w.data, w.row_bytes(), first, &acts[act_of[i]], out)
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::blocks::BlockType;

    /// A matrix of pseudo-random bytes with small finite f16 scales (every block type keeps one at byte 0, Q6_K
    /// at 208; Q4_1 and the K-quants a second at byte 2).
    fn matrix(t: BlockType, rows: usize, cols: usize, seed: u64) -> QuantMatrix {
        let n = rows * cols / t.block_elems() * t.block_bytes();
        let mut s = seed;
        let mut bytes: Vec<u8> = (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (s >> 33) as u8
            })
            .collect();
        for (i, b) in bytes.chunks_exact_mut(t.block_bytes()).enumerate() {
            let at: &[usize] = if t == BlockType::Q6K { &[208] } else { &[0, 2] };
            for &a in at {
                let v = half::f16::from_f32(((i * 7 + a) % 19) as f32 * 1e-3 - 0.009);
                b[a..a + 2].copy_from_slice(&v.to_le_bytes());
            }
        }
        QuantMatrix::new(t, rows, cols, bytes).unwrap()
    }

    /// The fused products equal the products one by one, bit for bit, with every kernel set (wide or not), for
    /// matrices of one block type and of mixed types (Qwen2.5's k_proj Q5_0 beside a Q8_0 v_proj, a Q4_K beside
    /// a Q6_K), of row counts that are not multiples of eight.
    #[test]
    fn fused_products_equal_the_separate_ones() {
        let cols = 512;
        let x: Vec<f32> = (0..cols).map(|i| ((i * 29 % 83) as f32 / 41.0 - 1.0) * 1.3).collect();
        let sets: [&[(BlockType, usize)]; 4] = [
            &[(BlockType::Q4_1, 67), (BlockType::Q4_1, 131)],
            &[(BlockType::Q5_0, 64), (BlockType::Q8_0, 21), (BlockType::Q5_0, 9)],
            &[(BlockType::Q4K, 37), (BlockType::Q6K, 50)],
            &[(BlockType::Q4_0, 1)],
        ];
        let detected = Kernels::detected();
        let kernel_sets = [detected, Kernels { wide: None, ..detected }];
        for set in sets {
            let ws: Vec<QuantMatrix> = set
                .iter()
                .enumerate()
                .map(|(i, &(t, rows))| matrix(t, rows, cols, i as u64 + 1))
                .collect();
            let refs: Vec<&QuantMatrix> = ws.iter().collect();
            for k in kernel_sets {
                let mut fused: Vec<Vec<f32>> = ws.iter().map(|w| vec![f32::NAN; w.rows]).collect();
                matvec_many(k, &refs, &x, &mut fused);
                for (w, y) in ws.iter().zip(&fused) {
                    let mut alone = vec![0f32; w.rows];
                    w.matmul_with(k, &x, 1, &mut alone);
                    assert!(y.iter().all(|v| v.is_finite()), "{:?}", w.block_type);
                    let same = y.iter().zip(&alone).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(
                        same,
                        "{:?} [{}, {cols}] wide={}",
                        w.block_type,
                        w.rows,
                        k.wide.is_some()
                    );
                }
            }
        }
    }
}
