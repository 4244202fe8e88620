//! One activation row laid out for the wide one-row kernels (`avx512.rs`): two weight rows per 512-bit register
//! against the same activation block, so each activation block is rearranged once per product into the byte order
//! the weights unpack to, with the terms every weight row needs next to it.
//!
//! A 4-bit block (Q4_0, Q4_1, Q5_0) of two rows `r0`, `r1` unpacks, with one shift, to the bytes
//! `[r0 w0..16, r1 w0..16, r0 w16..32, r1 w16..32]` (low nibbles of both rows, then high nibbles): its activations
//! are `[y0..16, y0..16, y16..32, y16..32]`. A Q8_0 block of two rows is `[r0 w0..32, r1 w0..32]`: its activations
//! are `[y0..32, y0..32]`, and as `vpdpbusd` multiplies unsigned by signed bytes, the weights go in as `w + 128`
//! (`w ^ 0x80`) and the product starts from `−128 · Σy` over each lane's four bytes ([`WideActs::q8_start`]).
//! The K-quants' kernels read their Q8_K activations as they are ([`WideActs::new_k`]).

use super::blocks::{BlockQ8, BlockType, QK};
use super::kquants::BlockQ8K;

/// 64 activation bytes of one block for two weight rows, aligned for one 512-bit load.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub struct Bytes64(pub [i8; 64]);

/// 16 i32 lanes, aligned for one 512-bit load.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub struct Lanes16(pub [i32; 16]);

/// One row of Q8 activations (`blocks` blocks) rearranged for the wide kernels.
pub struct WideActs {
    /// The weights' block type the layout is for.
    pub block_type: BlockType,
    /// Per block: the 64 bytes one pair of weight rows is multiplied with (see the module doc).
    pub ys: Vec<Bytes64>,
    /// Per block, Q8_0 only (empty otherwise): the i32 lanes a pair's product starts from, `−128 · Σy` over the
    /// four activation bytes of each lane, so that `Σ (w + 128) · y` lands on `Σ w · y`.
    pub q8_start: Vec<Lanes16>,
    /// Per block: the activation scale `d`.
    pub d: Vec<f32>,
    /// Per block: `d · Σqs` (the offset terms of Q4_0, Q4_1 and Q5_0, as the other kernels compute it).
    pub dsum: Vec<f32>,
    /// K-quants only (the fields above empty): the Q8_K super-blocks as quantized, which the K-quant kernels
    /// broadcast to both rows of a pair as they go.
    pub q8k: Vec<BlockQ8K>,
}

impl WideActs {
    /// `x` (one row's blocks) rearranged for weights of the 32-weight type `t`.
    ///
    /// # Panics
    /// When `t` is a K-quant (those take Q8_K activations: [`WideActs::new_k`]).
    pub fn new(t: BlockType, x: &[BlockQ8]) -> Self {
        assert!(!t.is_k_quant(), "the wide kernels take the 32-weight block types");
        let q8 = t == BlockType::Q8_0;
        let ys = x
            .iter()
            .map(|y| {
                let mut b = [0i8; 64];
                if q8 {
                    b[..QK].copy_from_slice(&y.qs);
                    b[QK..].copy_from_slice(&y.qs);
                } else {
                    for (half, src) in y.qs.chunks_exact(16).enumerate() {
                        b[32 * half..32 * half + 16].copy_from_slice(src);
                        b[32 * half + 16..32 * half + 32].copy_from_slice(src);
                    }
                }
                Bytes64(b)
            })
            .collect();
        let q8_start = if q8 {
            x.iter()
                .map(|y| {
                    let mut l = [0i32; 16];
                    for (lane, o) in l.iter_mut().enumerate() {
                        let at = 4 * (lane % 8);
                        *o = -128 * y.qs[at..at + 4].iter().map(|&v| v as i32).sum::<i32>();
                    }
                    Lanes16(l)
                })
                .collect()
        } else {
            vec![]
        };
        WideActs {
            block_type: t,
            ys,
            q8_start,
            d: x.iter().map(|y| y.d).collect(),
            dsum: x.iter().map(|y| y.d * y.sum as f32).collect(),
            q8k: vec![],
        }
    }

    /// Q8_K activations `x` for weights of the K-quant `t`, kept as they are.
    ///
    /// # Panics
    /// When `t` is not a K-quant.
    pub fn new_k(t: BlockType, x: Vec<BlockQ8K>) -> Self {
        assert!(t.is_k_quant(), "Q8_K activations are for the K-quants");
        WideActs {
            block_type: t,
            ys: vec![],
            q8_start: vec![],
            d: vec![],
            dsum: vec![],
            q8k: x,
        }
    }

    /// Blocks (super-blocks for a K-quant) per row.
    pub fn blocks(&self) -> usize {
        if self.block_type.is_k_quant() {
            self.q8k.len()
        } else {
            self.d.len()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::blocks::quantize_q8;

    /// The rearranged bytes are the activations in the weights' unpacked order, and the Q8_0 start lanes cancel
    /// the `+128` of the weights: `Σ (w + 128) · y + start = Σ w · y` lane by lane.
    #[test]
    fn layout_matches_the_unpacked_weights() {
        let x: Vec<f32> = (0..64).map(|i| ((i * 37 % 23) as f32 - 11.0) / 3.0).collect();
        let mut q = vec![BlockQ8::default(); 2];
        quantize_q8(&x, &mut q);
        let a = WideActs::new(BlockType::Q4_1, &q);
        for (b, y) in a.ys.iter().zip(&q) {
            for j in 0..32 {
                // Weight j of row 0 (low nibbles j < 16, high nibbles after) and of row 1.
                let (r0, r1) = if j < 16 { (j, 16 + j) } else { (16 + j, 32 + j) };
                assert_eq!(b.0[r0], y.qs[j]);
                assert_eq!(b.0[r1], y.qs[j]);
            }
        }
        let a = WideActs::new(BlockType::Q8_0, &q);
        let w: Vec<i8> = (0..32).map(|j| (j * 11 % 256) as u8 as i8).collect();
        for ((b, s), y) in a.ys.iter().zip(&a.q8_start).zip(&q) {
            assert_eq!(&b.0[..32], &y.qs);
            assert_eq!(&b.0[32..], &y.qs);
            for lane in 0..16 {
                let at = 4 * (lane % 8);
                let biased: i32 = (0..4)
                    .map(|k| (w[at + k] as u8 ^ 0x80) as i32 * b.0[4 * lane + k] as i32)
                    .sum();
                let plain: i32 = (0..4).map(|k| w[at + k] as i32 * y.qs[at + k] as i32).sum();
                assert_eq!(biased + s.0[lane], plain, "lane {lane}");
            }
        }
        assert_eq!(a.blocks(), 2);
        assert_eq!(a.dsum[1], q[1].d * q[1].sum as f32);
    }
}
