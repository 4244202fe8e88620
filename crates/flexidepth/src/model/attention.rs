//! Grouped-query self-attention, split in two so that a token can fill the KV cache without attending
//! (FlexiDepth's skipped tokens still write K/V): [`Attention::project_kv`] and [`Attention::attend`].

use super::linear::Linear;
use super::norm::RmsNorm;
use super::ops::Ops;
use super::rope::Rope;
use crate::error::Result;
use candle_core::Tensor;

/// Where the query rows of an attention call sit.
pub enum QueryPos<'a> {
    /// Rows at `start, start + 1, ...`.
    Contiguous(usize),
    /// Rows at the positions of this `[rows]` u32 tensor (the rows of a batch that run a layer).
    Rows(&'a Tensor),
}

#[derive(Debug)]
pub struct Attention {
    /// `[heads · head_dim, hidden]`
    pub q_proj: Linear,
    /// `[kv_heads · head_dim, hidden]`
    pub k_proj: Linear,
    /// `[kv_heads · head_dim, hidden]`
    pub v_proj: Linear,
    /// `[hidden, heads · head_dim]`
    pub o_proj: Linear,
    /// Qwen3's per-head norms, `[head_dim]`.
    pub q_norm: Option<RmsNorm>,
    pub k_norm: Option<RmsNorm>,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

impl Attention {
    /// `[seq, heads · head_dim]` → `[heads, seq, head_dim]`, with the optional per-head norm.
    fn split_heads(&self, ops: &dyn Ops, x: &Tensor, heads: usize, norm: Option<&RmsNorm>) -> Result<Tensor> {
        let seq = x.dim(0)?;
        let x = x.reshape((seq, heads, self.head_dim))?;
        let x = match norm {
            Some(n) => ops.rms_norm(&x, n)?,
            None => x,
        };
        Ok(x.transpose(0, 1)?.contiguous()?)
    }

    /// Keys (rotated) and values of the normed hidden states `x: [seq, hidden]` at positions `pos..pos+seq`,
    /// each `[kv_heads, seq, head_dim]`.
    pub fn project_kv(&self, ops: &dyn Ops, x: &Tensor, rope: &Rope, pos: usize) -> Result<(Tensor, Tensor)> {
        self.project_kv_at(ops, x, rope, &QueryPos::Contiguous(pos))
    }

    /// [`Attention::project_kv`] of rows at any positions (the rows of a batch of sequences).
    pub fn project_kv_at(&self, ops: &dyn Ops, x: &Tensor, rope: &Rope, pos: &QueryPos) -> Result<(Tensor, Tensor)> {
        let k = self.split_heads(
            ops,
            &ops.linear(x, &self.k_proj)?,
            self.num_kv_heads,
            self.k_norm.as_ref(),
        )?;
        let k = ops.rope(&k, rope, pos)?;
        let v = self.split_heads(ops, &ops.linear(x, &self.v_proj)?, self.num_kv_heads, None)?;
        Ok((k, v))
    }

    /// Rotated queries of the normed hidden states `x: [seq, hidden]` at `pos`, `[heads, seq, head_dim]`.
    pub fn project_q(&self, ops: &dyn Ops, x: &Tensor, rope: &Rope, pos: &QueryPos) -> Result<Tensor> {
        let q = self.split_heads(ops, &ops.linear(x, &self.q_proj)?, self.num_heads, self.q_norm.as_ref())?;
        ops.rope(&q, rope, pos)
    }

    /// Queries of `x: [seq, hidden]` at `pos..` attend over `k`, `v: [kv_heads, kv_len, head_dim]` (the cache up to
    /// and including these tokens); returns `o_proj` of the result, `[seq, hidden]`. `mask: [seq, kv_len]` is added
    /// to the scores (causal mask in prefill; `None` for a single query, which may see everything).
    #[allow(clippy::too_many_arguments)]
    pub fn attend(
        &self,
        ops: &dyn Ops,
        x: &Tensor,
        rope: &Rope,
        pos: QueryPos,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let q = self.project_q(ops, x, rope, &pos)?;
        let probs = self.probs(ops, &q, k, mask, None)?;
        self.output(ops, &probs.matmul(&v.contiguous()?)?)
    }

    /// Packed attention: the rows of `x: [rows, hidden]` (at `pos`) are split into `blocks`, and each block's
    /// queries attend only over its own range of `k`, `v` — several sequences in one pass, each block one sequence.
    /// The projections see every row at once; only the scores are computed per block. `blocks` partition
    /// `0..rows` in order. Returns `[rows, hidden]`.
    #[allow(clippy::too_many_arguments)]
    pub fn attend_blocks(
        &self,
        ops: &dyn Ops,
        x: &Tensor,
        rope: &Rope,
        pos: QueryPos,
        k: &Tensor,
        v: &Tensor,
        blocks: &[AttnBlock],
    ) -> Result<Tensor> {
        let rows = x.dim(0)?;
        let mut next = 0;
        for b in blocks {
            if b.rows.start != next || b.rows.is_empty() || b.keys.end > k.dim(1)? {
                return Err(crate::Error::Input(format!(
                    "attention blocks must partition the {rows} rows in order, without empty blocks"
                )));
            }
            next = b.rows.end;
        }
        if next != rows {
            return Err(crate::Error::Input(format!(
                "attention blocks cover {next} of {rows} rows"
            )));
        }
        let q = self.project_q(ops, x, rope, &pos)?;
        let outs = blocks
            .iter()
            .map(|b| {
                let q = q.narrow(1, b.rows.start, b.rows.len())?;
                let k = k.narrow(1, b.keys.start, b.keys.len())?;
                let v = v.narrow(1, b.keys.start, b.keys.len())?;
                let out = self
                    .probs(ops, &q, &k, b.mask.as_ref(), None)?
                    .matmul(&v.contiguous()?)?;
                // [kv_heads, group · rows, d] → [heads, rows, d], so that blocks concatenate along the rows.
                Ok(out.reshape((self.num_heads, b.rows.len(), self.head_dim))?)
            })
            .collect::<Result<Vec<_>>>()?;
        let out = Tensor::cat(&outs, 1)?.reshape((
            self.num_kv_heads,
            (self.num_heads / self.num_kv_heads) * rows,
            self.head_dim,
        ))?;
        self.output(ops, &out)
    }

    /// Attention probabilities of queries `q: [heads, seq, head_dim]` over `k`, heads sharing a KV head folded into
    /// rows: `[kv_heads, group · seq, kv_len]`. `diagonal = (eye, own)`: the score of query `i` against key `i`
    /// becomes `own_i` (unscaled, `[kv_heads, group · seq, 1]`; see [`Attention::attend_own_rows`]).
    fn probs(
        &self,
        ops: &dyn Ops,
        q: &Tensor,
        k: &Tensor,
        mask: Option<&Tensor>,
        diagonal: Option<(&Tensor, &Tensor)>,
    ) -> Result<Tensor> {
        let seq = q.dim(1)?;
        let group = self.num_heads / self.num_kv_heads;
        // Heads sharing a KV head are adjacent: fold them into the row dimension instead of repeating K/V.
        let q = q
            .contiguous()?
            .reshape((self.num_kv_heads, group * seq, self.head_dim))?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let mut scores = (q.matmul(&k.t()?)? * scale)?;
        if let Some((eye, own)) = diagonal {
            // scores[i, i] += own_i·scale − scores[i, i]: only the diagonal changes.
            let eye = eye.broadcast_as(scores.shape())?;
            let current = (&scores * &eye)?.sum_keepdim(2)?;
            scores = (&scores + eye.broadcast_mul(&((own * scale)? - current)?)?)?;
        }
        let kv_len = k.dim(1)?;
        let scores = match mask {
            Some(m) => ops
                .add_mask(&scores.reshape((self.num_kv_heads, group, seq, kv_len))?, m)?
                .reshape((self.num_kv_heads, group * seq, kv_len))?,
            None => scores,
        };
        ops.softmax(&scores)
    }

    /// `[kv_heads, group · seq, head_dim]` attention output → `o_proj` of it, `[seq, hidden]`.
    fn output(&self, ops: &dyn Ops, out: &Tensor) -> Result<Tensor> {
        ops.linear(&self.heads(out)?, &self.o_proj)
    }

    /// `[kv_heads, group · seq, head_dim]` attention output → the heads side by side, `[seq, heads · head_dim]`.
    fn heads(&self, out: &Tensor) -> Result<Tensor> {
        let seq = out.dim(1)? / (self.num_heads / self.num_kv_heads);
        Ok(out
            .reshape((self.num_heads, seq, self.head_dim))?
            .transpose(0, 1)?
            .reshape((seq, self.num_heads * self.head_dim))?)
    }

    /// Queries `q: [heads, seq, head_dim]` (from [`Attention::project_q`]) attend over `k`, `v: [kv_heads, kv_len,
    /// head_dim]` with the optional additive `mask: [seq, kv_len]`; returns the heads side by side, `[seq, heads ·
    /// head_dim]`, before `o_proj` (a batch of sequences attends one by one, then shares one `o_proj`).
    pub fn attend_queries(
        &self,
        ops: &dyn Ops,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let probs = self.probs(ops, &q.contiguous()?, k, mask, None)?;
        self.heads(&probs.matmul(&v.contiguous()?)?)
    }

    /// Causal attention of `seq` rows from position 0 in which every row is its own counterfactual: row `i`
    /// attends over the keys and values `k`, `v` of the other rows (`[kv_heads, seq, head_dim]`, e.g. a full-depth
    /// pass's) but over its **own** key and value from `own_k`, `own_v` (same shape). This equals running each row
    /// alone over a cache that holds `k`, `v` for the rows before it, in one pass for all rows (the router labels'
    /// fast path). `x: [seq, hidden]` normed, `mask` the causal mask; returns `o_proj` of the result, `[seq, hidden]`.
    #[allow(clippy::too_many_arguments)]
    pub fn attend_own_rows(
        &self,
        ops: &dyn Ops,
        x: &Tensor,
        rope: &Rope,
        k: &Tensor,
        v: &Tensor,
        own_k: &Tensor,
        own_v: &Tensor,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let seq = x.dim(0)?;
        let group = self.num_heads / self.num_kv_heads;
        let q = self.project_q(ops, x, rope, &QueryPos::Contiguous(0))?;
        // [kv_heads, seq, d] → [kv_heads, group · seq, d], the layout of the folded queries.
        let fold = |t: &Tensor| -> Result<Tensor> {
            Ok(t.unsqueeze(1)?
                .broadcast_as((self.num_kv_heads, group, seq, self.head_dim))?
                .reshape((self.num_kv_heads, group * seq, self.head_dim))?)
        };
        let qf = q.reshape((self.num_kv_heads, group * seq, self.head_dim))?;
        let own = (&qf * fold(own_k)?)?.sum_keepdim(2)?;
        let eye = Tensor::eye(seq, q.dtype(), q.device())?
            .unsqueeze(0)?
            .broadcast_as((group, seq, seq))?
            .reshape((1, group * seq, seq))?;
        let probs = self.probs(ops, &q, k, mask, Some((&eye, &own)))?;
        // Σ_j p_ij v_j with v_i replaced by own_v_i.
        let diag = (&probs * eye.broadcast_as(probs.shape())?)?.sum_keepdim(2)?;
        let out = (probs.matmul(&v.contiguous()?)? + diag.broadcast_mul(&(fold(own_v)? - fold(v)?)?)?)?;
        self.output(ops, &out)
    }
}

/// One block of a packed attention call ([`Attention::attend_blocks`]): query rows `rows` attend over the keys
/// `keys` with the additive `mask: [rows, keys]` (`None`: every key visible).
#[derive(Debug, Clone)]
pub struct AttnBlock {
    pub rows: std::ops::Range<usize>,
    pub keys: std::ops::Range<usize>,
    pub mask: Option<Tensor>,
}

/// The additive causal mask for `seq` new queries at `pos` over `pos + seq` keys: `-inf` where key > query.
pub fn causal_mask(seq: usize, pos: usize, device: &candle_core::Device, dtype: candle_core::DType) -> Result<Tensor> {
    let positions: Vec<usize> = (pos..pos + seq).collect();
    mask_for_rows(&positions, pos + seq, None, device, dtype)
}

/// The additive mask for queries at `positions` over `kv_len` keys: `-inf` where the key comes later than the
/// query, or where `hidden[key]` (keys a skipped token did not write, in the no-skip-KV ablation).
pub fn mask_for_rows(
    positions: &[usize],
    kv_len: usize,
    hidden: Option<&[bool]>,
    device: &candle_core::Device,
    dtype: candle_core::DType,
) -> Result<Tensor> {
    let data: Vec<f32> = positions
        .iter()
        .flat_map(|&p| {
            (0..kv_len).map(move |j| {
                let is_hidden = j != p && hidden.is_some_and(|h| h.get(j).copied().unwrap_or(false));
                if j > p || is_hidden {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Ok(Tensor::from_vec(data, (positions.len(), kv_len), device)?.to_dtype(dtype)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ops::Fused;
    use candle_core::{DType, Device};

    #[test]
    fn row_mask_hides_later_and_hidden_keys() {
        let hidden = [false, true, false, false];
        let m = mask_for_rows(&[1, 3], 4, Some(&hidden), &Device::Cpu, DType::F32)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let inf = f32::NEG_INFINITY;
        assert_eq!(m[0], vec![0., 0., inf, inf], "a token always sees its own key");
        assert_eq!(m[1], vec![0., inf, 0., 0.]);
    }

    #[test]
    fn mask_shape_and_values() {
        let m = causal_mask(2, 3, &Device::Cpu, DType::F32)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(m[0], vec![0., 0., 0., 0., f32::NEG_INFINITY]);
        assert_eq!(m[1], vec![0., 0., 0., 0., 0.]);
    }

    /// Grouped-query attention equals the plain per-head computation with repeated K/V.
    #[test]
    fn gqa_matches_per_head_reference() {
        let dev = Device::Cpu;
        let (hidden, heads, kv_heads, hd, seq) = (8, 4, 2, 4, 3);
        let lin = |o: usize, i: usize| Linear::dense(Tensor::rand(-0.5f32, 0.5, (o, i), &dev).unwrap(), None);
        let attn = Attention {
            q_proj: lin(heads * hd, hidden),
            k_proj: lin(kv_heads * hd, hidden),
            v_proj: lin(kv_heads * hd, hidden),
            // Identity output projection, so the result is the concatenated heads.
            o_proj: Linear::dense(Tensor::eye(heads * hd, DType::F32, &dev).unwrap(), None),
            q_norm: None,
            k_norm: None,
            num_heads: heads,
            num_kv_heads: kv_heads,
            head_dim: hd,
        };
        let rope = Rope::new(hd, 10_000.0, 16, DType::F32, &dev).unwrap();
        let x = Tensor::rand(-1f32, 1., (seq, hidden), &dev).unwrap();
        let (k, v) = attn.project_kv(&Fused, &x, &rope, 0).unwrap();
        let mask = causal_mask(seq, 0, &dev, DType::F32).unwrap();
        let got = attn
            .attend(&Fused, &x, &rope, QueryPos::Contiguous(0), &k, &v, Some(&mask))
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();

        let q = attn
            .split_heads(&Fused, &attn.q_proj.forward(&x).unwrap(), heads, None)
            .unwrap();
        let q = rope.apply(&q, 0).unwrap().to_vec3::<f32>().unwrap();
        let (k, v) = (k.to_vec3::<f32>().unwrap(), v.to_vec3::<f32>().unwrap());
        for h in 0..heads {
            let kh = h / (heads / kv_heads);
            for t in 0..seq {
                let scores: Vec<f32> = (0..=t)
                    .map(|j| (0..hd).map(|d| q[h][t][d] * k[kh][j][d]).sum::<f32>() / (hd as f32).sqrt())
                    .collect();
                let mx = scores.iter().cloned().fold(f32::MIN, f32::max);
                let e: Vec<f32> = scores.iter().map(|s| (s - mx).exp()).collect();
                let z: f32 = e.iter().sum();
                for d in 0..hd {
                    let want: f32 = (0..=t).map(|j| e[j] / z * v[kh][j][d]).sum();
                    let g = got[t][h * hd + d];
                    assert!((g - want).abs() < 1e-5, "head {h} t {t} d {d}: {g} vs {want}");
                }
            }
        }
    }
}
