//! The decoder stack (Llama, Qwen2, Qwen3), with a struct tree that mirrors the HF checkpoint's key tree:
//! `model.layers.{i}.self_attn.q_proj.weight` is `Model::layers[i].self_attn.q_proj`.

pub mod adapter;
pub mod attention;
pub mod batch;
pub mod embedding;
pub mod invariant;
pub mod keys;
pub mod layer;
pub mod linear;
pub mod mlp;
pub mod norm;
pub mod ops;
pub mod plan;
pub mod rope;
pub mod router;

use crate::cache::KvCache;
use crate::config::{Arch, ModelConfig};
use crate::error::{Error, Result};
use crate::weights::WeightSource;
pub use adapter::Adapter;
use attention::Attention;
pub use batch::{BatchOutput, BatchRow};
use candle_core::{DType, Device, Tensor};
use embedding::Embedding;
pub use invariant::RowInvariant;
use keys::LayerKey;
use layer::DecoderLayer;
use linear::Linear;
use mlp::Mlp;
use norm::RmsNorm;
use ops::{Fused, Ops};
use plan::{DepthPolicy, ExecutedPlan, FullDepth, LayerBytes, LayerInput, LayerPlan, LayerRecord, RecordKind};
use rope::Rope;
pub use router::Router;
use std::ops::Range;

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
            other => Err(Error::Input(format!("unknown weight format '{other}' (use f32 or q)"))),
        }
    }
}

/// What a forward pass needs besides the hidden states, threaded through every layer.
pub struct ForwardCtx<'a> {
    /// Position of the first new token.
    pub pos: usize,
    /// Number of new tokens (all rows, packed sequences together).
    pub seq_len: usize,
    pub rope: &'a Rope,
    /// `[seq_len, pos + seq_len]`, `None` for a single token (and for packed sequences, which have their own).
    pub mask: Option<Tensor>,
    /// Several sequences packed into the rows (a training batch); `None` for one sequence.
    pub packed: Option<Packed>,
    /// Cache slot of the first row: `pos`, except for one row whose K/V go to another slot than its position
    /// (DMTD's shadow history, spec B4.6: thinking layers keep prompt and heads in contiguous slots, rotated at
    /// their true positions). See [`ForwardCtx::at_slot`].
    pub slot: usize,
}

/// Sequences packed one after another into the rows of one pass without a KV cache, each from position 0: a row
/// attends only within its own sequence and is rotated at its position there, so the pass equals one pass per
/// sequence while every projection and MLP sees all the rows at once.
#[derive(Debug, Clone)]
pub struct Packed {
    /// The rows of each sequence, in order, covering the rows.
    pub seqs: Vec<Range<usize>>,
    /// `[rows]` u32: each row's position in its sequence.
    pub row_pos: Tensor,
    /// Each sequence's causal mask `[len, len]` (`None` for a sequence of one row).
    pub masks: Vec<Option<Tensor>>,
}

impl<'a> ForwardCtx<'a> {
    /// The context of `seq_len` rows starting at `pos`, with its causal mask.
    pub fn new(model: &'a Model, pos: usize, seq_len: usize) -> Result<Self> {
        let mask = if seq_len > 1 {
            Some(attention::causal_mask(seq_len, pos, &model.device, DType::F32)?)
        } else {
            None
        };
        Ok(ForwardCtx {
            pos,
            seq_len,
            rope: &model.rope,
            mask,
            packed: None,
            slot: pos,
        })
    }

    /// The context of one row at position `pos` whose K/V are written at cache slot `slot` and which attends over
    /// slots `0..=slot` (every key visible: slots hold earlier positions only). Only DMTD's shadow history uses it.
    ///
    /// # Errors
    /// [`Error::Input`] when `slot > pos` (a slot ahead of its position would hold keys from the future).
    pub fn at_slot(model: &'a Model, pos: usize, slot: usize) -> Result<Self> {
        if slot > pos {
            return Err(Error::Input(format!("cache slot {slot} is past position {pos}")));
        }
        Ok(ForwardCtx {
            slot,
            ..ForwardCtx::new(model, pos, 1)?
        })
    }

    /// The context of sequences of `lens` rows packed one after another, each from position 0 (a pass without a
    /// cache). One sequence is the plain context of [`ForwardCtx::new`].
    pub fn packed(model: &'a Model, lens: &[usize]) -> Result<Self> {
        if lens.is_empty() || lens.contains(&0) {
            return Err(Error::Input("packed sequences must each have a row".into()));
        }
        let rows: usize = lens.iter().sum();
        if lens.len() == 1 {
            return ForwardCtx::new(model, 0, rows);
        }
        if let Some(&long) = lens.iter().find(|&&l| l > model.rope.max_pos()) {
            return Err(Error::Input(format!(
                "a sequence of {long} tokens is longer than the context window ({})",
                model.rope.max_pos()
            )));
        }
        let mut seqs = Vec::with_capacity(lens.len());
        let mut masks: Vec<Option<Tensor>> = Vec::with_capacity(lens.len());
        let mut by_len: std::collections::HashMap<usize, Tensor> = std::collections::HashMap::new();
        let mut start = 0;
        for &len in lens {
            seqs.push(start..start + len);
            start += len;
            masks.push(if len > 1 {
                Some(match by_len.get(&len) {
                    Some(m) => m.clone(),
                    None => {
                        let m = attention::causal_mask(len, 0, &model.device, DType::F32)?;
                        by_len.insert(len, m.clone());
                        m
                    }
                })
            } else {
                None
            });
        }
        let row_pos: Vec<u32> = lens.iter().flat_map(|&len| 0..len as u32).collect();
        Ok(ForwardCtx {
            pos: 0,
            seq_len: rows,
            rope: &model.rope,
            mask: None,
            packed: Some(Packed {
                seqs,
                row_pos: Tensor::new(row_pos, &model.device)?,
                masks,
            }),
            slot: 0,
        })
    }
}

/// Logits plus what each layer did.
#[derive(Debug)]
pub struct ForwardOutput {
    pub logits: Tensor,
    /// The executed plan of every layer reached (costs: [`ExecutedPlan::layers_used`]).
    pub plan: ExecutedPlan,
    /// The routers' gate tensors `[rows]`, one per routed layer in layer order (in the graph when training).
    pub gates: Vec<Tensor>,
}

/// What a routed layer decided for each row of a forward pass (the routed records of [`ForwardOutput::plan`]).
#[derive(Debug, Clone, PartialEq)]
pub struct LayerRouting {
    pub layer_idx: usize,
    pub gates: Vec<f32>,
    /// Whether the row ran the whole layer.
    pub run: Vec<bool>,
}

impl ForwardOutput {
    /// Gates and run/skip per routed layer, in layer order; empty for a pass without routers.
    pub fn routing(&self) -> Vec<LayerRouting> {
        self.plan
            .routed()
            .map(|r| LayerRouting {
                layer_idx: r.layer_idx,
                gates: r.gates.clone().unwrap_or_default(),
                run: (0..self.plan.rows)
                    .map(|row| r.step(row).is_some_and(|s| s.is_full()))
                    .collect(),
            })
            .collect()
    }
}

/// Hidden states after a range of layers ([`Model::run_layers`]).
#[derive(Debug)]
pub struct LayersOutput {
    /// `[rows, hidden]`
    pub hidden: Tensor,
    pub plan: ExecutedPlan,
    /// Gate tensors of the routed layers run, in layer order.
    pub gates: Vec<Tensor>,
    /// The policy exited before the end of the range.
    pub exited: bool,
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

        let embed_stored = weights.stored(keys::EMBED_TOKENS, &[c.vocab_size, h], device)?;
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
            let (q_norm, k_norm) = if c.arch == Arch::Qwen3 {
                (
                    Some(norm(&LayerKey::QNorm.module(layer_idx), hd)?),
                    Some(norm(&LayerKey::KNorm.module(layer_idx), hd)?),
                )
            } else {
                (None, None)
            };
            layers.push(DecoderLayer {
                layer_idx,
                input_layernorm: norm(&LayerKey::InputLayernorm.module(layer_idx), h)?,
                self_attn: Attention {
                    q_proj: linear(&LayerKey::QProj.module(layer_idx), q_out, h, c.attention_bias)?,
                    k_proj: linear(&LayerKey::KProj.module(layer_idx), kv_out, h, c.attention_bias)?,
                    v_proj: linear(&LayerKey::VProj.module(layer_idx), kv_out, h, c.attention_bias)?,
                    o_proj: linear(&LayerKey::OProj.module(layer_idx), h, q_out, false)?,
                    q_norm,
                    k_norm,
                    num_heads: c.num_attention_heads,
                    num_kv_heads: c.num_key_value_heads,
                    head_dim: hd,
                },
                post_attention_layernorm: norm(&LayerKey::PostAttentionLayernorm.module(layer_idx), h)?,
                mlp: Mlp {
                    gate_proj: linear(&LayerKey::GateProj.module(layer_idx), c.intermediate_size, h, false)?,
                    up_proj: linear(&LayerKey::UpProj.module(layer_idx), c.intermediate_size, h, false)?,
                    down_proj: linear(&LayerKey::DownProj.module(layer_idx), h, c.intermediate_size, false)?,
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
            (_, false) => linear(keys::LM_HEAD.trim_end_matches(".weight"), c.vocab_size, h, false)?,
        };
        Ok(Model {
            config: c.clone(),
            embed_tokens,
            layers,
            norm: norm(keys::NORM.trim_end_matches(".weight"), h)?,
            lm_head,
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

    /// Embeddings `[rows, hidden]` of `ids`, refusing ids outside the vocabulary.
    pub fn embed(&self, ids: &[u32]) -> Result<Tensor> {
        if ids.is_empty() {
            return Err(Error::Input("cannot run the model on zero tokens".into()));
        }
        if let Some(&bad) = ids.iter().find(|&&t| t as usize >= self.config.vocab_size) {
            return Err(Error::Input(format!(
                "token id {bad} is outside the vocabulary ({})",
                self.config.vocab_size
            )));
        }
        self.embed_tokens.forward(ids, &self.device)
    }

    /// Final norm and output head: logits `[rows, vocab]` of hidden states `[rows, hidden]`.
    pub fn head(&self, ops: &dyn Ops, x: &Tensor) -> Result<Tensor> {
        ops.linear(&ops.rms_norm(x, &self.norm)?, &self.lm_head)
    }

    /// Run `layers` on hidden states `x: [rows, hidden]` (rows at `ctx.pos..`) under `policy`: the layer-range
    /// execution that self-speculative decoding, DMTD and layer-wise calibration build on. With a cache, every
    /// non-absent layer writes its K/V at `ctx.pos..` (the caller sets the cache length afterwards); without one,
    /// the rows attend over themselves (`ctx.pos` must be 0). Stops early when the policy exits.
    pub fn run_layers(
        &self,
        ops: &dyn Ops,
        mut x: Tensor,
        layers: Range<usize>,
        ctx: &ForwardCtx,
        mut cache: Option<&mut KvCache>,
        policy: &dyn DepthPolicy,
    ) -> Result<LayersOutput> {
        if layers.end > self.layers.len() {
            return Err(Error::Input(format!(
                "layers {}..{} of a model with {} layers",
                layers.start,
                layers.end,
                self.layers.len()
            )));
        }
        let rows = x.dim(0)?;
        let mut plan = ExecutedPlan {
            rows,
            layers: Vec::new(),
        };
        let mut gates = Vec::new();
        let mut exited = false;
        for layer in &self.layers[layers] {
            let input = LayerInput::new(layer, &x, ctx.pos, ops);
            let layer_plan = policy.plan(layer, &input)?;
            let normed = input.take_normed();
            let (kind, gate_values) = match &layer_plan {
                LayerPlan::Exit => {
                    exited = true;
                    break;
                }
                LayerPlan::Absent => (RecordKind::Absent, None),
                LayerPlan::Full | LayerPlan::Replaced(_) => (RecordKind::Full, None),
                LayerPlan::Rows { steps, gates: g, .. } => {
                    if let Some(g) = g {
                        gates.push(g.tensor.clone());
                    }
                    (RecordKind::Rows(steps.clone()), g.as_ref().map(|g| g.values.clone()))
                }
            };
            match &layer_plan {
                LayerPlan::Absent => {}
                LayerPlan::Replaced(other) => {
                    x = other.forward(ops, &x, None, ctx, cache.as_deref_mut(), &LayerPlan::Full)?
                }
                _ => x = layer.forward(ops, &x, normed, ctx, cache.as_deref_mut(), &layer_plan)?,
            }
            plan.layers.push(LayerRecord {
                layer_idx: layer.layer_idx,
                kind,
                gates: gate_values,
            });
        }
        Ok(LayersOutput {
            hidden: x,
            plan,
            gates,
            exited,
        })
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

    /// Give routed layers their router and adapter (FlexiDepth), trained with `routing` (threshold, skip unit and
    /// gate scaling, kept on each router: the defaults of routing policies). Layers not listed stay plain. In the quantized path the adapter and the
    /// router's input projection are stored as Q8_0, so that a skipped layer reads few bytes (an f32 adapter would
    /// cost a third of a Q4_1 layer).
    pub fn attach_depth(&mut self, parts: Vec<(usize, Router, Adapter)>, routing: plan::Routing) -> Result<()> {
        let skip_threshold = routing.skip_threshold;
        if !skip_threshold.is_finite() {
            return Err(Error::Input(format!(
                "skip_threshold {skip_threshold} is not a finite number"
            )));
        }
        let n = self.layers.len();
        if let Some((bad, _, _)) = parts.iter().find(|(l, _, _)| *l >= n) {
            return Err(Error::Input(format!(
                "routed layer {bad} does not exist (the model has {n} layers)"
            )));
        }
        for (layer_idx, mut router, mut adapter) in parts {
            if self.format == WeightFormat::Quantized {
                router.router_enc = router.router_enc.into_q8()?;
                adapter.gate_proj = adapter.gate_proj.into_q8()?;
                adapter.down_proj = adapter.down_proj.into_q8()?;
                adapter.up_proj = adapter.up_proj.into_q8()?;
            }
            router.skip_threshold = skip_threshold;
            router.skip_unit = routing.skip_unit;
            router.gate_scaling = routing.gate_scaling;
            let layer = &mut self.layers[layer_idx];
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

    /// Weight bytes of each layer's parts, indexed by `layer_idx` (see [`ExecutedPlan::weight_bytes`]).
    pub fn layer_bytes(&self) -> Vec<LayerBytes> {
        self.layers
            .iter()
            .map(|l| {
                let a = &l.self_attn;
                let m = &l.mlp;
                LayerBytes {
                    kv: a.k_proj.weight_bytes() + a.v_proj.weight_bytes(),
                    q_o: a.q_proj.weight_bytes() + a.o_proj.weight_bytes(),
                    mlp: m.gate_proj.weight_bytes() + m.up_proj.weight_bytes() + m.down_proj.weight_bytes(),
                    router: l.router.as_ref().map_or(0, |r| {
                        r.router_enc.weight_bytes() + r.router_dec.weight_bytes() + r.router_head.weight_bytes()
                    }),
                    adapter: l.router_proj.as_ref().map_or(0, |ad| {
                        ad.gate_proj.weight_bytes() + ad.down_proj.weight_bytes() + ad.up_proj.weight_bytes()
                    }),
                }
            })
            .collect()
    }

    /// Bytes read per token outside the layers: the output head (and one embedding row).
    pub fn head_weight_bytes(&self) -> usize {
        self.lm_head.weight_bytes() + self.embed_tokens.storage_bytes() / self.config.vocab_size.max(1)
    }

    /// The threshold the attached routers were trained with (`None` without routers).
    pub fn skip_threshold(&self) -> Option<f32> {
        self.layers
            .iter()
            .find_map(|l| l.router.as_ref().map(|r| r.skip_threshold))
    }

    /// The skip unit the attached routers were trained for (`None` without routers).
    pub fn skip_unit(&self) -> Option<plan::SkipUnit> {
        self.layers.iter().find_map(|l| l.router.as_ref().map(|r| r.skip_unit))
    }

    /// The gate scaling the attached routers were trained with (`None` without routers).
    pub fn gate_scaling(&self) -> Option<plan::GateScaling> {
        self.layers
            .iter()
            .find_map(|l| l.router.as_ref().map(|r| r.gate_scaling))
    }

    /// Indices of the layers that have a router.
    pub fn routed_layers(&self) -> Vec<usize> {
        self.layers
            .iter()
            .filter(|l| l.router.is_some())
            .map(|l| l.layer_idx)
            .collect()
    }

    /// Embed `ids`, run them through every layer at full depth at the cache's next position, and return their
    /// logits: the base model (routers, if attached, are ignored).
    pub fn forward(&self, ids: &[u32], cache: &mut KvCache, logits: Logits) -> Result<Tensor> {
        Ok(self.forward_with(ids, cache, logits, &FullDepth)?.logits)
    }

    /// [`Model::forward`] under a depth policy, returning what each layer did too. Logits holding a NaN or an
    /// infinity (corrupt weights) are an error, never text or a perplexity.
    pub fn forward_with(
        &self,
        ids: &[u32],
        cache: &mut KvCache,
        logits: Logits,
        policy: &dyn DepthPolicy,
    ) -> Result<ForwardOutput> {
        let out = self.forward_ops(&Fused, ids, Some(cache), logits, policy)?;
        // One reduction instead of a copy: the sum of finite logits is finite, and a NaN or infinity poisons it.
        let sum = out.logits.sum_all()?.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        if !sum.is_finite() {
            return Err(Error::Input(
                "the model computed non-finite logits (NaN or infinity): its weights are corrupt".into(),
            ));
        }
        Ok(out)
    }

    /// The general forward pass: `ops` (fused for inference, differentiable for training), an optional cache
    /// (without one, a fresh pass from position 0 whose rows attend over themselves), a policy.
    pub fn forward_ops(
        &self,
        ops: &dyn Ops,
        ids: &[u32],
        mut cache: Option<&mut KvCache>,
        logits: Logits,
        policy: &dyn DepthPolicy,
    ) -> Result<ForwardOutput> {
        let x = self.embed(ids)?;
        let pos = cache.as_ref().map_or(0, |c| c.len());
        let seq_len = ids.len();
        if let Some(c) = cache.as_deref_mut() {
            c.reserve(pos + seq_len)?;
        }
        let ctx = ForwardCtx::new(self, pos, seq_len)?;
        let out = self.run_layers(ops, x, 0..self.layers.len(), &ctx, cache.as_deref_mut(), policy)?;
        if let Some(c) = cache {
            c.set_len(pos + seq_len);
        }
        let x = match logits {
            Logits::Last => out.hidden.narrow(0, seq_len - 1, 1)?,
            Logits::All => out.hidden,
        };
        Ok(ForwardOutput {
            logits: self.head(ops, &x)?,
            plan: out.plan,
            gates: out.gates,
        })
    }
}
