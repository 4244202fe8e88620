//! One pre-norm decoder layer: `h = x + attn(norm(x)); out = h + mlp(norm(h))`.

use super::attention::Attention;
use super::mlp::Mlp;
use super::norm::RmsNorm;
use super::ForwardCtx;
use crate::cache::KvCache;
use crate::error::Result;
use candle_core::Tensor;

#[derive(Debug)]
pub struct DecoderLayer {
    pub layer_idx: usize,
    pub input_layernorm: RmsNorm,
    pub self_attn: Attention,
    pub post_attention_layernorm: RmsNorm,
    pub mlp: Mlp,
}

impl DecoderLayer {
    /// The full layer on `x: [seq, hidden]`; writes this layer's K/V for the new positions into `cache`.
    pub fn forward(&self, x: &Tensor, ctx: &ForwardCtx, cache: &mut KvCache) -> Result<Tensor> {
        let normed = self.input_layernorm.forward(x)?;
        let (k, v) = self.self_attn.project_kv(&normed, ctx.rope, ctx.pos)?;
        cache.write(self.layer_idx, ctx.pos, &k, &v)?;
        let (k_all, v_all) = cache.view(self.layer_idx, ctx.pos + ctx.seq_len)?;
        let attn = self.self_attn.attend(
            &normed,
            ctx.rope,
            ctx.pos,
            &k_all,
            &v_all,
            ctx.mask.as_ref(),
        )?;
        let h = (x + attn)?;
        let mlp = self
            .mlp
            .forward(&self.post_attention_layernorm.forward(&h)?)?;
        Ok((h + mlp)?)
    }
}
