//! Rotary position embedding, HF's half-split form (`rotate_half`), with the tables computed in f32 the way
//! transformers computes them so that logits agree closely with the reference.

use crate::error::Result;
use candle_core::{DType, Device, Tensor};

/// Positions whose tables are computed up front; later ones (a long context) are computed when asked for, so a
/// model claiming a huge context window costs nothing until it is used.
const TABLE_ROWS: usize = 1 << 15;

#[derive(Debug, Clone)]
pub struct Rope {
    /// `[head_dim / 2]`: θ^(-2i/d).
    inv_freq: Vec<f32>,
    /// `[min(max_pos, TABLE_ROWS), head_dim / 2]`
    cos: Tensor,
    sin: Tensor,
    max_pos: usize,
    dtype: DType,
}

impl Rope {
    pub fn new(head_dim: usize, theta: f64, max_pos: usize, dtype: DType, device: &Device) -> Result<Self> {
        let half = head_dim / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| 1.0 / (theta as f32).powf((2 * i) as f32 / head_dim as f32))
            .collect();
        let rows = max_pos.min(TABLE_ROWS);
        let (cos, sin) = Self::compute(&inv_freq, 0..rows as u32, dtype, device)?;
        Ok(Rope {
            inv_freq,
            cos,
            sin,
            max_pos,
            dtype,
        })
    }

    /// `cos` and `sin` of `positions`, each `[positions, head_dim / 2]`.
    fn compute(
        inv_freq: &[f32],
        positions: impl ExactSizeIterator<Item = u32>,
        dtype: DType,
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let n = positions.len();
        let mut cos = Vec::with_capacity(n * inv_freq.len());
        let mut sin = Vec::with_capacity(n * inv_freq.len());
        for pos in positions {
            for &f in inv_freq {
                let angle = pos as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        Ok((
            Tensor::from_vec(cos, (n, inv_freq.len()), device)?.to_dtype(dtype)?,
            Tensor::from_vec(sin, (n, inv_freq.len()), device)?.to_dtype(dtype)?,
        ))
    }

    /// Rotate `x: [heads, seq, head_dim]` whose first row sits at position `pos`.
    pub fn apply(&self, x: &Tensor, pos: usize) -> Result<Tensor> {
        let (cos, sin) = self.tables(pos, x.dim(1)?)?;
        let y = candle_nn::rotary_emb::rope(&x.unsqueeze(0)?.contiguous()?, &cos, &sin)?;
        Ok(y.squeeze(0)?)
    }

    /// Rotate `x: [heads, rows, head_dim]` whose rows sit at the positions in `pos_idx` (`[rows]`, u32): the rows
    /// of a batch that run a layer need not be contiguous.
    pub fn apply_rows(&self, x: &Tensor, pos_idx: &Tensor) -> Result<Tensor> {
        let (cos, sin) = self.tables_rows(pos_idx)?;
        let y = candle_nn::rotary_emb::rope(&x.unsqueeze(0)?.contiguous()?, &cos, &sin)?;
        Ok(y.squeeze(0)?)
    }

    /// The `cos` and `sin` tables of the positions in `pos_idx` (`[rows]`, u32), each `[rows, head_dim / 2]`.
    pub fn tables_rows(&self, pos_idx: &Tensor) -> Result<(Tensor, Tensor)> {
        // The whole window is in the table (every model up to 32k positions): no need to read the positions.
        if self.max_pos <= self.table_rows() {
            return Ok((self.cos.index_select(pos_idx, 0)?, self.sin.index_select(pos_idx, 0)?));
        }
        let positions: Vec<u32> = pos_idx.to_vec1()?;
        if positions.iter().all(|&p| (p as usize) < self.table_rows()) {
            return Ok((self.cos.index_select(pos_idx, 0)?, self.sin.index_select(pos_idx, 0)?));
        }
        self.check(positions.iter().map(|&p| p as usize + 1).max().unwrap_or(0))?;
        Self::compute(&self.inv_freq, positions.into_iter(), self.dtype, self.cos.device())
    }

    /// The `cos` and `sin` tables of positions `pos..pos + seq`, each `[seq, head_dim / 2]`.
    pub fn tables(&self, pos: usize, seq: usize) -> Result<(Tensor, Tensor)> {
        let end = pos.saturating_add(seq);
        if end <= self.table_rows() {
            return Ok((self.cos.narrow(0, pos, seq)?, self.sin.narrow(0, pos, seq)?));
        }
        self.check(end)?;
        Self::compute(&self.inv_freq, pos as u32..end as u32, self.dtype, self.cos.device())
    }

    /// Positions below `end` must be inside the context window.
    fn check(&self, end: usize) -> Result<()> {
        if end > self.max_pos {
            return Err(crate::error::Error::ContextOverflow {
                tokens: end,
                context: self.max_pos,
            });
        }
        Ok(())
    }

    fn table_rows(&self) -> usize {
        self.cos.dims()[0]
    }

    pub fn max_pos(&self) -> usize {
        self.max_pos
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The textbook rotation on one vector: pairs (i, i + d/2) rotated by pos · θ^(-2i/d).
    fn reference(x: &[f32], pos: usize, theta: f64) -> Vec<f32> {
        let d = x.len();
        let mut out = vec![0f32; d];
        for i in 0..d / 2 {
            let a = pos as f64 * theta.powf(-((2 * i) as f64) / d as f64);
            let (c, s) = (a.cos() as f32, a.sin() as f32);
            out[i] = x[i] * c - x[i + d / 2] * s;
            out[i + d / 2] = x[i + d / 2] * c + x[i] * s;
        }
        out
    }

    #[test]
    fn matches_reference_rotation() {
        let dev = Device::Cpu;
        let rope = Rope::new(8, 10_000.0, 64, DType::F32, &dev).unwrap();
        let data: Vec<f32> = (0..2 * 3 * 8).map(|i| (i as f32 * 0.37).sin()).collect();
        let x = Tensor::from_vec(data.clone(), (2, 3, 8), &dev).unwrap();
        let y = rope.apply(&x, 5).unwrap().to_vec3::<f32>().unwrap();
        for h in 0..2 {
            for t in 0..3 {
                let v = &data[(h * 3 + t) * 8..(h * 3 + t + 1) * 8];
                let want = reference(v, 5 + t, 10_000.0);
                for (a, b) in y[h][t].iter().zip(&want) {
                    assert!((a - b).abs() < 1e-5, "{a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn gathered_rows_equal_contiguous_rotation() {
        let dev = Device::Cpu;
        let rope = Rope::new(8, 10_000.0, 64, DType::F32, &dev).unwrap();
        let x = Tensor::rand(-1f32, 1., (2, 3, 8), &dev).unwrap();
        let want = rope.apply(&x, 7).unwrap().to_vec3::<f32>().unwrap();
        let idx = Tensor::new(&[7u32, 8, 9], &dev).unwrap();
        assert_eq!(rope.apply_rows(&x, &idx).unwrap().to_vec3::<f32>().unwrap(), want);
    }

    /// Positions past the precomputed table are computed on demand, to the same values.
    #[test]
    fn positions_past_the_table_match_and_the_window_is_enforced() {
        let dev = Device::Cpu;
        let rope = Rope::new(8, 10_000.0, TABLE_ROWS + 8, DType::F32, &dev).unwrap();
        let (c, s) = rope.tables(TABLE_ROWS - 2, 4).unwrap();
        let (c2, s2) = rope.tables(TABLE_ROWS - 2, 2).unwrap();
        assert_eq!(
            c.narrow(0, 0, 2).unwrap().to_vec2::<f32>().unwrap(),
            c2.to_vec2::<f32>().unwrap()
        );
        assert_eq!(
            s.narrow(0, 0, 2).unwrap().to_vec2::<f32>().unwrap(),
            s2.to_vec2::<f32>().unwrap()
        );
        let idx = Tensor::new(&[3u32, TABLE_ROWS as u32 + 1], &dev).unwrap();
        let (c3, _) = rope.tables_rows(&idx).unwrap();
        let want = rope.tables(TABLE_ROWS + 1, 1).unwrap().0.to_vec2::<f32>().unwrap();
        assert_eq!(c3.narrow(0, 1, 1).unwrap().to_vec2::<f32>().unwrap(), want);
        assert!(rope.tables(TABLE_ROWS + 4, 5).is_err());
        assert_eq!(rope.max_pos(), TABLE_ROWS + 8);
    }

    #[test]
    fn position_zero_is_identity() {
        let dev = Device::Cpu;
        let rope = Rope::new(4, 10_000.0, 8, DType::F32, &dev).unwrap();
        let x = Tensor::new(&[[[1f32, 2., 3., 4.]]], &dev).unwrap();
        assert_eq!(
            rope.apply(&x, 0).unwrap().to_vec3::<f32>().unwrap(),
            x.to_vec3::<f32>().unwrap()
        );
    }
}
