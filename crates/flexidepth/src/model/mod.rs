//! The decoder stack (Llama, Qwen2, Qwen3), with a struct tree that mirrors the HF checkpoint's key tree:
//! `model.layers.{i}.self_attn.q_proj.weight` is `Model::layers[i].self_attn.q_proj`.

pub mod attention;
pub mod embedding;
pub mod layer;
pub mod linear;
pub mod mlp;
pub mod norm;
pub mod rope;

use crate::cache::KvCache;
use crate::config::{Arch, ModelConfig};
use crate::depth::{Adapter, DepthSettings, Router};
use crate::error::{Error, Result};
use crate::weights::WeightSource;
use attention::Attention;
use candle_core::{DType, Device, Tensor};
use embedding::Embedding;
use layer::{DecoderLayer, LayerRouting};
use linear::Linear;
use mlp::Mlp;
use norm::RmsNorm;
use rope::Rope;

/// How weights are held and computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    /// Dequantize everything to f32 (the reference path).
    F32,
    /// Keep GGUF quantized blocks for the linear layers; activations in f32.
    Quantized,
}

impl std::str::FromStr for WeightFormat {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(WeightFormat::F32),
            "q" | "quantized" => Ok(WeightFormat::Quantized),
            other => Err(Error::Input(format!("unknown --dtype '{other}' (use f32 or q)"))),
        }
    }
}

/// What a forward pass needs besides the hidden states, threaded through every layer.
pub struct ForwardCtx<'a> {
    /// Position of the first new token.
    pub pos: usize,
    /// Number of new tokens.
    pub seq_len: usize,
    pub rope: &'a Rope,
    /// `[seq_len, pos + seq_len]`, `None` for a single token.
    pub mask: Option<Tensor>,
    /// How routed layers decide (ignored by unrouted ones).
    pub depth: DepthSettings,
}

/// Logits plus what the routed layers decided.
#[derive(Debug)]
pub struct ForwardOutput {
    pub logits: Tensor,
    /// One entry per routed layer, in layer order; empty for a model without routers.
    pub routing: Vec<LayerRouting>,
}

/// Which positions' logits a forward pass returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// Only the last position (generation): `[1, vocab]`.
    Last,
    /// Every position (perplexity, scoring): `[seq, vocab]`.
    All,
}

#[derive(Debug)]
pub struct Model {
    pub config: ModelConfig,
    pub embed_tokens: Embedding,
    pub layers: Vec<DecoderLayer>,
    pub norm: RmsNorm,
    /// `[vocab, hidden]`; the embedding itself when tied.
    pub lm_head: Linear,
    /// Settings used by [`Model::forward`]; [`Model::forward_with`] takes its own.
    pub depth_settings: DepthSettings,
    /// Layers removed outright (static pruning, ShortGPT/LaCo-style baselines): never run, no K/V.
    pub pruned_layers: Vec<usize>,
    /// How the weights are held; attached FlexiDepth parts follow it.
    pub format: WeightFormat,
    rope: Rope,
    device: Device,
}

impl Model {
    /// Build the model from `weights`, checking every tensor's shape against `config`.
    pub fn load(config: &ModelConfig, weights: &WeightSource, format: WeightFormat, device: &Device) -> Result<Self> {
        let c = config;
        let dt = DType::F32;
        let quant = format == WeightFormat::Quantized;
        let (h, hd) = (c.hidden_size, c.head_dim);
        let (q_out, kv_out) = (c.num_attention_heads * hd, c.num_key_value_heads * hd);
        let linear = |name: &str, out: usize, inp: usize, bias: bool| -> Result<Linear> {
            let w = weights.stored(&format!("{name}.weight"), &[out, inp], device)?;
            let b = if bias {
                Some(weights.dense(&format!("{name}.bias"), &[out], dt, device)?)
            } else {
                None
            };
            Linear::from_stored(w, b, dt, quant, device)
        };
        let norm = |name: &str, dim: usize| -> Result<RmsNorm> {
            Ok(RmsNorm::new(
                weights.dense(&format!("{name}.weight"), &[dim], dt, device)?,
                c.rms_norm_eps,
            ))
        };

        let embed_stored = weights.stored("model.embed_tokens.weight", &[c.vocab_size, h], device)?;
        // The quantized path keeps the table in blocks (rows dequantized on lookup), shared with a tied lm_head.
        let embed_tokens = match embed_stored {
            crate::weights::StoredTensor::Blocks(raw) if quant && device.is_cpu() => match raw.into_matrix()? {
                Some(matrix) => Embedding::Packed(std::sync::Arc::new(matrix)),
                None => return Err(Error::Unsupported("an embedding table that is not whole blocks".into())),
            },
            other => Embedding::Dense(other.to_dense(dt, device)?),
        };
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for layer_idx in 0..c.num_hidden_layers {
            let p = format!("model.layers.{layer_idx}");
            let (q_norm, k_norm) = if c.arch == Arch::Qwen3 {
                (
                    Some(norm(&format!("{p}.self_attn.q_norm"), hd)?),
                    Some(norm(&format!("{p}.self_attn.k_norm"), hd)?),
                )
            } else {
                (None, None)
            };
            layers.push(DecoderLayer {
                layer_idx,
                input_layernorm: norm(&format!("{p}.input_layernorm"), h)?,
                self_attn: Attention {
                    q_proj: linear(&format!("{p}.self_attn.q_proj"), q_out, h, c.attention_bias)?,
                    k_proj: linear(&format!("{p}.self_attn.k_proj"), kv_out, h, c.attention_bias)?,
                    v_proj: linear(&format!("{p}.self_attn.v_proj"), kv_out, h, c.attention_bias)?,
                    o_proj: linear(&format!("{p}.self_attn.o_proj"), h, q_out, false)?,
                    q_norm,
                    k_norm,
                    num_heads: c.num_attention_heads,
                    num_kv_heads: c.num_key_value_heads,
                    head_dim: hd,
                },
                post_attention_layernorm: norm(&format!("{p}.post_attention_layernorm"), h)?,
                mlp: Mlp {
                    gate_proj: linear(&format!("{p}.mlp.gate_proj"), c.intermediate_size, h, false)?,
                    up_proj: linear(&format!("{p}.mlp.up_proj"), c.intermediate_size, h, false)?,
                    down_proj: linear(&format!("{p}.mlp.down_proj"), h, c.intermediate_size, false)?,
                },
                router: None,
                router_proj: None,
            });
        }
        // Some checkpoints store lm_head even when tied; the tie flag decides. A tied f32 head shares the
        // embedding tensor instead of holding a second copy.
        let lm_head = match (&embed_tokens, c.tie_word_embeddings) {
            (Embedding::Dense(t), true) => Linear::dense(t.clone(), None),
            (Embedding::Packed(m), true) => Linear::packed(m.clone(), None),
            (_, false) => linear("lm_head", c.vocab_size, h, false)?,
        };
        Ok(Model {
            config: c.clone(),
            embed_tokens,
            layers,
            norm: norm("model.norm", h)?,
            lm_head,
            depth_settings: DepthSettings::default(),
            pruned_layers: Vec::new(),
            format,
            rope: Rope::new(hd, c.rope_theta, c.max_position_embeddings, dt, device)?,
            device: device.clone(),
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn rope(&self) -> &Rope {
        &self.rope
    }

    /// Hidden states `[seq, hidden]` of a fresh prefill of `ids` after the layers before `end`, routers off.
    /// Training runs the frozen layers below the first routed one through here: no variables, so no graph.
    pub fn hidden_after(&self, ids: &[u32], end: usize) -> Result<Tensor> {
        if let Some(&bad) = ids.iter().find(|&&t| t as usize >= self.config.vocab_size) {
            return Err(Error::Input(format!(
                "token id {bad} is outside the vocabulary ({})",
                self.config.vocab_size
            )));
        }
        let x = self.embed_tokens.forward(ids, &self.device)?;
        self.run_plain(x, 0..end)
    }

    /// Logits `[seq, vocab]` of hidden states `x` (positions `0..seq`) continued through layers `start..` at full
    /// depth, routers off: the frozen teacher of distillation.
    pub fn logits_from(&self, x: Tensor, start: usize) -> Result<Tensor> {
        let x = self.run_plain(x, start..self.layers.len())?;
        self.lm_head.forward(&self.norm.forward(&x)?)
    }

    fn run_plain(&self, mut x: Tensor, layers: std::ops::Range<usize>) -> Result<Tensor> {
        let seq_len = x.dim(0)?;
        let mut cache = self.new_cache(seq_len);
        cache.reserve(seq_len)?;
        let mask = if seq_len > 1 {
            Some(attention::causal_mask(seq_len, 0, &self.device, DType::F32)?)
        } else {
            None
        };
        let ctx = ForwardCtx {
            pos: 0,
            seq_len,
            rope: &self.rope,
            mask,
            depth: DepthSettings {
                mode: crate::depth::DepthMode::Off,
                ..DepthSettings::default()
            },
        };
        for layer in &self.layers[layers] {
            if !self.pruned_layers.contains(&layer.layer_idx) {
                x = layer.forward(&x, &ctx, &mut cache)?.0;
            }
        }
        Ok(x)
    }

    /// A KV cache for this model holding up to `max_len` positions (at most the context window).
    pub fn new_cache(&self, max_len: usize) -> KvCache {
        KvCache::new(
            &self.config,
            max_len.min(self.config.max_position_embeddings),
            DType::F32,
            &self.device,
        )
    }

    /// Give routed layers their router and adapter (FlexiDepth). Layers not listed stay plain. In the quantized
    /// path the adapter and the router's input projection are stored as Q8_0, so that a skipped layer reads few
    /// bytes (an f32 adapter would cost a third of a Q4_1 layer).
    pub fn attach_depth(&mut self, parts: Vec<(usize, Router, Adapter)>) -> Result<()> {
        for (layer_idx, mut router, mut adapter) in parts {
            if self.format == WeightFormat::Quantized {
                router.router_enc = router.router_enc.into_q8()?;
                adapter.gate_proj = adapter.gate_proj.into_q8()?;
                adapter.down_proj = adapter.down_proj.into_q8()?;
                adapter.up_proj = adapter.up_proj.into_q8()?;
            }
            let n = self.layers.len();
            let layer = self.layers.get_mut(layer_idx).ok_or_else(|| {
                Error::Input(format!(
                    "routed layer {layer_idx} does not exist (the model has {n} layers)"
                ))
            })?;
            layer.router = Some(router);
            layer.router_proj = Some(adapter);
        }
        Ok(())
    }

    /// Remove every router and adapter: the plain base model again.
    pub fn detach_depth(&mut self) {
        for layer in &mut self.layers {
            layer.router = None;
            layer.router_proj = None;
        }
    }

    /// ShortGPT's block influence of every layer on `ids`: `1 − mean cos(x_in, x_out)` over the tokens. Layers that
    /// barely change the hidden state score low and are the first candidates for removal.
    pub fn block_influence(&self, ids: &[u32]) -> Result<Vec<f64>> {
        let mut cache = self.new_cache(ids.len());
        cache.reserve(ids.len())?;
        let mut x = self.embed_tokens.forward(ids, &self.device)?;
        let ctx = ForwardCtx {
            pos: 0,
            seq_len: ids.len(),
            rope: &self.rope,
            mask: (ids.len() > 1)
                .then(|| attention::causal_mask(ids.len(), 0, &self.device, DType::F32))
                .transpose()?,
            depth: DepthSettings {
                mode: crate::depth::DepthMode::Run,
                ..DepthSettings::default()
            },
        };
        let mut out = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            let (y, _) = layer.forward(&x, &ctx, &mut cache)?;
            let dot = (&x * &y)?.sum(1)?;
            let norms = (x.sqr()?.sum(1)?.sqrt()? * y.sqr()?.sum(1)?.sqrt()?)?;
            let cos = (dot / norms)?.mean_all()?.to_scalar::<f32>()?;
            out.push(1.0 - cos as f64);
            x = y;
        }
        Ok(out)
    }

    /// Bytes of weights a token reads in each layer: `(full path, skip path)`; the skip path (K/V, router,
    /// adapter) only exists on routed layers. Decode is memory-bound, so these bound what skipping can save.
    pub fn layer_weight_bytes(&self) -> Vec<(usize, Option<usize>)> {
        self.layers
            .iter()
            .map(|l| {
                let a = &l.self_attn;
                let kv = a.k_proj.weight_bytes() + a.v_proj.weight_bytes();
                let m = &l.mlp;
                let mlp = m.gate_proj.weight_bytes() + m.up_proj.weight_bytes() + m.down_proj.weight_bytes();
                let router = l.router.as_ref().map_or(0, |r| {
                    r.router_enc.weight_bytes() + r.router_dec.weight_bytes() + r.router_head.weight_bytes()
                });
                let full = kv + a.q_proj.weight_bytes() + a.o_proj.weight_bytes() + mlp + router;
                let skip = l.router_proj.as_ref().map(|ad| {
                    kv + router + ad.gate_proj.weight_bytes() + ad.down_proj.weight_bytes() + ad.up_proj.weight_bytes()
                });
                (full, skip)
            })
            .collect()
    }

    /// Bytes read per token outside the layers: the output head (and one embedding row).
    pub fn head_weight_bytes(&self) -> usize {
        self.lm_head.weight_bytes() + self.embed_tokens.storage_bytes() / self.config.vocab_size.max(1)
    }

    /// Indices of the layers that have a router.
    pub fn routed_layers(&self) -> Vec<usize> {
        self.layers
            .iter()
            .filter(|l| l.router.is_some())
            .map(|l| l.layer_idx)
            .collect()
    }

    /// Embed `ids`, run them through every layer at the cache's next position, and return their logits
    /// (routed layers decide with [`Model::depth_settings`]).
    pub fn forward(&self, ids: &[u32], cache: &mut KvCache, logits: Logits) -> Result<Tensor> {
        Ok(self.forward_with(ids, cache, logits, &self.depth_settings)?.logits)
    }

    /// [`Model::forward`] with explicit depth settings, returning the routing decisions too.
    pub fn forward_with(
        &self,
        ids: &[u32],
        cache: &mut KvCache,
        logits: Logits,
        depth: &DepthSettings,
    ) -> Result<ForwardOutput> {
        if ids.is_empty() {
            return Err(Error::Input("cannot run the model on zero tokens".into()));
        }
        if let Some(&bad) = ids.iter().find(|&&t| t as usize >= self.config.vocab_size) {
            return Err(Error::Input(format!(
                "token id {bad} is outside the vocabulary ({})",
                self.config.vocab_size
            )));
        }
        let pos = cache.len();
        let seq_len = ids.len();
        cache.reserve(pos + seq_len)?;
        let mut x = self.embed_tokens.forward(ids, &self.device)?;
        let mask = if seq_len > 1 {
            Some(attention::causal_mask(seq_len, pos, &self.device, DType::F32)?)
        } else {
            None
        };
        let ctx = ForwardCtx {
            pos,
            seq_len,
            rope: &self.rope,
            mask,
            depth: *depth,
        };
        let mut routing = Vec::new();
        for layer in &self.layers {
            if self.pruned_layers.contains(&layer.layer_idx) {
                continue;
            }
            let (y, decided) = layer.forward(&x, &ctx, cache)?;
            x = y;
            routing.extend(decided);
        }
        cache.set_len(pos + seq_len);
        let x = match logits {
            Logits::Last => x.narrow(0, seq_len - 1, 1)?,
            Logits::All => x,
        };
        Ok(ForwardOutput {
            logits: self.lm_head.forward(&self.norm.forward(&x)?)?,
            routing,
        })
    }
}
