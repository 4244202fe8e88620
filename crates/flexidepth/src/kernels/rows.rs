//! Several activation rows against one weight row in one pass (batched decode: a few sequences' tokens at once).
//!
//! The one-row kernels unpack a weight block (nibbles, high bits, f16 scales) for every activation row they meet;
//! with `m` rows in a batch, a weight block is unpacked `m` times. A rows kernel unpacks it once per tile of up to
//! [`MAX_TILE`] activation rows and dots it with each of them, every row with its own accumulator. Each row's float
//! operations are the one-row kernels' own, in their order (the integer sums within a block are exact, so their
//! order does not matter): row `j` of a tile gets, bit for bit, what it gets alone — the row invariance the server
//! promises (see [`crate::model::invariant`]).

use super::blocks::{Acts, BlockType};

/// Most activation rows one rows-kernel call takes (8 ymm accumulators; a 16-row batch is two tiles).
pub const MAX_TILE: usize = 8;

/// Up to [`MAX_TILE`] activation rows, quantized for one block type, with their per-block scales gathered into lanes
/// (row `j` in lane `j`, unused lanes 0) so that a kernel scales all rows of a block with one vector operation.
pub struct ActTile<'a> {
    /// The rows, each `blocks` blocks long.
    pub rows: Vec<Acts<'a>>,
    /// Per block: each row's activation scale `d`.
    pub d: Vec<[f32; MAX_TILE]>,
    /// Per block: each row's `d · Σqs` (Q8 blocks; 0 for Q8_K), the offset terms of Q4_0, Q4_1 and Q5_0.
    pub dsum: Vec<[f32; MAX_TILE]>,
}

impl<'a> ActTile<'a> {
    /// A tile of `rows` (1..=[`MAX_TILE`] rows of the same kind and length).
    ///
    /// # Panics
    /// When `rows` is empty, longer than [`MAX_TILE`], or mixes Q8 and Q8_K rows: [`super::QuantMatrix`] builds
    /// tiles from the activations it quantized itself.
    pub fn new(rows: Vec<Acts<'a>>) -> Self {
        assert!((1..=MAX_TILE).contains(&rows.len()), "a tile holds 1..={MAX_TILE} rows");
        let blocks = match rows[0] {
            Acts::Q8(x) => x.len(),
            Acts::Q8K(x) => x.len(),
        };
        let mut d = vec![[0f32; MAX_TILE]; blocks];
        let mut dsum = vec![[0f32; MAX_TILE]; blocks];
        for (j, row) in rows.iter().enumerate() {
            assert_eq!(
                std::mem::discriminant(row),
                std::mem::discriminant(&rows[0]),
                "a tile of one activation kind"
            );
            match *row {
                Acts::Q8(x) => {
                    for (i, y) in x.iter().enumerate() {
                        d[i][j] = y.d;
                        dsum[i][j] = y.d * y.sum as f32;
                    }
                }
                Acts::Q8K(x) => {
                    for (i, y) in x.iter().enumerate() {
                        d[i][j] = y.d;
                    }
                }
            }
        }
        ActTile { rows, d, dsum }
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// A rows kernel: one weight row (its blocks of the type) · every row of the tile, into `out[..tile.len()]`.
pub type DotRowsFn = fn(BlockType, &[u8], &ActTile, &mut [f32]);

/// The scalar fallback: each row through [`super::blocks::dot_scalar`] (what the scalar path computes alone).
pub fn dot_rows_scalar(t: BlockType, row: &[u8], tile: &ActTile, out: &mut [f32]) {
    for (o, &x) in out.iter_mut().zip(&tile.rows) {
        *o = super::blocks::dot_scalar(t, row, x);
    }
}

/// Split `m` activation rows into tiles of as even a size as [`MAX_TILE`] allows (16: 8 + 8; 12: 6 + 6): the
/// `(first row, rows)` of each.
pub fn tile_ranges(m: usize) -> Vec<(usize, usize)> {
    if m == 0 {
        return vec![];
    }
    let tiles = m.div_ceil(MAX_TILE);
    let size = m.div_ceil(tiles);
    (0..m).step_by(size).map(|s| (s, size.min(m - s))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_cover_the_rows_evenly() {
        assert_eq!(tile_ranges(0), vec![]);
        assert_eq!(tile_ranges(1), vec![(0, 1)]);
        assert_eq!(tile_ranges(8), vec![(0, 8)]);
        assert_eq!(tile_ranges(12), vec![(0, 6), (6, 6)]);
        assert_eq!(tile_ranges(16), vec![(0, 8), (8, 8)]);
        assert_eq!(tile_ranges(17), vec![(0, 6), (6, 6), (12, 5)]);
    }
}
