//! The KV cache, kept outside the model: one pre-allocated `[kv_heads, capacity, head_dim]` buffer per layer,
//! written in place (no per-step concatenation) and grown by doubling up to the context window.
//! `truncate` rolls back, which speculative and multi-token decoding need.

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor};

pub struct KvCache {
    /// Per layer `(k, v)`, each `[kv_heads, capacity, head_dim]`; allocated on first use.
    layers: Vec<Option<(Tensor, Tensor)>>,
    /// Per layer, positions whose K/V must not be attended to (FlexiDepth's no-skip-KV ablation); empty when none.
    hidden: Vec<Vec<bool>>,
    len: usize,
    capacity: usize,
    max_len: usize,
    num_kv_heads: usize,
    head_dim: usize,
    dtype: DType,
    device: Device,
}

impl KvCache {
    /// An empty cache for `config` holding at most `max_len` positions.
    pub fn new(config: &ModelConfig, max_len: usize, dtype: DType, device: &Device) -> Self {
        KvCache {
            layers: (0..config.num_hidden_layers).map(|_| None).collect(),
            hidden: vec![Vec::new(); config.num_hidden_layers],
            len: 0,
            capacity: 0,
            max_len,
            num_kv_heads: config.num_key_value_heads,
            head_dim: config.head_dim,
            dtype,
            device: device.clone(),
        }
    }

    /// Positions filled so far (the position of the next token).
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn max_len(&self) -> usize {
        self.max_len
    }
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Make room for `total` positions, growing the buffers (amortised doubling) and keeping their contents.
    pub fn reserve(&mut self, total: usize) -> Result<()> {
        if total > self.max_len {
            return Err(Error::ContextOverflow {
                tokens: total,
                context: self.max_len,
            });
        }
        if total <= self.capacity {
            return Ok(());
        }
        let new_cap = total.max(self.capacity * 2).max(64).min(self.max_len);
        let shape = (self.num_kv_heads, new_cap, self.head_dim);
        for slot in self.layers.iter_mut() {
            let k = Tensor::zeros(shape, self.dtype, &self.device)?;
            let v = Tensor::zeros(shape, self.dtype, &self.device)?;
            if let Some((old_k, old_v)) = slot.as_ref() {
                if self.len > 0 {
                    // A narrow along the position axis of several KV heads is strided; slice_set wants it packed.
                    k.slice_set(&old_k.narrow(1, 0, self.len)?.contiguous()?, 1, 0)?;
                    v.slice_set(&old_v.narrow(1, 0, self.len)?.contiguous()?, 1, 0)?;
                }
            }
            *slot = Some((k, v));
        }
        self.capacity = new_cap;
        Ok(())
    }

    /// Write `k`, `v: [kv_heads, seq, head_dim]` of layer `layer_idx` at positions `pos..pos+seq`.
    /// Call [`Self::reserve`] first; [`Self::set_len`] once every layer has written.
    pub fn write(&mut self, layer_idx: usize, pos: usize, k: &Tensor, v: &Tensor) -> Result<()> {
        let seq = k.dim(1)?;
        if pos + seq > self.capacity {
            return Err(Error::Input(format!(
                "KV cache write at {pos}+{seq} past its capacity {}",
                self.capacity
            )));
        }
        let (ck, cv) = self.layers[layer_idx]
            .as_ref()
            .ok_or_else(|| Error::Input("KV cache not reserved".into()))?;
        ck.slice_set(&k.to_dtype(self.dtype)?, 1, pos)?;
        cv.slice_set(&v.to_dtype(self.dtype)?, 1, pos)?;
        // Fresh K/V are visible, whatever an earlier (rolled-back) write at these positions said.
        let hidden = &mut self.hidden[layer_idx];
        if hidden.len() > pos {
            let end = (pos + seq).min(hidden.len());
            hidden[pos..end].iter_mut().for_each(|h| *h = false);
        }
        Ok(())
    }

    /// Hide position `pos` of layer `layer_idx` from later queries (its K/V count as not written).
    pub fn hide(&mut self, layer_idx: usize, pos: usize) {
        let hidden = &mut self.hidden[layer_idx];
        if hidden.len() <= pos {
            hidden.resize(pos + 1, false);
        }
        hidden[pos] = true;
    }

    /// Hidden positions of layer `layer_idx` among `0..len`, if any is hidden.
    pub fn hidden(&self, layer_idx: usize, len: usize) -> Option<&[bool]> {
        let h = &self.hidden[layer_idx];
        let h = &h[..h.len().min(len)];
        h.contains(&true).then_some(h)
    }

    /// Keys and values of layer `layer_idx` for positions `0..len`, `[kv_heads, len, head_dim]` (views, no copy).
    pub fn view(&self, layer_idx: usize, len: usize) -> Result<(Tensor, Tensor)> {
        let (ck, cv) = self.layers[layer_idx]
            .as_ref()
            .ok_or_else(|| Error::Input("KV cache not reserved".into()))?;
        Ok((ck.narrow(1, 0, len)?, cv.narrow(1, 0, len)?))
    }

    /// Mark `len` positions as filled (after a forward pass wrote them).
    pub fn set_len(&mut self, len: usize) {
        debug_assert!(len <= self.capacity);
        self.len = len.min(self.capacity);
    }

    /// Forget positions from `len` on (rollback); the buffers stay allocated.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Forget everything.
    pub fn clear(&mut self) {
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Arch;

    fn cfg() -> ModelConfig {
        ModelConfig {
            arch: Arch::Llama,
            vocab_size: 10,
            hidden_size: 8,
            intermediate_size: 16,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            num_key_value_heads: 1,
            head_dim: 4,
            rms_norm_eps: 1e-5,
            rope_theta: 1e4,
            max_position_embeddings: 512,
            tie_word_embeddings: true,
            attention_bias: false,
            bos_token_id: None,
            eos_token_ids: vec![],
        }
    }

    fn kv(seq: usize, start: f32) -> Tensor {
        let data: Vec<f32> = (0..seq * 4).map(|i| start + i as f32).collect();
        Tensor::from_vec(data, (1, seq, 4), &Device::Cpu).unwrap()
    }

    #[test]
    fn append_grow_truncate() {
        let mut c = KvCache::new(&cfg(), 200, DType::F32, &Device::Cpu);
        c.reserve(3).unwrap();
        for l in 0..2 {
            c.write(l, 0, &kv(3, 0.), &kv(3, 100.)).unwrap();
        }
        c.set_len(3);
        // Growing past the first allocation keeps what was written.
        c.reserve(100).unwrap();
        assert!(c.capacity() >= 100);
        for l in 0..2 {
            c.write(l, 3, &kv(1, 12.), &kv(1, 112.)).unwrap();
        }
        c.set_len(4);
        let (k, v) = c.view(1, 4).unwrap();
        assert_eq!(
            k.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            (0..16).map(|i| i as f32).collect::<Vec<_>>()
        );
        assert_eq!(
            v.get(0).unwrap().get(3).unwrap().to_vec1::<f32>().unwrap(),
            vec![112., 113., 114., 115.]
        );
        c.truncate(2);
        assert_eq!(c.len(), 2);
        c.truncate(10);
        assert_eq!(c.len(), 2, "truncate never extends");
    }

    #[test]
    fn growing_keeps_every_kv_head() {
        let config = ModelConfig {
            num_key_value_heads: 3,
            ..cfg()
        };
        let kv3 = |seq: usize, start: f32| -> Tensor {
            let data: Vec<f32> = (0..3 * seq * 4).map(|i| start + i as f32).collect();
            Tensor::from_vec(data, (3, seq, 4), &Device::Cpu).unwrap()
        };
        let mut c = KvCache::new(&config, 512, DType::F32, &Device::Cpu);
        c.reserve(64).unwrap();
        for l in 0..2 {
            c.write(l, 0, &kv3(64, 0.), &kv3(64, 1000.)).unwrap();
        }
        c.set_len(64);
        c.reserve(65).unwrap();
        assert!(c.capacity() >= 128);
        let (k, v) = c.view(0, 64).unwrap();
        assert_eq!(k.to_vec3::<f32>().unwrap(), kv3(64, 0.).to_vec3::<f32>().unwrap());
        assert_eq!(v.to_vec3::<f32>().unwrap(), kv3(64, 1000.).to_vec3::<f32>().unwrap());
    }

    #[test]
    fn hidden_positions_are_cleared_by_a_rewrite() {
        let mut c = KvCache::new(&cfg(), 16, DType::F32, &Device::Cpu);
        c.reserve(4).unwrap();
        assert!(c.hidden(0, 4).is_none());
        c.hide(0, 2);
        assert_eq!(c.hidden(0, 4), Some(&[false, false, true][..]));
        assert!(c.hidden(1, 4).is_none(), "per layer");
        assert!(c.hidden(0, 2).is_none(), "only within the asked length");
        c.write(0, 2, &kv(1, 0.), &kv(1, 0.)).unwrap();
        assert!(c.hidden(0, 4).is_none());
    }

    #[test]
    fn overflow_is_an_error() {
        let mut c = KvCache::new(&cfg(), 8, DType::F32, &Device::Cpu);
        assert!(matches!(
            c.reserve(9),
            Err(Error::ContextOverflow { tokens: 9, context: 8 })
        ));
        c.reserve(8).unwrap();
        assert_eq!(c.capacity(), 8);
    }
}
